//! One received batch, from raw deliveries to outcomes: parse and route every message,
//! claim the batch's idempotency keys in one call, link runnable messages into their
//! ordering chains, then run them side by side. Intake's lane takes a batch as far as it
//! goes at once; a batch that waits (for the store, for a run) goes on as a task of its
//! own while intake keeps receiving.

use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use qt_core::config::{OnStoreError, Ordering};
use qt_core::envelope::{EnvelopeError, build_envelope};
use qt_core::{AckHandle, Claim, Delivery, IdempotencyKey};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::{Instrument, debug, error, warn};

use super::order::{PassTurn, WaitTurn};
use super::outcome::Outcome;
use super::run::{Job, run};
use super::settler::Settler;
use super::{Finished, Identity, MessageMeta, Pipeline, Unparsed};
use crate::metrics::HistogramTally;
use crate::routing::BatchRoutes;
use crate::spans::{self, MessageTrace};

/// This batch's place in the order batches link their messages: it links after the batch
/// before it has linked, and lets the next one link by dropping `linked`.
pub(crate) struct LinkTurn {
    pub after: Option<oneshot::Receiver<()>>,
    pub linked: oneshot::Sender<()>,
}

pub(crate) async fn process(
    p: Arc<Pipeline>,
    deliveries: Vec<Delivery>,
    permits: Vec<OwnedSemaphorePermit>,
    link: LinkTurn,
) {
    let mut settler = Settler::default();
    let mut finished = Vec::new();
    // The jobs are made once and filled in place (hot-path rule 7).
    let mut jobs = prepare(&p, deliveries, permits, &mut finished);
    claim(&p, &mut jobs, &mut finished).await;
    link_in_order(&p, &mut jobs, link).await;
    // Each run is polled once as it is made; only the runs still waiting join the set
    // polled until done (hot-path rule 8). Per-key order holds either way: a run waiting
    // for its key's turn is one that waits.
    let mut waiting = FuturesUnordered::new();
    finished.reserve(jobs.len());
    // The agent slot passed from run to run while runs finish at once (see `run`). It is
    // held only within this loop, which never waits, and never given to a run that must
    // wait for its key's turn first.
    let mut spare = None;
    for job in jobs {
        // At debug, like the per-message log lines (hot-path rule 5).
        let span = tracing::debug_span!("message", trace_id = %job.meta.trace_id, message_id = %job.meta.message_id());
        let slot = if job.wait.is_none() { spare.take() } else { None };
        let mut running = Box::pin(run(&p, job, slot).instrument(span));
        match futures::poll!(running.as_mut()) {
            Poll::Ready((message, slot)) => {
                finished.push(message);
                spare = spare.or(slot);
            }
            Poll::Pending => waiting.push(running),
        }
    }
    drop(spare);
    settler.finish(&p, finished).await;
    // Runs still going and settlements still waiting for the broker go on side by side: a
    // dead letter's confirm is counted, and its place in the window given back, when it
    // comes, not after the batch's slowest run.
    loop {
        tokio::select! {
            Some((first, slot)) = waiting.next(), if !waiting.is_empty() => {
                // A run that waited gives its slot back as it ends, before its group is
                // settled.
                drop(slot);
                let mut together = vec![first];
                while let Some(Some((more, slot))) = waiting.next().now_or_never() {
                    drop(slot);
                    together.push(more);
                }
                settler.finish(&p, together).await;
            }
            Some(()) = settler.settle_next(&p), if settler.is_waiting() => {}
            else => break,
        }
    }
}

/// Dead-letters a message whose processing panicked when it ran alone before (see
/// [`super::quarantine`]), without running it again: recorded and settled like any other
/// outcome.
pub(crate) async fn dead_letter_poisoned(
    p: Arc<Pipeline>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
    panic: String,
) {
    let Delivery { message, handle } = delivery;
    error!(message_id = %message.message_id, queue = %message.source.queue, panic = %panic, "this message panicked when it ran alone; it is dead-lettered as a permanent failure instead of run again");
    let consume_latency = message.consume_latency();
    let received_at = message.received_at;
    // Parsed (a parse cannot panic here: it is caught) so that the record carries the
    // event, tenant and dedup key an operator looks it up by.
    let meta = match build_envelope(message, p.parser.as_ref(), &p.config.processing.extraction) {
        Ok(built) => MessageMeta {
            trace_id: built.envelope.trace_id,
            attempt: built.envelope.attempt,
            identity: Identity::Parsed(Arc::new(built.envelope)),
            target: None,
            received_at,
            started: Instant::now(),
            consume_latency,
            trace: MessageTrace::default(),
        },
        Err(unparseable) => {
            let qt_core::envelope::Unparseable { raw, trace_id, .. } = *unparseable;
            unparsed_meta(
                raw,
                trace_id,
                &p.config.processing.extraction,
                consume_latency,
                Instant::now(),
            )
        }
    };
    let outcome = Outcome::Panicked {
        stage: "processing an earlier delivery of it",
        message: panic,
    };
    let mut settler = Settler::default();
    let mut finished = Vec::with_capacity(1);
    cannot_run(&mut finished, handle, meta, outcome, permit);
    settler.finish(&p, finished).await;
    while settler.settle_next(&p).await.is_some() {}
}

