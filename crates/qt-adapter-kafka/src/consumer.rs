//! The consumer thread: one OS thread owns the librdkafka consumer and polls it, so
//! rebalances, statistics and `max.poll.interval.ms` are served even while the engine is
//! busy (heartbeats run on librdkafka's own thread).
//!
//! Flow control: while the engine is taking messages, a full buffer only makes the thread
//! wait for room (briefly, without polling) — librdkafka keeps prefetching meanwhile, so
//! nothing is fetched twice. Pausing the partitions at the consumer throws librdkafka's
//! prefetched messages away and fetches them again on resume, which costs a fetch round
//! trip each time; it is kept for when the engine takes nothing for [`FLOW_STALL`] (long
//! handlers), for too many held delayed requeues, and for `pause()`, so the thread can go on
//! polling without taking messages.
//!
//! Rebalance callbacks run on this thread too, inside `poll`: on revocation it stops taking
//! messages from the revoked partitions, waits (bounded) for the engine to settle what it
//! holds of them, commits the completed prefix and lets them go.
//!
//! Close ends the loop the same way: nothing more is taken, requeues and dead letters
//! under way get the same bounded wait, then the completed prefix is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, config::RDKafkaLogLevel};

use crate::context::QtClientContext;
use crate::message;
use crate::state::{Pending, Shared, TopicPartition};

