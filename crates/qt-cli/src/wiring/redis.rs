//! `idempotency.store: {type: redis}`: claims shared by every `qt` process pointed at one
//! Redis.

use std::sync::Arc;

use qt_core::IdempotencyStore;
use qt_core::config::{Config, RedisStoreConfig};
use qt_idempotency_redis::RedisStore;

/// Connects at start, so a wrong URL, password or TLS setting stops `qt run` at once
/// instead of failing every message; once running, the store rides out Redis outages and
/// the engine applies `idempotency.on_store_error` meanwhile.
pub async fn store(cfg: &RedisStoreConfig, config: &Config) -> anyhow::Result<Arc<dyn IdempotencyStore>> {
    // The error names the store (password masked) and what failed; the caller adds that
    // this was setting up the idempotency store.
    let store = RedisStore::connect(cfg, &config.idempotency.key_prefix, config.security.require_tls).await?;
    tracing::info!(
        store = %store.endpoint(),
        prefix = %store.key_prefix(),
        on_store_error = ?config.idempotency.on_store_error,
        "using the Redis idempotency store"
    );
    Ok(Arc::new(store))
}
