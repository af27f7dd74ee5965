//! Every settlement lands where it should.

use std::collections::HashMap;
use std::time::Duration;

use qt_adapter_sqs::attributes::FOLDED_HEADERS;
use qt_core::headers::dead_letter;
use qt_core::{DeadLetter, ErrorClass, QueueAdapter, SettleError};
use tokio::time::Instant;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_requeue_nack_and_dead_letter_land_where_they_should() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    let mut cfg = source(&queue);
    cfg.dlq_queue_url = Some(dlq.clone());
    let adapter = adapter(&cfg, 10).await;
    assert!(adapter.capabilities().dead_letter);
    assert!(!adapter.capabilities().native_reject);

    for b in ["ack", "requeue", "nack", "dlq"] {
        send(&admin, &queue, b).await;
    }
    let deliveries = receive_n(&adapter, 4, Duration::from_secs(15)).await;
    assert_eq!(deliveries.len(), 4);
    let mut by_body: HashMap<String, _> = deliveries.into_iter().map(|d| (body(&d), d)).collect();
    let first = &by_body["dlq"].message;
    assert_eq!(first.headers.get("x-tenant-id"), Some("acme"));
    assert_eq!(first.source.delivery_count, Some(1));
    assert!(first.broker_timestamp.is_some());
    let dlq_message_id = first.message_id.clone();

    by_body.remove("ack").unwrap().handle.ack().await.expect("ack");
    let requeued_at = Instant::now();
    by_body
        .remove("requeue")
        .unwrap()
        .handle
        .requeue(Some(Duration::from_secs(3)), 2)
        .await
        .expect("requeue");
    by_body.remove("nack").unwrap().handle.nack().await.expect("nack");
    let mut dl = DeadLetter::new("agent failed: boom");
    dl.error_class = Some(ErrorClass::Permanent);
    dl.attempts = 3;
    by_body
        .remove("dlq")
        .unwrap()
        .handle
        .dead_letter(dl)
        .await
        .expect("dead letter");

    // The dead letter: original body, tenant header, and the failure details as attributes.
    let dead = peek(&admin, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("dlq"));
    let attrs = dead[0].message_attributes().expect("attributes");
    let attr = |name: &str| attrs.get(name).and_then(|v| v.string_value()).map(str::to_owned);
    assert_eq!(attr(dead_letter::REASON).as_deref(), Some("agent failed: boom"));
    assert_eq!(attr(dead_letter::ERROR_CLASS).as_deref(), Some("permanent"));
    assert_eq!(attr(dead_letter::ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(attr(dead_letter::ORIGINAL_QUEUE).as_deref(), Some(queue.as_str()));
    assert_eq!(attr(dead_letter::ORIGINAL_MESSAGE_ID), Some(dlq_message_id));
    assert_eq!(attr("x-tenant-id").as_deref(), Some("acme"));
    assert!(!attrs.contains_key(FOLDED_HEADERS), "seven headers fit without folding");

    // The nacked message comes straight back; the requeued one only after its delay; the
    // acked and dead-lettered ones never.
    let mut nack_back = None;
    let mut requeue_back = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while (nack_back.is_none() || requeue_back.is_none()) && Instant::now() < deadline {
        for d in receive_within(&adapter, Duration::from_secs(2)).await {
            match body(&d).as_str() {
                "nack" => {
                    assert_eq!(d.message.source.delivery_count, Some(2));
                    assert!(d.message.source.redelivered);
                    nack_back = Some(d);
                }
                "requeue" => {
                    let waited = requeued_at.elapsed();
                    assert!(
                        waited >= Duration::from_secs(2),
                        "requeued message back after {waited:?}"
                    );
                    assert_eq!(d.message.attempt(), 2);
                    requeue_back = Some(d);
                }
                other => panic!("{other:?} must not be redelivered"),
            }
        }
    }
    nack_back
        .expect("nacked message redelivered")
        .handle
        .ack()
        .await
        .unwrap();
    requeue_back
        .expect("requeued message redelivered")
        .handle
        .ack()
        .await
        .unwrap();

    assert!(receive_within(&adapter, Duration::from_secs(2)).await.is_empty());
    assert_eq!(counts(&admin, &queue).await, (0, 0, 0), "everything settled is gone");
    assert_eq!(adapter.backlog().await.unwrap(), Some(0));
    adapter.close().await.unwrap();
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_without_dlq_fails_and_keeps_the_message() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let adapter = adapter(&source(&queue), 4).await;
    let caps = adapter.capabilities();
    assert!(!caps.dead_letter);
    assert!(caps.notes.iter().any(|n| n.contains("dlq_queue_url")), "{caps:?}");

    send(&admin, &queue, "doomed").await;
    let mut got = receive_n(&adapter, 1, Duration::from_secs(10)).await;
    let delivery = got.pop().expect("delivery");
    let err = delivery
        .handle
        .dead_letter(DeadLetter::new("bad"))
        .await
        .expect_err("no DLQ configured");
    assert!(matches!(err, SettleError::Broker { .. }));
    assert!(err.to_string().contains("source.dlq_queue_url"), "{err}");
    // Still in the queue, in flight until its visibility timeout ends.
    assert_eq!(counts(&admin, &queue).await, (0, 1, 0));
    adapter.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_headers_are_folded_into_one_attribute_and_unfolded_on_receipt() {
    use qt_core::{OutgoingMessage, Publisher};

    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let publisher = qt_adapter_sqs::SqsPublisher::with_credentials(&source(&queue), &settings(1), credentials())
        .await
        .unwrap();
    let headers: qt_core::Headers = (0..14)
        .map(|i| (format!("x-h{i}"), format!("v{i}")))
        .chain([("not a valid name".to_owned(), "kept".to_owned())])
        .collect();
    let id = publisher
        .publish(OutgoingMessage {
            body: "folded".into(),
            headers: headers.clone(),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    assert!(id.is_some());

    let adapter = adapter(&source(&queue), 4).await;
    let mut got = receive_n(&adapter, 1, Duration::from_secs(10)).await;
    let delivery = got.pop().expect("delivery");
    for (name, value) in headers.iter() {
        assert_eq!(delivery.message.headers.get(name), Some(value), "{name}");
    }
    delivery.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}
