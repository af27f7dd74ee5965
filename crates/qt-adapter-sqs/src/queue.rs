//! What every part of a connected adapter shares about its queue.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError;
use qt_core::config::SQS_MAX_VISIBILITY;
use tokio_util::sync::CancellationToken;

use crate::deleter::Deleter;

/// The connected queue: client, resolved URLs, timings, the delete batcher, and the token
/// that stops pollers and heartbeats when the adapter closes or is dropped.
#[derive(Debug)]
pub struct QueueCtx {
    pub client: Client,
    pub url: Arc<str>,
    /// The visibility timeout every receive starts with (configured, or the queue's own).
    pub visibility_timeout: Duration,
    pub max_extension: Duration,
    pub nack_delay: Duration,
    pub dlq_url: Option<Arc<str>>,
    pub deleter: Deleter,
    pub shutdown: CancellationToken,
}

impl QueueCtx {
    /// Makes the message visible again `timeout` from now (whole seconds, rounded up, at
    /// most 12h).
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), SdkError<ChangeMessageVisibilityError>> {
        self.client
            .change_message_visibility()
            .queue_url(self.url.as_ref())
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_seconds(timeout))
            .send()
            .await
            .map(|_| ())
    }
}

/// A duration as SQS visibility seconds: rounded up so a requested delay is never cut
/// short, and capped at the 12h SQS allows.
pub fn visibility_seconds(d: Duration) -> i32 {
    let capped = d.min(SQS_MAX_VISIBILITY);
    let secs = capped.as_secs() + u64::from(capped.subsec_nanos() > 0);
    i32::try_from(secs.min(SQS_MAX_VISIBILITY.as_secs())).expect("12h in seconds fits an i32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_and_caps() {
        assert_eq!(visibility_seconds(Duration::ZERO), 0);
        assert_eq!(visibility_seconds(Duration::from_millis(1)), 1);
        assert_eq!(visibility_seconds(Duration::from_secs(5)), 5);
        assert_eq!(visibility_seconds(Duration::from_millis(5_001)), 6);
        assert_eq!(visibility_seconds(Duration::from_secs(13 * 3600)), 43_200);
    }
}
