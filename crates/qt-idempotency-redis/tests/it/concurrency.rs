//! Of many concurrent claims of one key, from tasks on many connections and several stores
//! (as several processes would be), exactly one wins.

use std::sync::Arc;
use std::time::Duration;

use qt_core::{Claim, IdempotencyKey, IdempotencyStore};
use tokio::sync::Barrier;

use crate::support::{bounded, cleanup, random_prefix, shared_store, shared_url};

const STORES: usize = 4;
const TASKS_PER_STORE: usize = 16;
const ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_have_exactly_one_winner() {
    let prefix = random_prefix();
    bounded(60, async {
        let mut stores = Vec::new();
        for _ in 0..STORES {
            stores.push(Arc::new(shared_store(&prefix).await));
        }
        for round in 0..ROUNDS {
            let key = IdempotencyKey::new(Some("race"), &format!("key-{round}"));
            let barrier = Arc::new(Barrier::new(STORES * TASKS_PER_STORE));
            let mut tasks = Vec::new();
            for store in &stores {
                for i in 0..TASKS_PER_STORE {
                    let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
                    tasks.push(tokio::spawn(async move {
                        barrier.wait().await;
                        // Half single claims, half one-key batches: both paths race.
                        if i % 2 == 0 {
                            store.claim(&key, Duration::from_secs(30)).await
                        } else {
                            store
                                .claim_batch(vec![key.clone()], Duration::from_secs(30))
                                .await
                                .map(|mut v| v.remove(0))
                        }
                    }));
                }
            }
            let mut winners = 0;
            for task in tasks {
                match task.await.expect("task runs").expect("claim succeeds") {
                    Claim::Acquired(_) => winners += 1,
                    Claim::InFlight => {}
                    Claim::Completed => panic!("nobody completed {key:?}"),
                }
            }
            assert_eq!(winners, 1, "round {round}: {winners} claims acquired one key");
        }
        // The race really spread over several pooled connections per store.
        let open: Vec<usize> = stores.iter().map(|s| s.open_connections()).collect();
        assert!(
            open.iter().any(|&n| n > 1),
            "expected a store to open more than one connection: {open:?}"
        );
    })
    .await;
    cleanup(&shared_url(), &prefix).await;
}
