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
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ =
            tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut text).await;
        text
    });
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
    let config = config.unwrap();
    pgshift::cli::demo::rewrite_percentages(&config, 100, 0).unwrap();
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

    // SIGTERM (a terminal closing, `kill`, systemd) stops it as cleanly as Ctrl-C: it says so, its own
    // workload's sessions end without a warning, and its directory and cluster are gone.
    // SAFETY: kill(2) with the pid of our own child.
    assert_eq!(
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) },
        0
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo stops after SIGTERM")
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("Stopping:") && stderr.contains("Stopped."),
        "{stderr}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(
        !config.parent().unwrap().exists(),
        "the demo left {config:?}"
    );
}

/// A busy port is found before a cluster is started for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_a_busy_port_fails_at_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .args(["demo", "--listen", &addr, "--metrics", "127.0.0.1:0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("fails at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("Starting a throwaway"), "{stderr}");
}

async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the demo keeps printing")
        .unwrap()
        .expect("the demo is still running")
}
