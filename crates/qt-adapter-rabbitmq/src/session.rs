//! One connection's worth of state: the connection, the consuming channel and the channels
//! used to publish and to query.
//!
//! A session never outlives its connection. When the connection or the consuming channel
//! fails, the session is marked dead and a new one replaces it; handles of messages the dead
//! session delivered refuse to settle (the broker redelivers those messages), so a delivery
//! tag is never used on a channel other than the one that issued it.
//!
//! Closing a session politely ([`Session::finish_settlements`]) lets the settlements already
//! under way finish before the connection goes: acks already requested are sent, and copies
//! being published (dead letters, delayed requeues) get their confirm and the ack of their
//! original. Settlements started after that fail and their messages are redelivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::Stream;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use qt_core::AdapterError;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::acks::AckBatcher;
use crate::context::Context;
use crate::describe::lapin_error;

/// How long closing a connection politely may take before it is abandoned.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing the adapter waits for settlements already under way. Acks need only
/// their frames written and a healthy broker confirms a copy within milliseconds, so this
/// is ample; it is shorter than the default `confirm_timeout` because a broker that holds
/// confirms back (a resource alarm) should not hold a shutdown for as long. Whatever is cut
/// short is redelivered by the broker, never lost.
pub(crate) const SETTLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Session {
    /// Counts sessions of one adapter, for logs.
    pub(crate) generation: u64,
    pub(crate) ctx: Arc<Context>,
    connection: Connection,
    consume: Channel,
    /// Sends the consuming channel's acks, coalescing runs into `basic.ack(multiple)`.
    pub(crate) acks: Arc<AckBatcher>,
    /// Confirm-mode channel for dead letters and delayed requeues, opened on first use and
    /// reopened after the broker closes it (a refused publish closes only this channel).
    publish: tokio::sync::Mutex<Option<Channel>>,
    /// Channel for passive queries (backlog); reopened after an error closes it.
    query: tokio::sync::Mutex<Option<Channel>>,
    alive: AtomicBool,
    /// Settlements other than plain acks (those the ack batcher tracks) under way; closed
    /// when the adapter starts closing.
    settling: TaskTracker,
}

/// What the supervisor needs beside the session itself.
pub(crate) struct Opened {
    pub session: Arc<Session>,
    pub consumer: Option<Consumer>,
    pub events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl Session {
    /// Connects, declares/checks the topology, sets the prefetch and, unless `paused`,
    /// starts consuming.
    pub(crate) async fn open(ctx: &Arc<Context>, generation: u64, paused: bool) -> Result<Opened, AdapterError> {
        let connection = ctx.endpoint.connect("consumer").await?;
        // Registered first so that no connection error can slip by unseen.
        let events = Box::pin(connection.events_listener());
        let opened = async {
            ctx.plan.apply(&connection, &ctx.endpoint.redactor).await?;
            let consume = connection
                .create_channel()
                .await
                .map_err(|e| ctx.other("opening the consumer channel", &e))?;
            consume
                .basic_qos(ctx.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| ctx.other("setting the prefetch (basic.qos)", &e))?;
            Ok::<_, AdapterError>(consume)
        }
        .await;
        let consume = match opened {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;
                return Err(e);
            }
        };
        let session = Arc::new(Session {
            generation,
            ctx: Arc::clone(ctx),
            connection,
            acks: AckBatcher::start(consume.clone()),
            consume,
            publish: tokio::sync::Mutex::new(None),
            query: tokio::sync::Mutex::new(None),
            alive: AtomicBool::new(true),
            settling: TaskTracker::new(),
        });
        let consumer = if paused {
            None
        } else {
            match session.start_consumer().await {
                Ok(c) => Some(c),
                Err(e) => {
                    session.shutdown().await;
                    return Err(e);
                }
            }
        };
        Ok(Opened {
            session,
            consumer,
            events,
        })
    }

    pub(crate) async fn start_consumer(&self) -> Result<Consumer, AdapterError> {
        self.consume
            .basic_consume(
                self.ctx.plan.queue.as_str().into(),
                self.ctx.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| AdapterError::Receive {
                queue: self.ctx.plan.queue.clone(),
                reason: self
                    .ctx
                    .endpoint
                    .redactor
                    .redact(format!("basic.consume failed: {}", lapin_error(&e))),
            })
    }

    /// Cancels the consumer; its stream then yields what the broker had already sent and ends.
    pub(crate) async fn cancel_consumer(&self) -> Result<(), AdapterError> {
        self.consume
            .basic_cancel(self.ctx.consumer_tag.as_str().into(), Default::default())
            .await
            .map_err(|e| self.ctx.other("cancelling the consumer (basic.cancel)", &e))
    }

    /// Whether deliveries of this session can still be settled.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && self.connection.status().connected() && self.consume.status().connected()
    }

    /// Registers a settlement that publishes or rejects (anything but a plain ack) for
    /// [`Session::finish_settlements`] to wait for; `None` once the session is closing.
    /// Hold the token until the settlement is done.
    pub(crate) fn start_settlement(&self) -> Option<TaskTrackerToken> {
        // Counted before the check, on the same atomic that closing sets: either closing
        // sees this settlement and waits for it, or this check sees closing.
        let token = self.settling.token();
        (!self.settling.is_closed()).then_some(token)
    }

    /// Whether the adapter is closing this session and takes no new settlements.
    pub(crate) fn is_closing(&self) -> bool {
        self.settling.is_closed()
    }

    /// Refuses new settlements, then waits (up to [`SETTLE_DRAIN_TIMEOUT`]) for those under
    /// way: copies waiting for their confirm, and every ack requested, until its frame is
    /// written. The connection stays open; [`Session::shutdown`] closes it.
    pub(crate) async fn finish_settlements(&self) {
        self.settling.close();
        let finished = async {
            // Copies first: each acks its original when confirmed, through the batcher.
            self.settling.wait().await;
            self.acks.drain().await;
        };
        if tokio::time::timeout(SETTLE_DRAIN_TIMEOUT, finished).await.is_err() {
            tracing::warn!(
                queue = %self.ctx.plan.queue,
                in_flight = self.settling.len(),
                "settlements under way did not finish within {SETTLE_DRAIN_TIMEOUT:?} of closing; the broker \
                 redelivers their messages"
            );
        }
    }

    pub(crate) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
        self.acks.close();
    }

    /// A live confirm-mode channel for publishing.
    pub(crate) async fn publish_channel(&self) -> Result<Channel, lapin::Error> {
        let mut slot = self.publish.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// A live channel for passive queries.
    pub(crate) async fn query_channel(&self) -> Result<Channel, lapin::Error> {
        let mut slot = self.query.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Marks the session dead and closes its connection; the broker then requeues every
    /// message this session delivered and nobody settled.
    pub(crate) async fn shutdown(&self) {
        self.mark_dead();
        if self.connection.status().connected() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "OK".into())).await;
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("alive", &self.is_alive())
            .finish()
    }
}
