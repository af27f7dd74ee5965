//! The broker closes every connection mid-run: the adapter reports the outage, reconnects,
//! resubscribes, and every message is still received and acked; none is lost.
//!
//! Each test runs in a vhost of its own, so `close_all_connections` touches nothing else on
//! the broker.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lapin::types::FieldTable;
use qt_adapter_rabbitmq::{RabbitMqAdapter, RabbitMqPublisher};
use qt_core::{Health, OutgoingMessage, Publisher, QueueAdapter, SettleError};

const MESSAGES: usize = 40;

async fn publish_range(publisher: &RabbitMqPublisher, range: std::ops::Range<usize>) {
    for i in range {
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            publisher.publish(OutgoingMessage {
                body: format!("{i}").into(),
                deduplication_id: Some(format!("m-{i:03}")),
                ..OutgoingMessage::default()
            }),
        )
        .await
        .expect("publish timed out");
        sent.unwrap_or_else(|e| panic!("publishing m-{i:03}: {e}"));
    }
}

/// Polls health every 10ms until `done` is set, recording each change.
fn watch_health(adapter: Arc<RabbitMqAdapter>, done: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<Vec<Health>> {
    tokio::spawn(async move {
        let mut seen: Vec<Health> = Vec::new();
        // After the stop signal one more sample is taken, so the sequence ends with the
        // state at the moment of stopping rather than up to one period before it.
        let mut stopping = false;
        loop {
            let h = adapter.health().await;
            if seen.last() != Some(&h) {
                seen.push(h);
            }
            if stopping {
                return seen;
            }
            tokio::select! {
                _ = done.notified() => stopping = true,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_all_connections_loses_nothing() {
    let vhost = TestVhost::create(None);
    let url = url_with(&vhost.name, None);
    let broker = Broker::connect_to(&url).await;
    let q = unique("reconnect");
    broker.declare(&q, FieldTable::default()).await;

    let mut cfg = config(&url, &q);
    cfg.prefetch = Some(8);
    let adapter = Arc::new(RabbitMqAdapter::new(&cfg, settings(8)).unwrap());
    adapter.connect().await.unwrap();
    let publisher = RabbitMqPublisher::new(&cfg, &settings(8)).unwrap();
    publish_range(&publisher, 0..MESSAGES / 2).await;

    // Take the first prefetch's worth; ack half, hold the rest unsettled.
    let first = receive_n(adapter.as_ref(), 8, Duration::from_secs(10)).await;
    let mut acked = BTreeSet::new();
    let mut held = Vec::new();
    for (i, d) in first.into_iter().enumerate() {
        if i % 2 == 0 {
            acked.insert(d.message.message_id.clone());
            d.handle.ack().await.unwrap();
        } else {
            held.push(d);
        }
    }

    let done = Arc::new(tokio::sync::Notify::new());
    let watcher = watch_health(Arc::clone(&adapter), Arc::clone(&done));
    let closer = {
        let name = vhost.name.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(&["close_all_connections", "-p", &name, "test"]))
    };
    // Old handles must not be settled on the new channel: wait until the outage is seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while adapter.health().await.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "health never left Healthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    closer.await.unwrap();
    for d in held.drain(..) {
        let id = d.message.message_id.clone();
        match d.handle.ack().await {
            Err(SettleError::ConnectionLost { message_id }) => assert_eq!(message_id, id),
            other => panic!("a handle of the lost connection settled: {other:?}"),
        }
    }

    // The publisher's connection was closed too; it reconnects on the next publish.
    publish_range(&publisher, MESSAGES / 2..MESSAGES).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut redelivered = 0;
    while acked.len() < MESSAGES {
        let batch = tokio::time::timeout_at(deadline, adapter.receive(16))
            .await
            .unwrap_or_else(|_| panic!("only {} of {MESSAGES} messages were acked", acked.len()))
            .unwrap();
        for d in batch {
            if d.message.source.redelivered {
                redelivered += 1;
            }
            acked.insert(d.message.message_id.clone());
            d.handle.ack().await.unwrap();
        }
    }
    assert!(
        redelivered >= 4,
        "the 4 held messages come back as redeliveries, saw {redelivered}"
    );
    let expected: BTreeSet<String> = (0..MESSAGES).map(|i| format!("m-{i:03}")).collect();
    assert_eq!(acked, expected);

    done.notify_one();
    let seen = watcher.await.unwrap();
    assert_eq!(adapter.health().await, Health::Healthy, "seen: {seen:?}");
    let outage = seen
        .iter()
        .find_map(|h| match h {
            Health::Unhealthy(reason) => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("never Unhealthy: {seen:?}"));
    assert!(outage.contains("lost") || outage.contains("reconnecting"), "{outage}");
    assert!(!outage.contains("guest:guest"), "{outage}");
    assert!(seen.last() == Some(&Health::Healthy), "{seen:?}");

    adapter.close().await.unwrap();
    publisher.close().await;
    // The setup connection was closed with the others.
    let broker = Broker::connect_to(&url).await;
    assert_eq!(broker.ready(&q).await, 0, "everything acked, nothing left behind");
}
