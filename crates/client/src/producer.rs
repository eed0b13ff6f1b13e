//! The batching, idempotent [`Producer`].
//!
//! `send` puts a record in its partition's buffer and returns a [`DeliveryFuture`] at once; one
//! task per partition closes a batch when it reaches `batch_size_bytes` or has waited `linger`,
//! compresses it and sends it, with up to `max_in_flight_per_partition` batches outstanding.
//! Memory is bounded: every buffered or in-flight record holds its size in a semaphore of
//! `buffer_memory_bytes`, so `send` waits (backpressure) when the producer is that far ahead of
//! the cluster.
//!
//! Idempotence (the default): the producer gets an id and epoch from the cluster and numbers its
//! records to each partition 0, 1, 2, ... The partition applies each sequence once (the check runs
//! when a batch is applied, on every replica, and its state is replicated and persisted), so the
//! client's retries after NOT_LEADER, timeouts and lost connections never duplicate a batch, across
//! leader failover and broker restart. When batches in flight reach a new leader out of order, the
//! later one is refused (OUT_OF_ORDER_SEQUENCE) and retried once the earlier one has landed.
//!
//! If a batch fails for good (retries exhausted, or a refusal), its records' futures fail, and
//! whether it committed is unknown (as in Kafka, resending those records yourself may duplicate
//! them). Batches already in flight behind it may fail as well; once they are done the partition
//! starts over under the next epoch of the producer id at sequence 0, so later sends work again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use runnel_proto::{encode_batch_with, record_size};
use runnel_types::limits::MAX_BATCH_BYTES;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::{partition_for_key, Acks, Client, ClientError, Compression, ErrorCode, ProducerStamp, Record};

/// Most batches in flight per partition for an idempotent producer: the partition recognises a
/// retry of any of the producer's last 5 batches (`runnel_broker::producer_state::RETAINED_BATCHES`).
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// Bytes counted per record on top of its key, value and headers (protobuf framing, timestamp).
const RECORD_OVERHEAD_BYTES: usize = 16;

/// How many records (or flush requests) may queue for one partition's task before `send` waits;
/// memory is bounded by `buffer_memory_bytes` anyway, this only bounds the channel itself.
const PARTITION_QUEUE_LEN: usize = 4096;

/// How a [`Producer`] batches and sends.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// [`Acks::All`] (needed for idempotence) or [`Acks::None`].
    pub acks: Acks,
    /// Idempotent batches (no duplicates from retries). Default on.
    pub idempotent: bool,
    /// A batch is sent once its records take this many bytes (at most 16 MiB).
    pub batch_size_bytes: usize,
    /// ... or once its first record has waited this long.
    pub linger: Duration,
    /// Codec for every batch.
    pub compression: Compression,
    /// Batches outstanding per partition (1..=5 when idempotent).
    pub max_in_flight_per_partition: usize,
    /// Bytes of records buffered or in flight, across partitions; `send` waits beyond this.
    pub buffer_memory_bytes: usize,
}

impl Default for ProducerConfig {
    /// acks=all, idempotent, 1 MiB batches (measured: 1 MiB moved ~1.5x the records/s of 256 KiB
    /// on a 3-node RF 3 cluster; docs/bench-2026-11-21.txt), 5 ms linger, no compression, 5 in flight per
    /// partition, 64 MiB of buffer.
    fn default() -> Self {
        Self {
            acks: Acks::All,
            idempotent: true,
            batch_size_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            max_in_flight_per_partition: MAX_IN_FLIGHT_IDEMPOTENT,
            buffer_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let bad = |field: &str, value: String, why: &str| {
            Err(ClientError::InvalidArgument(format!("invalid producer setting {field} = {value}: {why}")))
        };
        if self.batch_size_bytes == 0 || self.batch_size_bytes > MAX_BATCH_BYTES {
            return bad("batch_size_bytes", self.batch_size_bytes.to_string(), "must be 1..=16 MiB");
        }
        if self.max_in_flight_per_partition == 0 {
            return bad("max_in_flight_per_partition", "0".into(), "must be at least 1");
        }
        if self.idempotent && self.max_in_flight_per_partition > MAX_IN_FLIGHT_IDEMPOTENT {
            return bad(
                "max_in_flight_per_partition",
                self.max_in_flight_per_partition.to_string(),
                "an idempotent producer may have at most 5 batches in flight per partition",
            );
        }
        if self.idempotent && self.acks != Acks::All {
            return bad("acks", "none".into(), "an idempotent producer needs acks=all");
        }
        if self.buffer_memory_bytes < self.batch_size_bytes {
            return bad(
                "buffer_memory_bytes",
                self.buffer_memory_bytes.to_string(),
                &format!("must be at least batch_size_bytes ({})", self.batch_size_bytes),
            );
        }
        if self.buffer_memory_bytes > (u32::MAX as usize) {
            return bad("buffer_memory_bytes", self.buffer_memory_bytes.to_string(), "must be below 4 GiB");
        }
        Ok(())
    }
}

/// Where a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    pub offset: u64,
}

