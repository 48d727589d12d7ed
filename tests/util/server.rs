//! Runs the real `berth` binary: writes a zot-format config for a root directory, starts
//! `berth serve` on port 0, learns the ephemeral address from the `listening on ADDR` log
//! line, keeps draining stderr (so the pipe never fills and blocks the server) into a buffer
//! that failing tests can print, and kills the process on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::http::Client;

/// The binary cargo built for this test run.
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The binary `Berth` starts: `BERTH_UNDER_TEST` when set (to run the suite against an older
/// build and see a test fail before its fix), else the one cargo built.
pub fn berth_binary() -> String {
    std::env::var("BERTH_UNDER_TEST").unwrap_or_else(|_| BERTH.to_string())
}

/// A debug build starts in well under a second; the margin is for a loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The knobs of the config file the tests vary.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `http.readTimeout`, a zot duration.
    pub read_timeout: &'static str,
    /// `storage.commit`: fsync before acknowledging.
    pub commit: bool,
    /// More `storage` keys (`dedupe`, `subPaths`, ...), merged over the ones above.
    pub storage: serde_json::Map<String, serde_json::Value>,
    /// The `extensions` section (`scrub`), when not empty.
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_timeout: "5s",
            commit: false,
            storage: serde_json::Map::new(),
            extensions: serde_json::Map::new(),
        }
    }
}

/// What `Berth::start_launch` adds to `Settings`: more `http` keys, and the limits and user
/// the process starts under, for the resource-exhaustion tests.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Merged into the config's `http` section.
    pub http: serde_json::Map<String, serde_json::Value>,
    /// `RLIMIT_NOFILE` as (soft, hard).
    pub open_files: Option<(u64, u64)>,
    /// `RLIMIT_NPROC` (soft and hard): threads count against it, per real user.
    pub processes: Option<u64>,
    /// Run as this user (and group of the same id); root ignores `RLIMIT_NPROC`.
    pub uid: Option<u32>,
    /// Environment variables set for the process (the S3 credential variables are always
    /// cleared first, so no berth under test finds the caller's keys).
    pub env: Vec<(String, String)>,
}

/// Where berth looks for S3 credentials besides its config (zot's order).
pub const AWS_VARS: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

impl Launch {
    fn apply(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        for var in AWS_VARS {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(uid) = self.uid {
            command.gid(uid).uid(uid);
        }
        let open_files = self.open_files;
        let processes = self.processes;
        if open_files.is_none() && processes.is_none() {
            return;
        }
        let set = |resource, soft: u64, hard: u64| {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit only reads the struct passed by reference.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setrlimit(2), which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some((soft, hard)) = open_files {
                    set(libc::RLIMIT_NOFILE, soft, hard)?;
                }
                if let Some(n) = processes {
                    set(libc::RLIMIT_NPROC, n, n)?;
                }
                Ok(())
            });
        }
    }
}

/// A running berth process.
pub struct Berth {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
    /// The config file it was started with (port 0: any other process may reuse it).
    config: PathBuf,
    log: Arc<Mutex<String>>,
    /// Set by `kill9`, so drop knows an exited process was the test's doing.
    killed: bool,
    /// Temporary directories removed when the server is dropped (after it is killed).
    _owned: Vec<TempDir>,
}

/// Runs `berth serve` on `config` with `env` set for it; it must refuse to start (exit
/// unsuccessfully within `START_TIMEOUT`). Its stderr.
pub fn refused_at_start(config: &serde_json::Value, env: &[(String, String)]) -> String {
    let dir = temp_dir();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut child = Command::new(berth_binary())
        .arg("serve")
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for berth") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            // The config is not printed: it may hold keys.
            panic!("berth started on a config it must refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("berth's stderr");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!status.success(), "{stderr}");
    stderr
}

/// A fresh temporary directory; a helper so every test names its scratch space the same way.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("berth-it-")
        .tempdir()
        .expect("create temporary directory")
}

impl Berth {
    /// Starts berth on a fresh, empty root with default settings.
    pub fn start() -> Berth {
        Berth::start_with(Settings::default())
    }

    /// Starts berth on a fresh, empty root that is removed when the server is dropped.
    pub fn start_with(settings: Settings) -> Berth {
        let dir = temp_dir();
        let root = dir.path().join("root");
        let mut berth = Berth::launch(&root, &settings, dir.path());
        berth._owned.push(dir);
        berth
    }

    /// Starts berth on a root the caller owns (it outlives the process: restarts, imports).
    pub fn start_on(root: &Path, settings: Settings) -> Berth {
        let config_dir = temp_dir();
        let mut berth = Berth::launch(root, &settings, config_dir.path());
        berth._owned.push(config_dir);
        berth
    }

