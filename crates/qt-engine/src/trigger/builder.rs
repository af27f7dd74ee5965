//! Assembling a trigger: the configuration checked against the components given, and the
//! built-in components made for what the configuration names and was not given.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use qt_core::config::{Config, ConfigErrors, LedgerConfig, StoreConfig, Validate, join};
use qt_core::parse::parser_for;
use qt_core::{AgentRuntime, Governance, IdempotencyStore, Ledger, QueueAdapter};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::{QueueTrigger, Shared, TriggerState};
use crate::builtin::jsonl_ledger::JsonlLedger;
use crate::builtin::memory_ledger::MemoryLedger;
use crate::builtin::memory_store::MemoryStore;
use crate::builtin::policy_governance::PolicyGovernance;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::routing::Router;

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
        let metrics = Arc::new(Metrics::new());
        let pipeline = Pipeline {
            parser: parser_for(
                c.processing.parser,
                c.processing.max_message_bytes,
                c.processing.extraction.reads_payload(),
            ),
            router: router.expect("checked above"),
            agents: self.agents.into_iter().collect(),
            store,
            governance: governance.expect("checked above"),
            ledger,
            metrics: metrics.clone(),
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
                crate::spans::Spans::new(trace, group, metrics)
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
}
