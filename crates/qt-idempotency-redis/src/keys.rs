//! Where a claim lives in Redis.
//!
//! The layout is `<prefix>:<tenant>:<key>` ([`IdempotencyKey::storage_key`]), so an
//! operator can find or clear one tenant's claims with `SCAN MATCH <prefix>:<tenant>:*`.
//! Dedup keys come from message content and may be arbitrarily long; Redis stores any
//! length, but every claim costs that memory for the whole idempotency window, so long keys
//! are replaced by their SHA-256:
//!
//! | form | when | key |
//! |---|---|---|
//! | verbatim | fits in [`MAX_KEY_BYTES`] and the key does not start with `sha256-` | `<prefix>:<tenant>:<key>` |
//! | key hashed | otherwise, while the tenant part is short | `<prefix>:<tenant>:sha256-<hex(key)>` |
//! | both hashed | the tenant part alone is too long | `<prefix>:sha256-<hex(<tenant>:<key>)>` |
//!
//! Distinct (tenant, key) pairs never share a Redis key (up to SHA-256 collisions): the
//! escaped tenant never contains `:`, so the part after `<prefix>:` contains a `:` in the
//! first two forms and none in the third; a verbatim key never starts with `sha256-`, so it
//! cannot look like a hashed one; and hashed keys of different tenants differ in the tenant
//! part.

use std::fmt::Write as _;

use qt_core::IdempotencyKey;
use sha2::{Digest, Sha256};

/// Longest Redis key written verbatim. Longer ones are hashed; the result is at most this
/// long too, unless the configured prefix alone takes more than `MAX_KEY_BYTES - 72` bytes.
pub const MAX_KEY_BYTES: usize = 200;

const HASH_MARK: &str = "sha256-";
/// `sha256-` followed by 64 hex digits.
const HASHED_LEN: usize = HASH_MARK.len() + 64;

/// The Redis key holding the claim of `key`.
pub fn redis_key(key: &IdempotencyKey, prefix: &str) -> String {
    let verbatim = key.storage_key(prefix);
    if verbatim.len() <= MAX_KEY_BYTES && !key.key.starts_with(HASH_MARK) {
        return verbatim;
    }
    // `storage_key` is `<prefix>:<tenant>:<key>`; what precedes the key is fixed per tenant.
    debug_assert!(verbatim.ends_with(key.key.as_str()));
    let head = &verbatim[..verbatim.len() - key.key.len()];
    if head.len() + HASHED_LEN <= MAX_KEY_BYTES {
        return format!("{head}{HASH_MARK}{}", sha256_hex(key.key.as_bytes()));
    }
    let tenant_and_key = &verbatim[prefix.len() + 1..];
    format!("{prefix}:{HASH_MARK}{}", sha256_hex(tenant_and_key.as_bytes()))
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(tenant: Option<&str>, key: &str) -> IdempotencyKey {
        IdempotencyKey::new(tenant, key)
    }

    #[test]
    fn short_keys_keep_the_documented_layout() {
        assert_eq!(
            redis_key(&key(Some("acme"), "order-1"), "idempotency"),
            "idempotency:acme:order-1"
        );
        assert_eq!(redis_key(&key(None, "m-1"), "p"), "p:_:m-1");
        let k = key(Some("a:b"), "c");
        assert_eq!(redis_key(&k, "p"), k.storage_key("p"));
    }

    #[test]
    fn long_keys_are_hashed_and_keep_the_tenant() {
        let long = "x".repeat(500);
        let got = redis_key(&key(Some("acme"), &long), "idempotency");
        assert!(got.starts_with("idempotency:acme:sha256-"), "{got}");
        assert_eq!(got.len(), "idempotency:acme:".len() + HASHED_LEN);
        assert!(got.len() <= MAX_KEY_BYTES);
    }

    #[test]
    fn a_verbatim_key_cannot_impersonate_a_hashed_one() {
        let long = "y".repeat(300);
        let hashed = redis_key(&key(Some("t"), &long), "p");
        let forged_key = hashed.trim_start_matches("p:t:");
        assert!(forged_key.starts_with(HASH_MARK));
        assert_ne!(redis_key(&key(Some("t"), forged_key), "p"), hashed);
    }

    #[test]
    fn huge_tenants_are_hashed_with_the_key() {
        let tenant = "t".repeat(400);
        let a = redis_key(&key(Some(&tenant), "k1"), "p");
        let b = redis_key(&key(Some(&tenant), "k2"), "p");
        assert!(a.starts_with("p:sha256-") && !a["p:".len()..].contains(':'), "{a}");
        assert_ne!(a, b);
        assert_eq!(a.len(), "p:".len() + HASHED_LEN);
    }

    #[test]
    fn hashing_is_stable_across_calls_and_processes() {
        // A fixed vector: every process sharing one Redis must derive the same key.
        let got = redis_key(&key(Some("acme"), &"z".repeat(250)), "idempotency");
        assert_eq!(
            got,
            format!("idempotency:acme:sha256-{}", sha256_hex("z".repeat(250).as_bytes()))
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn tenant_strategy() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            "[ab:%_]{0,4}".prop_map(Some),
            "[ab:%_]{150,230}".prop_map(Some),
            Just(Some("_".to_owned())),
        ]
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab:%_]{0,4}",
            "sha256-[0-9a-f]{0,64}",
            "[ab:_]{180,320}",
            "[a]{185,200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Tenant isolation: distinct (tenant, key) pairs never share a Redis key, in any of
        /// the three forms, and every key stays within the bound.
        #[test]
        fn redis_keys_are_injective_and_bounded(
            t1 in tenant_strategy(), k1 in key_strategy(),
            t2 in tenant_strategy(), k2 in key_strategy(),
            prefix in "(idempotency|p|a:b)",
        ) {
            let a = IdempotencyKey { tenant: t1, key: k1 };
            let b = IdempotencyKey { tenant: t2, key: k2 };
            let (ra, rb) = (redis_key(&a, &prefix), redis_key(&b, &prefix));
            prop_assert!(ra.len() <= MAX_KEY_BYTES, "{} bytes: {}", ra.len(), ra);
            let head = format!("{prefix}:");
            prop_assert!(ra.starts_with(&head), "{} does not start with {}", ra, head);
            if a != b {
                prop_assert_ne!(&ra, &rb);
            } else {
                prop_assert_eq!(&ra, &rb);
            }
        }

        /// The same key under two different tenants never collides, whatever its length.
        #[test]
        fn same_key_in_two_tenants_never_collides(
            t1 in "[ab:%_]{0,230}", t2 in "[ab:%_]{0,230}", k in key_strategy(),
        ) {
            prop_assume!(t1 != t2);
            let a = redis_key(&IdempotencyKey::new(Some(&t1), &k), "idempotency");
            let b = redis_key(&IdempotencyKey::new(Some(&t2), &k), "idempotency");
            let none = redis_key(&IdempotencyKey::new(None, &k), "idempotency");
            prop_assert_ne!(&a, &b);
            prop_assert_ne!(&a, &none);
        }
    }
}
