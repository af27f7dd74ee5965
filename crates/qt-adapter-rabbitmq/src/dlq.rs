//! [`RabbitMqDlq`]: the dead-letter queue of a source, for `qt dlq`.
//!
//! A session is a connection and a channel of its own. It reads with `basic.get` and manual
//! acknowledgement, so every letter it reads stays unacknowledged on that channel: still in
//! the queue for the broker, only not deliverable to anyone else while the session lasts.
//! It reads at most as many letters as the queue held when the session started (a passive
//! `queue.declare`), so a letter that comes back to the queue during the session is not read
//! twice. Removing a letter acknowledges it. Closing the channel, or losing the connection
//! when the process dies, hands every letter not removed back to the queue, where RabbitMQ
//! puts it back in its place.
//!
//! The queue is `source.dlq.queue`, else `source.dlq.routing_key` when `source.dlq.exchange`
//! is the default exchange `""`.
//!
//! A replay is published to the default exchange with the original queue (or `--to`) as
//! the routing key, through [`RabbitMqPublisher`](crate::RabbitMqPublisher).

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{Channel, Connection};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::headers::dead_letter;
use qt_core::{AdapterError, AdapterSettings, DlqMessage, DlqReader, OutgoingMessage};

use crate::amqp_value::headers_from_table;
use crate::connection::Endpoint;
use crate::describe::{is_connection_loss, is_not_found, lapin_error};
use crate::message::{VOLATILE_HEADERS, broker_timestamp};
use crate::session::CLOSE_TIMEOUT;

/// One session on a source's dead-letter queue; see the module documentation.
pub struct RabbitMqDlq {
    queue: String,
    endpoint: Endpoint,
    connection: Connection,
    channel: Channel,
    /// Letters in the queue when the session started: the most it reads.
    at_start: u64,
    /// Letters read so far; the next one's `seq`.
    read: u64,
    /// Set once `basic.get` found the queue empty.
    drained: bool,
    /// Delivery tags of the letters read and not removed, by `seq`.
    unremoved: HashMap<u64, DeliveryTag>,
}

/// The queue holding `cfg`'s dead letters, or an error naming the field to set.
pub(crate) fn dlq_queue(cfg: &RabbitMqSourceConfig) -> Result<String, AdapterError> {
    let Some(dlq) = &cfg.dlq else {
        return Err(AdapterError::Config {
            field: "source.dlq".into(),
            reason: format!(
                "not set, so queue {:?} has no dead-letter queue of qt's to read; set source.dlq (exchange, \
                 routing_key) to where dead letters go",
                cfg.queue
            ),
        });
    };
    match dlq.queue_name() {
        Some(queue) if !queue.is_empty() => Ok(queue.to_owned()),
        Some(_) => Err(AdapterError::Config {
            field: "source.dlq.routing_key".into(),
            reason: "required: it names the dead-letter queue when exchange is \"\"".into(),
        }),
        None => Err(AdapterError::Config {
            field: "source.dlq.queue".into(),
            reason: format!(
                "dead letters go to exchange {:?}, and which queue it routes them to is not in the configuration; \
                 set source.dlq.queue to the queue bound to it with routing key {:?}",
                dlq.exchange, dlq.routing_key
            ),
        }),
    }
}

