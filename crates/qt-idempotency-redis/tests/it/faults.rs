//! Redis going away, hanging and coming back, on a private `redis-server` of each test.

use std::time::{Duration, Instant};

use qt_core::{Claim, ClaimState, Health, IdempotencyKey, IdempotencyStore, StoreError};
use qt_idempotency_redis::RedisStore;

use crate::support::{PrivateRedis, assert_unavailable_or_timeout, bounded, eventually, get, raw, test_config};

const LEASE: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(60);
/// Generous bound on any one failing operation under the test timeouts (1s connect,
/// 500ms command): it must fail, not hang.
const FAIL_WITHIN: Duration = Duration::from_secs(4);

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(Some("faults"), name)
}

async fn connect(server: &PrivateRedis) -> RedisStore {
    let mut cfg = test_config(&server.url());
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.command_timeout = Duration::from_millis(500);
    RedisStore::connect(&cfg, "idem", false)
        .await
        .expect("private Redis is up")
}

#[tokio::test]
async fn a_restarted_redis_is_used_again_without_help() {
    let mut server = PrivateRedis::start();
    bounded(60, async {
        let store = connect(&server).await;
        let token = match store.claim(&key("before"), LEASE).await.unwrap() {
            Claim::Acquired(t) => t,
            other => panic!("expected Acquired, got {other:?}"),
        };
        assert_eq!(store.health().await, Health::Healthy);

        server.kill();
        for attempt in 0..3 {
            let started = Instant::now();
            let claim = store.claim(&key(&format!("down-{attempt}")), LEASE).await;
            assert_unavailable_or_timeout(&claim, "claim while Redis is down");
            assert!(started.elapsed() < FAIL_WITHIN, "claim took {:?}", started.elapsed());
            let text = claim.unwrap_err().to_string();
            assert!(text.contains("claim"), "the error names the operation: {text}");
            assert!(
                text.contains(&server.port().to_string()),
                "the error names the store: {text}"
            );
        }
        assert_unavailable_or_timeout(&store.complete(&token, WINDOW).await, "complete while down");
        assert_unavailable_or_timeout(&store.release(&token).await, "release while down");
        assert_unavailable_or_timeout(
            &store.claim_batch(vec![key("b1"), key("b2")], LEASE).await,
            "claim_batch while down",
        );
        let started = Instant::now();
        match store.health().await {
            Health::Unhealthy(reason) => assert!(reason.contains("health check"), "{reason}"),
            other => panic!("health while Redis is down: {other:?}"),
        }
        assert!(started.elapsed() < FAIL_WITHIN);

        // Same port, empty data set, no scripts loaded: the pool opens new connections by
        // itself and claims work again.
        server.restart();
        let after = eventually(Duration::from_secs(10), "claims after the restart", || async {
            store.claim(&key("after-restart"), LEASE).await.ok()
        })
        .await;
        let after = match after {
            Claim::Acquired(t) => t,
            other => panic!("the restarted Redis is empty, expected Acquired, got {other:?}"),
        };
        assert_eq!(store.complete(&after, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(store.health().await, Health::Healthy);

        // Scripts dropped under live connections (as after a failover): NOSCRIPT is handled
        // by reloading, for single calls and whole batches alike.
        let mut admin = raw(&server.url()).await;
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
        assert!(matches!(
            store.claim(&key("after-flush"), LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
        let batch = store
            .claim_batch(vec![key("f1"), key("f2"), key("after-flush")], LEASE)
            .await
            .unwrap();
        assert!(matches!(batch[0], Claim::Acquired(_)) && matches!(batch[1], Claim::Acquired(_)));
        assert_eq!(batch[2], Claim::InFlight);
        let tokens: Vec<_> = batch
            .into_iter()
            .filter_map(|c| match c {
                Claim::Acquired(t) => Some(t),
                _ => None,
            })
            .collect();
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
        assert_eq!(
            store.complete_batch(&tokens, WINDOW).await.unwrap(),
            [ClaimState::Held, ClaimState::Held]
        );
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
        assert_eq!(store.release(&tokens[0]).await.unwrap(), ClaimState::Lost);
    })
    .await;
}

#[tokio::test]
async fn a_hanging_redis_times_out_naming_the_operation() {
    let server = PrivateRedis::start();
    bounded(60, async {
        let store = connect(&server).await;
        assert!(matches!(
            store.claim(&key("warm"), LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));

        server.pause();
        let started = Instant::now();
        match store.claim(&key("while-paused"), LEASE).await {
            Err(StoreError::Timeout { operation, after, .. }) => {
                assert_eq!(operation, "claim");
                assert_eq!(after, Duration::from_millis(500));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < FAIL_WITHIN, "claim took {:?}", started.elapsed());

        // The timed-out connection was dropped; a new one cannot be set up either.
        let started = Instant::now();
        match store.complete_batch(&[], WINDOW).await {
            Ok(states) => assert!(states.is_empty(), "an empty batch needs no Redis"),
            Err(e) => panic!("an empty batch must not touch Redis: {e}"),
        }
        let fake = qt_core::ClaimToken {
            key: key("warm"),
            token: 0,
        };
        match store.complete_batch(std::slice::from_ref(&fake), WINDOW).await {
            Err(StoreError::Timeout { operation, .. }) => {
                assert!(operation.starts_with("complete_batch"), "{operation}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(
            started.elapsed() < FAIL_WITHIN,
            "complete_batch took {:?}",
            started.elapsed()
        );
        assert!(matches!(store.health().await, Health::Unhealthy(_)));

        server.resume();
        eventually(Duration::from_secs(10), "claims after resuming", || async {
            store.claim(&key("after-resume"), LEASE).await.ok()
        })
        .await;
        assert_eq!(store.health().await, Health::Healthy);
    })
    .await;
}

#[tokio::test]
async fn connect_fails_fast_when_redis_is_not_there() {
    let mut server = PrivateRedis::start();
    let url = server.url();
    server.kill();
    let started = Instant::now();
    let err = bounded(10, RedisStore::connect(&test_config(&url), "idem", false))
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < FAIL_WITHIN);
    let text = err.to_string();
    assert!(text.contains("connect"), "{text}");
    assert!(text.contains("is Redis running"), "{text}");
}

fn acquired(claim: Claim) -> qt_core::ClaimToken {
    match claim {
        Claim::Acquired(t) => t,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Completions and releases that fail while Redis does not answer, and claims whose answer
/// was lost, are settled once it answers again: no key stays claimed until its lease ends,
/// and no completed key can run again.
#[tokio::test]
async fn what_redis_missed_during_an_outage_is_settled_when_it_returns() {
    let server = PrivateRedis::start();
    bounded(60, async {
        let store = connect(&server).await;
        let mut conn = raw(&server.url()).await;
        let done = acquired(store.claim(&key("done-while-away"), LEASE).await.unwrap());
        let freed = acquired(store.claim(&key("freed-while-away"), LEASE).await.unwrap());

        server.pause();
        // Sent on a live connection, never answered: Redis runs it when it resumes and takes
        // claims whose tokens nobody holds.
        let lost = [key("lost-1"), key("lost-2")];
        assert_unavailable_or_timeout(
            &store.claim_batch(lost.to_vec(), LEASE).await,
            "claim_batch while paused",
        );
        assert_unavailable_or_timeout(&store.complete(&done, WINDOW).await, "complete while paused");
        assert_unavailable_or_timeout(&store.release(&freed).await, "release while paused");
        assert_eq!(
            store.owed(),
            4,
            "two releases of lost claims, one completion, one release"
        );

        server.resume();
        // No further operation on this store: its background task settles everything.
        eventually(Duration::from_secs(10), "the owed work to be settled", || async {
            (store.owed() == 0).then_some(())
        })
        .await;
        assert_eq!(
            get(&mut conn, &store.redis_key(&key("done-while-away"))).await,
            Some(format!("done:{:032x}", done.token))
        );
        assert_eq!(get(&mut conn, &store.redis_key(&key("freed-while-away"))).await, None);
        for k in &lost {
            assert_eq!(get(&mut conn, &store.redis_key(k)).await, None, "{k:?} was given back");
        }
        assert!(matches!(
            store.claim(&lost[0], LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert_eq!(
            store.claim(&key("done-while-away"), LEASE).await.unwrap(),
            Claim::Completed
        );

        // A claim made as soon as Redis is back sees a completion it missed: the owed work
        // travels ahead of the claim in the same pipeline.
        let ahead = acquired(store.claim(&key("ahead"), LEASE).await.unwrap());
        server.pause();
        assert_unavailable_or_timeout(&store.complete(&ahead, WINDOW).await, "complete while paused");
        server.resume();
        assert_eq!(store.claim(&key("ahead"), LEASE).await.unwrap(), Claim::Completed);
        assert_eq!(store.owed(), 0);
    })
    .await;
}
