//! Turning Redis and pool failures into [`StoreError`]s that name the operation and never
//! carry a credential.

use std::fmt;
use std::time::Duration;

use deadpool::managed::{PoolError, TimeoutType};
use qt_core::{SecretUrl, StoreError};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What the store was doing when something failed; named in every error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Connect,
    Health,
    Claim,
    ClaimBatch,
    Complete,
    CompleteBatch,
    Release,
    ReleaseBatch,
    /// Paying completions and releases Redis did not confirm earlier ([`crate::debts`]).
    Repay,
}

/// Which part of an operation ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for, opening or checking a pooled connection.
    Connection,
    /// The round trip itself.
    Command,
}

macro_rules! operation_labels {
    ($($op:ident => $name:literal),* $(,)?) => {
        impl Operation {
            pub fn name(self) -> &'static str {
                match self { $(Operation::$op => $name,)* }
            }

            /// `StoreError::Timeout` wants a `&'static str`, hence one literal per pair.
            pub fn label(self, phase: Phase) -> &'static str {
                match (self, phase) {
                    $(
                        (Operation::$op, Phase::Command) => $name,
                        (Operation::$op, Phase::Connection) => concat!($name, " (getting a connection)"),
                    )*
                }
            }
        }
    };
}

operation_labels! {
    Connect => "connect",
    Health => "health check",
    Claim => "claim",
    ClaimBatch => "claim_batch",
    Complete => "complete",
    CompleteBatch => "complete_batch",
    Release => "release",
    ReleaseBatch => "release_batch",
    Repay => "repay of unconfirmed completions and releases",
}

/// Scrubs credentials out of text before it reaches an error or a log line: URL passwords
/// anywhere in the text (by shape), plus the literal passwords this store was given (the
/// URL's, decoded, and the `password` override), in case a library echoes one on its own.
#[derive(Clone)]
pub struct Redactor {
    endpoint: String,
    scrubber: qt_core::redact::Redactor,
}

/// Shorter values are not scrubbed literally: replacing every `ab` in a message would
/// garble it while hiding nothing an attacker could not guess anyway.
const MIN_SCRUBBED_LEN: usize = 4;

impl Redactor {
    pub fn new(url: &SecretUrl) -> Self {
        Self {
            endpoint: url.masked(),
            scrubber: qt_core::redact::Redactor::default(),
        }
    }

    pub fn add_secret(&mut self, secret: &str) {
        if secret.len() >= MIN_SCRUBBED_LEN {
            self.scrubber.add(secret);
        }
    }

    /// The store's URL with credentials masked: what errors call the store.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn clean(&self, text: &str) -> String {
        self.scrubber.redact(text)
    }

    pub fn unavailable(&self, reason: impl fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: self.endpoint.clone(),
            reason: self.clean(&reason.to_string()),
        }
    }

    pub fn timeout(&self, op: Operation, phase: Phase, after: Duration) -> StoreError {
        StoreError::Timeout {
            store: self.endpoint.clone(),
            operation: op.label(phase),
            after,
        }
    }

    /// A failed round trip. `after` is the command timeout, reported when the Redis client's
    /// own response timeout fired.
    pub fn redis(&self, op: Operation, err: &RedisError, after: Duration) -> StoreError {
        if err.is_timeout() {
            return self.timeout(op, Phase::Command, after);
        }
        self.unavailable(format!("{} failed: {err}{}", op.name(), hint(err)))
    }

    /// A failed checkout: `timeouts` are the pool's (wait, create, recycle) bounds.
    pub fn pool(&self, op: Operation, err: PoolError<RedisError>, timeouts: &PoolTimeouts) -> StoreError {
        match err {
            PoolError::Timeout(kind) => {
                let after = match kind {
                    TimeoutType::Wait => timeouts.wait,
                    TimeoutType::Create => timeouts.create,
                    TimeoutType::Recycle => timeouts.recycle,
                };
                self.timeout(op, Phase::Connection, after)
            }
            PoolError::Backend(e) if e.is_timeout() => self.timeout(op, Phase::Connection, timeouts.create),
            PoolError::Backend(e) => self.unavailable(format!(
                "{}: cannot open a connection: {e}{}",
                op.name(),
                connect_hint(&e)
            )),
            PoolError::Closed => self.unavailable(format!("{}: the store has been closed", op.name())),
            PoolError::NoRuntimeSpecified => self.unavailable(format!("{}: no async runtime configured", op.name())),
            PoolError::PostCreateHook(e) => self.unavailable(format!("{}: connection setup failed: {e}", op.name())),
        }
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("endpoint", &self.endpoint)
            .field("scrubber", &self.scrubber)
            .finish()
    }
}

