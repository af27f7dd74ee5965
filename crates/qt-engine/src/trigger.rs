//! `QueueTrigger`: a configured pipeline with a lifecycle (requirement 2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qt_core::config::{Config, ConfigErrors, LedgerConfig, StoreConfig, Validate, join};
use qt_core::parse::parser_for;
use qt_core::{AgentRuntime, Governance, Health, IdempotencyStore, Ledger, QueueAdapter};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::builtin::jsonl_ledger::JsonlLedger;
use crate::builtin::memory_ledger::MemoryLedger;
use crate::builtin::memory_store::MemoryStore;
use crate::builtin::policy_governance::PolicyGovernance;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pipeline::{Pipeline, intake::Intake};
use crate::routing::Router;

/// Where a trigger is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    Created,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl TriggerState {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerState::Created => "created",
            TriggerState::Starting => "starting",
            TriggerState::Running => "running",
            TriggerState::Paused => "paused",
            TriggerState::Stopping => "stopping",
            TriggerState::Stopped => "stopped",
            TriggerState::Failed => "failed",
        }
    }
}

/// Why a trigger could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("no queue adapter given: call TriggerBuilder::adapter")]
    NoAdapter,
    #[error("idempotency.store is {0}: build the store and pass it with TriggerBuilder::idempotency_store")]
    StoreNotGiven(&'static str),
    #[error("ledger.type is {0}: build the ledger and pass it with TriggerBuilder::ledger")]
    LedgerNotGiven(&'static str),
    #[error("cannot open the ledger: {0}")]
    Ledger(#[from] qt_core::LedgerError),
}

/// Why a lifecycle call failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot {action} a trigger that is {state}")]
    InvalidTransition { action: &'static str, state: &'static str },
    #[error("cannot start: {0}")]
    Start(String),
    #[error("the source refused to {action}: {reason}")]
    Adapter { action: &'static str, reason: String },
}

/// Assembles a trigger from a configuration and its components.
pub struct TriggerBuilder {
    config: Config,
    adapter: Option<Arc<dyn QueueAdapter>>,
    agents: HashMap<String, Arc<dyn AgentRuntime>>,
    store: Option<Arc<dyn IdempotencyStore>>,
    governance: Option<Arc<dyn Governance>>,
    ledger: Option<Arc<dyn Ledger>>,
    trace: Option<crate::TraceSettings>,
}

impl std::fmt::Debug for TriggerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerBuilder")
            .field("name", &self.config.name)
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TriggerBuilder {
    pub fn adapter(mut self, adapter: Arc<dyn QueueAdapter>) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// Registers the agent for a target name used in `agent.routes` / `default_target`.
    pub fn agent(mut self, target: impl Into<String>, agent: Arc<dyn AgentRuntime>) -> Self {
        self.agents.insert(target.into(), agent);
        self
    }

    /// Overrides the store built from `idempotency.store` (required for stores outside
    /// this crate, such as Redis).
    pub fn idempotency_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Overrides the policy governance built from `governance`.
    pub fn governance(mut self, governance: Arc<dyn Governance>) -> Self {
        self.governance = Some(governance);
        self
    }

    /// Overrides the ledger built from `ledger`.
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Traces every message with this tracer (see the crate's `spans` module): a consumer span
    /// per message and children for governance and each agent attempt.
    pub fn tracer(mut self, trace: crate::TraceSettings) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Validates everything and assembles the trigger; reports every problem at once.
    pub fn build(self) -> Result<QueueTrigger, BuildError> {
        let c = self.config;
        let mut problems = ConfigErrors::default();
        c.processing.validate("processing", &mut problems);
        c.retry.validate("retry", &mut problems);
        c.idempotency.validate("idempotency", &mut problems);
        c.governance.validate("governance", &mut problems);
        c.ledger.validate("ledger", &mut problems);
        if self.agents.is_empty() {
            problems.push("agent.targets", "no agent registered: call TriggerBuilder::agent");
        }
        for (i, route) in c.agent.routes.iter().enumerate() {
            if !self.agents.contains_key(&route.target) {
                problems.push(
                    join(&format!("agent.routes[{i}]"), "target"),
                    format!("no agent registered for target {:?}", route.target),
                );
            }
        }
        let default_target = match &c.agent.default_target {
            Some(t) => {
                if !self.agents.contains_key(t) {
                    problems.push("agent.default_target", format!("no agent registered for target {t:?}"));
                }
                Some(t.clone())
            }
            None if c.agent.routes.is_empty() && self.agents.len() == 1 => self.agents.keys().next().cloned(),
            None => None,
        };
        let router = Router::new(&c.agent, default_target.as_deref());
        let governance = match self.governance {
            Some(g) => Some(g),
            None => match PolicyGovernance::new(&c.governance) {
                Ok(g) => Some(Arc::new(g) as Arc<dyn Governance>),
                Err(e) => {
                    problems.push("governance", format!("invalid glob: {e}"));
                    None
                }
            },
        };
        let router = match router {
            Ok(r) => Some(r),
            Err(e) => {
                problems.push("agent.routes", format!("invalid glob: {e}"));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems.into());
        }
        let adapter = self.adapter.ok_or(BuildError::NoAdapter)?;
        let store: Option<Arc<dyn IdempotencyStore>> = if !c.idempotency.enabled {
            None
        } else {
            match (self.store, &c.idempotency.store) {
                (Some(s), _) => Some(s),
                (None, StoreConfig::Memory(memory)) => Some(Arc::new(MemoryStore::with_capacity(memory.capacity))),
                (None, StoreConfig::Redis(_)) => return Err(BuildError::StoreNotGiven("redis")),
            }
        };
        let ledger: Arc<dyn Ledger> = match (self.ledger, &c.ledger) {
            (Some(l), _) => l,
            (None, LedgerConfig::Memory) => Arc::new(MemoryLedger::new()),
            (None, LedgerConfig::Jsonl(j)) => Arc::new(JsonlLedger::open(&j.path, j.fsync)?),
            (None, LedgerConfig::Postgres(_)) => return Err(BuildError::LedgerNotGiven("postgres")),
        };
        let max_in_flight = c.processing.effective_max_in_flight();
        let pipeline = Pipeline {
            parser: parser_for(c.processing.parser, c.processing.max_message_bytes),
            router: router.expect("checked above"),
            agents: self.agents.into_iter().collect(),
            store,
            governance: governance.expect("checked above"),
            ledger,
            metrics: Arc::new(Metrics::new()),
            agent_slots: Semaphore::new(c.processing.concurrency),
            sequencer: parking_lot::Mutex::new(crate::pipeline::order::Sequencer::new(max_in_flight)),
            stopping: CancellationToken::new(),
            abort: CancellationToken::new(),
            quarantine: Default::default(),
            ledger_backoff: Default::default(),
            spans: self.trace.map(|trace| {
                let group = match &c.source {
                    qt_core::config::SourceConfig::Kafka(k) => Some(k.consumer_group.as_str()),
                    _ => None,
                };
                crate::spans::Spans::new(trace, group)
            }),
            adapter_kind: Arc::from(adapter.kind()),
            config: c,
        };
        let (state, _) = watch::channel(TriggerState::Created);
        Ok(QueueTrigger {
            shared: Arc::new(Shared {
                pipeline: Arc::new(pipeline),
                adapter,
                state,
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                source_error: Arc::new(Mutex::new(None)),
                started_at: Mutex::new(None),
                running: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

struct Running {
    stop_intake: CancellationToken,
    intake: JoinHandle<&'static str>,
    /// The batch tasks, which settle their own messages: a stop waits for them (the drain).
    batches: TaskTracker,
    backlog_poller: JoinHandle<()>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    adapter: Arc<dyn QueueAdapter>,
    state: watch::Sender<TriggerState>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    source_error: Arc<Mutex<Option<String>>>,
    started_at: Mutex<Option<Instant>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

/// What a stop did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StopReport {
    /// Every in-flight message finished within the drain timeout.
    pub drained: bool,
    /// How long the drain took.
    pub drain_ms: u64,
}

/// A component's health, named.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentHealth {
    pub component: String,
    pub health: Health,
}

/// Liveness and readiness with the reasons behind them.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub state: TriggerState,
    /// The process is doing its job or trying to (not failed, intake alive while running).
    pub live: bool,
    /// Connected, running, not paused, every component able to work.
    pub ready: bool,
    pub components: Vec<ComponentHealth>,
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub state: TriggerState,
    pub adapter: String,
    pub queue: String,
    pub concurrency: usize,
    pub max_in_flight: usize,
    pub uptime_seconds: f64,
    pub metrics: MetricsSnapshot,
}

/// A running (or runnable) queue trigger.
#[derive(Clone)]
pub struct QueueTrigger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QueueTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueTrigger")
            .field("name", &self.shared.pipeline.config.name)
            .field("state", &self.state())
            .finish()
    }
}

impl QueueTrigger {
    pub fn builder(config: Config) -> TriggerBuilder {
        TriggerBuilder {
            config,
            adapter: None,
            agents: HashMap::new(),
            store: None,
            governance: None,
            ledger: None,
            trace: None,
        }
    }

    pub fn state(&self) -> TriggerState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn subscribe_state(&self) -> watch::Receiver<TriggerState> {
        self.shared.state.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.shared.pipeline.config
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.pipeline.metrics.snapshot()
    }

    pub fn adapter(&self) -> &Arc<dyn QueueAdapter> {
        &self.shared.adapter
    }

    /// Connects the source and starts consuming.
    pub async fn start(&self) -> Result<(), LifecycleError> {
        let mut running = self.shared.running.lock().await;
        let state = self.state();
        if state != TriggerState::Created {
            return Err(LifecycleError::InvalidTransition {
                action: "start",
                state: state.as_str(),
            });
        }
        self.shared.state.send_replace(TriggerState::Starting);
        let s = &self.shared;
        let p = &s.pipeline;
        if let Err(e) = self.check_capabilities() {
            s.state.send_replace(TriggerState::Failed);
            return Err(LifecycleError::Start(e));
        }
        if let Err(e) = s.adapter.connect().await {
            s.state.send_replace(TriggerState::Failed);
            return Err(LifecycleError::Start(format!(
                "{} source {}: {e}",
                s.adapter.kind(),
                s.adapter.queue()
            )));
        }
        let batches = TaskTracker::new();
        let stop_intake = CancellationToken::new();
        let intake = Intake {
            pipeline: p.clone(),
            adapter: s.adapter.clone(),
            in_flight: s.in_flight.clone(),
            max_in_flight: s.max_in_flight,
            batches: batches.clone(),
            stop: stop_intake.clone(),
            state: s.state.subscribe(),
            source_error: s.source_error.clone(),
        };
        let intake = tokio::spawn(intake.run());
        let backlog_poller = tokio::spawn(poll_backlog(s.adapter.clone(), p.metrics.clone()));
        *s.started_at.lock() = Some(Instant::now());
        s.state.send_replace(TriggerState::Running);
        info!(
            name = %p.config.name,
            adapter = s.adapter.kind(),
            queue = s.adapter.queue(),
            concurrency = p.config.processing.concurrency,
            max_in_flight = s.max_in_flight,
            "trigger started"
        );
        *running = Some(Running {
            stop_intake,
            intake,
            batches,
            backlog_poller,
        });
        Ok(())
    }

    /// Settlement policies that the adapter cannot carry out are refused at start, not
    /// discovered on the first failing message.
    fn check_capabilities(&self) -> Result<(), String> {
        let caps = self.shared.adapter.capabilities();
        // The same list configuration validation checks against the source's settings.
        let needs_dlq = self.shared.pipeline.config.processing.dead_letter_requests();
        if !caps.dead_letter && !needs_dlq.is_empty() {
            return Err(format!(
                "{} {} dead-lettering, but this {} source has no dead-letter destination configured; configure one or choose another action",
                needs_dlq.join(", "),
                if needs_dlq.len() == 1 { "asks for" } else { "ask for" },
                self.shared.adapter.kind()
            ));
        }
        Ok(())
    }

    /// Stops taking new messages; in-flight ones finish. The broker keeps the connection.
    pub async fn pause(&self) -> Result<(), LifecycleError> {
        let _guard = self.shared.running.lock().await;
        match self.state() {
            TriggerState::Running => {}
            TriggerState::Paused => return Ok(()),
            other => {
                return Err(LifecycleError::InvalidTransition {
                    action: "pause",
                    state: other.as_str(),
                });
            }
        }
        self.shared.state.send_replace(TriggerState::Paused);
        self.shared.adapter.pause().await.map_err(|e| LifecycleError::Adapter {
            action: "pause",
            reason: e.to_string(),
        })?;
        info!(name = %self.config().name, "trigger paused");
        Ok(())
    }

    pub async fn resume(&self) -> Result<(), LifecycleError> {
        let _guard = self.shared.running.lock().await;
        match self.state() {
            TriggerState::Paused => {}
            TriggerState::Running => return Ok(()),
            other => {
                return Err(LifecycleError::InvalidTransition {
                    action: "resume",
                    state: other.as_str(),
                });
            }
        }
        self.shared
            .adapter
            .resume()
            .await
            .map_err(|e| LifecycleError::Adapter {
                action: "resume",
                reason: e.to_string(),
            })?;
        self.shared.state.send_replace(TriggerState::Running);
        info!(name = %self.config().name, "trigger resumed");
        Ok(())
    }

    /// Graceful stop: stop intake; start no agent run or retry; hand every message taken but
    /// not running back to the broker at once (its claim released, nothing recorded); let
    /// runs in progress finish up to the drain timeout, settle what finished, flush the
    /// ledger, close the source. Runs still going after the timeout are abandoned
    /// unacknowledged, so the broker redelivers them.
    pub async fn stop(&self) -> Result<StopReport, LifecycleError> {
        let mut guard = self.shared.running.lock().await;
        let Some(running) = guard.take() else {
            let state = self.state();
            if matches!(state, TriggerState::Stopped) {
                return Ok(StopReport {
                    drained: true,
                    drain_ms: 0,
                });
            }
            if matches!(state, TriggerState::Created | TriggerState::Failed) {
                self.shared.state.send_replace(TriggerState::Stopped);
                return Ok(StopReport {
                    drained: true,
                    drain_ms: 0,
                });
            }
            return Err(LifecycleError::InvalidTransition {
                action: "stop",
                state: state.as_str(),
            });
        };
        let s = &self.shared;
        let p = &s.pipeline;
        s.state.send_replace(TriggerState::Stopping);
        let started = Instant::now();
        running.stop_intake.cancel();
        p.stopping.cancel();
        let _ = running.intake.await;
        running.backlog_poller.abort();
        running.batches.close();
        let drain = p.config.processing.drain_timeout;
        let drained = tokio::time::timeout(drain, running.batches.wait()).await.is_ok();
        if !drained {
            warn!(
                timeout = ?drain,
                running = p.metrics.snapshot().running,
                "drain timeout passed; abandoning runs still in progress (their messages will be redelivered)"
            );
            p.abort.cancel();
            running.batches.wait().await;
        }
        if let Err(e) = p.ledger.flush().await {
            warn!(error = %e, "ledger flush at stop failed");
        }
        if let Err(e) = s.adapter.close().await {
            warn!(error = %e, "closing the source failed");
        }
        s.state.send_replace(TriggerState::Stopped);
        let report = StopReport {
            drained,
            drain_ms: started.elapsed().as_millis() as u64,
        };
        info!(name = %p.config.name, drained, drain_ms = report.drain_ms, "trigger stopped");
        Ok(report)
    }

    /// Waits until intake ends on its own (the source closed) or the trigger is stopped.
    pub async fn wait_source_closed(&self) {
        let mut rx = self.subscribe_state();
        loop {
            if matches!(*rx.borrow_and_update(), TriggerState::Stopped | TriggerState::Failed) {
                return;
            }
            let finished = {
                let guard = self.shared.running.lock().await;
                guard.as_ref().is_none_or(|r| r.intake.is_finished())
            };
            if finished {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    pub async fn health(&self) -> HealthReport {
        let s = &self.shared;
        let p = &s.pipeline;
        let state = self.state();
        let receive_error = s.source_error.lock().clone();
        let source_health = match receive_error {
            Some(e) => Health::Unhealthy(format!("receive failing: {e}")),
            None => s.adapter.health().await,
        };
        let mut components = vec![ComponentHealth {
            component: format!("source:{}", s.adapter.kind()),
            health: source_health,
        }];
        if let Some(store) = &p.store {
            let mut h = store.health().await;
            if matches!(
                p.config.idempotency.on_store_error,
                qt_core::config::OnStoreError::FailOpen
            ) && let Health::Unhealthy(reason) = h
            {
                // fail_open keeps processing without dedup: degraded, not down.
                h = Health::Degraded(format!("running without dedup: {reason}"));
            }
            components.push(ComponentHealth {
                component: "idempotency".to_owned(),
                health: h,
            });
        }
        components.push(ComponentHealth {
            component: "ledger".to_owned(),
            health: p.ledger.health().await,
        });
        components.push(ComponentHealth {
            component: "governance".to_owned(),
            health: p.governance.health().await,
        });
        let intake_alive = {
            let guard = s.running.lock().await;
            guard.as_ref().is_some_and(|r| !r.intake.is_finished())
        };
        let live = match state {
            TriggerState::Failed => false,
            TriggerState::Running | TriggerState::Paused => intake_alive,
            _ => true,
        };
        let ready = state == TriggerState::Running && live && components.iter().all(|c| c.health.is_ready());
        HealthReport {
            state,
            live,
            ready,
            components,
        }
    }

    pub fn status(&self) -> Status {
        let s = &self.shared;
        let p = &s.pipeline;
        Status {
            name: p.config.name.clone(),
            state: self.state(),
            adapter: s.adapter.kind().to_owned(),
            queue: s.adapter.queue().to_owned(),
            concurrency: p.config.processing.concurrency,
            max_in_flight: s.max_in_flight,
            uptime_seconds: s.started_at.lock().map_or(0.0, |t| t.elapsed().as_secs_f64()),
            metrics: p.metrics.snapshot(),
        }
    }
}

/// How often the broker backlog is read into `qt_backlog_messages`.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

async fn poll_backlog(adapter: Arc<dyn QueueAdapter>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(BACKLOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match adapter.backlog().await {
            Ok(b) => metrics.set_backlog(b),
            Err(e) => {
                metrics.set_backlog(None);
                tracing::debug!(error = %e, "backlog unavailable");
            }
        }
    }
}
