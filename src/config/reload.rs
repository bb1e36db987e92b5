//! Hot reload: SIGHUP and a watch on the config file's directory (editor saves, atomic renames and Kubernetes
//! ConfigMap `..data` symlink swaps all show up there) → load → validate → atomic swap. An invalid file is
//! refused with a log line and a metric, and the last good config stays in force.

use super::{Config, Overrides};
use crate::metrics::{CONFIG_INFO, CONFIG_RELOADS};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// What set off a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Sighup,
    File,
}

/// What a reload attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// The new config was swapped in.
    Ok,
    /// Same content (or no file to reload from).
    Unchanged,
    /// Refused; the running config stays.
    Invalid,
}

impl ReloadResult {
    /// The `result` label of `pgshift_config_reloads_total`, as `/status` spells it.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Invalid => "invalid",
        }
    }
}

/// The outcome of the last reload attempt, shown in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub result: ReloadResult,
    pub trigger: Trigger,
    pub at_unix: u64,
    pub epoch: String,
    pub error: Option<String>,
    /// Keys that changed but only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

/// What rollouts make of migrations (by name): their routing in place of what the file says.
pub type Overlay = std::collections::BTreeMap<String, crate::rollout::plan::Effect>;

/// The current config, swapped atomically; readers take one snapshot per use. It is the file's config with the
/// rollout [`Overlay`] applied.
pub struct ConfigHandle {
    current: ArcSwap<Config>,
    /// The config as the file says.
    file: ArcSwap<Config>,
    overlay: Mutex<Overlay>,
    source: Option<(PathBuf, Overrides)>,
    last: Mutex<Option<ReloadReport>>,
    loaded_at_unix: std::sync::atomic::AtomicU64,
    /// Bumped by every reload attempt and every rollout change: sessions re-read the config and re-route at their
    /// next transaction boundary.
    generation: std::sync::atomic::AtomicU64,
    /// Bumped by every reload attempt, valid or not: sessions then re-read their catalog at their next
    /// transaction boundary (so a SIGHUP after DDL on a migrated table refreshes column lists). A rollout changes
    /// routing only, not what the tables hold: no catalog lookup for it.
    reloads: std::sync::atomic::AtomicU64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ConfigHandle {
    /// `source` is the file (and command-line overrides) to reload from; `None` for a config without a file.
    pub fn new(config: Config, source: Option<(PathBuf, Overrides)>) -> Arc<ConfigHandle> {
        Arc::new(ConfigHandle {
            file: ArcSwap::from_pointee(config.clone()),
            overlay: Mutex::new(Overlay::new()),
            current: ArcSwap::from_pointee(config),
            source,
            last: Mutex::new(None),
            loaded_at_unix: now_unix().into(),
            generation: 0.into(),
            reloads: 0.into(),
        })
    }

    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// The config as the file says, without rollouts.
    pub fn file(&self) -> Arc<Config> {
        self.file.load_full()
    }

    /// Replaces what rollouts make of migrations; sessions take it at their next transaction boundary (as a
    /// reload). Nothing happens if it is unchanged.
    pub fn set_overlay(&self, overlay: Overlay) {
        let mut current = self.overlay.lock().expect("overlay lock");
        if *current == overlay {
            return;
        }
        *current = overlay;
        self.current.store(Arc::new(apply(&self.file(), &current)));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn path(&self) -> Option<&PathBuf> {
        self.source.as_ref().map(|(p, _)| p)
    }

    pub fn loaded_at_unix(&self) -> u64 {
        self.loaded_at_unix
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reload attempts so far (see the field).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last.lock().expect("reload report lock").clone()
    }

    /// Re-reads the file; swaps it in if valid and different. Never panics, never drops the current config.
    pub fn reload(&self, trigger: Trigger) -> ReloadReport {
        let Some((path, overrides)) = &self.source else {
            return self.record(ReloadReport {
                result: ReloadResult::Unchanged,
                trigger,
                at_unix: now_unix(),
                epoch: self.current().epoch.clone(),
                error: Some(
                    "pgshift was started without a config file; nothing to reload".to_owned(),
                ),
                restart_required: vec![],
            });
        };
        let old = self.file();
        let report = match Config::load(path, overrides) {
            Err(e) => {
                warn!(trigger = ?trigger, error = %e, epoch = %old.epoch, "config reload refused; keeping the last good config");
                ReloadReport {
                    result: ReloadResult::Invalid,
                    trigger,
                    at_unix: now_unix(),
                    epoch: old.epoch.clone(),
                    error: Some(e.to_string()),
                    restart_required: vec![],
                }
            }
            Ok(new) if new.epoch == old.epoch => ReloadReport {
                result: ReloadResult::Unchanged,
                trigger,
                at_unix: now_unix(),
                epoch: old.epoch.clone(),
                error: None,
                restart_required: vec![],
            },
            Ok(new) => {
                let restart_required = restart_required(&old, &new);
                if !restart_required.is_empty() {
                    warn!(keys = ?restart_required, "these settings changed but take effect only after a restart");
                }
                info!(trigger = ?trigger, from = %old.epoch, to = %new.epoch, migrations = new.migrations.len(), "config reloaded");
                metrics::gauge!(CONFIG_INFO, "epoch" => old.epoch.clone()).set(0.0);
                metrics::gauge!(CONFIG_INFO, "epoch" => new.epoch.clone()).set(1.0);
                let epoch = new.epoch.clone();
                let overlay = self.overlay.lock().expect("overlay lock");
                self.current.store(Arc::new(apply(&new, &overlay)));
                self.file.store(Arc::new(new));
                drop(overlay);
                self.loaded_at_unix
                    .store(now_unix(), std::sync::atomic::Ordering::Relaxed);
                ReloadReport {
                    result: ReloadResult::Ok,
                    trigger,
                    at_unix: now_unix(),
                    epoch,
                    error: None,
                    restart_required,
                }
            }
        };
        self.record(report)
    }

    fn record(&self, report: ReloadReport) -> ReloadReport {
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        metrics::counter!(CONFIG_RELOADS, "result" => report.result.label()).increment(1);
        *self.last.lock().expect("reload report lock") = Some(report.clone());
        report
    }
}

/// `file` with each migration's routing as its rollout says; the epoch names the overlay too (plans are cached
/// per epoch).
fn apply(file: &Config, overlay: &Overlay) -> Config {
    let mut config = file.clone();
    if overlay.is_empty() {
        return config;
    }
    for m in &mut config.migrations {
        if let Some(effect) = overlay.get(&m.name) {
            m.reads.new_bp = effect.new_bp;
            if effect.kill {
                for rule in &mut m.reads.rules {
                    rule.new_bp = 0;
                }
            }
            m.writes = effect.writes;
        }
    }
    let mut h = rustc_hash::FxHasher::default();
    std::hash::Hash::hash(&format!("{overlay:?}"), &mut h);
    config.epoch = format!(
        "{}+rollout-{:08x}",
        file.epoch,
        std::hash::Hasher::finish(&h) as u32
    );
    config
}

/// Settings that are bound at startup (sockets, TLS material): a reload keeps the running values.
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen_addr != new.listen_addr {
        keys.push("listen.addr");
    }
    if old.max_connections != new.max_connections {
        keys.push("listen.max_connections");
    }
    if old.workers != new.workers {
        keys.push("listen.workers");
    }
    if format!("{:?}", old.client_tls) != format!("{:?}", new.client_tls) {
        keys.push("listen.tls");
    }
    if old.upstream.target != new.upstream.target || old.upstream.tls != new.upstream.tls {
        keys.push("upstream");
    }
    if old.metrics_addr != new.metrics_addr {
        keys.push("metrics.addr");
    }
    if old.timeouts != new.timeouts {
        keys.push("timeouts");
    }
    if old.log != new.log {
        keys.push("log");
    }
    keys
}

/// Whether a change in the config file's directory may have changed the file's content: a create, write,
/// rename or removal of the file itself, or of `..data` (the symlink a Kubernetes ConfigMap swaps). Reads and
/// opens (pgshift's own reload reads the file) and other files (a log beside the config) are not.
fn may_change(event: &notify::Event, file_name: &std::ffi::OsStr) -> bool {
    use notify::event::{EventKind, ModifyKind};
    let kind = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Any
    );
    kind && event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == file_name || n == std::ffi::OsStr::new("..data"))
    })
}

