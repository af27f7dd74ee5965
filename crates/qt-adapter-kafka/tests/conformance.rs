//! The adapter conformance suite against the Kafka-protocol broker (Nisshi at
//! QT_TEST_KAFKA_BROKERS): every check on a topic, a DLQ topic and a consumer group of its
//! own.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use qt_adapter_kafka::{KafkaAdapter, KafkaAdmin, KafkaPublisher};
use qt_adapter_mock::testkit::{DeadLetterCopy, Patience, TestMessage, TestQueue, Unsupported};
use qt_core::config::KafkaSourceConfig;
use qt_core::{OutgoingMessage, Publisher, QueueAdapter};
use tokio::sync::OnceCell;

struct KafkaTestQueue {
    topic: String,
    dlq: String,
    /// Every adapter of the check shares this group, so a later one starts where an
    /// earlier one committed.
    config: KafkaSourceConfig,
    publisher: KafkaPublisher,
    /// Reads the DLQ topic in a group of its own; connected on first use.
    dead_letter_reader: OnceCell<KafkaAdapter>,
}

async fn fresh_queue() -> KafkaTestQueue {
    init_tracing();
    let brokers = brokers();
    let admin = KafkaAdmin::plaintext(&brokers).expect("admin");
    let topic = topic(&admin, "conformance", 1).await;
    let dlq = format!("{topic}-dlq");
    admin.create_topic(&dlq, 1).await.expect("create the DLQ topic");
    let mut config = source(&brokers, &[&topic], &unique("g"));
    config.dlq_topic = Some(dlq.clone());
    let publisher = KafkaPublisher::new(&config, &settings(8)).expect("publisher");
    KafkaTestQueue {
        topic,
        dlq,
        config,
        publisher,
        dead_letter_reader: OnceCell::new(),
    }
}

#[async_trait]
impl TestQueue for KafkaTestQueue {
    async fn adapter(&self) -> Box<dyn QueueAdapter> {
        Box::new(KafkaAdapter::new(&self.config, settings(8)).expect("a valid configuration"))
    }

    async fn publish(&self, message: TestMessage) {
        self.publisher
            .publish(OutgoingMessage {
                body: message.body.into(),
                headers: message.headers,
                destination: Some(self.topic.clone()),
                ..OutgoingMessage::default()
            })
            .await
            .expect("produce");
    }

    async fn take_dead_letters(&self) -> Result<Vec<DeadLetterCopy>, Unsupported> {
        let reader = self
            .dead_letter_reader
            .get_or_init(|| async { connected(&source(&brokers(), &[&self.dlq], &unique("dlq-reader")), 64).await })
            .await;
        let mut copies = Vec::new();
        for delivery in receive_for(reader, Duration::from_millis(500)).await {
            copies.push(DeadLetterCopy {
                body: delivery.message.body.clone(),
                headers: delivery.message.headers.clone(),
            });
            delivery.handle.ack().await.expect("ack a dead letter");
        }
        Ok(copies)
    }

    async fn cut_connection(&self) -> Result<(), Unsupported> {
        Err(Unsupported(
            "the client reconnects to the broker's advertised address, so a proxy cannot stand between \
             them; tests/faults.rs takes a broker down in librdkafka's mock cluster instead"
                .into(),
        ))
    }

    async fn restore_connection(&self) {}

    fn patience(&self) -> Patience {
        Patience {
            // A new consumer joins its group before it gets anything.
            arrival: Duration::from_secs(45),
            ..Patience::default()
        }
    }
}

impl Drop for KafkaTestQueue {
    fn drop(&mut self) {
        let topics = [self.topic.clone(), self.dlq.clone()];
        let brokers = self.config.brokers.join(",");
        qt_adapter_mock::testkit::clean_up_on_drop(async move {
            if let Ok(admin) = KafkaAdmin::plaintext(&brokers) {
                for topic in &topics {
                    let _ = admin.delete_topic(topic).await;
                }
            }
        });
    }
}

qt_adapter_mock::conformance_suite!(fresh_queue);
