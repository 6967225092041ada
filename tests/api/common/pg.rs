//! Throwaway PostgreSQL servers for the PostgreSQL variants of the tests.
//!
//! The binaries are Debian's `postgresql` package (`/usr/lib/postgresql/<highest version>/bin`) or
//! the directory in `HIVEHUB_TEST_PG_BIN`. Without them the PostgreSQL variants are skipped (they pass
//! and say so), unless `HIVEHUB_TEST_REQUIRE_POSTGRES=1`, which turns the skip into a failure.
//!
//! - [`shared`]: one server per test process, started lazily by the first test that needs it. Every
//!   PostgreSQL `TestHub` gets its own database on it (`hub_<n>`), dropped when the hub is dropped.
//! - [`PgServer::dedicated`]: a server of its own (own data directory and port) that a test may stop
//!   and start again; the data survives, the port stays the same.
//!
//! Each server is a fresh cluster (`initdb`) in `$TMPDIR/hivehub-pg-<pid>-<n>`, tuned for throwaway
//! data (no fsync), listening on 127.0.0.1 only, with its unix socket in the data directory. The
//! `postgres` process is started directly (no `pg_ctl`, which daemonizes) by one long-lived thread
//! with a parent-death signal, so it cannot outlive the test process; as root, it runs as the
//! `postgres` system user. Directories left by test processes that no longer exist are removed when
//! the next process starts a server.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

/// Environment variable: the directory holding `initdb` and `postgres`.
pub const ENV_BIN: &str = "HIVEHUB_TEST_PG_BIN";
/// Environment variable: `1` makes a missing PostgreSQL a test failure instead of a skip (CI).
pub const ENV_REQUIRE: &str = "HIVEHUB_TEST_REQUIRE_POSTGRES";
/// Why the PostgreSQL variants are skipped.
pub const NOT_FOUND: &str = "PostgreSQL binaries not found (install Debian's postgresql or set HIVEHUB_TEST_PG_BIN)";

/// Prefix of the per-server directories in the temporary directory.
const DIR_PREFIX: &str = "hivehub-pg-";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding `initdb` and `postgres`, or why there is none.
pub fn bin_dir() -> Result<&'static Path, &'static str> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_bin_dir).as_ref().map(PathBuf::as_path).map_err(String::as_str)
}

fn has_binaries(dir: &Path) -> bool {
    ["initdb", "postgres"].iter().all(|b| dir.join(b).is_file())
}

fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(ENV_BIN).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_binaries(&dir) {
            Ok(dir)
        } else {
            Err(format!("{NOT_FOUND}: no initdb and postgres in {ENV_BIN}={}", dir.display()))
        };
    }
    // The highest version: /usr/lib/postgresql/15/bin beats /usr/lib/postgresql/9.6/bin.
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_binaries(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| NOT_FOUND.to_string())
}

/// Whether `HIVEHUB_TEST_REQUIRE_POSTGRES` forbids skipping (set, not empty, not `0`).
pub fn required() -> bool {
    std::env::var(ENV_REQUIRE).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether a PostgreSQL test should return at once, passed: true when the binaries are missing (the
/// test prints `skipped: ...`, and the first skip in the process also says it on the real stderr,
/// past the test harness's output capture). Panics instead when `HIVEHUB_TEST_REQUIRE_POSTGRES=1`.
pub fn skip() -> bool {
    let Err(why) = bin_dir() else { return false };
    if required() {
        panic!("{why}; {ENV_REQUIRE}=1 forbids skipping the PostgreSQL tests");
    }
    static ANNOUNCED: Once = Once::new();
    ANNOUNCED.call_once(|| {
        let _ = writeln!(io::stderr(), "hivehub tests: the PostgreSQL variants are skipped: {why}");
    });
    println!("skipped: {why}");
    true
}

/// The process-wide server, started by the first call. Fails (without retrying in later calls) when
/// the binaries are missing or the server does not start.
pub fn shared() -> Result<&'static PgServer, String> {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = SHARED.get_or_init(|| {
        let server = PgServer::create()?;
        // Stop it and remove its directory when the test process exits normally (the parent-death
        // signal covers the other exits, the next process's clean-up the directory).
        extern "C" fn at_exit() {
            if let Some(Ok(server)) = SHARED.get() {
                server.shut_down(libc::SIGQUIT, Duration::from_secs(10));
                let _ = fs::remove_dir_all(&server.root);
            }
        }
        // SAFETY: registers a plain function; it only signals, waits for and removes what it owns.
        unsafe { libc::atexit(at_exit) };
        Ok(server)
    });
    server.as_ref().map_err(Clone::clone)
}

