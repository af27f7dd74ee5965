//! How failures are classified, so retry and settlement policy can differ per class.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The class of an agent failure. Retry policy (requirement 5.2) is configured per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A transient failure worth retrying (network error, 5xx, exit code 75).
    Retryable,
    /// The agent is throttled; a `retry_after` hint may come with it.
    RateLimited,
    /// The agent did not answer in time.
    Timeout,
    /// Retrying cannot help (bad input, 4xx, any other exit code).
    Permanent,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::Retryable,
        ErrorClass::RateLimited,
        ErrorClass::Timeout,
        ErrorClass::Permanent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// Whether a failure of this class may be tried again at all.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorClass::Permanent)
    }

    /// Dense index for per-class counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            format!("unknown error class {s:?} (expected retryable, rate_limited, timeout or permanent)")
        })
    }
}
