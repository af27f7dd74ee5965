//! What the consumer knows about its partitions, shared between the poll thread, the
//! rebalance callbacks (which run on the poll thread) and the settle handles (which run on
//! the engine's tasks).
//!
//! Every assignment of a partition gets a fresh epoch. A handle carries the epoch it was
//! delivered under; once the partition is revoked or rewound the epoch changes, and a late
//! settle can no longer move the partition's committed offset.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::message::{self, RecordBytes, UnreadableHeaders};
use crate::offsets::OffsetTracker;

/// Partition lookups happen several times per message; the topic name is hashed each time,
/// so the hasher is a fast one (the keys are broker-assigned, not attacker-chosen).
pub type PartitionMap<V> = HashMap<TopicPartition, V, foldhash::fast::RandomState>;

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// What a settle needs to know about the message it settles, beyond the parsed envelope:
/// where it came from, and its exact key, value and headers for re-producing it.
#[derive(Clone, Debug)]
pub struct Origin {
    pub tp: TopicPartition,
    pub offset: i64,
    pub epoch: u64,
    pub record: RecordBytes,
    /// All the record's headers, when one of them could not be read into `record`.
    pub unreadable: Option<Arc<UnreadableHeaders>>,
}

impl Origin {
    /// The message id (`topic/partition/offset`), for logs and errors.
    pub fn message_id(&self) -> String {
        message::message_id(&self.tp.topic, self.tp.partition, self.offset)
    }
}

/// A message taken from the broker, not yet handed to the engine: its exact bytes and
/// where it came from. Its [`qt_core::RawMessage`] (header strings, key, message id) is
/// made by the engine's thread as it receives the message ([`message::raw_message`]): what
/// the consumer thread allocated would be read and freed on another core, and each such
/// block is a cache miss there and a contended free back here.
#[derive(Debug)]
pub struct Pending {
    pub origin: Origin,
    /// Milliseconds since the Unix epoch, as the broker stamped the record.
    pub broker_timestamp_ms: Option<i64>,
    /// When the poll that took it began.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// Delivered before in this assignment (read again after a rewind).
    pub redelivered: bool,
}

/// A requeued message whose `x-qt-not-before` time has not come yet.
#[derive(Debug)]
pub struct Held {
    pub due: Instant,
    seq: u64,
    pub pending: Pending,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.seq == other.seq
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed, so the max-heap pops the earliest due time first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.due.cmp(&self.due).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A rewind requested after a failed settle or an abandoned handle.
#[derive(Clone, Copy, Debug)]
pub struct Rewind {
    /// Where to seek: the first unfinished offset when the rewind was requested.
    pub target: i64,
    pub due: Instant,
}

#[derive(Debug)]
pub struct PartitionState {
    pub epoch: u64,
    pub tracker: OffsetTracker,
    /// Messages of this epoch the engine holds unsettled.
    pub handed_out: usize,
    /// The offset last stored for commit, so an unchanged position is not stored again.
    pub last_stored: Option<i64>,
    /// Highest offset ever delivered in this assignment, to flag redeliveries after a rewind.
    pub max_delivered: Option<i64>,
    pub rewind: Option<Rewind>,
    /// Whether the partition is paused at the consumer right now.
    pub paused: bool,
    /// Set while the partition is being revoked: settles still count, nothing new is taken.
    pub revoking: bool,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            tracker: OffsetTracker::new(),
            handed_out: 0,
            last_stored: None,
            max_delivered: None,
            rewind: None,
            paused: false,
            revoking: false,
        }
    }
}

/// The outcome of settling one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Counted: the offset may now be committed once the messages before it are done.
    Counted,
    /// The partition was revoked or rewound since the message was delivered; the message
    /// will be delivered again (here or to another group member).
    Stale,
}

/// What a failed settle did, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The partition will be read again from `target` after the redelivery delay.
    Rewinding { target: i64 },
    /// Nothing to do here: the message is stale, the partition is being revoked, or the
    /// consumer is closing; the broker redelivers from the last committed offset.
    LeftToBroker,
}

/// Why a settlement that produces a copy (requeue, dead letter) was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The partition was revoked or rewound since the message was delivered.
    Stale,
    /// The adapter is closing: its final commit would not wait for this copy.
    Closing,
}

