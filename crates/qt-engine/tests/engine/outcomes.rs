//! The outcome table: every row reachable, settled and recorded as the outcome table in docs/operations.md says.

use std::sync::Arc;

use proptest::prelude::*;
use qt_core::config::{DenyAction, FailureAction, GovernanceRule, RequeueLimit, RuleAction, UnprocessableAction};
use qt_core::headers::{ATTEMPT, dead_letter};
use qt_core::{AgentRuntime, LedgerRecord, LedgerStatus, RawMessage, SettlementKind};
use serde_json::json;

use crate::support::*;

/// What a generated message should end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    BadJson,
    Permanent,
    Exhausted,
    FlakyThenOk,
    Panics,
    Denied,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Ok),
        1 => Just(Kind::BadJson),
        1 => Just(Kind::Permanent),
        1 => Just(Kind::Exhausted),
        1 => Just(Kind::FlakyThenOk),
        1 => Just(Kind::Panics),
        1 => Just(Kind::Denied),
    ]
}

fn message(i: usize, k: Kind) -> RawMessage {
    let id = format!("m{i}");
    let tenant = if k == Kind::Denied { "blocked" } else { "acme" };
    let headers = [("x-tenant-id", tenant), ("x-event-name", "order.created")];
    match k {
        Kind::BadJson => RawMessage::new(id, &b"{\"do\": nope"[..], qt_core::SourceInfo::new("mock", "q"))
            .with_headers(headers.into_iter().collect()),
        Kind::Ok | Kind::Denied => msg(&id, &headers, json!({"do": "ok"})),
        Kind::Permanent => msg(&id, &headers, json!({"do": "fail", "class": "permanent"})),
        Kind::Exhausted => msg(&id, &headers, json!({"do": "fail", "class": "retryable"})),
        Kind::FlakyThenOk => msg(&id, &headers, json!({"do": "fail", "class": "timeout", "times": 1})),
        Kind::Panics => msg(&id, &headers, json!({"do": "panic"})),
    }
}

