//! Every settlement lands where it should, checked at the broker.

use std::time::{Duration, Instant};

use crate::common::*;
use chrono::Utc;
use futures::future::join_all;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use qt_adapter_rabbitmq::{RabbitMqAdapter, RabbitMqPublisher};
use qt_core::config::{QueueDeclaration, RabbitMqDeclare, RabbitMqDlq};
use qt_core::headers::{ATTEMPT, dead_letter};
use qt_core::{DeadLetter, ErrorClass, Health, OutgoingMessage, Publisher, QueueAdapter, SettleError, Settlement};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn ack_removes_the_message_and_unsettled_ones_come_back() {
    let broker = Broker::connect().await;
    let q = unique("ack");
    let adapter_cfg = config(&broker_url(), &q);
    let retry = adapter_cfg.retry_queue_name();
    let _cleanup = Cleanup::new(&[&q, &retry]);
    broker.declare(&q, FieldTable::default()).await;
    for id in ["m-1", "m-2"] {
        broker.publish(&q, id.as_bytes(), with_id(id)).await;
    }

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(16)).unwrap();
    adapter.connect().await.unwrap();
    assert_eq!(adapter.health().await, Health::Healthy);
    let mut got = receive_n(&adapter, 2, WAIT).await;
    got.sort_by(|a, b| a.message.message_id.cmp(&b.message.message_id));
    assert_eq!(ids(&got), ["m-1", "m-2"]);
    assert_eq!(got[0].message.source.adapter.as_ref(), "rabbitmq");
    assert_eq!(got[0].message.source.queue.as_ref(), q.as_str());
    assert_eq!(got[0].message.source.key.as_deref(), Some(q.as_str()));
    assert_eq!(got[0].message.source.delivery_count, Some(1));
    assert_eq!(got[0].message.body.as_ref(), b"m-1");

    let second = got.pop().unwrap();
    let first = got.pop().unwrap();
    first.handle.ack().await.unwrap();
    // A handle dropped unsettled goes straight back to the queue.
    drop(second);
    let again = receive_one(&adapter, WAIT).await;
    assert_eq!(again.message.message_id, "m-2");
    assert!(again.message.source.redelivered);
    again.handle.ack().await.unwrap();

    // A message still held when the adapter closes is redelivered by the broker, and its old
    // handle refuses to settle.
    broker.publish(&q, b"m-3", with_id("m-3")).await;
    let held = receive_one(&adapter, WAIT).await;
    assert_eq!(held.message.message_id, "m-3");
    adapter.close().await.unwrap();
    assert!(!adapter.health().await.is_ready());
    assert!(
        adapter.receive(10).await.unwrap().is_empty(),
        "a closed adapter returns an empty batch"
    );
    match held.handle.ack().await {
        Err(SettleError::ConnectionLost { message_id }) => assert_eq!(message_id, "m-3"),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    broker.wait_ready(&q, 1, WAIT).await;
    let left = broker.get(&q).await.expect("m-3 is back on the queue");
    assert_eq!(left.delivery.properties.message_id().as_ref().unwrap().as_str(), "m-3");
    assert_eq!(broker.ready(&q).await, 0, "acked messages are gone");
}

#[tokio::test]
async fn requeue_without_delay_redelivers_at_once_and_quorum_queues_count_it() {
    let broker = Broker::connect().await;
    let q = unique("requeue");
    let adapter_cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&q, &adapter_cfg.retry_queue_name()]);
    broker.declare_quorum(&q).await;
    // No message-id: the adapter derives one, the same on every delivery.
    broker
        .publish(
            &q,
            b"{\"n\":1}",
            BasicProperties::default().with_timestamp(1_700_000_000),
        )
        .await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();
    let first = receive_one(&adapter, WAIT).await;
    let id = first.message.message_id.clone();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(first.message.source.delivery_count, Some(1));
    assert_eq!(first.message.broker_timestamp.unwrap().timestamp(), 1_700_000_000);
    first.handle.requeue(None, 2).await.unwrap();

    let second = receive_one(&adapter, WAIT).await;
    assert_eq!(second.message.message_id, id);
    assert!(second.message.source.redelivered);
    assert_eq!(second.message.source.delivery_count, Some(2), "from x-delivery-count");
    assert_eq!(second.message.attempt(), 2);
    second.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
}