/// The bounds a checkout runs under, kept for naming them in errors.
#[derive(Clone, Copy, Debug)]
pub struct PoolTimeouts {
    pub wait: Duration,
    pub create: Duration,
    pub recycle: Duration,
}

fn hint(err: &RedisError) -> &'static str {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::ReadOnly) => {
            " (this Redis is a read-only replica; point idempotency.store.url at the primary)"
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            " (the Redis user lacks a permission; see the qt-idempotency-redis docs for the ACL it needs)"
        }
        ErrorKind::Server(ServerErrorKind::BusyLoading) => " (Redis is loading its data set; retry shortly)",
        _ => "",
    }
}

fn connect_hint(err: &RedisError) -> &'static str {
    match err.kind() {
        ErrorKind::AuthenticationFailed => {
            " (check idempotency.store.username / password or the credentials in the url)"
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            " (the Redis user lacks a permission; see the qt-idempotency-redis docs for the ACL it needs)"
        }
        ErrorKind::InvalidClientConfig => " (check the TLS settings of idempotency.store)",
        _ if err.is_connection_refusal() => " (is Redis running and reachable at idempotency.store.url?)",
        _ => hint(err),
    }
}

/// Whether a connection that produced `err` must leave the pool: anything but a plain
/// error reply may mean a dead or desynchronised socket. A read-only reply means the server
/// became a replica (failover); a new connection may reach the new primary.
pub fn must_discard(err: &RedisError) -> bool {
    !matches!(
        err.kind(),
        ErrorKind::Server(kind) if kind != ServerErrorKind::ReadOnly
    ) && err.kind() != ErrorKind::UnexpectedReturnType
}

pub fn is_noscript(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_operation_and_phase() {
        assert_eq!(Operation::ClaimBatch.label(Phase::Command), "claim_batch");
        assert_eq!(
            Operation::Release.label(Phase::Connection),
            "release (getting a connection)"
        );
        assert_eq!(Operation::Health.name(), "health check");
    }

    #[test]
    fn redactor_masks_url_and_literal_passwords() {
        let url = SecretUrl::new("redis://app:s3cr3t-pw@10.0.0.5:6379/0");
        let mut r = Redactor::new(&url);
        r.add_secret("s3cr3t-pw");
        r.add_secret("override-pw");
        r.add_secret("ab");
        assert_eq!(r.endpoint(), "redis://app:***@10.0.0.5:6379/0");
        let text = "AUTH s3cr3t-pw failed for redis://app:s3cr3t-pw@10.0.0.5:6379 (override-pw) ab";
        let clean = r.clean(text);
        assert!(
            !clean.contains("s3cr3t-pw") && !clean.contains("override-pw"),
            "{clean}"
        );
        assert!(clean.ends_with(" ab"), "short values are left alone: {clean}");
        assert!(!format!("{r:?}").contains("pw"));
        let err = r.unavailable(text);
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(!format!("{err:?}").contains("pw"), "{err:?}");
    }

    #[test]
    fn discard_rules() {
        let io: RedisError = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone").into();
        assert!(must_discard(&io));
        let readonly: RedisError = (ServerErrorKind::ReadOnly.into(), "READONLY").into();
        assert!(must_discard(&readonly));
        let wrongtype: RedisError = (ServerErrorKind::ResponseError.into(), "WRONGTYPE").into();
        assert!(!must_discard(&wrongtype));
        let noscript: RedisError = (ServerErrorKind::NoScript.into(), "NOSCRIPT").into();
        assert!(!must_discard(&noscript));
        assert!(is_noscript(&noscript) && !is_noscript(&wrongtype));
    }

    #[test]
    fn timeouts_name_the_bound_that_fired() {
        let r = Redactor::new(&SecretUrl::new("redis://127.0.0.1:6379"));
        let t = PoolTimeouts {
            wait: Duration::from_millis(1),
            create: Duration::from_millis(2),
            recycle: Duration::from_millis(3),
        };
        match r.pool(Operation::Claim, PoolError::Timeout(TimeoutType::Create), &t) {
            StoreError::Timeout { operation, after, .. } => {
                assert_eq!(operation, "claim (getting a connection)");
                assert_eq!(after, Duration::from_millis(2));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        let io: RedisError = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        match r.redis(Operation::Complete, &io, Duration::from_secs(2)) {
            StoreError::Timeout { operation, after, .. } => {
                assert_eq!(operation, "complete");
                assert_eq!(after, Duration::from_secs(2));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
