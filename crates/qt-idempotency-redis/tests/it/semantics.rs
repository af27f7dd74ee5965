//! What claim, complete and release answer, alone and in batches, on the shared Redis.

use std::time::Duration;

use qt_core::{Claim, ClaimState, ClaimToken, IdempotencyKey, IdempotencyStore};

use crate::support::{bounded, cleanup, eventually, get, pttl, random_prefix, raw, shared_store, shared_url};

const LEASE: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(60);

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(t) => t,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_complete_release_lifecycle() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let mut conn = raw(&shared_url()).await;
        let key = IdempotencyKey::new(Some("acme"), "order-1");
        let rk = store.redis_key(&key);
        assert_eq!(rk, format!("{prefix}:acme:order-1"));

        // First claim wins and writes an in-flight marker with the lease as TTL.
        let token = acquired(store.claim(&key, LEASE).await.unwrap());
        assert_eq!(token.key, key);
        assert_ne!(token.token, 0);
        assert_eq!(
            get(&mut conn, &rk).await,
            Some(format!("inflight:{:032x}", token.token))
        );
        let ttl = pttl(&mut conn, &rk).await;
        assert!(ttl > 25_000 && ttl <= 30_000, "lease TTL {ttl}ms");

        // While held, others see it in flight.
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::InFlight);

        // Complete turns it into a done marker kept for the window.
        assert_eq!(store.complete(&token, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(get(&mut conn, &rk).await, Some(format!("done:{:032x}", token.token)));
        let ttl = pttl(&mut conn, &rk).await;
        assert!(ttl > 55_000 && ttl <= 60_000, "window TTL {ttl}ms");
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Completed);

        // Completing again with the same token is harmless; releasing a completed claim
        // does not erase the done marker.
        assert_eq!(store.complete(&token, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(store.release(&token).await.unwrap(), ClaimState::Lost);
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Completed);

        // Release gives a held key back so it can run again.
        let other = IdempotencyKey::new(Some("acme"), "order-2");
        let t2 = acquired(store.claim(&other, LEASE).await.unwrap());
        assert_eq!(store.release(&t2).await.unwrap(), ClaimState::Held);
        assert_eq!(get(&mut conn, &store.redis_key(&other)).await, None);
        assert_eq!(store.release(&t2).await.unwrap(), ClaimState::Lost);
        let t3 = acquired(store.claim(&other, LEASE).await.unwrap());
        assert_ne!(t2.token, t3.token, "every claim gets a fresh fencing token");

        // A token that never held the key changes nothing.
        let forged = ClaimToken {
            key: other.clone(),
            token: 0,
        };
        assert_eq!(store.complete(&forged, WINDOW).await.unwrap(), ClaimState::Lost);
        assert_eq!(store.release(&forged).await.unwrap(), ClaimState::Lost);
        assert_eq!(
            get(&mut conn, &store.redis_key(&other)).await,
            Some(format!("inflight:{:032x}", t3.token))
        );
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn batches_answer_in_input_order() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let k = |s: &str| IdempotencyKey::new(Some("t"), s);
        let (a, b, c, d) = (k("a"), k("b"), k("c"), k("d"));

        // b completed, c held by someone else, before the batch.
        let tb = acquired(store.claim(&b, LEASE).await.unwrap());
        store.complete(&tb, WINDOW).await.unwrap();
        let tc = acquired(store.claim(&c, LEASE).await.unwrap());

        let batch = [a.clone(), b.clone(), a.clone(), c.clone(), d.clone()];
        let claims = store.claim_batch(batch.to_vec(), LEASE).await.unwrap();
        assert_eq!(claims.len(), 5);
        let ta = acquired(claims[0].clone());
        assert_eq!(ta.key, a);
        assert_eq!(claims[1], Claim::Completed);
        assert_eq!(
            claims[2],
            Claim::InFlight,
            "the same key twice: the second sees the first"
        );
        assert_eq!(claims[3], Claim::InFlight);
        let td = acquired(claims[4].clone());
        assert_eq!(td.key, d);

        // Complete a and the forged/expired c token together, release d and c together.
        let stale_c = ClaimToken {
            key: c.clone(),
            token: u128::MAX,
        };
        let states = store
            .complete_batch(&[ta.clone(), stale_c.clone()], WINDOW)
            .await
            .unwrap();
        assert_eq!(states, [ClaimState::Held, ClaimState::Lost]);
        let states = store.release_batch(&[td.clone(), stale_c, tc.clone()]).await.unwrap();
        assert_eq!(states, [ClaimState::Held, ClaimState::Lost, ClaimState::Held]);

        let after = store
            .claim_batch(vec![a.clone(), c.clone(), d.clone()], LEASE)
            .await
            .unwrap();
        assert_eq!(after[0], Claim::Completed);
        assert!(matches!(after[1], Claim::Acquired(_)), "c was released: {:?}", after[1]);
        assert!(matches!(after[2], Claim::Acquired(_)), "d was released: {:?}", after[2]);

        // Empty batches need no round trip and answer empty.
        assert!(store.claim_batch(Vec::new(), LEASE).await.unwrap().is_empty());
        assert!(store.complete_batch(&[], WINDOW).await.unwrap().is_empty());
        assert!(store.release_batch(&[]).await.unwrap().is_empty());
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn a_large_batch_is_one_consistent_answer() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let keys: Vec<IdempotencyKey> = (0..500).map(|i| IdempotencyKey::new(None, &format!("m-{i}"))).collect();
        let claims = store.claim_batch(keys.clone(), LEASE).await.unwrap();
        let tokens: Vec<ClaimToken> = claims.into_iter().map(acquired).collect();
        for (t, k) in tokens.iter().zip(&keys) {
            assert_eq!(&t.key, k);
        }
        let states = store.complete_batch(&tokens, WINDOW).await.unwrap();
        assert!(states.iter().all(|s| *s == ClaimState::Held));
        let again = store.claim_batch(keys.clone(), LEASE).await.unwrap();
        assert!(again.iter().all(|c| *c == Claim::Completed));
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn the_window_expires_and_the_key_runs_again() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let key = IdempotencyKey::new(None, "short-window");
        let token = acquired(store.claim(&key, LEASE).await.unwrap());
        assert_eq!(
            store.complete(&token, Duration::from_millis(300)).await.unwrap(),
            ClaimState::Held
        );
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Completed);
        let next = eventually(Duration::from_secs(3), "window expiry", || async {
            match store.claim(&key, LEASE).await.unwrap() {
                Claim::Acquired(t) => Some(t),
                Claim::Completed => None,
                Claim::InFlight => panic!("nobody else holds this key"),
            }
        })
        .await;
        assert_ne!(next.token, token.token);
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn an_expired_lease_cannot_touch_the_next_workers_claim() {
    let prefix = random_prefix();
    bounded(20, async {
        // Two stores: two workers, as two processes would be.
        let first = shared_store(&prefix).await;
        let second = shared_store(&prefix).await;
        let mut conn = raw(&shared_url()).await;
        let key = IdempotencyKey::new(Some("acme"), "slow-handler");
        let rk = first.redis_key(&key);

        let late = acquired(first.claim(&key, Duration::from_millis(200)).await.unwrap());
        // The first worker's handler outlives its lease; the second worker takes over.
        let current = eventually(Duration::from_secs(3), "lease expiry", || async {
            match second.claim(&key, LEASE).await.unwrap() {
                Claim::Acquired(t) => Some(t),
                Claim::InFlight => None,
                Claim::Completed => panic!("nobody completed this key"),
            }
        })
        .await;
        assert_ne!(late.token, current.token);

        // The first worker finishes late: its complete and release are refused and change
        // nothing.
        assert_eq!(first.complete(&late, WINDOW).await.unwrap(), ClaimState::Lost);
        assert_eq!(
            get(&mut conn, &rk).await,
            Some(format!("inflight:{:032x}", current.token))
        );
        assert_eq!(first.release(&late).await.unwrap(), ClaimState::Lost);
        assert_eq!(
            get(&mut conn, &rk).await,
            Some(format!("inflight:{:032x}", current.token))
        );
        assert_eq!(
            first.complete_batch(std::slice::from_ref(&late), WINDOW).await.unwrap(),
            [ClaimState::Lost]
        );
        assert_eq!(
            first.release_batch(std::slice::from_ref(&late)).await.unwrap(),
            [ClaimState::Lost]
        );
        assert_eq!(first.claim(&key, LEASE).await.unwrap(), Claim::InFlight);

        // The second worker's claim is intact and completes normally.
        assert_eq!(second.complete(&current, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(first.claim(&key, LEASE).await.unwrap(), Claim::Completed);
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn tenants_claim_the_same_key_independently() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let a = IdempotencyKey::new(Some("tenant-a"), "order-7");
        let b = IdempotencyKey::new(Some("tenant-b"), "order-7");
        let none = IdempotencyKey::new(None, "order-7");
        let keys = [store.redis_key(&a), store.redis_key(&b), store.redis_key(&none)];
        assert!(
            keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2],
            "{keys:?}"
        );

        let ta = acquired(store.claim(&a, LEASE).await.unwrap());
        let tb = acquired(store.claim(&b, LEASE).await.unwrap());
        acquired(store.claim(&none, LEASE).await.unwrap());

        // Completing tenant A's key leaves tenant B's in flight, and vice versa for release.
        assert_eq!(store.complete(&ta, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(store.claim(&a, LEASE).await.unwrap(), Claim::Completed);
        assert_eq!(store.claim(&b, LEASE).await.unwrap(), Claim::InFlight);
        assert_eq!(store.release(&tb).await.unwrap(), ClaimState::Held);
        assert!(matches!(store.claim(&b, LEASE).await.unwrap(), Claim::Acquired(_)));
        assert_eq!(store.claim(&a, LEASE).await.unwrap(), Claim::Completed);

        // A token of tenant A cannot act on tenant B's key.
        let crossed = ClaimToken {
            key: b.clone(),
            token: ta.token,
        };
        assert_eq!(store.release(&crossed).await.unwrap(), ClaimState::Lost);
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn long_keys_are_stored_hashed_and_still_distinct() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let mut conn = raw(&shared_url()).await;
        let base = "k".repeat(1000);
        let one = IdempotencyKey::new(Some("acme"), &format!("{base}1"));
        let two = IdempotencyKey::new(Some("acme"), &format!("{base}2"));
        let rk = store.redis_key(&one);
        assert!(rk.len() <= qt_idempotency_redis::MAX_KEY_BYTES, "{rk}");
        assert!(rk.starts_with(&format!("{prefix}:acme:sha256-")), "{rk}");

        let t1 = acquired(store.claim(&one, LEASE).await.unwrap());
        assert_eq!(get(&mut conn, &rk).await, Some(format!("inflight:{:032x}", t1.token)));
        acquired(store.claim(&two, LEASE).await.unwrap());
        assert_eq!(store.claim(&one, LEASE).await.unwrap(), Claim::InFlight);
        assert_eq!(store.complete(&t1, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(store.claim(&one, LEASE).await.unwrap(), Claim::Completed);
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}

#[tokio::test]
async fn a_foreign_value_is_an_error_and_a_failed_batch_gives_back_its_claims() {
    let prefix = random_prefix();
    bounded(20, async {
        let store = shared_store(&prefix).await;
        let mut conn = raw(&shared_url()).await;
        let foreign = IdempotencyKey::new(None, "written-by-someone-else");
        let rk = store.redis_key(&foreign);
        let _: () = redis::cmd("SET")
            .arg(&rk)
            .arg("1")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();

        let err = store
            .claim(&foreign, LEASE)
            .await
            .expect_err("a value qt did not write");
        let text = err.to_string();
        assert!(text.contains("claim failed for") && text.contains(&rk), "{text}");
        assert!(text.contains("holds a value qt did not write"), "{text}");

        // In a batch, the keys that were claimed are released again before the error.
        let fine = IdempotencyKey::new(None, "fine");
        let err = store
            .claim_batch(vec![fine.clone(), foreign.clone()], LEASE)
            .await
            .expect_err("one key fails");
        assert!(err.to_string().contains("claim_batch failed for 1 of 2 keys"), "{err}");
        assert_eq!(get(&mut conn, &store.redis_key(&fine)).await, None);
        assert!(matches!(store.claim(&fine, LEASE).await.unwrap(), Claim::Acquired(_)));
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}