/// Longest a single `poll` blocks, which bounds how late pause/resume, rewinds, held
/// messages and commits are acted on.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a full buffer may go without the engine taking anything before the partitions
/// are paused at the consumer. Until then the thread waits for room without polling, which
/// delays rebalance callbacks by at most this long.
const FLOW_STALL: Duration = Duration::from_secs(1);
/// Most messages taken from librdkafka per lock of the shared state.
const MAX_BATCH: usize = 1_024;
/// Delayed requeues held at least, whatever max_in_flight is.
const MIN_HELD: usize = 1_000;
/// How long a seek for a rewind may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// The consumer's callbacks: logging, statistics and errors as every client, plus
/// rebalances and commit results.
pub struct ConsumerCtx {
    pub client: QtClientContext,
    pub shared: Arc<Shared>,
    pub drain_timeout: Duration,
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

fn tpl_of(tps: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(tps.len());
    for tp in tps {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

fn commit_list(commits: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for (tp, offset) in commits {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

fn describe(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl ConsumerCtx {
    fn redact(&self, text: impl std::fmt::Display) -> String {
        self.client.redactor().redact(text)
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tps: &[TopicPartition]) {
        let lost = consumer.assignment_lost();
        let closing = {
            let mut st = self.shared.lock();
            st.revoke_begin(tps);
            st.closing
        };
        if closing {
            let out = self.shared.lock().in_flight(tps);
            if out > 0 {
                tracing::info!(
                    partitions = %describe(tps),
                    in_flight = out,
                    "closing with unsettled messages; they stay uncommitted and are delivered again"
                );
            }
        } else if !lost {
            let still_out = self.shared.wait_drained(tps, Instant::now() + self.drain_timeout);
            if still_out > 0 {
                tracing::warn!(
                    partitions = %describe(tps),
                    in_flight = still_out,
                    timeout = ?self.drain_timeout,
                    "revoked partitions still had unsettled messages after revoke_drain_timeout; \
                     they stay uncommitted and the next owner processes them again"
                );
            }
        }
        let commits = self.shared.lock().revoke_finish(tps);
        if lost {
            tracing::warn!(
                partitions = %describe(tps),
                "partitions were lost (session timeout or fencing); their progress since the last commit is processed again by the next owner"
            );
        } else if !commits.is_empty() {
            // Stored as well, so librdkafka's own commit on unassign cannot go back to an
            // older stored offset.
            let committed = commit_list(&commits).and_then(|tpl| {
                consumer.store_offsets(&tpl)?;
                consumer.commit(&tpl, CommitMode::Sync)
            });
            match committed {
                Ok(()) => tracing::debug!(partitions = %describe(tps), "committed revoked partitions"),
                Err(e) => tracing::warn!(
                    partitions = %describe(tps),
                    error = %self.redact(&e),
                    "committing revoked partitions failed; the next owner starts from the previous commit"
                ),
            }
        }
        tracing::info!(partitions = %describe(tps), "partitions revoked");
    }
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.client.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.client.stats(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.on_revoke(consumer, &tps_of(tpl)),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after a rebalance error, without a revoke.
                let all = self.shared.lock().assignment();
                tracing::warn!(error = %self.redact(e), "rebalance failed; dropping the assignment");
                let mut st = self.shared.lock();
                st.revoke_begin(&all);
                st.revoke_finish(&all);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let tps = tps_of(tpl);
            self.shared.lock().assign(&tps);
            tracing::info!(partitions = %describe(&tps), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let mut failed = Vec::new();
        for e in offsets.elements() {
            if result.is_err() || e.error().is_err() {
                failed.push(TopicPartition::new(e.topic(), e.partition()));
            }
        }
        if failed.is_empty() {
            return;
        }
        let reason = match &result {
            Err(e) => self.redact(e),
            Ok(()) => "partition errors".to_owned(),
        };
        // The stored offsets stay ahead of the committed ones, so librdkafka's next
        // auto-commit carries them again.
        tracing::warn!(partitions = %describe(&failed), error = %reason, "offset commit failed; retrying at the next interval");
    }
}

/// What the adapter tells the thread, and what the thread tells back.
#[derive(Debug)]
pub struct Control {
    pub user_paused: AtomicBool,
    /// The pause state last applied to every assigned partition.
    pub applied_pause: tokio::sync::watch::Sender<bool>,
}

impl Control {
    pub fn new() -> Self {
        Self {
            user_paused: AtomicBool::new(false),
            applied_pause: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// Makes a panic of the consumer thread visible to `receive` and `health` instead of
/// leaving the engine waiting for messages that never come.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut st = self.0.lock();
            st.failed = Some("the Kafka consumer thread panicked; see the log".to_owned());
            st.closing = true;
            drop(st);
            self.0.ready.notify_waiters();
            self.0.ready.notify_one();
        }
    }
}

/// The state of the poll loop.
pub struct PollLoop {
    pub consumer: BaseConsumer<ConsumerCtx>,
    pub shared: Arc<Shared>,
    pub control: Arc<Control>,
    /// Messages taken but not yet received by the engine before partitions are paused.
    pub capacity: usize,
    /// Delayed requeues held for their time before partitions are paused. Larger than
    /// `capacity`, so a burst of delayed retries does not stall everything else.
    pub held_capacity: usize,
    pub commit_interval: Duration,
    pub redelivery_delay: Duration,
    /// The topic names of the current poll batch (a consumer reads a handful of topics: a
    /// scan beats hashing). Each batch makes its own copies: every message holds these
    /// names until it is settled, and a name shared by the whole pipeline would have its
    /// reference count written by every thread for every message.
    batch_topics: Vec<Arc<str>>,
    flow_paused: bool,
    /// Since when the buffer has been full without the engine taking anything.
    full_since: Option<Instant>,
    /// The messages of one poll, on their way into the shared state. Kept between polls:
    /// a batch of up to [`MAX_BATCH`] messages is a few hundred kilobytes, which a fresh
    /// vector would fault in from the kernel again on every poll.
    polled: Vec<(Pending, Option<Instant>)>,
}

impl PollLoop {
    pub fn new(
        consumer: BaseConsumer<ConsumerCtx>,
        shared: Arc<Shared>,
        control: Arc<Control>,
        max_in_flight: usize,
        commit_interval: Duration,
        redelivery_delay: Duration,
    ) -> Self {
        Self {
            consumer,
            shared,
            control,
            // Room for a whole window beside the one the engine holds: the broker's fetches
            // arrive in bursts (ARCHITECTURE.md, hot-path rule 3).
            capacity: max_in_flight.max(1) * 2,
            held_capacity: (max_in_flight * 4).max(MIN_HELD),
            commit_interval,
            redelivery_delay,
            batch_topics: Vec::new(),
            flow_paused: false,
            full_since: None,
            polled: Vec::new(),
        }
    }

    fn redact(&self, text: impl std::fmt::Display) -> String {
        self.consumer.context().client.redactor().redact(text)
    }

    pub fn run(mut self) {
        let _guard = PanicGuard(self.shared.clone());
        // Storing is local (librdkafka commits stored offsets every commit_interval), so it
        // runs often to keep the commit lag near commit_interval.
        let store_every = self.commit_interval.min(IDLE_POLL);
        let mut next_store = Instant::now() + store_every;
        loop {
            if self.shared.lock().closing {
                break;
            }
            let now = Instant::now();
            let intake_paused = self.apply_pauses(now);
            self.rewind_due(now);
            let released = self.shared.lock().release_due(now);
            if released > 0 {
                self.shared.ready.notify_one();
            }
            if now >= next_store {
                self.store_offsets();
                next_store = now + store_every;
            }
            let mut timeout = IDLE_POLL.min(next_store.saturating_duration_since(now));
            if let Some(due) = self.shared.lock().next_due() {
                timeout = timeout.min(due.saturating_duration_since(now));
            }
            if !intake_paused && self.full_since.is_some() {
                // The engine is expected to take messages soon: wait for room rather than
                // pause (see the module docs). Bounded, so stores, rewinds and the stall
                // check still run on time.
                let until_stall = self
                    .full_since
                    .map_or(FLOW_STALL, |t| (t + FLOW_STALL).saturating_duration_since(now));
                self.shared.wait_room(self.capacity, now + timeout.min(until_stall));
                continue;
            }
            if let Err(fatal) = self.poll_batch(timeout) {
                tracing::error!(error = %fatal, "the Kafka consumer failed for good and stops");
                self.consumer.context().client.health().fatal(fatal.clone());
                let mut st = self.shared.lock();
                st.failed = Some(fatal);
                st.closing = true;
                st.clear_unreceived();
                break;
            }
        }
        self.shutdown();
    }

    /// Polls up to a batch of messages (waiting at most `timeout` for the first) and hands
    /// them to the shared state. Returns an error only for a fatal consumer error.
    fn poll_batch(&mut self, timeout: Duration) -> Result<(), String> {
        use rdkafka::Message as _;
        let room = self
            .capacity
            .saturating_sub(self.shared.lock().buffer.len())
            .clamp(1, MAX_BATCH);
        let Self {
            consumer,
            batch_topics,
            polled: batch,
            ..
        } = &mut *self;
        batch_topics.clear();
        let mut wait = timeout;
        // Taken when the first message arrived: one clock reading per batch.
        let mut times: Option<message::Batch> = None;
        while batch.len() < room {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(msg)) => {
                    let topic = match batch_topics.iter().find(|t| ***t == *msg.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(msg.topic());
                            batch_topics.push(t.clone());
                            t
                        }
                    };
                    let times = times.get_or_insert_with(|| message::Batch {
                        received_at: chrono::Utc::now(),
                        now_wall: SystemTime::now(),
                        now: Instant::now(),
                    });
                    batch.push(message::from_kafka(&msg, topic, times));
                    wait = Duration::ZERO;
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(format!("fatal consumer error: {code}"));
                }
                // Already reported through the context's error callback.
                Some(Err(e)) => {
                    tracing::trace!(error = %consumer.context().client.redactor().redact(&e), "consumer poll error");
                    wait = Duration::ZERO;
                }
            }
        }
        if !self.polled.is_empty() {
            self.consumer.context().client.health().reachable();
            let mut st = self.shared.lock();
            let mut admitted = 0;
            for (pending, not_before) in self.polled.drain(..) {
                admitted += usize::from(st.admit(pending, not_before));
            }
            drop(st);
            if admitted > 0 {
                self.shared.ready.notify_one();
            }
        }
        Ok(())
    }

    /// Pauses or resumes partitions so the consumer's state matches: paused by the engine,
    /// paused while the engine has taken nothing from a full buffer for [`FLOW_STALL`] or
    /// too many delayed requeues are held, paused while rewinding. Returns whether every
    /// partition is paused now (so polling takes no messages).
    fn apply_pauses(&mut self, now: Instant) -> bool {
        let user = self.control.user_paused.load(Ordering::SeqCst);
        let (to_pause, to_resume) = {
            let mut st = self.shared.lock();
            let (buffered, held) = (st.buffer.len(), st.held.len());
            if buffered >= self.capacity {
                self.full_since.get_or_insert(now);
            } else {
                self.full_since = None;
            }
            let stalled = self.full_since.is_some_and(|t| now.duration_since(t) >= FLOW_STALL);
            if !self.flow_paused && (stalled || held >= self.held_capacity) {
                self.flow_paused = true;
                tracing::debug!(buffered, held, "intake paused until the engine catches up");
            } else if self.flow_paused && buffered <= self.capacity / 2 && held <= self.held_capacity / 2 {
                self.flow_paused = false;
                tracing::debug!(buffered, held, "intake resumed");
            }
            st.pause_changes(user || self.flow_paused)
        };
        if !to_pause.is_empty()
            && let Err(e) = self.consumer.pause(&tpl_of(&to_pause))
        {
            tracing::warn!(partitions = %describe(&to_pause), error = %self.redact(&e), "pausing failed; retrying");
            self.shared.lock().pause_failed(&to_pause, true);
        }
        if !to_resume.is_empty()
            && let Err(e) = self.consumer.resume(&tpl_of(&to_resume))
        {
            tracing::warn!(partitions = %describe(&to_resume), error = %self.redact(&e), "resuming failed; retrying");
            self.shared.lock().pause_failed(&to_resume, false);
        }
        self.control.applied_pause.send_if_modified(|applied| {
            let changed = *applied != user;
            *applied = user;
            changed
        });
        user || self.flow_paused
    }

    fn rewind_due(&mut self, now: Instant) {
        let due = self.shared.lock().due_rewinds(now);
        for (tp, target) in due {
            let outcome = self
                .consumer
                .seek(&tp.topic, tp.partition, Offset::Offset(target), SEEK_TIMEOUT);
            match outcome {
                Ok(()) => {
                    tracing::info!(partition = %tp, offset = target, "partition rewound; unfinished messages are delivered again");
                    self.shared.lock().rewind_done(&tp, Ok(()));
                }
                Err(e) => {
                    tracing::warn!(partition = %tp, offset = target, error = %self.redact(&e), "seeking for a rewind failed; retrying");
                    self.shared.lock().rewind_done(&tp, Err(now + self.redelivery_delay));
                }
            }
        }
    }

    /// Hands the finished prefixes to librdkafka, which commits them every commit_interval
    /// (and when partitions are revoked or the consumer closes).
    fn store_offsets(&self) {
        let stores = self.shared.lock().store_candidates();
        if stores.is_empty() {
            return;
        }
        let result = commit_list(&stores).and_then(|tpl| self.consumer.store_offsets(&tpl));
        if let Err(e) = result {
            let tps: Vec<TopicPartition> = stores.into_iter().map(|(tp, _)| tp).collect();
            tracing::debug!(partitions = %describe(&tps), error = %self.redact(&e), "storing offsets failed; retrying");
            let mut st = self.shared.lock();
            for tp in &tps {
                st.store_failed(tp);
            }
        }
    }

    /// Commits every partition's finished prefix and waits for the broker's answer.
    fn commit_now(&self) {
        let positions: Vec<(TopicPartition, i64)> = self
            .shared
            .lock()
            .positions()
            .into_iter()
            .filter_map(|(tp, pos)| pos.map(|p| (tp, p)))
            .collect();
        if positions.is_empty() {
            return;
        }
        let result = commit_list(&positions).and_then(|tpl| {
            self.consumer.store_offsets(&tpl)?;
            self.consumer.commit(&tpl, CommitMode::Sync)
        });
        if let Err(e) = result {
            tracing::warn!(error = %self.redact(&e), "the final offset commit failed; messages since the previous commit are delivered again");
        }
    }

    /// Waits (up to `revoke_drain_timeout`, as a revocation does) for requeues and dead
    /// letters under way, commits the completed prefix of every partition and leaves the
    /// group. Without the wait, a copy confirmed after the final commit would finish its
    /// offset too late: the message would be delivered again besides being copied.
    /// Dropping the consumer closes it: librdkafka revokes the assignment (the revoke
    /// callback commits anything that finished meanwhile, without waiting) and leaves the
    /// group.
    fn shutdown(self) {
        let drain_timeout = self.consumer.context().drain_timeout;
        let still_underway = self.shared.wait_underway(Instant::now() + drain_timeout);
        if still_underway > 0 {
            tracing::warn!(
                underway = still_underway,
                timeout = ?drain_timeout,
                "closing while requeues or dead letters still wait for the broker after revoke_drain_timeout; \
                 their messages stay uncommitted and are delivered again, even if the copy is written"
            );
        }
        self.commit_now();
        let health = self.consumer.context().client.health().clone();
        let shared = self.shared.clone();
        drop(self.consumer);
        health.closed();
        shared.ready.notify_one();
        tracing::debug!("Kafka consumer closed");
    }
}
