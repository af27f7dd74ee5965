//! The dead-letter topic read as a dead-letter queue: [`KafkaDlq`], the Kafka side of
//! `qt dlq`.
//!
//! What "in the DLQ" means on Kafka is on [`KafkaDlq`].

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use qt_core::config::KafkaSourceConfig;
use qt_core::redact::Redactor;
use qt_core::{AdapterError, AdapterSettings, DlqMessage, DlqReader};
use rdkafka::Message as _;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::connection::{self, SOURCE_PATH};
use crate::context::QtClientContext;
use crate::message::{self, RecordBytes, UnreadableHeaders};
use crate::publisher::KafkaPublisher;

/// Most records taken from librdkafka per trip to the blocking pool.
const BATCH: usize = 512;
/// Kept letters re-produced at close awaiting acknowledgement at once.
const REPRODUCE_WINDOW: usize = 256;

/// The consumer group whose committed offsets say where a DLQ's letters begin.
pub fn group_of(cfg: &KafkaSourceConfig) -> String {
    format!("{}-dlq", cfg.consumer_group)
}

/// One session on a source's `dlq_topic`, for `qt dlq`.
///
/// Kafka keeps every record until retention deletes it, so "in the DLQ" is a position: a
/// letter is in the DLQ until the consumer group `<consumer_group>-dlq` (the trigger's
/// group with `-dlq` appended) has committed past it. A session reads, for each partition
/// of `dlq_topic`, from that group's committed offset (the earliest offset when it has
/// none) up to the partition's end as it was when the session started; letters written
/// during the session are left for the next one. It reads partition after partition, each
/// in offset order. The partitions are assigned, not subscribed: the session joins no
/// group, so it causes no rebalance and needs no other member, and a session that removes
/// nothing commits nothing.
///
/// [`DlqReader::remove`] commits the group's offset at once, as far as the letters removed
/// so far form an unbroken run from the committed offset, so a replay that is killed does
/// not replay those again. Kafka can only commit a prefix of a partition, so a letter that
/// was read and kept cannot stay where it is when a later letter of its partition was
/// removed: at [`DlqReader::close`] such kept letters are read again and produced to
/// `dlq_topic` anew (same key, value, headers and timestamp, each confirmed by the broker),
/// and only then is the offset committed past the last removed letter. So a kept letter may
/// move to the end of the DLQ (and to the partition its key maps to), with a new `id`. A
/// session stopped between that produce and the commit leaves the kept letter twice in the
/// DLQ and the removed letters after it still there; it never loses one.
///
/// Reading a partition fails when no record arrives for `connect_timeout` before its end is
/// reached (an unreachable broker, missing permissions), rather than waiting for ever.
/// Sessions on one DLQ must not run at the same time: each commits the group's offsets as
/// if it were alone.
pub struct KafkaDlq {
    topic: String,
    group: String,
    consumer: Arc<BaseConsumer<QtClientContext>>,
    publisher: KafkaPublisher,
    redactor: Redactor,
    /// Longest wait for the next record of a partition that has not reached its end.
    timeout: Duration,
    partitions: Vec<PartitionState>,
    /// The partition being read (an index into `partitions`) and whether it is assigned.
    current: usize,
    assigned: bool,
    /// Read from the broker, not yet returned by `next`.
    buffered: VecDeque<Fetched>,
    /// Each letter returned by `next`, by its `seq`: partition index and offset.
    letters: Vec<(usize, i64)>,
}

/// What the session knows of one partition.
#[derive(Debug)]
struct PartitionState {
    partition: i32,
    /// The group's offset: every letter before it is out of the DLQ. Starts at the first
    /// offset the session reads.
    committed: i64,
    /// The partition's end when the session started: letters from here on are not read.
    end: i64,
    /// The next offset to read; the end is reached when `done`.
    next: i64,
    done: bool,
    /// The letters read at or after `committed`, in offset order, and whether each was
    /// removed. A removed letter at the front is committed away at once.
    open: VecDeque<(i64, bool)>,
}

