//! The Redis store, wired in once its crate is complete.

use std::sync::Arc;

use qt_core::IdempotencyStore;
use qt_core::config::{Config, RedisStoreConfig};

pub async fn store(_config: &RedisStoreConfig, _all: &Config) -> anyhow::Result<Arc<dyn IdempotencyStore>> {
    anyhow::bail!("the redis store is not wired into the CLI yet")
}
