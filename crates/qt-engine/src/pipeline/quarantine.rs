//! What the pipeline remembers of batches that panicked, so a message whose processing
//! panics is found and dead-lettered instead of panicking again on every redelivery.
//!
//! The steps a message goes through alone (parsing, extraction, governance, the agent)
//! catch a panic themselves and end that message as `Panicked`. A panic in a step a batch
//! takes together (its idempotency claims, its ledger write, its settlements) costs the
//! whole batch: its unsettled messages are left to the broker, which delivers them again.
//! The batch's messages are then *suspects*, and each runs as a batch of its own when it
//! comes back. A batch of one that panics names its message: it is *poisoned*, and when it
//! comes back it is not run again but dead-lettered as a permanent failure with the panic's
//! message.
//!
//! Messages are known by a fingerprint of their queue and message id: every adapter gives
//! a redelivered message the id it had before.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use qt_core::{Delivery, RawMessage};

/// How many messages each list holds at most: a panic is a bug, not traffic, and a list
/// that filled up would only mean a message runs once more in a full batch.
const CAPACITY: usize = 65_536;
/// A suspect or poisoned message that has not come back by then was settled elsewhere (or
/// its batch got as far as settling it), and is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A message's identity across deliveries.
pub(crate) type Fingerprint = u64;

#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    /// Set while either list holds anything, so intake sorts batches only then.
    active: AtomicBool,
    hasher: foldhash::fast::FixedState,
    lists: parking_lot::Mutex<Lists>,
}

#[derive(Debug, Default)]
struct Lists {
    suspects: HashMap<Fingerprint, Instant>,
    poisoned: HashMap<Fingerprint, (String, Instant)>,
}

/// A received batch sorted out: what runs together, what runs alone, and what is
/// dead-lettered without running (with the panic it caused before).
#[derive(Debug)]
pub(crate) struct Sorted<T> {
    pub together: Vec<T>,
    pub alone: Vec<T>,
    pub poisoned: Vec<(T, String)>,
}

impl Quarantine {
    pub fn fingerprint(&self, message: &RawMessage) -> Fingerprint {
        self.hasher.hash_one((&*message.source.queue, &message.message_id))
    }

    /// Whether any message is remembered; read for every batch, written only after a panic.
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Remembers a batch that panicked. One message: it is poisoned. More: each is a
    /// suspect, to run alone when it comes back.
    pub fn batch_panicked(&self, fingerprints: &[Fingerprint], panic: &str) {
        let now = Instant::now();
        let mut lists = self.lists.lock();
        lists.forget_old(now);
        match fingerprints {
            [one] => {
                lists.suspects.remove(one);
                if lists.poisoned.len() < CAPACITY {
                    lists.poisoned.insert(*one, (panic.to_owned(), now));
                }
            }
            many => {
                for f in many {
                    if lists.suspects.len() < CAPACITY {
                        lists.suspects.insert(*f, now);
                    }
                }
            }
        }
        self.active.store(lists.is_active(), Relaxed);
    }

    /// Sorts a received batch, `extra` travelling with each delivery (its in-flight
    /// permit). Each suspect or poisoned message is taken off its list as it is sorted out:
    /// it is handled by this delivery.
    pub fn sort<E>(&self, deliveries: Vec<Delivery>, extra: Vec<E>) -> Sorted<(Delivery, E)> {
        let mut sorted = Sorted {
            together: Vec::new(),
            alone: Vec::new(),
            poisoned: Vec::new(),
        };
        let mut lists = self.lists.lock();
        for (delivery, e) in deliveries.into_iter().zip(extra) {
            let f = self.fingerprint(&delivery.message);
            if let Some((panic, _)) = lists.poisoned.remove(&f) {
                sorted.poisoned.push(((delivery, e), panic));
            } else if lists.suspects.remove(&f).is_some() {
                sorted.alone.push((delivery, e));
            } else {
                sorted.together.push((delivery, e));
            }
        }
        self.active.store(lists.is_active(), Relaxed);
        sorted
    }
}

impl Lists {
    fn is_active(&self) -> bool {
        !self.suspects.is_empty() || !self.poisoned.is_empty()
    }

    fn forget_old(&mut self, now: Instant) {
        self.suspects.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
        self.poisoned
            .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::{AckHandle, Settle, SettleError, Settlement, SourceInfo};

    struct Nothing;

    #[async_trait::async_trait]
    impl Settle for Nothing {
        async fn settle(self: Box<Self>, _: Settlement) -> Result<(), SettleError> {
            Ok(())
        }
    }

    fn delivery(id: &str) -> Delivery {
        Delivery {
            message: RawMessage::new(id, &b"{}"[..], SourceInfo::new("mock", "q")),
            handle: AckHandle::new(Nothing),
        }
    }

    fn ids<E>(list: &[(Delivery, E)]) -> Vec<&str> {
        list.iter().map(|(d, _)| d.message.message_id.as_str()).collect()
    }

    #[test]
    fn a_panicked_batchs_messages_run_alone_once_and_a_lone_panic_poisons_its_message() {
        let q = Quarantine::default();
        assert!(!q.is_active());
        let batch = [delivery("a"), delivery("b"), delivery("c")];
        let prints: Vec<_> = batch.iter().map(|d| q.fingerprint(&d.message)).collect();
        q.batch_panicked(&prints, "boom");
        assert!(q.is_active());

        let sorted = q.sort(vec![delivery("a"), delivery("x"), delivery("b")], vec![(); 3]);
        assert_eq!(ids(&sorted.alone), ["a", "b"]);
        assert_eq!(ids(&sorted.together), ["x"]);
        assert!(sorted.poisoned.is_empty());

        // "b" panicked again, alone: it is poisoned.
        q.batch_panicked(&[prints[1]], "boom in b");
        let sorted = q.sort(vec![delivery("b"), delivery("c"), delivery("a")], vec![(); 3]);
        assert_eq!(sorted.poisoned.len(), 1);
        assert_eq!(sorted.poisoned[0].1, "boom in b");
        assert_eq!(ids(&sorted.alone), ["c"]);
        assert_eq!(ids(&sorted.together), ["a"], "a ran alone once and is trusted again");
        assert!(!q.is_active(), "every remembered message was handled");
    }

    #[test]
    fn the_same_id_on_another_queue_is_another_message() {
        let q = Quarantine::default();
        let here = RawMessage::new("m", &b""[..], SourceInfo::new("mock", "q"));
        let there = RawMessage::new("m", &b""[..], SourceInfo::new("mock", "other"));
        assert_ne!(q.fingerprint(&here), q.fingerprint(&there));
    }
}
