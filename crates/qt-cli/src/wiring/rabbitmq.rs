//! The rabbitmq source: [`RabbitMqAdapter`] for `qt run`, [`RabbitMqPublisher`] for
//! `qt send` and `qt dlq replay`, [`RabbitMqDlq`] for `qt dlq`.
//!
//! Construction checks the configuration (URL, TLS files, `security.require_tls` through
//! [`AdapterSettings::require_tls`]) without connecting; the engine connects at start, and a
//! broker that is unreachable then fails `qt run` with the masked URL.

use std::sync::Arc;

use async_trait::async_trait;
use qt_adapter_rabbitmq::{RabbitMqAdapter, RabbitMqDlq, RabbitMqPublisher};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AdapterError, AdapterSettings, DlqReader, OutgoingMessage, Publisher};

use super::Source;

/// The header `qt send --id` fills in. On RabbitMQ the producer owns the AMQP `message-id`
/// property, which is what the consumer deduplicates on, so the id goes there instead.
const SEND_ID_HEADER: &str = "x-message-id";

pub async fn source(config: &RabbitMqSourceConfig, settings: AdapterSettings) -> anyhow::Result<Source> {
    let adapter = RabbitMqAdapter::new(config, settings)?;
    Ok(Source {
        adapter: Arc::new(adapter),
        mock: None,
    })
}

pub async fn publisher(config: &RabbitMqSourceConfig, settings: AdapterSettings) -> anyhow::Result<Arc<dyn Publisher>> {
    let publisher = RabbitMqPublisher::new(config, &settings)?;
    Ok(Arc::new(SendPublisher { inner: publisher }))
}

/// A session on the source's dead-letter queue (`source.dlq`), connected.
pub async fn dlq(config: &RabbitMqSourceConfig, settings: AdapterSettings) -> anyhow::Result<Box<dyn DlqReader>> {
    Ok(Box::new(RabbitMqDlq::open(config, &settings).await?))
}

/// [`RabbitMqPublisher`] with the `qt send` id convention applied.
#[derive(Debug)]
struct SendPublisher {
    inner: RabbitMqPublisher,
}

#[async_trait]
impl Publisher for SendPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let result = self.inner.publish(with_message_id_from_header(message)).await;
        // `qt send` publishes once and exits: closing here spares the broker a log line about
        // a connection that vanished without a close.
        self.inner.close().await;
        result
    }
}

/// Moves a non-empty `x-message-id` header into the deduplication id (the AMQP `message-id`)
/// unless one is already set.
fn with_message_id_from_header(mut message: OutgoingMessage) -> OutgoingMessage {
    if message.deduplication_id.is_none()
        && let Some(id) = message.headers.get(SEND_ID_HEADER).map(str::to_owned)
    {
        message.headers.remove(SEND_ID_HEADER);
        if !id.is_empty() {
            message.deduplication_id = Some(id);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::Headers;
    use qt_core::config::{Config, SourceConfig};

    fn rabbitmq_config(url: &str, require_tls: bool) -> Config {
        let mut config = Config::with_source(SourceConfig::Rabbitmq(RabbitMqSourceConfig::new(url, "orders")));
        config.security.require_tls = require_tls;
        config
    }

    #[tokio::test]
    async fn require_tls_refuses_a_plaintext_url_without_leaking_the_password() {
        let config = rabbitmq_config("amqp://app:s3cret-pw@mq.example.com:5672/prod", true);
        for result in [
            super::super::source(&config).await.map(|_| ()),
            super::super::publisher(&config).await.map(|_| ()),
        ] {
            let e = format!(
                "{:#}",
                result.expect_err("a plaintext URL is refused under require_tls")
            );
            assert!(e.contains("source.url") && e.contains("require_tls"), "{e}");
            assert!(!e.contains("s3cret-pw"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_tls_url_passes_require_tls_and_plaintext_is_fine_without_it() {
        let tls = rabbitmq_config("amqps://app:pw@mq.example.com:5671/prod", true);
        let source = super::super::source(&tls).await.expect("amqps is accepted");
        assert_eq!(source.adapter.kind(), "rabbitmq");
        assert_eq!(source.adapter.queue(), "orders");
        assert!(source.mock.is_none());
        let plain = rabbitmq_config("amqp://app:pw@mq.example.com:5672/prod", false);
        super::super::source(&plain)
            .await
            .expect("plaintext is allowed by default");
        super::super::publisher(&plain)
            .await
            .expect("plaintext is allowed by default");
    }

    #[tokio::test]
    async fn the_dlq_needs_a_dlq_configured_and_tls_when_required_before_it_connects() {
        let config = RabbitMqSourceConfig::new("amqp://app:s3cret-pw@mq.example.com:5672/prod", "orders");
        let e = format!(
            "{:#}",
            dlq(&config, AdapterSettings::new("t", 1, 1))
                .await
                .err()
                .expect("no dlq is configured")
        );
        assert!(e.contains("source.dlq"), "{e}");
        let mut settings = AdapterSettings::new("t", 1, 1);
        settings.require_tls = true;
        let mut with_dlq = config.clone();
        with_dlq.dlq = Some(qt_core::config::RabbitMqDlq {
            exchange: String::new(),
            routing_key: "orders.dlq".into(),
            declare: None,
            queue: None,
        });
        let e = format!(
            "{:#}",
            dlq(&with_dlq, settings).await.err().expect("plaintext is refused")
        );
        assert!(e.contains("require_tls") && !e.contains("s3cret-pw"), "{e}");
    }

    #[test]
    fn the_send_id_header_becomes_the_message_id() {
        let headers: Headers = [("x-message-id", "order-7"), ("x-tenant-id", "acme")]
            .into_iter()
            .collect();
        let m = with_message_id_from_header(OutgoingMessage {
            headers,
            ..OutgoingMessage::default()
        });
        assert_eq!(m.deduplication_id.as_deref(), Some("order-7"));
        assert_eq!(m.headers.get("x-message-id"), None);
        assert_eq!(m.headers.get("x-tenant-id"), Some("acme"));

        let headers: Headers = [("x-message-id", "from-header")].into_iter().collect();
        let explicit = with_message_id_from_header(OutgoingMessage {
            headers,
            deduplication_id: Some("explicit".into()),
            ..OutgoingMessage::default()
        });
        assert_eq!(explicit.deduplication_id.as_deref(), Some("explicit"));
        assert_eq!(explicit.headers.get("x-message-id"), Some("from-header"));

        let none = with_message_id_from_header(OutgoingMessage::default());
        assert_eq!(none.deduplication_id, None);
    }
}