/// What is known of a message that never became an envelope: what the extraction rules
/// find without its payload.
fn unparsed_meta(
    raw: qt_core::RawMessage,
    trace_id: qt_core::TraceId,
    rules: &qt_core::extract::ExtractionRules,
    consume_latency: Option<std::time::Duration>,
    started: Instant,
) -> MessageMeta {
    let received_at = raw.received_at;
    let attempt = raw.attempt();
    let (tenant_id, dedup_key) = rules.without_payload(&raw.headers, &raw.source);
    MessageMeta {
        trace_id,
        identity: Identity::Unparsed(Box::new(Unparsed {
            message_id: raw.message_id,
            tenant_id,
            dedup_key,
            queue: raw.source.queue,
            adapter: raw.source.adapter,
        })),
        target: None,
        received_at,
        started,
        consume_latency,
        attempt,
        trace: MessageTrace::default(),
    }
}

/// A message that cannot run, on its way to the settler with its outcome.
fn cannot_run(
    finished: &mut Vec<Finished>,
    handle: AckHandle,
    meta: MessageMeta,
    outcome: Outcome,
    permit: OwnedSemaphorePermit,
) {
    finished.push(Finished {
        handle,
        meta,
        outcome,
        claim: None,
        permit,
    });
}

/// Parses, extracts and routes; messages that cannot run go straight to `finished`.
fn prepare(
    p: &Pipeline,
    deliveries: Vec<Delivery>,
    permits: Vec<OwnedSemaphorePermit>,
    finished: &mut Vec<Finished>,
) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(deliveries.len());
    // The batch is prepared in one go: one clock reading serves every message of it.
    let started = Instant::now();
    let mut lags = HistogramTally::default();
    let mut routes = BatchRoutes::default();
    for (Delivery { message, handle }, permit) in deliveries.into_iter().zip(permits) {
        let consume_latency = message.consume_latency();
        if let Some(lag) = consume_latency {
            lags.observe(lag);
        }
        let received_at = message.received_at;
        match build_envelope(message, p.parser.as_ref(), &p.config.processing.extraction) {
            Err(unparseable) => {
                let qt_core::envelope::Unparseable { raw, trace_id, error } = *unparseable;
                let (trace, trace_id) = match &p.spans {
                    Some(spans) => spans.start_unparsed(&raw, trace_id),
                    None => (MessageTrace::default(), trace_id),
                };
                let mut meta = unparsed_meta(raw, trace_id, &p.config.processing.extraction, consume_latency, started);
                meta.trace = trace;
                let outcome = match error {
                    EnvelopeError::Panicked(message) => {
                        error!(trace_id = %meta.trace_id, message_id = %meta.message_id(), queue = %meta.queue(), panic = %message, "parsing the message panicked; it is dead-lettered as a permanent failure");
                        p.metrics.panicked();
                        Outcome::Panicked {
                            stage: "parsing",
                            message,
                        }
                    }
                    error => {
                        warn!(trace_id = %meta.trace_id, message_id = %meta.message_id(), queue = %meta.queue(), error = %error, "message cannot be parsed");
                        Outcome::ParseFailed(error)
                    }
                };
                cannot_run(finished, handle, meta, outcome, permit);
            }
            Ok(mut built) => {
                let trace = p.spans.as_ref().map_or(MessageTrace::default(), |spans| {
                    spans.start_message(&mut built.envelope)
                });
                let envelope = Arc::new(built.envelope);
                debug!(trace_id = %envelope.trace_id, message_id = %envelope.message_id, queue = %envelope.source.queue, "consumed and parsed");
                let event_name = envelope.event_name.as_deref().unwrap_or(&envelope.source.queue);
                let route = routes.route(&p.router, event_name);
                let (target, focus) = match route {
                    Some(r) => (Some(r.target), r.focus),
                    None => (None, None),
                };
                let routed = target.is_some();
                let meta = MessageMeta {
                    trace_id: envelope.trace_id,
                    identity: Identity::Parsed(envelope.clone()),
                    target,
                    received_at,
                    started,
                    consume_latency,
                    attempt: envelope.attempt,
                    trace,
                };
                if routed {
                    jobs.push(Job {
                        handle,
                        meta,
                        envelope,
                        selected_payload: built.agent_payload.map(Arc::new),
                        focus,
                        claim: None,
                        permit,
                        wait: WaitTurn::none(),
                        pass_turn: PassTurn::none(),
                    });
                } else {
                    warn!(trace_id = %meta.trace_id, message_id = %meta.message_id(), event = meta.event_name().unwrap_or(""), "no route for event");
                    drop(envelope);
                    cannot_run(finished, handle, meta, Outcome::Unrouted, permit);
                }
            }
        }
    }
    p.metrics.observe_consume_lag(&lags);
    jobs
}

