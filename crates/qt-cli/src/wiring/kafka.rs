//! The kafka source: [`KafkaAdapter`] for `qt run`, [`KafkaPublisher`] for `qt send`,
//! [`KafkaDlq`] for `qt dlq`.
//!
//! Construction checks the section (brokers, topics, group, owned librdkafka keys, TLS
//! files) and `security.require_tls` through [`AdapterSettings::require_tls`], without
//! contacting the cluster; the engine connects at start, and a topic that does not exist or
//! a cluster that does not answer then fails `qt run` with the brokers named.
//!
//! Kafka records have no message id of their own: the consumer names each message
//! `topic/partition/offset`, which is also what `qt send` prints. `qt send --id ID` travels
//! as the `x-message-id` header; deduplicate on it with
//! `processing.extraction.dedup_key: [{header: x-message-id}]`.
//!
//! `qt dlq` reads `dlq_topic`; a letter is in the DLQ until the consumer group
//! `<consumer_group>-dlq` has committed past it (see [`KafkaDlq`]).

use std::sync::Arc;

use qt_adapter_kafka::{KafkaAdapter, KafkaDlq, KafkaPublisher};
use qt_core::config::KafkaSourceConfig;
use qt_core::{AdapterSettings, DlqReader, Publisher};

use super::Source;

pub async fn source(config: &KafkaSourceConfig, settings: AdapterSettings) -> anyhow::Result<Source> {
    let adapter = KafkaAdapter::new(config, settings)?;
    Ok(Source {
        adapter: Arc::new(adapter),
        mock: None,
    })
}

pub async fn publisher(config: &KafkaSourceConfig, settings: AdapterSettings) -> anyhow::Result<Arc<dyn Publisher>> {
    Ok(Arc::new(KafkaPublisher::new(config, &settings)?))
}

pub async fn dlq(config: &KafkaSourceConfig, settings: AdapterSettings) -> anyhow::Result<Box<dyn DlqReader>> {
    Ok(Box::new(KafkaDlq::open(config, &settings).await?))
}

#[cfg(test)]
mod tests {
    use qt_core::config::{
        Config, KafkaSaslConfig, KafkaSecurityProtocol, KafkaSourceConfig, SaslMechanism, SourceConfig,
    };
    use qt_core::secret::Secret;

    fn kafka_config(protocol: KafkaSecurityProtocol, require_tls: bool) -> Config {
        let sasl = protocol.is_sasl().then(|| KafkaSaslConfig {
            mechanism: SaslMechanism::ScramSha512,
            username: "svc".into(),
            password: Secret::new("k4fka-pw-e2e"),
        });
        let mut config = Config::with_source(SourceConfig::Kafka(KafkaSourceConfig {
            brokers: vec!["kafka.example.com:9093".into()],
            topics: vec!["orders".into()],
            consumer_group: "billing".into(),
            dlq_topic: Some("orders.dlq".into()),
            security_protocol: protocol,
            sasl,
            ..KafkaSourceConfig::default()
        }));
        config.security.require_tls = require_tls;
        config
    }

    #[tokio::test]
    async fn require_tls_refuses_plaintext_protocols_without_leaking_the_password() {
        for protocol in [KafkaSecurityProtocol::Plaintext, KafkaSecurityProtocol::SaslPlaintext] {
            let config = kafka_config(protocol, true);
            for result in [
                super::super::source(&config).await.map(|_| ()),
                super::super::publisher(&config).await.map(|_| ()),
            ] {
                let e = format!(
                    "{:#}",
                    result.expect_err("a plaintext protocol is refused under require_tls")
                );
                assert!(
                    e.contains("source.security_protocol") && e.contains("require_tls"),
                    "{protocol:?}: {e}"
                );
                assert!(!e.contains("k4fka-pw-e2e"), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn tls_passes_require_tls_and_plaintext_is_fine_without_it() {
        for protocol in [KafkaSecurityProtocol::Ssl, KafkaSecurityProtocol::SaslSsl] {
            let config = kafka_config(protocol, true);
            let source = super::super::source(&config).await.expect("TLS is accepted");
            assert_eq!(source.adapter.kind(), "kafka");
            assert_eq!(source.adapter.queue(), "orders");
            assert!(source.mock.is_none());
            super::super::publisher(&config).await.expect("TLS is accepted");
        }
        let plain = kafka_config(KafkaSecurityProtocol::Plaintext, false);
        let source = super::super::source(&plain)
            .await
            .expect("plaintext is allowed by default");
        assert!(
            source.adapter.capabilities().dead_letter,
            "dlq_topic makes dead-lettering available"
        );
        super::super::publisher(&plain)
            .await
            .expect("plaintext is allowed by default");
    }

    #[tokio::test]
    async fn the_dlq_needs_a_dlq_topic_and_refuses_plaintext_under_require_tls() {
        let mut config = kafka_config(KafkaSecurityProtocol::SaslPlaintext, true);
        let settings = super::super::adapter_settings(&config);
        let SourceConfig::Kafka(kafka) = &config.source else {
            unreachable!()
        };
        let e = format!("{:#}", super::dlq(kafka, settings).await.err().expect("refused"));
        assert!(e.contains("source.security_protocol"), "{e}");
        assert!(!e.contains("k4fka-pw-e2e"), "{e}");
        let SourceConfig::Kafka(kafka) = &mut config.source else {
            unreachable!()
        };
        kafka.dlq_topic = None;
        let settings = super::super::adapter_settings(&config);
        let SourceConfig::Kafka(kafka) = &config.source else {
            unreachable!()
        };
        let e = format!("{:#}", super::dlq(kafka, settings).await.err().expect("refused"));
        assert!(e.contains("source.dlq_topic"), "{e}");
    }

    #[tokio::test]
    async fn an_invalid_section_names_every_field() {
        let config = Config::with_source(SourceConfig::Kafka(KafkaSourceConfig::default()));
        let e = format!("{:#}", super::super::source(&config).await.err().expect("refused"));
        for field in ["source.brokers", "source.topics", "source.consumer_group"] {
            assert!(e.contains(field), "{e}");
        }
    }
}