/// Watches the config file's directory and reloads on changes, debounced. The watch is armed before this
/// returns, so no change made after startup can be missed; the returned task runs until aborted.
pub fn watch_file(handle: Arc<ConfigHandle>) -> Option<tokio::task::JoinHandle<()>> {
    use notify::{RecursiveMode, Watcher};
    let path = handle.path()?.clone();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| may_change(&e, &name)) {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
                return None;
            }
        };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
        return None;
    }
    Some(tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the watch
        while rx.recv().await.is_some() {
            // Editors write in several steps; wait for the burst to settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let handle = handle.clone();
            let _ = tokio::task::spawn_blocking(move || handle.reload(Trigger::File)).await;
        }
    }))
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn only_changes_to_the_file_itself_reload() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
        };
        let name = std::ffi::OsStr::new("pgshift.toml");
        let event = |kind: EventKind, file: &str| {
            notify::Event::new(kind).add_path(PathBuf::from("/etc/pgshift").join(file))
        };
        // Reading the file (cat, or pgshift's own reload), and files beside it: no reload.
        assert!(!may_change(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Read)),
                "pgshift.toml"
            ),
            name
        ));
        assert!(!may_change(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "pgshift.toml"
            ),
            name
        ));
        assert!(!may_change(
            &event(
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                "pgshift.log"
            ),
            name
        ));
        assert!(!may_change(
            &event(EventKind::Create(CreateKind::File), "other.toml"),
            name
        ));
        assert!(!may_change(
            &event(
                EventKind::Modify(ModifyKind::Metadata(
                    notify::event::MetadataKind::AccessTime
                )),
                "pgshift.toml"
            ),
            name
        ));
        // Writes, atomic renames and ConfigMap swaps: reload.
        assert!(may_change(
            &event(
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                "pgshift.toml"
            ),
            name
        ));
        assert!(may_change(
            &event(EventKind::Create(CreateKind::File), "pgshift.toml"),
            name
        ));
        assert!(may_change(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "pgshift.toml"
            ),
            name
        ));
        assert!(may_change(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "..data"
            ),
            name
        ));
    }
}
