//! The per-message pipeline.
//!
//! **Intake** (a receive loop per worker thread, see [`intake`]) receives a batch, bounded
//! by in-flight permits, and takes it as far as it goes without waiting; a batch that has
//! to wait goes on in a task of its own. The **batch** parses, extracts and routes each
//! message, claims the batch's idempotency keys in one call and links the messages into
//! their ordering chains; then each message **runs** (governance, the agent with retries;
//! agent slots bound how many run at once, and backoffs wait on timers without holding
//! one); and the batch **settles** what finished: completes or releases claims, writes the
//! ledger records, and only then settles each message on the broker.
//!
//! Every message carries an in-flight permit from intake until it is settled, which bounds
//! memory and makes "drained" mean "nothing taken and unsettled".

pub(crate) mod batch;
pub(crate) mod intake;
pub(crate) mod ledger_backoff;
pub(crate) mod order;
pub(crate) mod outcome;
pub(crate) mod quarantine;
pub(crate) mod run;
pub(crate) mod settler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use qt_core::config::Config;
use qt_core::parse::Parser;
use qt_core::{AgentRuntime, ClaimToken, Governance, IdempotencyStore, Ledger, MessageEnvelope, TraceId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::routing::Router;
use outcome::Outcome;

/// Everything the stages share, fixed at start.
pub(crate) struct Pipeline {
    pub config: Config,
    pub parser: Box<dyn Parser>,
    pub router: Router,
    /// Looked up once per message, so hashed with foldhash rather than SipHash.
    pub agents: HashMap<String, Arc<dyn AgentRuntime>, foldhash::fast::RandomState>,
    /// `None` when `idempotency.enabled: false`.
    pub store: Option<Arc<dyn IdempotencyStore>>,
    pub governance: Arc<dyn Governance>,
    pub ledger: Arc<dyn Ledger>,
    pub metrics: Arc<Metrics>,
    /// Agent slots: `processing.concurrency`.
    pub agent_slots: Semaphore,
    /// Per-key chains for `ordering: key` / `partition`.
    pub sequencer: parking_lot::Mutex<order::Sequencer>,
    /// Cancelled when a stop begins: from then on no agent run or retry starts, and each
    /// message not yet running is handed back to the broker at once.
    pub stopping: CancellationToken,
    /// Cancelled when a stop's drain timeout passes: runs still going are abandoned and
    /// their messages left for redelivery.
    pub abort: CancellationToken,
    pub adapter_kind: Arc<str>,
    /// Batches that panicked, remembered so their messages are not run together again.
    pub quarantine: quarantine::Quarantine,
    /// Pauses intake while ledger writes fail.
    pub ledger_backoff: ledger_backoff::LedgerBackoff,
    /// `None` when the trigger does not trace.
    pub spans: Option<crate::spans::Spans>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Who a message is: its envelope once parsed (shared, not copied), or what could be read
/// of it when it could not be parsed.
#[derive(Clone, Debug)]
pub(crate) enum Identity {
    Parsed(Arc<MessageEnvelope>),
    Unparsed(Box<Unparsed>),
}

/// What is known of a message that could not be parsed (boxed: it is rare, and every
/// message's metadata is moved from stage to stage).
#[derive(Clone, Debug)]
pub(crate) struct Unparsed {
    pub message_id: String,
    pub tenant_id: Option<String>,
    pub dedup_key: Option<String>,
    pub queue: Arc<str>,
    pub adapter: Arc<str>,
}

/// The strings a ledger record owns, moved out of the envelope rather than cloned
/// (ARCHITECTURE.md, hot-path rule 7).
pub(crate) struct OwnedIdentity {
    pub message_id: String,
    pub event_name: Option<String>,
    pub tenant_id: Option<String>,
    pub dedup_key: Option<String>,
    pub queue: Arc<str>,
    pub adapter: Arc<str>,
}

/// What every ledger record and log line needs to know about a message.
#[derive(Clone, Debug)]
pub(crate) struct MessageMeta {
    pub trace_id: TraceId,
    pub identity: Identity,
    /// The agent target; set for every message that was routed.
    pub target: Option<Arc<str>>,
    pub received_at: DateTime<Utc>,
    pub started: Instant,
    pub consume_latency: Option<Duration>,
    /// Delivery attempt (1 for a first delivery).
    pub attempt: u32,
    pub trace: crate::spans::MessageTrace,
}

impl MessageMeta {
    pub fn message_id(&self) -> &str {
        match &self.identity {
            Identity::Parsed(env) => &env.message_id,
            Identity::Unparsed(u) => &u.message_id,
        }
    }

    pub fn tenant_id(&self) -> Option<&str> {
        match &self.identity {
            Identity::Parsed(env) => env.tenant_id.as_deref(),
            Identity::Unparsed(u) => u.tenant_id.as_deref(),
        }
    }

    /// The event name (the queue's name when none was extracted); none before parsing.
    pub fn event_name(&self) -> Option<&str> {
        match &self.identity {
            Identity::Parsed(env) => Some(env.event_name.as_deref().unwrap_or(&env.source.queue)),
            Identity::Unparsed(_) => None,
        }
    }

    /// The topic or queue the message came from.
    pub fn queue(&self) -> &str {
        match &self.identity {
            Identity::Parsed(env) => &env.source.queue,
            Identity::Unparsed(u) => &u.queue,
        }
    }

    /// The identity strings, moved out of the envelope when nothing else holds it any
    /// more (the usual case once the run is over), copied otherwise.
    pub fn into_owned_identity(identity: Identity) -> OwnedIdentity {
        match identity {
            Identity::Unparsed(u) => {
                let Unparsed {
                    message_id,
                    tenant_id,
                    dedup_key,
                    queue,
                    adapter,
                } = *u;
                OwnedIdentity {
                    message_id,
                    event_name: None,
                    tenant_id,
                    dedup_key,
                    queue,
                    adapter,
                }
            }
            Identity::Parsed(env) => {
                let env = Arc::try_unwrap(env).unwrap_or_else(|shared| (*shared).clone());
                let event_name = env.event_name.unwrap_or_else(|| env.source.queue.to_string());
                OwnedIdentity {
                    message_id: env.message_id,
                    event_name: Some(event_name),
                    tenant_id: env.tenant_id,
                    dedup_key: env.dedup_key,
                    queue: env.source.queue,
                    adapter: env.source.adapter,
                }
            }
        }
    }
}

/// A message whose outcome is decided, on its way to the settler.
pub(crate) struct Finished {
    pub handle: qt_core::AckHandle,
    pub meta: MessageMeta,
    pub outcome: Outcome,
    pub claim: Option<ClaimToken>,
    pub permit: OwnedSemaphorePermit,
}