/// Resolves once the record's batch is acknowledged (or failed for good).
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(ClientError::Producer("the producer stopped before the record was sent".into())))
        })
    }
}

struct Pending {
    record: Record,
    /// Holds the record's bytes of `buffer_memory_bytes` until its batch is answered.
    _memory: OwnedSemaphorePermit,
    size: usize,
    tx: oneshot::Sender<Result<RecordMetadata, ClientError>>,
}

enum Msg {
    Record(Pending),
    /// Send what is buffered now and answer once every batch sent so far is answered.
    Flush(oneshot::Sender<()>),
}

/// A batching producer. Cheap to clone; clones share buffers and the producer id.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    /// (id, epoch) when idempotent.
    id: Option<(u64, u32)>,
    memory: Arc<Semaphore>,
    workers: Mutex<HashMap<(String, u32), mpsc::Sender<Msg>>>,
    /// Keyless records stick to one partition per topic (partition, bytes sent there, since when)
    /// until a batch's worth went there or a linger has passed.
    sticky: Mutex<HashMap<String, (u32, usize, Instant)>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("id", &self.inner.id).field("config", &self.inner.config).finish()
    }
}

impl Producer {
    /// Validates `config` and, when idempotent, asks the cluster for a producer id.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let id = if config.idempotent { Some(client.init_producer_id(None).await?) } else { None };
        let memory = Arc::new(Semaphore::new(config.buffer_memory_bytes));
        Ok(Producer {
            inner: Arc::new(Inner {
                client,
                config,
                id,
                memory,
                workers: Mutex::new(HashMap::new()),
                sticky: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The producer id and epoch (idempotent producers only).
    pub fn producer_id(&self) -> Option<(u64, u32)> {
        self.inner.id
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Buffers `record` for `topic`: a record with a key goes to Kafka's murmur2 partition for it
    /// ([`partition_for_key`]); keyless records (empty key) stick to one partition until about a
    /// batch's worth went there, then move to another (Kafka's sticky partitioner), so they form
    /// full batches. Waits only for buffer memory; the returned future resolves when the batch is
    /// acknowledged.
    pub async fn send(&self, topic: &str, record: Record) -> Result<DeliveryFuture, ClientError> {
        let n = self.inner.client.partition_count(topic).await?;
        let partition = if record.key.is_empty() {
            self.sticky_partition(topic, n, record_bytes(&record))
        } else {
            partition_for_key(&record.key, n)
        };
        self.send_to(topic, partition, record).await
    }

    /// Buffers `record` for `topic`/`partition` (an explicit partition).
    pub async fn send_to(&self, topic: &str, partition: u32, record: Record) -> Result<DeliveryFuture, ClientError> {
        let size = record_bytes(&record);
        if size > self.inner.config.buffer_memory_bytes || size > MAX_BATCH_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "send to {topic}/{partition}: a record of {size} bytes is larger than the producer's buffer \
                 ({} bytes) or the batch limit ({MAX_BATCH_BYTES} bytes)",
                self.inner.config.buffer_memory_bytes
            )));
        }
        // `size` fits in u32: it is below buffer_memory_bytes, which validate() caps at 4 GiB.
        let memory = self
            .inner
            .memory
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| ClientError::Producer("the producer is closed".into()))?;
        let (tx, rx) = oneshot::channel();
        let worker = self.worker(topic, partition);
        worker
            .send(Msg::Record(Pending { record, _memory: memory, size, tx }))
            .await
            .map_err(|_| ClientError::Producer(format!("the sender for {topic}/{partition} stopped")))?;
        Ok(DeliveryFuture { rx })
    }

