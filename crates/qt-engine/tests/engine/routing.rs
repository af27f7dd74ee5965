//! Agent context, focus, routing and ordering through the engine (requirement 4).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use qt_core::AgentRuntime;
use qt_core::config::{Ordering, Route};
use serde_json::json;

use crate::support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Agent context (4.1, 4.2) and focus (4.4): the agent receives the message's id,
    /// payload, headers, tenant and origin, and the focus of the route that matched (or
    /// the default focus).
    #[test]
    fn context_and_focus_reach_the_agent(
        payload in prop::collection::btree_map("[a-z]{1,6}", "[a-zA-Z0-9 ]{0,12}", 0..5),
        tenant in proptest::option::of("[a-z]{1,8}"),
        header_value in "[a-zA-Z0-9]{1,12}",
        routed in any::<bool>(),
        route_focus in proptest::option::of("[a-z-]{1,12}"),
    ) {
        rt().block_on(async {
            let mut c = config();
            c.agent.focus = Some("default-focus".into());
            c.agent.routes = vec![Route { event: "special.*".into(), target: "default".into(), focus: route_focus.clone() }];
            c.agent.default_target = Some("default".into());
            let agent = ScriptedAgent::new("default");
            let event = if routed { "special.thing" } else { "ordinary" };
            let mut headers = vec![("x-event-name", event), ("x-custom", header_value.as_str())];
            if let Some(t) = &tenant { headers.push(("x-tenant-id", t.as_str())); }
            let body = json!(payload);
            let ran = run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], vec![msg("m1", &headers, body.clone())]).await;
            let calls = agent.calls();
            prop_assert_eq!(calls.len(), 1);
            let call = &calls[0];
            prop_assert_eq!(&call.message_id, "m1");
            prop_assert_eq!(&call.payload, &body);
            prop_assert_eq!(&call.event_name, event);
            prop_assert_eq!(&call.tenant_id, &tenant);
            prop_assert_eq!(call.event.envelope.headers.get("x-custom"), Some(header_value.as_str()));
            prop_assert_eq!(&*call.event.envelope.source.queue, "q");
            let expected_focus = if routed { route_focus.clone().or(Some("default-focus".into())) } else { Some("default-focus".into()) };
            prop_assert_eq!(&call.focus, &expected_focus);
            let json = serde_json::to_value(call.event.to_json()).unwrap();
            prop_assert_eq!(&json["context"]["message_id"], &json!("m1"));
            prop_assert_eq!(&json["context"]["payload"], &body);
            prop_assert_eq!(&json["context"]["source"]["queue"], &json!("q"));
            let finals = ran.final_records();
            prop_assert_eq!(finals["m1"].target.as_deref(), Some("default"));
            Ok(())
        })?;
    }

    /// Event routing (4.3): each event reaches the target of the first route its name
    /// matches.
    #[test]
    fn events_reach_their_targets(events in prop::collection::vec(prop_oneof![Just("order.created"), Just("order.paid"), Just("user.created"), Just("audit")], 1..20)) {
        rt().block_on(async {
            let mut c = config();
            c.agent.routes = vec![
                Route { event: "order.*".into(), target: "orders".into(), focus: None },
                Route { event: "user.*".into(), target: "users".into(), focus: None },
                Route { event: "*".into(), target: "rest".into(), focus: None },
            ];
            let agents: Vec<Arc<ScriptedAgent>> = ["orders", "users", "rest"].iter().map(|n| ScriptedAgent::new(n)).collect();
            let pairs: Vec<(&str, Arc<dyn AgentRuntime>)> = vec![("orders", agents[0].clone()), ("users", agents[1].clone()), ("rest", agents[2].clone())];
            let messages = events.iter().enumerate().map(|(i, e)| msg(&format!("m{i}"), &[("x-event-name", e)], json!({}))).collect();
            run_to_idle(c, &pairs, messages).await;
            for (i, e) in events.iter().enumerate() {
                let want = if e.starts_with("order.") { 0 } else if e.starts_with("user.") { 1 } else { 2 };
                for (j, a) in agents.iter().enumerate() {
                    prop_assert_eq!(a.runs_of(&format!("m{i}")), usize::from(j == want), "event {} agent {}", e, j);
                }
            }
            Ok(())
        })?;
    }

    /// Ordering (`ordering: key`): runs of one key never overlap and follow arrival order,
    /// whatever the concurrency.
    #[test]
    fn same_key_runs_in_order(keys in prop::collection::vec(0u8..4, 1..30), concurrency in 1usize..8) {
        rt().block_on(async {
            let mut c = config();
            c.processing.concurrency = concurrency;
            c.processing.ordering = Ordering::Key;
            c.processing.extraction.ordering_key = vec![qt_core::extract::FieldSource::Header("x-order".into())];
            c.idempotency.enabled = false;
            let agent = ScriptedAgent::new("default");
            let messages = keys.iter().enumerate().map(|(i, k)| msg(&format!("m{i}"), &[("x-order", &k.to_string())], json!({"do": "sleep", "ms": 1}))).collect();
            run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
            let mut order: HashMap<String, Vec<usize>> = HashMap::new();
            for call in agent.calls() {
                let k = call.event.envelope.headers.get("x-order").unwrap().to_owned();
                order.entry(k).or_default().push(call.message_id[1..].parse().unwrap());
            }
            for (k, seq) in order {
                let mut sorted = seq.clone();
                sorted.sort_unstable();
                prop_assert_eq!(seq, sorted, "key {} ran out of order", k);
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Config applied (2.1, 3.3): for any concurrency and parser, simultaneous runs never
    /// exceed the concurrency and the agent sees payloads of the configured format.
    #[test]
    fn configuration_is_applied(concurrency in 1usize..6, text in any::<bool>(), batch_size in 1usize..8) {
        rt().block_on(async {
            let mut c = config();
            c.processing.concurrency = concurrency;
            c.processing.batch_size = batch_size;
            c.processing.parser = if text { qt_core::parse::PayloadFormat::Text } else { qt_core::parse::PayloadFormat::Json };
            let agent = ScriptedAgent::new("default");
            let messages = (0..10).map(|i| msg(&format!("m{i}"), &[], json!({"do": "sleep", "ms": 2}))).collect();
            run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
            prop_assert!(agent.max_running.load(std::sync::atomic::Ordering::SeqCst) <= concurrency);
            let calls = agent.calls();
            prop_assert_eq!(calls.len(), 10);
            for call in calls {
                prop_assert_eq!(call.event.envelope.payload.format(), if text { "text" } else { "json" });
            }
            Ok(())
        })?;
    }
}

/// Config applied (2.1): concurrency bounds simultaneous agent runs, and enough slow
/// messages fill every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_agent_runs() {
    for concurrency in [1, 3, 8] {
        let mut c = config();
        c.processing.concurrency = concurrency;
        let agent = ScriptedAgent::new("default");
        let messages = (0..40)
            .map(|i| msg(&format!("m{i}"), &[], json!({"do": "sleep", "ms": 5})))
            .collect();
        run_to_idle(c, &[("default", agent.clone() as Arc<dyn AgentRuntime>)], messages).await;
        let max = agent.max_running.load(std::sync::atomic::Ordering::SeqCst);
        assert!(max <= concurrency, "{max} > {concurrency}");
        assert_eq!(max, concurrency, "enough slow messages fill every slot");
    }
}

/// Config applied (2.1, 3.3): the configured parser decides the payload the agent sees.
#[tokio::test]
async fn the_configured_parser_is_used() {
    let mut c = config();
    c.processing.parser = qt_core::parse::PayloadFormat::Text;
    let agent = ScriptedAgent::new("default");
    run_to_idle(
        c,
        &[("default", agent.clone() as Arc<dyn AgentRuntime>)],
        vec![ok("t1")],
    )
    .await;
    assert_eq!(agent.calls()[0].payload, json!("{\"do\":\"ok\"}"));
    assert_eq!(agent.calls()[0].event.envelope.payload.format(), "text");
}
