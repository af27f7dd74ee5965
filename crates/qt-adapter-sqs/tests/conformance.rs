//! The adapter conformance suite against the SQS emulator (moto): every check on a queue
//! and a DLQ of its own, the adapter reaching the emulator through a proxy the
//! connection-loss check can cut.

#[allow(dead_code)]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use common::*;
use qt_adapter_mock::testkit::{CuttableProxy, DeadLetterCopy, Patience, TestMessage, TestQueue, Unsupported};
use qt_adapter_sqs::SqsAdapter;
use qt_adapter_sqs::attributes::{to_attributes, to_headers};
use qt_core::QueueAdapter;
use qt_core::config::SqsSourceConfig;

/// Short, so that a message an adapter failed to delete would be back within the checks'
/// quiet time.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(2);

struct SqsTestQueue {
    admin: Client,
    queue: String,
    dlq: String,
    /// The adapter's configuration: the emulator through `proxy`, dead letters to `dlq`.
    config: SqsSourceConfig,
    proxy: CuttableProxy,
}

async fn fresh_queue() -> SqsTestQueue {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    let upstream: SocketAddr = endpoint()
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('/')
        .parse()
        .expect("QT_TEST_SQS_ENDPOINT is http://<ip>:<port>");
    let proxy = CuttableProxy::start(upstream).await.expect("the proxy listens");
    let mut config = source(&queue);
    config.endpoint_url = Some(format!("http://{}", proxy.addr()));
    config.visibility_timeout = Some(VISIBILITY_TIMEOUT);
    config.dlq_queue_url = Some(dlq.clone());
    SqsTestQueue {
        admin,
        queue,
        dlq,
        config,
        proxy,
    }
}

#[async_trait]
impl TestQueue for SqsTestQueue {
    async fn adapter(&self) -> Box<dyn QueueAdapter> {
        Box::new(
            SqsAdapter::with_credentials(&self.config, settings(4), credentials())
                .await
                .expect("a valid configuration"),
        )
    }

    async fn publish(&self, message: TestMessage) {
        self.admin
            .send_message()
            .queue_url(&self.queue)
            .message_body(message.body)
            .set_message_attributes(Some(to_attributes(&message.headers)))
            .send()
            .await
            .expect("send");
    }

    async fn take_dead_letters(&self) -> Result<Vec<DeadLetterCopy>, Unsupported> {
        let mut copies = Vec::new();
        for message in peek(&self.admin, &self.dlq).await {
            if let Some(receipt) = message.receipt_handle() {
                let _ = self
                    .admin
                    .delete_message()
                    .queue_url(&self.dlq)
                    .receipt_handle(receipt)
                    .send()
                    .await;
            }
            copies.push(DeadLetterCopy {
                body: message.body().unwrap_or_default().to_owned().into(),
                headers: to_headers(message.message_attributes.as_ref()),
            });
        }
        Ok(copies)
    }

    async fn cut_connection(&self) -> Result<(), Unsupported> {
        self.proxy.cut().await;
        Ok(())
    }

    async fn restore_connection(&self) {
        self.proxy.restore().await;
    }

    fn patience(&self) -> Patience {
        Patience {
            arrival: Duration::from_secs(20),
            // Longer than the visibility timeout: a message not deleted is back by then.
            quiet: VISIBILITY_TIMEOUT + Duration::from_secs(1),
            requeue_delay: Duration::from_secs(2),
            // A long poll under way when the adapter pauses still completes.
            pause_grace: self.config.wait_time + Duration::from_millis(500),
        }
    }
}

impl Drop for SqsTestQueue {
    fn drop(&mut self) {
        let queues = [self.queue.clone(), self.dlq.clone()];
        qt_adapter_mock::testkit::clean_up_on_drop(async move {
            let admin = admin().await;
            for queue in &queues {
                delete_queue(&admin, queue).await;
            }
        });
    }
}

qt_adapter_mock::conformance_suite!(fresh_queue);
