//! An in-process idempotency store: right for one instance and for tests.

mod table;

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Claim, ClaimState, ClaimToken, Health, IdempotencyKey, IdempotencyStore, StoreError};
use siphasher::sip128::{Hasher128, SipHasher13};

use table::{Entry, Slot, Table};

const SHARDS: usize = 16;
/// A shard is swept of expired entries once it took in as many new keys as it held after
/// its last sweep (at least this many), so a sweep costs O(1) per insert however large the
/// window is, and expired entries never make up more than about half of a shard.
const MIN_SWEEP_EVERY: usize = 4096;
/// The token of an entry whose claim completed.
const DONE: u64 = 0;

/// A key's 128-bit fingerprint: SipHash-1-3 of (tenant, key) under a secret key drawn per
/// store. The store remembers fingerprints, not keys: the window holds every key it saw
/// (a million is an ordinary day), and fixed 32-byte entries with no allocation of their
/// own make a claim, and the table's growth, several times cheaper than storing the
/// strings. Two distinct keys share a fingerprint with probability about n²/2¹²⁹ (below
/// 10⁻²¹ for a billion keys), and the secret key keeps senders from aiming for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint(u128);

impl Fingerprint {
    /// The table's key: the bits the shard choice does not use decide the slot.
    fn table_key(self) -> u128 {
        self.0
    }

    fn shard(self) -> usize {
        (self.0 >> 64) as usize % SHARDS
    }
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.until > now
    }
}

/// `d` after `now`, in store nanoseconds.
fn nanos_after(now: u64, d: Duration) -> u64 {
    now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Debug, Default)]
struct Shard {
    entries: Table,
    inserts_since_sweep: usize,
    sweep_every: usize,
}

impl Shard {
    fn note_insert(&mut self, now: u64) {
        self.inserts_since_sweep += 1;
        if self.inserts_since_sweep >= self.sweep_every.max(MIN_SWEEP_EVERY) {
            self.entries.retain(|e| e.live(now));
            self.inserts_since_sweep = 0;
            self.sweep_every = self.entries.len();
        }
    }

    /// Claims one key under `token`.
    fn claim(&mut self, fingerprint: Fingerprint, token: u64, until: u64, now: u64) -> Answer {
        match self.entries.find(fingerprint.table_key()) {
            Slot::Occupied(i) => {
                let entry = self.entries.get_mut(i);
                if entry.live(now) {
                    return if entry.token == DONE {
                        Answer::Completed
                    } else {
                        Answer::InFlight
                    };
                }
                entry.token = token;
                entry.until = until;
            }
            Slot::Vacant(i) => {
                self.entries.insert(
                    i,
                    Entry {
                        fingerprint: fingerprint.table_key(),
                        token,
                        until,
                    },
                );
                self.note_insert(now);
            }
        }
        Answer::Acquired
    }

    /// Completes (`Some(until)`: done until then) or releases (`None`) a claim, if `token`
    /// still holds it.
    fn settle(&mut self, fingerprint: Fingerprint, token: u64, done_until: Option<u64>, now: u64) -> ClaimState {
        let Slot::Occupied(i) = self.entries.find(fingerprint.table_key()) else {
            return ClaimState::Lost;
        };
        let entry = self.entries.get_mut(i);
        if !entry.live(now) || entry.token != token {
            return ClaimState::Lost;
        }
        match done_until {
            Some(until) => {
                entry.token = DONE;
                entry.until = until;
            }
            None => self.entries.remove(i),
        }
        ClaimState::Held
    }
}

/// A claim's answer before its token is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Acquired,
    InFlight,
    Completed,
}

