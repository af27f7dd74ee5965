//! The outcome table: for every outcome, how the broker is told, what happens to the
//! idempotency claim, and what the ledger says. docs/operations.md shows it to operators.

use std::time::Duration;

use chrono::{DateTime, Utc};
use qt_core::config::{Config, DenyAction, FailureAction, UnprocessableAction};
use qt_core::envelope::EnvelopeError;
use qt_core::ledger::AttemptRecord;
use qt_core::{AgentError, AgentRun, DeadLetter, ErrorClass, LedgerStatus, Settlement};

use crate::backoff::GiveUpReason;
use crate::metrics::DlqReason;

/// How a message's processing ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded {
        run: AgentRun,
        attempts: u32,
        history: Vec<AttemptRecord>,
    },
    /// The claim said Completed: already processed within the window.
    Duplicate,
    /// Another worker holds the key right now.
    DuplicateInFlight,
    ParseFailed(EnvelopeError),
    Unrouted,
    Rejected {
        reason: String,
        policies: Vec<String>,
    },
    /// Governance said not now (or could not answer and fails closed).
    Deferred {
        retry_after: Duration,
        reason: String,
        policies: Vec<String>,
    },
    /// The idempotency store failed and `on_store_error: fail_closed`.
    StoreUnavailable(String),
    Failed {
        error: AgentError,
        give_up: GiveUpReason,
        attempts: u32,
        history: Vec<AttemptRecord>,
        first_failure: DateTime<Utc>,
    },
    /// Processing this message panicked (a bug); `stage` says in which step. Running it
    /// again would panic again, so it is never requeued.
    Panicked {
        stage: &'static str,
        message: String,
    },
    /// A stop began before the message's agent run started, or between its attempts:
    /// nothing is recorded or settled, its claim is released, and the message is handed
    /// back to the broker at once.
    HandedBack,
    /// A stop ran out of drain time mid-run: nothing is recorded or settled, the broker
    /// redelivers.
    Abandoned,
}

/// What happens to the idempotency claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimAction {
    Complete,
    Release,
}

/// The row of the table for one outcome.
#[derive(Debug)]
pub(crate) struct Resolution {
    pub status: LedgerStatus,
    pub settlement: Settlement,
    pub claim: ClaimAction,
    pub dlq_reason: Option<DlqReason>,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
}

fn dead_letter(reason: String, class: Option<ErrorClass>, attempts: u32) -> Settlement {
    let mut dl = DeadLetter::new(reason);
    dl.error_class = class;
    dl.attempts = attempts;
    Settlement::DeadLetter(Box::new(dl))
}

fn unprocessable(action: UnprocessableAction, reason: String, dlq: DlqReason) -> (Settlement, Option<DlqReason>) {
    match action {
        UnprocessableAction::Dlq => (dead_letter(reason, None, 0), Some(dlq)),
        UnprocessableAction::Nack => (Settlement::Nack, None),
        UnprocessableAction::Ack => (Settlement::Ack, None),
    }
}

