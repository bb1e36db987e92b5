//! Command-line clients through pgshift: psql (scripts, \copy) and pgbench in every query mode.

use crate::support::{cluster, fresh_db, pgbench_path, proxy, psql_path, run};
use tokio::process::Command;

const SCRIPT: &str = r"\set ON_ERROR_STOP 0
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, at date);
INSERT INTO notes (body, at) VALUES ('first', '2026-01-02'), ('second', NULL) RETURNING id, body;
BEGIN;
UPDATE notes SET body = upper(body);
SAVEPOINT a;
SELECT 1/0;
ROLLBACK TO a;
COMMIT;
\copy notes (body, at) FROM STDIN WITH (FORMAT csv)
third,2026-03-04
fourth,
\.
SELECT * FROM notes ORDER BY id;
\copy (SELECT id, body FROM notes ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)
SET application_name = 'psql-test';
SHOW application_name;
SELECT current_setting('server_version_num')::int >= 100000 AS modern;
";

/// Runs the script file with psql (its messages name the file, so both runs use the same one).
async fn psql_script(url: &str, script: &std::path::Path) -> (String, String) {
    let (ok, out, err) = run(Command::new(psql_path())
        .args(["-X", "-e", "-d", url, "-f"])
        .arg(script)
        .kill_on_drop(true))
    .await;
    assert!(ok, "psql failed: {err}");
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_with_copy_gives_identical_output() {
    let through_db = fresh_db("t_psql_proxy").await;
    let direct_db = fresh_db("t_psql_direct").await;
    let proxy = proxy().await;
    // Removed when dropped, whatever the outcome.
    let script = tempfile::Builder::new()
        .prefix("pgshift-psql-")
        .suffix(".sql")
        .tempfile()
        .unwrap();
    std::fs::write(script.path(), SCRIPT).unwrap();
    let (out, err) = psql_script(&proxy.url(&through_db), script.path()).await;
    let (want_out, want_err) = psql_script(&cluster().url(&direct_db), script.path()).await;
    assert_eq!(out, want_out);
    assert_eq!(
        err.replace(&through_db, "DB"),
        want_err.replace(&direct_db, "DB")
    );
    assert!(out.contains("  3 | third  | 2026-03-04"), "{out}");
    assert!(
        out.contains("id,body\n1,FIRST\n2,SECOND\n3,third\n4,fourth\n"),
        "{out}"
    );
    assert!(out.contains(" psql-test\n"), "{out}");
    assert!(err.contains("ERROR:  division by zero"), "{err}");
    proxy.stop().await;
}

async fn pgbench(args: &[&str], url: &str) -> (bool, String, String) {
    run(Command::new(pgbench_path())
        .args(args)
        .arg(url)
        .kill_on_drop(true))
    .await
}

/// "number of failed transactions: 0 (0.000%)" and the processed count.
fn processed_and_failed(out: &str) -> (u64, Option<u64>) {
    let grab = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| {
                rest.split_whitespace()
                    .next()?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
    };
    (
        grab("number of transactions actually processed:").unwrap_or(0),
        grab("number of failed transactions:"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_clean_in_every_query_mode() {
    let db = fresh_db("t_pgbench").await;
    let proxy = proxy().await;
    let (ok, _, err) = pgbench(&["-i", "-s", "1", "-q"], &proxy.url(&db)).await;
    assert!(ok, "pgbench -i through pgshift: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = pgbench(
            &["-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n"],
            &proxy.url(&db),
        )
        .await;
        assert!(ok, "pgbench -M {mode}: {err}\n{out}");
        let (processed, failed) = processed_and_failed(&out);
        assert!(processed > 0, "pgbench -M {mode} processed nothing:\n{out}");
        assert_eq!(failed.unwrap_or(0), 0, "pgbench -M {mode}:\n{out}");
        assert!(!err.contains("error"), "pgbench -M {mode}: {err}");
    }
    proxy.stop().await;
}