fn deny_blocked() -> GovernanceRule {
    GovernanceRule {
        name: "blocked-tenants".into(),
        tenant: "blocked".into(),
        event: "*".into(),
        action: RuleAction::Deny,
        reason: Some("tenant blocked".into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Error recovery (2.5), parse failure -> DLQ (3.4), retries exhausted -> DLQ with
    /// history (5.4), ledger completeness (7.2) and exact metrics (8.1): whatever mix of
    /// good and bad messages arrives, every message gets exactly the outcome the table
    /// gives, a complete final ledger record, and the counters match the ledger.
    #[test]
    fn every_message_gets_its_row(kinds in prop::collection::vec(kind(), 1..24), max_retries in 0u32..3, concurrency in 1usize..6) {
        rt().block_on(async {
            let mut c = config();
            c.retry.max_retries = max_retries;
            c.processing.concurrency = concurrency;
            c.governance.rules = vec![deny_blocked()];
            let agent = ScriptedAgent::new("default");
            let messages: Vec<RawMessage> = kinds.iter().enumerate().map(|(i, k)| message(i, *k)).collect();
            let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
            let finals = ran.final_records();
            let dlq = ran.queue.dead_lettered();
            prop_assert_eq!(finals.len(), kinds.len(), "one final record per message");
            for (i, k) in kinds.iter().enumerate() {
                let id = format!("m{i}");
                let r = &finals[&id];
                prop_assert_eq!(r.trace_id.to_string().len(), 32);
                prop_assert_eq!(&*r.queue, "q");
                prop_assert!(r.duration_ms >= 0.0);
                let expected_status = match k {
                    Kind::Ok => LedgerStatus::Succeeded,
                    Kind::FlakyThenOk => if max_retries >= 1 { LedgerStatus::Succeeded } else { LedgerStatus::Failed },
                    Kind::BadJson => LedgerStatus::ParseFailed,
                    Kind::Permanent | Kind::Exhausted | Kind::Panics => LedgerStatus::Failed,
                    Kind::Denied => LedgerStatus::Rejected,
                };
                prop_assert_eq!(r.status, expected_status, "message {} ({:?})", id, k);
                match expected_status {
                    LedgerStatus::Succeeded => {
                        prop_assert!(ran.acked_ids().contains(&id));
                        prop_assert_eq!(r.llm_calls, 2);
                        prop_assert!(r.agent_run_id.is_some());
                        // The successful attempt's output, not an earlier one's.
                        prop_assert_eq!(r.agent_output.clone(), Some(json!({"attempt": r.attempts})));
                        prop_assert_eq!(r.tenant_id.as_deref(), Some("acme"));
                    }
                    LedgerStatus::Failed | LedgerStatus::ParseFailed => {
                        let d = dlq.iter().find(|d| d.message.message_id == id).expect("dead-lettered");
                        prop_assert!(r.error.is_some());
                        prop_assert_eq!(d.headers.get(dead_letter::ORIGINAL_QUEUE), Some("q"));
                        prop_assert!(d.headers.get(dead_letter::REASON).is_some_and(|x| !x.is_empty()));
                        let expected_attempts = match k {
                            Kind::Exhausted | Kind::FlakyThenOk => max_retries + 1,
                            Kind::BadJson => 0,
                            _ => 1,
                        };
                        prop_assert_eq!(r.attempts, expected_attempts);
                        prop_assert_eq!(d.dead_letter.attempts, expected_attempts);
                        let attempts_header = expected_attempts.to_string();
                        prop_assert_eq!(d.headers.get(dead_letter::ATTEMPTS), Some(attempts_header.as_str()));
                        prop_assert_eq!(r.retries.len() as u32, expected_attempts, "one history entry per failed attempt");
                        if *k == Kind::BadJson {
                            prop_assert!(d.dead_letter.reason.contains("invalid JSON at line 1"), "{}", d.dead_letter.reason);
                        }
                    }
                    LedgerStatus::Rejected => {
                        prop_assert_eq!(r.decision_reason.as_deref(), Some("tenant blocked"));
                        prop_assert_eq!(&r.decision_policies, &vec!["blocked-tenants".to_owned()]);
                        prop_assert!(ran.acked_ids().contains(&id));
                    }
                    _ => unreachable!(),
                }
            }
            // Exact metrics: processed counts equal the ledger's statuses.
            let records = ran.records();
            for status in qt_core::LedgerStatus::ALL {
                let in_ledger = records.iter().filter(|r| r.status == status).count() as u64;
                prop_assert_eq!(ran.metrics.processed(status), in_ledger, "{:?}", status);
            }
            prop_assert_eq!(ran.metrics.received, records.len() as u64);
            prop_assert_eq!(ran.metrics.total_dead_lettered(), dlq.len() as u64);
            let retries_expected: u64 = kinds.iter().map(|k| match k {
                Kind::Exhausted => u64::from(max_retries),
                Kind::FlakyThenOk => u64::from(max_retries.min(1)),
                _ => 0,
            }).sum();
            prop_assert_eq!(ran.metrics.total_retries(), retries_expected);
            prop_assert_eq!(ran.metrics.inflight, 0);
            Ok(())
        })?;
    }

    /// Every ack policy (5.1): an agent failure, a parse failure, an unrouted event and a
    /// governance denial are settled exactly as their configured action says.
    #[test]
    fn every_ack_policy_is_applied(
        on_failure in prop_oneof![Just(FailureAction::Dlq), Just(FailureAction::Nack), Just(FailureAction::Requeue), Just(FailureAction::Ack)],
        on_parse in prop_oneof![Just(UnprocessableAction::Dlq), Just(UnprocessableAction::Nack), Just(UnprocessableAction::Ack)],
        on_unrouted in prop_oneof![Just(UnprocessableAction::Dlq), Just(UnprocessableAction::Nack), Just(UnprocessableAction::Ack)],
        on_deny in prop_oneof![Just(DenyAction::Ack), Just(DenyAction::Dlq)],
    ) {
        rt().block_on(async {
            let mut c = config();
            c.retry.max_retries = 0;
            c.processing.on_failure = on_failure;
            c.processing.on_parse_failure = on_parse;
            c.processing.on_unrouted = on_unrouted;
            c.processing.on_governance_deny = on_deny;
            c.governance.rules = vec![deny_blocked()];
            c.agent.routes = vec![qt_core::config::Route { event: "order.*".into(), target: "default".into(), focus: None }];
            let agent = ScriptedAgent::new("default");
            let h = [("x-event-name", "order.created")];
            let messages = vec![
                // Fails once only, so a requeued copy succeeds on its second delivery.
                msg("fails", &h, json!({"do": "fail", "class": "permanent", "times": 1})),
                RawMessage::new("unparseable", &b"nope"[..], qt_core::SourceInfo::new("mock", "q")),
                msg("unrouted", &[("x-event-name", "user.created")], json!({})),
                msg("denied", &[("x-event-name", "order.created"), ("x-tenant-id", "blocked")], json!({})),
            ];
            let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
            let acked = ran.acked_ids();
            let nacked: Vec<String> = ran.queue.nacked().into_iter().map(|s| s.message.message_id).collect();
            let dlq = ran.dlq_ids();
            let requeued: Vec<String> = ran.queue.requeued().into_iter().map(|(s, _)| s.message.message_id).collect();
            let landed = |id: &str| -> &'static str {
                if dlq.iter().any(|x| x == id) { "dlq" }
                else if nacked.iter().any(|x| x == id) { "nack" }
                else if acked.iter().any(|x| x == id) { "ack" }
                else { "nowhere" }
            };
            match on_failure {
                FailureAction::Dlq => prop_assert_eq!(landed("fails"), "dlq"),
                FailureAction::Nack => prop_assert_eq!(landed("fails"), "nack"),
                FailureAction::Ack => prop_assert_eq!(landed("fails"), "ack"),
                FailureAction::Requeue => {
                    prop_assert!(requeued.contains(&"fails".to_owned()));
                    // The redelivery carries the next attempt number and then succeeds.
                    prop_assert_eq!(landed("fails"), "ack");
                    prop_assert_eq!(agent.runs_of("fails"), 2);
                    let redelivered = agent.calls().into_iter().filter(|c| c.message_id == "fails").map(|c| c.event.envelope.attempt).max();
                    prop_assert_eq!(redelivered, Some(2));
                }
            }
            let expect = |a: UnprocessableAction| match a { UnprocessableAction::Dlq => "dlq", UnprocessableAction::Nack => "nack", UnprocessableAction::Ack => "ack" };
            prop_assert_eq!(landed("unparseable"), expect(on_parse));
            prop_assert_eq!(landed("unrouted"), expect(on_unrouted));
            prop_assert_eq!(landed("denied"), match on_deny { DenyAction::Ack => "ack", DenyAction::Dlq => "dlq" });
            prop_assert_eq!(agent.runs_of("denied"), 0);
            prop_assert_eq!(agent.runs_of("unrouted"), 0);
            let finals = ran.final_records();
            prop_assert_eq!(finals["unrouted"].status, LedgerStatus::Unrouted);
            prop_assert_eq!(finals["denied"].status, LedgerStatus::Rejected);
            prop_assert_eq!(finals["unparseable"].status, LedgerStatus::ParseFailed);
            Ok(())
        })?;
    }
}

/// Retry-After from a rate-limited agent is the delay used, and the rate-limited class
/// has its own retry budget.
#[tokio::test]
async fn rate_limited_failures_use_their_class_policy() {
    let mut c = config();
    c.retry.max_retries = 5;
    c.retry.per_class.insert(
        qt_core::ErrorClass::RateLimited,
        qt_core::config::ClassRetryConfig {
            max_retries: Some(1),
            ..Default::default()
        },
    );
    let agent = ScriptedAgent::new("default");
    let ran = run_to_idle(
        c,
        &[("default", agent.clone() as Arc<dyn AgentRuntime>)],
        vec![msg("limited", &[], json!({"do": "fail", "class": "rate_limited"}))],
    )
    .await;
    assert_eq!(agent.runs_of("limited"), 2, "one try plus the class's single retry");
    let r = &ran.final_records()["limited"];
    assert_eq!(r.status, LedgerStatus::Failed);
    assert_eq!(r.error_class, Some(qt_core::ErrorClass::RateLimited));
    assert!(
        r.error.as_deref().unwrap().starts_with("retries_exhausted"),
        "{:?}",
        r.error
    );
}

/// A message that fails on every delivery under `on_failure: requeue` is requeued exactly
/// `max_requeues` times, then dead-lettered with the reason, which its last ledger record
/// carries; the other messages are not held up by it.
#[tokio::test]
async fn a_message_that_always_fails_is_requeued_max_requeues_times_then_dead_lettered() {
    let mut c = config();
    c.retry.max_retries = 0;
    c.processing.on_failure = FailureAction::Requeue;
    c.processing.max_requeues = RequeueLimit::At(3);
    let agent = ScriptedAgent::new("default");
    let ran = run_to_idle(
        c,
        &[("default", agent.clone() as Arc<dyn AgentRuntime>)],
        vec![
            msg("poison", &[], json!({"do": "fail", "class": "retryable"})),
            ok("fine"),
        ],
    )
    .await;
    assert_eq!(agent.runs_of("poison"), 4, "the first delivery and three requeued ones");
    let requeued: Vec<Option<String>> = ran
        .queue
        .requeued()
        .iter()
        .filter(|(s, _)| s.message.message_id == "poison")
        .map(|(s, _)| s.message.headers.get(ATTEMPT).map(str::to_owned))
        .collect();
    assert_eq!(
        requeued,
        [Some("2".to_owned()), Some("3".to_owned()), Some("4".to_owned())],
        "each requeue carries the next attempt"
    );
    let attempts: Vec<u32> = agent
        .calls()
        .iter()
        .filter(|c| c.message_id == "poison")
        .map(|c| c.event.envelope.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4]);

    let reason = "requeues_exhausted: failed after 3 requeue(s) (processing.max_requeues: 3): \
                  retries_exhausted: retryable after 1 attempt(s): scripted retryable failure";
    let dlq = ran.queue.dead_lettered();
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(dlq[0].message.message_id, "poison");
    assert_eq!(dlq[0].dead_letter.reason, reason);
    assert_eq!(dlq[0].headers.get(dead_letter::REASON), Some(reason));
    assert_eq!(dlq[0].headers.get(dead_letter::ERROR_CLASS), Some("retryable"));

    let records: Vec<LedgerRecord> = ran.records().into_iter().filter(|r| r.message_id == "poison").collect();
    let settled: Vec<(LedgerStatus, SettlementKind)> = records.iter().map(|r| (r.status, r.settlement)).collect();
    assert_eq!(
        settled,
        [
            (LedgerStatus::Failed, SettlementKind::Requeue),
            (LedgerStatus::Failed, SettlementKind::Requeue),
            (LedgerStatus::Failed, SettlementKind::Requeue),
            (LedgerStatus::Failed, SettlementKind::DeadLetter),
        ],
        "one record per delivery"
    );
    assert_eq!(records[3].error.as_deref(), Some(reason));
    assert_eq!(records[3].error_class, Some(qt_core::ErrorClass::Retryable));
    assert!(
        ran.metrics.dlq.contains(&("requeues_exhausted", 1)),
        "{:?}",
        ran.metrics.dlq
    );
    assert_eq!(ran.acked_ids(), ["fine"]);
}

