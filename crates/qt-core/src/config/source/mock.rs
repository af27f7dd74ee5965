//! `source` with `type: mock`: an in-memory queue, optionally fed from a JSONL file.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::problems::{ConfigErrors, Validate, join};

/// `source` with `type: mock`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the mock source fields (`queue`, `file`, `dlq_file`)"
)]
pub struct MockSourceConfig {
    /// Queue name used in logs and the ledger.
    #[serde(default = "default_queue", alias = "queue_name")]
    #[schemars(extend("x-aliases" = ["queue_name"]))]
    pub queue: String,
    /// JSONL file of messages enqueued at start, one per line:
    /// `{"id": "...", "headers": {...}, "key": "...", "json": {...}}` (or `"text"` /
    /// `"body_base64"` instead of `"json"`). Unset: the queue starts empty and is fed by
    /// `qt send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// JSONL file dead letters are appended to, in the same format plus `reason`,
    /// `error_class` and `attempts`. Unset: they are kept in memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_file: Option<PathBuf>,
}

fn default_queue() -> String {
    "mock".to_owned()
}

impl Validate for MockSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.queue.trim().is_empty() {
            problems.push(join(path, "queue"), "must not be empty");
        }
        if let Some(f) = &self.file
            && f.as_os_str().is_empty()
        {
            problems.push(join(path, "file"), "must not be empty");
        }
    }
}
