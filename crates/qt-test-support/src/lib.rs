//! What the workspace's tests share across crates. A dev-dependency only: it depends on
//! nothing of qt's.

pub mod raw_amqp;
pub mod raw_kafka;

use std::path::PathBuf;
use std::process::Command;

/// A CA, a server certificate for `localhost` / 127.0.0.1 and a client certificate, made
/// with the `openssl` command line tool.
#[derive(Debug)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(p("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write ext");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=qt-test-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ]);
        for (name, cn) in [("server", "localhost"), ("client", "qt-test-client")] {
            let (key, csr, crt) = (
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.crt")),
            );
            let subject = format!("/CN={cn}");
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-CAcreateserial",
                "-in",
                &csr,
                "-CA",
                &p("ca.crt"),
                "-CAkey",
                &p("ca.key"),
                "-extfile",
                &p("san.ext"),
                "-out",
                &crt,
            ]);
        }
        let path = |name: &str| dir.path().join(name);
        Self {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            _dir: dir,
        }
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl to make test certificates (install openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
