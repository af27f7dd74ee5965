//! Lifecycle, health and graceful stop (requirements 2.2-2.4, 8.4).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use qt_adapter_mock::{MockAdapter, MockQueue};
use qt_core::{AdapterError, AgentRuntime, Capabilities, Delivery, Health, QueueAdapter};
use qt_engine::builtin::memory_ledger::MemoryLedger;
use qt_engine::{QueueTrigger, TriggerState};
use serde_json::json;

use crate::support::*;

/// A mock whose health a test can flip.
#[derive(Debug)]
struct FlakyHealth {
    inner: MockAdapter,
    healthy: Arc<AtomicBool>,
}

#[async_trait]
impl QueueAdapter for FlakyHealth {
    fn kind(&self) -> &'static str {
        "mock"
    }
    fn queue(&self) -> &str {
        self.inner.queue()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn connect(&self) -> Result<(), AdapterError> {
        self.inner.connect().await
    }
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        self.inner.receive(max).await
    }
    async fn pause(&self) -> Result<(), AdapterError> {
        self.inner.pause().await
    }
    async fn resume(&self) -> Result<(), AdapterError> {
        self.inner.resume().await
    }
    async fn health(&self) -> Health {
        if self.healthy.load(Ordering::SeqCst) {
            Health::Healthy
        } else {
            Health::Unhealthy("broker unreachable".into())
        }
    }
    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        self.inner.backlog().await
    }
    async fn close(&self) -> Result<(), AdapterError> {
        self.inner.close().await
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Start,
    Pause,
    Resume,
    Stop,
    BreakSource,
    HealSource,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Start),
        Just(Op::Pause),
        Just(Op::Resume),
        Just(Op::Stop),
        Just(Op::BreakSource),
        Just(Op::HealSource)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Lifecycle transitions (2.2) and health accuracy (2.4, 8.4): after any sequence of
    /// operations the state is what the state machine says, invalid transitions are
    /// refused without changing it, and `ready` is exactly "running and every component
    /// healthy" while `live` holds until a failure.
    #[test]
    fn lifecycle_follows_the_state_machine(ops in prop::collection::vec(op(), 1..12)) {
        rt().block_on(async {
            let queue = MockQueue::new("q");
            let healthy = Arc::new(AtomicBool::new(true));
            let trigger = QueueTrigger::builder(config())
                .adapter(Arc::new(FlakyHealth { inner: queue.adapter(), healthy: healthy.clone() }))
                .ledger(Arc::new(MemoryLedger::new()))
                .agent("default", ScriptedAgent::new("default") as Arc<dyn AgentRuntime>)
                .build()
                .unwrap();
            let mut model = TriggerState::Created;
            for op in ops {
                let result = match op {
                    Op::Start => trigger.start().await.map(|_| ()),
                    Op::Pause => trigger.pause().await,
                    Op::Resume => trigger.resume().await,
                    Op::Stop => trigger.stop().await.map(|_| ()),
                    Op::BreakSource => { healthy.store(false, Ordering::SeqCst); Ok(()) }
                    Op::HealSource => { healthy.store(true, Ordering::SeqCst); Ok(()) }
                };
                let (next, ok) = match (op, model) {
                    (Op::BreakSource | Op::HealSource, s) => (s, true),
                    (Op::Start, TriggerState::Created) => (TriggerState::Running, true),
                    (Op::Start, s) => (s, false),
                    (Op::Pause, TriggerState::Running | TriggerState::Paused) => (TriggerState::Paused, true),
                    (Op::Pause, s) => (s, false),
                    (Op::Resume, TriggerState::Running | TriggerState::Paused) => (TriggerState::Running, true),
                    (Op::Resume, s) => (s, false),
                    (Op::Stop, _) => (TriggerState::Stopped, true),
                };
                prop_assert_eq!(result.is_ok(), ok, "{:?} from {:?}", op, model);
                model = next;
                prop_assert_eq!(trigger.state(), model);
                let h = trigger.health().await;
                prop_assert_eq!(h.ready, model == TriggerState::Running && healthy.load(Ordering::SeqCst), "{:?}", h);
                prop_assert!(h.live);
            }
            let _ = trigger.stop().await;
            Ok(())
        })?;
    }

    /// Graceful stop loses nothing (2.3): stopping at a random moment with a random drain
    /// timeout leaves every message either settled with a ledger record or back in the
    /// queue for redelivery; a second trigger then finishes the rest, and every message
    /// ends with a record.
    #[test]
    fn stop_loses_nothing(n in 1usize..40, stop_after_ms in 0u64..15, drain_ms in 0u64..20, concurrency in 1usize..6) {
        rt().block_on(async {
            let queue = MockQueue::new("q");
            queue.enqueue_all((0..n).map(|i| msg(&format!("m{i}"), &[], json!({"do": "sleep", "ms": 3}))));
            let ledger = Arc::new(MemoryLedger::new());
            let build = |ledger: Arc<MemoryLedger>| {
                let mut c = config();
                c.processing.concurrency = concurrency;
                c.processing.drain_timeout = Duration::from_millis(drain_ms);
                QueueTrigger::builder(c)
                    .adapter(Arc::new(queue.adapter()))
                    .ledger(ledger)
                    .agent("default", ScriptedAgent::new("default") as Arc<dyn AgentRuntime>)
                    .build()
                    .unwrap()
            };
            let first = build(ledger.clone());
            first.start().await.unwrap();
            tokio::time::sleep(Duration::from_millis(stop_after_ms)).await;
            first.stop().await.unwrap();
            // Nothing is out for delivery after a stop: settled, or back in the queue.
            let acked: BTreeSet<String> = queue.acked().into_iter().map(|s| s.message.message_id).collect();
            let recorded: BTreeSet<String> = ledger.records().into_iter().map(|r| r.message_id).collect();
            prop_assert!(acked.is_subset(&recorded), "an acked message has no ledger record");
            prop_assert_eq!(queue.pending() + acked.len(), n, "every message is settled or waiting");
            let second = build(ledger.clone());
            second.start().await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), queue.wait_idle()).await.expect("drains");
            second.stop().await.unwrap();
            let acked: BTreeSet<String> = queue.acked().into_iter().map(|s| s.message.message_id).collect();
            prop_assert_eq!(acked.len(), n);
            let recorded: BTreeSet<String> = ledger.records().into_iter().map(|r| r.message_id).collect();
            prop_assert_eq!(recorded.len(), n);
            Ok(())
        })?;
    }
}

