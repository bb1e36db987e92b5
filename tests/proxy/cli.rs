//! The operator tools: `pgshift check --dsn` against the live catalog and `pgshift rewrite`.

use crate::support::{cluster, connect, fresh_db, run};
use tokio::process::Command;

const SCHEMA: &str = "CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text, created_at timestamptz NOT NULL);";

fn config(dir: &std::path::Path, columns: &str) -> std::path::PathBuf {
    let path = dir.join("pgshift.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\naddr = \"127.0.0.1:5432\"\n[[migration]]\nname = \"users_v2\"\nkind = \"table\"\n\
             table = \"users\"\nnew_table = \"v2.users\"\nkey = [\"id\"]\ncolumns = [{columns}]\nwrites = \"dual_write\"\n"
        ),
    )
    .unwrap();
    path
}

async fn pgshift(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(args)
        .kill_on_drop(true))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_dsn_verifies_the_live_catalog() {
    let db = fresh_db("t_cli_check").await;
    connect(&cluster().url(&db))
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dsn = cluster().url(&db);

    let good = config(dir.path(), r#"{ old = "fullname", new = "display_name" }"#);
    let (ok, out, err) =
        pgshift(&["check", "--config", good.to_str().unwrap(), "--dsn", &dsn]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("live catalog: every migration checks out"),
        "{out}"
    );

    let bad = config(
        dir.path(),
        r#"{ old = "fullname", new = "nickname" }, { old = "email", new = "email", up = "email + 1" }"#,
    );
    let (ok, _, err) = pgshift(&["check", "--config", bad.to_str().unwrap(), "--dsn", &dsn]).await;
    assert!(!ok);
    assert!(
        err.contains("migration \"users_v2\": column nickname does not exist in the new schema"),
        "{err}"
    );
    assert!(err.contains("up = \"email + 1\" is not valid over public.users: operator does not exist: text + integer"), "{err}");

    // Objects that read or write the old table out of pgshift's sight are listed; writers fail the check.
    connect(&cluster().url(&db))
        .await
        .batch_execute(
            "CREATE VIEW named_users AS SELECT id, fullname FROM users;
             CREATE FUNCTION user_total() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM users $$;
             CREATE TABLE signups (name text);
             CREATE FUNCTION signup() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO users (fullname) VALUES (NEW.name); RETURN NEW; END $$;
             CREATE TRIGGER signup AFTER INSERT ON signups FOR EACH ROW EXECUTE FUNCTION signup();
             CREATE PROCEDURE rename_user(i bigint, n text) LANGUAGE sql AS $$ UPDATE users SET fullname = n WHERE id = i $$;",
        )
        .await
        .unwrap();
    let (ok, out, err) =
        pgshift(&["check", "--config", good.to_str().unwrap(), "--dsn", &dsn]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("view public.named_users reads public.users; writes through it are refused"),
        "{out}"
    );
    assert!(
        out.contains("function user_total() reads public.users (by its code)"),
        "{out}"
    );
    assert!(
        err.contains("trigger signup on public.signups (function signup()) writes public.users"),
        "{err}"
    );
    assert!(
        err.contains("procedure rename_user(bigint,text) writes public.users (by its code)"),
        "{err}"
    );
}

/// Connection errors show the server's own reason, and a DSN is never printed with its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_errors_show_the_cause_and_hide_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), r#"{ old = "fullname", new = "display_name" }"#);
    let dsn = format!(
        "postgres://postgres:s3cret-pw@{}/no_such_db",
        cluster().addr()
    );
    for command in ["check", "rewrite"] {
        let mut args = vec![command, "--config", path.to_str().unwrap(), "--dsn", &dsn];
        if command == "rewrite" {
            args.push("SELECT 1");
        }
        let (ok, out, err) = pgshift(&args).await;
        assert!(!ok, "{out}");
        assert!(
            err.contains("database \"no_such_db\" does not exist (3D000)"),
            "{command}: {err}"
        );
        assert!(err.contains("postgres://postgres:***@"), "{command}: {err}");
        assert!(
            !format!("{out}{err}").contains("s3cret-pw"),
            "{command}: {err}"
        );
    }
    let (ok, out, _) = pgshift(&["check", "--config", path.to_str().unwrap()]).await;
    assert!(ok);
    assert!(
        out.contains("tls mode = prefer")
            && out.contains(
                "migration users_v2: kind = table, public.users -> v2.users, writes = dual_write"
            ),
        "config words, not Rust names: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_shows_what_would_be_sent() {
    let db = fresh_db("t_cli_rewrite").await;
    connect(&cluster().url(&db))
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), r#"{ old = "fullname", new = "display_name" }"#);
    let path = path.to_str().unwrap();
    let dsn = cluster().url(&db);

    let (ok, out, err) = pgshift(&[
        "rewrite",
        "--config",
        path,
        "--dsn",
        &dsn,
        "INSERT INTO users (fullname) VALUES ($1)",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with(
        "-- reads routed to old:\nWITH __pgshift_old AS (INSERT INTO users (fullname) VALUES ($1) RETURNING users.*), \
         __pgshift_new AS (INSERT INTO v2.users (id, display_name, email, created_at) SELECT id, fullname, email, created_at \
         FROM __pgshift_old ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name"
    ), "{out}");
    assert!(
        out.contains("-- statement 1: the client sees the command tag INSERT 0 n; its zero-column rows are dropped"),
        "{out}"
    );
    assert!(!out.contains("  "), "a double space in {out}");
    for sql in [
        "UPDATE users SET fullname = $1 WHERE id = $2",
        "DELETE FROM users WHERE id = $1",
        "INSERT INTO users (fullname) VALUES ('x') RETURNING id",
    ] {
        let (ok, out, err) = pgshift(&["rewrite", "--config", path, "--dsn", &dsn, sql]).await;
        assert!(ok, "{err}");
        assert!(!out.contains("  "), "a double space in {out}");
    }

    // A statement sent as is says why.
    let (ok, out, _) = pgshift(&["rewrite", "--config", path, "--route", "old", "SELECT 1"]).await;
    assert!(ok);
    assert_eq!(
        out,
        "-- reads routed to old:\nSELECT 1\n-- sent unchanged: it names no migrated table\n"
    );
    let (ok, out, _) = pgshift(&[
        "rewrite",
        "--config",
        path,
        "--route",
        "new",
        "SELECT * FROM users",
    ])
    .await;
    assert!(ok);
    assert!(
        out.ends_with("-- sent unchanged: without --dsn pgshift does not know the tables' columns, which most rewrites need\n"),
        "{out}"
    );

    let (ok, out, _) = pgshift(&[
        "rewrite",
        "--config",
        path,
        "--dsn",
        &dsn,
        "--route",
        "new",
        "SELECT * FROM users",
    ])
    .await;
    assert!(ok);
    assert_eq!(
        out,
        "-- reads routed to new:\nSELECT * FROM (SELECT id, display_name AS fullname, email, created_at FROM v2.users) AS users\n"
    );
    let (ok, out, _) = pgshift(&[
        "rewrite",
        "--config",
        path,
        "--dsn",
        &dsn,
        "--route",
        "old",
        "TRUNCATE users",
    ])
    .await;
    assert!(ok);
    assert!(out.contains("-- refused with SQLSTATE 0A000: pgshift cannot rewrite this statement for migration \"users_v2\": TRUNCATE"), "{out}");
}
