//! Fixtures: a real `redis-server` on a free loopback port, a TCP proxy in
//! front of it that can blackhole its connections, a counting HTTP server,
//! and worker processes (this test binary, re-executed).
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Finds `redis-server`, or fails the test saying how to install it:
/// these tests must not pass silently without a real Redis.
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TF_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join("redis-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "redis-server not found on PATH (nor TF_REDIS_SERVER): these tests run against a real Redis; \
         install it (Debian/Ubuntu: `apt-get install -y redis-server`)"
    );
}

/// A free port, never one handed out before in this process: a test that
/// restarts its server on its port must find it still free.
fn free_port() -> u16 {
    static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut used = USED.lock().unwrap();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// The process id of the redis-server answering on `port`, if any.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A `redis-server` of our own; killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free 127.0.0.1 port, with no persistence.
    pub fn start() -> Self {
        let binary = redis_server_binary();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self { port, child: None };
            if server.spawn(&binary) {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 attempts");
    }

    fn spawn(&mut self, binary: &PathBuf) -> bool {
        let mut child = Command::new(binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {}: {e}; these tests need a real redis-server \
                     (Debian/Ubuntu: `apt-get install -y redis-server`)",
                    binary.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // Exited: most likely the port was taken meanwhile.
                return false;
            }
            // The answer must come from our child: with tests starting
            // servers in parallel, another test's server may hold the port.
            match server_pid(self.port) {
                Some(pid) if pid == child.id() => {
                    self.child = Some(child);
                    return true;
                }
                Some(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL): no goodbye to the clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server not running").id();
        // The shell's builtin `kill`: present wherever `sh` is.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {pid}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Starts a fresh server on the same port (no data survives).
    pub fn restart(&mut self) {
        self.kill();
        let binary = redis_server_binary();
        for _ in 0..50 {
            if self.spawn(&binary) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// A plain connection for checks made by the test itself.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits (bounded) until the concurrency limit `name` has `n` holders.
    pub async fn until_holders(&self, name: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let held = self.holders(name).await;
            if held == n {
                return;
            }
            assert!(Instant::now() < deadline, "{held} holders, expected {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Holders of the concurrency limit `name` on Redis, expired or not.
    pub async fn holders(&self, name: &str) -> u64 {
        redis::AsyncCommands::zcard(
            &mut self.connection().await,
            format!("tower-fanout:{{{name}}}:holders"),
        )
        .await
        .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server on another loopback port.
/// [`blackhole`](Self::blackhole) makes the connections it has go silent,
/// as when a NAT or firewall drops a flow's state or the peer host vanishes
/// without a FIN or RST: nothing more is forwarded either way, yet both
/// sockets stay open, so no side sees an error. Connections made after it
/// are forwarded normally. Everything stops when the proxy is dropped.
pub struct BlackholeProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// Bumped by each blackhole; a connection accepted under an older value
    /// stops forwarding.
    blackholes: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackholeProxy {
    /// Forwards each connection made to it to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let (blackholes, _) = tokio::sync::watch::channel(0u64);
        let (counted, watched) = (accepted.clone(), blackholes.subscribe());
        let task = tokio::spawn(async move {
            // Dropped with this task (when the proxy is): aborts every
            // connection's task, which closes its sockets.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut blackholed = watched.clone();
                let epoch = *blackholed.borrow_and_update();
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let silenced = async { blackholed.wait_for(|now| *now > epoch).await.is_ok() };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        true = silenced => {
                            // Silent from now on: hold both sockets open,
                            // reading and writing nothing.
                            std::future::pending::<()>().await;
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            accepted,
            blackholes,
            task,
        }
    }

    /// The proxy's address as a Redis URL.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Silences every connection accepted so far (see the type's docs).
    pub fn blackhole(&self) {
        self.blackholes.send_modify(|epoch| *epoch += 1);
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP server on 127.0.0.1 that counts the requests it gets and the
/// most it ever had in flight at once.
#[derive(Clone)]
pub struct CountingServer {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl CountingServer {
    /// Each request is held `hold` before it is answered.
    pub async fn start(hold: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let server_stats = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let stats = server_stats.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let stats = stats.clone();
                        async move {
                            let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
                            stats.total.fetch_add(1, Ordering::SeqCst);
                            if !hold.is_zero() {
                                tokio::time::sleep(hold).await;
                            }
                            // Out of flight before the answer leaves, so a
                            // client sees its response only after this.
                            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, stats }
    }

    pub fn total(&self) -> u64 {
        self.stats.total.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u64 {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }
}

/// The env var that turns a run of this test binary into a worker.
pub const WORKER_ENV: &str = "TF_REDIS_WORKER";

/// A worker process: this test binary, re-executed to run only the test
/// `entry` with `WORKER_ENV` set, talking over stdin/stdout.
pub struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    pub fn spawn(entry: &str, env: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([entry, "--exact", "--nocapture", "--test-threads=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Waits (bounded) for a line `WORKER <word> ...` and returns the rest.
    pub async fn expect(&mut self, word: &str) -> String {
        let prefix = format!("WORKER {word}");
        let wait = async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                // libtest may have printed `test worker_entry ... ` first.
                if let Some(at) = line.find(&prefix) {
                    return line[at + prefix.len()..].trim().to_owned();
                }
            }
            panic!("worker exited before saying {word:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("worker did not say {word:?} within 30 s"))
    }

    pub async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// SIGKILL: the worker gets no chance to release anything.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    pub async fn wait(&mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("worker did not exit within 30 s")
            .unwrap();
        assert!(status.success(), "worker failed: {status}");
    }
}

/// Parses `key=value` pairs from a worker's report.
pub fn field(report: &str, key: &str) -> u64 {
    report
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
        .parse()
        .unwrap()
}

/// Reads one line from stdin (the parent's go signal), off the runtime.
pub async fn wait_for_go() {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
    })
    .await
    .unwrap();
}

pub fn env_u64(key: &str) -> u64 {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("worker needs {key}"))
        .parse()
        .unwrap()
}

pub fn env_str(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("worker needs {key}"))
}

/// The store timeout of the outage tests: how long a caller may wait on a
/// Redis that does not answer. A whole second (it was 200 ms), so that the
/// calls that must get an answer in time get it on a loaded machine, and
/// the tests' bounds (the timeout plus a slack under it) can allow the
/// scheduling delays of such a machine and still tell one timeout from two.
pub const OUTAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// A store for the outage tests: a short timeout, and a probe every 100 ms
/// once Redis is found down.
pub fn outage_store(redis: &RedisServer) -> tower_fanout_redis::RedisStore {
    tower_fanout_redis::RedisStore::builder(redis.url())
        .timeout(OUTAGE_TIMEOUT)
        .probe_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// A service whose calls never finish (they hold their permit).
pub fn never_ends()
-> impl tower::Service<(), Response = (), Error = tower_fanout_core::BoxError> + Clone + Send + 'static
{
    tower::service_fn(|()| std::future::pending::<Result<(), tower_fanout_core::BoxError>>())
}

/// A service that answers `()` at once.
pub fn echo_unit()
-> impl tower::Service<(), Response = (), Error = Infallible, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(|()| async { Ok::<_, Infallible>(()) })
}

/// Records each event's level and fields (`name=value ...`), for every
/// test of a binary: a global subscriber, since tracing caches each
/// callsite's interest process-wide (a thread-local one beside tests on
/// other threads can miss events). Tests filter by what they look for.
#[derive(Clone, Default)]
pub struct Events(pub Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

impl Events {
    pub fn global() -> &'static Self {
        static EVENTS: std::sync::OnceLock<Events> = std::sync::OnceLock::new();
        EVENTS.get_or_init(|| {
            let events = Self::default();
            tracing::subscriber::set_global_default(events.clone()).unwrap();
            events
        })
    }

    pub fn count(&self, level: tracing::Level, needles: &[&str]) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(l, text)| *l == level && needles.iter().all(|n| text.contains(n)))
            .count()
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A call to a fail-fast limit, which answers at once: a refusal that
/// turned into a wait (for a token or a place) fails the test instead of
/// holding it up.
pub async fn at_once<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("a fail-fast limit kept a call waiting")
}

/// Drives `svc` to ready, taking a place of its concurrency limit: bounded,
/// so a limit that never grants one fails here instead of hanging.
pub async fn take_place<S, R>(svc: &mut S)
where
    S: tower::Service<R>,
    S::Error: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(10), tower::ServiceExt::ready(svc))
        .await
        .expect("no place granted within 10 s")
        .unwrap();
}
