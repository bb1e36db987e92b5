//! `pgshift demo` as a new user runs it: it starts, prints how to connect, and its live view follows edits of
//! its config file.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tour_shifts_reads_when_the_config_is_edited() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--run-for",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut config = None;
    let mut psql = None;
    loop {
        let line = next(&mut lines).await;
        if let Some(url) = line.strip_prefix("  connect through pgshift:  psql ") {
            psql = Some(url.trim_matches('"').to_owned());
        }
        if let Some(path) = line.strip_prefix("  edit to shift reads:      ") {
            config = Some(std::path::PathBuf::from(path));
        }
        if line.starts_with("[last 2s]") {
            assert!(
                line.contains("users_v2: 0% configured, reads 0 new /"),
                "{line}"
            );
            assert!(
                !line.contains(" 0 dual writes"),
                "the workload writes through pgshift: {line}"
            );
            break;
        }
    }
    assert!(psql.unwrap().starts_with("postgres://postgres@127.0.0.1:"));
    pgshift::demo::rewrite_percentages(&config.unwrap(), 100, 0).unwrap();
    loop {
        let line = next(&mut lines).await;
        if line.contains("users_v2: 100% configured") && line.contains(" new / 0 old") {
            assert!(
                !line.contains("users_v2: 100% configured, reads 0 new"),
                "{line}"
            );
            assert!(
                line.contains("orders_status: 0% configured, reads 0 new"),
                "{line}"
            );
            break;
        }
    }
    child.kill().await.unwrap();
}

async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the demo keeps printing")
        .unwrap()
        .expect("the demo is still running")
}
