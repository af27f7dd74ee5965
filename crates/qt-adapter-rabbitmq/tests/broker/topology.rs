//! What qt declares or checks at connect, and how it reports what is missing.

use std::time::Duration;

use crate::common::*;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use qt_adapter_rabbitmq::RabbitMqAdapter;
use qt_core::config::{ExchangeDeclaration, QueueBinding, QueueDeclaration, RabbitMqDeclare, RabbitMqDlq};
use qt_core::{AdapterError, QueueAdapter};

const WAIT: Duration = Duration::from_secs(10);

/// Connecting with `cfg` fails naming the missing `resource` and the configuration `field`
/// that refers to it.
async fn assert_missing(cfg: &qt_core::config::RabbitMqSourceConfig, resource: &str, field: &str) {
    let err = RabbitMqAdapter::new(cfg, settings(8))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    match &err {
        AdapterError::MissingResource { queue, reason } => {
            assert_eq!(queue, resource);
            assert!(reason.contains(field), "{reason}");
        }
        other => panic!("expected MissingResource for {resource}, got {other:?}"),
    }
}

#[tokio::test]
async fn passive_check_on_a_missing_queue_names_it() {
    let _broker = Broker::connect().await;
    let q = unique("missing");
    let cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&cfg.retry_queue_name()]);
    let adapter = RabbitMqAdapter::new(&cfg, settings(8)).unwrap();
    let err = adapter.connect().await.unwrap_err();
    match &err {
        AdapterError::MissingResource { queue, reason } => {
            assert_eq!(queue, &q);
            assert!(reason.contains("does not exist"), "{reason}");
            assert!(reason.contains("source.declare.queue"), "{reason}");
        }
        other => panic!("expected MissingResource, got {other:?}"),
    }
    assert!(err.to_string().contains(&q), "{err}");
    let health = adapter.health().await;
    assert!(!health.is_ready(), "{health:?}");
}

#[tokio::test]
async fn declares_exchange_queue_and_binding() {
    let broker = Broker::connect().await;
    let q = unique("declared");
    let exchange = unique("events");
    let mut cfg = config(&broker_url(), &q);
    cfg.declare = Some(RabbitMqDeclare {
        queue: Some(QueueDeclaration {
            durable: true,
            arguments: [("x-queue-type".to_owned(), serde_json::json!("quorum"))]
                .into_iter()
                .collect(),
        }),
        exchanges: vec![ExchangeDeclaration {
            name: exchange.clone(),
            kind: "topic".into(),
            durable: true,
        }],
        bindings: vec![QueueBinding {
            exchange: exchange.clone(),
            routing_key: "orders.*".into(),
        }],
    });
    let _cleanup = Cleanup::new(&[&q, &cfg.retry_queue_name()]).exchange(&exchange);
    let adapter = RabbitMqAdapter::new(&cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();

    broker
        .publish_to(&exchange, "orders.created", b"{}", with_id("o-1"))
        .await;
    let d = receive_one(&adapter, WAIT).await;
    assert_eq!(d.message.message_id, "o-1");
    assert_eq!(d.message.source.key.as_deref(), Some("orders.created"));
    d.handle.ack().await.unwrap();

    // The declarations are idempotent: a second adapter with the same config connects.
    let second = RabbitMqAdapter::new(&cfg, settings(8)).unwrap();
    second.connect().await.unwrap();
    second.close().await.unwrap();
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0);
}

#[tokio::test]
async fn missing_dlq_and_missing_binding_exchange_are_named() {
    let broker = Broker::connect().await;
    let q = unique("dlqcheck");
    let dlq = unique("absent-dlq");
    let mut cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&q, &cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;

    cfg.dlq = Some(RabbitMqDlq {
        exchange: String::new(),
        routing_key: dlq.clone(),
        declare: None,
        queue: None,
    });
    assert_missing(&cfg, &dlq, "source.dlq").await;

    let exchange = unique("absent-exchange");
    cfg.dlq = None;
    cfg.declare = Some(RabbitMqDeclare {
        queue: None,
        exchanges: Vec::new(),
        bindings: vec![QueueBinding {
            exchange: exchange.clone(),
            routing_key: "k".into(),
        }],
    });
    assert_missing(&cfg, &exchange, "source.declare.exchanges").await;
}

#[tokio::test]
async fn an_existing_retry_queue_is_used_as_it_is() {
    let broker = Broker::connect().await;
    let q = unique("ownretry");
    let retry = unique("ownretry-r");
    let mut cfg = config(&broker_url(), &q);
    cfg.retry_queue = Some(retry.clone());
    let _cleanup = Cleanup::new(&[&q, &retry]);
    broker.declare(&q, FieldTable::default()).await;
    // Created by an operator, with one argument more than qt would use: qt's own declaration
    // is refused (PRECONDITION_FAILED) and the queue is used as it is.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongLongInt(1000));
    args.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        lapin::types::AMQPValue::LongString(q.as_str().into()),
    );
    broker.declare(&retry, args).await;
    broker
        .publish(&q, b"x", BasicProperties::default().with_message_id("r-1".into()))
        .await;

    let adapter = RabbitMqAdapter::new(&cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();
    let d = receive_one(&adapter, WAIT).await;
    d.handle.requeue(Some(Duration::from_millis(200)), 2).await.unwrap();
    let back = receive_one(&adapter, WAIT).await;
    assert_eq!(back.message.message_id, "r-1");
    assert_eq!(back.message.attempt(), 2);
    back.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
}

/// The queue disappears while qt consumes: the broker cancels the consumer, the adapter
/// reports the missing queue while it retries, and consumes again once the queue is back.
#[tokio::test]
async fn a_queue_deleted_mid_run_is_reported_until_it_is_back() {
    let broker = Broker::connect().await;
    let q = unique("vanishing");
    let cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&q, &cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;
    let adapter = RabbitMqAdapter::new(&cfg, settings(8)).unwrap();
    adapter.connect().await.unwrap();

    broker.delete(&q).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let reason = loop {
        if let qt_core::Health::Unhealthy(reason) = adapter.health().await
            && reason.contains("does not exist")
        {
            break reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the missing queue was not reported: {:?}",
            adapter.health().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reason.contains(&q), "{reason}");

    broker.declare(&q, FieldTable::default()).await;
    broker.publish(&q, b"x", with_id("back-1")).await;
    let d = receive_one(&adapter, WAIT).await;
    assert_eq!(d.message.message_id, "back-1");
    d.handle.ack().await.unwrap();
    assert!(adapter.health().await.is_healthy());
    adapter.close().await.unwrap();
}
