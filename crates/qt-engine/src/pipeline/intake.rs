//! Stage 1: take batches of deliveries from the adapter, each bounded by in-flight permits,
//! and process them.
//!
//! Intake runs one receive loop (a lane) per runtime worker thread, as far as the
//! in-flight window holds a full batch for each; with `ordering: key` or `partition` one
//! lane, so batches link into their keys' chains in the order they arrived. A lane takes
//! a batch through as far as it goes without waiting, on the thread that received it, and
//! hands only a batch that must wait (a store round trip, an agent still running) to a
//! task of its own, so what a batch allocates is freed on the core that made it
//! (ARCHITECTURE.md, hot-path rule 1).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use qt_core::config::Ordering;
use qt_core::envelope::panic_message;
use qt_core::{Backoff, Delivery, QueueAdapter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::Pipeline;
use super::batch::{self, LinkTurn};
use super::quarantine::Fingerprint;
use crate::trigger::TriggerState;

/// A batch that panicked outside any one message's steps (a bug) is remembered by the
/// quarantine, so the panic is not repeated on every redelivery.
fn batch_ended(p: &Pipeline, outcome: std::thread::Result<()>, fingerprints: &[Fingerprint]) {
    let Err(panic) = outcome else {
        return;
    };
    let panic = panic_message(panic.as_ref());
    p.metrics.panicked();
    if fingerprints.len() == 1 {
        error!(%panic, "processing a message panicked; when the broker delivers it again it is dead-lettered as a permanent failure");
    } else {
        error!(%panic, messages = fingerprints.len(), "processing a batch panicked; the broker delivers its unsettled messages again, and each then runs alone to find the one that panics");
    }
    p.quarantine.batch_panicked(fingerprints, &panic);
}

/// Longest intake waits for a busy pipeline to return permits before it takes a smaller
/// batch (see [`Intake::gather_permits`]).
const BATCH_LINGER: Duration = Duration::from_millis(1);
/// How long intake waits on a failing source before trying again, after each of a run of
/// failed receives.
const RECEIVE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    multiplier: 2.0,
    max: Duration::from_secs(5),
    jitter: 0.0,
};

#[derive(Clone)]
pub(crate) struct Intake {
    pub pipeline: Arc<Pipeline>,
    pub adapter: Arc<dyn QueueAdapter>,
    pub in_flight: Arc<Semaphore>,
    /// The size of the in-flight window (`in_flight`'s permits in all).
    pub max_in_flight: usize,
    /// Batches that had to wait; a stop drains them.
    pub batches: TaskTracker,
    pub stop: CancellationToken,
    pub state: watch::Receiver<TriggerState>,
    pub source_error: Arc<parking_lot::Mutex<Option<String>>>,
}

