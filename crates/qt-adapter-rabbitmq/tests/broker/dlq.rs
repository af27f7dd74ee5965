//! `RabbitMqDlq` against the broker: reading never changes the dead-letter queue, removals
//! take effect, and a replay lands in the original queue before its letter leaves the DLQ.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use qt_adapter_rabbitmq::{RabbitMqDlq, RabbitMqPublisher};
use qt_core::config::{RabbitMqDlq as DlqConfig, RabbitMqSourceConfig};
use qt_core::headers::{REPLAYS, dead_letter};
use qt_core::{AdapterError, DlqMessage, DlqReader, Publisher};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(5);

/// A fresh consumed queue and dead-letter queue, both declared, deleted when dropped.
struct Queues {
    broker: Broker,
    queue: String,
    dlq: String,
    cfg: RabbitMqSourceConfig,
    _cleanup: Cleanup,
}

async fn queues(what: &str) -> Queues {
    let broker = Broker::connect().await;
    let queue = unique(what);
    let dlq = format!("{queue}.dlq");
    let mut cfg = config(&broker_url(), &queue);
    cfg.dlq = Some(DlqConfig {
        exchange: String::new(),
        routing_key: dlq.clone(),
        declare: None,
        queue: None,
    });
    let cleanup = Cleanup::new(&[&queue, &dlq]);
    broker.declare(&queue, FieldTable::default()).await;
    broker.declare(&dlq, FieldTable::default()).await;
    Queues {
        broker,
        queue,
        dlq,
        cfg,
        _cleanup: cleanup,
    }
}

impl Queues {
    /// Puts `n` letters in the DLQ as qt dead-letters them: bodies `letter-<i>`, message
    /// ids `m-<i>`, the dead-letter headers and a header of the producer's.
    async fn dead_letter(&self, n: usize) {
        for i in 0..n {
            let mut headers = FieldTable::default();
            for (name, value) in [
                ("x-tenant-id", "acme".to_owned()),
                (dead_letter::REASON, format!("agent failed: boom {i}")),
                (dead_letter::ATTEMPTS, "3".to_owned()),
                (dead_letter::ORIGINAL_QUEUE, self.queue.clone()),
                (dead_letter::ORIGINAL_MESSAGE_ID, format!("m-{i}")),
            ] {
                headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
            }
            headers.insert("n".into(), AMQPValue::LongInt(i as i32));
            let properties = with_id(&format!("m-{i}"))
                .with_headers(headers)
                .with_timestamp(1_700_000_000);
            self.broker
                .publish(&self.dlq, format!("letter-{i}").as_bytes(), properties)
                .await;
        }
    }

    async fn open(&self) -> Box<dyn DlqReader> {
        Box::new(
            RabbitMqDlq::open(&self.cfg, &settings(1))
                .await
                .expect("opening the DLQ"),
        )
    }
}

/// Every letter the session yields.
async fn read_all(session: &mut dyn DlqReader) -> Vec<DlqMessage> {
    let mut letters = Vec::new();
    while let Some(letter) = session.next().await.expect("reading the DLQ") {
        letters.push(letter);
    }
    letters
}

fn ids(letters: &[DlqMessage]) -> Vec<&str> {
    letters.iter().map(|l| l.id.as_str()).collect()
}

#[tokio::test]
async fn listing_twice_returns_the_same_letters_in_order_and_leaves_the_queue_as_it_was() {
    let q = queues("dlq-list").await;
    q.dead_letter(3).await;

    let mut first = q.open().await;
    assert_eq!(first.name(), q.dlq);
    let letters = read_all(first.as_mut()).await;
    first.close().await.unwrap();
    assert_eq!(ids(&letters), ["m-0", "m-1", "m-2"]);
    let l = &letters[1];
    assert_eq!(l.seq, 1);
    assert_eq!(&l.body[..], b"letter-1");
    assert_eq!(l.key.as_deref(), Some(q.dlq.as_str()));
    assert_eq!(l.timestamp.map(|t| t.timestamp()), Some(1_700_000_000));
    assert_eq!(l.headers.get("x-tenant-id"), Some("acme"));
    assert_eq!(l.headers.get("n"), Some("1"));
    let details = l.details();
    assert_eq!(details.reason.as_deref(), Some("agent failed: boom 1"));
    assert_eq!(details.attempts, Some(3));
    assert_eq!(details.original_queue.as_deref(), Some(q.queue.as_str()));
    assert_eq!(q.broker.ready(&q.dlq).await, 3, "listing took letters out of the DLQ");

    let mut second = q.open().await;
    let again = read_all(second.as_mut()).await;
    second.close().await.unwrap();
    assert_eq!(ids(&again), ids(&letters));
    assert_eq!(q.broker.ready(&q.dlq).await, 3);
}

#[tokio::test]
async fn a_session_reads_only_the_letters_there_when_it_started() {
    let q = queues("dlq-bound").await;
    q.dead_letter(2).await;
    let mut session = q.open().await;
    let mut late = FieldTable::default();
    late.insert(
        dead_letter::ORIGINAL_QUEUE.into(),
        AMQPValue::LongString(LongString::from(q.queue.as_str())),
    );
    q.broker
        .publish(&q.dlq, b"late", with_id("late").with_headers(late))
        .await;
    let letters = read_all(session.as_mut()).await;
    session.close().await.unwrap();
    assert_eq!(ids(&letters), ["m-0", "m-1"]);
    assert_eq!(q.broker.ready(&q.dlq).await, 3);
}

