//! The idempotency store: claim a key before running, complete it after (requirement 6).

use std::time::Duration;

use async_trait::async_trait;

use crate::health::Health;

/// A tenant-scoped idempotency key. Two tenants' identical keys never collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub tenant: Option<String>,
    pub key: String,
}

impl IdempotencyKey {
    pub fn new(tenant: Option<&str>, key: &str) -> Self {
        Self {
            tenant: tenant.map(str::to_owned),
            key: key.to_owned(),
        }
    }

    /// `<prefix>:<tenant>:<key>` with `_` for "no tenant". A tenant containing ':' is
    /// percent-escaped so that tenant `a:b` + key `c` cannot equal tenant `a` + key `b:c`.
    pub fn storage_key(&self, prefix: &str) -> String {
        format!("{prefix}:{}", self.scoped())
    }

    /// `<tenant>:<key>` with `_` for "no tenant", escaped as in [`Self::storage_key`]: the key
    /// scoped to its tenant, unique across tenants. Agents see it as their idempotency key.
    pub fn scoped(&self) -> String {
        let tenant = self.tenant.as_deref().map_or_else(|| "_".to_owned(), escape_tenant);
        format!("{tenant}:{}", self.key)
    }
}

fn escape_tenant(t: &str) -> String {
    if t == "_" || t.contains([':', '%']) || t.is_empty() {
        let mut out = String::with_capacity(t.len() + 4);
        out.push('%');
        for c in t.chars() {
            match c {
                ':' => out.push_str("%3A"),
                '%' => out.push_str("%25"),
                c => out.push(c),
            }
        }
        out
    } else {
        t.to_owned()
    }
}

/// Proof of a claim; only its holder can complete or release it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimToken {
    pub key: IdempotencyKey,
    /// Fencing token: unique per claim. A number, not text: a claim is made for every
    /// message, and stores choose how to keep them unique (the memory store counts, Redis
    /// draws 128 random bits so that the claims of many processes never share one).
    pub token: u128,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the key until the lease ends.
    Acquired(ClaimToken),
    /// Another worker holds it right now.
    InFlight,
    /// Already processed within the window.
    Completed,
}

/// Whether a complete/release still held the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// The token matched; the operation took effect.
    Held,
    /// The lease had expired and the key belongs to someone else (or nobody); nothing was
    /// changed.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("idempotency store {store} unavailable: {reason}")]
    Unavailable { store: String, reason: String },
    #[error("idempotency store {store} timed out after {after:?} during {operation}")]
    Timeout {
        store: String,
        operation: &'static str,
        after: Duration,
    },
}

/// What an idempotency store must provide. Claims are atomic: of N concurrent claims of one
/// key, exactly one is `Acquired`.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError>;

    /// Claims many keys in one round trip; answers are in input order. The keys are taken
    /// by value so that each acquired claim's token can keep its key without a copy.
    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            out.push(self.claim(key, lease).await?);
        }
        Ok(out)
    }

    /// Marks the key done for `window`, if the token still holds it.
    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError>;

    async fn complete_batch(&self, tokens: &[ClaimToken], window: Duration) -> Result<Vec<ClaimState>, StoreError> {
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            out.push(self.complete(t, window).await?);
        }
        Ok(out)
    }

    /// Gives the key up so it can run again, if the token still holds it.
    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError>;

    async fn release_batch(&self, tokens: &[ClaimToken]) -> Result<Vec<ClaimState>, StoreError> {
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            out.push(self.release(t).await?);
        }
        Ok(out)
    }

    async fn health(&self) -> Health;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Tenant isolation: distinct (tenant, key) pairs never map to one storage key.
        #[test]
        fn storage_keys_are_injective(
            t1 in proptest::option::of("[a-z:%_]{0,6}"), k1 in "[a-z:%_]{0,6}",
            t2 in proptest::option::of("[a-z:%_]{0,6}"), k2 in "[a-z:%_]{0,6}",
        ) {
            let a = IdempotencyKey { tenant: t1, key: k1 };
            let b = IdempotencyKey { tenant: t2, key: k2 };
            if a != b {
                prop_assert_ne!(a.storage_key("p"), b.storage_key("p"));
            }
        }
    }
}