#[derive(Debug, Default)]
pub struct State {
    pub partitions: PartitionMap<PartitionState>,
    pub buffer: VecDeque<Pending>,
    pub held: BinaryHeap<Held>,
    next_epoch: u64,
    held_seq: u64,
    pub closing: bool,
    /// Requeues and dead letters started and not yet finished (their copy is waiting for
    /// the broker's acknowledgement). Close waits for them before its final commit.
    pub underway: usize,
    /// Set when the poll thread stopped for good because of an error.
    pub failed: Option<String>,
    /// Rebalance callbacks seen (assignments and revocations).
    pub rebalances: u64,
}

impl State {
    fn fresh_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Starts tracking newly assigned partitions.
    pub fn assign(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            if !self.partitions.contains_key(tp) {
                let epoch = self.fresh_epoch();
                self.partitions.insert(tp.clone(), PartitionState::new(epoch));
            }
        }
        self.rebalances += 1;
    }

    /// Stops taking messages from partitions being revoked: drops what the engine has not
    /// received yet (it was never handed out, so it is simply read again by the next owner).
    pub fn revoke_begin(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.revoking = true;
            }
        }
        self.purge(|tp| tps.contains(tp));
        self.rebalances += 1;
    }

    /// Whether the engine still holds messages of any of these partitions.
    pub fn in_flight(&self, tps: &[TopicPartition]) -> usize {
        tps.iter()
            .filter_map(|tp| self.partitions.get(tp))
            .map(|p| p.handed_out)
            .sum()
    }

    /// Forgets revoked partitions; returns the offsets to commit for them.
    pub fn revoke_finish(&mut self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut commits = Vec::new();
        for tp in tps {
            if let Some(p) = self.partitions.remove(tp)
                && let Some(pos) = p.tracker.committable()
            {
                commits.push((tp.clone(), pos));
            }
        }
        commits
    }

    fn purge(&mut self, matches: impl Fn(&TopicPartition) -> bool) {
        self.buffer.retain(|p| !matches(&p.origin.tp));
        if self.held.iter().any(|h| matches(&h.pending.origin.tp)) {
            let held = std::mem::take(&mut self.held);
            self.held = held.into_iter().filter(|h| !matches(&h.pending.origin.tp)).collect();
        }
    }

    /// Takes a polled message in: registers its offset and queues it for the engine (or
    /// holds it until `not_before`). Returns false when the message was dropped because the
    /// partition is being rewound or revoked, or it duplicates a tracked offset; either way
    /// the offset stays uncommitted or is already accounted for, so nothing is lost.
    pub fn admit(&mut self, mut pending: Pending, not_before: Option<Instant>) -> bool {
        let tp = &pending.origin.tp;
        if !self.partitions.contains_key(tp) {
            // Messages only arrive for assigned partitions; if the assignment callback was
            // not seen (a protocol corner), track the partition rather than lose the message.
            tracing::debug!(partition = %tp, "message for a partition without an assignment callback; tracking it");
            let epoch = self.fresh_epoch();
            self.partitions.insert(tp.clone(), PartitionState::new(epoch));
        }
        let p = self.partitions.get_mut(tp).expect("inserted above");
        if p.rewind.is_some() || p.revoking {
            return false;
        }
        let offset = pending.origin.offset;
        if let Err(e) = p.tracker.register(offset) {
            tracing::debug!(partition = %tp, ?e, "dropping a duplicate of an already tracked message");
            return false;
        }
        if p.max_delivered.is_some_and(|m| offset <= m) {
            pending.redelivered = true;
        }
        p.max_delivered = Some(p.max_delivered.map_or(offset, |m| m.max(offset)));
        pending.origin.epoch = p.epoch;
        match not_before {
            Some(due) => {
                self.held_seq += 1;
                self.held.push(Held {
                    due,
                    seq: self.held_seq,
                    pending,
                });
            }
            None => self.buffer.push_back(pending),
        }
        true
    }

    /// Moves held messages whose time has come to the buffer. Returns how many.
    pub fn release_due(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.held.peek().is_some_and(|h| h.due <= now) {
            let h = self.held.pop().expect("peeked");
            self.buffer.push_back(h.pending);
            n += 1;
        }
        n
    }

    /// When the next held message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.due)
    }

    /// Hands up to `max` buffered messages to the engine. The caller makes them into
    /// deliveries after letting go of the lock, which the consumer thread waits for.
    pub fn take(&mut self, max: usize) -> Vec<Pending> {
        let n = max.min(self.buffer.len());
        let mut taken = Vec::with_capacity(n);
        for pending in self.buffer.drain(..n) {
            if let Some(p) = self.partitions.get_mut(&pending.origin.tp) {
                p.handed_out += 1;
            }
            taken.push(pending);
        }
        taken
    }

    fn current(&mut self, origin: &Origin) -> Option<&mut PartitionState> {
        self.partitions.get_mut(&origin.tp).filter(|p| p.epoch == origin.epoch)
    }

    /// Whether a settle of this message can still count.
    pub fn is_current(&self, origin: &Origin) -> bool {
        self.partitions.get(&origin.tp).is_some_and(|p| p.epoch == origin.epoch)
    }

    /// Starts a settlement that produces a copy before its message is finished. Counted
    /// until [`State::end_underway`], so close can wait for it.
    pub fn begin_underway(&mut self, origin: &Origin) -> Result<(), Refusal> {
        if self.closing {
            return Err(Refusal::Closing);
        }
        if !self.is_current(origin) {
            return Err(Refusal::Stale);
        }
        self.underway += 1;
        Ok(())
    }

    /// A settlement started with [`State::begin_underway`] is over, whatever its outcome.
    pub fn end_underway(&mut self) {
        self.underway = self.underway.saturating_sub(1);
    }

    /// Marks a message finished (acked, nacked, requeued or dead-lettered).
    pub fn complete(&mut self, origin: &Origin) -> Completion {
        match self.current(origin) {
            Some(p) => {
                p.tracker.complete(origin.offset);
                p.handed_out = p.handed_out.saturating_sub(1);
                Completion::Counted
            }
            None => Completion::Stale,
        }
    }

    /// A message could not be settled (or its handle was dropped): its partition is read
    /// again from the first unfinished offset once `delay` has passed. Later messages of
    /// the partition the engine still holds become stale; they are delivered again too.
    pub fn fail(&mut self, origin: &Origin, now: Instant, delay: Duration) -> Failure {
        let closing = self.closing;
        let fresh = self.next_epoch + 1;
        let Some(p) = self.current(origin) else {
            return Failure::LeftToBroker;
        };
        p.handed_out = p.handed_out.saturating_sub(1);
        if closing || p.revoking {
            return Failure::LeftToBroker;
        }
        let Some(target) = p.tracker.rewind() else {
            return Failure::LeftToBroker;
        };
        p.epoch = fresh;
        p.handed_out = 0;
        p.rewind = Some(Rewind {
            target,
            due: now + delay,
        });
        self.next_epoch = fresh;
        let tp = origin.tp.clone();
        self.purge(|t| *t == tp);
        Failure::Rewinding { target }
    }

    /// Rewinds whose delay has passed.
    pub fn due_rewinds(&self, now: Instant) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, p)| p.rewind.filter(|r| r.due <= now).map(|r| (tp.clone(), r.target)))
            .collect()
    }

    /// The seek for a rewind went through (or is retried after `retry_in`).
    pub fn rewind_done(&mut self, tp: &TopicPartition, outcome: Result<(), Instant>) {
        if let Some(p) = self.partitions.get_mut(tp) {
            match outcome {
                Ok(()) => p.rewind = None,
                Err(retry_at) => {
                    if let Some(r) = p.rewind.as_mut() {
                        r.due = retry_at;
                    }
                }
            }
        }
    }

    /// Positions that moved since they were last stored. They are marked stored;
    /// [`State::store_failed`] undoes that.
    pub fn store_candidates(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if p.rewind.is_some() {
                continue;
            }
            if let Some(pos) = p.tracker.committable()
                && p.last_stored != Some(pos)
            {
                p.last_stored = Some(pos);
                out.push((tp.clone(), pos));
            }
        }
        out
    }

    /// Storing an offset failed: try again next time.
    pub fn store_failed(&mut self, tp: &TopicPartition) {
        if let Some(p) = self.partitions.get_mut(tp) {
            p.last_stored = None;
        }
    }

    /// Partitions whose paused state at the consumer differs from what it should be.
    /// Returns (to pause, to resume) and records the new state.
    pub fn pause_changes(&mut self, all_paused: bool) -> (Vec<TopicPartition>, Vec<TopicPartition>) {
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (tp, p) in &mut self.partitions {
            let want = all_paused || p.rewind.is_some();
            if want != p.paused {
                p.paused = want;
                if want {
                    pause.push(tp.clone());
                } else {
                    resume.push(tp.clone());
                }
            }
        }
        (pause, resume)
    }

    /// Records that pausing or resuming these partitions failed, so it is tried again.
    pub fn pause_failed(&mut self, tps: &[TopicPartition], wanted_paused: bool) {
        for tp in tps {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.paused = !wanted_paused;
            }
        }
    }

    /// Partitions being revoked, sorted.
    pub fn revoking(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.revoking)
            .map(|(tp, _)| tp.clone())
            .collect();
        v.sort();
        v
    }

    /// The current assignment, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut v: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        v.sort();
        v
    }

    /// Where each assigned partition would restart: its committable offset, if known.
    pub fn positions(&self) -> Vec<(TopicPartition, Option<i64>)> {
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .map(|(tp, p)| (tp.clone(), p.tracker.committable()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Drops everything not yet received, for close.
    pub fn clear_unreceived(&mut self) {
        self.buffer.clear();
        self.held.clear();
    }
}

/// The state plus the signals around it.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a message of any partition finishes or a requeue or dead letter
    /// is over, for revoke and close draining.
    settled: Condvar,
    /// Signalled when messages become available to `receive` (or the consumer stops).
    pub ready: tokio::sync::Notify,
    /// Signalled when `receive` took messages from the buffer (or the consumer stops).
    room: Condvar,
}

impl Shared {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Wakes a revoke drain waiting for settles.
    pub fn notify_settled(&self) {
        self.settled.notify_all();
    }

    /// Wakes the consumer thread waiting for room in the buffer.
    pub fn notify_room(&self) {
        self.room.notify_one();
    }

    /// Waits until the buffer holds fewer than `capacity` messages, the consumer is closing,
    /// or `deadline` passes.
    pub fn wait_room(&self, capacity: usize, deadline: Instant) {
        let mut st = self.state.lock();
        while st.buffer.len() >= capacity && !st.closing {
            if self.room.wait_until(&mut st, deadline).timed_out() {
                return;
            }
        }
    }

    /// Waits until no requeue or dead letter is under way, or until `deadline`. Returns how
    /// many still are.
    pub fn wait_underway(&self, deadline: Instant) -> usize {
        let mut st = self.state.lock();
        while st.underway > 0 {
            if self.settled.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        st.underway
    }

    /// Waits until the engine holds no message of `tps`, or until `deadline`. Returns how
    /// many are still out.
    pub fn wait_drained(&self, tps: &[TopicPartition], deadline: Instant) -> usize {
        let mut st = self.state.lock();
        loop {
            let out = st.in_flight(tps);
            if out == 0 || st.closing {
                return out;
            }
            if self.settled.wait_until(&mut st, deadline).timed_out() {
                return st.in_flight(tps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(tp: &TopicPartition, offset: i64) -> Pending {
        Pending {
            broker_timestamp_ms: None,
            received_at: chrono::Utc::now(),
            redelivered: false,
            origin: Origin {
                tp: tp.clone(),
                offset,
                epoch: 0,
                record: RecordBytes::default(),
                unreadable: None,
            },
        }
    }

    #[test]
    fn late_settles_after_revoke_do_not_count() {
        let tp = TopicPartition::new("t", 0);
        let mut st = State::default();
        st.assign(std::slice::from_ref(&tp));
        for o in 0..3 {
            assert!(st.admit(pending(&tp, o), None));
        }
        let taken = st.take(10);
        assert_eq!(st.in_flight(std::slice::from_ref(&tp)), 3);
        assert_eq!(st.complete(&taken[0].origin), Completion::Counted);
        st.revoke_begin(std::slice::from_ref(&tp));
        assert_eq!(
            st.complete(&taken[1].origin),
            Completion::Counted,
            "settles during the drain count"
        );
        let commits = st.revoke_finish(std::slice::from_ref(&tp));
        assert_eq!(commits, vec![(tp.clone(), 2)]);
        assert_eq!(st.complete(&taken[2].origin), Completion::Stale);
        // Reassigned: a new epoch, the old handle still does not count.
        st.assign(std::slice::from_ref(&tp));
        assert_eq!(st.complete(&taken[2].origin), Completion::Stale);
    }

    #[test]
    fn a_failed_settle_rewinds_and_stales_later_messages() {
        let tp = TopicPartition::new("t", 1);
        let mut st = State::default();
        st.assign(std::slice::from_ref(&tp));
        for o in 10..15 {
            st.admit(pending(&tp, o), None);
        }
        let taken = st.take(3);
        assert_eq!(st.buffer.len(), 2);
        st.complete(&taken[0].origin);
        let now = Instant::now();
        let f = st.fail(&taken[1].origin, now, Duration::from_millis(5));
        assert_eq!(f, Failure::Rewinding { target: 11 });
        assert!(st.buffer.is_empty(), "buffered messages of the partition are dropped");
        assert_eq!(st.complete(&taken[2].origin), Completion::Stale);
        assert!(
            !st.admit(pending(&tp, 15), None),
            "nothing is taken while the rewind is pending"
        );
        assert!(st.store_candidates().is_empty(), "no commit while rewinding");
        assert!(st.due_rewinds(now).is_empty());
        let due = st.due_rewinds(now + Duration::from_millis(5));
        assert_eq!(due, vec![(tp.clone(), 11)]);
        st.rewind_done(&tp, Ok(()));
        // Read again from 11: flagged as redelivered.
        assert!(st.admit(pending(&tp, 11), None));
        let again = st.take(1);
        assert!(again[0].redelivered);
        st.complete(&again[0].origin);
        assert_eq!(st.store_candidates(), vec![(tp, 12)]);
    }

    #[test]
    fn copies_under_way_are_counted_and_none_start_once_closing() {
        let tp = TopicPartition::new("t", 0);
        let mut st = State::default();
        st.assign(std::slice::from_ref(&tp));
        for o in 0..3 {
            st.admit(pending(&tp, o), None);
        }
        let taken = st.take(3);
        assert_eq!(st.begin_underway(&taken[0].origin), Ok(()));
        assert_eq!(st.underway, 1);
        st.closing = true;
        assert_eq!(st.begin_underway(&taken[1].origin), Err(Refusal::Closing));
        assert_eq!(st.underway, 1, "a refused copy is not counted");
        // The one under way still counts once confirmed, so the final commit includes it.
        assert_eq!(st.complete(&taken[0].origin), Completion::Counted);
        st.end_underway();
        assert_eq!(st.underway, 0);
        assert_eq!(st.positions(), vec![(tp.clone(), Some(1))]);
        st.closing = false;
        st.revoke_begin(std::slice::from_ref(&tp));
        st.revoke_finish(std::slice::from_ref(&tp));
        assert_eq!(st.begin_underway(&taken[2].origin), Err(Refusal::Stale));
    }

    #[test]
    fn held_messages_wait_for_their_time() {
        let tp = TopicPartition::new("t", 0);
        let mut st = State::default();
        st.assign(std::slice::from_ref(&tp));
        let now = Instant::now();
        st.admit(pending(&tp, 0), Some(now + Duration::from_secs(2)));
        st.admit(pending(&tp, 1), None);
        st.admit(pending(&tp, 2), Some(now + Duration::from_secs(1)));
        assert_eq!(st.take(10).len(), 1);
        assert_eq!(st.buffer.len() + st.held.len(), 2);
        assert_eq!(st.next_due(), Some(now + Duration::from_secs(1)));
        assert_eq!(st.release_due(now + Duration::from_secs(1)), 1);
        assert_eq!(st.take(10)[0].origin.offset, 2);
        assert_eq!(st.release_due(now + Duration::from_secs(3)), 1);
        assert_eq!(st.take(10)[0].origin.offset, 0);
    }
}
