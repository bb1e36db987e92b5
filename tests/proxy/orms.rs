//! Real ORMs and drivers generating the SQL people send, with both migrations active: the same workload runs
//! directly and through pgshift (dual_write with reads at 0 % and 100 %, then new_primary), and must see exactly
//! the same values; afterwards old and new must agree through the mapping.

use crate::differential::{migrations, rows};
use crate::drivers::{drivers_dir, ensure_installed, has, output_lines};
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

/// The pgjdbc jar: Debian's `libpostgresql-jdbc-java`.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Compiles the JDBC workload once (javac), into the target directory.
fn jdbc_classes() -> std::path::PathBuf {
    static ONCE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        assert!(
            std::path::Path::new(JDBC_JAR).is_file(),
            "the JDBC test needs pgjdbc and a JDK (Debian: apt-get install libpostgresql-jdbc-java default-jdk-headless)"
        );
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jdbc");
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("javac")
            .arg("-d")
            .arg(&dir)
            .arg("-cp")
            .arg(JDBC_JAR)
            .arg(drivers_dir().join("JdbcWorkload.java"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run javac ({e}); install a JDK (Debian: default-jdk-headless)"));
        assert!(status.success(), "javac failed");
        dir
    })
    .clone()
}

/// The workload's command for `orm`, with its libraries installed.
fn command(orm: &str) -> Command {
    let scripts = drivers_dir();
    match orm {
        "jdbc" => {
            let mut cmd = Command::new("java");
            cmd.arg("-cp")
                .arg(format!("{}:{JDBC_JAR}", jdbc_classes().display()))
                .arg("JdbcWorkload");
            cmd
        }
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
    output_lines(command(orm), &format!("{orm} workload"), url).await
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
    same_through_pgshift_except(orm, &[]).await.0
}

/// The same, except for observations starting with one of `refused` (statements pgshift refuses by design):
/// returns the direct lines and the last phase's lines.
async fn same_through_pgshift_except(orm: &str, refused: &[&str]) -> (Vec<String>, Vec<String>) {
    let comparable = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !refused.iter().any(|r| l.starts_with(r)))
            .cloned()
            .collect()
    };
    let mut last = Vec::new();
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
            comparable(&through),
            comparable(&direct),
            "{context}: what the ORM saw through pgshift differs from direct"
        );
        assert_parity(&client, &context).await;
        proxy.stop().await;
        last = through;
    }
    (direct, last)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequelize_sees_the_same() {
    let (direct, through) =
        same_through_pgshift_except("sequelize", &[r#"["find_or_create"#]).await;
    has(&direct, r#"["create",["1","Ada"]]"#);
    has(&direct, r#"["bulk_create",["2","3","4","5"]]"#);
    has(&direct, r#"["upsert",["1","Ada (upsert)"]]"#);
    has(&direct, r#"["find_or_create",["ok",true,"FoC"]]"#);
    // findOrCreate runs its INSERT inside a function body: refused, and nothing written.
    has(&through, r#"["find_or_create",["error","0A000"]]"#);
    has(&through, r#"["find_or_create_rows",0]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_sees_the_same() {
    let lines = same_through_pgshift("jdbc").await;
    has(&lines, "insert 1 id=1 name=user 0");
    has(&lines, "insert 1 id=7 name=user 6");
    has(&lines, "update_count 7");
    has(&lines, "update_none 0");
    has(&lines, "batch [1, 1, 1, 1]");
    has(&lines, "failing_batch 23505 [-3, -3, -3]");
}
