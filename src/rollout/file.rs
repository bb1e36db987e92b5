//! Rollout state without a control database: one pgshift keeps it in a local JSON file (`[control] state_file`,
//! default `pgshift-rollout.json` beside the config), changed under an exclusive lock and replaced atomically
//! (write, fsync, rename), so `pgshift rollout` and the proxy never see half a file. Events are kept in the same
//! file (the last 200) and logged.

use super::plan::State;
use super::store::Change;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const KEEP_EVENTS: usize = 200;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Contents {
    #[serde(default)]
    rollouts: BTreeMap<String, State>,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Event {
    at_unix_ms: i64,
    migration: Option<String>,
    kind: String,
    actor: String,
    detail: serde_json::Value,
}

pub struct FileStore {
    path: PathBuf,
}

/// An exclusive lock on `<state file>.lock`, released when dropped.
struct Lock(std::fs::File);

impl Lock {
    fn take(path: &Path) -> Result<Lock, String> {
        use std::os::fd::AsRawFd;
        let lock_path = path.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: the descriptor is open for the life of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Lock(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; unlocking an fd we hold.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }

    fn read(&self) -> Result<Contents, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a rollout state file: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contents::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    fn write(&self, contents: &Contents) -> Result<(), String> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(contents).expect("state is serializable");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    /// When the file last changed (to re-read it only then).
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    pub fn load(&self) -> Result<Vec<(String, State)>, String> {
        Ok(self.read()?.rollouts.into_iter().collect())
    }

    /// The change, if the state is still at `from_version`; with its event.
    pub fn apply(&self, change: &Change<'_>) -> Result<bool, String> {
        let _lock = Lock::take(&self.path)?;
        let mut contents = self.read()?;
        let version = contents
            .rollouts
            .get(change.migration)
            .map_or(0, |s| s.version);
        if version != change.from_version {
            return Ok(false);
        }
        contents.rollouts.insert(
            change.migration.to_owned(),
            State {
                status: change.status,
                step: change.step,
                since_ms: now_ms(),
                reason: change.reason.to_owned(),
                promoted: change.promoted,
                version: version + 1,
            },
        );
        push_event(
            &mut contents,
            Some(change.migration),
            change.kind,
            change.actor,
            change.event_detail(),
        );
        self.write(&contents)?;
        Ok(true)
    }

    pub fn event(
        &self,
        migration: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<(), String> {
        let _lock = Lock::take(&self.path)?;
        let mut contents = self.read()?;
        push_event(&mut contents, migration, kind, actor, detail.clone());
        self.write(&contents)
    }

    /// The most recent events of a migration, newest first: (at, kind, actor, detail).
    pub fn recent_events(
        &self,
        migration: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, String, String)>, String> {
        Ok(self
            .read()?
            .events
            .iter()
            .rev()
            .filter(|e| e.migration.as_deref() == Some(migration))
            .take(limit)
            .map(|e| {
                let at = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_millis(e.at_unix_ms.max(0) as u64),
                );
                (
                    at.to_string(),
                    e.kind.clone(),
                    e.actor.clone(),
                    e.detail.to_string(),
                )
            })
            .collect())
    }
}

fn push_event(
    contents: &mut Contents,
    migration: Option<&str>,
    kind: &str,
    actor: &str,
    detail: serde_json::Value,
) {
    super::store::log_event(migration, kind, actor, &detail);
    contents.events.push(Event {
        at_unix_ms: now_ms(),
        migration: migration.map(str::to_owned),
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        detail,
    });
    let excess = contents.events.len().saturating_sub(KEEP_EVENTS);
    contents.events.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::Status;

    fn change(from_version: i64, status: Status) -> Change<'static> {
        Change {
            migration: "m",
            from_version,
            status,
            step: 1,
            reason: "test",
            promoted: false,
            kind: "command",
            actor: "me@host",
            detail: serde_json::json!({}),
        }
    }

    #[test]
    fn changes_are_conditional_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        assert!(store.load().unwrap().is_empty());
        assert!(store.apply(&change(0, Status::Ramping)).unwrap());
        assert!(
            !store.apply(&change(0, Status::Paused)).unwrap(),
            "stale version"
        );
        assert!(store.apply(&change(1, Status::RolledBack)).unwrap());
        let states = store.load().unwrap();
        assert_eq!(states[0].1.status, Status::RolledBack);
        assert_eq!(states[0].1.version, 2);
        let events = store.recent_events("m", 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].1, "command");
        assert!(events[0].3.contains("rolled_back"), "{:?}", events[0]);
        std::fs::write(dir.path().join("state.json"), "nonsense").unwrap();
        assert!(store
            .load()
            .unwrap_err()
            .contains("is not a rollout state file"));
    }
}
