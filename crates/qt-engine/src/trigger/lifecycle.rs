//! Start, pause, resume and stop: the trigger's state machine, and the drain a stop waits for.

use std::time::{Duration, Instant};

use qt_core::config::ProcessingConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::backlog::poll_backlog;
use super::{QueueTrigger, Running, TriggerState};
use crate::pipeline::intake::Intake;

/// Why a lifecycle call failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot {action} a trigger that is {state}")]
    InvalidTransition { action: &'static str, state: &'static str },
    #[error("cannot start: {0}")]
    Start(String),
    #[error("the source refused to {action}: {reason}")]
    Adapter { action: &'static str, reason: String },
}

/// What a stop did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StopReport {
    /// Every in-flight message finished within the drain timeout.
    pub drained: bool,
    /// How long the drain took.
    pub drain_ms: u64,
}

impl QueueTrigger {
    /// Connects the source and starts consuming.
    pub async fn start(&self) -> Result<(), LifecycleError> {
        let mut running = self.shared.running.lock().await;
        let state = self.state();
        if state != TriggerState::Created {
            return Err(LifecycleError::InvalidTransition {
                action: "start",
                state: state.as_str(),
            });
        }
        self.shared.state.send_replace(TriggerState::Starting);
        let s = &self.shared;
        let p = &s.pipeline;
        if let Err(e) = self.check_capabilities() {
            s.state.send_replace(TriggerState::Failed);
            return Err(LifecycleError::Start(e));
        }
        if let Err(e) = s.adapter.connect().await {
            s.state.send_replace(TriggerState::Failed);
            return Err(LifecycleError::Start(format!(
                "{} source {}: {e}",
                s.adapter.kind(),
                s.adapter.queue()
            )));
        }
        let batches = TaskTracker::new();
        let stop_intake = CancellationToken::new();
        let intake = Intake {
            pipeline: p.clone(),
            adapter: s.adapter.clone(),
            in_flight: s.in_flight.clone(),
            max_in_flight: s.max_in_flight,
            batches: batches.clone(),
            stop: stop_intake.clone(),
            state: s.state.subscribe(),
            source_error: s.source_error.clone(),
        };
        let intake = tokio::spawn(intake.run());
        let backlog_poller = tokio::spawn(poll_backlog(s.adapter.clone(), p.metrics.clone()));
        *s.started_at.lock() = Some(Instant::now());
        s.state.send_replace(TriggerState::Running);
        info!(
            name = %p.config.name,
            adapter = s.adapter.kind(),
            queue = s.adapter.queue(),
            concurrency = p.config.processing.concurrency,
            max_in_flight = s.max_in_flight,
            "trigger started"
        );
        *running = Some(Running {
            stop_intake,
            intake,
            batches,
            backlog_poller,
        });
        Ok(())
    }

    /// Settlement policies that the adapter cannot carry out are refused at start, not
    /// discovered on the first failing message.
    fn check_capabilities(&self) -> Result<(), String> {
        let caps = self.shared.adapter.capabilities();
        // The same list configuration validation checks against the source's settings.
        let needs_dlq = self.shared.pipeline.config.processing.dead_letter_requests();
        if !caps.dead_letter && !needs_dlq.is_empty() {
            return Err(format!(
                "{} {} dead-lettering, but this {} source has no dead-letter destination configured; configure one, or {}",
                needs_dlq.join(", "),
                if needs_dlq.len() == 1 { "asks for" } else { "ask for" },
                self.shared.adapter.kind(),
                ProcessingConfig::without_dead_letters(&needs_dlq)
            ));
        }
        Ok(())
    }

    /// Stops taking new messages; in-flight ones finish. The broker keeps the connection.
    pub async fn pause(&self) -> Result<(), LifecycleError> {
        self.refuse_once_ending("pause")?;
        let _guard = self.shared.running.lock().await;
        match self.state() {
            TriggerState::Running => {}
            TriggerState::Paused => return Ok(()),
            other => {
                return Err(LifecycleError::InvalidTransition {
                    action: "pause",
                    state: other.as_str(),
                });
            }
        }
        self.shared.state.send_replace(TriggerState::Paused);
        self.shared.adapter.pause().await.map_err(|e| LifecycleError::Adapter {
            action: "pause",
            reason: e.to_string(),
        })?;
        info!(name = %self.config().name, "trigger paused");
        Ok(())
    }

