//! Real ORMs and drivers generating the SQL people send, with both migrations active: the same workload runs
//! directly and through pgshift (dual_write with reads at 0 % and 100 %, then new_primary), and must see exactly
//! the same values; afterwards old and new must agree through the mapping.

use crate::drivers::{drivers_dir, ensure_installed};
use crate::support::{cluster, connect, fresh_db, start_proxy, ProxyOptions};
use tokio::process::Command;
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text UNIQUE, qty int NOT NULL DEFAULT 0);
CREATE TABLE v2.users (id bigint PRIMARY KEY DEFAULT nextval('users_id_seq'), display_name text NOT NULL,
                       email text UNIQUE, qty bigint NOT NULL DEFAULT 0);
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users (id) ON DELETE SET NULL,
                     legacy_status text DEFAULT 'open', new_status text, amount numeric(10,2) NOT NULL DEFAULT 0);
";

fn migrations(writes: &str, percent: u32) -> String {
    format!(
        "[[migration]]\nname = \"users_v2\"\nkind = \"table\"\ntable = \"public.users\"\nnew_table = \"v2.users\"\n\
         key = [\"id\"]\ncolumns = [{{ old = \"fullname\", new = \"display_name\" }}]\nwrites = \"{writes}\"\n\
         [migration.reads]\nnew_percent = {percent}\n\n\
         [[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"public.orders\"\nkey = [\"id\"]\n\
         columns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"'s:' || reverse(legacy_status)\", down = \"reverse(substr(new_status, 3))\" }}]\n\
         writes = \"{writes}\"\n[migration.reads]\nnew_percent = {percent}\n"
    )
}

/// The workload's command for `orm`, with its libraries installed.
fn command(orm: &str) -> Command {
    let scripts = drivers_dir();
    match orm {
        "sqlalchemy" | "django" => {
            let mut cmd = Command::new("python3");
            cmd.arg(scripts.join(format!("{orm}_workload.py")))
                .env("PYTHONPATH", ensure_installed("python"));
            cmd
        }
        _ => {
            let mut cmd = Command::new("node");
            cmd.arg(scripts.join(format!("{orm}_workload.js")))
                .env("NODE_PATH", ensure_installed("node").join("node_modules"));
            cmd
        }
    }
}

async fn workload(orm: &str, url: &str) -> Vec<String> {
    let out = command(orm)
        .arg(url)
        .env("PGTZ", "UTC")
        .env("TZ", "UTC")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the {orm} workload: {e}"));
    assert!(
        out.status.success(),
        "{orm} workload failed against {url}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn rows(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// Old and new agree through the mapping.
async fn assert_parity(client: &Client, context: &str) {
    let old = rows(
        client,
        "SELECT ROW(id, fullname, email, qty)::text FROM users ORDER BY id",
    )
    .await;
    let new = rows(
        client,
        "SELECT ROW(id, display_name, email, qty)::text FROM v2.users ORDER BY id",
    )
    .await;
    assert_eq!(old, new, "{context}: users and v2.users differ");
    let unmapped = rows(
        client,
        "SELECT ROW(id, legacy_status, new_status)::text FROM orders \
         WHERE new_status IS DISTINCT FROM 's:' || reverse(legacy_status)",
    )
    .await;
    assert!(
        unmapped.is_empty(),
        "{context}: orders.new_status is not up(legacy_status): {unmapped:?}"
    );
}

/// Runs `orm`'s workload directly, then through pgshift in each phase; everything the ORM saw must match.
async fn same_through_pgshift(orm: &str) -> Vec<String> {
    let direct_db = fresh_db(&format!("t_orm_{orm}_direct")).await;
    connect(&cluster().url(&direct_db))
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
    let direct = workload(orm, &cluster().url(&direct_db)).await;
    for (writes, percent) in [("dual_write", 0), ("dual_write", 100), ("new_primary", 100)] {
        let db = fresh_db(&format!("t_orm_{orm}_{writes}_{percent}")).await;
        let client = connect(&cluster().url(&db)).await;
        client.batch_execute(SCHEMA).await.unwrap();
        let proxy = start_proxy(ProxyOptions {
            migrations: migrations(writes, percent),
            ..Default::default()
        })
        .await;
        let through = workload(orm, &proxy.url(&db)).await;
        let context = format!("{orm}, writes = {writes}, reads {percent}% to new");
        assert_eq!(
            through, direct,
            "{context}: what the ORM saw through pgshift differs from direct"
        );
        assert_parity(&client, &context).await;
        proxy.stop().await;
    }
    direct
}

fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "missing {want} in:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_sees_the_same() {
    let lines = same_through_pgshift("sqlalchemy").await;
    has(&lines, r#"["create", [1, "Ada", 0]]"#);
    has(&lines, r#"["bulk_create", [2, 3, 4, 5]]"#);
    has(&lines, r#"["bulk_update", 2]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_sees_the_same() {
    let lines = same_through_pgshift("django").await;
    has(&lines, r#"["create", [1, "Ada", 0]]"#);
    has(&lines, r#"["bulk_create", [2, 3, 4, 5]]"#);
    has(&lines, r#"["get_or_create_again", [6, false]]"#);
}
