//! Coalescing acknowledgements on the consuming channel.
//!
//! Handles are settled from many tasks, often a whole batch at once. Instead of one
//! `basic.ack` per message, a flusher task takes every ack requested since its last round
//! and sends one `basic.ack(multiple=true)` for the longest run of unsettled delivery tags,
//! starting at the lowest, that are all waiting to be acked; acks outside that run go out
//! one by one in the same round, so a slow message never delays the acks of those after it.
//!
//! `multiple=true` acknowledges every unacknowledged delivery up to its tag on the channel,
//! so the run may only cover tags that are known and asked to be acked. Every delivery tag
//! is registered when its delivery arrives (tags on a channel only grow, and the consumer
//! sees them in order), and leaves the register only once its own frame (ack, nack) has been
//! sent; a delivery being nacked, requeued or dead-lettered stays registered and unacked
//! until then, which ends any run below it.
//!
//! A settle returns once its ack frame is written, as with a single `basic.ack`; if the
//! connection dies first, the broker redelivers the message.
//!
//! Closing the adapter drains the batcher ([`AckBatcher::drain`]): every ack already
//! requested is still sent before the connection closes. Losing the connection stops it
//! at once ([`AckBatcher::close`]): there is no channel left to send on.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// What happened to one requested ack.
pub(crate) type AckResult = Result<(), AckFailure>;

#[derive(Clone, Debug)]
pub(crate) enum AckFailure {
    /// The session ended before the ack was sent.
    Closed,
    /// The tag was never delivered on this channel, or was settled already: acking it
    /// would close the channel with a protocol error.
    UnknownTag,
    Broker(lapin::Error),
}

/// The acknowledgement side of one consuming channel.
pub(crate) struct AckBatcher {
    channel: Channel,
    state: parking_lot::Mutex<State>,
    wake: Notify,
    /// Stop now, failing what is queued.
    closed: CancellationToken,
    /// Send what is queued, then stop.
    draining: CancellationToken,
    /// Cancelled once the flusher has stopped.
    finished: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Delivered tags not settled yet; `true` once an ack is requested for the tag.
    unsettled: BTreeMap<u64, bool>,
    /// Requested acks the flusher has not taken yet.
    requests: Vec<(u64, oneshot::Sender<AckResult>)>,
    /// Set when the flusher has stopped; later requests fail at once.
    stopped: bool,
}

/// One round of frames: a multiple ack for a run starting at the lowest unsettled tag, and
/// single acks for the rest.
struct Round {
    run: Option<(u64, Vec<oneshot::Sender<AckResult>>)>,
    singles: Vec<(u64, oneshot::Sender<AckResult>)>,
}

impl State {
    fn take_round(&mut self) -> Option<Round> {
        if self.requests.is_empty() {
            return None;
        }
        let mut run_end = None;
        for (&tag, &ack_requested) in &self.unsettled {
            if !ack_requested {
                break;
            }
            run_end = Some(tag);
        }
        let mut run_waiters = Vec::new();
        let mut singles = Vec::new();
        for (tag, waiter) in std::mem::take(&mut self.requests) {
            self.unsettled.remove(&tag);
            match run_end {
                Some(end) if tag <= end => run_waiters.push(waiter),
                _ => singles.push((tag, waiter)),
            }
        }
        Some(Round {
            run: run_end.map(|end| (end, run_waiters)),
            singles,
        })
    }
}

impl AckBatcher {
    /// A batcher for `channel` with its flusher task running until [`AckBatcher::close`].
    pub(crate) fn start(channel: Channel) -> Arc<Self> {
        let batcher = Arc::new(Self {
            channel,
            state: parking_lot::Mutex::new(State::default()),
            wake: Notify::new(),
            closed: CancellationToken::new(),
            draining: CancellationToken::new(),
            finished: CancellationToken::new(),
        });
        tokio::spawn(Arc::clone(&batcher).flush_loop());
        batcher
    }

    /// Notes a tag the channel delivered. Must be called in delivery order, before the
    /// delivery can be settled.
    pub(crate) fn delivered(&self, tag: u64) {
        self.state.lock().unsettled.insert(tag, false);
    }

    /// Forgets a tag settled by a nack or reject whose frame has been sent (or whose channel
    /// is gone).
    pub(crate) fn settled_otherwise(&self, tag: u64) {
        self.state.lock().unsettled.remove(&tag);
    }

