//! The publishing side: [`RabbitMqPublisher`], for `qt send` and for re-publishing dead
//! letters.

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AdapterError, AdapterSettings, OutgoingMessage, Publisher};

use crate::amqp_value::table_for;
use crate::connection::Endpoint;
use crate::describe::lapin_error;
use crate::publish::{Publication, PublishFailure, new_properties, publish_confirmed};

/// Publishes messages with publisher confirms, on its own connection (opened on first use
/// and reopened when it fails).
///
/// * The exchange is [`OutgoingMessage::destination`], else the publisher's default (`""`,
///   the default exchange, unless changed with [`RabbitMqPublisher::with_default_destination`]).
/// * The routing key is [`OutgoingMessage::key`], else the default (the configured queue).
///   With the default exchange the routing key is a queue name.
/// * The AMQP `message-id` is [`OutgoingMessage::deduplication_id`] when set, else a new
///   UUIDv7; it is returned, and it is the id qt's consumer deduplicates on.
/// * Publishes are persistent and mandatory: a message no queue would take is an error,
///   not a silent drop.
pub struct RabbitMqPublisher {
    endpoint: Endpoint,
    exchange: String,
    routing_key: String,
    confirm_timeout: Duration,
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl RabbitMqPublisher {
    /// A publisher for the source's broker whose default destination is the source's queue.
    pub fn new(cfg: &RabbitMqSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        Ok(Self {
            endpoint: Endpoint::new(cfg, settings)?,
            exchange: String::new(),
            routing_key: cfg.queue.clone(),
            confirm_timeout: cfg.confirm_timeout,
            link: tokio::sync::Mutex::new(None),
        })
    }

    /// Changes where messages without a destination/key go (e.g. the DLQ exchange).
    pub fn with_default_destination(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self.routing_key = routing_key.into();
        self
    }

    /// Closes the connection, if one is open.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.take()
            && connection.status().connected()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "OK".into())).await;
        }
    }

    async fn channel(&self, destination: &str) -> Result<Channel, AdapterError> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = link.as_mut() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            if connection.status().connected() {
                // The broker closed only the channel (e.g. a publish to a missing exchange).
                if let Ok(fresh) = confirm_channel(connection).await {
                    *channel = fresh.clone();
                    return Ok(fresh);
                }
            }
        }
        let connection = self.endpoint.connect("publisher").await?;
        let channel = confirm_channel(&connection).await.map_err(|e| AdapterError::Publish {
            destination: destination.to_owned(),
            reason: self
                .endpoint
                .redactor
                .redact(format!("cannot open a confirm channel: {}", lapin_error(&e))),
        })?;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn forget_link(&self) {
        self.link.lock().await.take();
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

fn describe_destination(exchange: &str, routing_key: &str) -> String {
    if exchange.is_empty() {
        format!("queue {routing_key:?} (default exchange)")
    } else {
        format!("exchange {exchange:?} with routing key {routing_key:?}")
    }
}

#[async_trait::async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let exchange = message.destination.as_deref().unwrap_or(&self.exchange);
        let routing_key = message.key.as_deref().unwrap_or(&self.routing_key);
        let destination = describe_destination(exchange, routing_key);
        let fail = |reason: String| AdapterError::Publish {
            destination: destination.clone(),
            reason: self.endpoint.redactor.redact(reason),
        };
        let message_id = message
            .deduplication_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let table = table_for(None, &message.headers).map_err(&fail)?;
        let properties = new_properties(table, &message_id).map_err(|e| fail(e.to_string()))?;
        // One retry, and only when nothing reached the broker, so a retry never duplicates.
        for attempt in 0..2 {
            let channel = self.channel(&destination).await?;
            let publication = Publication {
                exchange,
                routing_key,
                body: &message.body,
                properties: properties.clone(),
            };
            match publish_confirmed(&channel, publication, self.confirm_timeout).await {
                Ok(()) => return Ok(Some(message_id)),
                Err(PublishFailure::NotSent(_)) if attempt == 0 => self.forget_link().await,
                Err(failure) => return Err(fail(failure.to_string())),
            }
        }
        Err(fail(
            "the connection failed twice before the message could be sent".into(),
        ))
    }
}

impl std::fmt::Debug for RabbitMqPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqPublisher")
            .field("endpoint", &self.endpoint)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish()
    }
}