/// Claims every key of the batch in one store call; duplicates and store failures are
/// settled by policy (taken out of `jobs`), the rest go on with their claim token.
async fn claim(p: &Pipeline, jobs: &mut Vec<Job>, finished: &mut Vec<Finished>) {
    let Some(store) = &p.store else {
        return;
    };
    if jobs.is_empty() {
        return;
    }
    let keys: Vec<IdempotencyKey> = jobs
        .iter()
        .map(|j| IdempotencyKey::new(j.envelope.tenant_id.as_deref(), j.envelope.idempotency_key()))
        .collect();
    let asked = keys.len();
    let step = p.spans.as_ref().and_then(|spans| {
        let traced: Vec<_> = jobs.iter().filter_map(|j| j.meta.trace.span_context()).collect();
        spans.start_batch_step("idempotency claim", &traced)
    });
    let claimed = store.claim_batch(keys, p.config.idempotency.lease).await;
    spans::end_batch_step(step, claimed.as_ref().err().map(ToString::to_string));
    match claimed {
        Ok(claims) if claims.len() == jobs.len() => {
            // Duplicates are rare: their outcomes wait here, in order, until they are
            // taken out of the batch in one pass.
            let mut duplicates = Vec::new();
            for (job, claim) in jobs.iter_mut().zip(claims) {
                match claim {
                    Claim::Acquired(token) => job.claim = Some(token),
                    Claim::Completed => {
                        debug!(trace_id = %job.meta.trace_id, message_id = %job.meta.message_id(), "duplicate: already processed");
                        duplicates.push(Outcome::Duplicate);
                    }
                    Claim::InFlight => {
                        debug!(trace_id = %job.meta.trace_id, message_id = %job.meta.message_id(), "duplicate: in flight elsewhere");
                        duplicates.push(Outcome::DuplicateInFlight);
                    }
                }
            }
            if !duplicates.is_empty() {
                let taken = jobs.extract_if(.., |j| j.claim.is_none());
                for (j, outcome) in taken.zip(duplicates) {
                    cannot_run(finished, j.handle, j.meta, outcome, j.permit);
                }
            }
        }
        other => {
            let reason = match other {
                Err(e) => e.to_string(),
                Ok(c) => format!("store answered {} claims for {asked} keys", c.len()),
            };
            p.metrics.idempotency_error(jobs.len() as u64);
            match p.config.idempotency.on_store_error {
                OnStoreError::FailOpen => {
                    warn!(error = %reason, messages = jobs.len(), "idempotency store failed; running without dedup (fail_open)");
                }
                OnStoreError::FailClosed => {
                    warn!(error = %reason, messages = jobs.len(), "idempotency store failed; requeueing (fail_closed)");
                    for j in jobs.drain(..) {
                        cannot_run(
                            finished,
                            j.handle,
                            j.meta,
                            Outcome::StoreUnavailable(reason.clone()),
                            j.permit,
                        );
                    }
                }
            }
        }
    }
}

/// Links the batch's messages into their keys' chains, after the previous batch did, so
/// chains follow arrival order across batches.
async fn link_in_order(p: &Pipeline, jobs: &mut [Job], link: LinkTurn) {
    let ordering = p.config.processing.ordering;
    if ordering != Ordering::None {
        if let Some(after) = link.after {
            // Err means the previous batch ended without linking (it had nothing to link,
            // or its task ended): either way its turn is over.
            let _ = after.await;
        }
        let mut sequencer = p.sequencer.lock();
        for job in jobs.iter_mut() {
            let env = &job.envelope;
            let order_key = match ordering {
                Ordering::None => None,
                Ordering::Key => env.ordering_key.clone(),
                Ordering::Partition => match env.source.partition {
                    Some(partition) => Some(format!("{}/{partition}", env.source.queue)),
                    None => env.source.key.clone(),
                },
            };
            if let Some(k) = order_key {
                (job.wait, job.pass_turn) = sequencer.link(k);
            }
        }
    }
    drop(link.linked);
}
