//! A PostgreSQL of the test's own, killed with SIGKILL while writes go on and started
//! again: writes fail during the outage and the ledger says it is unhealthy; afterwards the
//! same ledger writes again on fresh connections, and every batch it reported written is
//! there.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qt_core::config::PostgresLedgerConfig;
use qt_core::{Health, Ledger, LedgerFilter, LedgerStatus};
use qt_ledger_postgres::PostgresLedger;

use crate::support::minimal;

fn bin_dir() -> PathBuf {
    std::env::var_os("QT_TEST_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from)
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id prints a number")
}

/// A private server: a fresh cluster in a temporary directory, on a free port. PostgreSQL
/// refuses to run as root, so when the tests are root it runs as the `postgres` user.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// (uid, gid) to run as, when root.
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl PrivatePostgres {
    fn init() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let user = (id(&["-u"]) == 0).then(|| (id(&["-u", "postgres"]), id(&["-g", "postgres"])));
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let pg = Self {
            dir,
            port,
            user,
            server: None,
        };
        let status = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.data())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run initdb from {} (QT_TEST_PG_BIN): {e}", bin_dir().display()));
        assert!(status.success(), "initdb failed");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join(program));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn url(&self) -> String {
        format!("postgres://postgres:outage-pw-1@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (recovering from a crash if there was one) and waits until it
    /// accepts connections.
    async fn start(&mut self) {
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-k",
            ])
            .arg(self.dir.path())
            // Its own process group, so the whole server (postmaster and backends) can be
            // killed at once, as a machine crash would.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("the private PostgreSQL did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGKILL to every process of the server.
    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let group = format!("-{}", server.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = server.wait();
            // Backends are in the group too; give the kernel a moment to reap them.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn assert_secret_free(text: &str) {
    assert!(!text.contains("outage-pw-1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_during_a_crash_and_resume_on_the_same_ledger_after_restart() {
    let mut pg = PrivatePostgres::init();
    pg.start().await;
    let mut cfg = PostgresLedgerConfig::new(pg.url());
    cfg.pool_size = 2;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    let ledger = Arc::new(PostgresLedger::connect(&cfg, false).await.expect("connect"));

    // A writer that keeps going through the outage, as the engine would.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = tokio::spawn({
        let (ledger, stop, written, errors) = (ledger.clone(), stop.clone(), written.clone(), errors.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("m{n}");
                match ledger
                    .record_batch(vec![minimal(&id, LedgerStatus::Succeeded, n)])
                    .await
                {
                    Ok(()) => written.lock().push(id),
                    Err(e) => errors.lock().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    wait_for("writes before the crash", || written.lock().len() >= 5).await;
    assert_eq!(ledger.health().await, Health::Healthy);
    pg.kill();
    let before_restart = written.lock().len();
    wait_for("writes failing", || errors.lock().len() >= 3).await;
    let Health::Unhealthy(why) = ledger.health().await else {
        panic!("the ledger must be unhealthy while PostgreSQL is down")
    };
    assert!(why.contains(&format!("127.0.0.1:{}", pg.port)), "{why}");
    assert_secret_free(&why);
    // No write succeeds while the server is down (at most one that was committing as it
    // was killed may have been reported either way).
    assert!(written.lock().len() <= before_restart + 1);

    pg.start().await;
    let after = written.lock().len();
    wait_for("writes after the restart", || written.lock().len() >= after + 5).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert_eq!(ledger.health().await, Health::Healthy);

    // Every batch reported written is stored: nothing acked was lost in the crash.
    let stored: Vec<String> = ledger
        .query(&LedgerFilter::default())
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    for id in written.lock().iter() {
        assert!(stored.contains(id), "{id} was reported written but is not stored");
    }
    for e in errors.lock().iter() {
        assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
        assert_secret_free(e);
    }
}

/// Waits (at most 20s, failing the test after) until `done`.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