    /// Sends everything buffered now and waits until every batch sent so far is answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let workers: Vec<mpsc::Sender<Msg>> = self.inner.workers.lock().values().cloned().collect();
        let mut waits = Vec::with_capacity(workers.len());
        for w in workers {
            let (tx, rx) = oneshot::channel();
            if w.send(Msg::Flush(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
        Ok(())
    }

    fn sticky_partition(&self, topic: &str, n: u32, size: usize) -> u32 {
        let mut sticky = self.inner.sticky.lock();
        let now = Instant::now();
        let entry = sticky.entry(topic.to_string()).or_insert_with(|| (rand::random::<u32>() % n, 0, now));
        // Like Kafka's sticky partitioner, move on once the partition's batch is full or has been
        // sent (its linger passed): staying longer would queue everything behind one partition's
        // in-flight limit while the others idle.
        let sent = now.duration_since(entry.2) >= self.inner.config.linger;
        if entry.0 >= n || entry.1 >= self.inner.config.batch_size_bytes || sent {
            // Another partition (a different one when there is a choice).
            let next = if n > 1 { (entry.0 + 1 + rand::random::<u32>() % (n - 1)) % n } else { 0 };
            *entry = (next, 0, now);
        }
        entry.1 += size;
        entry.0
    }

    fn worker(&self, topic: &str, partition: u32) -> mpsc::Sender<Msg> {
        let mut workers = self.inner.workers.lock();
        if let Some(w) = workers.get(&(topic.to_string(), partition)) {
            return w.clone();
        }
        let (tx, rx) = mpsc::channel(PARTITION_QUEUE_LEN);
        let w = PartitionWorker {
            client: self.inner.client.clone(),
            config: self.inner.config.clone(),
            topic: topic.to_string(),
            partition,
            id: self.inner.id,
            next_sequence: 0,
            window: VecDeque::new(),
            failed: Arc::new(Mutex::new(None)),
        };
        tokio::spawn(w.run(rx));
        workers.insert((topic.to_string(), partition), tx.clone());
        tx
    }
}

fn record_bytes(r: &Record) -> usize {
    record_size(r) as usize + RECORD_OVERHEAD_BYTES
}

/// Done state of one batch: `None` while in flight, then whether it was acknowledged.
type Done = watch::Receiver<Option<bool>>;

/// Builds and sends one partition's batches, in sequence order.
struct PartitionWorker {
    client: Client,
    config: ProducerConfig,
    topic: String,
    partition: u32,
    id: Option<(u64, u32)>,
    next_sequence: u64,
    /// Done states of the batches sent and not yet known done, oldest first, at most
    /// `max_in_flight_per_partition`. A new batch waits for the oldest: the window is counted from
    /// the oldest unacknowledged batch, not by how many requests are open, because the partition
    /// recognises a retry only among the producer's last 5 batches. (Counting open requests
    /// would let later batches complete and move that window past a batch still being retried.)
    /// The last entry is also the previous batch, which a batch refused as out of order waits for.
    window: VecDeque<Done>,
    /// Set when an idempotent batch failed for good: the partition's sequence is then unknown.
    failed: Arc<Mutex<Option<String>>>,
}

impl PartitionWorker {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut buf: Vec<Pending> = Vec::new();
        let mut bytes = 0usize;
        let mut deadline = Instant::now();
        loop {
            let msg = if buf.is_empty() {
                rx.recv().await
            } else {
                tokio::select! {
                    biased;
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.dispatch(std::mem::take(&mut buf)).await;
                        bytes = 0;
                        continue;
                    }
                }
            };
            match msg {
                Some(Msg::Record(p)) => {
                    if !buf.is_empty() && bytes + p.size > self.config.batch_size_bytes {
                        self.dispatch(std::mem::take(&mut buf)).await;
                        bytes = 0;
                    }
                    if buf.is_empty() {
                        deadline = Instant::now() + self.config.linger;
                    }
                    bytes += p.size;
                    buf.push(p);
                    if bytes >= self.config.batch_size_bytes {
                        self.dispatch(std::mem::take(&mut buf)).await;
                        bytes = 0;
                    }
                }
                Some(Msg::Flush(done)) => {
                    if !buf.is_empty() {
                        self.dispatch(std::mem::take(&mut buf)).await;
                        bytes = 0;
                    }
                    self.wait_in_flight().await;
                    let _ = done.send(());
                }
                None => {
                    if !buf.is_empty() {
                        self.dispatch(std::mem::take(&mut buf)).await;
                    }
                    self.wait_in_flight().await;
                    return;
                }
            }
        }
    }

    async fn wait_in_flight(&mut self) {
        while let Some(mut oldest) = self.window.pop_front() {
            // An error means the batch's task ended: it is done either way.
            let _ = oldest.wait_for(|d| d.is_some()).await;
        }
    }