    /// Takes messages again after [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<(), LifecycleError> {
        self.refuse_once_ending("resume")?;
        let _guard = self.shared.running.lock().await;
        match self.state() {
            TriggerState::Paused => {}
            TriggerState::Running => return Ok(()),
            other => {
                return Err(LifecycleError::InvalidTransition {
                    action: "resume",
                    state: other.as_str(),
                });
            }
        }
        self.shared
            .adapter
            .resume()
            .await
            .map_err(|e| LifecycleError::Adapter {
                action: "resume",
                reason: e.to_string(),
            })?;
        self.shared.state.send_replace(TriggerState::Running);
        info!(name = %self.config().name, "trigger resumed");
        Ok(())
    }

    /// A stop holds the lifecycle lock for its whole drain, so a pause or resume asked
    /// meanwhile is refused at once rather than after the drain.
    fn refuse_once_ending(&self, action: &'static str) -> Result<(), LifecycleError> {
        match self.state() {
            state @ (TriggerState::Stopping | TriggerState::Stopped | TriggerState::Failed) => {
                Err(LifecycleError::InvalidTransition {
                    action,
                    state: state.as_str(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Graceful stop: stop intake; start no agent run or retry; hand every message taken but
    /// not running back to the broker at once (its claim released, nothing recorded); let
    /// runs in progress finish up to the drain timeout, settle what finished, flush the
    /// ledger, close the source. Runs still going after the timeout are abandoned
    /// unacknowledged, so the broker redelivers them.
    pub async fn stop(&self) -> Result<StopReport, LifecycleError> {
        let mut guard = self.shared.running.lock().await;
        let Some(running) = guard.take() else {
            let state = self.state();
            if matches!(state, TriggerState::Stopped) {
                return Ok(StopReport {
                    drained: true,
                    drain_ms: 0,
                });
            }
            if matches!(state, TriggerState::Created | TriggerState::Failed) {
                self.shared.state.send_replace(TriggerState::Stopped);
                return Ok(StopReport {
                    drained: true,
                    drain_ms: 0,
                });
            }
            return Err(LifecycleError::InvalidTransition {
                action: "stop",
                state: state.as_str(),
            });
        };
        let s = &self.shared;
        let p = &s.pipeline;
        s.state.send_replace(TriggerState::Stopping);
        let started = Instant::now();
        running.stop_intake.cancel();
        p.stopping.cancel();
        let _ = running.intake.await;
        running.backlog_poller.abort();
        running.batches.close();
        let drain = p.config.processing.drain_timeout;
        let drained = tokio::time::timeout(drain, running.batches.wait()).await.is_ok();
        if !drained {
            warn!(
                timeout = ?drain,
                running = p.metrics.snapshot().running,
                "drain timeout passed; abandoning runs still in progress (their messages will be redelivered)"
            );
            p.abort.cancel();
            running.batches.wait().await;
        }
        if let Err(e) = p.ledger.flush().await {
            warn!(error = %e, "ledger flush at stop failed");
        }
        if let Err(e) = s.adapter.close().await {
            warn!(error = %e, "closing the source failed");
        }
        s.state.send_replace(TriggerState::Stopped);
        let report = StopReport {
            drained,
            drain_ms: started.elapsed().as_millis() as u64,
        };
        info!(name = %p.config.name, drained, drain_ms = report.drain_ms, "trigger stopped");
        Ok(report)
    }

    /// Waits until intake ends on its own (the source closed) or the trigger is stopped.
    pub async fn wait_source_closed(&self) {
        let mut rx = self.subscribe_state();
        loop {
            if matches!(*rx.borrow_and_update(), TriggerState::Stopped | TriggerState::Failed) {
                return;
            }
            let finished = {
                let guard = self.shared.running.lock().await;
                guard.as_ref().is_none_or(|r| r.intake.is_finished())
            };
            if finished {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