impl RabbitMqDlq {
    /// Opens a session on the dead-letter queue of `cfg` (see the module documentation for
    /// which queue). Fails when `cfg` has no `dlq`, or names an exchange without
    /// `dlq.queue`, or when the queue does not exist.
    pub async fn open(cfg: &RabbitMqSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        let queue = dlq_queue(cfg)?;
        let endpoint = Endpoint::new(cfg, settings)?;
        let connection = endpoint.connect("dlq").await?;
        let opened = async {
            let channel = connection.create_channel().await.map_err(|e| AdapterError::Other {
                what: format!("opening a channel to read dead-letter queue {queue:?}"),
                reason: endpoint.redactor.redact(lapin_error(&e)),
            })?;
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::default().passive(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    if is_not_found(&e) {
                        AdapterError::MissingResource {
                            queue: queue.clone(),
                            reason: format!(
                                "the dead-letter queue (source.dlq) does not exist in vhost {:?}: nothing was \
                                 dead-lettered to it yet, or the configuration names another one",
                                connection.status().vhost().as_str()
                            ),
                        }
                    } else {
                        AdapterError::Other {
                            what: format!("checking dead-letter queue {queue:?}"),
                            reason: endpoint.redactor.redact(lapin_error(&e)),
                        }
                    }
                })?;
            Ok::<_, AdapterError>((channel, u64::from(declared.message_count())))
        }
        .await;
        match opened {
            Ok((channel, at_start)) => Ok(Self {
                queue,
                endpoint,
                connection,
                channel,
                at_start,
                read: 0,
                drained: false,
                unremoved: HashMap::new(),
            }),
            Err(e) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;
                Err(e)
            }
        }
    }

    /// An error for `e`, which happened while `what`.
    fn failed(&self, what: String, e: &lapin::Error) -> AdapterError {
        let mut reason = lapin_error(e);
        if is_connection_loss(e) || !self.channel.status().connected() {
            // The broker also closes a channel that held deliveries unacknowledged for longer
            // than its consumer_timeout.
            reason.push_str(
                "; the session's channel is gone, so every letter it had not removed is back in the queue: run \
                 the command again",
            );
        }
        AdapterError::Other {
            what,
            reason: self.endpoint.redactor.redact(reason),
        }
    }
}

/// The letter as qt shows it: `id` is the AMQP `message-id`, else the id qt recorded when it
/// dead-lettered the message, else its place in this session.
fn letter(seq: u64, delivery: lapin::message::Delivery) -> DlqMessage {
    let properties = &delivery.properties;
    let headers = headers_from_table(properties.headers().as_ref());
    let id = match properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().to_owned(),
        _ => match headers.get(dead_letter::ORIGINAL_MESSAGE_ID) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("delivery:{seq}"),
        },
    };
    let routing_key = delivery.routing_key.as_str();
    DlqMessage {
        seq,
        id,
        key: (!routing_key.is_empty()).then(|| routing_key.to_owned()),
        timestamp: broker_timestamp(properties),
        headers,
        body: Bytes::from(delivery.data),
    }
}

/// The replay of `letter` for [`RabbitMqPublisher`](crate::RabbitMqPublisher): to the
/// default exchange (`destination` `""`) with the queue, `to` or the original one, as the
/// routing key. Besides the dead-letter headers, those the broker writes per delivery and
/// per dead-lettering (`x-death`, `x-delivery-count`, ...) are left out: the replay starts
/// afresh.
fn replay_to_queue(letter: &DlqMessage, to: Option<&str>) -> Result<OutgoingMessage, AdapterError> {
    let queue = letter.replay_destination(to)?;
    let mut message = letter.replayed_to("");
    for name in VOLATILE_HEADERS {
        message.headers.remove(name);
    }
    message.key = Some(queue);
    Ok(message)
}

#[async_trait]
impl DlqReader for RabbitMqDlq {
    fn name(&self) -> &str {
        &self.queue
    }

    async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError> {
        if self.drained || self.read >= self.at_start {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| self.failed(format!("reading dead-letter queue {:?} (basic.get)", self.queue), &e))?;
        let Some(got) = got else {
            self.drained = true;
            return Ok(None);
        };
        let seq = self.read;
        self.read += 1;
        self.unremoved.insert(seq, got.delivery.delivery_tag);
        Ok(Some(letter(seq, got.delivery)))
    }

    fn replay_message(&self, letter: &DlqMessage, to: Option<&str>) -> Result<OutgoingMessage, AdapterError> {
        replay_to_queue(letter, to)
    }

