//! Completions and releases Redis did not confirm, kept until it does.
//!
//! When Redis goes away, the engine's `complete` of a message that did run fails, and the
//! claim would stay `inflight` until its lease ends: meanwhile every duplicate is deferred,
//! and once the lease is over a duplicate runs again — a second run of a message that
//! succeeded. A failed `release` keeps a key blocked for the rest of its lease, and a claim
//! whose answer was lost (Redis went away mid-exchange) may hold a key nobody will ever
//! complete or release.
//!
//! So the store owes Redis that work: every completion or release whose outcome is unknown
//! becomes a debt, sent ahead of every operation in the same pipeline until Redis confirms
//! it (so a claim sent after Redis is back always sees the completion first), and by a
//! background task while no operation comes. A debt leaves the books only once Redis
//! answered it; two senders may pay the same debt at once, which is harmless: the scripts
//! are idempotent and act only on the caller's token, so paying a debt Redis had in fact
//! already settled changes nothing, and a debt paid after the lease ended and another
//! worker took the key is refused.
//!
//! Debts live in this process only: if it exits first, the claims expire with their lease
//! as before. At most [`MAX_DEBTS`] are kept; beyond that the oldest are dropped (they
//! still expire with their lease).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::RedisResult;

use crate::scripts::{Call, Codes, KEYS_PER_CALL, Scripts, decode_held};

/// Most debts kept at once.
pub const MAX_DEBTS: usize = 100_000;

/// Most debts paid ahead of one operation, so that a long outage's backlog does not make
/// the first operations after it slow; the background payer takes larger bites.
pub const PAID_AHEAD: usize = 1024;
pub const PAID_IN_BACKGROUND: usize = 8192;

/// What is owed for one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Mark it done for the window (milliseconds, as sent to Redis).
    Complete {
        window_ms: String,
    },
    Release,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debt {
    pub redis_key: String,
    pub token: String,
    pub settle: Settle,
}

/// What [`Debts::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub first: bool,
    pub dropped: usize,
}

/// The debts of one store, oldest first.
#[derive(Debug, Default)]
pub struct Debts {
    queue: Mutex<VecDeque<Debt>>,
    /// Whether a background task is paying them.
    repaying: AtomicBool,
}

impl Debts {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Debt>> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds debts. Says whether the books were empty before (the start of an outage, as
    /// far as this store can tell) and how many old debts had to be dropped to stay within
    /// the bound.
    pub fn add(&self, debts: impl IntoIterator<Item = Debt>) -> Added {
        let mut q = self.lock();
        let first = q.is_empty();
        q.extend(debts);
        Added {
            first,
            dropped: trim(&mut q),
        }
    }

    /// Copies of the oldest debts, at most `limit`, to pay them. They stay owed until
    /// [`Debts::forget`] is told Redis answered them.
    pub fn oldest(&self, limit: usize) -> Vec<Debt> {
        self.lock().iter().take(limit).cloned().collect()
    }

    /// Drops the debts of these tokens (Redis answered them); returns how many were still
    /// owed.
    pub fn forget<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) -> usize {
        let tokens: HashSet<&str> = tokens.into_iter().collect();
        if tokens.is_empty() {
            return 0;
        }
        let mut q = self.lock();
        let before = q.len();
        q.retain(|d| !tokens.contains(d.token.as_str()));
        before - q.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks a background payer as started; false when one already runs.
    pub fn start_repaying(&self) -> bool {
        !self.repaying.swap(true, Ordering::AcqRel)
    }

    /// The background payer stops. Returns true when debts arrived meanwhile and it
    /// should go on instead (it is then marked running again).
    pub fn stop_repaying(&self) -> bool {
        self.repaying.store(false, Ordering::Release);
        !self.is_empty() && self.start_repaying()
    }
}

fn trim(q: &mut VecDeque<Debt>) -> usize {
    let excess = q.len().saturating_sub(MAX_DEBTS);
    q.drain(..excess);
    excess
}

/// Debts turned into calls, remembering which debts each call pays.
#[derive(Debug, Default)]
pub struct Repayment<'s> {
    pub calls: Vec<Call<'s>>,
    groups: Vec<Vec<Debt>>,
}

/// What Redis answered to debts, by token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Paid {
    /// Settled as asked.
    pub settled: Vec<String>,
    /// Completions Redis refused: the claim had expired (or Redis lost it) before the debt
    /// was paid, so the key may run again.
    pub expired_completions: Vec<String>,
    /// Releases that found nothing to release: fine, the key is free either way.
    pub nothing_to_release: Vec<String>,
    /// Not answered this time (an error reply); still owed.
    pub unpaid: usize,
}

