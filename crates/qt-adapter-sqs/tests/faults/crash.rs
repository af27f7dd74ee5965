//! A consumer that dies holding messages: SQS brings them back after the visibility
//! timeout and another adapter gets them.

use std::time::Duration;

use qt_core::QueueAdapter;
use tokio::time::Instant;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_crashed_adapter_return_after_the_visibility_timeout() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let mut cfg = source(&queue);
    cfg.visibility_timeout = Some(Duration::from_secs(4));
    for i in 0..3 {
        send(&admin, &queue, &format!("m{i}")).await;
    }

    let crashed = adapter(&cfg, 10).await;
    let held = receive_n(&crashed, 3, Duration::from_secs(10)).await;
    assert_eq!(held.len(), 3);
    let received = Instant::now();
    // A crash runs no code: the handles are never settled nor dropped, and the adapter
    // (with its heartbeats) is gone.
    std::mem::forget(held);
    drop(crashed);

    let survivor = adapter(&cfg, 10).await;
    let early = receive_within(&survivor, Duration::from_secs(2)).await;
    assert!(early.is_empty(), "redelivered before the visibility timeout ended");
    let mut back = receive_n(&survivor, 3, Duration::from_secs(15)).await;
    assert_eq!(back.len(), 3, "every message returns");
    assert!(received.elapsed() >= Duration::from_secs(3));
    back.sort_by_key(body);
    for (i, d) in back.into_iter().enumerate() {
        assert_eq!(body(&d), format!("m{i}"));
        assert_eq!(d.message.source.delivery_count, Some(2));
        assert!(d.message.source.redelivered);
        d.handle.ack().await.unwrap();
    }
    assert_eq!(counts(&admin, &queue).await, (0, 0, 0));
    survivor.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_hands_back_buffered_messages_and_dropped_handles_at_once() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let cfg = source(&queue); // 30s visibility: anything back within seconds was released
    for i in 0..4 {
        send(&admin, &queue, &format!("m{i}")).await;
    }
    let first = adapter(&cfg, 10).await;
    let mut taken = receive_n(&first, 1, Duration::from_secs(10)).await;
    // Whatever else was received sits in the buffer; the taken one is dropped unsettled.
    drop(taken.pop().expect("delivery"));
    first.close().await.unwrap();
    assert!(first.receive(10).await.unwrap().is_empty(), "closed for good");

    let second = adapter(&cfg, 10).await;
    let back = receive_n(&second, 4, Duration::from_secs(10)).await;
    assert_eq!(back.len(), 4, "released messages are redelivered without waiting 30s");
    for d in back {
        d.handle.ack().await.unwrap();
    }
    second.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}
