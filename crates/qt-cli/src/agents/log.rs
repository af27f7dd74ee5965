//! A target that logs each event and succeeds: for trying a configuration out.

use async_trait::async_trait;
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime};
use tracing::info;

#[derive(Debug)]
pub struct LogAgent {
    target: String,
}

impl LogAgent {
    pub fn new(target: &str) -> Self {
        Self {
            target: target.to_owned(),
        }
    }
}

#[async_trait]
impl AgentRuntime for LogAgent {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let payload = serde_json::to_string(&event.to_json().context.payload)
            .map_err(|e| AgentError::permanent(format!("cannot serialize the payload: {e}")))?;
        const SHOWN: usize = 512;
        let shown = if payload.len() > SHOWN {
            let cut = (0..=SHOWN).rev().find(|i| payload.is_char_boundary(*i)).unwrap_or(0);
            format!("{}… ({} bytes)", &payload[..cut], payload.len())
        } else {
            payload
        };
        info!(
            trace_id = %event.envelope.trace_id,
            message_id = %event.envelope.message_id,
            target = %self.target,
            event = %event.event_name(),
            tenant = event.tenant_id().unwrap_or(""),
            focus = event.focus().unwrap_or(""),
            attempt = event.attempt,
            payload = %shown,
            "event"
        );
        Ok(AgentRun::default())
    }
}