/// The mock adapter with dead-lettering switched off, as a broker source without a
/// dead-letter destination reports itself.
#[derive(Debug)]
struct NoDlq(qt_adapter_mock::MockAdapter);

#[async_trait::async_trait]
impl qt_core::QueueAdapter for NoDlq {
    fn kind(&self) -> &'static str {
        "nodlq"
    }
    fn queue(&self) -> &str {
        "q"
    }
    fn capabilities(&self) -> qt_core::Capabilities {
        let mut c = self.0.capabilities();
        c.dead_letter = false;
        c
    }
    async fn connect(&self) -> Result<(), qt_core::AdapterError> {
        Ok(())
    }
    async fn receive(&self, max: usize) -> Result<Vec<qt_core::Delivery>, qt_core::AdapterError> {
        self.0.receive(max).await
    }
    async fn pause(&self) -> Result<(), qt_core::AdapterError> {
        Ok(())
    }
    async fn resume(&self) -> Result<(), qt_core::AdapterError> {
        Ok(())
    }
    async fn health(&self) -> qt_core::Health {
        qt_core::Health::Healthy
    }
    async fn backlog(&self) -> Result<Option<u64>, qt_core::AdapterError> {
        Ok(None)
    }
    async fn close(&self) -> Result<(), qt_core::AdapterError> {
        Ok(())
    }
}

