//! FIFO queues: a group's messages arrive in order, with the group id as `source.key` and
//! the deduplication id as a header.

use std::collections::HashMap;
use std::time::Duration;

use qt_adapter_sqs::{DEDUPLICATION_ID_HEADER, GROUP_ID_HEADER};
use qt_core::{OrderingUnit, OutgoingMessage, Publisher, QueueAdapter};
use tokio::time::Instant;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_one_group_arrive_in_order() {
    let admin = admin().await;
    let queue = create_queue(&admin, true).await;
    let mut cfg = source(&queue);
    cfg.pollers = 2;
    let publisher = qt_adapter_sqs::SqsPublisher::with_credentials(&cfg, &settings(1), credentials())
        .await
        .unwrap();
    // Two groups, interleaved on the way in.
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..5 {
        for group in ["g1", "g2"] {
            if group == "g2" && i >= 3 {
                continue;
            }
            let body = format!("{group}-{i}");
            publisher
                .publish(OutgoingMessage {
                    body: body.clone().into(),
                    key: Some(group.to_owned()),
                    deduplication_id: Some(format!("dedup-{body}")),
                    ..OutgoingMessage::default()
                })
                .await
                .unwrap();
            expected.entry(group).or_default().push(body);
        }
    }

    let adapter = adapter(&cfg, 10).await;
    assert_eq!(adapter.capabilities().ordering, OrderingUnit::MessageGroup);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.values().map(Vec::len).sum::<usize>() < 8 && Instant::now() < deadline {
        for d in receive_within(&adapter, Duration::from_secs(2)).await {
            let group = d.message.source.key.clone().expect("group id as source.key");
            let body = body(&d);
            assert_eq!(d.message.headers.get(GROUP_ID_HEADER), Some(group.as_str()));
            assert_eq!(
                d.message.headers.get(DEDUPLICATION_ID_HEADER),
                Some(format!("dedup-{body}").as_str())
            );
            seen.entry(group).or_default().push(body);
            // Settling in receipt order is what lets SQS hand out the group's next ones.
            d.handle.ack().await.unwrap();
        }
    }
    assert_eq!(seen.get("g1"), expected.get("g1"));
    assert_eq!(seen.get("g2"), expected.get("g2"));
    adapter.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}
