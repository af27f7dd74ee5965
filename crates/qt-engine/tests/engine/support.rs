//! Shared test scaffolding: a scripted agent and a run-to-idle harness.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_adapter_mock::MockQueue;
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, SourceConfig};
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, ErrorClass, LedgerRecord, RawMessage};
use qt_engine::builtin::memory_ledger::MemoryLedger;
use qt_engine::{MetricsSnapshot, QueueTrigger, TriggerBuilder};
use serde_json::{Value, json};

/// One call the agent received.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub struct Call {
    pub message_id: String,
    pub attempt: u32,
    pub event_name: String,
    pub target: String,
    pub focus: Option<String>,
    pub tenant_id: Option<String>,
    pub payload: Value,
    pub event: AgentEvent,
}

/// Behaves as the payload's `do` field says:
/// `ok` | `fail` (with `class` and `times`: fail the first `times` calls for the message,
/// counted across redeliveries) | `panic` |
/// `sleep` (`ms`, then ok).
#[derive(Debug, Default)]
pub struct ScriptedAgent {
    pub calls: Mutex<Vec<Call>>,
    running: AtomicUsize,
    pub max_running: AtomicUsize,
}

impl ScriptedAgent {
    /// `_target` only labels the agent at the call site.
    pub fn new(_target: &str) -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    pub fn runs_of(&self, message_id: &str) -> usize {
        self.calls.lock().iter().filter(|c| c.message_id == message_id).count()
    }
}

struct RunningGuard<'a>(&'a AtomicUsize);
impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl AgentRuntime for ScriptedAgent {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = RunningGuard(&self.running);
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let payload = event.payload_json().expect("a parsed payload builds its value tree");
        // Counted across deliveries, so "fail the first N calls" holds through requeues.
        let call_number = {
            let mut calls = self.calls.lock();
            let n = calls
                .iter()
                .filter(|c| c.message_id == event.envelope.message_id)
                .count() as u64
                + 1;
            calls.push(Call {
                message_id: event.envelope.message_id.clone(),
                attempt: event.attempt,
                event_name: event.event_name().to_owned(),
                target: event.target.to_string(),
                focus: event.focus().map(str::to_owned),
                tenant_id: event.tenant_id().map(str::to_owned),
                payload: payload.clone(),
                event: event.clone(),
            });
            n
        };
        let action = payload.get("do").and_then(Value::as_str).unwrap_or("ok");
        match action {
            "fail" => {
                let times = payload.get("times").and_then(Value::as_u64).unwrap_or(u64::MAX);
                if call_number <= times {
                    let class: ErrorClass = payload
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or("retryable")
                        .parse()
                        .expect("test payloads name a valid class");
                    return Err(AgentError::new(class, format!("scripted {class} failure")));
                }
            }
            "panic" => panic!("scripted panic"),
            "sleep" => {
                let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => {}
        }
        Ok(AgentRun {
            run_id: Some(format!("run-{}-{}", event.envelope.message_id, event.attempt)),
            llm_calls: 2,
            output: Some(serde_json::json!({"attempt": event.attempt})),
        })
    }
}

/// A configuration with fast timers, a mock source and one `default` target.
pub fn config() -> Config {
    let mut c = Config::with_source(SourceConfig::Mock(MockSourceConfig {
        queue: "q".into(),
        file: None,
        dlq_file: None,
    }));
    c.retry.backoff.initial = Duration::from_millis(1);
    c.retry.backoff.max = Duration::from_millis(4);
    c.retry.backoff.jitter = 0.0;
    c.processing.duplicate_in_flight_delay = Duration::from_millis(2);
    c.processing.requeue_delay = Duration::from_millis(2);
    c.processing.drain_timeout = Duration::from_secs(5);
    c.governance.defer_delay = Some(Duration::from_millis(2));
    c.ledger = LedgerConfig::Memory;
    c
}

/// A JSON message with headers.
#[allow(clippy::needless_pass_by_value)] // callers build the body inline with json!
pub fn msg(id: &str, headers: &[(&str, &str)], body: Value) -> RawMessage {
    RawMessage::new(
        id,
        serde_json::to_vec(&body).unwrap(),
        qt_core::SourceInfo::new("mock", "q"),
    )
    .with_headers(headers.iter().copied().collect())
}

pub fn ok(id: &str) -> RawMessage {
    msg(id, &[], json!({"do": "ok"}))
}

/// What a run produced.
#[allow(dead_code)]
pub struct Ran {
    pub queue: MockQueue,
    pub ledger: Arc<MemoryLedger>,
    pub metrics: MetricsSnapshot,
    pub trigger: QueueTrigger,
}

#[allow(dead_code)]
impl Ran {
    pub fn records(&self) -> Vec<LedgerRecord> {
        self.ledger.records()
    }

    /// The last record of each message (a deferred message has earlier ones too).
    pub fn final_records(&self) -> HashMap<String, LedgerRecord> {
        let mut out = HashMap::new();
        for r in self.records() {
            out.insert(r.message_id.clone(), r);
        }
        out
    }

    pub fn acked_ids(&self) -> Vec<String> {
        self.queue.acked().into_iter().map(|s| s.message.message_id).collect()
    }

    pub fn dlq_ids(&self) -> Vec<String> {
        self.queue
            .dead_lettered()
            .into_iter()
            .map(|d| d.message.message_id)
            .collect()
    }
}

/// Builds a trigger for `config` with `agents`, feeds `messages`, runs until the queue is
/// idle and stops it.
pub async fn run_to_idle(config: Config, agents: &[(&str, Arc<dyn AgentRuntime>)], messages: Vec<RawMessage>) -> Ran {
    run_to_idle_with(config, agents, messages, |b| b).await
}

/// [`run_to_idle`] with components of the test's own (a store, governance) given to the
/// builder by `customize`.
pub async fn run_to_idle_with(
    config: Config,
    agents: &[(&str, Arc<dyn AgentRuntime>)],
    messages: Vec<RawMessage>,
    customize: impl FnOnce(TriggerBuilder) -> TriggerBuilder,
) -> Ran {
    let queue = MockQueue::new("q");
    queue.enqueue_all(messages);
    let ledger = Arc::new(MemoryLedger::new());
    let mut builder = customize(
        QueueTrigger::builder(config)
            .adapter(Arc::new(queue.adapter()))
            .ledger(ledger.clone()),
    );
    for (name, agent) in agents {
        builder = builder.agent(*name, agent.clone());
    }
    let trigger = builder.build().expect("test configurations are valid");
    trigger.start().await.expect("starts");
    tokio::time::timeout(Duration::from_secs(20), queue.wait_idle())
        .await
        .expect("the queue drains within 20s");
    trigger.stop().await.expect("stops");
    let metrics = trigger.metrics();
    Ran {
        queue,
        ledger,
        metrics,
        trigger,
    }
}

/// A multi-threaded runtime for one proptest case.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