/// A record as read from the topic.
struct Fetched {
    partition: i32,
    offset: i64,
    record: RecordBytes,
    unreadable: Option<Arc<UnreadableHeaders>>,
    timestamp_ms: Option<i64>,
}

/// One poll of a partition: its records below the end, and whether the end was reached.
struct Batch {
    records: Vec<Fetched>,
    at_end: bool,
}

impl KafkaDlq {
    /// Opens a session on `cfg.dlq_topic`: checks the section (and `require_tls`), reads the
    /// topic's partitions, their ends and the group's committed offsets.
    pub async fn open(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        let Some(topic) = cfg.dlq_topic.clone() else {
            return Err(AdapterError::Config {
                field: format!("{SOURCE_PATH}.dlq_topic"),
                reason: "is not set, so there is no dead-letter topic to read; set it to the topic this trigger dead-letters to".to_owned(),
            });
        };
        connection::check(cfg, settings)?;
        let redactor = crate::redact::for_config(cfg);
        let group = group_of(cfg);
        let mut config = connection::helper(cfg, &format!("qt-{}-dlq", settings.trigger_name));
        for (k, v) in &cfg.options {
            config.set(k, v);
        }
        // The session commits only what `remove` allows, and only by itself.
        config.set("group.id", &group);
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        // The end of a partition is also recognised when its last offsets hold no record
        // (compaction, transaction markers).
        config.set("enable.partition.eof", "true");
        let context = QtClientContext::new("dlq", redactor.clone());
        let consumer = BaseConsumer::from_config_and_context(&config, context).map_err(|e| AdapterError::Config {
            field: format!("{SOURCE_PATH}.options"),
            reason: format!("librdkafka refused the consumer settings: {}", redactor.redact(&e)),
        })?;
        let consumer = Arc::new(consumer);
        let publisher = KafkaPublisher::build(cfg, settings, redactor.clone())?;
        let describe = Describe {
            consumer: consumer.clone(),
            topic: topic.clone(),
            group: group.clone(),
            brokers: cfg.brokers.join(","),
            timeout: cfg.connect_timeout,
            redactor: redactor.clone(),
        };
        let partitions = blocking("describing the dead-letter topic", move || describe.run()).await??;
        tracing::debug!(
            topic = %topic,
            group = %group,
            partitions = ?partitions.iter().map(|p| (p.partition, p.committed, p.end)).collect::<Vec<_>>(),
            "dead-letter session opened"
        );
        Ok(Self {
            topic,
            group,
            consumer,
            publisher,
            redactor,
            timeout: cfg.connect_timeout,
            partitions,
            current: 0,
            assigned: false,
            buffered: VecDeque::new(),
            letters: Vec::new(),
        })
    }