    /// Acks `tag` (once) and waits until the frame carrying the ack was sent.
    pub(crate) async fn ack(&self, tag: u64) -> AckResult {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock();
            if state.stopped {
                return Err(AckFailure::Closed);
            }
            match state.unsettled.get_mut(&tag) {
                Some(requested @ false) => *requested = true,
                _ => return Err(AckFailure::UnknownTag),
            }
            state.requests.push((tag, tx));
        }
        self.wake.notify_one();
        rx.await.unwrap_or(Err(AckFailure::Closed))
    }

    /// Stops the flusher; acks not sent yet fail with [`AckFailure::Closed`].
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Sends every ack requested so far, waits until their frames are written, and stops
    /// the flusher; acks requested after that fail with [`AckFailure::Closed`].
    pub(crate) async fn drain(&self) {
        self.draining.cancel();
        self.finished.cancelled().await;
    }

    async fn flush_loop(self: Arc<Self>) {
        loop {
            let draining = tokio::select! {
                biased;
                () = self.closed.cancelled() => break,
                () = self.draining.cancelled() => true,
                () = self.wake.notified() => false,
            };
            loop {
                let round = {
                    let mut state = self.state.lock();
                    let round = state.take_round();
                    // Stopping under the same lock that found nothing left to send: no ack
                    // can be requested in between and be left unsent.
                    if round.is_none() && draining {
                        state.stopped = true;
                    }
                    round
                };
                let Some(round) = round else { break };
                self.send(round).await;
            }
            if draining {
                break;
            }
        }
        let abandoned = {
            let mut state = self.state.lock();
            state.stopped = true;
            std::mem::take(&mut state.requests)
        };
        for (_, waiter) in abandoned {
            let _ = waiter.send(Err(AckFailure::Closed));
        }
        self.finished.cancel();
    }

    async fn send(&self, round: Round) {
        let run = async {
            if let Some((end, waiters)) = round.run {
                let options = BasicAckOptions {
                    multiple: waiters.len() > 1,
                };
                tracing::trace!(up_to = end, acks = waiters.len(), "basic.ack(multiple)");
                let result = self.channel.basic_ack(end, options).await.map_err(AckFailure::Broker);
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        };
        let singles = join_all(round.singles.into_iter().map(|(tag, waiter)| async move {
            let result = self
                .channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(AckFailure::Broker);
            let _ = waiter.send(result);
        }));
        tokio::join!(run, singles);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::collections::BTreeSet;

    fn request(state: &mut State, tag: u64) -> oneshot::Receiver<AckResult> {
        let (tx, rx) = oneshot::channel();
        *state.unsettled.get_mut(&tag).expect("delivered") = true;
        state.requests.push((tag, tx));
        rx
    }

    fn tags(singles: &[(u64, oneshot::Sender<AckResult>)]) -> Vec<u64> {
        let mut t: Vec<u64> = singles.iter().map(|(tag, _)| *tag).collect();
        t.sort_unstable();
        t
    }

    #[test]
    fn a_run_from_the_lowest_tag_goes_as_one_multiple_ack() {
        let mut s = State::default();
        for tag in 1..=6 {
            s.unsettled.insert(tag, false);
        }
        let _r: Vec<_> = [3, 1, 2, 5].into_iter().map(|t| request(&mut s, t)).collect();
        let round = s.take_round().unwrap();
        let (end, waiters) = round.run.unwrap();
        assert_eq!((end, waiters.len()), (3, 3));
        assert_eq!(tags(&round.singles), [5], "4 is still running, so 5 goes alone");
        assert_eq!(s.unsettled.keys().copied().collect::<Vec<_>>(), [4, 6]);
        assert!(s.take_round().is_none());
    }

    #[test]
    fn a_delivery_being_nacked_ends_the_run() {
        let mut s = State::default();
        for tag in 10..=12 {
            s.unsettled.insert(tag, false);
        }
        // 10 is being nacked: registered, not asked to be acked.
        let _r: Vec<_> = [11, 12].into_iter().map(|t| request(&mut s, t)).collect();
        let round = s.take_round().unwrap();
        assert!(round.run.is_none());
        assert_eq!(tags(&round.singles), [11, 12]);
    }

    /// One flush checked against the broker's view: `broker` holds the unacked tags, and
    /// `requested` the acks asked for since the last flush.
    fn flush(s: &mut State, broker: &mut BTreeSet<u64>, requested: &mut BTreeSet<u64>) -> Result<(), TestCaseError> {
        let Some(round) = s.take_round() else {
            prop_assert!(requested.is_empty());
            return Ok(());
        };
        if let Some((end, waiters)) = round.run {
            // basic.ack(multiple) acks every unacked tag up to `end`.
            let covered: Vec<u64> = broker.range(..=end).copied().collect();
            for tag in &covered {
                prop_assert!(
                    requested.remove(tag),
                    "the run to {} acks {}, which nobody asked to ack",
                    end,
                    tag
                );
                broker.remove(tag);
            }
            prop_assert_eq!(covered.len(), waiters.len());
        }
        for (tag, _) in round.singles {
            prop_assert!(broker.remove(&tag), "{} acked twice", tag);
            prop_assert!(requested.remove(&tag));
        }
        prop_assert!(requested.is_empty(), "every request is answered in its round");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the order of acks, nacks and flushes, a multiple ack never covers a tag
        /// nobody asked to ack, every requested ack is sent exactly once, and the register
        /// ends empty.
        #[test]
        fn multiple_acks_only_cover_requested_tags(
            delivered in 1u64..60,
            steps in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..200),
        ) {
            let mut s = State::default();
            let mut broker: BTreeSet<u64> = (1..=delivered).collect();
            for tag in 1..=delivered {
                s.unsettled.insert(tag, false);
            }
            let mut untouched: Vec<u64> = (1..=delivered).collect();
            let mut requested = BTreeSet::new();
            let mut receivers = Vec::new();
            for (index, op) in steps {
                match op {
                    0 | 1 if !untouched.is_empty() => {
                        let tag = untouched.remove(index.index(untouched.len()));
                        if op == 0 {
                            receivers.push(request(&mut s, tag));
                            requested.insert(tag);
                        } else {
                            // A nack whose frame was sent.
                            s.unsettled.remove(&tag);
                            broker.remove(&tag);
                        }
                    }
                    _ => flush(&mut s, &mut broker, &mut requested)?,
                }
            }
            for tag in untouched {
                receivers.push(request(&mut s, tag));
                requested.insert(tag);
            }
            flush(&mut s, &mut broker, &mut requested)?;
            prop_assert!(broker.is_empty(), "left unacked: {:?}", broker);
            prop_assert!(s.unsettled.is_empty());
        }
    }
}