/// A run that outlives the drain timeout is abandoned: its message is not acked and goes
/// back to the queue, and the stop reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_abandons_unfinished_runs_unacked() {
    let queue = MockQueue::new("q");
    queue.enqueue(msg("slow", &[], json!({"do": "sleep", "ms": 5000})));
    let mut c = config();
    c.processing.drain_timeout = Duration::from_millis(50);
    let t = QueueTrigger::builder(c)
        .adapter(Arc::new(queue.adapter()))
        .ledger(Arc::new(MemoryLedger::new()))
        .agent("default", ScriptedAgent::new("default") as Arc<dyn AgentRuntime>)
        .build()
        .unwrap();
    t.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = t.stop().await.unwrap();
    assert!(!report.drained);
    assert!(queue.acked().is_empty());
    assert_eq!(queue.pending(), 1, "the message is back in the queue");
    assert_eq!(queue.redeliveries(), 1);
}

/// A stop starts no new run: messages taken but waiting for an agent slot, or waiting out
/// a retry's backoff, are handed back to the broker at once with nothing recorded, and
/// only the run already going finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hands_back_what_has_not_started_and_lets_only_running_runs_finish() {
    let queue = MockQueue::new("q");
    queue.enqueue(msg("backing-off", &[], json!({"do": "fail", "class": "retryable"})));
    queue.enqueue(msg("running", &[], json!({"do": "sleep", "ms": 300})));
    queue.enqueue_all((0..4).map(|i| msg(&format!("waiting-{i}"), &[], json!({"do": "sleep", "ms": 300}))));
    let mut c = config();
    c.processing.concurrency = 1;
    c.processing.ordering = qt_core::config::Ordering::None;
    c.retry.max_retries = 5;
    c.retry.backoff.initial = Duration::from_secs(30);
    c.retry.backoff.max = Duration::from_secs(30);
    c.processing.drain_timeout = Duration::from_secs(10);
    let agent = ScriptedAgent::new("default");
    let ledger = Arc::new(MemoryLedger::new());
    let t = QueueTrigger::builder(c)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("default", agent.clone() as Arc<dyn AgentRuntime>)
        .build()
        .unwrap();
    t.start().await.unwrap();
    // "backing-off" fails at once and waits 30 s for its retry; "running" then holds the
    // one agent slot, and the rest wait for it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while agent.runs_of("backing-off") == 0 || agent.runs_of("running") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both reach the agent");
    let stopping = std::time::Instant::now();
    let report = t.stop().await.unwrap();
    assert!(report.drained);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop waited only for the running run, not for the queue behind it: {:?}",
        stopping.elapsed()
    );
    let calls: Vec<String> = agent.calls().into_iter().map(|c| c.message_id).collect();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("waiting-")).count(),
        0,
        "no run started after the stop: {calls:?}"
    );
    assert_eq!(agent.runs_of("backing-off"), 1, "its retry did not start");
    let recorded: Vec<String> = ledger.records().into_iter().map(|r| r.message_id).collect();
    assert_eq!(recorded, ["running"], "only the finished run is recorded");
    assert_eq!(queue.acked().len(), 1);
    assert_eq!(queue.pending(), 5, "everything else is back in the queue at once");
    assert!(queue.requeued().is_empty(), "handed back, not requeued with a delay");
}

