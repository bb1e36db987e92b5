//! Real client libraries through pgshift: psycopg, asyncpg, node-postgres and Postgres.js run the same
//! scenarios (types, prepared statements, transactions, COPY, 100k rows, LISTEN/NOTIFY, cancel) directly and
//! through pgshift, and the outputs must be identical.
//!
//! The libraries are installed on first use into the target directory from PyPI and npm (pinned in
//! `tests/drivers/`); Python 3 and Node.js themselves must be installed.

use crate::support::{cluster, fresh_db, proxy};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::process::Command;

pub(crate) fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn env_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("driver-env")
}

/// Installs the pinned libraries once; later runs find the stamp and skip the install.
pub(crate) fn ensure_installed(kind: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (manifest, dir) = match kind {
        "python" => ("requirements.txt", env_dir().join("python")),
        _ => ("package.json", env_dir().join("node")),
    };
    let wanted = std::fs::read_to_string(drivers_dir().join(manifest)).unwrap();
    let stamp = dir.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let status = match kind {
        "python" => std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("-r")
            .arg(drivers_dir().join(manifest))
            .status(),
        _ => {
            std::fs::copy(drivers_dir().join(manifest), dir.join(manifest)).unwrap();
            std::process::Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .status()
        }
    };
    let hint = match kind {
        "python" => {
            "the driver tests need Python 3 with pip (Debian: apt-get install python3 python3-pip)"
        }
        _ => "the driver tests need Node.js with npm (Debian: apt-get install nodejs npm)",
    };
    match status {
        Ok(s) if s.success() => std::fs::write(&stamp, wanted).unwrap(),
        Ok(s) => panic!("installing the {kind} client libraries failed ({s}); {hint}"),
        Err(e) => panic!("cannot run the {kind} installer ({e}); {hint}"),
    }
    dir
}

fn command(driver: &str) -> Command {
    let scripts = drivers_dir();
    match driver {
        "psycopg" | "asyncpg" => {
            let mut cmd = Command::new("python3");
            cmd.arg(scripts.join(format!("{driver}_scenarios.py")))
                .env("PYTHONPATH", ensure_installed("python"));
            cmd
        }
        _ => {
            let mut cmd = Command::new("node");
            cmd.arg(scripts.join("node_scenarios.js"))
                .arg(if driver == "node-postgres" {
                    "pg"
                } else {
                    "postgres"
                })
                .env("NODE_PATH", ensure_installed("node").join("node_modules"));
            cmd
        }
    }
}

async fn scenarios(driver: &str, url: &str) -> Vec<String> {
    output_lines(command(driver), &format!("{driver} scenarios"), url).await
}

/// Runs `cmd URL` (in UTC) and returns its output lines; fails the test with its output if it fails.
pub(crate) async fn output_lines(mut cmd: Command, what: &str, url: &str) -> Vec<String> {
    let out = cmd
        .arg(url)
        .env("PGTZ", "UTC")
        .env("TZ", "UTC")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed against {url}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs a driver's scenarios directly and through pgshift; returns the (identical) output.
async fn same_through_pgshift(driver: &str) -> Vec<String> {
    let name = driver.replace('-', "_");
    let direct_db = fresh_db(&format!("t_drv_{name}_direct")).await;
    let proxied_db = fresh_db(&format!("t_drv_{name}_proxied")).await;
    let proxy = proxy().await;
    let direct = scenarios(driver, &cluster().url(&direct_db)).await;
    let through = scenarios(driver, &proxy.url(&proxied_db)).await;
    assert_eq!(
        through, direct,
        "{driver}: output through pgshift differs from direct"
    );
    proxy.stop().await;
    through
}

/// The output has the line `want`.
pub(crate) fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "missing {want} in:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_behaves_identically() {
    let lines = same_through_pgshift("psycopg").await;
    has(
        &lines,
        r#"["prepared", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]]"#,
    );
    has(&lines, r#"["error", "23505"]"#);
    has(&lines, r#"["error", "25P02"]"#);
    has(&lines, r#"["ids", [1, 2, 3, 4, 5]]"#);
    has(&lines, r#"["copy_error", "22P02"]"#);
    has(
        &lines,
        r#"["large", [100000, [100000, "14ee22eaba297944c96afdbe5b16c65b"]]]"#,
    );
    has(&lines, r#"["notify", ["ch", "hello"]]"#);
    has(&lines, r#"["cancel", ["57014", true]]"#);
    has(&lines, r#"["after_cancel", 1]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_behaves_identically() {
    let lines = same_through_pgshift("asyncpg").await;
    has(&lines, r#"["status", "INSERT 0 1"]"#);
    has(
        &lines,
        r#"["prepared", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]]"#,
    );
    has(&lines, r#"["error", "23505"]"#);
    has(&lines, r#"["ids", [1, 2, 3, 5]]"#);
    has(
        &lines,
        r#"["large", [100000, [100000, "14ee22eaba297944c96afdbe5b16c65b"]]]"#,
    );
    has(&lines, r#"["notify", ["ch", "hello"]]"#);
    has(&lines, r#"["cancel", "timeout"]"#);
    has(&lines, r#"["after_cancel", [1, true]]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_behaves_identically() {
    let lines = same_through_pgshift("node-postgres").await;
    has(&lines, r#"["insert",["INSERT",1]]"#);
    has(&lines, r#"["prepared",[0,2,4,6,8,10,12,14,16,18]]"#);
    has(&lines, r#"["error","23505"]"#);
    has(&lines, r#"["error","25P02"]"#);
    has(
        &lines,
        r#"["large",[100000,{"g":100000,"md5":"14ee22eaba297944c96afdbe5b16c65b"}]]"#,
    );
    has(&lines, r#"["notify",["ch","hello"]]"#);
    has(&lines, r#"["notice","hi from plpgsql"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_js_behaves_identically() {
    let lines = same_through_pgshift("postgres-js").await;
    has(&lines, r#"["insert",["INSERT",1]]"#);
    has(&lines, r#"["prepared",[0,2,4,6,8,10,12,14,16,18]]"#);
    has(&lines, r#"["error","23505"]"#);
    has(&lines, r#"["ids",[1,2,3]]"#);
    has(
        &lines,
        r#"["large",[100000,{"g":100000,"md5":"14ee22eaba297944c96afdbe5b16c65b"}]]"#,
    );
    has(&lines, r#"["notify",["ch","hello"]]"#);
    has(&lines, r#"["cancel",["57014",true]]"#);
    has(&lines, r#"["after_cancel",1]"#);
    has(&lines, r#"["notice","hi from plpgsql"]"#);
}
