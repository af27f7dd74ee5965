//! `ledger`: where audit records go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlLedgerConfig {
    /// File records are appended to, one JSON object per line. Required.
    #[serde(default)]
    pub path: PathBuf,
    /// Also fsync before acking, so records survive a machine crash, not just a process
    /// crash. Default false.
    #[serde(default)]
    pub fsync: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerConfig {
    /// Kept in memory (tests, benchmarks); lost on exit.
    Memory,
    /// Appended to a local file and flushed before each ack.
    Jsonl(JsonlLedgerConfig),
}

impl Default for LedgerConfig {
    /// `{type: jsonl, path: qt-ledger.jsonl}`: durable by default.
    fn default() -> Self {
        LedgerConfig::Jsonl(JsonlLedgerConfig {
            path: PathBuf::from("qt-ledger.jsonl"),
            fsync: false,
        })
    }
}

impl Validate for LedgerConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if let LedgerConfig::Jsonl(j) = self
            && j.path.as_os_str().is_empty()
        {
            problems.push(join(path, "path"), "required");
        }
    }
}
