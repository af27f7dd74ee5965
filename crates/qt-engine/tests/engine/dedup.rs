//! Idempotency through the engine (requirement 6, 7.5).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use qt_core::{AgentRuntime, LedgerStatus};
use serde_json::json;

use crate::support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Idempotency (6.1-6.3), dedup counter (6.4) and tenant isolation (7.5): for any
    /// multiset of (tenant, dedup key) pairs delivered at any concurrency, the agent runs
    /// exactly once per distinct pair, every other delivery is counted as a dedup hit and
    /// acked, and the same key in two tenants runs twice.
    #[test]
    fn one_run_per_tenant_key(
        pairs in prop::collection::vec((0u8..3, 0u8..6), 1..40),
        concurrency in 1usize..9,
        batch_size in 1usize..16,
        no_key in prop::collection::vec(any::<bool>(), 40),
    ) {
        rt().block_on(async {
            let mut c = config();
            c.processing.concurrency = concurrency;
            c.processing.batch_size = batch_size;
            let agent = ScriptedAgent::new("default");
            let mut expected_runs: BTreeMap<(String, String), usize> = BTreeMap::new();
            let messages = pairs.iter().enumerate().map(|(i, (t, k))| {
                let tenant = format!("tenant-{t}");
                let id = format!("m{i}");
                // Without a dedup key the message id is the key (6.3): always unique here.
                let key = if no_key[i] { id.clone() } else { format!("key-{k}") };
                *expected_runs.entry((tenant.clone(), key.clone())).or_default() += 1;
                if no_key[i] {
                    msg(&id, &[("x-tenant-id", &tenant)], json!({"do": "sleep", "ms": 1}))
                } else {
                    msg(&id, &[("x-tenant-id", &tenant), ("x-dedup-key", &key)], json!({"do": "sleep", "ms": 1}))
                }
            }).collect();
            let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
            let calls = agent.calls();
            let mut runs: BTreeMap<(String, String), usize> = BTreeMap::new();
            for call in &calls {
                let key = call.event.envelope.dedup_key.clone().unwrap_or_else(|| call.message_id.clone());
                *runs.entry((call.tenant_id.clone().unwrap_or_default(), key)).or_default() += 1;
            }
            prop_assert_eq!(runs.len(), expected_runs.len());
            prop_assert!(runs.values().all(|n| *n == 1), "a key ran twice: {:?}", runs);
            let duplicates = pairs.len() - expected_runs.len();
            prop_assert_eq!(ran.metrics.dedup_hits, duplicates as u64);
            prop_assert_eq!(ran.metrics.processed(LedgerStatus::Duplicate), duplicates as u64);
            prop_assert_eq!(ran.metrics.processed(LedgerStatus::Succeeded), expected_runs.len() as u64);
            let acked: BTreeSet<String> = ran.acked_ids().into_iter().collect();
            prop_assert_eq!(acked.len(), pairs.len(), "every delivery is acked once");
            Ok(())
        })?;
    }

    /// Idempotency window (6.5): a key processed once runs again once its window expired,
    /// and not before.
    #[test]
    fn window_expiry_runs_again(window_ms in 5u64..20) {
        rt().block_on(async {
            let mut c = config();
            c.idempotency.window = Duration::from_millis(window_ms);
            let agent = ScriptedAgent::new("default");
            let queue = qt_adapter_mock::MockQueue::new("q");
            let trigger = qt_engine::QueueTrigger::builder(c)
                .adapter(Arc::new(queue.adapter()))
                .ledger(Arc::new(qt_engine::builtin::memory_ledger::MemoryLedger::new()))
                .agent("default", agent.clone() as Arc<dyn AgentRuntime>)
                .build()
                .unwrap();
            trigger.start().await.unwrap();
            let send = |id: &str| queue.enqueue(msg(id, &[("x-dedup-key", "k")], json!({})));
            send("first");
            queue.wait_idle().await;
            send("inside-window");
            queue.wait_idle().await;
            tokio::time::sleep(Duration::from_millis(window_ms * 2 + 5)).await;
            send("after-window");
            queue.wait_idle().await;
            trigger.stop().await.unwrap();
            let ran: Vec<String> = agent.calls().into_iter().map(|c| c.message_id).collect();
            // "inside-window" can only run if the window already passed by the time it
            // arrived, which the short windows here make possible; "after-window" must run.
            prop_assert_eq!(ran.first().map(String::as_str), Some("first"));
            prop_assert_eq!(ran.last().map(String::as_str), Some("after-window"));
            Ok(())
        })?;
    }
}

/// Concurrent duplicates: many copies of one key delivered in one batch and across
/// batches, with slow runs, produce one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_key_run_once() {
    let mut c = config();
    c.processing.concurrency = 16;
    let agent = ScriptedAgent::new("default");
    let messages = (0..100)
        .map(|i| {
            msg(
                &format!("copy-{i}"),
                &[("x-dedup-key", "same")],
                json!({"do": "sleep", "ms": 20}),
            )
        })
        .collect();
    let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
    assert_eq!(agent.calls().len(), 1);
    assert_eq!(ran.metrics.dedup_hits, 99);
    assert_eq!(ran.acked_ids().len(), 100);
}

/// With dedup disabled every copy runs.
#[tokio::test]
async fn disabled_dedup_runs_every_copy() {
    let mut c = config();
    c.idempotency.enabled = false;
    let agent = ScriptedAgent::new("default");
    let messages = (0..5)
        .map(|i| msg(&format!("copy-{i}"), &[("x-dedup-key", "same")], json!({})))
        .collect();
    let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
    assert_eq!(agent.calls().len(), 5);
    assert_eq!(ran.metrics.dedup_hits, 0);
}
