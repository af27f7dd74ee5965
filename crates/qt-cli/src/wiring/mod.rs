//! From configuration to components: the source adapter and its publisher, the
//! idempotency store and the ledger. Broker crates are optional features; a configuration naming one that
//! is not compiled in fails with the feature to add (requirement 1.5).

#[cfg(feature = "kafka")]
mod kafka;
mod mock;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqs")]
mod sqs;

use std::sync::Arc;
use std::time::Duration;

use qt_adapter_mock::MockQueue;
use qt_core::config::{Config, LedgerConfig, SourceConfig, StoreConfig};
use qt_core::{AdapterSettings, DlqReader, IdempotencyStore, Ledger, Publisher, QueueAdapter};

/// A connected-to-be source.
pub struct Source {
    pub adapter: Arc<dyn QueueAdapter>,
    /// Set for the mock source: the CLI feeds it (`qt send` through the admin server) and
    /// watches it for `--until-idle`.
    pub mock: Option<MockQueue>,
}

pub fn adapter_settings(config: &Config) -> AdapterSettings {
    let mut s = AdapterSettings::new(
        config.name.clone(),
        config.processing.concurrency,
        config.processing.effective_max_in_flight(),
    );
    s.require_tls = config.security.require_tls;
    s
}

/// The error for a configuration that needs a crate this binary was built without.
#[allow(dead_code)]
fn missing_feature(what: &str, feature: &str, krate: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs the `{feature}` feature ({krate}), which this qt binary was built without. \
         Rebuild with it: `cargo install --path crates/qt-cli --features {feature}` \
         (or `cargo build -p qt-cli --features {feature}`)"
    )
}

pub async fn source(config: &Config) -> anyhow::Result<Source> {
    let settings = adapter_settings(config);
    match &config.source {
        SourceConfig::Mock(m) => mock::source(m),
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(k) => kafka::source(k, settings).await,
        #[cfg(feature = "rabbitmq")]
        SourceConfig::Rabbitmq(r) => rabbitmq::source(r, settings).await,
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs(s) => sqs::source(s, settings).await,
        #[allow(unreachable_patterns)]
        other => {
            let _ = settings;
            Err(missing_source(other))
        }
    }
}

/// The publisher `qt send` and `qt dlq replay` use: the broker's, or for the mock source the
/// running `qt run` that holds its queue.
pub async fn publisher(config: &Config) -> anyhow::Result<Arc<dyn Publisher>> {
    let settings = adapter_settings(config);
    match &config.source {
        SourceConfig::Mock(m) => Ok(Arc::new(mock::RunningMockPublisher::new(config, m)?)),
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(k) => kafka::publisher(k, settings).await,
        #[cfg(feature = "rabbitmq")]
        SourceConfig::Rabbitmq(r) => rabbitmq::publisher(r, settings).await,
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs(s) => sqs::publisher(s, settings).await,
        #[allow(unreachable_patterns)]
        other => {
            let _ = settings;
            Err(missing_source(other))
        }
    }
}

/// A session on the configured source's dead-letter destination, for `qt dlq`. `hold` is
/// how long an SQS session hides the letters it reads; other brokers hand letters back when
/// the session's connection ends, so they refuse it rather than ignore it.
pub async fn dlq(config: &Config, hold: Option<Duration>) -> anyhow::Result<Box<dyn DlqReader>> {
    let settings = adapter_settings(config);
    if hold.is_some() && !matches!(config.source, SourceConfig::Sqs(_)) {
        anyhow::bail!(
            "--hold applies to SQS sources only; a {} session hands back the letters it read when it ends, however it ends. Leave --hold out",
            config.source.kind()
        );
    }
    match &config.source {
        SourceConfig::Mock(m) => mock::dlq(m),
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(k) => kafka::dlq(k, settings).await,
        #[cfg(feature = "rabbitmq")]
        SourceConfig::Rabbitmq(r) => rabbitmq::dlq(r, settings).await,
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs(s) => sqs::dlq(s, settings, hold).await,
        #[allow(unreachable_patterns)]
        other => {
            let _ = settings;
            Err(missing_source(other))
        }
    }
}

#[allow(dead_code)]
fn missing_source(source: &SourceConfig) -> anyhow::Error {
    let kind = source.kind();
    missing_feature(&format!("source.type: {kind}"), kind, &format!("qt-adapter-{kind}"))
}

/// The idempotency store named by `idempotency.store`, or `None` to let the engine build
/// its in-memory store.
pub async fn store(config: &Config) -> anyhow::Result<Option<Arc<dyn IdempotencyStore>>> {
    if !config.idempotency.enabled {
        return Ok(None);
    }
    match &config.idempotency.store {
        StoreConfig::Memory(_) => Ok(None),
        #[cfg(feature = "redis")]
        StoreConfig::Redis(r) => redis::store(r, config).await.map(Some),
        #[cfg(not(feature = "redis"))]
        StoreConfig::Redis(_) => Err(missing_feature(
            "idempotency.store.type: redis",
            "redis",
            "qt-idempotency-redis",
        )),
    }
}

/// The ledger named by `ledger`, or `None` to let the engine build its memory or JSONL
/// ledger.
pub async fn ledger(config: &Config) -> anyhow::Result<Option<Arc<dyn Ledger>>> {
    match &config.ledger {
        LedgerConfig::Memory | LedgerConfig::Jsonl(_) => Ok(None),
        #[cfg(feature = "postgres")]
        LedgerConfig::Postgres(p) => postgres::ledger(p, config).await.map(Some),
        #[cfg(not(feature = "postgres"))]
        LedgerConfig::Postgres(_) => Err(missing_ledger_feature()),
    }
}

/// The error for `ledger.type: postgres` in a binary built without it.
#[allow(dead_code)]
pub fn missing_ledger_feature() -> anyhow::Error {
    missing_feature("ledger.type: postgres", "postgres", "qt-ledger-postgres")
}
