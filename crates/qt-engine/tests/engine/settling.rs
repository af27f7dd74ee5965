//! Settlements that wait for the broker (a dead letter awaiting its confirm) go on beside
//! the runs of their batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qt_adapter_mock::{MockAdapter, MockQueue};
use qt_core::{AckHandle, AdapterError, Capabilities, Delivery, Health, QueueAdapter, Settle, SettleError, Settlement};
use qt_engine::QueueTrigger;
use qt_engine::builtin::memory_ledger::MemoryLedger;
use serde_json::json;

use crate::support::{ScriptedAgent, config, msg};

/// The mock source, with every dead letter held back a while before it is written, as a
/// broker's confirm would be.
#[derive(Debug)]
struct SlowDeadLetters(MockAdapter);

struct HeldBack(AckHandle);

#[async_trait]
impl Settle for HeldBack {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
        if matches!(settlement, Settlement::DeadLetter(_)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.0.settle(settlement).await
    }
}

#[async_trait]
impl QueueAdapter for SlowDeadLetters {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn queue(&self) -> &str {
        self.0.queue()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn connect(&self) -> Result<(), AdapterError> {
        self.0.connect().await
    }
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let received = self.0.receive(max).await?;
        Ok(received
            .into_iter()
            .map(|d| Delivery::new(d.message, AckHandle::new(HeldBack(d.handle))))
            .collect())
    }
    async fn pause(&self) -> Result<(), AdapterError> {
        self.0.pause().await
    }
    async fn resume(&self) -> Result<(), AdapterError> {
        self.0.resume().await
    }
    async fn health(&self) -> Health {
        self.0.health().await
    }
    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        self.0.backlog().await
    }
    async fn close(&self) -> Result<(), AdapterError> {
        self.0.close().await
    }
}

/// A dead letter of a batch whose other run takes two seconds is written (and counted)
/// as soon as its confirm comes, not once the slow run is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_dead_letter_is_settled_while_its_batch_still_runs() {
    let queue = MockQueue::new("q");
    queue.enqueue_all(vec![
        msg("slow", &[], json!({"do": "sleep", "ms": 2000})),
        msg("bad", &[], json!({"do": "fail", "class": "permanent"})),
    ]);
    let mut c = config();
    c.processing.concurrency = 2;
    let trigger = QueueTrigger::builder(c)
        .adapter(Arc::new(SlowDeadLetters(queue.adapter())))
        .ledger(Arc::new(MemoryLedger::new()))
        .agent("default", ScriptedAgent::new("default"))
        .build()
        .expect("the configuration is valid");
    trigger.start().await.expect("starts");
    let started = Instant::now();
    while queue.dead_lettered().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the dead letter waited for the slow run of its batch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(queue.acked_count(), 0, "the slow run is still going");
    tokio::time::timeout(Duration::from_secs(20), queue.wait_idle())
        .await
        .expect("the queue drains");
    trigger.stop().await.expect("stops");
    assert_eq!(queue.acked_count(), 1);
    assert_eq!(queue.dead_lettered().len(), 1);
}

/// A ledger that refuses every write until `until`, then keeps records in memory.
#[derive(Debug)]
struct DownUntil {
    until: Instant,
    refused: std::sync::atomic::AtomicU64,
    records: MemoryLedger,
}

#[async_trait]
impl qt_core::Ledger for DownUntil {
    async fn record_batch(&self, records: Vec<qt_core::LedgerRecord>) -> Result<(), qt_core::Unwritten> {
        if Instant::now() < self.until {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let error = qt_core::LedgerError {
                ledger: "down".into(),
                reason: "connection refused".into(),
            };
            return Err(qt_core::Unwritten { error, records });
        }
        self.records.record_batch(records).await
    }
}

/// While the ledger refuses writes, the batch is held unacknowledged and its records are
/// written again after growing pauses (not the whole queue redelivered and refused as fast as
/// it comes); once the ledger is back every message is acked with exactly one record of its
/// real outcome, none a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_ledger_is_down_the_batch_is_held_and_written_again_after_pauses_until_it_returns() {
    let queue = MockQueue::new("q");
    queue.enqueue_all(
        (0..5)
            .map(|i| msg(&format!("m-{i}"), &[], json!({"do": "ok"})))
            .collect::<Vec<_>>(),
    );
    let ledger = Arc::new(DownUntil {
        until: Instant::now() + Duration::from_millis(800),
        refused: Default::default(),
        records: MemoryLedger::new(),
    });
    let trigger = QueueTrigger::builder(config())
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("default", ScriptedAgent::new("default"))
        .build()
        .expect("the configuration is valid");
    trigger.start().await.expect("starts");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(queue.acked_count(), 0, "nothing is acked before its record is written");
    tokio::time::timeout(Duration::from_secs(20), queue.wait_idle())
        .await
        .expect("the queue drains once the ledger is back");
    trigger.stop().await.expect("stops");
    assert_eq!(queue.acked_count(), 5);
    assert_eq!(queue.redeliveries(), 0, "held, not handed back");
    let records = ledger.records.records();
    assert_eq!(records.len(), 5, "one record per message");
    assert!(
        records.iter().all(|r| r.status == qt_core::LedgerStatus::Succeeded),
        "{records:?}"
    );
    // Pauses of 100, 200 and 400 ms cover the 800 ms outage in a handful of attempts.
    let refused = ledger.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=8).contains(&refused), "{refused} refused writes");
    assert!(trigger.metrics().ledger_errors >= 1);
}