/// A trigger for `c` on a source that cannot dead-letter.
fn without_dlq(c: qt_core::config::Config) -> qt_engine::QueueTrigger {
    let q = qt_adapter_mock::MockQueue::new("q");
    qt_engine::QueueTrigger::builder(c)
        .adapter(Arc::new(NoDlq(q.adapter())))
        .agent("default", ScriptedAgent::new("default") as Arc<dyn AgentRuntime>)
        .build()
        .unwrap()
}

/// A dead-letter settlement that the source cannot carry out is refused at start.
#[tokio::test]
async fn the_dlq_policy_needs_a_dlq_capable_source() {
    let mut c = config();
    c.processing.on_failure = FailureAction::Dlq;
    c.processing.on_parse_failure = UnprocessableAction::Nack;
    c.processing.on_unrouted = UnprocessableAction::Nack;
    let t = without_dlq(c);
    let err = t.start().await.unwrap_err().to_string();
    assert!(
        err.contains("processing.on_failure") && err.contains("dead-letter"),
        "{err}"
    );
    assert_eq!(t.state(), qt_engine::TriggerState::Failed);
}

/// A requeue cap dead-letters, so it is refused the same way on a source that cannot; an
/// unlimited requeue is not.
#[tokio::test]
async fn a_requeue_cap_needs_a_dlq_capable_source_and_unlimited_requeues_do_not() {
    let mut c = config();
    c.processing.on_failure = FailureAction::Requeue;
    c.processing.on_parse_failure = UnprocessableAction::Nack;
    c.processing.on_unrouted = UnprocessableAction::Nack;
    let t = without_dlq(c.clone());
    let err = t.start().await.unwrap_err().to_string();
    assert!(
        err.contains("processing.max_requeues asks for dead-lettering")
            && err.ends_with("configure one, or set processing.max_requeues: unlimited"),
        "{err}"
    );
    assert_eq!(t.state(), qt_engine::TriggerState::Failed);
    c.processing.max_requeues = RequeueLimit::Unlimited;
    let t = without_dlq(c);
    t.start().await.expect("an unlimited requeue never dead-letters");
    t.stop().await.expect("stops");
}
