//! The adapter's settings, resolved and checked once at construction and shared by every
//! session and handle.

use std::sync::Arc;
use std::time::Duration;

use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AdapterError, AdapterSettings};

use crate::connection::Endpoint;
use crate::describe::lapin_error;
use crate::topology::TopologyPlan;

#[derive(Debug)]
pub(crate) struct Context {
    /// The trigger's name, for logs.
    pub trigger: String,
    pub queue: Arc<str>,
    pub endpoint: Endpoint,
    pub plan: TopologyPlan,
    pub prefetch: u16,
    pub consumer_tag: String,
    pub confirm_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Context {
    pub(crate) fn new(cfg: &RabbitMqSourceConfig, settings: AdapterSettings) -> Result<Self, AdapterError> {
        let endpoint = Endpoint::new(cfg, &settings)?;
        let plan = TopologyPlan::from_config(cfg)?;
        if cfg.prefetch == Some(0) {
            return Err(AdapterError::Config {
                field: "source.prefetch".into(),
                reason: "must be at least 1 (0 would mean unlimited)".into(),
            });
        }
        if cfg.reconnect_initial.is_zero() || cfg.reconnect_initial > cfg.reconnect_max {
            return Err(AdapterError::Config {
                field: "source.reconnect_initial".into(),
                reason: "must be above 0s and at most reconnect_max".into(),
            });
        }
        let prefetch = cfg
            .prefetch
            .unwrap_or_else(|| u16::try_from(settings.max_in_flight.max(1)).unwrap_or(u16::MAX));
        Ok(Self {
            consumer_tag: consumer_tag(&settings.trigger_name),
            trigger: settings.trigger_name,
            queue: Arc::from(cfg.queue.as_str()),
            endpoint,
            plan,
            prefetch,
            confirm_timeout: cfg.confirm_timeout,
            reconnect_initial: cfg.reconnect_initial,
            reconnect_max: cfg.reconnect_max,
        })
    }

    /// An [`AdapterError::Other`] for a failed broker operation, credentials removed.
    pub(crate) fn other(&self, what: &str, e: &lapin::Error) -> AdapterError {
        AdapterError::Other {
            what: format!("{what} on queue {:?}", self.plan.queue),
            reason: self.endpoint.redactor.redact(lapin_error(e)),
        }
    }
}

/// `qt-<trigger>-<random>`: recognisable in the management UI, unique per process.
fn consumer_tag(trigger: &str) -> String {
    let trigger: String = trigger
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("qt-{trigger}-{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RabbitMqSourceConfig {
        RabbitMqSourceConfig::new(url, "orders")
    }

    #[test]
    fn prefetch_follows_max_in_flight_unless_configured() {
        let settings = AdapterSettings::new("t", 4, 37);
        let ctx = Context::new(&cfg("amqp://localhost"), settings.clone()).unwrap();
        assert_eq!(ctx.prefetch, 37);
        let huge = AdapterSettings::new("t", 4, 1_000_000);
        assert_eq!(Context::new(&cfg("amqp://localhost"), huge).unwrap().prefetch, u16::MAX);
        let mut explicit = cfg("amqp://localhost");
        explicit.prefetch = Some(5);
        assert_eq!(Context::new(&explicit, settings.clone()).unwrap().prefetch, 5);
        explicit.prefetch = Some(0);
        assert!(Context::new(&explicit, settings).is_err());
    }

    #[test]
    fn consumer_tags_are_unique_and_tame() {
        let a = consumer_tag("orders trigger/ü");
        let b = consumer_tag("orders trigger/ü");
        assert!(a.starts_with("qt-orderstrigger-"), "{a}");
        assert_ne!(a, b);
        assert!(consumer_tag(&"x".repeat(1000)).len() < 100);
    }

    #[test]
    fn unreadable_tls_files_name_their_field() {
        let mut c = cfg("amqps://u:p@localhost:5671/%2f");
        c.ca_file = Some("/nonexistent/qt-ca.pem".into());
        match Context::new(&c, AdapterSettings::new("t", 1, 1)) {
            Err(AdapterError::Config { field, reason }) => {
                assert_eq!(field, "source.ca_file");
                assert!(reason.contains("/nonexistent/qt-ca.pem"), "{reason}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        let mut plain = cfg("amqp://u:p@localhost/%2f");
        plain.client_cert_file = Some("/c.pem".into());
        assert!(matches!(
            Context::new(&plain, AdapterSettings::new("t", 1, 1)),
            Err(AdapterError::Config { .. })
        ));
    }
}