    /// After an idempotent batch failed for good, its sequence numbers may or may not be taken on
    /// the partition. Once every batch still in flight has finished, start this partition over
    /// under the next epoch of the producer id, from sequence 0 (the partition fences the old
    /// epoch the first time the new one writes). Only this partition changes epoch: the partition
    /// keeps each producer's state separately, so the others go on undisturbed.
    async fn bump_epoch(&mut self, reason: &str) -> Result<(), ClientError> {
        self.wait_in_flight().await;
        let Some(current) = self.id else { return Ok(()) };
        let next = self.client.init_producer_id(Some(current)).await?;
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            producer_id = next.0,
            epoch = next.1,
            after = reason,
            "restarting the partition's sequence under a new producer epoch"
        );
        self.id = Some(next);
        self.next_sequence = 0;
        *self.failed.lock() = None;
        Ok(())
    }

    async fn dispatch(&mut self, buf: Vec<Pending>) {
        let failed = self.failed.lock().clone();
        if let Some(reason) = failed {
            if let Err(e) = self.bump_epoch(&reason).await {
                let why = format!("{reason}; and a new producer epoch could not be had: {e}");
                for p in buf {
                    let _ = p.tx.send(Err(ClientError::Producer(why.clone())));
                }
                return;
            }
        }
        while self.window.len() >= self.config.max_in_flight_per_partition {
            if let Some(mut oldest) = self.window.pop_front() {
                let _ = oldest.wait_for(|d| d.is_some()).await;
            }
        }
        let count = buf.len() as u64;
        let mut records = Vec::with_capacity(buf.len());
        let mut waiters = Vec::with_capacity(buf.len());
        for p in buf {
            records.push(p.record);
            waiters.push((p.tx, p._memory));
        }
        let batch = encode_batch_with(records, self.config.compression);
        let stamp =
            self.id.map(|(producer_id, epoch)| ProducerStamp { producer_id, epoch, base_sequence: self.next_sequence });
        self.next_sequence += count;
        let (done_tx, done_rx) = watch::channel(None);
        let prev = self.window.back().cloned();
        self.window.push_back(done_rx);
        let (client, topic, partition, acks) =
            (self.client.clone(), self.topic.clone(), self.partition, self.config.acks);
        let failed = self.failed.clone();
        tokio::spawn(async move {
            let res = send_batch(&client, &topic, partition, batch, acks, stamp, prev).await;
            match res {
                Ok(base) => {
                    let _ = done_tx.send(Some(true));
                    for (i, (tx, _memory)) in waiters.into_iter().enumerate() {
                        let _ = tx.send(Ok(RecordMetadata { partition, offset: base + i as u64 }));
                    }
                }
                Err(e) => {
                    if stamp.is_some() {
                        let mut f = failed.lock();
                        if f.is_none() {
                            *f = Some(format!("a batch to {topic}/{partition} failed ({e})"));
                        }
                    }
                    let _ = done_tx.send(Some(false));
                    for (tx, _memory) in waiters {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Sends one batch, retrying (inside the client) after retriable errors; an idempotent batch
/// refused because an earlier one has not landed yet waits for that one and tries again.
async fn send_batch(
    client: &Client,
    topic: &str,
    partition: u32,
    batch: runnel_proto::v1::RecordBatch,
    acks: Acks,
    stamp: Option<ProducerStamp>,
    mut prev: Option<Done>,
) -> Result<u64, ClientError> {
    loop {
        match client.produce_batch(topic, partition, batch.clone(), acks, stamp).await {
            Ok(p) => return Ok(p.base_offset),
            Err(e) => {
                let out_of_order =
                    matches!(e.code(), Some(ErrorCode::OutOfOrderSequence) | Some(ErrorCode::UnknownProducerId));
                // Only once: after the previous batch landed, a refusal is final.
                let Some(mut rx) = prev.take().filter(|_| out_of_order) else { return Err(e) };
                tracing::debug!(topic, partition, error = %e, "batch overtook an earlier one; waiting for it");
                let landed = rx.wait_for(|d| d.is_some()).await.map(|d| *d == Some(true)).unwrap_or(false);
                if !landed {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated_with_clear_errors() {
        assert!(ProducerConfig::default().validate().is_ok());
        let e = ProducerConfig { max_in_flight_per_partition: 6, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("max_in_flight_per_partition = 6"), "{e}");
        let ok = ProducerConfig { max_in_flight_per_partition: 6, idempotent: false, ..Default::default() };
        assert!(ok.validate().is_ok());
        let e = ProducerConfig { acks: Acks::None, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("needs acks=all"), "{e}");
        let e = ProducerConfig { batch_size_bytes: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("batch_size_bytes = 0"), "{e}");
        let e = ProducerConfig { buffer_memory_bytes: 1024, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("at least batch_size_bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_delivery_whose_sender_is_gone_fails_clearly() {
        let (tx, rx) = oneshot::channel::<Result<RecordMetadata, ClientError>>();
        drop(tx);
        let e = DeliveryFuture { rx }.await.unwrap_err();
        assert!(e.to_string().contains("stopped before the record was sent"), "{e}");
    }
}