impl Intake {
    /// Runs its lanes until stopped or the source closes. Returns why it ended.
    pub async fn run(self) -> &'static str {
        // When one lane ends (the source closed, or a stop), the others end with it.
        let end_lanes = self.stop.child_token();
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..self.lanes() {
            let mut lane = self.clone();
            lane.stop = end_lanes.clone();
            let end_all = end_lanes.clone();
            lanes.spawn(async move {
                let why = lane.receive_loop().await;
                end_all.cancel();
                why
            });
        }
        let mut why = None;
        while let Some(ended) = lanes.join_next().await {
            match ended {
                Ok(reason) => {
                    why.get_or_insert(reason);
                }
                Err(e) => {
                    end_lanes.cancel();
                    warn!(error = %e, "an intake lane ended abnormally");
                    why.get_or_insert("intake failed");
                }
            }
        }
        why.unwrap_or("stopped")
    }

    /// One per worker thread, at most one per full batch the window holds and one per agent
    /// slot (a lane beyond that only waits for another's slot); one when the order of
    /// batches matters.
    fn lanes(&self) -> usize {
        let processing = &self.pipeline.config.processing;
        if processing.ordering != Ordering::None {
            return 1;
        }
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        workers
            .min(self.max_in_flight / processing.batch_size.max(1))
            .min(processing.concurrency)
            .max(1)
    }

    /// Receives and processes batches until stopped or the source closes.
    async fn receive_loop(mut self) -> &'static str {
        let batch_size = self.pipeline.config.processing.batch_size;
        let mut receive_failures = 0u32;
        let mut previous_link: Option<oneshot::Receiver<()>> = None;
        loop {
            if !self.wait_until_running().await {
                return "stopped";
            }
            if let Some(pause) = self.pipeline.ledger_backoff.remaining() {
                tokio::select! {
                    () = self.stop.cancelled() => return "stopped",
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            let mut permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => return "stopped",
                p = self.in_flight.clone().acquire_owned() => p.expect("the in-flight semaphore is never closed"),
            };
            self.gather_permits(&mut permit, batch_size).await;
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
                    receive_failures = 0;
                    *self.source_error.lock() = None;
                    d
                }
                Err(e) => {
                    let receive_backoff = RECEIVE_BACKOFF.base(receive_failures);
                    receive_failures = receive_failures.saturating_add(1);
                    warn!(queue = self.adapter.queue(), error = %e, retry_in = ?receive_backoff, "receive failed");
                    *self.source_error.lock() = Some(e.to_string());
                    tokio::select! {
                        () = self.stop.cancelled() => return "stopped",
                        () = tokio::time::sleep(receive_backoff) => {}
                    }
                    continue;
                }
            };
            self.pipeline.metrics.received(deliveries.len() as u64);
            let mut permits = Vec::with_capacity(deliveries.len());
            for _ in 1..deliveries.len() {
                permits.push(permit.split(1).expect("one permit per delivery was acquired"));
            }
            permits.push(permit);
            if self.pipeline.quarantine.is_active() {
                self.sort_and_start(deliveries, permits, &mut previous_link).await;
            } else {
                self.start_batch(deliveries, permits, &mut previous_link).await;
            }
        }
    }

    /// Starts a batch with `deliveries`: takes it as far as it goes now, and hands it to a
    /// task of its own if it has to wait.
    async fn start_batch(
        &self,
        deliveries: Vec<Delivery>,
        permits: Vec<OwnedSemaphorePermit>,
        previous_link: &mut Option<oneshot::Receiver<()>>,
    ) {
        let (linked, next) = oneshot::channel();
        let link = LinkTurn {
            after: previous_link.replace(next),
            linked,
        };
        let p = self.pipeline.clone();
        // Who was in the batch, in case it panics: its unsettled messages are delivered
        // again, and the quarantine then runs each alone.
        let fingerprints: Vec<Fingerprint> = deliveries
            .iter()
            .map(|d| p.quarantine.fingerprint(&d.message))
            .collect();
        let mut batch = Box::pin(AssertUnwindSafe(batch::process(p.clone(), deliveries, permits, link)).catch_unwind());
        match futures::poll!(batch.as_mut()) {
            Poll::Ready(outcome) => batch_ended(&p, outcome, &fingerprints),
            Poll::Pending => {
                self.batches
                    .spawn(async move { batch_ended(&p, batch.await, &fingerprints) });
            }
        }
    }

    /// Starts a batch received while the quarantine remembers messages: poisoned ones are
    /// dead-lettered, suspects each run as a batch of their own, the rest together.
    async fn sort_and_start(
        &self,
        deliveries: Vec<Delivery>,
        permits: Vec<OwnedSemaphorePermit>,
        previous_link: &mut Option<oneshot::Receiver<()>>,
    ) {
        let sorted = self.pipeline.quarantine.sort(deliveries, permits);
        for ((delivery, permit), panic) in sorted.poisoned {
            let p = self.pipeline.clone();
            self.batches.spawn(async move {
                let dead_lettering = AssertUnwindSafe(batch::dead_letter_poisoned(p, delivery, permit, panic));
                if let Err(panic) = dead_lettering.catch_unwind().await {
                    error!(panic = %panic_message(panic.as_ref()), "dead-lettering a poisoned message panicked too; the broker will deliver it again");
                }
            });
        }
        for (delivery, permit) in sorted.alone {
            self.start_batch(vec![delivery], vec![permit], previous_link).await;
        }
        if !sorted.together.is_empty() {
            let (deliveries, permits) = sorted.together.into_iter().unzip();
            self.start_batch(deliveries, permits, previous_link).await;
        }
    }

    /// Grows `permit` towards a full batch. What is free now is taken at once; when that
    /// is less than a quarter of the in-flight window, the pipeline is busy and returns
    /// permits as its batches settle, so intake lingers up to [`BATCH_LINGER`] for them
    /// (hot-path rule 10 in ARCHITECTURE.md). An idle pipeline has every permit free, so a
    /// quiet queue's message waits for nothing.
    async fn gather_permits(&self, permit: &mut OwnedSemaphorePermit, batch_size: usize) {
        let take_free = |permit: &mut OwnedSemaphorePermit| {
            let extra = self
                .in_flight
                .available_permits()
                .min(batch_size.saturating_sub(permit.num_permits()));
            if extra > 0
                && let Ok(more) = self.in_flight.clone().try_acquire_many_owned(extra as u32)
            {
                permit.merge(more);
            }
        };
        take_free(permit);
        let enough = (self.max_in_flight / 4).clamp(1, batch_size);
        if permit.num_permits() >= enough {
            return;
        }
        let missing = (enough - permit.num_permits()) as u32;
        let more = tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            r = tokio::time::timeout(BATCH_LINGER, self.in_flight.clone().acquire_many_owned(missing)) => r.ok(),
        };
        if let Some(more) = more {
            permit.merge(more.expect("the in-flight semaphore is never closed"));
        }
        take_free(permit);
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
}