/// Applies the table. `attempt` is the delivery attempt of the message (1 for its first
/// delivery; each earlier one counts against `processing.max_requeues`); a requeue carries
/// `attempt + 1`. `None` for [`Outcome::HandedBack`] and [`Outcome::Abandoned`]: those
/// messages are left to the broker.
pub(crate) fn resolve(outcome: &Outcome, config: &Config, attempt: u32, event: Option<&str>) -> Option<Resolution> {
    let p = &config.processing;
    let requeue = |delay: Duration| Settlement::Requeue {
        delay: Some(delay),
        attempt: attempt.saturating_add(1),
        traceparent: None,
    };
    let row = match outcome {
        Outcome::Succeeded { .. } => Resolution {
            status: LedgerStatus::Succeeded,
            settlement: Settlement::Ack,
            claim: ClaimAction::Complete,
            dlq_reason: None,
            error: None,
            error_class: None,
        },
        Outcome::Duplicate => Resolution {
            status: LedgerStatus::Duplicate,
            settlement: Settlement::Ack,
            claim: ClaimAction::Release,
            dlq_reason: None,
            error: None,
            error_class: None,
        },
        Outcome::DuplicateInFlight => Resolution {
            status: LedgerStatus::Deferred,
            settlement: requeue(p.duplicate_in_flight_delay),
            claim: ClaimAction::Release,
            dlq_reason: None,
            error: Some("idempotency key is being processed elsewhere".to_owned()),
            error_class: None,
        },
        Outcome::ParseFailed(e) => {
            let reason = e.to_string();
            let (settlement, dlq_reason) = unprocessable(p.on_parse_failure, reason.clone(), DlqReason::ParseFailed);
            Resolution {
                status: LedgerStatus::ParseFailed,
                settlement,
                claim: ClaimAction::Release,
                dlq_reason,
                error: Some(reason),
                error_class: Some(ErrorClass::Permanent),
            }
        }
        Outcome::Unrouted => {
            let reason = format!("no route for event {:?}", event.unwrap_or_default());
            let (settlement, dlq_reason) = unprocessable(p.on_unrouted, reason.clone(), DlqReason::Unrouted);
            Resolution {
                status: LedgerStatus::Unrouted,
                settlement,
                claim: ClaimAction::Release,
                dlq_reason,
                error: Some(reason),
                error_class: None,
            }
        }
        Outcome::Rejected { reason, .. } => {
            let (settlement, dlq_reason) = match p.on_governance_deny {
                DenyAction::Ack => (Settlement::Ack, None),
                DenyAction::Dlq => (
                    dead_letter(format!("rejected by governance: {reason}"), None, 0),
                    Some(DlqReason::Rejected),
                ),
            };
            Resolution {
                status: LedgerStatus::Rejected,
                settlement,
                claim: ClaimAction::Release,
                dlq_reason,
                error: None,
                error_class: None,
            }
        }
        Outcome::Deferred {
            retry_after, reason, ..
        } => Resolution {
            status: LedgerStatus::Deferred,
            settlement: requeue(*retry_after),
            claim: ClaimAction::Release,
            dlq_reason: None,
            error: Some(reason.clone()),
            error_class: None,
        },
        Outcome::StoreUnavailable(reason) => Resolution {
            status: LedgerStatus::Deferred,
            settlement: requeue(config.idempotency.store_error_delay),
            claim: ClaimAction::Release,
            dlq_reason: None,
            error: Some(reason.clone()),
            error_class: None,
        },
        Outcome::Failed {
            error,
            give_up,
            attempts,
            history,
            first_failure,
        } => {
            let mut reason = format!(
                "{}: {} after {attempts} attempt(s): {}",
                give_up.as_str(),
                error.class,
                error.message
            );
            let dead_letter = |reason: &str| {
                let mut dl = DeadLetter::new(reason.to_owned());
                dl.error_class = Some(error.class);
                dl.attempts = *attempts;
                dl.first_failure_at = Some(*first_failure);
                dl.last_failure_at = history.last().map(|h| h.at).or(Some(*first_failure));
                Settlement::DeadLetter(Box::new(dl))
            };
            let (settlement, dlq_reason) = match p.on_failure {
                FailureAction::Dlq => {
                    let label = match give_up {
                        GiveUpReason::Permanent => DlqReason::PermanentFailure,
                        GiveUpReason::RetriesExhausted => DlqReason::RetriesExhausted,
                        GiveUpReason::BudgetExhausted => DlqReason::RetryBudgetExhausted,
                    };
                    (dead_letter(&reason), Some(label))
                }
                FailureAction::Nack => (Settlement::Nack, None),
                FailureAction::Requeue if p.max_requeues.allows_requeue(attempt) => (requeue(p.requeue_delay), None),
                // A message that fails however often it comes back would circle for ever.
                FailureAction::Requeue => {
                    reason = format!(
                        "{}: failed after {} requeue(s) (processing.max_requeues: {}): {reason}",
                        DlqReason::RequeuesExhausted.as_str(),
                        attempt.saturating_sub(1),
                        p.max_requeues
                    );
                    (dead_letter(&reason), Some(DlqReason::RequeuesExhausted))
                }
                FailureAction::Ack => (Settlement::Ack, None),
            };
            Resolution {
                status: LedgerStatus::Failed,
                settlement,
                claim: ClaimAction::Release,
                dlq_reason,
                error: Some(reason),
                error_class: Some(error.class),
            }
        }
        Outcome::Panicked { stage, message } => {
            let reason = format!("permanent: processing panicked while {stage}: {message}");
            let (settlement, dlq_reason) = match p.on_failure {
                FailureAction::Dlq => (
                    dead_letter(reason.clone(), Some(ErrorClass::Permanent), 0),
                    Some(DlqReason::Panicked),
                ),
                // A requeued message would only panic again.
                FailureAction::Nack | FailureAction::Requeue => (Settlement::Nack, None),
                FailureAction::Ack => (Settlement::Ack, None),
            };
            Resolution {
                status: LedgerStatus::Failed,
                settlement,
                claim: ClaimAction::Release,
                dlq_reason,
                error: Some(reason),
                error_class: Some(ErrorClass::Permanent),
            }
        }
        Outcome::HandedBack | Outcome::Abandoned => return None,
    };
    Some(row)
}

#[cfg(test)]
mod tests {
    use qt_core::SettlementKind;
    use qt_core::config::{MockSourceConfig, RequeueLimit, SourceConfig};
    use qt_core::parse::ParseError;

