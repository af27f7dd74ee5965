//! The visibility heartbeat keeps long-running messages from a second consumer, up to
//! `max_visibility_extension`.

use std::time::Duration;

use qt_core::QueueAdapter;
use tokio::time::{Instant, sleep};

use crate::common::*;

const VISIBILITY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_three_visibility_timeouts_keeps_its_message() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let mut cfg = source(&queue);
    cfg.visibility_timeout = Some(VISIBILITY);
    // Room for one message only, so a redelivery can only go to the second consumer.
    let first = adapter(&cfg, 1).await;
    send(&admin, &queue, "slow").await;
    let mut got = receive_n(&first, 1, Duration::from_secs(10)).await;
    let delivery = got.pop().expect("delivery");
    let second = adapter(&cfg, 4).await;

    // The "handler" runs for three visibility timeouts; the other consumer polls meanwhile.
    let stolen = receive_within(&second, VISIBILITY * 3).await;
    assert!(
        stolen.is_empty(),
        "a second consumer received the message while its handler ran"
    );
    delivery.handle.ack().await.expect("ack after a long handler");
    assert!(receive_within(&second, VISIBILITY * 2).await.is_empty());
    assert_eq!(counts(&admin, &queue).await, (0, 0, 0));
    first.close().await.unwrap();
    second.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_outliving_the_maximum_extension_lets_the_message_return() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let mut cfg = source(&queue);
    cfg.visibility_timeout = Some(VISIBILITY);
    cfg.max_visibility_extension = Duration::from_secs(4);
    // Room for one message only, so a redelivery can only go to the second consumer.
    let first = adapter(&cfg, 1).await;
    send(&admin, &queue, "too slow").await;
    let mut got = receive_n(&first, 1, Duration::from_secs(10)).await;
    let received = Instant::now();
    let _held = got.pop().expect("delivery");
    let second = adapter(&cfg, 4).await;

    let mut back = receive_n(&second, 1, Duration::from_secs(12)).await;
    let redelivered = back
        .pop()
        .expect("the message returns once the extension budget is spent");
    let after = received.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "returned after {after:?}, before max_visibility_extension (4s) was spent"
    );
    assert_eq!(redelivered.message.source.delivery_count, Some(2));
    redelivered.handle.ack().await.unwrap();
    first.close().await.unwrap();
    second.close().await.unwrap();
    sleep(Duration::from_millis(100)).await;
    delete_queue(&admin, &queue).await;
}