    /// Starts berth on a fresh root with `launch`'s extra `http` keys, process limits and user.
    pub fn start_launch(settings: Settings, launch: Launch) -> Berth {
        let dir = temp_dir();
        if launch.uid.is_some() {
            // The unprivileged user must reach the config and create the root in here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("open up the temporary directory");
        }
        let root = dir.path().join("root");
        let mut berth = Berth::launch_with(&root, &settings, dir.path(), &launch);
        berth._owned.push(dir);
        berth
    }

    /// Starts berth on a root the caller owns, as `launch` says (its user: the caller makes
    /// the root and its parents reachable for that user).
    pub fn start_on_launch(root: &Path, settings: Settings, launch: Launch) -> Berth {
        let config_dir = temp_dir();
        if launch.uid.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(config_dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("let the user read the config");
        }
        let mut berth = Berth::launch_with(root, &settings, config_dir.path(), &launch);
        berth._owned.push(config_dir);
        berth
    }

    fn launch(root: &Path, settings: &Settings, config_dir: &Path) -> Berth {
        Berth::launch_with(root, settings, config_dir, &Launch::default())
    }

    fn launch_with(root: &Path, settings: &Settings, config_dir: &Path, launch: &Launch) -> Berth {
        let mut storage = json!({ "rootDirectory": root, "commit": settings.commit });
        storage
            .as_object_mut()
            .expect("storage is an object")
            .extend(settings.storage.clone());
        let mut config = json!({
            "distSpecVersion": "1.1.1",
            "storage": storage,
            "http": { "address": "127.0.0.1", "port": "0", "readTimeout": settings.read_timeout },
            "log": { "level": "info" }
        });
        if !settings.extensions.is_empty() {
            config["extensions"] = settings.extensions.clone().into();
        }
        config["http"]
            .as_object_mut()
            .expect("http is an object")
            .extend(launch.http.clone());
        let config_path = config_dir.join("config.json");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let mut command = Command::new(berth_binary());
        command
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        launch.apply(&mut command);
        let mut child = command.spawn().expect("spawn berth");

        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    // Only the first send matters; later ones fail once the receiver is gone.
                    let _ = addr_tx.send(addr);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });

        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Berth {
                child,
                addr,
                root: root.to_path_buf(),
                config: config_path,
                log,
                killed: false,
                _owned: Vec::new(),
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "berth did not log `listening on ADDR` ({status:?}); stderr:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything berth wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Asserts that an upload session was resumed at `size` bytes from its saved state,
    /// reading none of its bytes again (the store's log line, waited for: the log is read
    /// from stderr as it comes).
    #[track_caller]
    pub fn assert_resumed_without_rereading(&self, size: usize) {
        let resumed = "upload session resumed from its saved state";
        self.wait_for_log(resumed, Duration::from_secs(10));
        let logs = self.logs();
        assert!(
            logs.contains(resumed)
                && logs.contains(&format!("size={size}"))
                && logs.contains("reread_bytes=0"),
            "the session was not resumed from its saved state without re-reading:\n{logs}"
        );
    }

    /// Waits until the log holds `needle`; false when `timeout` passes first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (a crash would show here).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (SIGTERM, SIGINT) and waits up to `timeout` for the process to exit;
    /// its exit status, or `None` when it was still running then (and is killed).
    pub fn stop(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with the child's pid, which is not reaped until `wait` below.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
        self.killed = true;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for berth") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    /// SIGKILL (std's `Child::kill` is SIGKILL on Unix): no destructor, no flush, no cleanup.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 berth");
        self.child.wait().expect("reap berth");
        self.killed = true;
    }
}

impl Drop for Berth {
    /// Stops the server. A server that exited by itself (a crash the test's requests may not
    /// have noticed) fails the test; a failing test gets the server's log to explain it.
    fn drop(&mut self) {
        let exited_by_itself = !self.killed && !self.is_running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("berth stderr:\n{}", self.logs());
        } else if exited_by_itself {
            panic!("berth exited on its own; stderr:\n{}", self.logs());
        }
    }
}

/// The address in a `... listening on 127.0.0.1:PORT ...` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, after) = line.split_once("listening on ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// The log line that ends every collector sweep.
pub const SWEEP_DONE: &str = "gc: sweep done";

/// Polls `done` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

impl Berth {
    /// Waits until `n` more collector sweeps have finished than when called.
    #[track_caller]
    pub fn wait_sweeps(&self, n: usize) {
        let start = self.logs().matches(SWEEP_DONE).count();
        assert!(
            wait_until(Duration::from_secs(60), || self
                .logs()
                .matches(SWEEP_DONE)
                .count()
                >= start + n),
            "the collector did not sweep:\n{}",
            self.logs()
        );
    }
}
