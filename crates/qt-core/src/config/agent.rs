//! `agent`: the targets events are delivered to and the routes that pick one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::secret::Secret;

/// A program run once per message: the event as JSON on stdin; exit 0 is success (stdout
/// may carry `{"run_id": "...", "llm_calls": N}`), exit 75 (EX_TEMPFAIL) is a retryable
/// failure, any other exit is permanent; running past `timeout` counts as a timeout and ends
/// the program's process group (SIGTERM, then SIGKILL after a grace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandTarget {
    /// Program to run. Required.
    #[serde(default)]
    pub program: PathBuf,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Default 30s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra environment variables. Values are treated as secrets: never printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Where events go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TargetConfig {
    Command(CommandTarget),
    /// Logs the event and succeeds: for trying configurations out.
    Log,
}

/// Sends events whose name matches `event` to `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob on the event name, e.g. `order.*`. Required.
    #[serde(default)]
    pub event: String,
    /// Name of a target in `agent.targets`. Required.
    #[serde(default)]
    pub target: String,
    /// Narrows what the agent may use (requirement 4.4). Default: `agent.focus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Named targets. At least one is required.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Tried in order; the first whose glob matches the event name wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Target for events no route matches. Default: the only target when there is exactly
    /// one and no routes; otherwise none (such events are unrouted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target: Option<String>,
    /// Focus for events whose route sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
}

impl AgentConfig {
    /// The target unrouted events go to, applying the single-target default.
    pub fn effective_default_target(&self) -> Option<&str> {
        if let Some(t) = &self.default_target {
            return Some(t);
        }
        if self.routes.is_empty() && self.targets.len() == 1 {
            return self.targets.keys().next().map(String::as_str);
        }
        None
    }
}

impl Validate for AgentConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.targets.is_empty() {
            problems.push(
                join(path, "targets"),
                "at least one target is required (e.g. `default: {type: log}`)",
            );
        }
        for (name, t) in &self.targets {
            if let TargetConfig::Command(c) = t {
                let at = join(&join(path, "targets"), name);
                if c.program.as_os_str().is_empty() {
                    problems.push(join(&at, "program"), "required");
                }
                if c.timeout.is_zero() {
                    problems.push(join(&at, "timeout"), "must be longer than 0s");
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = join(path, &format!("routes[{i}]"));
            if !self.targets.contains_key(&r.target) {
                problems.push(
                    join(&at, "target"),
                    format!("no target named {:?} in {}", r.target, join(path, "targets")),
                );
            }
            if r.event.is_empty() {
                problems.push(join(&at, "event"), "required (a glob such as `order.*` or `*`)");
            } else if let Err(e) = globset::Glob::new(&r.event) {
                problems.push(join(&at, "event"), format!("invalid glob {:?}: {}", r.event, e.kind()));
            }
        }
        if let Some(t) = &self.default_target
            && !self.targets.contains_key(t)
        {
            problems.push(
                join(path, "default_target"),
                format!("no target named {t:?} in {}", join(path, "targets")),
            );
        }
    }
}
