//! A panic (a bug, in qt or in a component given to it) costs the message that causes it,
//! never the queue: that message is dead-lettered as a permanent failure with the panic's
//! message, the rest go on, and nothing loops.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use qt_core::extract::FieldSource;
use qt_core::{
    AgentRuntime, Claim, ClaimState, ClaimToken, Decision, ErrorClass, Governance, GovernanceContext, GovernanceError,
    Health, IdempotencyKey, IdempotencyStore, LedgerStatus, RawMessage, SourceInfo, StoreError,
};
use qt_engine::builtin::memory_store::MemoryStore;
use serde_json::json;

use crate::support::*;

/// Governance with a bug that the tenant `evil` sets off.
#[derive(Debug)]
struct PanicsOnEvilTenant;

#[async_trait]
impl Governance for PanicsOnEvilTenant {
    async fn check(&self, ctx: &GovernanceContext<'_>) -> Result<Decision, GovernanceError> {
        assert_ne!(ctx.tenant_id, Some("evil"), "governance bug on tenant evil");
        Ok(Decision::Allow)
    }
}

/// A memory store with a bug that the dedup key `poison` sets off, in the batch call that
/// claims every key of a batch at once.
#[derive(Debug, Default)]
struct PanicsOnPoisonKey(MemoryStore);

#[async_trait]
impl IdempotencyStore for PanicsOnPoisonKey {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        self.0.claim(key, lease).await
    }
    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        assert!(keys.iter().all(|k| k.key != "poison"), "store bug on key poison");
        self.0.claim_batch(keys, lease).await
    }
    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        self.0.complete(token, window).await
    }
    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        self.0.release(token).await
    }
    async fn health(&self) -> Health {
        self.0.health().await
    }
}

fn from_tenant(id: &str, tenant: &str) -> RawMessage {
    msg(id, &[("x-tenant-id", tenant)], json!({"do": "ok"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_governance_dead_letters_that_message_and_the_rest_run() {
    let agent = ScriptedAgent::new("default");
    let messages = vec![
        from_tenant("a", "acme"),
        from_tenant("bad", "evil"),
        from_tenant("b", "acme"),
    ];
    let ran = run_to_idle_with(
        config(),
        &[("default", agent.clone() as Arc<dyn AgentRuntime>)],
        messages,
        |b| b.governance(Arc::new(PanicsOnEvilTenant)),
    )
    .await;
    let finals = ran.final_records();
    assert_eq!(finals["a"].status, LedgerStatus::Succeeded);
    assert_eq!(finals["b"].status, LedgerStatus::Succeeded);
    let bad = &finals["bad"];
    assert_eq!(bad.status, LedgerStatus::Failed);
    assert_eq!(bad.error_class, Some(ErrorClass::Permanent));
    let reason = bad.error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("panicked") && reason.contains("governance bug on tenant evil"),
        "{reason}"
    );
    assert_eq!(ran.dlq_ids(), ["bad"]);
    assert_eq!(agent.runs_of("bad"), 0);
    assert_eq!(ran.records().len(), 3, "one record per message");
    assert_eq!(ran.metrics.panics, 1);
    assert_eq!(
        ran.metrics.dlq.iter().find(|(r, _)| *r == "panicked").map(|(_, n)| *n),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_step_the_batch_takes_together_is_traced_to_its_message_which_alone_is_dead_lettered() {
    let agent = ScriptedAgent::new("default");
    let mut messages: Vec<RawMessage> = (0..6).map(|i| ok(&format!("m{i}"))).collect();
    messages.insert(3, msg("bad", &[("x-dedup-key", "poison")], json!({"do": "ok"})));
    let mut c = config();
    c.processing.concurrency = 1;
    let ran = run_to_idle_with(
        c,
        &[("default", agent.clone() as Arc<dyn AgentRuntime>)],
        messages,
        |b| b.idempotency_store(Arc::new(PanicsOnPoisonKey::default())),
    )
    .await;
    let finals = ran.final_records();
    assert_eq!(finals.len(), 7, "{finals:?}");
    for i in 0..6 {
        let id = format!("m{i}");
        assert_eq!(finals[&id].status, LedgerStatus::Succeeded, "{id}");
        assert_eq!(agent.runs_of(&id), 1, "{id} ran once");
    }
    let bad = &finals["bad"];
    assert_eq!(bad.status, LedgerStatus::Failed);
    assert_eq!(bad.error_class, Some(ErrorClass::Permanent));
    let reason = bad.error.as_deref().unwrap_or_default();
    assert!(reason.contains("store bug on key poison"), "{reason}");
    assert_eq!(ran.dlq_ids(), ["bad"]);
    assert_eq!(agent.runs_of("bad"), 0);
    assert_eq!(ran.records().len(), 7, "one record per message: {:?}", ran.records());
    // Once for the batch, once for the message alone.
    assert_eq!(ran.metrics.panics, 2);
}

/// Bodies an attacker would send, for the property below.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (0usize..300).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        (0usize..300).prop_map(|depth| format!("{}1{}", r#"{"type":"#.repeat(depth), "}".repeat(depth)).into_bytes()),
        prop::sample::select(vec![
            r#"{"type": "\ud800"}"#,
            r#"{"type": "order", "tenant": "\udc00"}"#,
            r#"{"type": 1e400}"#,
            r#"{"type": 123456789012345678901234567890}"#,
            r#"{"type": "a", "type": "b", "tenant": {"x": 1}}"#,
            r#"{"do": "ok", "type": "order.created", "tenant": "acme", "id": 7}"#,
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever bodies arrive, through every kind of extraction rule, each message ends
    /// with exactly one final outcome (a final ledger record, not a deferral) and one final
    /// settlement, and nothing panics.
    #[test]
    fn every_hostile_message_ends_with_exactly_one_outcome(bodies in prop::collection::vec(hostile_body(), 1..12)) {
        rt().block_on(async {
            let mut c = config();
            let rules = &mut c.processing.extraction;
            rules.event_name = vec![
                FieldSource::Pointer("/type".into()),
                FieldSource::Header("x-event-name".into()),
                FieldSource::Value("fallback".into()),
            ];
            rules.tenant_id = vec![FieldSource::Pointer("/tenant".into()), FieldSource::Header("x-tenant-id".into())];
            rules.dedup_key = vec![FieldSource::Pointer("/id".into()), FieldSource::SourceKey(true)];
            rules.ordering_key = vec![FieldSource::Pointer("/type".into())];
            rules.payload_pointer = Some("".into());
            let agent = ScriptedAgent::new("default");
            let messages: Vec<RawMessage> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| RawMessage::new(format!("m{i}"), b.clone(), SourceInfo::new("mock", "q")))
                .collect();
            let ran = run_to_idle(c, &[("default", agent as Arc<dyn AgentRuntime>)], messages).await;
            let finals = ran.final_records();
            prop_assert_eq!(finals.len(), bodies.len(), "{:?}", finals);
            for record in finals.values() {
                prop_assert_ne!(record.status, LedgerStatus::Deferred, "{:?}", record);
            }
            let settled = ran.acked_ids().len() + ran.dlq_ids().len();
            prop_assert_eq!(settled, bodies.len());
            prop_assert_eq!(ran.metrics.panics, 0);
            Ok(())
        })?;
    }
}
