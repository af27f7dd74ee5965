//! The mock source: an in-memory queue fed from `source.file`.

use std::sync::Arc;

use anyhow::Context;
use qt_adapter_mock::MockQueue;
use qt_core::config::MockSourceConfig;

use super::Source;

pub fn source(config: &MockSourceConfig) -> anyhow::Result<Source> {
    let queue = MockQueue::from_config(config).context("source.file")?;
    Ok(Source {
        adapter: Arc::new(queue.adapter()),
        mock: Some(queue),
    })
}
