//! Coalesced acks (`basic.ack(multiple=true)`) never reach past a message that is still
//! held or being returned, checked at the broker: such a message comes back, and the
//! channel never sees an ack for an unknown delivery tag (which would close it).

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use lapin::types::FieldTable;
use qt_adapter_rabbitmq::RabbitMqAdapter;
use qt_core::{Health, QueueAdapter, Settlement};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_settled_together_skip_held_and_returned_messages() {
    let broker = Broker::connect().await;
    let q = unique("acks");
    let adapter_cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&q, &adapter_cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;
    for i in 1..=8 {
        let id = format!("m-{i}");
        broker.publish(&q, id.as_bytes(), with_id(&id)).await;
    }
    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(16)).unwrap();
    adapter.connect().await.unwrap();
    let mut got = receive_n(&adapter, 8, WAIT).await;
    got.sort_by(|a, b| a.message.message_id.cmp(&b.message.message_id));
    assert_eq!(ids(&got), ["m-1", "m-2", "m-3", "m-4", "m-5", "m-6", "m-7", "m-8"]);

    // m-3 stays held; m-5 is requeued in the same breath as the acks around it.
    let mut got: Vec<_> = got.into_iter().map(Some).collect();
    let held = got[2].take().unwrap();
    let settles = got.into_iter().flatten().map(|d| {
        let settlement = if d.message.message_id == "m-5" {
            Settlement::Requeue {
                delay: None,
                attempt: 2,
                traceparent: None,
            }
        } else {
            Settlement::Ack
        };
        d.handle.settle(settlement)
    });
    for result in join_all(settles).await {
        result.unwrap();
    }
    let back = receive_one(&adapter, WAIT).await;
    assert_eq!(back.message.message_id, "m-5", "the requeued message comes back");
    assert!(back.message.source.redelivered);
    back.handle.ack().await.unwrap();

    // Had a multiple ack covered m-3, the broker would have forgotten it, and returning it
    // now would be an ack-protocol error that closes the channel.
    drop(held);
    let again = receive_one(&adapter, WAIT).await;
    assert_eq!(again.message.message_id, "m-3", "the held message was never acked");
    assert!(again.message.source.redelivered);
    again.handle.ack().await.unwrap();
    assert_nothing_for(&adapter, Duration::from_millis(300)).await;
    assert_eq!(adapter.health().await, Health::Healthy, "the channel was never closed");
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0, "everything else was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_acks_in_any_order_empty_the_queue_on_one_healthy_channel() {
    const N: usize = 600;
    let broker = Broker::connect().await;
    let q = unique("acks-many");
    let adapter_cfg = config(&broker_url(), &q);
    let _cleanup = Cleanup::new(&[&q, &adapter_cfg.retry_queue_name()]);
    broker.declare(&q, FieldTable::default()).await;
    for i in 0..N {
        let id = format!("m-{i:04}");
        broker.publish(&q, id.as_bytes(), with_id(&id)).await;
    }
    let adapter = RabbitMqAdapter::new(&adapter_cfg, settings(256)).unwrap();
    adapter.connect().await.unwrap();
    let mut acked = 0;
    while acked < N {
        let mut batch = receive_n(&adapter, (N - acked).min(100), WAIT).await;
        // Settle out of order, every ack of the batch at once, each from its own task.
        batch.reverse();
        let tasks: Vec<_> = batch
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                tokio::spawn(async move {
                    if i % 7 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    d.handle.ack().await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
            acked += 1;
        }
    }
    assert_nothing_for(&adapter, Duration::from_millis(300)).await;
    assert_eq!(adapter.health().await, Health::Healthy);
    adapter.close().await.unwrap();
    assert_eq!(broker.ready(&q).await, 0, "every message was acked exactly once");
}
