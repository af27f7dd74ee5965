//! What can go wrong, worded for an operator: every error names the ledger (its URL with
//! the password masked, and its table) and what failed. Nothing here ever holds the password:
//! driver messages pass through [`Redactor`] first.

use std::error::Error as _;

use qt_core::LedgerError;
use qt_core::redact::Redactor as Scrubber;

/// Why the ledger could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum PostgresLedgerError {
    /// The configuration is wrong; nothing was tried.
    #[error("ledger {ledger}: invalid configuration: {problems}")]
    Config { ledger: String, problems: String },
    /// Something was tried and failed.
    #[error("ledger {ledger}: cannot {action}: {reason}")]
    Failed {
        ledger: String,
        action: &'static str,
        reason: String,
    },
}

impl From<PostgresLedgerError> for LedgerError {
    fn from(e: PostgresLedgerError) -> Self {
        match e {
            PostgresLedgerError::Config { ledger, problems } => LedgerError {
                ledger,
                reason: format!("invalid configuration: {problems}"),
            },
            PostgresLedgerError::Failed { ledger, action, reason } => LedgerError {
                ledger,
                reason: format!("cannot {action}: {reason}"),
            },
        }
    }
}

/// Names the ledger in errors and scrubs the password out of driver messages.
#[derive(Clone, Debug)]
pub struct Redactor {
    ledger: String,
    scrubber: Scrubber,
}

impl Redactor {
    /// `ledger` must already be safe to print (a masked URL and the table).
    pub fn new(ledger: String) -> Self {
        Self {
            ledger,
            scrubber: Scrubber::default(),
        }
    }

    /// Also scrub this literal value (the password the connection uses).
    pub fn add_secret(&mut self, secret: &str) {
        self.scrubber.add(secret);
    }

    pub fn ledger(&self) -> &str {
        &self.ledger
    }

    /// `text` with URL credentials and the password masked.
    pub fn scrub(&self, text: &str) -> String {
        self.scrubber.redact(text)
    }

    pub fn config(&self, problems: &str) -> PostgresLedgerError {
        PostgresLedgerError::Config {
            ledger: self.ledger.clone(),
            problems: self.scrub(problems),
        }
    }

    pub fn failed(&self, action: &'static str, reason: &str) -> PostgresLedgerError {
        PostgresLedgerError::Failed {
            ledger: self.ledger.clone(),
            action,
            reason: self.scrub(reason),
        }
    }
}

/// A driver error in full: its kind, the server's message, detail and hint for database
/// errors, and the chain of causes (the I/O error behind "error connecting to server").
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{} {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            out.push_str("; detail: ");
            out.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            out.push_str("; hint: ");
            out.push_str(hint);
        }
        return out;
    }
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A pool error in full; `wait` is how long a connection was waited for.
pub fn describe_pool(e: &deadpool_postgres::PoolError, wait: std::time::Duration) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(pg) => describe_pg(pg),
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => format!(
            "no pooled connection became free within {wait:?} (ledger.statement_timeout); raise \
             ledger.pool_size or look for slow statements"
        ),
        PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => {
            "connecting timed out (ledger.connect_timeout); is PostgreSQL up and reachable?".to_owned()
        }
        PoolError::Timeout(_) => "checking a pooled connection timed out".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_the_password_in_urls_and_as_a_bare_word() {
        let mut r = Redactor::new("postgres://qt:***@db:5432/qt (public.qt_ledger)".into());
        r.add_secret("s3cr3t-pw");
        let out = r.scrub("failed for postgres://qt:s3cr3t-pw@db/qt: password s3cr3t-pw rejected");
        assert!(!out.contains("s3cr3t-pw"), "{out}");
        assert!(out.contains("postgres://qt:***@db/qt"), "{out}");
        let err = r.failed("write records", "password s3cr3t-pw rejected").to_string();
        assert_eq!(
            err,
            "ledger postgres://qt:***@db:5432/qt (public.qt_ledger): cannot write records: password *** rejected"
        );
        assert!(!format!("{r:?}").contains("s3cr3t-pw"));
    }
}
