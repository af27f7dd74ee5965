//! One message's run: wait for its turn (per-key order), take an agent slot, ask
//! governance, run the agent with retries. A backoff gives the slot back while it waits.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use qt_core::config::OnGovernanceError;
use qt_core::envelope::panic_message;
use qt_core::ledger::AttemptRecord;
use qt_core::{AgentError, AgentEvent, ClaimToken, Decision, GovernanceContext, MessageEnvelope};
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use tracing::{debug, error, info, warn};

use super::order::{PassTurn, WaitTurn};
use super::outcome::Outcome;
use super::{Finished, MessageMeta, Pipeline};
use crate::backoff::{RetryDecision, decide};
use crate::spans;

/// A message that passed parsing and routing. Made once per message; its claim and its
/// turn in its key's order are filled in before it runs.
pub(crate) struct Job {
    pub handle: qt_core::AckHandle,
    pub meta: MessageMeta,
    pub envelope: Arc<MessageEnvelope>,
    pub selected_payload: Option<Arc<serde_json::Value>>,
    pub focus: Option<Arc<str>>,
    pub claim: Option<ClaimToken>,
    pub permit: OwnedSemaphorePermit,
    pub wait: WaitTurn,
    pub pass_turn: PassTurn,
}

/// Runs one message to its outcome.
///
/// A future is made for every message, so it is kept small: this is not an `async fn`
/// (which would keep the whole job beside the parts taken from it for the future's whole
/// life), and the waits only some runs reach (for a slot, for a pending agent, for a
/// backoff) are boxed where they happen.
///
/// `slot` is an agent slot the caller already holds, for a message with no turn to wait
/// for. The run hands back the slot it held at the end, so a batch whose runs finish at
/// once passes one slot from run to run instead of taking and returning one per message
/// (each a write to the semaphore every worker shares).
pub(crate) fn run<'p>(
    p: &'p Pipeline,
    job: Job,
    slot: Option<SemaphorePermit<'p>>,
) -> impl Future<Output = (Finished, Option<SemaphorePermit<'p>>)> + Send + 'p {
    let Job {
        handle,
        meta,
        envelope,
        selected_payload,
        focus,
        claim,
        permit,
        wait,
        pass_turn,
    } = job;
    debug_assert!(
        slot.is_none() || wait.is_none(),
        "a run waiting for its turn holds no slot"
    );
    async move {
        wait.wait().await;
        // A panic in governance or in the pipeline's own steps (a bug) costs this message
        // only: it ends as `Panicked`, and the agent slot it held is given back as the
        // panic drops it.
        let deciding = AssertUnwindSafe(decide_outcome(p, &meta, envelope, selected_payload, focus, slot));
        let (outcome, slot) = match deciding.catch_unwind().await {
            Ok(decided) => decided,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                error!(trace_id = %meta.trace_id, message_id = %meta.message_id(), panic = %message, "running the message panicked; it is dead-lettered as a permanent failure");
                p.metrics.panicked();
                let outcome = Outcome::Panicked {
                    stage: "running",
                    message,
                };
                (outcome, None)
            }
        };
        // The next message of this ordering key may start once this run is over.
        drop(pass_turn);
        let finished = Finished {
            handle,
            meta,
            outcome,
            claim,
            permit,
        };
        (finished, slot)
    }
}

/// An agent slot, or `None` when a stop begins while waiting for one.
async fn slot(p: &Pipeline) -> Option<SemaphorePermit<'_>> {
    match p.agent_slots.try_acquire() {
        Ok(free) => Some(free),
        Err(_) => Box::pin(wait_for_slot(p)).await,
    }
}

async fn wait_for_slot(p: &Pipeline) -> Option<SemaphorePermit<'_>> {
    tokio::select! {
        biased;
        () = p.stopping.cancelled() => None,
        s = p.agent_slots.acquire() => Some(s.expect("the agent slot semaphore is never closed")),
    }
}

/// Waits out a backoff. Returns false when a stop begins: no retry starts after that.
async fn back_off(p: &Pipeline, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = p.stopping.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Waits for an agent call that did not finish at once. `None` when a stop abandons it.
async fn finish_call<F: Future + Unpin>(p: &Pipeline, call: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = p.abort.cancelled() => None,
        r = call => Some(r),
    }
}