/// Claims are atomic per key (one lock per shard), leases and windows expire by time. Keys
/// are (tenant, key) pairs, so tenants never share one; a key prefix has no use inside one
/// process.
///
/// A batch takes each shard's lock once for all of its keys in that shard, and reads the
/// slots of all of them before it looks at any (see `table`): in a table larger than the
/// caches, each key costs a miss, and this way they overlap.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    next_token: AtomicU64,
    /// The secret key of [`Fingerprint`]s.
    sip_key: [u8; 16],
    /// What entry times count from.
    epoch: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A store with room for `keys` keys before its table has to grow (see
    /// `MemoryStoreConfig::capacity`).
    pub fn with_capacity(keys: usize) -> Self {
        // Keys spread evenly over the shards only on average; the slack keeps a shard that
        // drew a few more than its share from doubling for them.
        let per_shard = keys.div_ceil(SHARDS);
        let per_shard = per_shard + per_shard / 16;
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: Table::with_capacity(per_shard),
                        ..Shard::default()
                    })
                })
                .collect(),
            next_token: AtomicU64::new(DONE + 1),
            sip_key: rand::random(),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the store's start to `at` (saturating: 584 years fit).
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn fingerprint(&self, key: &IdempotencyKey) -> Fingerprint {
        let mut h = SipHasher13::new_with_key(&self.sip_key);
        // The derived `Hash` of (Option<tenant>, key) ends each string with a marker, so
        // no tenant/key split of the same bytes hashes alike.
        key.hash(&mut h);
        // 0 marks an empty slot; a key hashing to it shares 1's fingerprint instead.
        Fingerprint(h.finish128().as_u128().max(1))
    }

    /// Keys currently remembered (in flight or done), for tests and status.
    pub fn len(&self) -> usize {
        let now = self.nanos(Instant::now());
        self.shards
            .iter()
            .map(|s| s.lock().entries.iter().filter(|e| e.live(now)).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fencing tokens for `n` claims, taken from the shared counter in one step.
    fn tokens(&self, n: usize) -> u64 {
        self.next_token.fetch_add(n as u64, Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    /// Runs `each(shard, i)` for every `i` of `fingerprints`, grouped by shard: one lock per
    /// shard, whose keys' slots are all touched before the first is looked at. Within a
    /// shard (so for any one key) the order is that of `fingerprints`.
    fn by_shard(&self, fingerprints: &[Fingerprint], mut each: impl FnMut(&mut Shard, usize)) {
        let mut order = vec![0u32; fingerprints.len()];
        let mut starts = [0usize; SHARDS + 1];
        for f in fingerprints {
            starts[f.shard() + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut fill = starts;
        for (i, f) in fingerprints.iter().enumerate() {
            let slot = &mut fill[f.shard()];
            order[*slot] = u32::try_from(i).expect("a batch holds fewer than 2³² keys");
            *slot += 1;
        }
        for s in 0..SHARDS {
            let group = &order[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            let mut shard = self.shards[s].lock();
            for &i in group {
                shard.entries.touch(fingerprints[i as usize].table_key());
            }
            for &i in group {
                each(&mut shard, i as usize);
            }
        }
    }

    /// Completes (`Some(window)`: done for that long) or releases (`None`) a batch of
    /// claims (see [`Shard::settle`]).
    fn settle_batch(&self, tokens: &[ClaimToken], window: Option<Duration>) -> Vec<ClaimState> {
        let now = self.now();
        let done_until = window.map(|w| nanos_after(now, w));
        let fingerprints: Vec<Fingerprint> = tokens.iter().map(|t| self.fingerprint(&t.key)).collect();
        let mut states = vec![ClaimState::Lost; tokens.len()];
        self.by_shard(&fingerprints, |shard, i| {
            // Tokens this store made are below 2⁶⁴ and never DONE; any other is not ours.
            if let Some(token) = u64::try_from(tokens[i].token).ok().filter(|t| *t != DONE) {
                states[i] = shard.settle(fingerprints[i], token, done_until, now);
            }
        });
        states
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        let mut claims = self.claim_batch(vec![key.clone()], lease).await?;
        Ok(claims.pop().expect("one claim per key"))
    }

    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let now = self.now();
        let until = nanos_after(now, lease);
        let first_token = self.tokens(keys.len());
        let fingerprints: Vec<Fingerprint> = keys.iter().map(|k| self.fingerprint(k)).collect();
        let mut answers = vec![Answer::InFlight; keys.len()];
        self.by_shard(&fingerprints, |shard, i| {
            answers[i] = shard.claim(fingerprints[i], first_token + i as u64, until, now);
        });
        Ok(keys
            .into_iter()
            .zip(answers)
            .enumerate()
            .map(|(i, (key, answer))| match answer {
                Answer::Acquired => Claim::Acquired(ClaimToken {
                    key,
                    token: u128::from(first_token + i as u64),
                }),
                Answer::InFlight => Claim::InFlight,
                Answer::Completed => Claim::Completed,
            })
            .collect())
    }

    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        Ok(self.complete_batch(std::slice::from_ref(token), window).await?[0])
    }

    async fn complete_batch(&self, tokens: &[ClaimToken], window: Duration) -> Result<Vec<ClaimState>, StoreError> {
        Ok(self.settle_batch(tokens, Some(window)))
    }

    async fn release_batch(&self, tokens: &[ClaimToken]) -> Result<Vec<ClaimState>, StoreError> {
        Ok(self.settle_batch(tokens, None))
    }

    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        Ok(self.release_batch(std::slice::from_ref(token)).await?[0])
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(t: Option<&str>, k: &str) -> IdempotencyKey {
        IdempotencyKey::new(t, k)
    }

    #[test]
    fn a_sized_store_has_room_for_its_keys_from_the_start() {
        let s = MemoryStore::with_capacity(16_000);
        for shard in &s.shards {
            assert!(shard.lock().entries.capacity() >= 1_000);
        }
        assert!(MemoryStore::new().shards[0].lock().entries.capacity() < 1_000);
    }

    #[tokio::test]
    async fn claim_complete_release_cycle() {
        let s = MemoryStore::new();
        let Claim::Acquired(tok) = s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap(),
            Claim::InFlight
        );
        assert_eq!(s.release(&tok).await.unwrap(), ClaimState::Held);
        let Claim::Acquired(tok) = s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            s.complete(&tok, Duration::from_secs(5)).await.unwrap(),
            ClaimState::Held
        );
        assert_eq!(
            s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap(),
            Claim::Completed
        );
        // A finished token cannot release the done marker.
        assert_eq!(s.release(&tok).await.unwrap(), ClaimState::Lost);
    }

    #[tokio::test]
    async fn expired_lease_cannot_touch_the_next_claim() {
        let s = MemoryStore::new();
        let Claim::Acquired(old) = s.claim(&key(None, "a"), Duration::from_millis(20)).await.unwrap() else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(40)).await;
        let Claim::Acquired(_new) = s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap() else {
            panic!("lease should have expired")
        };
        assert_eq!(
            s.complete(&old, Duration::from_secs(5)).await.unwrap(),
            ClaimState::Lost
        );
        assert_eq!(s.release(&old).await.unwrap(), ClaimState::Lost);
        assert_eq!(
            s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap(),
            Claim::InFlight
        );
    }

    #[tokio::test]
    async fn window_expiry_lets_a_key_run_again() {
        let s = MemoryStore::new();
        let Claim::Acquired(t) = s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap() else {
            panic!()
        };
        s.complete(&t, Duration::from_millis(20)).await.unwrap();
        assert_eq!(
            s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap(),
            Claim::Completed
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(matches!(
            s.claim(&key(None, "a"), Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn tenant_and_key_boundaries_stay_apart() {
        let s = MemoryStore::new();
        let lease = Duration::from_secs(5);
        let keys = [
            key(None, "abc"),
            key(Some(""), "abc"),
            key(Some("a"), "bc"),
            key(Some("ab"), "c"),
            key(Some("abc"), ""),
        ];
        for k in &keys {
            assert!(matches!(s.claim(k, lease).await.unwrap(), Claim::Acquired(_)), "{k:?}");
        }
        for k in &keys {
            assert_eq!(s.claim(k, lease).await.unwrap(), Claim::InFlight, "{k:?}");
        }
        // A token naming another tenant's key holds nothing.
        let Claim::Acquired(mut tok) = s.claim(&key(Some("t"), "x"), lease).await.unwrap() else {
            panic!()
        };
        tok.key = key(Some("u"), "x");
        assert_eq!(s.complete(&tok, lease).await.unwrap(), ClaimState::Lost);
    }

    /// Entries held, expired or not.
    fn stored(s: &MemoryStore) -> usize {
        s.shards.iter().map(|sh| sh.lock().entries.len()).sum()
    }

    #[tokio::test]
    async fn expired_entries_are_swept_as_new_keys_arrive() {
        let s = MemoryStore::new();
        let short = Duration::from_millis(1);
        let n = MIN_SWEEP_EVERY * SHARDS * 2;
        for i in 0..n {
            s.claim(&key(None, &format!("old-{i}")), short).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        for i in 0..n {
            s.claim(&key(None, &format!("new-{i}")), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(s.len(), n, "every new key is remembered");
        assert!(
            stored(&s) < n + n / 2,
            "expired keys linger: {} stored for {n} live",
            stored(&s)
        );
        // Re-claiming an expired key reuses its entry.
        assert!(matches!(
            s.claim(&key(None, "old-0"), Duration::from_secs(60)).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A batch answers as the same claims one by one would, in its own order: a key
        /// repeated in the batch is acquired where it first comes and in flight after.
        #[test]
        fn a_batch_claims_like_single_claims_in_order(picks in prop::collection::vec((0usize..3, 0usize..40), 1..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let lease = Duration::from_secs(5);
                let keys: Vec<IdempotencyKey> = picks
                    .iter()
                    .map(|(t, k)| IdempotencyKey::new((*t > 0).then(|| format!("t{t}")).as_deref(), &format!("k{k}")))
                    .collect();
                let batched = MemoryStore::new().claim_batch(keys.clone(), lease).await.unwrap();
                let single = MemoryStore::new();
                let mut seen = std::collections::HashSet::new();
                for (k, got) in keys.iter().zip(&batched) {
                    let first = seen.insert(k.clone());
                    let expected = single.claim(k, lease).await.unwrap();
                    prop_assert_eq!(first, matches!(got, Claim::Acquired(t) if t.key == *k), "{:?}: {:?}", k, got);
                    prop_assert_eq!(std::mem::discriminant(got), std::mem::discriminant(&expected));
                }
                Ok(())
            })?;
        }

        /// Distinct (tenant, key) pairs are remembered apart: each is acquired once, then
        /// seen in flight, whatever bytes the tenant and key hold.
        #[test]
        fn distinct_keys_are_remembered_apart(keys in prop::collection::hash_set((prop::option::of(".{0,6}"), ".{0,12}"), 1..64)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let s = MemoryStore::new();
                let lease = Duration::from_secs(5);
                let keys: Vec<IdempotencyKey> = keys.iter().map(|(t, k)| IdempotencyKey::new(t.as_deref(), k)).collect();
                for k in &keys {
                    prop_assert!(matches!(s.claim(k, lease).await.unwrap(), Claim::Acquired(_)), "{:?}", k);
                }
                for k in &keys {
                    prop_assert_eq!(s.claim(k, lease).await.unwrap(), Claim::InFlight);
                }
                Ok(())
            })?;
        }

        /// Idempotency: of many concurrent claims of one key exactly one is acquired, and
        /// tenants never share a key.
        #[test]
        fn exactly_one_concurrent_claim_per_tenant_key(claimers in 2usize..16, tenants in prop::collection::btree_set("[a-c]{1,2}", 1..4)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
            rt.block_on(async {
                let s = std::sync::Arc::new(MemoryStore::new());
                let mut tasks = Vec::new();
                for t in &tenants {
                    for _ in 0..claimers {
                        let s = s.clone();
                        let t = t.clone();
                        tasks.push(tokio::spawn(async move {
                            (t.clone(), s.claim(&IdempotencyKey::new(Some(&t), "same"), Duration::from_secs(5)).await.unwrap())
                        }));
                    }
                }
                let mut acquired = std::collections::BTreeMap::<String, usize>::new();
                for task in tasks {
                    let (t, c) = task.await.unwrap();
                    if matches!(c, Claim::Acquired(_)) {
                        *acquired.entry(t).or_default() += 1;
                    }
                }
                prop_assert_eq!(acquired.len(), tenants.len());
                prop_assert!(acquired.values().all(|n| *n == 1));
                Ok(())
            })?;
        }
    }
}
