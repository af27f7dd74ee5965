//! Topic and group administration for tests, benchmarks and operator tooling: create and
//! delete topics, read a group's committed offsets and a topic's end offsets. Uses the same
//! brokers, security and log redaction as the adapter.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use qt_core::AdapterError;
use qt_core::config::KafkaSourceConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::connection;
use crate::context::QtClientContext;
use qt_core::redact::Redactor;

impl ConsumerContext for QtClientContext {}

/// Administrative requests against one cluster.
pub struct KafkaAdmin {
    cfg: KafkaSourceConfig,
    admin: Arc<AdminClient<QtClientContext>>,
    redactor: Redactor,
    /// One group-bound helper consumer per group, for reading committed offsets.
    groups: Mutex<HashMap<String, Arc<BaseConsumer<QtClientContext>>>>,
    timeout: Duration,
}

impl KafkaAdmin {
    /// An admin client for the brokers and security of a source section (its topics and
    /// group are not needed).
    pub fn new(cfg: &KafkaSourceConfig) -> Result<Self, AdapterError> {
        let redactor = crate::redact::for_config(cfg);
        let context = QtClientContext::new("admin", redactor.clone());
        let admin =
            AdminClient::from_config_and_context(&connection::helper(cfg, "qt-admin"), context).map_err(|e| {
                AdapterError::Config {
                    field: "source".to_owned(),
                    reason: format!("cannot create a Kafka admin client: {}", redactor.redact(&e)),
                }
            })?;
        Ok(Self {
            cfg: cfg.clone(),
            admin: Arc::new(admin),
            redactor,
            groups: Mutex::new(HashMap::new()),
            timeout: cfg.connect_timeout,
        })
    }

    /// An admin client for plaintext brokers (`host:port,host:port`).
    pub fn plaintext(brokers: &str) -> Result<Self, AdapterError> {
        Self::new(&KafkaSourceConfig {
            brokers: brokers.split(',').map(str::to_owned).collect(),
            ..KafkaSourceConfig::default()
        })
    }

    fn err(&self, what: String, e: impl fmt::Display) -> AdapterError {
        AdapterError::Other {
            what,
            reason: self.redactor.redact(&e),
        }
    }

    /// Creates a topic with replication factor 1; an existing topic is left as is.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), AdapterError> {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| self.err(format!("creating topic {name}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(self.err(format!("creating topic {t}"), code)),
            }
        }
        // Creation is asynchronous on some brokers: wait until the topic is described.
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if self
                .partitions(name)
                .await
                .is_ok_and(|p| p.len() == partitions as usize)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdapterError::MissingResource {
                    queue: name.to_owned(),
                    reason: format!(
                        "created, but not described with {partitions} partitions within {:?}",
                        self.timeout
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes a topic; a missing topic is not an error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), AdapterError> {
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .delete_topics(&[name], &opts)
            .await
            .map_err(|e| self.err(format!("deleting topic {name}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => return Err(self.err(format!("deleting topic {t}"), code)),
            }
        }
        Ok(())
    }

    /// The partition ids of a topic.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, AdapterError> {
        let admin = self.admin.clone();
        let name = topic.to_owned();
        let timeout = self.timeout;
        let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|e| self.err(format!("describing topic {topic}"), e))?
            .map_err(|e| self.err(format!("describing topic {topic}"), e))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| AdapterError::MissingResource {
                queue: topic.to_owned(),
                reason: "not described by the cluster".to_owned(),
            })?;
        if let Some(code) = t.error() {
            return Err(AdapterError::MissingResource {
                queue: topic.to_owned(),
                reason: RDKafkaErrorCode::from(code).to_string(),
            });
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The high watermark (offset of the next message to be written) of every partition.
    pub async fn end_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, AdapterError> {
        let parts = self.partitions(topic).await?;
        let admin = self.admin.clone();
        let name = topic.to_owned();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            parts
                .into_iter()
                .map(|p| admin.inner().fetch_watermarks(&name, p, timeout).map(|(_, hi)| (p, hi)))
                .collect::<Result<BTreeMap<_, _>, _>>()
        })
        .await
        .map_err(|e| self.err(format!("reading end offsets of {topic}"), e))?
        .map_err(|e| self.err(format!("reading end offsets of {topic}"), e))
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer<QtClientContext>>, AdapterError> {
        let mut groups = self.groups.lock();
        if let Some(c) = groups.get(group) {
            return Ok(c.clone());
        }
        let mut config = connection::helper(&self.cfg, "qt-admin-offsets");
        config.set("group.id", group);
        config.set("enable.auto.commit", "false");
        let context = QtClientContext::new("admin", self.redactor.clone());
        let consumer = BaseConsumer::from_config_and_context(&config, context)
            .map_err(|e| self.err(format!("creating a reader for group {group}"), e))?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// The offsets `group` has committed for each partition of `topic` (`None`: nothing
    /// committed yet). Reads without joining the group.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, AdapterError> {
        let parts = self.partitions(topic).await?;
        let consumer = self.group_client(group)?;
        let name = topic.to_owned();
        let timeout = self.timeout;
        let tpl = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::with_capacity(parts.len());
            for p in parts {
                tpl.add_partition(&name, p);
            }
            consumer.committed_offsets(tpl, timeout)
        })
        .await
        .map_err(|e| self.err(format!("reading offsets of group {group}"), e))?
        .map_err(|e| self.err(format!("reading offsets of group {group}"), e))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| {
                let committed = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), committed)
            })
            .collect())
    }
}

impl fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("brokers", &self.cfg.brokers)
            .finish_non_exhaustive()
    }
}
