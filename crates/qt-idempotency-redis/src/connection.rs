//! Reaching Redis: the client built from configuration (URL, credential overrides, TLS) and
//! the pool manager that opens, checks and replaces connections.
//!
//! The pool is deadpool's, with a manager of our own rather than deadpool-redis's: that one
//! sends `PING` on every checkout, which doubles the round trips of a claim. Ours sends it
//! only to connections that sat idle (when a restart may have killed them unnoticed), and
//! the store takes a connection out of the pool as soon as a command on it fails at the
//! connection level. Either way the next checkout opens a fresh connection, so the pool
//! reconnects by itself once Redis is back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use qt_core::config::RedisStoreConfig;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionInfo, IntoConnectionInfo, RedisError, TlsCertificates,
};

use crate::scripts::Scripts;

/// Connections idle at least this long are pinged before reuse.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(2);

/// The URL parsed, with the `username` / `password` overrides applied.
pub fn connection_info(cfg: &RedisStoreConfig) -> Result<ConnectionInfo, String> {
    let info = cfg
        .url
        .expose()
        .into_connection_info()
        .map_err(|e| format!("idempotency.store.url {} is not a usable Redis URL: {e}", cfg.url))?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &cfg.password {
        redis = redis.set_password(password.expose());
    }
    Ok(info.set_redis_settings(redis))
}

/// The client for `info`, trusting `ca_file` and presenting the client certificate when
/// configured. TLS uses rustls; see [`ensure_crypto_provider`].
pub async fn client(cfg: &RedisStoreConfig, info: ConnectionInfo) -> Result<Client, String> {
    if !cfg.is_tls() {
        return Client::open(info).map_err(|e| format!("cannot set up the Redis client: {e}"));
    }
    ensure_crypto_provider();
    let root_cert = match &cfg.ca_file {
        Some(path) => Some(read_pem("ca_file", path).await?),
        None => None,
    };
    let client_tls = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem("client_cert_file", cert).await?,
            client_key: read_pem("client_key_file", key).await?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Client::open(info).map_err(|e| format!("cannot set up the Redis TLS client: {e}"));
    }
    Client::build_with_tls(info, TlsCertificates { client_tls, root_cert })
        .map_err(|e| format!("cannot set up the Redis TLS client from idempotency.store.ca_file / client_cert_file / client_key_file: {e}"))
}

async fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read idempotency.store.{field} {}: {e}", path.display()))
}

/// rustls needs a process-wide crypto provider. When a program links both of rustls's
/// providers (as the `qt` binary does through other crates) none is chosen automatically and
/// rustls would panic, so install ring unless the program already chose one.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is then in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Opens connections (loading the scripts on each, so the first claim on a fresh
/// connection needs no extra round trip) and vets idle ones before reuse.
pub struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
    scripts: Arc<Scripts>,
}

impl Manager {
    pub fn new(client: Client, connect_timeout: Duration, command_timeout: Duration, scripts: Arc<Scripts>) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout));
        Self {
            client,
            config,
            scripts,
        }
    }
}

impl std::fmt::Debug for Manager {
    // The client holds the credentials; it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let mut load = redis::pipe();
        for script in self.scripts.all() {
            load.add_command(script.load()).ignore();
        }
        load.query_async::<()>(&mut conn).await?;
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut MultiplexedConnection, metrics: &Metrics) -> RecycleResult<RedisError> {
        if metrics.last_used() < PING_IDLE_AFTER {
            return Ok(());
        }
        redis::cmd("PING").query_async::<()>(conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::Secret;

    #[test]
    fn overrides_replace_url_credentials() {
        let mut cfg = RedisStoreConfig::new("redis://urluser:urlpass@127.0.0.1:6390/3");
        let info = connection_info(&cfg).expect("parses");
        assert_eq!(info.redis_settings().username(), Some("urluser"));
        assert_eq!(info.redis_settings().password(), Some("urlpass"));
        assert_eq!(info.redis_settings().db(), 3);

        cfg.username = Some("qt".into());
        cfg.password = Some(Secret::new("from-env"));
        let info = connection_info(&cfg).expect("parses");
        assert_eq!(info.redis_settings().username(), Some("qt"));
        assert_eq!(info.redis_settings().password(), Some("from-env"));
        assert_eq!(info.addr().to_string(), "127.0.0.1:6390");
    }

    #[test]
    fn bad_urls_are_reported_masked() {
        let cfg = RedisStoreConfig::new("http://user:hunter22@127.0.0.1/");
        let err = connection_info(&cfg).expect_err("wrong scheme");
        assert!(err.contains("idempotency.store.url"), "{err}");
        assert!(!err.contains("hunter22"), "{err}");
    }

    #[test]
    fn a_crypto_provider_is_in_place_after_ensuring_it() {
        ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        // Idempotent: a second call keeps the provider already chosen.
        let before = rustls::crypto::CryptoProvider::get_default().map(std::sync::Arc::as_ptr);
        ensure_crypto_provider();
        let after = rustls::crypto::CryptoProvider::get_default().map(std::sync::Arc::as_ptr);
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn missing_tls_files_name_the_field_and_path() {
        let mut cfg = RedisStoreConfig::new("rediss://127.0.0.1:6390");
        cfg.ca_file = Some("/nonexistent/qt-ca.pem".into());
        let info = connection_info(&cfg).expect("parses");
        let err = client(&cfg, info).await.expect_err("file is missing");
        assert!(
            err.contains("idempotency.store.ca_file /nonexistent/qt-ca.pem"),
            "{err}"
        );
    }
}
