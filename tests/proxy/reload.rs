//! Hot reload: file edits, Kubernetes ConfigMap symlink swaps and SIGHUP are validated and swapped in;
//! an invalid file keeps the last good config.

use crate::support::{cluster, http_get, ProxyOptions};
use pgshift::config::reload::ConfigHandle;
use pgshift::config::{Config, Overrides};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn migration_toml(rules: &str) -> String {
    format!(
        "[[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"public.orders\"\nkey = [\"id\"]\n\
         columns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"upper(legacy_status)\" }}]\n\
         [migration.reads]\nkey = \"application_name\"\nrules = [{rules}]\n"
    )
}

/// Writes through a temp file and a rename, as editors and config management do.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn status(addr: SocketAddr) -> Value {
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Polls `/status` until `done` holds, or fails after 10 s.
async fn wait_for_status(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(addr).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last /status:\n{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_from_file(path: &Path) -> pgshift::server::Running {
    let config = Config::load(path, &Overrides::default()).unwrap();
    let handle = ConfigHandle::new(config, Some((path.to_owned(), Overrides::default())));
    pgshift::server::start_with(handle).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_reload_and_invalid_files_keep_the_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgshift.toml");
    // The epoch is the file's hash and the config-info gauge is process-wide: a line of its own keeps this
    // test's epochs apart from every other test's.
    let base = format!(
        "# file_edits_reload_and_invalid_files_keep_the_last_good_config\n{}",
        ProxyOptions::default().toml()
    );
    std::fs::write(&path, format!("{base}{}", migration_toml(""))).unwrap();
    let running = start_from_file(&path).await;
    let maddr = running.metrics_addr.unwrap();

    let first = status(maddr).await;
    let epoch1 = first["epoch"].as_str().unwrap().to_owned();
    assert_eq!(first["migrations"][0]["name"], "orders_status");
    assert_eq!(first["migrations"][0]["table"], "public.orders");
    assert_eq!(first["migrations"][0]["writes"], "off");
    assert_eq!(
        first["migrations"][0]["reads"]["rules"],
        serde_json::json!([])
    );

    write_atomically(
        &path,
        &format!(
            "{base}{}",
            migration_toml(r#"{ application_name = "batch_processor", new_percent = 0 }"#)
        ),
    );
    let second = wait_for_status(maddr, "the edit to be loaded", |s| {
        s["epoch"] != epoch1.as_str()
    })
    .await;
    assert_eq!(second["last_reload"]["result"], "ok");
    assert_eq!(second["last_reload"]["trigger"], "file");
    assert_eq!(
        second["migrations"][0]["reads"]["rules"][0]["application_name"],
        "batch_processor"
    );
    let epoch2 = second["epoch"].as_str().unwrap().to_owned();

    // A typo: refused, the running config stays.
    write_atomically(
        &path,
        &format!("{base}{}", migration_toml("").replace("kind =", "kinde =")),
    );
    let refused = wait_for_status(maddr, "the invalid file to be refused", |s| {
        s["last_reload"]["result"] == "invalid"
    })
    .await;
    assert_eq!(refused["epoch"], epoch2.as_str());
    let error = refused["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("unknown field `kinde`"), "{error}");

    // A semantic error (not just syntax) is refused too, naming the migration.
    write_atomically(
        &path,
        &format!(
            "{base}{}",
            migration_toml("").replace("key = [\"id\"]", "key = []")
        ),
    );
    let refused = wait_for_status(maddr, "the migration without a key to be refused", |s| {
        s["last_reload"]["error"].as_str().is_some_and(|e| {
            e.contains("migration \"orders_status\" (line")
                && e.contains("key must name the primary-key column(s)")
        })
    })
    .await;
    assert_eq!(refused["epoch"], epoch2.as_str());
    assert_eq!(running.config.current().epoch, epoch2);

    let (_, metrics) = http_get(maddr, "/metrics").await;
    for want in [
        "pgshift_config_reloads_total{result=\"invalid\"}".to_owned(),
        format!("pgshift_config_info{{epoch=\"{epoch2}\"}} 1"),
        format!("pgshift_config_info{{epoch=\"{epoch1}\"}} 0"),
    ] {
        assert!(
            metrics.contains(&want),
            "expected `{want}` in /metrics:\n{metrics}"
        );
    }
    running.close();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap_is_seen() {
    // The kubelet's layout: pgshift.toml -> ..data/pgshift.toml, ..data -> ..<timestamp>/, swapped by rename.
    let dir = tempfile::tempdir().unwrap();
    let base = ProxyOptions::default().toml();
    let version = |name: &str, text: &str| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("pgshift.toml"), text).unwrap();
    };
    version("..2026_11_21_v1", &format!("{base}{}", migration_toml("")));
    std::os::unix::fs::symlink("..2026_11_21_v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pgshift.toml", dir.path().join("pgshift.toml")).unwrap();
    let running = start_from_file(&dir.path().join("pgshift.toml")).await;
    let maddr = running.metrics_addr.unwrap();
    let epoch1 = status(maddr).await["epoch"].as_str().unwrap().to_owned();

    version(
        "..2026_11_21_v2",
        &format!(
            "{base}{}",
            migration_toml(r#"{ context = "internal", new_percent = 0 }"#)
        ),
    );
    std::os::unix::fs::symlink("..2026_11_21_v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let after = wait_for_status(maddr, "the symlink swap to be loaded", |s| {
        s["epoch"] != epoch1.as_str()
    })
    .await;
    assert_eq!(
        after["migrations"][0]["reads"]["rules"][0]["context"],
        "internal"
    );
    running.close();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgshift.toml");
    let port = pgshift::cli::demo::cluster::free_port();
    let mport = pgshift::cli::demo::cluster::free_port();
    let text = |rules: &str| {
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[upstream]\naddr = \"{}\"\n[metrics]\naddr = \"127.0.0.1:{mport}\"\n{}",
            cluster().addr(),
            migration_toml(rules)
        )
    };
    std::fs::write(&path, text("")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["serve", "--config"])
        .arg(&path)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let maddr: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    crate::support::wait_listening(maddr).await;
    let epoch = status(maddr).await["epoch"].as_str().unwrap().to_owned();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &child.id().unwrap().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill("-HUP").success());
    let s = wait_for_status(maddr, "the SIGHUP reload", |s| {
        s["last_reload"]["trigger"] == "sighup"
    })
    .await;
    assert_eq!(s["last_reload"]["result"], "unchanged");
    assert_eq!(s["epoch"], epoch.as_str());
    assert!(kill("-TERM").success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}

/// Holds for `window`: asserting that something does not happen needs a window to watch it not happen.
async fn stays(window: Duration, what: &str, holds: impl Fn() -> bool) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert!(holds(), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reading the config file (`cat`, a backup agent) and writing next to it (a log file) reload nothing; an edit
/// reloads exactly once, and that reload's own read of the file does not start another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_edits_of_the_config_file_reload_it_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgshift.toml");
    let base = format!(
        "# only_edits_of_the_config_file_reload_it_once_each\n{}",
        ProxyOptions::default().toml()
    );
    std::fs::write(&path, format!("{base}{}", migration_toml(""))).unwrap();
    let running = start_from_file(&path).await;
    let handle = running.config.clone();
    let before = handle.generation();

    let neighbour = dir.path().join("pgshift.log");
    for i in 0..10 {
        let _ = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&neighbour, format!("log line {i}\n")).unwrap();
    }
    stays(
        Duration::from_millis(800),
        "reading the file or writing a neighbour reloaded the config",
        || handle.generation() == before,
    )
    .await;

    write_atomically(
        &path,
        &format!(
            "{base}{}",
            migration_toml(r#"{ application_name = "batch_processor", new_percent = 0 }"#)
        ),
    );
    crate::support::eventually(Duration::from_secs(10), "the edit is loaded", || async {
        handle.generation() != before
    })
    .await;
    stays(
        Duration::from_millis(800),
        "the edit was loaded more than once",
        || handle.generation() == before + 1,
    )
    .await;
    let report = handle.last_reload().unwrap();
    assert_eq!(
        (report.result, report.trigger),
        (
            pgshift::config::reload::ReloadResult::Ok,
            pgshift::config::reload::Trigger::File
        )
    );
    running.close();
    running.wait().await.unwrap();
}
