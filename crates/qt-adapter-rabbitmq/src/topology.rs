//! What must exist at the broker before qt consumes, declared or checked on every
//! (re)connect: the configured exchanges, the queue, its bindings, the retry queue for
//! delayed requeues and the dead-letter destination.
//!
//! A declaration or passive check that fails closes its channel (that is how AMQP reports
//! "not found" or "refused"), so each one that may legitimately fail runs on a fresh channel.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use qt_core::AdapterError;
use qt_core::config::RabbitMqSourceConfig;

use crate::amqp_value::arguments_from_config;
use crate::describe::{is_not_found, lapin_error, soft_error};
use qt_core::redact::Redactor;

#[derive(Clone, Debug)]
struct ExchangePlan {
    name: String,
    kind: ExchangeKind,
    durable: bool,
}

#[derive(Clone, Debug)]
struct QueuePlan {
    durable: bool,
    arguments: FieldTable,
}

/// Where dead letters go.
#[derive(Clone, Debug)]
pub(crate) struct DlqTarget {
    pub exchange: String,
    pub routing_key: String,
    /// Set when qt declares the DLQ queue itself (`source.dlq.declare`).
    declare: Option<QueuePlan>,
}

/// The declarations and checks made on every connect, resolved from configuration once.
#[derive(Clone, Debug)]
pub(crate) struct TopologyPlan {
    pub queue: String,
    declare_queue: Option<QueuePlan>,
    exchanges: Vec<ExchangePlan>,
    bindings: Vec<(String, String)>,
    pub retry_queue: String,
    pub dlq: Option<DlqTarget>,
}

impl TopologyPlan {
    pub(crate) fn from_config(cfg: &RabbitMqSourceConfig) -> Result<Self, AdapterError> {
        let config_error = |field: String, reason: String| AdapterError::Config { field, reason };
        if cfg.queue.trim().is_empty() {
            return Err(config_error("source.queue".into(), "required".into()));
        }
        for (field, name) in [
            ("source.queue", &cfg.queue),
            ("source.retry_queue", &cfg.retry_queue_name()),
        ] {
            if ShortString::try_new(name.as_str()).is_err() {
                return Err(config_error(field.into(), "longer than 255 bytes".into()));
            }
        }
        let mut plan = Self {
            queue: cfg.queue.clone(),
            declare_queue: None,
            exchanges: Vec::new(),
            bindings: Vec::new(),
            retry_queue: cfg.retry_queue_name(),
            dlq: None,
        };
        if let Some(d) = &cfg.dlq {
            let declare = match &d.declare {
                Some(q) => Some(QueuePlan {
                    durable: q.durable,
                    arguments: arguments_from_config(&q.arguments)
                        .map_err(|e| config_error("source.dlq.declare.arguments".into(), e))?,
                }),
                None => None,
            };
            plan.dlq = Some(DlqTarget {
                exchange: d.exchange.clone(),
                routing_key: d.routing_key.clone(),
                declare,
            });
        }
        if let Some(dlq) = &plan.dlq
            && dlq.routing_key.is_empty()
        {
            return Err(config_error("source.dlq.routing_key".into(), "required".into()));
        }
        if let Some(declare) = &cfg.declare {
            if let Some(q) = &declare.queue {
                plan.declare_queue = Some(QueuePlan {
                    durable: q.durable,
                    arguments: arguments_from_config(&q.arguments)
                        .map_err(|e| config_error("source.declare.queue.arguments".into(), e))?,
                });
            }
            for (i, e) in declare.exchanges.iter().enumerate() {
                let kind = match e.kind.as_str() {
                    "direct" => ExchangeKind::Direct,
                    "fanout" => ExchangeKind::Fanout,
                    "topic" => ExchangeKind::Topic,
                    "headers" => ExchangeKind::Headers,
                    other => {
                        return Err(config_error(
                            format!("source.declare.exchanges[{i}].kind"),
                            format!("must be direct, fanout, topic or headers, got {other:?}"),
                        ));
                    }
                };
                plan.exchanges.push(ExchangePlan {
                    name: e.name.clone(),
                    kind,
                    durable: e.durable,
                });
            }
            plan.bindings = declare
                .bindings
                .iter()
                .map(|b| (b.exchange.clone(), b.routing_key.clone()))
                .collect();
        }
        Ok(plan)
    }

