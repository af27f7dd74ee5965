use async_trait::async_trait;
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime};

/// An agent that returns at once, so a benchmark measures qt and not the agent.
#[derive(Debug)]
pub struct NoOpAgent;

#[async_trait]
impl AgentRuntime for NoOpAgent {
    async fn trigger_event(&self, _event: &AgentEvent) -> Result<AgentRun, AgentError> {
        Ok(AgentRun::default())
    }
}
