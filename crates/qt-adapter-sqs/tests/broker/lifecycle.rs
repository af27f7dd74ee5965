//! Pause stops intake without losing anything; resume picks up again; backlog counts
//! what waits at the broker.

use std::time::Duration;

use qt_core::QueueAdapter;
use tokio::time::sleep;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_adapters_take_nothing_until_resumed() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let adapter = adapter(&source(&queue), 4).await;
    assert!(adapter.capabilities().pause);

    adapter.pause().await.unwrap();
    // A long poll already under way (1s wait) ends before the message is sent.
    sleep(Duration::from_millis(1500)).await;
    send(&admin, &queue, "while paused").await;
    assert!(receive_within(&adapter, Duration::from_secs(3)).await.is_empty());
    assert_eq!(
        counts(&admin, &queue).await,
        (1, 0, 0),
        "left in the queue while paused"
    );
    assert_eq!(adapter.backlog().await.unwrap(), Some(1));
    assert!(adapter.health().await.is_healthy());

    adapter.resume().await.unwrap();
    let mut got = receive_n(&adapter, 1, Duration::from_secs(10)).await;
    let d = got.pop().expect("delivered after resume");
    assert_eq!(body(&d), "while paused");
    d.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    assert!(!adapter.health().await.is_ready(), "closed adapters are not ready");
    delete_queue(&admin, &queue).await;
}
