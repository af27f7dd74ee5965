//! The sqs source: [`SqsAdapter`] for `qt run`, [`SqsPublisher`] for `qt send` and replays,
//! [`SqsDlq`] for `qt dlq` on `source.dlq_queue_url`.
//!
//! Construction checks the section and `security.require_tls` (through
//! [`AdapterSettings::require_tls`]: also an `http://` endpoint that comes from
//! `AWS_ENDPOINT_URL` or the AWS profile rather than the file) and loads credentials from the
//! standard AWS provider chain without calling SQS; the engine connects at start, and a
//! queue that does not exist or an endpoint that does not answer then fails `qt run`.
//!
//! SQS assigns every message its MessageId, which is what `qt send` prints and what the
//! consumer reports as the message id. `qt send --id ID` travels as the `x-message-id`
//! message attribute (deduplicate on it with `processing.extraction.dedup_key:
//! [{header: x-message-id}]`); on a FIFO queue it is also the MessageDeduplicationId, so SQS
//! itself drops a second send of the same id within its five-minute window.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qt_adapter_sqs::{SqsAdapter, SqsDlq, SqsPublisher};
use qt_core::config::SqsSourceConfig;
use qt_core::{AdapterError, AdapterSettings, DlqReader, OutgoingMessage, Publisher};

use super::Source;

/// The header `qt send --id` fills in.
const SEND_ID_HEADER: &str = "x-message-id";

pub async fn source(config: &SqsSourceConfig, settings: AdapterSettings) -> anyhow::Result<Source> {
    let adapter = SqsAdapter::new(config, settings).await?;
    Ok(Source {
        adapter: Arc::new(adapter),
        mock: None,
    })
}

pub async fn publisher(config: &SqsSourceConfig, settings: AdapterSettings) -> anyhow::Result<Arc<dyn Publisher>> {
    let publisher = SqsPublisher::new(config, &settings).await?;
    Ok(Arc::new(SendPublisher { inner: publisher }))
}

/// A session on `source.dlq_queue_url`. Letters it reads stay invisible to other readers
/// of the DLQ until it closes, or for `hold` (default five minutes) if the process dies
/// first (SQS has no peek; see [`qt_adapter_sqs::dlq`]).
pub async fn dlq(
    config: &SqsSourceConfig,
    settings: AdapterSettings,
    hold: Option<Duration>,
) -> anyhow::Result<Box<dyn DlqReader>> {
    let dlq = SqsDlq::open(config, &settings).await?;
    Ok(Box::new(match hold {
        Some(hold) => dlq.with_visibility_timeout(hold),
        None => dlq,
    }))
}

/// [`SqsPublisher`] with the `qt send --id` convention applied.
#[derive(Debug)]
struct SendPublisher {
    inner: SqsPublisher,
}

#[async_trait]
impl Publisher for SendPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        self.inner.publish(with_deduplication_id_from_header(message)).await
    }
}

/// Copies a non-empty `x-message-id` header into the deduplication id unless one is set. The
/// header stays: standard queues have no deduplication id, and consumers of either kind of
/// queue can then deduplicate on the same header.
fn with_deduplication_id_from_header(mut message: OutgoingMessage) -> OutgoingMessage {
    if message.deduplication_id.is_none()
        && let Some(id) = message.headers.get(SEND_ID_HEADER).filter(|id| !id.is_empty())
    {
        message.deduplication_id = Some(id.to_owned());
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::Headers;
    use qt_core::config::{Config, SourceConfig};

    const SECRET: &str = "sqs-secret-never-shown-5b1e";

    fn sqs_config(queue_url: &str, endpoint_url: Option<&str>, require_tls: bool) -> Config {
        let mut config = Config::with_source(SourceConfig::Sqs(SqsSourceConfig {
            queue_url: queue_url.into(),
            region: "us-east-1".into(),
            endpoint_url: endpoint_url.map(str::to_owned),
            ..SqsSourceConfig::default()
        }));
        config.security.require_tls = require_tls;
        config
    }

    fn sqs_source(config: &Config) -> SqsSourceConfig {
        match &config.source {
            SourceConfig::Sqs(s) => s.clone(),
            other => panic!("an sqs source, not {}", other.kind()),
        }
    }

    #[tokio::test]
    async fn require_tls_refuses_a_plaintext_endpoint_naming_the_field() {
        let mut config = sqs_config("orders", Some(&format!("http://user:{SECRET}@127.0.0.1:4566")), true);
        if let SourceConfig::Sqs(s) = &mut config.source {
            s.dlq_queue_url = Some("orders-dlq".into());
        }
        for result in [
            super::super::source(&config).await.map(|_| ()),
            super::super::publisher(&config).await.map(|_| ()),
            dlq(&sqs_source(&config), super::super::adapter_settings(&config), None)
                .await
                .map(|_| ()),
        ] {
            let e = format!(
                "{:#}",
                result.expect_err("a plaintext endpoint is refused under require_tls")
            );
            assert!(e.contains("source.endpoint_url") && e.contains("require_tls"), "{e}");
            assert!(!e.contains(SECRET), "{e}");
        }
    }

    #[tokio::test]
    async fn https_passes_require_tls_and_plaintext_is_fine_without_it() {
        let tls = sqs_config("https://sqs.us-east-1.amazonaws.com/123456789012/orders", None, true);
        let source = super::super::source(&tls)
            .await
            .expect("an https queue URL is accepted");
        assert_eq!(source.adapter.kind(), "sqs");
        assert_eq!(
            source.adapter.queue(),
            "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
        );
        assert!(source.mock.is_none());
        super::super::publisher(&tls)
            .await
            .expect("publisher under require_tls");
        let plain = sqs_config("orders", Some("http://127.0.0.1:4566"), false);
        super::super::source(&plain)
            .await
            .expect("plaintext is allowed by default");
        super::super::publisher(&plain)
            .await
            .expect("plaintext is allowed by default");
    }

    #[tokio::test]
    async fn dlq_needs_the_dlq_queue_configured() {
        let config = sqs_config("https://sqs.us-east-1.amazonaws.com/123456789012/orders", None, false);
        let e = format!(
            "{:#}",
            dlq(&sqs_source(&config), super::super::adapter_settings(&config), None)
                .await
                .err()
                .expect("no source.dlq_queue_url")
        );
        assert!(e.contains("source.dlq_queue_url"), "{e}");
    }

    #[test]
    fn the_send_id_header_becomes_the_deduplication_id_and_stays() {
        let headers: Headers = [("x-message-id", "order-7"), ("x-tenant-id", "acme")]
            .into_iter()
            .collect();
        let m = with_deduplication_id_from_header(OutgoingMessage {
            headers,
            ..OutgoingMessage::default()
        });
        assert_eq!(m.deduplication_id.as_deref(), Some("order-7"));
        assert_eq!(m.headers.get("x-message-id"), Some("order-7"));

        let headers: Headers = [("x-message-id", "from-header")].into_iter().collect();
        let explicit = with_deduplication_id_from_header(OutgoingMessage {
            headers,
            deduplication_id: Some("explicit".into()),
            ..OutgoingMessage::default()
        });
        assert_eq!(explicit.deduplication_id.as_deref(), Some("explicit"));

        let empty: Headers = [("x-message-id", "")].into_iter().collect();
        let m = with_deduplication_id_from_header(OutgoingMessage {
            headers: empty,
            ..OutgoingMessage::default()
        });
        assert_eq!(m.deduplication_id, None);
        assert_eq!(
            with_deduplication_id_from_header(OutgoingMessage::default()).deduplication_id,
            None
        );
    }
}