    use super::*;

    fn config() -> Config {
        Config::with_source(SourceConfig::Mock(MockSourceConfig {
            queue: "orders".into(),
            file: None,
            dlq_file: None,
        }))
    }

    fn failed(error: AgentError, give_up: GiveUpReason) -> Outcome {
        Outcome::Failed {
            error,
            give_up,
            attempts: 3,
            history: Vec::new(),
            first_failure: Utc::now(),
        }
    }

    /// One row of the outcome table in docs/operations.md, with the default policies.
    struct Row {
        outcome: Outcome,
        status: LedgerStatus,
        settlement: SettlementKind,
        claim: ClaimAction,
        dlq_reason: Option<DlqReason>,
    }

    fn table() -> Vec<(&'static str, Row)> {
        use ClaimAction::{Complete, Release};
        use SettlementKind::{Ack, DeadLetter, Requeue};
        let row = |outcome, status, settlement, claim, dlq_reason| Row {
            outcome,
            status,
            settlement,
            claim,
            dlq_reason,
        };
        vec![
            (
                "success",
                row(
                    Outcome::Succeeded {
                        run: AgentRun::default(),
                        attempts: 1,
                        history: Vec::new(),
                    },
                    LedgerStatus::Succeeded,
                    Ack,
                    Complete,
                    None,
                ),
            ),
            (
                "duplicate",
                row(Outcome::Duplicate, LedgerStatus::Duplicate, Ack, Release, None),
            ),
            (
                "duplicate in flight elsewhere",
                row(
                    Outcome::DuplicateInFlight,
                    LedgerStatus::Deferred,
                    Requeue,
                    Release,
                    None,
                ),
            ),
            (
                "parse failure",
                row(
                    Outcome::ParseFailed(EnvelopeError::Parse(ParseError::EmptyBody)),
                    LedgerStatus::ParseFailed,
                    DeadLetter,
                    Release,
                    Some(DlqReason::ParseFailed),
                ),
            ),
            (
                "no route",
                row(
                    Outcome::Unrouted,
                    LedgerStatus::Unrouted,
                    DeadLetter,
                    Release,
                    Some(DlqReason::Unrouted),
                ),
            ),
            (
                "governance deny",
                row(
                    Outcome::Rejected {
                        reason: "tenant blocked".into(),
                        policies: vec!["deny-blocked".into()],
                    },
                    LedgerStatus::Rejected,
                    Ack,
                    Release,
                    None,
                ),
            ),
            (
                "governance defer",
                row(
                    Outcome::Deferred {
                        retry_after: Duration::from_secs(7),
                        reason: "rate limited".into(),
                        policies: Vec::new(),
                    },
                    LedgerStatus::Deferred,
                    Requeue,
                    Release,
                    None,
                ),
            ),
            (
                "agent failed, permanent",
                row(
                    failed(AgentError::permanent("bad input"), GiveUpReason::Permanent),
                    LedgerStatus::Failed,
                    DeadLetter,
                    Release,
                    Some(DlqReason::PermanentFailure),
                ),
            ),
            (
                "agent failed, retries exhausted",
                row(
                    failed(AgentError::retryable("timeout"), GiveUpReason::RetriesExhausted),
                    LedgerStatus::Failed,
                    DeadLetter,
                    Release,
                    Some(DlqReason::RetriesExhausted),
                ),
            ),
            (
                "agent failed, retry budget exhausted",
                row(
                    failed(AgentError::retryable("timeout"), GiveUpReason::BudgetExhausted),
                    LedgerStatus::Failed,
                    DeadLetter,
                    Release,
                    Some(DlqReason::RetryBudgetExhausted),
                ),
            ),
            (
                "idempotency store down, fail_closed",
                row(
                    Outcome::StoreUnavailable("connection refused".into()),
                    LedgerStatus::Deferred,
                    Requeue,
                    Release,
                    None,
                ),
            ),
            (
                "processing panicked",
                row(
                    Outcome::Panicked {
                        stage: "running",
                        message: "index out of bounds".into(),
                    },
                    LedgerStatus::Failed,
                    DeadLetter,
                    Release,
                    Some(DlqReason::Panicked),
                ),
            ),
        ]
    }

    #[test]
    fn every_row_of_the_outcome_table_resolves_as_documented_with_the_default_policies() {
        let config = config();
        for (name, row) in table() {
            let resolved = resolve(&row.outcome, &config, 2, Some("order.created"))
                .unwrap_or_else(|| panic!("{name}: resolved to nothing"));
            assert_eq!(resolved.status, row.status, "{name}: ledger status");
            assert_eq!(
                SettlementKind::from(&resolved.settlement),
                row.settlement,
                "{name}: settlement"
            );
            assert_eq!(resolved.claim, row.claim, "{name}: claim");
            assert_eq!(resolved.dlq_reason, row.dlq_reason, "{name}: dead-letter reason");
            if let Settlement::Requeue { attempt, .. } = resolved.settlement {
                assert_eq!(attempt, 3, "{name}: a requeue carries the next attempt");
            }
        }
    }

