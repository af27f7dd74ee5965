//! The librdkafka client context shared by the consumer, the producer and helper clients:
//! librdkafka's log lines and error events go to `tracing` with credentials masked, and its
//! statistics feed health and backlog.

use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::health::BrokerHealth;
use qt_core::redact::Redactor;

/// Callbacks common to every client qt creates.
#[derive(Clone, Debug)]
pub struct QtClientContext {
    /// `consumer`, `producer` or `admin`, for log lines.
    role: &'static str,
    redactor: Redactor,
    health: Arc<BrokerHealth>,
    latest_stats: Arc<Mutex<Option<Arc<Statistics>>>>,
}

impl QtClientContext {
    pub fn new(role: &'static str, redactor: Redactor) -> Self {
        Self {
            role,
            redactor,
            health: Arc::new(BrokerHealth::new()),
            latest_stats: Arc::new(Mutex::new(None)),
        }
    }

    pub fn health(&self) -> &Arc<BrokerHealth> {
        &self.health
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The most recent statistics report, if statistics are enabled and one arrived.
    pub fn latest_stats(&self) -> Option<Arc<Statistics>> {
        self.latest_stats.lock().clone()
    }
}

impl ClientContext for QtClientContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.redactor.redact(log_message);
        let client = self.role;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client, facility = fac, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client, facility = fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client, facility = fac, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, facility = fac, "{message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.health.on_stats(&statistics);
        *self.latest_stats.lock() = Some(Arc::new(statistics));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.redactor.redact(reason);
        let error_text = self.redactor.redact(&error);
        self.health.on_error(&error_text, error.rdkafka_error_code(), &reason);
        tracing::warn!(target: "librdkafka", client = self.role, error = %error_text, "{reason}");
    }
}