    /// The consumer group this session commits to.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn receive_error(&self, reason: String) -> AdapterError {
        AdapterError::Receive {
            queue: self.topic.clone(),
            reason,
        }
    }

    /// Reads the next batch of the partition being read, assigning it first if needed.
    async fn fill(&mut self) -> Result<(), AdapterError> {
        let i = self.current;
        let (partition, from, end) = {
            let p = &self.partitions[i];
            (p.partition, p.next, p.end)
        };
        if !self.assigned {
            assign(&self.consumer, &self.topic, partition, from).map_err(|e| {
                self.receive_error(format!("assigning partition {partition}: {}", self.redactor.redact(&e)))
            })?;
            self.assigned = true;
        }
        let reader = self.reader(partition, from, end);
        let batch = blocking("reading the dead-letter topic", move || reader.poll()).await??;
        let p = &mut self.partitions[i];
        if let Some(last) = batch.records.last() {
            p.next = last.offset + 1;
        }
        p.done = batch.at_end;
        self.buffered.extend(batch.records);
        Ok(())
    }

    fn reader(&self, partition: i32, from: i64, end: i64) -> PartitionReader {
        PartitionReader {
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            partition,
            from,
            end,
            timeout: self.timeout,
            redactor: self.redactor.clone(),
        }
    }

    fn letter(&mut self, f: &Fetched) -> DlqMessage {
        let index = self
            .partitions
            .iter()
            .position(|p| p.partition == f.partition)
            .expect("records come from the partitions of the session");
        self.partitions[index].open.push_back((f.offset, false));
        let seq = self.letters.len() as u64;
        self.letters.push((index, f.offset));
        DlqMessage {
            seq,
            id: format!("{}:{}", f.partition, f.offset),
            body: f.record.payload_bytes(),
            headers: message::decoded_headers(&f.record),
            key: f.record.key().map(message::text),
            timestamp: f.timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis),
        }
    }

    /// Commits `offset` as the group's position in `partition`.
    async fn commit(&self, partition: i32, offset: i64) -> Result<(), AdapterError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let committed = blocking("committing the dead-letter offset", move || {
            let mut tpl = TopicPartitionList::with_capacity(1);
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await?;
        committed.map_err(|e| AdapterError::Other {
            what: format!(
                "committing offset {offset} of {}/{partition} for group {}",
                self.topic, self.group
            ),
            reason: format!(
                "{}; the letters removed from this partition stay in the DLQ",
                self.redactor.redact(&e)
            ),
        })
    }

    /// Makes the removals of one partition final: kept letters before the last removed
    /// one are produced again, then the offset is committed past it.
    async fn finish_partition(&mut self, index: usize) -> Result<(), AdapterError> {
        let p = &self.partitions[index];
        let Some(last) = p.open.iter().rposition(|(_, removed)| *removed) else {
            return Ok(());
        };
        let (partition, last_removed) = (p.partition, p.open[last].0);
        let kept: BTreeSet<i64> = p
            .open
            .iter()
            .take(last)
            .filter(|(_, removed)| !removed)
            .map(|(offset, _)| *offset)
            .collect();
        if let Some(&first) = kept.first() {
            self.reproduce(partition, first, last_removed, &kept).await?;
        }
        self.commit(partition, last_removed + 1).await?;
        let p = &mut self.partitions[index];
        p.committed = last_removed + 1;
        p.open.drain(..=last);
        Ok(())
    }

    /// Reads `kept` (offsets of `partition` from `from`, all before `until`) again and
    /// produces each to the topic anew, in order, each confirmed.
    async fn reproduce(
        &mut self,
        partition: i32,
        from: i64,
        until: i64,
        kept: &BTreeSet<i64>,
    ) -> Result<(), AdapterError> {
        assign(&self.consumer, &self.topic, partition, from).map_err(|e| {
            self.receive_error(format!("assigning partition {partition}: {}", self.redactor.redact(&e)))
        })?;
        self.assigned = false;
        let mut next = from;
        let mut found = Vec::with_capacity(kept.len());
        loop {
            let reader = self.reader(partition, next, until);
            let batch = blocking("reading the dead-letter topic again", move || reader.poll()).await??;
            if let Some(last) = batch.records.last() {
                next = last.offset + 1;
            }
            found.extend(batch.records.into_iter().filter(|f| kept.contains(&f.offset)));
            if batch.at_end {
                break;
            }
        }
        if found.len() != kept.len() {
            let missing: Vec<String> = kept
                .iter()
                .filter(|o| !found.iter().any(|f| f.offset == **o))
                .map(|o| format!("{partition}:{o}"))
                .collect();
            return Err(AdapterError::Other {
                what: format!("keeping the letters of {}/{partition} read and not removed", self.topic),
                reason: format!(
                    "{} could not be read again (deleted by retention meanwhile?); nothing of this partition was committed, so its removed letters stay in the DLQ",
                    missing.join(", ")
                ),
            });
        }
        let writes: Vec<_> = found.iter().map(|f| self.write_again(f)).collect();
        let mut produced = futures::stream::iter(writes).buffered(REPRODUCE_WINDOW);
        while let Some(r) = produced.next().await {
            r?;
        }
        tracing::info!(
            topic = %self.topic,
            partition,
            letters = found.len(),
            "letters kept before a removed one were written to the end of the DLQ again"
        );
        Ok(())
    }
}

