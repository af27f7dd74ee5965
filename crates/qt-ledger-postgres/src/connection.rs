//! Reaching PostgreSQL: the driver configuration built from `ledger` (URL, timeouts, TLS)
//! and the connection pool.
//!
//! The pool is deadpool-postgres with "fast" recycling: a connection whose socket closed is
//! dropped at checkout and a fresh one opened, so after a PostgreSQL restart the ledger
//! reconnects by itself on its next write, with no extra round trip on healthy connections.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use qt_core::config::{PostgresLedgerConfig, PostgresTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Reported to PostgreSQL as `application_name` (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "qt-ledger";

/// The driver configuration: the URL, with `tls`, the timeouts and the application name
/// applied. Errors never contain the URL's password (the driver's parse errors do not quote
/// the input).
pub fn pg_config(cfg: &PostgresLedgerConfig) -> Result<tokio_postgres::Config, String> {
    let mut pg = tokio_postgres::Config::from_str(cfg.url.expose())
        .map_err(|e| format!("ledger.url {} is not a usable PostgreSQL URL: {e}", cfg.url))?;
    pg.ssl_mode(match cfg.tls {
        PostgresTls::Disable => SslMode::Disable,
        PostgresTls::Require | PostgresTls::VerifyFull => SslMode::Require,
    });
    pg.connect_timeout(cfg.connect_timeout);
    // Unacknowledged data on a connection whose peer vanished (a pulled cable, a failed-over
    // host) fails the statement after this long instead of the kernel's ~15 minutes.
    pg.tcp_user_timeout(cfg.connect_timeout + cfg.statement_timeout);
    pg.keepalives_idle(Duration::from_secs(30));
    pg.options(format!("-c statement_timeout={}", cfg.statement_timeout.as_millis()));
    if pg.get_application_name().is_none() {
        pg.application_name(APPLICATION_NAME);
    }
    Ok(pg)
}

/// The pool: at most `pool_size` connections, waiting at most `statement_timeout` for a
/// free one and `connect_timeout` for a new one.
pub fn pool(cfg: &PostgresLedgerConfig, pg: tokio_postgres::Config, tls: MakeRustlsConnect) -> Result<Pool, String> {
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(cfg.statement_timeout),
            create: Some(cfg.connect_timeout),
            recycle: Some(cfg.connect_timeout),
        })
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// The TLS connector for `tls`. With `disable` it is never used (the driver does not ask
/// for TLS) but the pool's type needs one.
pub async fn tls(cfg: &PostgresLedgerConfig) -> Result<MakeRustlsConnect, String> {
    ensure_crypto_provider();
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let builder = match cfg.tls {
        PostgresTls::Disable => builder.with_root_certificates(RootCertStore::empty()),
        PostgresTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
        PostgresTls::VerifyFull => builder.with_root_certificates(roots(cfg.ca_file.as_deref()).await?),
    };
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("client_cert_file", cert).await?;
            let key = read_key(key).await?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("ledger.client_cert_file / client_key_file are not a usable pair: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `ca_file`'s certificates, or the system's trusted roots.
async fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs("ca_file", path).await? {
                roots
                    .add(cert)
                    .map_err(|e| format!("ledger.ca_file {}: unusable certificate: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system root certificates found ({} errors); set ledger.ca_file",
                    found.errors.len()
                ));
            }
        }
    }
    Ok(roots)
}

async fn read_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read ledger.{field} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ledger.{field} {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("ledger.{field} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

async fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read ledger.client_key_file {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "ledger.client_key_file {} holds no usable PEM private key: {e}",
            path.display()
        )
    })
}

/// rustls needs a process-wide crypto provider. When a program links both of rustls's
/// providers none is chosen automatically, so install ring unless one is in place.
pub fn ensure_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is then in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `tls: require`: the handshake's signatures are checked (so the session is really
/// encrypted to whoever holds the key) but not who the certificate names or who issued it.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
