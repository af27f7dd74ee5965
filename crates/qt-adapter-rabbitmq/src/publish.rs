//! Publishing one message and waiting for the broker to take responsibility for it.
//!
//! Every publish qt makes (dead letters, delayed requeues, `qt send`) is `mandatory` on a
//! channel in confirm mode: a confirm means the broker stored (and routed) the message, a
//! return means no queue was bound to take it, which qt reports as a failure rather than
//! letting the broker drop the message.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

/// AMQP `delivery-mode` 2: written to disk by durable queues.
const PERSISTENT: u8 = 2;

/// Why a publish did not end in a confirm.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishFailure {
    /// The channel could not take the message; nothing reached the broker.
    #[error("the channel is not usable: {0}")]
    NotSent(lapin::Error),
    #[error(
        "the broker returned it: {reply} (no queue is bound to exchange {exchange:?} with routing key {routing_key:?})"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    #[error("the broker refused it (basic.nack): it could not store the message")]
    Nacked,
    /// The broker closed the channel instead of confirming (missing exchange, access refused).
    #[error("the broker refused it: {0}")]
    Refused(lapin::Error),
    #[error("no confirm from the broker within {0:?}; the outcome is unknown")]
    Timeout(Duration),
    #[error("waiting for the confirm failed ({0}); the outcome is unknown")]
    Confirm(lapin::Error),
    #[error("{0}")]
    Invalid(String),
}

/// One message to publish.
#[derive(Debug)]
pub(crate) struct Publication<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Publishes `publication` and waits up to `timeout` for its confirm. `channel` must be in
/// confirm mode.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    publication: Publication<'_>,
    timeout: Duration,
) -> Result<(), PublishFailure> {
    let exchange = short(publication.exchange, "exchange")?;
    let routing_key = short(publication.routing_key, "routing key")?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let publish = async {
        let confirm = channel
            .basic_publish(exchange, routing_key, options, publication.body, publication.properties)
            .await
            .map_err(PublishFailure::NotSent)?;
        confirm.await.map_err(|e| {
            if crate::describe::soft_error(&e).is_some() {
                PublishFailure::Refused(e)
            } else {
                PublishFailure::Confirm(e)
            }
        })
    };
    let confirmation = tokio::time::timeout(timeout, publish)
        .await
        .map_err(|_| PublishFailure::Timeout(timeout))??;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(PublishFailure::Unroutable {
            exchange: publication.exchange.to_owned(),
            routing_key: publication.routing_key.to_owned(),
            reply: format!("{} {}", returned.reply_code, returned.reply_text),
        }),
        Confirmation::Nack(None) => Err(PublishFailure::Nacked),
        Confirmation::NotRequested => Err(PublishFailure::Invalid(
            "the channel is not in confirm mode, so the publish cannot be confirmed".into(),
        )),
    }
}

fn short(value: &str, what: &str) -> Result<ShortString, PublishFailure> {
    ShortString::try_new(value)
        .map_err(|_| PublishFailure::Invalid(format!("{what} {value:?} is longer than 255 bytes")))
}

/// Properties for a copy of a received message (retry queue, DLQ): the original's, made
/// persistent, with `headers`, the message id qt knows it by, and `expiration` when given.
///
/// `user-id` is left out: RabbitMQ rejects a publish whose `user-id` is not the publishing
/// connection's user, and the original may come from another user. `expiration` is never
/// copied: a dead letter must not expire, and a retry gets its own delay.
pub(crate) fn copy_properties(
    original: &BasicProperties,
    headers: FieldTable,
    message_id: &str,
    expiration: Option<String>,
) -> Result<BasicProperties, PublishFailure> {
    let mut p = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(message_id, "message id")?);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        p = p.with_cluster_id(v.clone());
    }
    if let Some(ms) = expiration {
        p = p.with_expiration(short(&ms, "expiration")?);
    }
    Ok(p)
}

/// Properties for a new message published by qt (`qt send`).
pub(crate) fn new_properties(headers: FieldTable, message_id: &str) -> Result<BasicProperties, PublishFailure> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    Ok(BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(message_id, "message id")?)
        .with_timestamp(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_drop_user_id_and_old_expiration() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id("someone-else".into())
            .with_expiration("1000".into())
            .with_correlation_id("c-1".into())
            .with_delivery_mode(1);
        let p = copy_properties(&original, FieldTable::default(), "m-1", None).unwrap();
        assert_eq!(p.user_id(), &None);
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        let retry = copy_properties(&original, FieldTable::default(), "m-1", Some("250".into())).unwrap();
        assert_eq!(retry.expiration().as_ref().map(|s| s.as_str()), Some("250"));
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        let long = "x".repeat(300);
        assert!(matches!(
            copy_properties(&BasicProperties::default(), FieldTable::default(), &long, None),
            Err(PublishFailure::Invalid(_))
        ));
    }
}
