use std::time::{Duration, Instant};

use qt_core::LedgerStatus;
use qt_engine::QueueTrigger;

/// Starts `trigger`, waits until `messages` have succeeded (panicking after `limit`), stops
/// it and checks that none succeeded twice. Returns the time from start to the last success.
pub async fn run_until_succeeded(trigger: &QueueTrigger, messages: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    trigger.start().await.expect("the trigger starts");
    let deadline = started + limit;
    loop {
        let done = trigger.metrics().processed(LedgerStatus::Succeeded);
        if done as usize >= messages {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "qt settled {done} of {messages} within {limit:?}"
        );
        // Polling the counters is cheap next to the drain; a short period keeps the
        // measured end close to the real one.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    trigger.stop().await.expect("the trigger stops");
    assert_eq!(
        trigger.metrics().processed(LedgerStatus::Succeeded) as usize,
        messages,
        "every message succeeded once"
    );
    elapsed
}