/// The outcome, and the agent slot still held at the end (see [`run`]): governance's gate,
/// then the agent with retries.
async fn decide_outcome<'p>(
    p: &'p Pipeline,
    meta: &MessageMeta,
    envelope: Arc<MessageEnvelope>,
    selected_payload: Option<Arc<serde_json::Value>>,
    focus: Option<Arc<str>>,
    given: Option<SemaphorePermit<'p>>,
) -> (Outcome, Option<SemaphorePermit<'p>>) {
    let target = meta.target.as_ref().expect("a job is made only for a routed message");
    let slot_held = match given {
        Some(held) => held,
        None => match slot(p).await {
            Some(taken) => taken,
            None => return (Outcome::HandedBack, None),
        },
    };
    if p.stopping.is_cancelled() {
        return (Outcome::HandedBack, Some(slot_held));
    }
    let gctx = GovernanceContext {
        tenant_id: meta.tenant_id(),
        event_name: meta.event_name().unwrap_or_default(),
        message_id: meta.message_id(),
        queue: meta.queue(),
        adapter: &p.adapter_kind,
        target,
    };
    let owes_finished = match governance_gate(p, meta, &gctx).await {
        Gate::Run { owes_finished } => owes_finished,
        Gate::Stop(outcome) => return (outcome, Some(slot_held)),
    };
    let event = AgentEvent {
        target: target.clone(),
        focus,
        attempt: 1,
        envelope,
        selected_payload,
        trace: None,
    };
    let (outcome, slot_held) = run_with_retries(p, meta, event, slot_held).await;
    if owes_finished {
        p.governance.finished(&gctx);
    }
    (outcome, slot_held)
}

/// Governance's answer for one message.
enum Gate {
    /// Run the agent; afterwards tell governance the run `finished` if it allowed it
    /// (a fail-open run was not counted by governance, so nothing is owed).
    Run { owes_finished: bool },
    /// The message ends here, with this outcome.
    Stop(Outcome),
}

/// Asks governance whether the message may run now, applying `governance.on_error` when it
/// cannot answer.
async fn governance_gate(p: &Pipeline, meta: &MessageMeta, gctx: &GovernanceContext<'_>) -> Gate {
    let span = p.spans.as_ref().and_then(|s| s.start_governance(&meta.trace));
    let decision = match p.governance.check_now(gctx) {
        Some(decided) => decided,
        None => p.governance.check(gctx).await,
    };
    spans::end_governance(span, &decision);
    match decision {
        Ok(Decision::Allow) => Gate::Run { owes_finished: true },
        Ok(Decision::Deny { reason, policies }) => {
            info!(trace_id = %meta.trace_id, message_id = %meta.message_id(), tenant = ?meta.tenant_id(), %reason, ?policies, "governance denied");
            Gate::Stop(Outcome::Rejected { reason, policies })
        }
        Ok(Decision::Defer {
            retry_after,
            reason,
            policies,
        }) => {
            debug!(trace_id = %meta.trace_id, message_id = %meta.message_id(), %reason, ?retry_after, "governance deferred");
            Gate::Stop(Outcome::Deferred {
                retry_after,
                reason,
                policies,
            })
        }
        Err(e) => match p.config.governance.on_error {
            OnGovernanceError::FailClosed => {
                warn!(trace_id = %meta.trace_id, message_id = %meta.message_id(), error = %e, "governance unavailable; deferring (fail_closed)");
                Gate::Stop(Outcome::Deferred {
                    retry_after: p.config.governance.effective_defer_delay(),
                    reason: e.to_string(),
                    policies: Vec::new(),
                })
            }
            OnGovernanceError::FailOpen => {
                warn!(trace_id = %meta.trace_id, message_id = %meta.message_id(), error = %e, "governance unavailable; running anyway (fail_open)");
                Gate::Run { owes_finished: false }
            }
        },
    }
}