    /// Declares and checks everything, in dependency order. Errors name the resource and say
    /// what to change.
    pub(crate) async fn apply(&self, connection: &Connection, redactor: &Redactor) -> Result<(), AdapterError> {
        let vhost = connection.status().vhost();
        let fail = |what: String, e: &lapin::Error, hint: &str| AdapterError::Other {
            what,
            reason: redactor.redact(format!("{}{hint}", lapin_error(e))),
        };
        let channel = open(connection, redactor).await?;
        for e in &self.exchanges {
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(e.name.as_str().into(), e.kind.clone(), options, FieldTable::default())
                .await
                .map_err(|err| {
                    fail(
                        format!("declaring exchange {:?}", e.name),
                        &err,
                        "; an exchange of that name with another type or durability cannot be redeclared",
                    )
                })?;
        }

        match &self.declare_queue {
            Some(q) => {
                let options = QueueDeclareOptions {
                    durable: q.durable,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(self.queue.as_str().into(), options, q.arguments.clone())
                    .await
                    .map_err(|err| {
                        fail(
                            format!("declaring queue {:?}", self.queue),
                            &err,
                            "; if the queue exists with other arguments, make source.declare.queue match them",
                        )
                    })?;
            }
            None => {
                passive_queue(&channel, &self.queue).await.map_err(|err| {
                    if is_not_found(&err) {
                        AdapterError::MissingResource {
                            queue: self.queue.clone(),
                            reason: format!(
                                "queue {:?} does not exist in vhost {:?}; create it, or set source.declare.queue \
                                 to let qt declare it",
                                self.queue,
                                vhost.as_str()
                            ),
                        }
                    } else {
                        fail(format!("checking queue {:?}", self.queue), &err, "")
                    }
                })?;
            }
        }

        for (exchange, routing_key) in &self.bindings {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|err| {
                    if is_not_found(&err) {
                        AdapterError::MissingResource {
                            queue: exchange.clone(),
                            reason: format!(
                                "cannot bind queue {:?} to exchange {exchange:?}: the exchange does not exist in \
                                 vhost {:?}; declare it under source.declare.exchanges",
                                self.queue,
                                vhost.as_str()
                            ),
                        }
                    } else {
                        fail(
                            format!("binding queue {:?} to exchange {exchange:?}", self.queue),
                            &err,
                            "",
                        )
                    }
                })?;
        }
        close(&channel).await;

        self.ensure_retry_queue(connection, redactor).await?;
        if let Some(dlq) = &self.dlq {
            self.check_dlq(dlq, connection, redactor).await?;
        }
        Ok(())
    }

    /// qt declares the retry queue. When it may not (no configure permission) or the queue
    /// exists with other arguments, an existing queue is used as it is: an operator created it.
    async fn ensure_retry_queue(&self, connection: &Connection, redactor: &Redactor) -> Result<(), AdapterError> {
        let channel = open(connection, redactor).await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.queue.as_str())),
        );
        let declared = channel
            .queue_declare(
                self.retry_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await;
        close(&channel).await;
        let refused = match declared {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    soft_error(&e),
                    Some(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                ) =>
            {
                e
            }
            Err(e) => return Err(self.retry_queue_error(&e, redactor)),
        };
        let channel = open(connection, redactor).await?;
        let existing = passive_queue(&channel, &self.retry_queue).await;
        close(&channel).await;
        match existing {
            Ok(_) => {
                tracing::info!(
                    retry_queue = %self.retry_queue,
                    reason = %redactor.redact(lapin_error(&refused)),
                    "using the existing retry queue as it is; it must dead-letter to exchange \"\" with routing key {:?}",
                    self.queue
                );
                Ok(())
            }
            Err(_) => Err(self.retry_queue_error(&refused, redactor)),
        }
    }

    fn retry_queue_error(&self, e: &lapin::Error, redactor: &Redactor) -> AdapterError {
        AdapterError::Other {
            what: format!("declaring retry queue {:?}", self.retry_queue),
            reason: redactor.redact(format!(
                "{}; qt needs it for delayed requeues: grant the user configure permission on it, or create it \
                 (durable, x-dead-letter-exchange \"\", x-dead-letter-routing-key {:?}), or name an existing one \
                 in source.retry_queue",
                lapin_error(e),
                self.queue
            )),
        }
    }

    async fn check_dlq(
        &self,
        dlq: &DlqTarget,
        connection: &Connection,
        redactor: &Redactor,
    ) -> Result<(), AdapterError> {
        let vhost = connection.status().vhost();
        let channel = open(connection, redactor).await?;
        let result = if let Some(q) = &dlq.declare {
            let options = QueueDeclareOptions {
                durable: q.durable,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(dlq.routing_key.as_str().into(), options, q.arguments.clone())
                .await
                .map(|_| ())
        } else if dlq.exchange.is_empty() {
            passive_queue(&channel, &dlq.routing_key).await.map(|_| ())
        } else {
            let options = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    dlq.exchange.as_str().into(),
                    ExchangeKind::Direct,
                    options,
                    FieldTable::default(),
                )
                .await
        };
        close(&channel).await;
        result.map_err(|e| {
            let (kind, name) = if dlq.exchange.is_empty() || dlq.declare.is_some() {
                ("queue", &dlq.routing_key)
            } else {
                ("exchange", &dlq.exchange)
            };
            if is_not_found(&e) {
                AdapterError::MissingResource {
                    queue: name.clone(),
                    reason: format!(
                        "the dead-letter {kind} {name:?} (source.dlq) does not exist in vhost {:?}; create it{}",
                        vhost.as_str(),
                        if kind == "queue" {
                            ", or set source.dlq.declare: {durable: true}"
                        } else {
                            ""
                        }
                    ),
                }
            } else {
                AdapterError::Other {
                    what: format!("checking the dead-letter {kind} {name:?}"),
                    reason: redactor.redact(lapin_error(&e)),
                }
            }
        })
    }
}

/// Messages ready in `queue` (not counting those delivered and not yet acknowledged).
pub(crate) async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    passive_queue(channel, queue).await.map(|q| q.message_count())
}

async fn passive_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
}

async fn open(connection: &Connection, redactor: &Redactor) -> Result<Channel, AdapterError> {
    connection.create_channel().await.map_err(|e| AdapterError::Other {
        what: "opening a channel".into(),
        reason: redactor.redact(lapin_error(&e)),
    })
}

/// Closes a channel used for declarations; failure only means it was closed already.
async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "OK".into()).await;
    }
}
