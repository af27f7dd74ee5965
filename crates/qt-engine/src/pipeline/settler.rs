//! Stage 3: finish claims, make the ledger records durable, then settle on the broker —
//! in that order, group by group, so no message is acked before its record is written.
//!
//! A batch task finishes its own messages, on the thread that ran them (ARCHITECTURE.md,
//! hot-path rule 1).

use std::task::Poll;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use opentelemetry::trace::SpanContext;
use qt_core::{AckHandle, AgentRun, ClaimState, ClaimToken, LedgerRecord, Settlement, SettlementKind};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, warn};

use super::outcome::{ClaimAction, Outcome, Resolution, resolve};
use super::{Finished, MessageMeta, Pipeline};
use crate::metrics::{DlqReason, SettledTally};
use crate::spans;

/// One batch's working lists, kept from group to group (each is emptied by the group that
/// fills it).
#[derive(Default)]
pub(crate) struct Settler {
    completes: Vec<ClaimToken>,
    /// For each of `completes`, its message's place in the group's records, so a claim
    /// found lost can be told with the message's trace and message ids.
    completed_records: Vec<usize>,
    releases: Vec<ClaimToken>,
    pending: Vec<Pending>,
    /// Settlements still waiting for the broker (a dead letter awaiting its confirm).
    waiting: FuturesUnordered<futures::future::BoxFuture<'static, (AfterSettle, Result<(), qt_core::SettleError>)>>,
}

/// One message's settle work, after its record is durable.
struct Pending {
    handle: AckHandle,
    settlement: Settlement,
    after: AfterSettle,
}

/// What is counted and logged once a message's settlement returned.
struct AfterSettle {
    kind: &'static str,
    dlq_reason: Option<DlqReason>,
    trace_id: qt_core::TraceId,
    /// Copied only where a log line may need it (the record takes the original): at debug,
    /// and for settlements other than an ack. A failed ack's error names its message.
    message_id: Option<String>,
    permit: OwnedSemaphorePermit,
    started: Instant,
    status: qt_core::LedgerStatus,
}