    async fn remove(&mut self, letter: &DlqMessage) -> Result<(), AdapterError> {
        let what = || format!("removing dead letter {} from {:?}", letter.id, self.queue);
        let Some(&tag) = self.unremoved.get(&letter.seq) else {
            return Err(AdapterError::Other {
                what: what(),
                reason: "this session did not read it, or removed it already".into(),
            });
        };
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.failed(what(), &e))?;
        self.unremoved.remove(&letter.seq);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), AdapterError> {
        // The broker handles a channel's frames in order, so once it has answered the close
        // it has applied every ack sent before it.
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, self.channel.close(200, "OK".into())).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "OK".into())).await;
        let reason = match closed {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => self.endpoint.redactor.redact(lapin_error(&e)),
            Err(_) => format!("no answer from the broker within {CLOSE_TIMEOUT:?}"),
        };
        Err(AdapterError::Other {
            what: format!("closing the session on dead-letter queue {:?}", self.queue),
            reason: format!(
                "{reason}; letters not removed are back in the queue, but the last removals may not have taken \
                 effect: list the queue to check"
            ),
        })
    }
}

impl std::fmt::Debug for RabbitMqDlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqDlq")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .field("at_start", &self.at_start)
            .field("read", &self.read)
            .field("unremoved", &self.unremoved.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::config::RabbitMqDlq as DlqConfig;

    fn cfg(dlq: Option<(&str, &str, Option<&str>)>) -> RabbitMqSourceConfig {
        let mut cfg = RabbitMqSourceConfig::new("amqp://localhost", "orders");
        cfg.dlq = dlq.map(|(exchange, routing_key, queue)| DlqConfig {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            declare: None,
            queue: queue.map(Into::into),
        });
        cfg
    }

    fn field(result: Result<String, AdapterError>) -> String {
        match result {
            Err(AdapterError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_dlq_is_the_routing_key_on_the_default_exchange_else_the_named_queue() {
        assert_eq!(dlq_queue(&cfg(Some(("", "orders.dlq", None)))).unwrap(), "orders.dlq");
        assert_eq!(
            dlq_queue(&cfg(Some(("dlx", "orders", Some("orders.dead"))))).unwrap(),
            "orders.dead"
        );
    }

    #[test]
    fn without_a_dlq_or_a_known_queue_the_error_names_the_field_to_set() {
        assert_eq!(field(dlq_queue(&cfg(None))), "source.dlq");
        assert_eq!(
            field(dlq_queue(&cfg(Some(("dlx", "orders", None))))),
            "source.dlq.queue"
        );
        assert_eq!(field(dlq_queue(&cfg(Some(("", "", None))))), "source.dlq.routing_key");
    }

    fn dead_letter_with(headers: &[(&str, &str)]) -> DlqMessage {
        DlqMessage {
            seq: 0,
            id: "m-1".into(),
            body: Bytes::from_static(b"{}"),
            headers: headers.iter().copied().collect(),
            key: Some("orders.dlq".into()),
            timestamp: None,
        }
    }

    #[test]
    fn a_replay_goes_through_the_default_exchange_to_the_original_queue_or_to() {
        let letter = dead_letter_with(&[
            (dead_letter::ORIGINAL_QUEUE, "orders"),
            ("x-death", "[]"),
            ("x-first-death-queue", "orders"),
            ("x-delivery-count", "2"),
            ("x-tenant-id", "acme"),
        ]);
        let message = replay_to_queue(&letter, None).unwrap();
        assert_eq!(message.destination.as_deref(), Some(""));
        assert_eq!(message.key.as_deref(), Some("orders"));
        let headers: Vec<_> = message.headers.iter().collect();
        assert_eq!(headers, [("x-tenant-id", "acme"), (qt_core::headers::REPLAYS, "1")]);
        assert_eq!(
            replay_to_queue(&letter, Some("orders-v2")).unwrap().key.as_deref(),
            Some("orders-v2")
        );
        let err = replay_to_queue(&dead_letter_with(&[]), None).unwrap_err().to_string();
        assert!(err.contains("--to"), "{err}");
    }
}