impl KafkaDlq {
    /// Produces a kept letter to the topic again, byte for byte, with its timestamp.
    async fn write_again(&self, f: &Fetched) -> Result<(), AdapterError> {
        let headers = message::reproduced_headers(
            &f.record,
            f.unreadable.as_deref(),
            &[],
            std::iter::empty::<(&str, &str)>(),
        );
        self.publisher
            .produce_at(&self.topic, f.record.key(), f.record.payload(), headers, f.timestamp_ms)
            .await
            .map(|_| ())
            .map_err(|reason| AdapterError::Publish {
                destination: self.topic.clone(),
                reason: format!(
                    "writing kept letter {}:{} again: {reason}; nothing of this partition was committed, so its removed letters stay in the DLQ",
                    f.partition, f.offset
                ),
            })
    }
}

#[async_trait]
impl DlqReader for KafkaDlq {
    fn name(&self) -> &str {
        &self.topic
    }

    async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError> {
        loop {
            if let Some(f) = self.buffered.pop_front() {
                return Ok(Some(self.letter(&f)));
            }
            match self.partitions.get(self.current) {
                None => return Ok(None),
                Some(p) if p.done || p.next >= p.end => {
                    self.current += 1;
                    self.assigned = false;
                }
                Some(_) => self.fill().await?,
            }
        }
    }

