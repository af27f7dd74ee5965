//! `SqsAdapter`: the [`QueueAdapter`] for one SQS queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use qt_core::config::SqsSourceConfig;
use qt_core::secret::mask_url_credentials;
use qt_core::{AckHandle, AdapterError, AdapterSettings, Capabilities, Delivery, Health, OrderingUnit, QueueAdapter};
use tokio::sync::{OnceCell, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::{Failure, classify, describe, resolve_queue_url, sdk_client};
use crate::deleter::Deleter;
use crate::health::Status;
use crate::poller::{Poller, Received};
use crate::queue::{QueueCtx, visibility_seconds};
use crate::settle::SqsSettle;

/// What SQS gives a queue when nobody set its visibility timeout.
const SQS_DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
/// Buffered messages released at once on close.
const CLOSE_RELEASE_CONCURRENCY: usize = 16;

/// Consumes one SQS queue (standard or FIFO) with `pollers` concurrent long polls.
///
/// See the crate documentation for how settlements, headers, visibility and FIFO groups
/// map onto SQS.
pub struct SqsAdapter {
    cfg: SqsSourceConfig,
    client: Client,
    max_in_flight: usize,
    status: Arc<Status>,
    /// Stops pollers and heartbeats: cancelled by `close` and on drop.
    shutdown: CancellationToken,
    paused: watch::Sender<bool>,
    connected: OnceCell<Arc<QueueCtx>>,
    /// Handed to the pollers on connect; the buffer closes when they are all gone.
    tx: parking_lot::Mutex<Option<mpsc::Sender<Received>>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    permits: Arc<Semaphore>,
    pollers: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl SqsAdapter {
    /// An adapter with credentials from the standard AWS provider chain (environment,
    /// shared profile, web identity, SSO, container and instance credentials). Checks the
    /// configuration (and `require_tls`) without touching the network.
    pub async fn new(cfg: &SqsSourceConfig, settings: AdapterSettings) -> Result<Self, AdapterError> {
        Self::build(cfg, &settings, None).await
    }

    /// An adapter with the given credentials provider instead of the standard chain.
    pub async fn with_credentials(
        cfg: &SqsSourceConfig,
        settings: AdapterSettings,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, AdapterError> {
        Self::build(cfg, &settings, Some(SharedCredentialsProvider::new(credentials))).await
    }

    async fn build(
        cfg: &SqsSourceConfig,
        settings: &AdapterSettings,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, AdapterError> {
        let client = sdk_client(cfg, settings.require_tls, credentials).await?;
        let max_in_flight = settings.max_in_flight.max(1);
        let (tx, rx) = mpsc::channel(max_in_flight);
        Ok(Self {
            cfg: cfg.clone(),
            client,
            max_in_flight,
            status: Arc::new(Status::default()),
            shutdown: CancellationToken::new(),
            paused: watch::Sender::new(false),
            connected: OnceCell::new(),
            tx: parking_lot::Mutex::new(Some(tx)),
            rx: tokio::sync::Mutex::new(rx),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            pollers: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The endpoint as it may appear in errors.
    fn endpoint(&self) -> String {
        match &self.cfg.endpoint_url {
            Some(e) => mask_url_credentials(e),
            None => format!("SQS in {}", self.cfg.region.trim()),
        }
    }

    fn access_error<E, R>(&self, queue: &str, field: &str, err: &SdkError<E, R>) -> AdapterError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        match classify(err) {
            Failure::MissingQueue => AdapterError::MissingResource {
                queue: format!("{queue} ({field})"),
                reason: describe(err),
            },
            _ => AdapterError::Connect {
                endpoint: self.endpoint(),
                reason: format!("reading the attributes of {queue} ({field}) failed: {}", describe(err)),
            },
        }
    }

    /// Resolves the queues, checks they can be read, and starts the pollers.
    async fn open(&self) -> Result<Arc<QueueCtx>, AdapterError> {
        let url = resolve_queue_url(&self.client, &self.cfg.queue_url, "source.queue_url").await?;
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| self.access_error(&url, "source.queue_url", &e))?;
        tracing::trace!(queue = %url, "GetQueueAttributes returned");
        let queue_timeout = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let visibility_timeout = self
            .cfg
            .visibility_timeout
            .or(queue_timeout)
            .unwrap_or(SQS_DEFAULT_VISIBILITY);

        let dlq_url = match &self.cfg.dlq_queue_url {
            Some(dlq) => {
                let dlq = resolve_queue_url(&self.client, dlq, "source.dlq_queue_url").await?;
                self.client
                    .get_queue_attributes()
                    .queue_url(&dlq)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| self.access_error(&dlq, "source.dlq_queue_url", &e))?;
                tracing::trace!(queue = %dlq, "GetQueueAttributes returned");
                Some(Arc::<str>::from(dlq))
            }
            None => None,
        };

        let url = Arc::<str>::from(url);
        let ctx = Arc::new(QueueCtx {
            client: self.client.clone(),
            url: Arc::clone(&url),
            visibility_timeout,
            max_extension: self.cfg.max_visibility_extension,
            nack_delay: self.cfg.nack_delay,
            dlq_url,
            deleter: Deleter::start(self.client.clone(), Arc::clone(&url)),
            shutdown: self.shutdown.clone(),
        });
        let tx = self.tx.lock().take().ok_or_else(|| AdapterError::Other {
            what: format!("connecting to {url}"),
            reason: "the adapter was closed".to_owned(),
        })?;
        let wait_time_seconds = i32::try_from(self.cfg.wait_time.as_secs()).expect("validated: at most 20s");
        let mut pollers = self.pollers.lock();
        for _ in 0..self.cfg.pollers {
            let poller = Poller {
                ctx: Arc::clone(&ctx),
                wait_time_seconds,
                max_messages: usize::try_from(self.cfg.max_messages).expect("validated: 1 to 10"),
                visibility_timeout_seconds: self.cfg.visibility_timeout.map(visibility_seconds),
                permits: Arc::clone(&self.permits),
                tx: tx.clone(),
                status: Arc::clone(&self.status),
                paused: self.paused.subscribe(),
            };
            pollers.push(tokio::spawn(poller.run()));
        }
        self.status.receiving();
        tracing::info!(
            queue = %url,
            pollers = self.cfg.pollers,
            visibility_timeout = ?visibility_timeout,
            max_in_flight = self.max_in_flight,
            "consuming from SQS"
        );
        Ok(ctx)
    }

    fn delivery(ctx: &Arc<QueueCtx>, received: Received) -> Delivery {
        let Received { message, lease } = received;
        let settle = SqsSettle {
            ctx: Arc::clone(ctx),
            lease,
            message_id: message.message_id.clone(),
            body: message.body.clone(),
            headers: message.headers.clone(),
            source: message.source.clone(),
        };
        Delivery::new(message, AckHandle::new(settle))
    }
}

impl fmt::Debug for SqsAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsAdapter")
            .field("queue", &self.queue())
            .field("region", &self.cfg.region)
            .field("endpoint", &self.endpoint())
            .field("pollers", &self.cfg.pollers)
            .field("max_in_flight", &self.max_in_flight)
            .field("connected", &self.connected.initialized())
            .field("paused", &*self.paused.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for SqsAdapter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[async_trait]
impl QueueAdapter for SqsAdapter {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn queue(&self) -> &str {
        match self.connected.get() {
            Some(ctx) => &ctx.url,
            None => self.cfg.queue_url.trim(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut notes = vec![
            "SQS has no reject: nack leaves the message in the queue, visible again after source.nack_delay, so the \
             queue's redrive policy (maxReceiveCount) moves it to the queue's own DLQ",
            "requeue changes the message's visibility instead of re-sending it: x-qt-attempt is not written, the \
             attempt comes from ApproximateReceiveCount, and every requeue counts toward the redrive policy's \
             maxReceiveCount; delays above 12h are cut to 12h",
            "the visibility of unsettled messages is extended while they are handled, up to \
             source.max_visibility_extension after their receipt; then they are redelivered",
            "headers beyond the 10 message attributes SQS allows travel folded in the x-qt-headers attribute",
            "message bodies must be UTF-8 text",
        ];
        if self.cfg.dlq_queue_url.is_none() {
            notes.push(
                "no source.dlq_queue_url: dead-lettering fails and leaves the message for redelivery; rely on the \
                 queue's redrive policy (processing.on_failure: nack) or set source.dlq_queue_url",
            );
        }
        if self.cfg.is_fifo() {
            notes.push(
                "FIFO: messages of one MessageGroupId arrive in order and source.key is the group id; use \
                 processing.ordering partition or key to keep them serial while handled",
            );
        } else {
            notes.push("standard queue: delivery is at least once and unordered");
        }
        Capabilities {
            native_reject: false,
            delayed_requeue: true,
            dead_letter: self.cfg.dlq_queue_url.is_some(),
            lease_extension: true,
            pause: true,
            ordering: if self.cfg.is_fifo() {
                OrderingUnit::MessageGroup
            } else {
                OrderingUnit::None
            },
            notes,
        }
    }

    async fn connect(&self) -> Result<(), AdapterError> {
        if self.status.is_closed() {
            return Err(AdapterError::Other {
                what: format!("connecting to {}", self.queue()),
                reason: "the adapter was closed".to_owned(),
            });
        }
        self.connected.get_or_try_init(|| self.open()).await?;
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let Some(ctx) = self.connected.get() else {
            if self.status.is_closed() {
                return Ok(Vec::new());
            }
            return Err(AdapterError::Other {
                what: format!("receiving from {}", self.queue()),
                reason: "connect() has not been called".to_owned(),
            });
        };
        let mut rx = self.rx.lock().await;
        let first = loop {
            tokio::select! {
                biased;
                received = rx.recv() => match received {
                    Some(r) => break r,
                    None => return Ok(Vec::new()),
                },
                () = self.status.failure_signalled() => {
                    if let Some(reason) = self.status.take_failure() {
                        return Err(AdapterError::Receive { queue: ctx.url.to_string(), reason });
                    }
                }
            }
        };
        let max = max.max(1);
        let mut out = Vec::with_capacity(max.min(rx.len() + 1));
        out.push(Self::delivery(ctx, first));
        while out.len() < max {
            match rx.try_recv() {
                Ok(r) => out.push(Self::delivery(ctx, r)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn pause(&self) -> Result<(), AdapterError> {
        self.paused.send_replace(true);
        Ok(())
    }

    async fn resume(&self) -> Result<(), AdapterError> {
        self.paused.send_replace(false);
        Ok(())
    }

    async fn health(&self) -> Health {
        self.status.health()
    }

    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        let Some(ctx) = self.connected.get() else {
            return Ok(None);
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(ctx.url.as_ref())
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| AdapterError::Other {
                what: format!("reading the backlog of {}", ctx.url),
                reason: describe(&e),
            })?;
        tracing::trace!(queue = %ctx.url, "GetQueueAttributes returned");
        let Some(attributes) = out.attributes() else {
            return Ok(None);
        };
        let total = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .filter_map(|name| attributes.get(name))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
        Ok(Some(total))
    }

    async fn close(&self) -> Result<(), AdapterError> {
        self.status.closed();
        self.shutdown.cancel();
        drop(self.tx.lock().take());
        let pollers = std::mem::take(&mut *self.pollers.lock());
        for poller in pollers {
            let _ = poller.await;
        }
        // Messages received but never handed to the engine go back to the queue now. (A
        // `receive` still running takes them instead, and they are settled as usual.)
        if let Ok(mut rx) = self.rx.try_lock() {
            let mut buffered = Vec::new();
            while let Ok(received) = rx.try_recv() {
                buffered.push(received.lease.release());
            }
            futures::stream::iter(buffered)
                .buffer_unordered(CLOSE_RELEASE_CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
        }
        Ok(())
    }
}