/// Runs the agent until it succeeds, the retry law gives up, or a stop intervenes. Starts
/// holding `slot_held`; a backoff gives the slot back while it waits and takes one again
/// before the next attempt. Returns the slot held at the end.
async fn run_with_retries<'p>(
    p: &'p Pipeline,
    meta: &MessageMeta,
    mut event: AgentEvent,
    slot_held: SemaphorePermit<'p>,
) -> (Outcome, Option<SemaphorePermit<'p>>) {
    let target = meta.target.as_ref().expect("a job is made only for a routed message");
    let agent = p
        .agents
        .get(&**target)
        .expect("the builder checked that every routed target has an agent");
    // Read only for a run that waits: one that finishes on its first poll took no time
    // worth a clock reading, and most do.
    let mut first_attempt_at: Option<Instant> = None;
    let mut history: Vec<AttemptRecord> = Vec::new();
    let mut slot_held = Some(slot_held);
    let outcome = loop {
        if slot_held.is_none() {
            match slot(p).await {
                Some(s) => slot_held = Some(s),
                None => break Outcome::HandedBack,
            }
        }
        if p.stopping.is_cancelled() {
            break Outcome::HandedBack;
        }
        p.metrics.agent_attempt();
        let attempt_span = match &p.spans {
            Some(spans) => {
                let (span, trace) = spans.start_attempt(&meta.trace, target, event.attempt);
                event.trace = trace;
                span
            }
            None => None,
        };
        // Only a run that does not finish at once needs to watch for an abandoning stop,
        // and only such a run is ever seen running (the gauge is not touched for the
        // others, which would cost two shared atomics per message for nothing).
        let mut call = AssertUnwindSafe(agent.trigger_event(&event)).catch_unwind();
        let result = match futures::poll!(&mut call) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => {
                first_attempt_at.get_or_insert_with(Instant::now);
                p.metrics.agent_running(1);
                let r = Box::pin(finish_call(p, &mut call)).await;
                p.metrics.agent_running(-1);
                r
            }
        };
        drop(call);
        let error = match result {
            None => {
                spans::end_attempt(attempt_span, None, None);
                break Outcome::Abandoned;
            }
            Some(Ok(Ok(run))) => {
                spans::end_attempt(attempt_span, None, None);
                debug!(trace_id = %meta.trace_id, message_id = %meta.message_id(), attempt = event.attempt, run_id = ?run.run_id, "agent run succeeded");
                break Outcome::Succeeded {
                    run,
                    attempts: event.attempt,
                    history,
                };
            }
            Some(Ok(Err(e))) => e,
            Some(Err(panic)) => AgentError::permanent(format!("agent panicked: {}", panic_message(panic.as_ref()))),
        };
        let decision = decide(
            &p.config.retry,
            error.class,
            event.attempt,
            first_attempt_at.get_or_insert_with(Instant::now).elapsed(),
            error.retry_after,
            rand::random::<f64>(),
        );
        let backoff = match decision {
            RetryDecision::RetryAfter(d) => Some(d),
            RetryDecision::GiveUp(_) => None,
        };
        spans::end_attempt(attempt_span, Some(&error), backoff);
        warn!(
            trace_id = %meta.trace_id,
            message_id = %meta.message_id(),
            attempt = event.attempt,
            class = %error.class,
            reason = %error.message,
            next_retry_in = ?backoff,
            "agent attempt failed"
        );
        history.push(AttemptRecord {
            attempt: event.attempt,
            class: error.class,
            reason: error.message.clone(),
            at: Utc::now(),
            backoff_ms: backoff.map(|d| d.as_millis() as u64),
        });
        match decision {
            RetryDecision::RetryAfter(delay) => {
                p.metrics.retry(error.class);
                // Waiting out a backoff does not occupy an agent slot.
                slot_held = None;
                if !Box::pin(back_off(p, delay)).await {
                    break Outcome::HandedBack;
                }
                event.attempt += 1;
            }
            RetryDecision::GiveUp(give_up) => {
                let first_failure = history.first().map_or_else(Utc::now, |h| h.at);
                break Outcome::Failed {
                    error,
                    give_up,
                    attempts: event.attempt,
                    history,
                    first_failure,
                };
            }
        }
    };
    (outcome, slot_held)
}