impl<'s> Repayment<'s> {
    pub fn new(scripts: &'s Scripts, debts: Vec<Debt>) -> Self {
        let mut completes: BTreeMap<String, Vec<Debt>> = BTreeMap::new();
        let mut releases = Vec::new();
        for d in debts {
            match &d.settle {
                Settle::Complete { window_ms } => completes.entry(window_ms.clone()).or_default().push(d),
                Settle::Release => releases.push(d),
            }
        }
        let mut out = Self::default();
        let groups = completes
            .into_iter()
            .map(|(w, ds)| (&scripts.complete, Some(w), ds))
            .chain(std::iter::once((&scripts.release, None, releases)));
        for (script, shared, debts) in groups {
            for chunk in debts.chunks(KEYS_PER_CALL) {
                out.calls.push(Call {
                    script,
                    cmd: script.call(
                        shared.as_deref(),
                        chunk.iter().map(|d| (d.redis_key.as_str(), d.token.as_str())),
                    ),
                    keys: chunk.len(),
                });
                out.groups.push(chunk.to_vec());
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    #[cfg(test)]
    fn debts(&self) -> Vec<Debt> {
        self.groups.iter().flatten().cloned().collect()
    }

    /// Splits the calls off to send them, keeping what is needed to read the replies.
    pub fn take_calls(&mut self) -> Vec<Call<'s>> {
        std::mem::take(&mut self.calls)
    }

    /// Reads the replies to the calls, in order.
    pub fn settle(self, replies: Vec<RedisResult<Codes>>) -> Paid {
        let mut paid = Paid::default();
        for (debts, reply) in self.groups.into_iter().zip(replies) {
            match reply {
                Ok(codes) if codes.len() == debts.len() => {
                    for (debt, code) in debts.into_iter().zip(codes) {
                        match (decode_held(code), &debt.settle) {
                            (Some(true), _) => paid.settled.push(debt.token),
                            (Some(false), Settle::Complete { .. }) => paid.expired_completions.push(debt.token),
                            (Some(false), Settle::Release) => paid.nothing_to_release.push(debt.token),
                            (None, _) => paid.unpaid += 1,
                        }
                    }
                }
                _ => paid.unpaid += debts.len(),
            }
        }
        paid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn debt(i: usize, settle: Settle) -> Debt {
        Debt {
            redis_key: format!("p:_:k{i}"),
            token: format!("t{i}"),
            settle,
        }
    }

    fn complete(ms: &str) -> Settle {
        Settle::Complete { window_ms: ms.into() }
    }

    #[test]
    fn the_bound_drops_the_oldest() {
        let debts = Debts::default();
        let added = debts.add((0..MAX_DEBTS).map(|i| debt(i, Settle::Release)));
        assert_eq!(
            added,
            Added {
                first: true,
                dropped: 0
            }
        );
        let added = debts.add([debt(MAX_DEBTS, Settle::Release)]);
        assert_eq!(
            added,
            Added {
                first: false,
                dropped: 1
            }
        );
        let all = debts.oldest(usize::MAX);
        assert_eq!(all.len(), MAX_DEBTS);
        assert_eq!(all[0].token, "t1");
    }

    #[test]
    fn debts_stay_owed_until_forgotten() {
        let debts = Debts::default();
        debts.add([
            debt(0, Settle::Release),
            debt(1, complete("5")),
            debt(2, Settle::Release),
        ]);
        assert_eq!(debts.oldest(2), [debt(0, Settle::Release), debt(1, complete("5"))]);
        assert_eq!(debts.len(), 3, "looking at debts does not pay them");
        assert_eq!(debts.forget(["t1", "t7"]), 1);
        assert_eq!(debts.forget(["t1"]), 0, "paid twice, forgotten once");
        let left: Vec<String> = debts.oldest(10).into_iter().map(|d| d.token).collect();
        assert_eq!(left, ["t0", "t2"]);
    }

    #[test]
    fn only_one_background_payer_runs() {
        let debts = Debts::default();
        assert!(debts.start_repaying());
        assert!(!debts.start_repaying());
        assert!(!debts.stop_repaying(), "nothing owed: the payer may stop");
        debts.add([debt(0, Settle::Release)]);
        assert!(debts.start_repaying());
        assert!(debts.stop_repaying(), "a debt arrived: the payer goes on");
        assert!(!debts.start_repaying());
    }

    #[test]
    fn replies_settle_debts_and_keep_the_unpaid() {
        let scripts = Scripts::new();
        let owed = vec![
            debt(0, complete("1000")),
            debt(1, Settle::Release),
            debt(2, complete("1000")),
            debt(3, complete("2000")),
        ];
        let mut r = Repayment::new(&scripts, owed);
        let calls = r.take_calls();
        // Completions grouped by window, then releases.
        assert_eq!(calls.iter().map(|c| c.keys).collect::<Vec<_>>(), [2, 1, 1]);
        let noperm: redis::RedisError = (redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm), "NOPERM").into();
        let paid = r.settle(vec![Ok(b"10".to_vec()), Ok(b"1".to_vec()), Err(noperm)]);
        assert_eq!(paid.settled, ["t0", "t3"]);
        assert_eq!(paid.expired_completions, ["t2"]);
        assert!(paid.nothing_to_release.is_empty());
        assert_eq!(paid.unpaid, 1, "the release answered NOPERM stays owed");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// However debts are mixed, every one is in exactly one call and no call exceeds
        /// the bound.
        #[test]
        fn every_debt_is_paid_by_exactly_one_call(kinds in proptest::collection::vec(0u8..3, 0..700)) {
            let scripts = Scripts::new();
            let owed: Vec<Debt> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| debt(i, match k { 0 => Settle::Release, 1 => complete("1000"), _ => complete("5") }))
                .collect();
            let mut r = Repayment::new(&scripts, owed.clone());
            let calls = r.take_calls();
            prop_assert!(calls.iter().all(|c| c.keys >= 1 && c.keys <= KEYS_PER_CALL));
            prop_assert_eq!(calls.iter().map(|c| c.keys).sum::<usize>(), owed.len());
            let mut back = r.debts();
            let mut expected = owed;
            back.sort_by(|a, b| a.token.cmp(&b.token));
            expected.sort_by(|a, b| a.token.cmp(&b.token));
            prop_assert_eq!(back, expected);
        }
    }
}
