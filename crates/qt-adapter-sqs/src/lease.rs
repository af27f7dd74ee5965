//! One received message's visibility: the heartbeat that keeps it invisible while it is
//! unsettled, and what happens to it when its handle goes away.
//!
//! A heartbeat task per unsettled message wakes when half of the visibility timeout is
//! left and extends it by a full timeout, until the message has been invisible for
//! `max_visibility_extension` since its receipt; then the message is left to time out and
//! be redelivered. A settlement first stops the heartbeat and waits out any extension in
//! flight, so the settlement's own visibility change is always the last one SQS sees.
//! A lease dropped unsettled makes its message visible at once (best effort: if that
//! fails, the visibility timeout brings it back anyway).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::connection::{Failure, classify, describe};
use crate::queue::{QueueCtx, visibility_seconds};

/// SQS counts its 12h visibility limit from its own receipt, a little before ours.
const RECEIPT_SLACK: Duration = Duration::from_secs(5);

struct LeaseState {
    receipt_handle: String,
    message_id: String,
    received: Instant,
    /// Stops the heartbeat; a child of the adapter's shutdown token.
    stop: CancellationToken,
    visibility: Mutex<Visibility>,
}

struct Visibility {
    /// When SQS makes the message visible again, as far as qt knows.
    visible_at: Instant,
    /// Settled, released or abandoned: no more changes from the heartbeat.
    finished: bool,
}

/// The right to keep one message invisible. Holds one of the adapter's in-flight permits
/// until it is dropped.
pub struct Lease {
    ctx: Arc<QueueCtx>,
    state: Arc<LeaseState>,
    /// Whether dropping the lease releases the message.
    armed: bool,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Starts the lease of a message received at `received`, and its heartbeat where the
    /// queue's visibility timeout and `max_visibility_extension` allow one.
    pub fn start(
        ctx: Arc<QueueCtx>,
        receipt_handle: String,
        message_id: String,
        received: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let state = Arc::new(LeaseState {
            receipt_handle,
            message_id,
            received,
            stop: ctx.shutdown.child_token(),
            visibility: Mutex::new(Visibility {
                visible_at: received + ctx.visibility_timeout,
                finished: false,
            }),
        });
        if ctx.visibility_timeout >= Duration::from_secs(1) && !ctx.max_extension.is_zero() {
            tokio::spawn(heartbeat(Arc::clone(&ctx), Arc::clone(&state)));
        }
        Self {
            ctx,
            state,
            armed: true,
            _permit: permit,
        }
    }

    pub fn receipt_handle(&self) -> &str {
        &self.state.receipt_handle
    }

    /// Stops the heartbeat and waits for an extension in flight, so that what the caller
    /// does next is the last word on the message's visibility. The lease no longer
    /// releases the message when dropped.
    pub async fn finish(&mut self) {
        self.armed = false;
        self.state.stop.cancel();
        self.state.visibility.lock().await.finished = true;
    }

    /// Makes the message visible now (adapter closing with the message still buffered).
    pub async fn release(mut self) {
        self.finish().await;
        if let Err(e) = self
            .ctx
            .change_visibility(&self.state.receipt_handle, Duration::ZERO)
            .await
        {
            tracing::debug!(
                queue = %self.ctx.url,
                message_id = %self.state.message_id,
                error = %describe(&e),
                "could not release message; it returns when its visibility timeout ends"
            );
        }
    }

    /// Keeps the message invisible for `by` from now (`AckHandle::extend`).
    pub async fn extend(&self, by: Duration) -> Result<(), String> {
        let mut visibility = self.state.visibility.lock().await;
        if visibility.finished {
            return Ok(());
        }
        let asked_at = Instant::now();
        self.ctx
            .change_visibility(&self.state.receipt_handle, by)
            .await
            .map_err(|e| describe(&e))?;
        visibility.visible_at = asked_at + Duration::from_secs(visibility_seconds(by).unsigned_abs().into());
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.stop.cancel();
        if !self.armed {
            return;
        }
        // Dropped unsettled: hand the message back now rather than after its timeout.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ctx = Arc::clone(&self.ctx);
        let state = Arc::clone(&self.state);
        runtime.spawn(async move {
            let mut visibility = state.visibility.lock().await;
            if visibility.finished {
                return;
            }
            visibility.finished = true;
            if let Err(e) = ctx.change_visibility(&state.receipt_handle, Duration::ZERO).await {
                tracing::debug!(
                    queue = %ctx.url,
                    message_id = %state.message_id,
                    error = %describe(&e),
                    "could not release abandoned message; it returns when its visibility timeout ends"
                );
            }
        });
    }
}