/// A PostgreSQL server of the tests: a fresh cluster in a temporary directory, on 127.0.0.1.
pub struct PgServer {
    bin: PathBuf,
    /// `$TMPDIR/hivehub-pg-<pid>-<n>`: `data/` (the cluster, with the unix socket) and `server.log`.
    root: PathBuf,
    port: AtomicU16,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// A server of its own for a test that stops and starts PostgreSQL: its own data directory and
    /// port, stopped and removed when dropped. Blocks for the `initdb` and the start (a second or
    /// two). Panics when the binaries are missing: call it after `skip_unless_backend!()` (PostgreSQL
    /// variants) or `pg::skip()`.
    pub fn dedicated() -> PgServer {
        PgServer::create().unwrap_or_else(|e| panic!("{e}"))
    }

    fn create() -> Result<PgServer, String> {
        let bin = bin_dir()?.to_path_buf();
        remove_stale_dirs();
        static NEXT_DIR: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let server = PgServer { bin, root, port: AtomicU16::new(free_port()), child: Mutex::new(None) };
        server.init_cluster()?;
        server.launch(true)?;
        Ok(server)
    }

    /// The TCP port (the same across `stop` / `start`).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// The URL of database `db` as the superuser `postgres` (trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port())
    }

    /// The cluster's directory (also the unix socket directory).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server's log: everything it printed since `initdb`, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// Whether the server process is running (between `start` and `stop`).
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server (fast shutdown: sessions are ended, the data kept). Blocks until it exited.
    pub fn stop(&self) {
        self.shut_down(libc::SIGINT, Duration::from_secs(30));
    }

    /// Starts the stopped server again on the same data directory and port; blocks until it accepts
    /// connections. Does nothing when it runs.
    pub fn start(&self) {
        self.launch(false).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Creates a fresh empty database (`hub_<n>`) and returns its name.
    pub async fn create_database(&self) -> String {
        static NEXT_DB: AtomicU64 = AtomicU64::new(1);
        let name = format!("hub_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.admin_execute(&format!("CREATE DATABASE {name}")).await;
        name
    }

    /// Drops database `name`, ending the sessions still connected to it.
    pub async fn drop_database(&self, name: &str) {
        self.admin_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }

    /// Runs one statement on the `postgres` database, over a connection of its own (not a pool: a
    /// pool made in one test's runtime would not outlive it).
    async fn admin_execute(&self, sql: &str) {
        if let Err(e) = self.try_admin_execute(sql).await {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    async fn try_admin_execute(&self, sql: &str) -> Result<(), String> {
        let url = self.url("postgres");
        let mut conn = PgConnection::connect(&url).await.map_err(|e| format!("connect to {url}: {e}"))?;
        let done = conn.execute(sql).await.map(drop).map_err(|e| format!("{sql}: {e}"));
        let _ = conn.close().await;
        done
    }

    /// `initdb` into `root/data`; as root, as the `postgres` user (initdb refuses to run as root).
    fn init_cluster(&self) -> Result<(), String> {
        fs::create_dir_all(&self.root).map_err(|e| format!("cannot create {}: {e}", self.root.display()))?;
        let initdb = self.bin.join("initdb");
        let mut command = match postgres_user()? {
            Some((uid, gid)) => {
                let path = CString::new(self.root.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::chown(path.as_ptr(), uid, gid) } != 0 {
                    return Err(format!("chown {} to postgres: {}", self.root.display(), io::Error::last_os_error()));
                }
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(initdb);
                c
            }
            None => Command::new(initdb),
        };
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .current_dir(&self.root)
            .stdin(Stdio::null());
        let out = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
        if !out.status.success() {
            let hint = if postgres_user()?.is_some() {
                "\n(as root, initdb and the server run as the `postgres` user, which must be able to reach this \
                 directory: set TMPDIR to one it can)"
            } else {
                ""
            };
            return Err(format!(
                "initdb failed ({}): {command:?}\n{}{}{hint}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Starts the server process unless it runs, and waits until it accepts connections. On the first
    /// start (`may_move_port`) a port taken meanwhile is replaced by another free one.
    fn launch(&self, may_move_port: bool) -> Result<(), String> {
        let mut running = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if running.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))) {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_before = self.log().len();
            let mut child = self.spawn()?;
            match self.wait_ready(&mut child) {
                Ok(()) => {
                    *running = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = self.log();
                    let port_taken = log.get(log_before..).is_some_and(|l| l.contains("could not bind"));
                    if !(may_move_port && port_taken && attempt < 5) {
                        return Err(format!("{e}\n{}", self.log_tail()));
                    }
                    self.port.store(free_port(), Ordering::Relaxed);
                }
            }
        }
    }

    /// Spawns `postgres` from the spawner thread (see [`on_spawner_thread`]): dies with the test
    /// process; as root, runs as the `postgres` user.
    fn spawn(&self) -> Result<Child, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open {}: {e}", self.log_path().display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port().to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.data_dir())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=400"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let user = postgres_user()?;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe system calls, no allocation, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some((uid, gid)) = user {
                    if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // After the credential change, which clears the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The test process ended before the signal was armed.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        on_spawner_thread(move || command.spawn().map_err(|e| format!("cannot start {command:?}: {e}")))
    }

    /// Waits until the server accepts connections, fails when it exits or takes too long.
    fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let url = self.url("postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        block_on(async {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("PostgreSQL exited while starting ({status})"));
                }
                let attempt = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
                if let Ok(Ok(conn)) = attempt {
                    let _ = conn.close().await;
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("PostgreSQL did not accept connections at {url} within {START_TIMEOUT:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Signals the server process and waits for it (killing it after `patience`).
    fn shut_down(&self, signal: libc::c_int, patience: Duration) {
        let Some(mut child) = self.child.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + patience;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
        format!("--- PostgreSQL log {} ---\n{}", self.log_path().display(), &log[start..])
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shut_down(libc::SIGQUIT, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A database of the shared server that is dropped (in the background) with its owner.
pub struct DbLease {
    name: String,
}

impl DbLease {
    /// Creates a fresh database on the shared server; returns its URL and the lease.
    pub async fn create() -> (String, DbLease) {
        let server = shared().unwrap_or_else(|e| {
            let hint = if bin_dir().is_err() {
                "\n(a PostgreSQL test must start with `skip_unless_backend!();`, see tests/api/main.rs)"
            } else {
                ""
            };
            panic!("{e}{hint}")
        });
        let name = server.create_database().await;
        (server.url(&name), DbLease { name })
    }
}

impl Drop for DbLease {
    fn drop(&mut self) {
        // Dropped from a thread of its own: the owner may be dropped outside of any runtime.
        static JANITOR: OnceLock<Mutex<mpsc::Sender<String>>> = OnceLock::new();
        let janitor = JANITOR.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<String>();
            std::thread::Builder::new()
                .name("pg-janitor".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    for name in rx {
                        if let Ok(server) = shared() {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = runtime.block_on(server.try_admin_execute(&sql));
                        }
                    }
                })
                .expect("janitor thread");
            Mutex::new(tx)
        });
        let _ = janitor.lock().unwrap_or_else(PoisonError::into_inner).send(std::mem::take(&mut self.name));
    }
}

/// The URL of a fresh database on the shared server for the `hivehub` processes started in `dir`
/// (binary tests): created at the first call and remembered in a file in `dir`, so every start in the
/// same directory uses the same database, and a new directory a new one.
pub fn database_for_dir(dir: &Path) -> String {
    let marker = dir.join(".hivehub-test-database-url");
    if let Ok(url) = fs::read_to_string(&marker) {
        return url;
    }
    let (url, lease) = block_on(DbLease::create());
    // Kept until the process ends: the processes using it are not ours to track.
    std::mem::forget(lease);
    fs::write(&marker, &url).unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
    url
}

/// The `postgres` system user's (uid, gid) when running as root (the server refuses to run as root);
/// `None` otherwise.
fn postgres_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    static USER: OnceLock<Option<(libc::uid_t, libc::gid_t)>> = OnceLock::new();
    let user = USER.get_or_init(|| {
        let name = CString::new("postgres").unwrap();
        // SAFETY: called once (under the OnceLock); the entry is copied out at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        // SAFETY: a non-null result points to a valid passwd entry.
        (!entry.is_null()).then(|| unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
    });
    match user {
        Some(ids) => Ok(Some(*ids)),
        None => Err("running as root and there is no `postgres` system user to run PostgreSQL as".into()),
    }
}

/// Runs `f` on the one long-lived thread that spawns the servers. `PR_SET_PDEATHSIG` fires when the
/// spawning *thread* ends: spawned from a test's thread, the server would die with that test.
fn on_spawner_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    spawner.lock().unwrap().send(job).expect("spawner thread alive");
    rx.recv().expect("spawner thread answered")
}

/// Runs a future to completion on a runtime of its own, on a thread of its own (callable from sync
/// code and from inside another runtime alike).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Removes the server directories of test processes that no longer exist (`hivehub-pg-<pid>-<n>`).
fn remove_stale_dirs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the process exists.
            let gone =
                unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone && pid as u32 != std::process::id() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Stops a dedicated server from async code (off the runtime: it waits for the server to go).
pub async fn stop_server(server: &std::sync::Arc<PgServer>) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
}

/// Starts a stopped dedicated server again from async code.
pub async fn start_server(server: &std::sync::Arc<PgServer>) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.start()).await.unwrap();
}
