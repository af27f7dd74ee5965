//! What the tests share: endpoints, stores on random prefixes, a raw client to look at what
//! the store wrote, clean-up, bounded waits and a private `redis-server`.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qt_core::StoreError;
use qt_core::config::RedisStoreConfig;
use qt_idempotency_redis::RedisStore;
pub use qt_test_support::TestCerts;
use redis::aio::MultiplexedConnection;

pub fn shared_url() -> String {
    std::env::var("QT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test (or earlier run) uses.
pub fn random_prefix() -> String {
    format!("qt-test-{:016x}", rand::random::<u64>())
}

/// Settings for tests: short timeouts so failures show quickly.
pub fn test_config(url: &str) -> RedisStoreConfig {
    let mut cfg = RedisStoreConfig::new(url);
    cfg.pool_size = 8;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.command_timeout = Duration::from_secs(1);
    cfg
}

/// A store on the shared Redis. Fails the test, saying how to start Redis, when it is down.
pub async fn shared_store(prefix: &str) -> RedisStore {
    let url = shared_url();
    match RedisStore::connect(&test_config(&url), prefix, false).await {
        Ok(store) => store,
        Err(e) => panic!(
            "the shared Redis at {url} (QT_TEST_REDIS_URL) is not reachable: {e}\n\
             start it with `cargo xtask services up`"
        ),
    }
}

/// A plain connection for looking at keys behind the store's back.
pub async fn raw(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("test URL parses");
    bounded(10, client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}; start it with `cargo xtask services up`"))
}

pub async fn get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.expect("GET")
}

pub async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.expect("PTTL")
}

/// Deletes every key under `prefix`. Keys the store writes all expire anyway (lease or
/// window), so a test that fails before this still leaves nothing behind for long.
pub async fn cleanup(url: &str, prefix: &str) {
    let mut conn = raw(url).await;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Awaits `fut` for at most `secs` seconds, failing the test beyond.
pub async fn bounded<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test step did not finish within {secs}s"))
}

/// Retries `attempt` every 50ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn assert_unavailable_or_timeout(result: &Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. }) => {}
        other => panic!("{what}: expected a StoreError, got {other:?}"),
    }
}

/// A `redis-server` of this test's own on a free loopback port, killed when dropped.
pub struct PrivateRedis {
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(Vec::new(), false)
    }

    /// Starts with extra `redis-server` arguments; `tls` makes the port a TLS port.
    pub fn start_with(extra: Vec<String>, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut args: Vec<String> = if tls {
            vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string()]
        } else {
            vec!["--port".into(), port.to_string()]
        };
        args.extend(
            [
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]
            .map(str::to_owned),
        );
        args.extend(["--dir".to_owned(), dir.path().display().to_string()]);
        args.extend([
            "--logfile".to_owned(),
            dir.path().join("redis.log").display().to_string(),
        ]);
        args.extend(extra);
        let mut server = Self {
            port,
            args,
            dir,
            child: None,
            tls,
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.tls { "localhost" } else { "127.0.0.1" };
        format!("{scheme}://{host}:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed? it ships with Redis): {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server exited with {status}; log: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on {} within 10s; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid} failed");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server would ignore nothing but SIGKILL anyway; resume for tidiness.
            let _ = Command::new("kill")
                .args([
                    "-CONT",
                    &self.child.as_ref().map(Child::id).unwrap_or_default().to_string(),
                ])
                .status();
        }
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
