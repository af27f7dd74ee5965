//! A PostgreSQL of the test's own: a fresh cluster in a temporary directory on a free
//! port, started, killed and restarted at will, optionally serving TLS only.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use qt_test_support::TestCerts;

pub fn bin_dir() -> PathBuf {
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
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    /// (uid, gid) to run as, when root.
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl PrivatePostgres {
    /// With `tls`, the server accepts TLS connections only, presenting `tls`'s server
    /// certificate and asking for a client certificate issued by its CA.
    pub fn init(tls: Option<&TestCerts>) -> Self {
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
        // Unix socket for the harness itself; TCP as the test asks.
        let tcp = match tls {
            None => "host all all 127.0.0.1/32 trust\n",
            Some(_) => "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
        };
        std::fs::write(pg.data().join("pg_hba.conf"), format!("local all all trust\n{tcp}")).expect("pg_hba.conf");
        if let Some(certs) = tls {
            let mut conf = String::from("ssl = on\n");
            for (name, from) in [
                ("server.crt", &certs.server_cert),
                ("server.key", &certs.server_key),
                ("ca.crt", &certs.ca),
            ] {
                let to = pg.data().join(name);
                std::fs::copy(from, &to).expect("copy a certificate");
                pg.own(&to);
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            }
            conf.push_str("ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n");
            let path = pg.data().join("postgresql.auto.conf");
            std::fs::write(&path, conf).expect("postgresql.auto.conf");
            pg.own(&path);
        }
        pg
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
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

    pub fn url(&self) -> String {
        format!("postgres://postgres:outage-pw-1@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (recovering from a crash if there was one) and waits until it
    /// accepts connections.
    pub async fn start(&mut self) {
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
            let socket = format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            );
            match tokio_postgres::connect(&socket, tokio_postgres::NoTls).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("the private PostgreSQL did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGKILL to every process of the server.
    pub fn kill(&mut self) {
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
