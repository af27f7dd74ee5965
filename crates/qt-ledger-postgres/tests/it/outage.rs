//! A PostgreSQL of the test's own, killed with SIGKILL while writes go on and started
//! again: writes fail during the outage and the ledger says it is unhealthy; afterwards the
//! same ledger writes again on fresh connections, and every batch it reported written is
//! there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qt_core::config::PostgresLedgerConfig;
use qt_core::{Health, Ledger, LedgerFilter, LedgerStatus};
use qt_ledger_postgres::PostgresLedger;

use crate::private_pg::PrivatePostgres;
use crate::support::minimal;

fn assert_secret_free(text: &str) {
    assert!(!text.contains("outage-pw-1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_during_a_crash_and_resume_on_the_same_ledger_after_restart() {
    let mut pg = PrivatePostgres::init(None);
    pg.start().await;
    let mut cfg = PostgresLedgerConfig::new(pg.url());
    cfg.pool_size = 2;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    let ledger = Arc::new(PostgresLedger::connect(&cfg, false).await.expect("connect"));

    // A writer that keeps going through the outage, as the engine would.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = tokio::spawn({
        let (ledger, stop, written, errors) = (ledger.clone(), stop.clone(), written.clone(), errors.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("m{n}");
                match ledger
                    .record_batch(vec![minimal(&id, LedgerStatus::Succeeded, n)])
                    .await
                {
                    Ok(()) => written.lock().push(id),
                    Err(e) => errors.lock().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    wait_for("writes before the crash", || written.lock().len() >= 5).await;
    assert_eq!(ledger.health().await, Health::Healthy);
    pg.kill();
    let before_restart = written.lock().len();
    wait_for("writes failing", || errors.lock().len() >= 3).await;
    let Health::Unhealthy(why) = ledger.health().await else {
        panic!("the ledger must be unhealthy while PostgreSQL is down")
    };
    assert!(why.contains(&format!("127.0.0.1:{}", pg.port)), "{why}");
    assert_secret_free(&why);
    // No write succeeds while the server is down (at most one that was committing as it
    // was killed may have been reported either way).
    assert!(written.lock().len() <= before_restart + 1);

    pg.start().await;
    let after = written.lock().len();
    wait_for("writes after the restart", || written.lock().len() >= after + 5).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert_eq!(ledger.health().await, Health::Healthy);

    // Every batch reported written is stored: nothing acked was lost in the crash.
    let stored: Vec<String> = ledger
        .query(&LedgerFilter::default())
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    for id in written.lock().iter() {
        assert!(stored.contains(id), "{id} was reported written but is not stored");
    }
    for e in errors.lock().iter() {
        assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
        assert_secret_free(e);
    }
}

/// Waits (at most 20s, failing the test after) until `done`.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The engine over the mock source with this ledger, messages arriving while PostgreSQL is
/// killed with SIGKILL and started again: no message is acked before its record is committed
/// (every message acked at the moment of the kill is in the table after the restart), and in
/// the end every message has exactly one record, none a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_engine_a_crash_acks_nothing_unrecorded_and_leaves_one_record_per_message() {
    use qt_adapter_mock::MockQueue;
    use qt_core::config::{Config, MockSourceConfig, SourceConfig};

    let mut pg = PrivatePostgres::init(None);
    pg.start().await;
    let mut cfg = PostgresLedgerConfig::new(pg.url());
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    let ledger = Arc::new(PostgresLedger::connect(&cfg, false).await.expect("connect"));

    let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig::default()));
    config.processing.batch_size = 16;
    let queue = MockQueue::new("q");
    let trigger = qt_engine::QueueTrigger::builder(config)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("default", Arc::new(qt_bench_support::NoOpAgent))
        .build()
        .expect("the configuration is valid");
    trigger.start().await.expect("starts");

    // 20 messages every 10 ms while the server is killed and restarted.
    let feeder = tokio::spawn({
        let queue = queue.clone();
        async move {
            for chunk in 0..150 {
                queue.enqueue_all(qt_bench_support::mock_messages(20, 1_000_000).into_iter().map(|mut m| {
                    m.message_id = format!("{chunk}-{}", m.message_id);
                    m.headers.insert("x-dedup-key", m.message_id.clone());
                    m
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    wait_for("acks before the crash", || queue.acked_count() >= 200).await;
    pg.kill();
    let acked_at_crash: Vec<String> = queue.acked().into_iter().map(|s| s.message.message_id).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let acked_while_down = queue.acked_count();
    pg.start().await;
    feeder.await.expect("feeder");
    tokio::time::timeout(Duration::from_secs(60), queue.wait_idle())
        .await
        .expect("the queue drains once PostgreSQL is back");
    trigger.stop().await.expect("stops");
    assert!(trigger.metrics().ledger_errors >= 1, "the outage was seen");
    assert!(
        acked_while_down <= acked_at_crash.len() as u64 + 16 * 8,
        "at most the batches committed as the server died are acked after it"
    );

    let records = ledger.query(&LedgerFilter::default()).await.expect("query");
    let mut per_message = std::collections::HashMap::<String, Vec<LedgerStatus>>::new();
    for r in records {
        per_message.entry(r.message_id).or_default().push(r.status);
    }
    for id in &acked_at_crash {
        assert!(
            per_message.contains_key(id),
            "{id} was acked before its record was committed"
        );
    }
    assert_eq!(per_message.len(), 3000, "every message has a record");
    for (id, statuses) in &per_message {
        assert_eq!(statuses, &[LedgerStatus::Succeeded], "{id}");
    }
    assert_eq!(queue.acked_count(), 3000);
}