    #[test]
    fn each_requeue_waits_the_delay_its_row_names() {
        let config = config();
        let delay_of = |outcome: &Outcome| match resolve(outcome, &config, 1, None).map(|r| r.settlement) {
            Some(Settlement::Requeue { delay, .. }) => delay,
            other => panic!("{outcome:?} was not requeued: {other:?}"),
        };
        assert_eq!(
            delay_of(&Outcome::DuplicateInFlight),
            Some(config.processing.duplicate_in_flight_delay)
        );
        assert_eq!(
            delay_of(&Outcome::StoreUnavailable("down".into())),
            Some(config.idempotency.store_error_delay)
        );
        let deferred = Outcome::Deferred {
            retry_after: Duration::from_secs(7),
            reason: "rate limited".into(),
            policies: Vec::new(),
        };
        assert_eq!(delay_of(&deferred), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_message_left_to_the_broker_at_stop_resolves_to_nothing() {
        let config = config();
        assert!(resolve(&Outcome::HandedBack, &config, 1, None).is_none());
        assert!(resolve(&Outcome::Abandoned, &config, 1, None).is_none());
    }

    #[test]
    fn with_on_failure_requeue_a_failure_is_requeued_until_max_requeues_then_dead_lettered() {
        use RequeueLimit::{At, Unlimited};
        use SettlementKind::{DeadLetter, Requeue};
        // (max_requeues, delivery attempt of the failing message, settlement)
        let rows = [
            (At(3), 1, Requeue),
            (At(3), 3, Requeue),
            (At(3), 4, DeadLetter),
            (At(3), 9, DeadLetter),
            (At(0), 1, DeadLetter),
            (Unlimited, 1_000, Requeue),
        ];
        let mut config = config();
        config.processing.on_failure = FailureAction::Requeue;
        for (limit, attempt, settlement) in rows {
            config.processing.max_requeues = limit;
            let outcome = failed(AgentError::retryable("timeout"), GiveUpReason::RetriesExhausted);
            let row = format!("max_requeues {limit}, delivery {attempt}");
            let resolved = resolve(&outcome, &config, attempt, None).expect("a failure is recorded");
            assert_eq!(resolved.status, LedgerStatus::Failed, "{row}");
            assert_eq!(resolved.claim, ClaimAction::Release, "{row}");
            assert_eq!(SettlementKind::from(&resolved.settlement), settlement, "{row}");
            match resolved.settlement {
                Settlement::Requeue {
                    attempt: next, delay, ..
                } => {
                    assert_eq!(next, attempt + 1, "{row}");
                    assert_eq!(delay, Some(config.processing.requeue_delay), "{row}");
                    assert_eq!(resolved.dlq_reason, None, "{row}");
                }
                Settlement::DeadLetter(dl) => {
                    assert_eq!(resolved.dlq_reason, Some(DlqReason::RequeuesExhausted), "{row}");
                    assert_eq!(dl.error_class, Some(ErrorClass::Retryable), "{row}");
                    assert_eq!(dl.attempts, 3, "{row}: the agent attempts of the last delivery");
                    assert_eq!(
                        resolved.error.as_deref(),
                        Some(dl.reason.as_str()),
                        "{row}: the ledger says why"
                    );
                }
                other => panic!("{row}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_message_dead_lettered_at_the_requeue_cap_says_so_and_keeps_its_last_error() {
        let mut config = config();
        config.processing.on_failure = FailureAction::Requeue;
        config.processing.max_requeues = RequeueLimit::At(2);
        let outcome = failed(AgentError::permanent("bad input"), GiveUpReason::Permanent);
        let resolved = resolve(&outcome, &config, 3, None).expect("a failure is recorded");
        assert_eq!(
            resolved.error.as_deref(),
            Some(
                "requeues_exhausted: failed after 2 requeue(s) (processing.max_requeues: 2): \
                 permanent_failure: permanent after 3 attempt(s): bad input"
            )
        );
        assert_eq!(resolved.error_class, Some(ErrorClass::Permanent));
    }

    #[test]
    fn a_panicked_message_is_never_requeued_even_when_failures_are() {
        let mut config = config();
        config.processing.on_failure = FailureAction::Requeue;
        let panicked = Outcome::Panicked {
            stage: "running",
            message: "boom".into(),
        };
        let resolved = resolve(&panicked, &config, 1, None).expect("a panic is recorded");
        assert!(matches!(resolved.settlement, Settlement::Nack));
    }
}
