//! A throwaway PostgreSQL cluster from the installed server binaries: `initdb` into a temp dir, started on a
//! free port with trust auth. Used by `pgshift demo` and by the integration tests.
//!
//! The postmaster runs under a small shell that waits on its stdin: when this process exits (even when
//! killed), the pipe closes and the shell stops the server and removes the directory.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. Install them, e.g. \
     `sudo apt-get install postgresql` on Debian/Ubuntu or `brew install postgresql` on macOS, or put their \
     directory on PATH (Debian keeps them in /usr/lib/postgresql/<version>/bin).";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("{step} failed: {detail}")]
    Failed { step: &'static str, detail: String },
}

fn failed(step: &'static str, detail: impl std::fmt::Display) -> ClusterError {
    ClusterError::Failed {
        step,
        detail: detail.to_string(),
    }
}

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `pg_hba.conf` lines placed before the default trust lines.
    pub hba: Vec<String>,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Certificate and key (PEM) to serve TLS with.
    pub tls: Option<(String, String)>,
}

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The `-c` settings it runs with (a standby runs with the same).
    settings: Vec<(String, String)>,
    user: Option<(u32, u32)>,
    guard: Option<(Child, ChildStdin)>,
}

/// Finds the directory holding `initdb` and `postgres`: PATH, `pg_config --bindir`, then Debian's layout.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(ClusterError::NotInstalled)
}

/// `initdb` and `postgres` refuse to run as root; then they run as the `postgres` user (or `nobody`).
fn unprivileged_user() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let euid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    ["postgres", "nobody"].iter().find_map(|name| {
        let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
        let fields: Vec<&str> = line.split(':').collect();
        Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
    })
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works")
}

impl Cluster {
    pub fn start(options: &Options) -> Result<Cluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("pgshift-pg-")
            .tempdir()
            .map_err(|e| failed("creating a temp dir", e))?
            .keep();
        let user = unprivileged_user();
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid);
            }
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| failed("chown of the temp dir", e))?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "-D",
            ])
            .arg(&data)
            .env("LC_ALL", "C");
        as_user(&mut initdb);
        let out = initdb.output().map_err(|e| failed("running initdb", e))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed("initdb", String::from_utf8_lossy(&out.stderr)));
        }

        let hba_path = data.join("pg_hba.conf");
        let mut hba = options.hba.join("\n");
        hba.push_str(
            "\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        );
        std::fs::write(&hba_path, hba).map_err(|e| failed("writing pg_hba.conf", e))?;

        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", "127.0.0.1"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "300"),
            ("shared_buffers", "64MB"),
            ("unix_socket_permissions", "0777"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some((cert, key)) = &options.tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).map_err(|e| failed("writing TLS files", e))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| failed("chmod of TLS files", e))?;
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| failed("chown of TLS files", e))?;
                }
            }
            settings.push(("ssl".into(), "on".into()));
        }
        settings.extend(options.settings.iter().cloned());

        Cluster::launch(bin_dir, dir, settings, user)
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`) on a port of its own, with the same
    /// settings; stopped and removed when dropped.
    pub fn start_standby(&self) -> Result<Cluster, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("pgshift-standby-")
            .tempdir()
            .map_err(|e| failed("creating a temp dir", e))?
            .keep();
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| failed("chown of the temp dir", e))?;
        }
        let mut backup = Command::new(self.tool("pg_basebackup"));
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-X", "stream", "-R", "-c", "fast", "-D"])
            .arg(dir.join("data"));
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            backup.uid(uid).gid(gid);
        }
        let out = match backup.output() {
            Ok(out) => out,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(failed("running pg_basebackup", e));
            }
        };
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed(
                "pg_basebackup",
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Cluster::launch(self.bin_dir.clone(), dir, self.settings.clone(), self.user)
    }

    /// Starts the postmaster of `dir/data` on a free port (retried on a port race).
    fn launch(
        bin_dir: PathBuf,
        dir: PathBuf,
        settings: Vec<(String, String)>,
        user: Option<(u32, u32)>,
    ) -> Result<Cluster, ClusterError> {
        let data = dir.join("data");
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid);
            }
        };
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut args = vec![
                "-D".to_owned(),
                data.display().to_string(),
                "-k".to_owned(),
                dir.display().to_string(),
                "-p".to_owned(),
                port.to_string(),
            ];
            for (k, v) in &settings {
                args.push("-c".into());
                args.push(format!("{k}={v}"));
            }
            let log = dir.join("postgres.log");
            // Stops the server when our end of the pipe closes, then removes the cluster.
            let script = r#"bin="$1"; dir="$2"; log="$3"; shift 3
"$bin/postgres" "$@" >>"$log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null' TERM INT
read -r _ || true
kill -INT $pid 2>/dev/null
wait $pid 2>/dev/null
rm -rf "$dir""#;
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(script)
                .arg("pgcluster")
                .arg(&bin_dir)
                .arg(&dir)
                .arg(&log)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            as_user(&mut cmd);
            let mut child = cmd.spawn().map_err(|e| failed("starting postgres", e))?;
            let stdin = child.stdin.take().expect("stdin is piped");
            let mut cluster = Cluster {
                port,
                dir: dir.clone(),
                bin_dir: bin_dir.clone(),
                settings: settings.clone(),
                user,
                guard: Some((child, stdin)),
            };
            match cluster.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last_error = format!("{e}\n{}", tail(&log, 20));
                    cluster.stop_server_only();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(failed("starting postgres", last_error))
    }

    /// Polls until the server accepts a login (not just the TCP connection).
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((child, _)) = &mut self.guard {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("postgres exited early ({status})"));
                }
            }
            if login_works(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not accept connections within {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client tool beside the server binaries, else from PATH.
    fn tool(&self, name: &str) -> PathBuf {
        let beside = self.bin_dir.join(name);
        if beside.is_file() {
            beside
        } else {
            name.into()
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A libpq connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` in `database` with psql as the superuser, stopping at the first error; psql's stderr if it fails.
    pub fn psql(&self, database: &str, sql: &str) -> Result<(), String> {
        let out = Command::new(self.tool("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(database),
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn stop_server_only(&mut self) {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Stops the server and removes its directory.
    pub fn stop(&mut self) {
        self.stop_server_only();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a StartupMessage and checks for AuthenticationOk (not "the database system is starting up").
fn login_works(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let packet =
        crate::protocol::startup::encode_startup(&[("user", "postgres"), ("database", "postgres")]);
    if stream.write_all(&packet).is_err() {
        return false;
    }
    let mut reply = [0u8; 9];
    stream.read_exact(&mut reply).is_ok() && reply[0] == b'R' && reply[5..9] == [0, 0, 0, 0]
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
