//! File descriptors: the process limit is raised at startup, and sessions are admitted only while each can
//! still get its two descriptors (client and upstream), so a client past the limit is told so at once instead
//! of waiting in the kernel's accept queue while `accept()` fails with EMFILE.

use std::fs::File;
use std::io;

/// Descriptors kept free beyond the sessions' own: cancel forwarding, refusals, config reads, metrics scrapes.
pub const RESERVE: usize = 16;

/// The soft and hard RLIMIT_NOFILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: libc::rlim_t,
    pub hard: libc::rlim_t,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as nginx, Go's runtime and systemd services do: the soft
/// limit (often 1024) is a default for programs that never expected many files, not a budget for a proxy.
pub fn raise() -> io::Result<Limit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(Limit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Descriptors open now, where the platform lists them (`/proc/self/fd`, `/dev/fd`).
pub fn open_now() -> Option<usize> {
    ["/proc/self/fd", "/dev/fd"]
        .iter()
        .find_map(|dir| std::fs::read_dir(dir).ok())
        .map(|entries| entries.count().saturating_sub(1))
}

/// How many sessions fit under `limit` with `open` descriptors already taken by pgshift itself.
pub fn session_capacity(limit: u64, open: usize) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit.saturating_sub(open + RESERVE) / 2
}

/// One descriptor held back for the moment `accept()` fails with EMFILE: closed, it lets pgshift accept the
/// waiting client and tell it why it is refused; then it is opened again.
pub fn spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// How many sessions pgshift admits, and whether the descriptor limit is what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimit {
    pub max: usize,
    /// The soft RLIMIT_NOFILE, if known.
    pub descriptors: Option<u64>,
    /// The descriptor limit allows fewer sessions than `listen.max_connections`.
    pub capped: bool,
}

impl SessionLimit {
    /// `max_connections` from the config, capped by what `limit` leaves after the `open` descriptors.
    pub fn new(max_connections: usize, limit: Option<Limit>, open: usize) -> SessionLimit {
        let capacity = limit.map_or(usize::MAX, |l| session_capacity(l.soft, open));
        SessionLimit {
            max: max_connections.min(capacity),
            descriptors: limit.map(|l| l.soft),
            capped: capacity < max_connections,
        }
    }
}

/// Whether an accept error means the process (EMFILE) or the system (ENFILE) is out of descriptors.
pub fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_the_reserve_and_counts_two_per_session() {
        assert_eq!(session_capacity(1024, 20), (1024 - 20 - RESERVE) / 2);
        assert_eq!(session_capacity(64, 60), 0);
        assert_eq!(
            session_capacity(u64::MAX, 20),
            (usize::MAX - 20 - RESERVE) / 2
        );
    }

    #[test]
    fn the_descriptor_limit_caps_max_connections() {
        let limit = Some(Limit {
            soft: 256,
            hard: 256,
        });
        assert_eq!(
            SessionLimit::new(1000, limit, 24),
            SessionLimit {
                max: (256 - 24 - RESERVE) / 2,
                descriptors: Some(256),
                capped: true
            }
        );
        assert_eq!(
            SessionLimit::new(50, limit, 24),
            SessionLimit {
                max: 50,
                descriptors: Some(256),
                capped: false
            }
        );
        assert_eq!(SessionLimit::new(50, None, 24).max, 50);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(open_now().is_some_and(|n| n >= 3));
    }
}