    async fn remove(&mut self, letter: &DlqMessage) -> Result<(), AdapterError> {
        let not_read = || AdapterError::Other {
            what: format!("removing dead letter {} from {}", letter.id, self.topic),
            reason: "this session did not read it".to_owned(),
        };
        let &(index, offset) = usize::try_from(letter.seq)
            .ok()
            .and_then(|seq| self.letters.get(seq))
            .ok_or_else(not_read)?;
        let p = &mut self.partitions[index];
        if letter.id != format!("{}:{offset}", p.partition) {
            return Err(not_read());
        }
        let Ok(at) = p.open.binary_search_by_key(&offset, |(o, _)| *o) else {
            // Committed away already.
            return Ok(());
        };
        p.open[at].1 = true;
        let prefix = p.open.iter().take_while(|(_, removed)| *removed).count();
        if prefix == 0 {
            return Ok(());
        }
        let (partition, upto) = (p.partition, p.open[prefix - 1].0 + 1);
        self.commit(partition, upto).await?;
        let p = &mut self.partitions[index];
        p.committed = upto;
        p.open.drain(..prefix);
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<(), AdapterError> {
        let mut first_error = None;
        for index in 0..self.partitions.len() {
            if let Err(e) = self.finish_partition(index).await {
                tracing::warn!(topic = %self.topic, partition = self.partitions[index].partition, error = %e, "finishing the dead-letter session");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl fmt::Debug for KafkaDlq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDlq")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

fn assign(consumer: &BaseConsumer<QtClientContext>, topic: &str, partition: i32, from: i64) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)
}

/// Runs a blocking librdkafka call off the async runtime.
async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AdapterError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AdapterError::Other {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// The start-of-session reading of the topic, on a blocking thread.
struct Describe {
    consumer: Arc<BaseConsumer<QtClientContext>>,
    topic: String,
    group: String,
    brokers: String,
    timeout: Duration,
    redactor: Redactor,
}

impl Describe {
    fn run(&self) -> Result<Vec<PartitionState>, AdapterError> {
        let topic = &self.topic;
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| AdapterError::Connect {
                endpoint: self.brokers.clone(),
                reason: format!(
                    "no metadata for the dead-letter topic {topic} within {:?}: {}",
                    self.timeout,
                    self.redactor.redact(&e)
                ),
            })?;
        let missing = |reason: String| AdapterError::MissingResource {
            queue: topic.clone(),
            reason: format!("{reason}. Check {SOURCE_PATH}.dlq_topic, and that this client may Describe and Read it"),
        };
        let described = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| missing("the cluster does not know it".to_owned()))?;
        if let Some(code) = described.error() {
            return Err(missing(rdkafka::error::RDKafkaErrorCode::from(code).to_string()));
        }
        let mut ids: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::with_capacity(ids.len());
        for &p in &ids {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, self.timeout)
            .map_err(|e| AdapterError::Other {
                what: format!("reading the offsets of group {} on {topic}", self.group),
                reason: format!(
                    "{}; this client needs Read on the group {}",
                    self.redactor.redact(&e),
                    self.group
                ),
            })?;
        ids.into_iter()
            .map(|partition| {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition, self.timeout)
                    .map_err(|e| AdapterError::Other {
                        what: format!("reading the offsets of {topic}/{partition}"),
                        reason: self.redactor.redact(&e),
                    })?;
                let group_offset = committed
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                // Letters retention deleted are gone whatever the group committed.
                let start = group_offset.map_or(low, |o| o.max(low));
                Ok(PartitionState {
                    partition,
                    committed: start,
                    end: high,
                    next: start,
                    done: start >= high,
                    open: VecDeque::new(),
                })
            })
            .collect()
    }
}

/// Polls one assigned partition, on a blocking thread.
struct PartitionReader {
    consumer: Arc<BaseConsumer<QtClientContext>>,
    topic: String,
    partition: i32,
    /// The offset expected next: records before it are left over from an earlier read.
    from: i64,
    end: i64,
    timeout: Duration,
    redactor: Redactor,
}

impl PartitionReader {
    /// Up to [`BATCH`] records, waiting at most `timeout` for the first.
    fn poll(&self) -> Result<Batch, AdapterError> {
        let deadline = Instant::now() + self.timeout;
        let mut batch = Batch {
            records: Vec::new(),
            at_end: false,
        };
        let mut last_error = None;
        while batch.records.len() < BATCH && !batch.at_end {
            let wait = if batch.records.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None if batch.records.is_empty() && Instant::now() < deadline => {}
                None => break,
                Some(Ok(msg)) => {
                    let offset = msg.offset();
                    if msg.partition() != self.partition || offset < self.from {
                        continue;
                    }
                    if offset + 1 >= self.end {
                        batch.at_end = true;
                    }
                    if offset < self.end {
                        let (record, unreadable) = message::record_of(&msg);
                        batch.records.push(Fetched {
                            partition: self.partition,
                            offset,
                            record,
                            unreadable,
                            timestamp_ms: msg.timestamp().to_millis(),
                        });
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == self.partition => batch.at_end = true,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => last_error = Some(self.redactor.redact(&e)),
            }
        }
        if batch.records.is_empty() && !batch.at_end {
            return Err(AdapterError::Receive {
                queue: self.topic.clone(),
                reason: format!(
                    "no record of partition {} at offset {} within {:?}, though the partition ended at {} when the session started{}",
                    self.partition,
                    self.from,
                    self.timeout,
                    self.end,
                    last_error.map(|e| format!("; last error: {e}")).unwrap_or_default()
                ),
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_dlq_topic_opening_names_the_field() {
        let cfg = KafkaSourceConfig {
            brokers: vec!["127.0.0.1:1".into()],
            topics: vec!["orders".into()],
            consumer_group: "billing".into(),
            ..KafkaSourceConfig::default()
        };
        let err = KafkaDlq::open(&cfg, &AdapterSettings::new("t", 1, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AdapterError::Config { field, .. } if field == "source.dlq_topic"),
            "{err}"
        );
    }

    #[test]
    fn the_dlq_group_is_the_trigger_group_with_a_suffix() {
        let cfg = KafkaSourceConfig {
            consumer_group: "billing".into(),
            ..KafkaSourceConfig::default()
        };
        assert_eq!(group_of(&cfg), "billing-dlq");
    }
}