/// How far to push the visibility at `now`: a full visibility timeout, cut so the message
/// stays invisible no later than `limit`, in whole seconds. `None` when that would not move
/// `visible_at` later, i.e. the extension budget is spent.
pub fn next_extension(now: Instant, visible_at: Instant, limit: Instant, timeout: Duration) -> Option<Duration> {
    let left = limit.checked_duration_since(now)?;
    let secs = timeout.min(left).as_secs();
    let extension = Duration::from_secs(secs);
    (secs >= 1 && now + extension > visible_at).then_some(extension)
}

async fn heartbeat(ctx: Arc<QueueCtx>, state: Arc<LeaseState>) {
    let timeout = ctx.visibility_timeout;
    let budget = ctx
        .max_extension
        .min(qt_core::config::SQS_MAX_VISIBILITY.saturating_sub(RECEIPT_SLACK));
    let limit = state.received + budget;
    let mut retry_at: Option<Instant> = None;
    loop {
        let visible_at = state.visibility.lock().await.visible_at;
        let wake = retry_at.unwrap_or_else(|| visible_at.checked_sub(timeout / 2).unwrap_or(visible_at));
        tokio::select! {
            () = state.stop.cancelled() => return,
            () = sleep_until(wake) => {}
        }
        let mut visibility = state.visibility.lock().await;
        if visibility.finished {
            return;
        }
        let now = Instant::now();
        if retry_at.is_none() && visibility.visible_at > visible_at {
            // Extended meanwhile (`AckHandle::extend`): sleep towards the new deadline.
            continue;
        }
        let Some(extension) = next_extension(now, visibility.visible_at, limit, timeout) else {
            tracing::info!(
                queue = %ctx.url,
                message_id = %state.message_id,
                max_visibility_extension = ?ctx.max_extension,
                "handler is still running after max_visibility_extension; the message will be redelivered"
            );
            return;
        };
        match ctx.change_visibility(&state.receipt_handle, extension).await {
            Ok(()) => {
                visibility.visible_at = now + extension;
                retry_at = None;
            }
            Err(e) => {
                let remaining = visibility.visible_at.saturating_duration_since(Instant::now());
                if classify(&e) == Failure::NotRetryable || remaining.is_zero() {
                    tracing::warn!(
                        queue = %ctx.url,
                        message_id = %state.message_id,
                        error = %describe(&e),
                        "cannot extend visibility; the message may be redelivered while its handler runs"
                    );
                    return;
                }
                tracing::warn!(
                    queue = %ctx.url,
                    message_id = %state.message_id,
                    error = %describe(&e),
                    "extending visibility failed; retrying"
                );
                retry_at = Some(Instant::now() + (remaining / 4).min(Duration::from_secs(1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn extends_by_a_full_timeout_until_the_budget_is_spent() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let limit = t0 + Duration::from_secs(70);
        // Half-way through the first timeout: a full timeout more.
        let now = t0 + Duration::from_secs(15);
        assert_eq!(
            next_extension(now, t0 + timeout, limit, timeout),
            Some(Duration::from_secs(30))
        );
        // Near the limit: only what is left, in whole seconds.
        let now = t0 + Duration::from_millis(55_500);
        assert_eq!(
            next_extension(now, t0 + Duration::from_secs(60), limit, timeout),
            Some(Duration::from_secs(14))
        );
        // Nothing left that would move the deadline.
        let now = t0 + Duration::from_secs(66);
        assert_eq!(next_extension(now, t0 + Duration::from_secs(70), limit, timeout), None);
        assert_eq!(next_extension(t0 + Duration::from_secs(71), t0, limit, timeout), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// An extension is whole seconds, never pushes the message past the limit, and
        /// never makes it visible sooner than it already would be.
        #[test]
        fn extensions_respect_limit_and_never_shorten(
            now_ms in 0u64..200_000,
            visible_ms in 0u64..200_000,
            limit_ms in 0u64..200_000,
            timeout_s in 1u64..60,
        ) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(now_ms);
            let visible_at = t0 + Duration::from_millis(visible_ms);
            let limit = t0 + Duration::from_millis(limit_ms);
            if let Some(ext) = next_extension(now, visible_at, limit, Duration::from_secs(timeout_s)) {
                prop_assert_eq!(ext.subsec_nanos(), 0);
                prop_assert!(ext >= Duration::from_secs(1));
                prop_assert!(ext <= Duration::from_secs(timeout_s));
                prop_assert!(now + ext <= limit);
                prop_assert!(now + ext > visible_at);
            }
        }
    }
}