/// Writes a group's records, and while the ledger fails writes them again after a pause
/// (see [`super::ledger_backoff`]), the group's messages unacknowledged meanwhile: held
/// rather than handed back, so their outcome is recorded once the ledger returns instead of
/// their redeliveries being recorded as duplicates of runs whose records were never
/// written. Gives up only when a stop's drain timeout passes.
async fn write_ledger(
    p: &Pipeline,
    mut records: Vec<LedgerRecord>,
    messages: usize,
) -> Result<(), qt_core::LedgerError> {
    loop {
        let Err(qt_core::Unwritten {
            error,
            records: unwritten,
        }) = p.ledger.record_batch(records).await
        else {
            return Ok(());
        };
        p.metrics.ledger_error();
        let pause = p.ledger_backoff.failed();
        error!(error = %error, messages, retry_in = ?pause, "ledger write failed; the messages stay unacknowledged, and their records are written again after a pause");
        records = unwritten;
        tokio::select! {
            () = p.abort.cancelled() => return Err(error),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

impl Settler {
    /// Finishes a group of messages: resolves their outcomes, finishes their claims, makes
    /// their records durable, then settles them. Settlements that answer at once are done
    /// when this returns, the others are left to [`Settler::settle_next`].
    pub(crate) async fn finish(&mut self, p: &Pipeline, group: Vec<Finished>) {
        if group.is_empty() {
            return;
        }
        let (records, traced) = self.resolve_group(p, group);
        self.finish_claims(p, &records).await;
        if records.is_empty() {
            return;
        }
        let step = p
            .spans
            .as_ref()
            .and_then(|spans| spans.start_batch_step("ledger write", &traced));
        let written = write_ledger(p, records, self.pending.len()).await;
        spans::end_batch_step(step, written.as_ref().err().map(ToString::to_string));
        if written.is_err() {
            // Stopping, and the drain timeout passed: the broker delivers the group again.
            for m in self.pending.drain(..) {
                p.metrics.left_pipeline();
                drop(m);
            }
            return;
        }
        p.ledger_backoff.succeeded();
        self.settle_pending(p, &traced).await;
    }

    /// Applies the outcome table to each message: its ledger record, its settlement (kept
    /// in `pending` until the record is durable) and what happens to its claim (kept in
    /// `completes` / `releases`). A message left to the broker at stop is let go here.
    /// Returns the records, and the traced messages' spans for the batch steps to link to.
    fn resolve_group(&mut self, p: &Pipeline, group: Vec<Finished>) -> (Vec<LedgerRecord>, Vec<SpanContext>) {
        let mut records = Vec::with_capacity(group.len());
        // A batch's settler starts empty: room for the whole group at once, not by doubling.
        self.pending.reserve(group.len());
        self.completes.reserve(group.len());
        self.completed_records.reserve(group.len());
        let log_each = tracing::enabled!(tracing::Level::DEBUG);
        let mut traced = Vec::new();
        // One clock reading for the whole group: its records finish together.
        let (now, now_instant) = (Utc::now(), Instant::now());
        for f in group {
            let Finished {
                handle,
                meta,
                outcome,
                claim,
                permit,
            } = f;
            let Some(mut row) = resolve(&outcome, &p.config, meta.attempt, meta.event_name()) else {
                // Left to the broker at stop: give the key back; dropping the handle hands
                // the message back for redelivery.
                if let Some(c) = claim {
                    self.releases.push(c);
                }
                let why = match outcome {
                    Outcome::HandedBack => "not started when the stop began; handed back to the broker",
                    _ => "still running when the drain timeout passed; abandoned for the broker to redeliver",
                };
                debug!(trace_id = %meta.trace_id, message_id = %meta.message_id(), "{why}");
                p.metrics.left_pipeline();
                drop((handle, permit));
                continue;
            };
            // A traced message's copy (a dead letter, a requeued message) continues its trace
            // from qt's span.
            match &mut row.settlement {
                Settlement::DeadLetter(dl) => dl.traceparent = meta.trace.traceparent(),
                Settlement::Requeue { traceparent, .. } => *traceparent = meta.trace.traceparent(),
                Settlement::Ack | Settlement::Nack => {}
            }
            if let Some(span) = meta.trace.span_context() {
                traced.push(span);
            }
            if let Some(c) = claim {
                match row.claim {
                    ClaimAction::Complete => {
                        self.completes.push(c);
                        self.completed_records.push(records.len());
                    }
                    ClaimAction::Release => self.releases.push(c),
                }
            }
            if matches!(outcome, Outcome::Duplicate) {
                p.metrics.dedup_hit();
            }
            let after = AfterSettle {
                kind: row.settlement.kind(),
                dlq_reason: row.dlq_reason,
                trace_id: meta.trace_id,
                message_id: (log_each || !matches!(row.settlement, Settlement::Ack))
                    .then(|| meta.message_id().to_owned()),
                permit,
                started: meta.started,
                status: row.status,
            };
            records.push(record(meta, outcome, &mut row, now, now_instant));
            self.pending.push(Pending {
                handle,
                settlement: row.settlement,
                after,
            });
        }
        (records, traced)
    }

    /// Completes the claims of the group's finished runs and releases the others', each
    /// in one store call. A store failure is counted and logged: the keys come free when
    /// their lease expires, which the outcome table accepts.
    async fn finish_claims(&mut self, p: &Pipeline, records: &[LedgerRecord]) {
        let Settler {
            completes,
            completed_records,
            releases,
            ..
        } = self;
        if let Some(store) = &p.store {
            let window = p.config.idempotency.window;
            if !completes.is_empty() {
                match store.complete_batch(completes, window).await {
                    Ok(states) => warn_lost(completes, completed_records, records, &states),
                    Err(e) => {
                        p.metrics.idempotency_error(completes.len() as u64);
                        warn!(error = %e, keys = completes.len(), "could not mark keys done; they will run again once their lease expires");
                    }
                }
            }
            if !releases.is_empty()
                && let Err(e) = store.release_batch(releases).await
            {
                p.metrics.idempotency_error(releases.len() as u64);
                warn!(error = %e, keys = releases.len(), "could not release keys; they are free again once their lease expires");
            }
        }
        completes.clear();
        completed_records.clear();
        releases.clear();
    }

    /// Settles every pending message on the broker, its record being durable. Most
    /// settlements finish on their first poll (an ack is queued, not awaited), here; only
    /// those still waiting (a dead letter awaiting its publish confirm) are left for
    /// `settle_next`, so the batch's next group need not wait for them.
    async fn settle_pending(&mut self, p: &Pipeline, traced: &[SpanContext]) {
        let step = p
            .spans
            .as_ref()
            .and_then(|spans| spans.start_batch_step("settle", traced));
        let mut settled_at = None;
        let mut group = SettledGroup::default();
        for Pending {
            handle,
            settlement,
            after,
        } in self.pending.drain(..)
        {
            let mut settling = handle.settle(settlement);
            match futures::poll!(&mut settling) {
                Poll::Ready(result) => {
                    let at = *settled_at.get_or_insert_with(Instant::now);
                    settled(p, after, result, at, &mut group);
                }
                Poll::Pending => self.waiting.push(Box::pin(async move { (after, settling.await) })),
            }
        }
        // Settlements still waiting for the broker (a dead letter's publish) end later,
        // outside this span.
        spans::end_batch_step(step, None);
        group.count(p);
    }

    /// Whether settlements are still waiting for the broker.
    pub(crate) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Waits for the next settlement still waiting for the broker and counts it; `None`
    /// when none is left.
    pub(crate) async fn settle_next(&mut self, p: &Pipeline) -> Option<()> {
        let (after, result) = self.waiting.next().await?;
        let mut group = SettledGroup::default();
        settled(p, after, result, Instant::now(), &mut group);
        group.count(p);
        Some(())
    }
}

/// Messages settled together: counted into the shared metrics and given back to the
/// in-flight window at once, rather than each touching those shared atomics and the
/// window's lock.
#[derive(Default)]
struct SettledGroup {
    tally: SettledTally,
    permits: Option<OwnedSemaphorePermit>,
}

impl SettledGroup {
    fn add(&mut self, status: qt_core::LedgerStatus, processing: std::time::Duration, permit: OwnedSemaphorePermit) {
        self.tally.settled(status, processing);
        match &mut self.permits {
            Some(all) => all.merge(permit),
            None => self.permits = Some(permit),
        }
    }

    /// Counts them, then gives their places in the window back.
    fn count(self, p: &Pipeline) {
        p.metrics.settled(&self.tally);
        drop(self.permits);
    }
}

fn settled(
    p: &Pipeline,
    m: AfterSettle,
    result: Result<(), qt_core::SettleError>,
    at: Instant,
    group: &mut SettledGroup,
) {
    // Recorded only when copied (see AfterSettle::message_id).
    let message_id = m.message_id.as_deref();
    match result {
        Ok(()) => {
            debug!(trace_id = %m.trace_id, message_id, settlement = m.kind, "settled");
            if let Some(reason) = m.dlq_reason {
                p.metrics.dead_lettered(reason);
            }
        }
        Err(e) => {
            p.metrics.settle_error();
            warn!(trace_id = %m.trace_id, message_id, settlement = m.kind, error = %e, "settle failed; the broker will redeliver");
        }
    }
    group.add(m.status, at.saturating_duration_since(m.started), m.permit);
}

/// Warns of each completed claim the store had already given up: its message ran past
/// the lease, so another worker may have claimed and run the same key.
fn warn_lost(tokens: &[ClaimToken], record_of: &[usize], records: &[LedgerRecord], states: &[ClaimState]) {
    for ((t, r), s) in tokens.iter().zip(record_of).zip(states) {
        if *s == ClaimState::Lost {
            let record = &records[*r];
            warn!(
                trace_id = %record.trace_id,
                message_id = %record.message_id,
                key = %t.key.key,
                tenant = ?t.key.tenant,
                "idempotency lease had expired before the message finished: another worker may have run this key too; raise idempotency.lease above the longest run"
            );
        }
    }
}

/// The ledger record of one outcome; takes the message's strings, the outcome's and the
/// row's error instead of copying them (the row keeps its settlement for the broker).
fn record(
    mut meta: super::MessageMeta,
    outcome: Outcome,
    row: &mut Resolution,
    now: chrono::DateTime<Utc>,
    now_instant: Instant,
) -> LedgerRecord {
    let settlement = SettlementKind::from(&row.settlement);
    let (mut attempts, mut run, mut history) = (0, AgentRun::default(), Vec::new());
    let (mut decision_reason, mut decision_policies) = (None, Vec::new());
    match outcome {
        Outcome::Succeeded {
            run: reported,
            attempts: made,
            history: tried,
        } => (attempts, run, history) = (made, reported, tried),
        Outcome::Failed {
            attempts: made,
            history: tried,
            ..
        } => (attempts, history) = (made, tried),
        Outcome::Rejected { reason, policies } | Outcome::Deferred { reason, policies, .. } => {
            (decision_reason, decision_policies) = (Some(reason), policies);
        }
        _ => {}
    }
    // The message's span ends with the outcome decided; the ledger write and the settlement
    // that follow are batch work.
    std::mem::take(&mut meta.trace).end(row.status, settlement, attempts, row.error.as_deref());
    let identity = MessageMeta::into_owned_identity(meta.identity);
    LedgerRecord {
        trace_id: meta.trace_id,
        message_id: identity.message_id,
        queue: identity.queue,
        adapter: identity.adapter,
        event_name: identity.event_name,
        tenant_id: identity.tenant_id,
        dedup_key: identity.dedup_key,
        target: meta.target,
        status: row.status,
        settlement,
        attempts,
        duration_ms: now_instant.saturating_duration_since(meta.started).as_secs_f64() * 1000.0,
        consume_latency_ms: meta.consume_latency.map(|d| d.as_secs_f64() * 1000.0),
        agent_run_id: run.run_id,
        llm_calls: run.llm_calls,
        agent_output: run.output,
        error: row.error.take(),
        error_class: row.error_class,
        decision_reason,
        decision_policies,
        retries: history,
        received_at: meta.received_at,
        finished_at: now,
    }
}