#[tokio::test]
async fn delayed_requeue_returns_after_the_delay_with_the_attempt_header() {
    let broker = Broker::connect().await;
    let q = unique("delay");
    let adapter_cfg = config(&broker_url(), &q);
    let retry = adapter_cfg.retry_queue_name();
    let _cleanup = Cleanup::new(&[&q, &retry]);
    broker.declare(&q, FieldTable::default()).await;
    let mut headers = FieldTable::default();
    headers.insert("x-tenant-id".into(), AMQPValue::LongString(LongString::from("acme")));
    headers.insert("n".into(), AMQPValue::LongInt(7));
    broker
        .publish(
            &q,
            b"payload",
            with_id("m-1")
                .with_headers(headers)
                .with_content_type("text/plain".into()),
        )
        .await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();
    assert_eq!(adapter.retry_queue(), retry);
    let delivery = receive_one(&adapter, WAIT).await;
    let delay = Duration::from_millis(1500);
    let settled_at = Instant::now();
    delivery.handle.requeue(Some(delay), 3).await.unwrap();

    // Not before the delay: the copy waits in the retry queue, the original is acked.
    assert_nothing_for(&adapter, Duration::from_millis(1000)).await;
    let back = receive_one(&adapter, WAIT).await;
    let waited = settled_at.elapsed();
    assert!(
        waited >= delay,
        "came back after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(back.message.message_id, "m-1");
    assert_eq!(back.message.headers.get(ATTEMPT), Some("3"));
    assert_eq!(back.message.attempt(), 3);
    assert_eq!(back.message.headers.get("x-tenant-id"), Some("acme"));
    assert_eq!(back.message.headers.get("n"), Some("7"));
    assert!(
        back.message.headers.get("x-death").is_some(),
        "dead-lettered from the retry queue"
    );
    assert!(!back.message.source.redelivered, "a new message, not a redelivery");
    assert_eq!(back.message.body.as_ref(), b"payload");
    back.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
    assert_eq!(broker.ready(&retry).await, 0);
}

#[tokio::test]
async fn settlements_under_way_when_close_begins_still_reach_the_broker() {
    const ACKED: usize = 20;
    let broker = Broker::connect().await;
    let q = unique("close-drain");
    let adapter_cfg = config(&broker_url(), &q);
    let retry = adapter_cfg.retry_queue_name();
    let _cleanup = Cleanup::new(&[&q, &retry]);
    broker.declare(&q, FieldTable::default()).await;
    for i in 0..ACKED {
        let id = format!("ack-{i}");
        broker.publish(&q, id.as_bytes(), with_id(&id)).await;
    }
    broker.publish(&q, b"retry", with_id("retry")).await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(64)).unwrap();
    adapter.connect().await.unwrap();
    let got = receive_n(&adapter, ACKED + 1, WAIT).await;
    let mut settling: Vec<_> = got
        .into_iter()
        .map(|d| {
            let settlement = if d.message.message_id == "retry" {
                Settlement::Requeue {
                    delay: Some(Duration::from_millis(300)),
                    attempt: 2,
                    traceparent: None,
                }
            } else {
                Settlement::Ack
            };
            (d.message.message_id.clone(), d.handle.settle(settlement))
        })
        .collect();
    // Each polled once, so every settlement has started before close begins. On this
    // single-threaded runtime, the yield lets the ack batcher take the first half and start
    // sending it; the second half (with the delayed requeue) is still queued at the close.
    let (first, second) = settling.split_at_mut(ACKED / 2);
    for (id, s) in first {
        assert!(futures::poll!(s).is_pending(), "{id} settled before close began");
    }
    tokio::task::yield_now().await;
    for (id, s) in second {
        assert!(futures::poll!(s).is_pending(), "{id} settled before close began");
    }
    let finish = join_all(settling.into_iter().map(|(id, s)| async move { (id, s.await) }));
    let (results, closed) = tokio::join!(finish, adapter.close());
    closed.unwrap();
    for (id, result) in results {
        if let Err(e) = result {
            panic!("settling {id} failed while the adapter closed: {e}");
        }
    }

    // The acked messages are gone for good; the requeued one comes back through the retry
    // queue as a copy carrying its attempt.
    broker.wait_ready(&q, 1, WAIT).await;
    let back = broker.get(&q).await.expect("the requeued copy is back");
    assert_eq!(
        back.delivery.properties.message_id().as_ref().unwrap().as_str(),
        "retry"
    );
    assert_eq!(header(&back.delivery.properties, ATTEMPT).as_deref(), Some("2"));
    assert_eq!(broker.ready(&q).await, 0, "an acked message was redelivered");
    assert_eq!(broker.ready(&retry).await, 0);
}