/// Pausing stops intake; resuming picks up where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_intake_and_resume_continues() {
    let queue = MockQueue::new("q");
    let agent = ScriptedAgent::new("default");
    let t = QueueTrigger::builder(config())
        .adapter(Arc::new(queue.adapter()))
        .ledger(Arc::new(MemoryLedger::new()))
        .agent("default", agent.clone() as Arc<dyn AgentRuntime>)
        .build()
        .unwrap();
    t.start().await.unwrap();
    t.pause().await.unwrap();
    queue.enqueue(ok("while-paused"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(agent.calls().is_empty(), "nothing runs while paused");
    t.resume().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), queue.wait_idle())
        .await
        .unwrap();
    assert_eq!(agent.runs_of("while-paused"), 1);
    t.stop().await.unwrap();
}

/// A stop holds the lifecycle through its drain; a pause or resume asked meanwhile is
/// refused at once, naming the state, instead of waiting for the drain to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_during_a_stop_are_refused_at_once() {
    let queue = MockQueue::new("q");
    queue.enqueue(msg("slow", &[], json!({"do": "sleep", "ms": 2000})));
    let mut c = config();
    c.processing.drain_timeout = Duration::from_secs(10);
    let agent = ScriptedAgent::new("default");
    let t = QueueTrigger::builder(c)
        .adapter(Arc::new(queue.adapter()))
        .ledger(Arc::new(MemoryLedger::new()))
        .agent("default", agent.clone() as Arc<dyn AgentRuntime>)
        .build()
        .unwrap();
    t.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while agent.runs_of("slow") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slow run starts");
    let stopping = tokio::spawn({
        let t = t.clone();
        async move { t.stop().await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while t.state() != TriggerState::Stopping {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stop begins");
    let asked = std::time::Instant::now();
    let paused = t.pause().await.expect_err("no pause while stopping");
    let resumed = t.resume().await.expect_err("no resume while stopping");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(paused.to_string(), "cannot pause a trigger that is stopping");
    assert_eq!(resumed.to_string(), "cannot resume a trigger that is stopping");
    assert!(stopping.await.unwrap().unwrap().drained);
}

/// With `ordering: none`, intake receives on one lane per worker thread: the lanes take
/// every message exactly once between them, whether its batch finished at once on the
/// lane or had to wait in a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receive_lanes_take_every_message_once() {
    let queue = MockQueue::new("q");
    let n = 2_000;
    queue.enqueue_all((0..n).map(|i| {
        let body = if i % 7 == 0 {
            json!({"do": "sleep", "ms": 1})
        } else {
            json!({"do": "ok"})
        };
        msg(&format!("m{i}"), &[], body)
    }));
    let mut c = config();
    c.processing.batch_size = 8;
    c.processing.max_in_flight = Some(64);
    c.processing.concurrency = 16;
    let agent = ScriptedAgent::new("default");
    let ledger = Arc::new(MemoryLedger::new());
    let t = QueueTrigger::builder(c)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("default", agent.clone() as Arc<dyn AgentRuntime>)
        .build()
        .unwrap();
    t.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), queue.wait_idle())
        .await
        .expect("the queue drains");
    t.stop().await.unwrap();
    let acked: Vec<String> = queue.acked().into_iter().map(|s| s.message.message_id).collect();
    let distinct: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(acked.len(), n, "every message is acked once");
    assert_eq!(distinct.len(), n);
    assert_eq!(ledger.records().len(), n, "one record per message");
    assert!(
        (0..n).all(|i| agent.runs_of(&format!("m{i}")) == 1),
        "every message ran once"
    );
}
