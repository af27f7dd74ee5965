//! Stage 1: take deliveries from the adapter, turn them into envelopes, claim their keys in
//! one batch, and hand runnable messages to workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qt_core::config::{OnStoreError, Ordering};
use qt_core::envelope::{Built, build_envelope};
use qt_core::{Claim, Delivery, IdempotencyKey, QueueAdapter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use super::outcome::Outcome;
use super::worker::{self, Job};
use super::{Finished, FinishedTx, MessageMeta, Pipeline};
use crate::sequencer::{Sequencer, TurnDone, WaitTurn};
use crate::trigger::TriggerState;

/// Bounds how long intake waits on a failing source before trying again.
const RECEIVE_RETRY_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Intake {
    pub pipeline: Arc<Pipeline>,
    pub adapter: Arc<dyn QueueAdapter>,
    pub in_flight: Arc<Semaphore>,
    pub finished: FinishedTx,
    pub workers: TaskTracker,
    pub stop: CancellationToken,
    pub state: watch::Receiver<TriggerState>,
    pub source_error: Arc<parking_lot::Mutex<Option<String>>>,
}

/// A message that passed parsing and routing, waiting for its claim.
struct Runnable {
    handle: qt_core::AckHandle,
    meta: MessageMeta,
    built: Built,
    target: Arc<str>,
    focus: Option<Arc<str>>,
    permit: OwnedSemaphorePermit,
}

impl Intake {
    /// Runs until stopped or the source closes. Returns why it ended.
    pub async fn run(mut self) -> &'static str {
        let mut sequencer = Sequencer::new(self.pipeline.config.processing.effective_max_in_flight());
        let batch_size = self.pipeline.config.processing.batch_size;
        let mut receive_backoff = Duration::from_millis(100);
        loop {
            if !self.wait_until_running().await {
                return "stopped";
            }
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => return "stopped",
                p = self.in_flight.clone().acquire_owned() => p.expect("the in-flight semaphore is never closed"),
            };
            let mut permit = permit;
            let extra = self.in_flight.available_permits().min(batch_size - 1);
            if extra > 0
                && let Ok(more) = self.in_flight.clone().try_acquire_many_owned(extra as u32) {
                    permit.merge(more);
                }
            let want = permit.num_permits();
            let received = tokio::select! {
                biased;
                () = self.stop.cancelled() => return "stopped",
                _ = self.state.changed() => continue,
                r = self.adapter.receive(want) => r,
            };
            let deliveries = match received {
                Ok(d) if d.is_empty() => return "source closed",
                Ok(d) => {
                    receive_backoff = Duration::from_millis(100);
                    *self.source_error.lock() = None;
                    d
                }
                Err(e) => {
                    warn!(queue = self.adapter.queue(), error = %e, retry_in = ?receive_backoff, "receive failed");
                    *self.source_error.lock() = Some(e.to_string());
                    tokio::select! {
                        () = self.stop.cancelled() => return "stopped",
                        () = tokio::time::sleep(receive_backoff) => {}
                    }
                    receive_backoff = (receive_backoff * 2).min(RECEIVE_RETRY_MAX);
                    continue;
                }
            };
            self.pipeline.metrics.received(deliveries.len() as u64);
            let mut permits = Vec::with_capacity(deliveries.len());
            for _ in 1..deliveries.len() {
                permits.push(permit.split(1).expect("one permit per delivery was acquired"));
            }
            permits.push(permit);
            self.handle_batch(deliveries, permits, &mut sequencer).await;
        }
    }

    /// Waits while paused. Returns false once stopping.
    async fn wait_until_running(&mut self) -> bool {
        loop {
            match *self.state.borrow_and_update() {
                TriggerState::Running => return true,
                TriggerState::Paused | TriggerState::Starting => {}
                _ => return false,
            }
            tokio::select! {
                () = self.stop.cancelled() => return false,
                r = self.state.changed() => if r.is_err() { return false },
            }
        }
    }

    fn finish(&self, handle: qt_core::AckHandle, meta: MessageMeta, outcome: Outcome, permit: OwnedSemaphorePermit) {
        let _ = self.finished.send(Finished {
            handle,
            meta,
            outcome,
            claim: None,
            permit,
        });
    }

    async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        permits: Vec<OwnedSemaphorePermit>,
        sequencer: &mut Sequencer,
    ) {
        let p = &*self.pipeline;
        let mut runnable = Vec::with_capacity(deliveries.len());
        for (Delivery { message, handle }, permit) in deliveries.into_iter().zip(permits) {
            let started = Instant::now();
            let consume_latency = message.consume_latency();
            if let Some(lag) = consume_latency {
                p.metrics.observe_consume_lag(lag);
            }
            let queue = message.source.queue.clone();
            let received_at = message.received_at;
            match build_envelope(message, p.parser.as_ref(), &p.config.processing.extraction) {
                Err(unparseable) => {
                    let raw = &unparseable.raw;
                    let meta = MessageMeta {
                        trace_id: unparseable.trace_id,
                        message_id: raw.message_id.clone(),
                        queue,
                        event_name: None,
                        tenant_id: raw.headers.get(qt_core::headers::TENANT_ID).map(str::to_owned),
                        dedup_key: None,
                        target: None,
                        received_at,
                        started,
                        consume_latency,
                        attempt: raw.attempt(),
                    };
                    warn!(trace_id = %meta.trace_id, message_id = %meta.message_id, queue = %meta.queue, error = %unparseable.error, "message cannot be parsed");
                    self.finish(handle, meta, Outcome::ParseFailed(unparseable.error), permit);
                }
                Ok(built) => {
                    let env = &built.envelope;
                    debug!(trace_id = %env.trace_id, message_id = %env.message_id, queue = %env.source.queue, "consumed and parsed");
                    let event_name = env.event_name.clone().unwrap_or_else(|| env.source.queue.to_string());
                    let route = p.router.route(&event_name);
                    let meta = MessageMeta {
                        trace_id: env.trace_id,
                        message_id: env.message_id.clone(),
                        queue,
                        event_name: Some(event_name),
                        tenant_id: env.tenant_id.clone(),
                        dedup_key: env.dedup_key.clone(),
                        target: route.as_ref().map(|r| r.target.clone()),
                        received_at,
                        started,
                        consume_latency,
                        attempt: env.attempt,
                    };
                    match route {
                        None => {
                            warn!(trace_id = %meta.trace_id, message_id = %meta.message_id, event = meta.event_name.as_deref().unwrap_or(""), "no route for event");
                            self.finish(handle, meta, Outcome::Unrouted, permit);
                        }
                        Some(route) => runnable.push(Runnable {
                            handle,
                            meta,
                            built,
                            target: route.target,
                            focus: route.focus,
                            permit,
                        }),
                    }
                }
            }
        }
        if runnable.is_empty() {
            return;
        }
        let Some(store) = &p.store else {
            for r in runnable {
                self.dispatch(r, None, sequencer);
            }
            return;
        };
        let keys: Vec<IdempotencyKey> = runnable
            .iter()
            .map(|r| {
                IdempotencyKey::new(
                    r.built.envelope.tenant_id.as_deref(),
                    r.built.envelope.idempotency_key(),
                )
            })
            .collect();
        match store.claim_batch(&keys, p.config.idempotency.lease).await {
            Ok(claims) if claims.len() == runnable.len() => {
                for (r, claim) in runnable.into_iter().zip(claims) {
                    match claim {
                        Claim::Acquired(token) => self.dispatch(r, Some(token), sequencer),
                        Claim::Completed => {
                            debug!(trace_id = %r.meta.trace_id, message_id = %r.meta.message_id, "duplicate: already processed");
                            self.finish(r.handle, r.meta, Outcome::Duplicate, r.permit);
                        }
                        Claim::InFlight => {
                            debug!(trace_id = %r.meta.trace_id, message_id = %r.meta.message_id, "duplicate: in flight elsewhere");
                            self.finish(r.handle, r.meta, Outcome::DuplicateInFlight, r.permit);
                        }
                    }
                }
            }
            other => {
                let reason = match other {
                    Err(e) => e.to_string(),
                    Ok(c) => format!("store answered {} claims for {} keys", c.len(), keys.len()),
                };
                p.metrics.idempotency_error(runnable.len() as u64);
                match p.config.idempotency.on_store_error {
                    OnStoreError::FailOpen => {
                        warn!(error = %reason, messages = runnable.len(), "idempotency store failed; running without dedup (fail_open)");
                        for r in runnable {
                            self.dispatch(r, None, sequencer);
                        }
                    }
                    OnStoreError::FailClosed => {
                        warn!(error = %reason, messages = runnable.len(), "idempotency store failed; requeueing (fail_closed)");
                        for r in runnable {
                            self.finish(r.handle, r.meta, Outcome::StoreUnavailable(reason.clone()), r.permit);
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&self, r: Runnable, claim: Option<qt_core::ClaimToken>, sequencer: &mut Sequencer) {
        let env = &r.built.envelope;
        let order_key = match self.pipeline.config.processing.ordering {
            Ordering::None => None,
            Ordering::Key => env.ordering_key.clone(),
            Ordering::Partition => match env.source.partition {
                Some(partition) => Some(format!("{}/{partition}", env.source.queue)),
                None => env.source.key.clone(),
            },
        };
        let (wait, done) = match order_key {
            Some(k) => sequencer.link(k),
            None => (WaitTurn::none(), TurnDone::none()),
        };
        let span = tracing::info_span!("message", trace_id = %r.meta.trace_id, message_id = %r.meta.message_id);
        let job = Job {
            handle: r.handle,
            meta: r.meta,
            envelope: Arc::new(r.built.envelope),
            selected_payload: r.built.agent_payload.map(Arc::new),
            target: r.target,
            focus: r.focus,
            claim,
            permit: r.permit,
            wait,
            done,
        };
        self.workers
            .spawn(worker::run(self.pipeline.clone(), job, self.finished.clone()).instrument(span));
    }
}