#[tokio::test]
async fn dead_letter_goes_to_the_dlq_with_its_headers() {
    let broker = Broker::connect().await;
    let q = unique("dl");
    let dlq = unique("dl-dlq");
    let mut adapter_cfg = config(&broker_url(), &q);
    adapter_cfg.dlq = Some(RabbitMqDlq {
        exchange: String::new(),
        routing_key: dlq.clone(),
        declare: Some(QueueDeclaration::default()),
        queue: None,
    });
    let _cleanup = Cleanup::new(&[&q, &dlq, &adapter_cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;
    let mut headers = FieldTable::default();
    headers.insert("x-tenant-id".into(), AMQPValue::LongString(LongString::from("acme")));
    broker
        .publish(&q, b"poison", with_id("m-1").with_headers(headers))
        .await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(8)).unwrap();
    assert!(adapter.capabilities().dead_letter);
    adapter.connect().await.unwrap();
    let delivery = receive_one(&adapter, WAIT).await;
    let now = Utc::now();
    let mut dl = DeadLetter::new("agent failed: boom");
    dl.error_class = Some(ErrorClass::Permanent);
    dl.attempts = 4;
    dl.first_failure_at = Some(now);
    dl.last_failure_at = Some(now);
    delivery.handle.dead_letter(dl).await.unwrap();

    let got = broker.get_within(&dlq, WAIT).await;
    let props = &got.delivery.properties;
    assert_eq!(got.delivery.data, b"poison");
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "m-1");
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(header(props, "x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        header(props, dead_letter::REASON).as_deref(),
        Some("agent failed: boom")
    );
    assert_eq!(header(props, dead_letter::ERROR_CLASS).as_deref(), Some("permanent"));
    assert_eq!(header(props, dead_letter::ATTEMPTS).as_deref(), Some("4"));
    assert_eq!(header(props, dead_letter::ORIGINAL_QUEUE).as_deref(), Some(q.as_str()));
    assert_eq!(header(props, dead_letter::ORIGINAL_MESSAGE_ID).as_deref(), Some("m-1"));
    assert_eq!(header(props, dead_letter::FIRST_FAILURE_AT), Some(now.to_rfc3339()));
    adapter.close().await.unwrap();
    assert_eq!(
        broker.ready(&q).await,
        0,
        "the original is acked once the copy is confirmed"
    );
}

#[tokio::test]
async fn a_failed_settle_leaves_the_message_for_redelivery() {
    let broker = Broker::connect().await;
    let q = unique("failsettle");
    let adapter_cfg = config(&broker_url(), &q);
    let retry = adapter_cfg.retry_queue_name();
    let _cleanup = Cleanup::new(&[&q, &retry]);
    broker.declare(&q, FieldTable::default()).await;
    broker.publish(&q, b"x", with_id("m-1")).await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(8)).unwrap();
    let caps = adapter.capabilities();
    assert!(!caps.dead_letter && caps.native_reject && caps.delayed_requeue);
    adapter.connect().await.unwrap();

    // No DLQ configured: dead-lettering fails, and the message comes back.
    let delivery = receive_one(&adapter, WAIT).await;
    let err = delivery.handle.dead_letter(DeadLetter::new("nope")).await.unwrap_err();
    assert!(matches!(err, SettleError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("source.dlq"), "{err}");
    let again = receive_one(&adapter, WAIT).await;
    assert_eq!(again.message.message_id, "m-1");
    assert!(again.message.source.redelivered);

    // The retry queue is gone: the copy is unroutable, the settle fails, the message comes back.
    broker.delete(&retry).await;
    let err = again.handle.requeue(Some(Duration::from_secs(5)), 2).await.unwrap_err();
    match &err {
        SettleError::Broker { message_id, reason, .. } => {
            assert_eq!(message_id, "m-1");
            assert!(reason.contains("no queue is bound"), "{reason}");
            assert!(reason.contains(&retry), "{reason}");
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
    let third = receive_one(&adapter, WAIT).await;
    assert_eq!(third.message.message_id, "m-1");
    third.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
}

#[tokio::test]
async fn nack_reaches_the_queues_dead_letter_exchange() {
    let broker = Broker::connect().await;
    let q = unique("nack");
    let dlx_q = unique("nack-dlx");
    let mut adapter_cfg = config(&broker_url(), &q);
    adapter_cfg.declare = Some(RabbitMqDeclare {
        queue: Some(QueueDeclaration {
            durable: true,
            arguments: [
                ("x-dead-letter-exchange".to_owned(), serde_json::json!("")),
                ("x-dead-letter-routing-key".to_owned(), serde_json::json!(dlx_q)),
            ]
            .into_iter()
            .collect(),
        }),
        exchanges: Vec::new(),
        bindings: Vec::new(),
    });
    let _cleanup = Cleanup::new(&[&q, &dlx_q, &adapter_cfg.retry_queue_name()]);
    broker.declare(&dlx_q, FieldTable::default()).await;

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();
    broker.publish(&q, b"bad", with_id("m-1")).await;
    let delivery = receive_one(&adapter, WAIT).await;
    delivery.handle.nack().await.unwrap();

    let got = broker.get_within(&dlx_q, WAIT).await;
    assert_eq!(got.delivery.properties.message_id().as_ref().unwrap().as_str(), "m-1");
    assert_eq!(
        header(&got.delivery.properties, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
}

#[tokio::test]
async fn backlog_counts_ready_messages_and_pause_stops_intake() {
    let broker = Broker::connect().await;
    let q = unique("pause");
    let mut adapter_cfg = config(&broker_url(), &q);
    adapter_cfg.prefetch = Some(2);
    let _cleanup = Cleanup::new(&[&q, &adapter_cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;
    for i in 0..5 {
        broker.publish(&q, b"x", with_id(&format!("m-{i}"))).await;
    }

    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(64)).unwrap();
    assert_eq!(adapter.prefetch(), 2);
    adapter.connect().await.unwrap();
    let held = receive_n(&adapter, 2, WAIT).await;
    // Two are out (the prefetch), three wait at the broker.
    assert_eq!(adapter.backlog().await.unwrap(), Some(3));

    adapter.pause().await.unwrap();
    broker.wait_consumers(&q, 0, WAIT).await;
    let mut seen = ids(&held);
    for d in held {
        d.handle.ack().await.unwrap();
    }
    assert_nothing_for(&adapter, Duration::from_millis(700)).await;
    assert_eq!(adapter.backlog().await.unwrap(), Some(3));
    assert_eq!(adapter.health().await, Health::Healthy, "paused is still connected");

    adapter.resume().await.unwrap();
    // Two at a time (the prefetch): each ack lets the broker send the next.
    while seen.len() < 5 {
        let batch = receive_n(&adapter, 1, WAIT).await;
        seen.extend(ids(&batch));
        for d in batch {
            d.handle.ack().await.unwrap();
        }
    }
    seen.sort();
    assert_eq!(seen, ["m-0", "m-1", "m-2", "m-3", "m-4"]);
    assert_eq!(adapter.backlog().await.unwrap(), Some(0));
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
}

#[tokio::test]
async fn publisher_confirms_and_refuses_what_no_queue_takes() {
    let broker = Broker::connect().await;
    let q = unique("pub");
    let _cleanup = Cleanup::new(&[&q]);
    broker.declare(&q, FieldTable::default()).await;
    let publisher = RabbitMqPublisher::new(&config(&broker_url(), &q), &settings(8)).unwrap();

    let id = publisher
        .publish(OutgoingMessage {
            body: "hello".into(),
            headers: [("x-event-name", "greet")].into_iter().collect(),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap()
        .expect("a message id");
    let got = broker.get_within(&q, WAIT).await;
    assert_eq!(got.delivery.data, b"hello");
    assert_eq!(got.delivery.properties.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(
        header(&got.delivery.properties, "x-event-name").as_deref(),
        Some("greet")
    );
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));

    let id = publisher
        .publish(OutgoingMessage {
            body: "again".into(),
            deduplication_id: Some("order-42".into()),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("order-42"));
    let got = broker.get_within(&q, WAIT).await;
    assert_eq!(
        got.delivery.properties.message_id().as_ref().unwrap().as_str(),
        "order-42"
    );

    let unroutable = publisher
        .publish(OutgoingMessage {
            body: "lost?".into(),
            key: Some(unique("no-such-queue")),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap_err();
    assert!(unroutable.to_string().contains("no queue is bound"), "{unroutable}");

    let missing_exchange = publisher
        .publish(OutgoingMessage {
            body: "lost?".into(),
            destination: Some(unique("no-such-exchange")),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap_err();
    assert!(missing_exchange.to_string().contains("NOT_FOUND"), "{missing_exchange}");

    // The channel the broker closed is replaced.
    publisher
        .publish(OutgoingMessage {
            body: "still works".into(),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    assert_eq!(broker.get_within(&q, WAIT).await.delivery.data, b"still works");
    publisher.close().await;
}
