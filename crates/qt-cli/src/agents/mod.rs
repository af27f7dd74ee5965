//! The agent targets the CLI ships: `command`, `http` and `log`.

mod command;
mod http;
mod log;
pub mod reaper;
mod report;
mod response;

use std::collections::HashMap;
use std::sync::Arc;

use qt_core::AgentRuntime;
use qt_core::config::{AgentConfig, TargetConfig};

pub use command::{CommandAgent, wait_for_ending_groups};
pub use http::HttpAgent;
pub use log::LogAgent;

/// One agent per configured target. A command target whose program cannot be found, or an
/// http target whose TLS files cannot be read, is an error here, at start, not on the first
/// message.
pub fn build(config: &AgentConfig) -> anyhow::Result<HashMap<String, Arc<dyn AgentRuntime>>> {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for (name, target) in &config.targets {
        let agent: Arc<dyn AgentRuntime> = match target {
            TargetConfig::Log => Arc::new(LogAgent::new(name)),
            TargetConfig::Command(c) => match CommandAgent::new(name, c) {
                Ok(a) => Arc::new(a),
                Err(e) => {
                    problems.push(format!("agent.targets.{name}.program: {e}"));
                    continue;
                }
            },
            TargetConfig::Http(h) => match HttpAgent::new(name, h) {
                Ok(a) => Arc::new(a),
                Err(e) => {
                    problems.push(format!("agent.targets.{name}.{e}"));
                    continue;
                }
            },
        };
        out.insert(name.clone(), agent);
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

/// An event for one JSON message `m-1` on the mock queue `orders`, for the targets' tests;
/// each test sets what it needs besides.
#[cfg(test)]
fn test_event(target: &str) -> qt_core::AgentEvent {
    use qt_core::{Headers, MessageEnvelope, Payload, SourceInfo, TraceId};

    qt_core::AgentEvent {
        target: Arc::from(target),
        focus: None,
        attempt: 1,
        envelope: Arc::new(MessageEnvelope {
            message_id: "m-1".to_owned(),
            payload: Payload::json(serde_json::json!({"order": 7})),
            headers: Headers::new(),
            received_at: chrono::Utc::now(),
            broker_timestamp: None,
            source: SourceInfo::new("mock", "orders"),
            dedup_key: None,
            event_name: None,
            tenant_id: None,
            ordering_key: None,
            trace_id: TraceId::random(),
            attempt: 1,
        }),
        selected_payload: None,
        trace: None,
    }
}
