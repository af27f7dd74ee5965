//! An in-process idempotency store: right for one instance and for tests.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Claim, ClaimState, ClaimToken, Health, IdempotencyKey, IdempotencyStore, StoreError};

#[derive(Debug)]
enum Marker {
    InFlight { token: u64, until: Instant },
    Done { until: Instant },
}

impl Marker {
    fn live(&self, now: Instant) -> bool {
        match self {
            Marker::InFlight { until, .. } | Marker::Done { until } => *until > now,
        }
    }
}

const SHARDS: usize = 16;
/// Expired entries are swept from a shard once it has grown by this many inserts.
const SWEEP_EVERY: usize = 4096;

/// Keys are hashed on every claim and completion; foldhash, seeded per process, is several
/// times cheaper than the default SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Shard {
    entries: FastMap<IdempotencyKey, Marker>,
    inserts_since_sweep: usize,
}

/// Claims are atomic per key (one lock per shard), leases and windows expire by time. Keys
/// are (tenant, key) pairs, so tenants never share one; a key prefix has no use inside one
/// process.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    next_token: AtomicU64,
    hasher: foldhash::fast::RandomState,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            next_token: AtomicU64::new(1),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &IdempotencyKey) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Keys currently remembered (in flight or done), for tests and status.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| s.lock().entries.values().filter(|m| m.live(now)).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn claim_now(&self, key: &IdempotencyKey, lease: Duration, now: Instant) -> Claim {
        let mut shard = self.shard(key).lock();
        if let Some(marker) = shard.entries.get(key)
            && marker.live(now)
        {
            return match marker {
                Marker::InFlight { .. } => Claim::InFlight,
                Marker::Done { .. } => Claim::Completed,
            };
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        shard.entries.insert(
            key.clone(),
            Marker::InFlight {
                token,
                until: now + lease,
            },
        );
        shard.inserts_since_sweep += 1;
        if shard.inserts_since_sweep >= SWEEP_EVERY {
            shard.inserts_since_sweep = 0;
            shard.entries.retain(|_, m| m.live(now));
        }
        Claim::Acquired(ClaimToken {
            key: key.clone(),
            token: token.to_string(),
        })
    }

    /// Applies `f` to the marker if `token` still holds it.
    fn with_held(&self, token: &ClaimToken, now: Instant, f: impl FnOnce(&mut Shard, &IdempotencyKey)) -> ClaimState {
        let wanted: Option<u64> = token.token.parse().ok();
        let mut shard = self.shard(&token.key).lock();
        let held = matches!(
            shard.entries.get(&token.key),
            Some(Marker::InFlight { token: t, until }) if *until > now && Some(*t) == wanted
        );
        if held {
            f(&mut shard, &token.key);
            ClaimState::Held
        } else {
            ClaimState::Lost
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        Ok(self.claim_now(key, lease, Instant::now()))
    }

    async fn claim_batch(&self, keys: &[IdempotencyKey], lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let now = Instant::now();
        Ok(keys.iter().map(|k| self.claim_now(k, lease, now)).collect())
    }

    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        let now = Instant::now();
        Ok(self.with_held(token, now, |shard, key| {
            if let Some(m) = shard.entries.get_mut(key) {
                *m = Marker::Done { until: now + window };
            }
        }))
    }

    async fn complete_batch(&self, tokens: &[ClaimToken], window: Duration) -> Result<Vec<ClaimState>, StoreError> {
        let now = Instant::now();
        Ok(tokens
            .iter()
            .map(|token| {
                self.with_held(token, now, |shard, key| {
                    if let Some(m) = shard.entries.get_mut(key) {
                        *m = Marker::Done { until: now + window };
                    }
                })
            })
            .collect())
    }

    async fn release_batch(&self, tokens: &[ClaimToken]) -> Result<Vec<ClaimState>, StoreError> {
        let now = Instant::now();
        Ok(tokens
            .iter()
            .map(|token| {
                self.with_held(token, now, |shard, key| {
                    shard.entries.remove(key);
                })
            })
            .collect())
    }

    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        Ok(self.with_held(token, Instant::now(), |shard, key| {
            shard.entries.remove(key);
        }))
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

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