#[tokio::test]
async fn removed_letters_are_gone_after_close_and_the_next_session_sees_the_rest_in_order() {
    let q = queues("dlq-remove").await;
    q.dead_letter(4).await;
    let mut session = q.open().await;
    let letters = read_all(session.as_mut()).await;
    session.remove(&letters[1]).await.unwrap();
    session.remove(&letters[3]).await.unwrap();
    let twice = session.remove(&letters[3]).await.unwrap_err();
    assert!(matches!(twice, AdapterError::Other { .. }), "{twice}");
    session.close().await.unwrap();
    assert_eq!(q.broker.ready(&q.dlq).await, 2);

    let mut next = q.open().await;
    let rest = read_all(next.as_mut()).await;
    next.close().await.unwrap();
    assert_eq!(ids(&rest), ["m-0", "m-2"]);
}

#[tokio::test]
async fn a_session_dropped_without_closing_keeps_every_letter() {
    let q = queues("dlq-drop").await;
    q.dead_letter(3).await;
    let mut session = q.open().await;
    assert_eq!(read_all(session.as_mut()).await.len(), 3);
    drop(session);
    q.broker.wait_ready(&q.dlq, 3, WAIT).await;

    let mut next = q.open().await;
    let letters = read_all(next.as_mut()).await;
    next.close().await.unwrap();
    assert_eq!(ids(&letters), ["m-0", "m-1", "m-2"]);
}

#[tokio::test]
async fn replayed_letters_are_in_the_original_queue_and_no_longer_in_the_dlq() {
    let q = queues("dlq-replay").await;
    q.dead_letter(2).await;
    let publisher = RabbitMqPublisher::new(&q.cfg, &settings(1)).unwrap();
    let mut session = q.open().await;
    for letter in read_all(session.as_mut()).await {
        let message = session.replay_message(&letter, None).unwrap();
        publisher.publish(message).await.expect("replay confirmed");
        session.remove(&letter).await.unwrap();
    }
    session.close().await.unwrap();
    publisher.close().await;
    assert_eq!(q.broker.ready(&q.dlq).await, 0);
    assert_eq!(q.broker.ready(&q.queue).await, 2);

    let back = q.broker.get_within(&q.queue, WAIT).await;
    assert_eq!(back.delivery.data, b"letter-0");
    let props = &back.delivery.properties;
    assert_eq!(
        header(props, dead_letter::REASON),
        None,
        "the replay kept its dead-letter headers"
    );
    assert_eq!(header(props, REPLAYS).as_deref(), Some("1"));
    assert_eq!(header(props, "x-tenant-id").as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_replay_to_a_queue_that_does_not_exist_fails_and_keeps_the_letter() {
    let q = queues("dlq-noqueue").await;
    q.dead_letter(1).await;
    let publisher = RabbitMqPublisher::new(&q.cfg, &settings(1)).unwrap();
    let mut session = q.open().await;
    let letter = session.next().await.unwrap().expect("one letter");
    let message = session.replay_message(&letter, Some(&unique("missing"))).unwrap();
    let err = publisher.publish(message).await.unwrap_err();
    assert!(matches!(err, AdapterError::Publish { .. }), "{err}");
    session.close().await.unwrap();
    publisher.close().await;
    assert_eq!(q.broker.ready(&q.dlq).await, 1);
}

#[tokio::test]
async fn a_missing_dlq_queue_is_named() {
    let queue = unique("dlq-missing");
    let mut cfg = config(&broker_url(), &queue);
    cfg.dlq = Some(DlqConfig {
        exchange: "dlx".into(),
        routing_key: queue.clone(),
        declare: None,
        queue: Some(format!("{queue}.dead")),
    });
    match RabbitMqDlq::open(&cfg, &settings(1)).await {
        Err(AdapterError::MissingResource { queue: name, reason }) => {
            assert_eq!(name, format!("{queue}.dead"));
            assert!(reason.contains("source.dlq"), "{reason}");
        }
        other => panic!("expected a missing-resource error, got {other:?}"),
    }
}

/// Letters without a message id are known by the id qt recorded, else by their place.
#[tokio::test]
async fn a_letter_without_a_message_id_is_known_by_its_original_id_or_its_place() {
    let q = queues("dlq-ids").await;
    let mut headers = FieldTable::default();
    headers.insert(
        dead_letter::ORIGINAL_MESSAGE_ID.into(),
        AMQPValue::LongString(LongString::from("orig-7")),
    );
    q.broker
        .publish(&q.dlq, b"a", BasicProperties::default().with_headers(headers))
        .await;
    q.broker.publish(&q.dlq, b"b", BasicProperties::default()).await;
    let mut session = q.open().await;
    let letters = read_all(session.as_mut()).await;
    session.close().await.unwrap();
    assert_eq!(ids(&letters), ["orig-7", "delivery:1"]);
    assert_eq!(letters[1].timestamp, None);
}
