//! Runnel's Rust client.
//!
//! [`Client`] bootstraps from any node, keeps a cache of the cluster metadata (brokers, the
//! controller, each partition's leader) and sends partition requests straight to the leader. When
//! leadership moves it follows the NOT_LEADER hint or refreshes the metadata and retries, within
//! the bounds of a [`RetryPolicy`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_client::ClientError> {
//! use runnel_client::{Acks, Client, OffsetSpec, Record};
//!
//! let client = Client::connect(&["127.0.0.1:9292".to_string()]).await?;
//! client.create_topic("orders", 3, 1, Default::default()).await?;
//! let record = Record { value: "hello".into(), ..Default::default() };
//! let offset = client.produce("orders", 0, vec![record], Acks::All).await?;
//! let start = client.list_offsets("orders", 0, OffsetSpec::Earliest).await?;
//! let fetched = client.fetch("orders", 0, start, 1 << 20, 500).await?;
//! assert!(fetched.records.iter().any(|r| r.offset == offset));
//! # Ok(())
//! # }
//! ```
//!
//! # Producing with batching and idempotence
//!
//! [`Producer`] batches records per partition (by size and linger), compresses them, bounds what
//! it buffers and has in flight, and is idempotent by default:
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_client::ClientError> {
//! use runnel_client::{Client, Compression, Producer, ProducerConfig, Record};
//!
//! let client = Client::connect(&["127.0.0.1:9292".to_string()]).await?;
//! let config = ProducerConfig { compression: Compression::Zstd, ..ProducerConfig::default() };
//! let producer = Producer::new(client, config).await?;
//! let delivery = producer.send("orders", Record { key: "customer-7".into(), value: "hi".into(), ..Default::default() }).await?;
//! let where_ = delivery.await?; // partition = Kafka's murmur2 partition for the key
//! println!("{}/{}", where_.partition, where_.offset);
//! # Ok(())
//! # }
//! ```
//!
//! [`Consumer`] reads as a member of a consumer group ([`Consumer::subscribe`]), ephemerally, or from
//! explicitly assigned partitions ([`Consumer::assign`]), with poll, commit, seek, pause and resume.
//!
//! # Delivery semantics
//!
//! A produce that fails in transit (connection reset, timeout) or with TIMEOUT is retried, and the
//! first attempt may still have been committed. With an idempotent batch (every [`Producer`]
//! batch by default, or [`Client::produce_batch`] with a [`ProducerStamp`]) the partition
//! recognises the retry and answers the original offset: exactly once in the log. Plain
//! [`Client::produce`] calls are *at least once*: a retry may duplicate the records. A produce
//! answered with an error that is not retriable was not appended.

/// One unary call routed by `$route` (`with_controller`: to the controller, following it; or
/// `with_any_node`: to the first node that answers), with the answer's `error` checked.
macro_rules! routed_call {
    ($self:ident, $route:ident, $op:expr, $target:expr, $method:ident, $req:expr) => {{
        let op = $op;
        let target: String = $target;
        $self
            .$route(op, &target, |addr| {
                let req = $req;
                let target = target.clone();
                async move {
                    let resp = $self
                        .call(op, &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.$method(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result(op, &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await
    }};
}

mod auth;
mod consumer;
mod error;
mod groups;
mod metadata;
mod partitioner;
mod producer;
mod retry;
mod security;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, not std's: the same in production, and simulated (so reproducible) under turmoil.
use tokio::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use runnel_proto::dial::DialerHandle;
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::{check_error, decode_batch, encode_batch};
pub use runnel_proto::{encode_batch_with, v1::Compression};
use runnel_types::limits::{MAX_BATCH_BYTES, MAX_FETCH_WAIT_MS, MAX_GRPC_MESSAGE_BYTES};
use tonic::transport::{Channel, Endpoint};

pub use auth::Credentials;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset};
pub use error::ClientError;
pub use groups::CommittedOffsets;
pub use partitioner::{murmur2, partition_for_key, to_positive};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
pub use retry::RetryPolicy;
pub use runnel_proto::v1;
pub use runnel_proto::v1::{Acks, Header, OffsetSpec, Record};
pub use runnel_types::{ErrorCode, NodeId, RunnelError};

use metadata::{Lookup, MetadataCache};

/// A stub that adds this client's `authorization` header to each request.
type Stub = RunnelClient<tonic::service::interceptor::InterceptedService<Channel, auth::AuthHeader>>;

/// How many times a request is retried when the topic or partition is unknown: the node that
/// answered the metadata request may lag behind the controller right after a topic was created.
const UNKNOWN_TOPIC_ATTEMPTS: u32 = 3;

/// A node whose last request failed in transit is asked last for this long, so a dead or paused
/// node does not cost a timeout on every metadata refresh.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How long a leader may take to answer a TransferLeader request: it answers once the new leader
/// has taken over, waiting up to 5 s for that.
const TRANSFER_LEADER_WAIT: Duration = Duration::from_secs(5);

/// How long the controller may take to answer a ReplaceVoter request: up to 30 s for the new
/// voter to catch up, then up to 30 s for the membership change to commit.
const REPLACE_VOTER_WAIT: Duration = Duration::from_secs(60);

/// Connection and retry settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for a TCP connection to a node.
    pub connect_timeout: Duration,
    /// Longest wait for one answer, on top of any time the request asks the broker to wait
    /// (a fetch's `max_wait_ms`, a produce's `produce_timeout_ms`).
    pub request_timeout: Duration,
    /// How long a broker may wait for a produce to commit before answering TIMEOUT, milliseconds
    /// (sent with every produce; 0 means the broker's default).
    pub produce_timeout_ms: u32,
    /// HTTP/2 keep-alive ping interval: finds dead connections to paused or vanished nodes.
    pub keep_alive_interval: Duration,
    /// Retries after retriable errors.
    pub retry: RetryPolicy,
    /// How channels to nodes are opened; `None` is real TCP with the timeouts above. The
    /// simulator passes one over turmoil's network.
    pub dialer: Option<DialerHandle>,
    /// Fault injection for tests (0 = off): every n-th successful produce answer is treated as
    /// lost in transit, so the client retries a batch that did commit. Only idempotent batches
    /// survive this without duplicates.
    pub drop_every_nth_produce_answer: u32,
    /// How to authenticate to a cluster that requires it (`None`: no credentials, or only the
    /// client certificate of the dialer's TLS configuration).
    pub credentials: Option<Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            produce_timeout_ms: 5_000,
            keep_alive_interval: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            dialer: None,
            drop_every_nth_produce_answer: 0,
            credentials: None,
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: u64,
    /// Empty when the record has no key.
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
    pub timestamp_ms: i64,
}

/// The answer to [`Client::fetch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResult {
    /// Records at or above the requested offset, in offset order (possibly none: a long poll that
    /// timed out).
    pub records: Vec<ConsumedRecord>,
    /// The offset after the last committed record: consumers can read below it.
    pub high_watermark: u64,
    /// The first offset still in the log.
    pub log_start_offset: u64,
    /// Where the next fetch should start: one past the last record or batch returned (a
    /// compacted batch may end in offsets whose records were removed), or the requested offset
    /// when nothing was returned.
    pub next_offset: u64,
}

/// What acknowledged a [`Client::produce_detailed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// With acks=all, the leader epoch (Raft term) the batch was committed in.
    pub leader_epoch: u64,
    /// The node that answered: the partition's leader.
    pub leader: NodeId,
    /// An idempotent retry of a batch that had already committed: `base_offset` is the
    /// original's and nothing was appended again.
    pub duplicate: bool,
}

/// Identifies an idempotent batch: its producer, the producer's epoch, and the sequence number of
/// its first record in the partition (a producer numbers its records to each partition 0, 1, 2, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: u64,
    pub epoch: u32,
    pub base_sequence: u64,
}

/// One partition's share of a [`Client::produce_keyed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    pub partition: u32,
    /// Offset of the batch's first record.
    pub base_offset: u64,
    pub record_count: u32,
}

/// A connection to a Runnel cluster. Cheap to clone; clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap: Vec<String>,
    config: ClientConfig,
    /// One lazily connected channel per node address; HTTP/2 multiplexes concurrent requests.
    channels: Mutex<HashMap<String, Channel>>,
    meta: RwLock<MetadataCache>,
    /// Addresses whose last request failed in transit, and when.
    suspects: Mutex<HashMap<String, Instant>>,
    /// Where the next keyless `produce_keyed` batch goes (round-robin across calls).
    next_keyless: AtomicU32,
    /// Group → its coordinator's address, as last found.
    coordinators: Mutex<HashMap<String, String>>,
    /// Produce answers received (for `drop_every_nth_produce_answer`).
    produce_answers: AtomicU32,
    /// The bearer token from the last SCRAM login, and when to log in again.
    token: RwLock<Option<(tonic::metadata::AsciiMetadataValue, Instant)>>,
    /// One login at a time.
    login: tokio::sync::Mutex<()>,
    /// Until when each node asked this client to hold back (a quota's throttle time).
    throttled: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("bootstrap", &self.inner.bootstrap).finish_non_exhaustive()
    }
}

/// Where an error came from, for classification in the retry loops.
enum Next {
    /// Not retriable: return this error.
    Fail,
    /// Retry after backing off.
    Backoff,
    /// Retry at once (a NOT_LEADER answer named a different node).
    Now,
}

impl Client {
    /// Connects with [`ClientConfig::default`]. See [`Client::connect_with`].
    pub async fn connect(bootstrap: &[String]) -> Result<Client, ClientError> {
        Self::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Checks every bootstrap address (`host:port`), then asks them in turn for the cluster
    /// metadata until one answers. Fails with [`ClientError::Bootstrap`] if none does: this call
    /// does not wait for a cluster that is still starting.
    pub async fn connect_with(bootstrap: &[String], config: ClientConfig) -> Result<Client, ClientError> {
        let bootstrap: Vec<String> = bootstrap.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        if bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap address given (expected host:port[,host:port...])".into(),
            ));
        }
        for addr in &bootstrap {
            endpoint(addr, &config)?;
        }
        let client = Client {
            inner: Arc::new(Inner {
                bootstrap,
                config,
                channels: Mutex::new(HashMap::new()),
                meta: RwLock::new(MetadataCache::default()),
                suspects: Mutex::new(HashMap::new()),
                next_keyless: AtomicU32::new(rand::random::<u32>()),
                coordinators: Mutex::new(HashMap::new()),
                produce_answers: AtomicU32::new(0),
                token: RwLock::new(None),
                login: tokio::sync::Mutex::new(()),
                throttled: Mutex::new(HashMap::new()),
            }),
        };
        let mut last = None;
        for addr in &client.inner.bootstrap {
            match client.metadata_from(addr, &[]).await {
                Ok(_) => return Ok(client),
                // The cluster answered and refused these credentials: asking another node changes nothing.
                Err(e)
                    if matches!(e.code(), Some(ErrorCode::AuthenticationFailed | ErrorCode::AuthorizationFailed)) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(addr = %addr, error = %e, "bootstrap address did not answer");
                    last = Some(e);
                }
            }
        }
        let addrs = client.inner.bootstrap.join(", ");
        Err(match last {
            Some(last) => ClientError::Bootstrap { addrs, last: Box::new(last) },
            None => ClientError::InvalidArgument("no bootstrap address given".into()),
        })
    }

    /// The bootstrap addresses this client was created with.
    pub fn bootstrap(&self) -> &[String] {
        &self.inner.bootstrap
    }

    /// The settings this client uses.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    // ---------------------------------------------------------------------------------------
    // Partition requests
    // ---------------------------------------------------------------------------------------

    /// Appends `records` as one batch to `topic`/`partition` and returns the offset of the first
    /// one (the others follow consecutively). With [`Acks::All`] the answer means the batch is
    /// fsynced on a quorum; with [`Acks::None`] only that the leader accepted it.
    ///
    /// Retries (see the crate docs on duplicates) on NOT_LEADER, LEADER_NOT_AVAILABLE, TIMEOUT and
    /// connection failures.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
        acks: Acks,
    ) -> Result<u64, ClientError> {
        self.produce_detailed(topic, partition, records, acks).await.map(|p| p.base_offset)
    }

    /// [`Client::produce`], also returning the leader and leader epoch that acknowledged the batch.
    pub async fn produce_detailed(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
        acks: Acks,
    ) -> Result<Produced, ClientError> {
        if records.is_empty() {
            return Err(ClientError::InvalidArgument(format!("produce to {topic}/{partition}: no records to send")));
        }
        self.produce_batch(topic, partition, encode_batch(records), acks, None).await
    }

    /// Sends one already encoded batch (see [`runnel_proto::encode_batch_with`] for compression).
    /// With `producer` set the batch is idempotent: the partition applies each
    /// (producer id, epoch, sequence) once, so the retries this call makes after NOT_LEADER,
    /// timeouts and lost connections never duplicate it; a retry of a batch that did commit is
    /// answered with the original offset and [`Produced::duplicate`] set. Idempotent batches need
    /// [`Acks::All`]. [`Producer`] numbers the batches; use this directly only to manage
    /// sequences yourself.
    pub async fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: v1::RecordBatch,
        acks: Acks,
        producer: Option<ProducerStamp>,
    ) -> Result<Produced, ClientError> {
        if batch.record_count == 0 {
            return Err(ClientError::InvalidArgument(format!("produce to {topic}/{partition}: no records to send")));
        }
        if batch.records.len() > MAX_BATCH_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "produce to {topic}/{partition}: {} records encode to {} bytes, more than the \
                 {MAX_BATCH_BYTES}-byte limit for one batch; send fewer records per call",
                batch.record_count,
                batch.records.len()
            )));
        }
        if producer.is_some() && acks != Acks::All {
            return Err(ClientError::InvalidArgument(format!(
                "produce to {topic}/{partition}: an idempotent batch needs acks=all"
            )));
        }
        let timeout_ms = self.inner.config.produce_timeout_ms;
        let wait = Duration::from_millis(u64::from(timeout_ms));
        self.with_leader("produce", topic, partition, |addr| {
            let req = v1::ProduceRequest {
                topic: topic.to_string(),
                partition,
                batch: Some(batch.clone()),
                acks: acks as i32,
                timeout_ms,
                leader_epoch: None,
                partition_epoch: None,
                producer_id: producer.map(|p| p.producer_id),
                producer_epoch: producer.map(|p| p.epoch),
                base_sequence: producer.map(|p| p.base_sequence),
            };
            async move {
                let target = format!("{topic}/{partition}");
                let resp = self
                    .call("produce", &target, &addr, wait, move |mut c, t| async move {
                        c.produce(with_timeout(req, t)).await
                    })
                    .await?;
                self.note_throttle(&addr, resp.throttle_time_ms);
                broker_result("produce", &target, &addr, resp.error.as_ref())?;
                if self.drop_this_answer() {
                    // Fault injection (tests): the batch is in, but we act as if the answer was lost.
                    return Err(ClientError::Transport {
                        op: "produce",
                        target,
                        addr,
                        code: tonic::Code::Unavailable,
                        detail: "answer dropped by ClientConfig::drop_every_nth_produce_answer".into(),
                    });
                }
                Ok(Produced {
                    base_offset: resp.base_offset,
                    leader_epoch: resp.leader_epoch,
                    leader: resp.node_id,
                    duplicate: resp.duplicate,
                })
            }
        })
        .await
    }

    fn drop_this_answer(&self) -> bool {
        let n = self.inner.config.drop_every_nth_produce_answer;
        n > 0 && self.inner.produce_answers.fetch_add(1, Ordering::Relaxed) % n == n - 1
    }

    /// Asks the cluster for a new idempotent-producer id (epoch 0), or with `current` set, for the
    /// next epoch of that id (the producer then restarts its sequences at 0 and the partitions
    /// fence the older epoch). Any node accepts this; new ids come from the controller, which
    /// reserves them in blocks through the metadata log. [`Producer`] calls this itself.
    pub async fn init_producer_id(&self, current: Option<(u64, u32)>) -> Result<(u64, u32), ClientError> {
        let target = "producer id".to_string();
        let resp = self
            .with_controller("init producer id", &target, |addr| {
                let req = v1::InitProducerIdRequest {
                    producer_id: current.map(|c| c.0),
                    producer_epoch: current.map_or(0, |c| c.1),
                };
                let target = target.clone();
                async move {
                    let resp = self
                        .call("init producer id", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.init_producer_id(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("init producer id", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        Ok((resp.producer_id, resp.producer_epoch))
    }

    /// Spreads `records` over `topic`'s partitions like Kafka's default partitioner: a record
    /// with a key goes to [`partition_for_key`]; keyless records (empty key) all go to one
    /// partition, chosen round-robin across calls. Sends one batch per partition, concurrently,
    /// and returns one entry per partition written, in partition order.
    ///
    /// On error some partitions may have been written (the error names the one that failed).
    pub async fn produce_keyed(
        &self,
        topic: &str,
        records: Vec<Record>,
        acks: Acks,
    ) -> Result<Vec<ProducedBatch>, ClientError> {
        if records.is_empty() {
            return Ok(vec![]);
        }
        let n = self.partition_count(topic).await?;
        let keyless = self.inner.next_keyless.fetch_add(1, Ordering::Relaxed) % n;
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for r in records {
            let p = if r.key.is_empty() { keyless } else { partition_for_key(&r.key, n) };
            by_partition.entry(p).or_default().push(r);
        }
        let sends = by_partition.into_iter().map(|(p, recs)| {
            let count = recs.len() as u32;
            async move {
                let base_offset = self.produce(topic, p, recs, acks).await?;
                Ok::<_, ClientError>(ProducedBatch { partition: p, base_offset, record_count: count })
            }
        });
        futures::future::try_join_all(sends).await
    }

    /// Reads from `topic`/`partition` starting at `offset`: up to about `max_bytes` (0 = the
    /// broker's default; at least one batch is returned when available), waiting up to
    /// `max_wait_ms` (capped at 30 000) for records to arrive when there are none yet.
    ///
    /// Every batch's CRC32C is checked on receipt. OFFSET_OUT_OF_RANGE is returned, not retried;
    /// [`ClientError::valid_range`] gives the partition's valid range.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResult, ClientError> {
        let max_wait_ms = max_wait_ms.min(MAX_FETCH_WAIT_MS);
        let wait = Duration::from_millis(u64::from(max_wait_ms));
        let resp = self
            .with_leader("fetch", topic, partition, |addr| {
                let req = v1::FetchRequest {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    max_bytes,
                    max_wait_ms,
                    leader_epoch: None,
                    partition_epoch: None,
                };
                async move {
                    let target = format!("{topic}/{partition}");
                    let resp = self
                        .call("fetch", &target, &addr, wait, move |mut c, t| async move {
                            c.fetch(with_timeout(req, t)).await
                        })
                        .await?;
                    self.note_throttle(&addr, resp.throttle_time_ms);
                    broker_result("fetch", &target, &addr, resp.error.as_ref())?;
                    Ok((addr, resp))
                }
            })
            .await?;
        let (addr, resp) = resp;
        decode_fetch(topic, partition, offset, &addr, resp)
    }

    /// The first offset still in the log ([`OffsetSpec::Earliest`]: the log start, which
    /// retention advances) or the high watermark, the offset the next committed record will get
    /// ([`OffsetSpec::Latest`]). For [`OffsetSpec::Timestamp`] use [`Client::offset_for_timestamp`].
    pub async fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64, ClientError> {
        self.list_offsets_raw(topic, partition, spec, 0).await.map(|r| r.offset)
    }

    /// Seek by time: the offset of the first record in `topic`/`partition` whose timestamp is at
    /// or after `timestamp_ms` (ms since the Unix epoch), with that record's timestamp; or, when
    /// no record is that recent, the high watermark (where the next record will go) and `None`.
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<(u64, Option<i64>), ClientError> {
        let r = self.list_offsets_raw(topic, partition, OffsetSpec::Timestamp, timestamp_ms).await?;
        Ok((r.offset, r.found.then_some(r.timestamp_ms)))
    }

    async fn list_offsets_raw(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<v1::ListOffsetsResponse, ClientError> {
        self.with_leader("list offsets", topic, partition, |addr| {
            let req = v1::ListOffsetsRequest { topic: topic.to_string(), partition, spec: spec as i32, timestamp_ms };
            async move {
                let target = format!("{topic}/{partition}");
                let resp = self
                    .call("list offsets", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.list_offsets(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("list offsets", &target, &addr, resp.error.as_ref())?;
                Ok(resp)
            }
        })
        .await
    }

    // ---------------------------------------------------------------------------------------
    // Metadata and administration
    // ---------------------------------------------------------------------------------------

    /// Asks the cluster for fresh metadata about `topics` (empty: every topic), updates the cache
    /// and returns the answer. Tries the known nodes in turn until one answers; fails with
    /// UNKNOWN_TOPIC if a requested topic does not exist.
    pub async fn metadata(&self, topics: &[String]) -> Result<v1::MetadataResponse, ClientError> {
        let (addr, resp) = self.refresh(topics).await?;
        if let Some(missing) = topics.iter().find(|t| !resp.topics.iter().any(|i| &i.name == *t)) {
            return Err(ClientError::Broker {
                op: "look up",
                target: format!("topic '{missing}'"),
                addr,
                error: Box::new(RunnelError::unknown_topic(missing)),
            });
        }
        Ok(resp)
    }

    /// How many partitions `topic` has (from the cache, refreshing it if the topic is not known).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self.inner.meta.read().partition_count(topic).filter(|n| *n > 0) {
            return Ok(n);
        }
        let resp = self.metadata(&[topic.to_string()]).await?;
        let n = resp.topics.iter().find(|t| t.name == topic).map_or(0, |t| t.partitions.len() as u32);
        if n == 0 {
            return Err(ClientError::Broker {
                op: "look up",
                target: format!("topic '{topic}'"),
                addr: "cluster metadata".into(),
                error: Box::new(RunnelError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!("topic '{topic}' has no partitions assigned yet"),
                )),
            });
        }
        Ok(n)
    }

    /// Creates a topic. Any node accepts this and forwards it to the controller; the client
    /// retries on NOT_CONTROLLER and connection failures only. `configs` are per-topic settings
    /// such as `max.record.bytes`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<v1::TopicInfo, ClientError> {
        let configs: HashMap<String, String> = configs.into_iter().collect();
        let target = format!("'{name}'");
        let resp = self
            .with_controller("create topic", &target, |addr| {
                let req = v1::CreateTopicRequest {
                    name: name.to_string(),
                    partitions,
                    replication_factor,
                    configs: configs.clone(),
                };
                let target = target.clone();
                async move {
                    let resp = self
                        .call("create topic", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.create_topic(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("create topic", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        let info = resp.topic.unwrap_or_else(|| v1::TopicInfo { name: name.to_string(), ..Default::default() });
        if !info.partitions.is_empty() {
            self.inner.meta.write().insert_topic(&info);
        }
        Ok(info)
    }

    /// Deletes a topic (through the controller, like [`Client::create_topic`]).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let target = format!("'{name}'");
        self.with_controller("delete topic", &target, |addr| {
            let req = v1::DeleteTopicRequest { name: name.to_string() };
            let target = target.clone();
            async move {
                let resp = self
                    .call("delete topic", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.delete_topic(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("delete topic", &target, &addr, resp.error.as_ref())
            }
        })
        .await?;
        self.inner.meta.write().forget_topic(name);
        Ok(())
    }

    /// A topic's configuration, every key with its effective value, and the keys that differ
    /// from the defaults. Answered by the first node that responds, from its committed metadata.
    pub async fn describe_topic_config(
        &self,
        topic: &str,
    ) -> Result<(BTreeMap<String, String>, Vec<String>), ClientError> {
        let req = v1::DescribeTopicConfigRequest { topic: topic.to_string() };
        let resp = routed_call!(
            self,
            with_any_node,
            "describe the configuration of",
            format!("topic '{topic}'"),
            describe_topic_config,
            req.clone()
        )?;
        let mut overridden = resp.overridden;
        overridden.sort();
        Ok((resp.configs.into_iter().collect(), overridden))
    }

    /// Sets the keys in `set` and resets those in `delete` to their defaults, all or nothing
    /// (through the controller, like [`Client::create_topic`]). Returns the configuration after
    /// the change. Running replicas pick it up as their nodes apply it.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<BTreeMap<String, String>, ClientError> {
        let set: HashMap<String, String> = set.into_iter().collect();
        let target = format!("topic '{topic}'");
        let resp = self
            .with_controller("alter the configuration of", &target, |addr| {
                let req =
                    v1::AlterTopicConfigRequest { topic: topic.to_string(), set: set.clone(), delete: delete.clone() };
                let target = target.clone();
                async move {
                    let resp = self
                        .call(
                            "alter the configuration of",
                            &target,
                            &addr,
                            Duration::ZERO,
                            move |mut c, t| async move { c.alter_topic_config(with_timeout(req, t)).await },
                        )
                        .await?;
                    broker_result("alter the configuration of", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        Ok(resp.configs.into_iter().collect())
    }

    // ---------------------------------------------------------------------------------------
    // Cluster operations
    // ---------------------------------------------------------------------------------------

    /// Starts moving every replica off node `node_id` so it can be stopped (or, with `cancel`,
    /// stops doing so: the node may receive replicas again). Goes through the controller like
    /// [`Client::create_topic`]. Returns how many replicas still have to move off the node; poll
    /// [`Client::metadata`] (`BrokerInfo::replica_count`) to follow the progress.
    pub async fn decommission_node(&self, node_id: NodeId, cancel: bool) -> Result<u32, ClientError> {
        let op = if cancel { "cancel decommissioning" } else { "decommission" };
        let req = v1::DecommissionNodeRequest { node_id, cancel };
        let resp = routed_call!(self, with_controller, op, format!("node {node_id}"), decommission_node, req)?;
        Ok(resp.remaining_replicas)
    }

    /// Moves `topic`/`partition` to the replica set `replicas` (the first is the preferred
    /// leader), through the controller. Returns the partition as the controller committed it:
    /// while the move runs, `target_replicas` holds the set it is moving to.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<v1::PartitionInfo, ClientError> {
        let target = format!("{topic}/{partition}");
        if replicas.is_empty() {
            return Err(ClientError::InvalidArgument(format!("reassign {target}: no replicas given")));
        }
        if let Some(dup) = replicas.iter().enumerate().find_map(|(i, r)| replicas[..i].contains(r).then_some(*r)) {
            return Err(ClientError::InvalidArgument(format!("reassign {target}: node {dup} is listed twice")));
        }
        let resp = self
            .with_controller("reassign", &target, |addr| {
                let req =
                    v1::ReassignPartitionRequest { topic: topic.to_string(), partition, replicas: replicas.clone() };
                let target = target.clone();
                async move {
                    let resp = self
                        .call("reassign", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.reassign_partition(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("reassign", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await;
        // Replicas, and soon the leader, change: the next request looks the topic up afresh.
        self.inner.meta.write().forget_topic(topic);
        let resp = resp?;
        Ok(resp.partition.unwrap_or_else(|| v1::PartitionInfo {
            partition,
            target_replicas: replicas,
            ..Default::default()
        }))
    }

    /// Evens out replicas and preferred leaders across the live brokers, through the controller.
    /// Returns the moves started (with `dry_run`, the moves that would be made; nothing moves).
    /// Empty: the cluster is already balanced.
    pub async fn rebalance(&self, dry_run: bool) -> Result<Vec<v1::PartitionMove>, ClientError> {
        let target = "the cluster".to_string();
        let resp = self
            .with_controller("rebalance", &target, |addr| {
                let req = v1::RebalanceRequest { dry_run };
                let target = target.clone();
                async move {
                    let resp = self
                        .call("rebalance", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.rebalance(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("rebalance", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        if !dry_run && !resp.moves.is_empty() {
            let mut meta = self.inner.meta.write();
            for m in &resp.moves {
                meta.forget_topic(&m.topic);
            }
        }
        Ok(resp.moves)
    }

    /// Replaces metadata voter `remove` (typically a dead node) by `add`, another live registered
    /// node, through the controller: `add` catches up as a learner, then one membership change
    /// swaps them (this can take up to a minute). Returns the metadata voters afterwards.
    pub async fn replace_voter(&self, remove: NodeId, add: NodeId) -> Result<Vec<NodeId>, ClientError> {
        let target = format!("metadata voter {remove} by node {add}");
        let resp = self
            .with_controller("replace", &target, |addr| {
                let req = v1::ReplaceVoterRequest { remove, add };
                let target = target.clone();
                async move {
                    let resp = self
                        .call("replace", &target, &addr, REPLACE_VOTER_WAIT, move |mut c, t| async move {
                            c.replace_voter(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("replace", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        Ok(resp.voters)
    }

    /// The cluster's health as the first node that answers sees it in its committed metadata:
    /// brokers and their status, the controller, the metadata voters, and every partition that
    /// is leaderless or under-replicated, with the reason. Tries the known nodes in turn (live
    /// brokers, then the bootstrap addresses).
    pub async fn cluster_health(&self) -> Result<v1::ClusterHealthResponse, ClientError> {
        self.with_any_node("check", "cluster health", |addr| async move {
            let resp = self
                .call("check", "cluster health", &addr, Duration::ZERO, move |mut c, t| async move {
                    c.cluster_health(with_timeout(v1::ClusterHealthRequest {}, t)).await
                })
                .await?;
            broker_result("check", "cluster health", &addr, resp.error.as_ref())?;
            Ok(resp)
        })
        .await
    }

    /// Hands the leadership of `topic`/`partition` to replica `to` (which must be a caught-up
    /// voter of the partition). The request goes to the current leader, following leadership
    /// changes like [`Client::produce`]; it is answered once `to` has taken over. Returns the new
    /// leader's epoch.
    pub async fn transfer_leader(&self, topic: &str, partition: u32, to: NodeId) -> Result<u64, ClientError> {
        let result = self
            .with_leader("transfer leadership of", topic, partition, |addr| {
                let req = v1::TransferLeaderRequest { topic: topic.to_string(), partition, to };
                async move {
                    let target = format!("{topic}/{partition}");
                    let resp = self
                        .call(
                            "transfer leadership of",
                            &target,
                            &addr,
                            TRANSFER_LEADER_WAIT,
                            move |mut c, t| async move { c.transfer_leader(with_timeout(req, t)).await },
                        )
                        .await?;
                    broker_result("transfer leadership of", &target, &addr, resp.error.as_ref())?;
                    Ok(resp.leader_epoch)
                }
            })
            .await;
        // The leader moved (or may have): the next request looks the topic up afresh.
        self.inner.meta.write().forget_topic(topic);
        result
    }

    // ---------------------------------------------------------------------------------------
    // Plumbing
    // ---------------------------------------------------------------------------------------

    /// The `authorization` header for calls to `addr`: the configured token, or the token of a
    /// SCRAM login (logging in first when there is none or it is about to expire).
    async fn auth_header(&self, addr: &str) -> Result<auth::AuthHeader, ClientError> {
        let (user, password) = match &self.inner.config.credentials {
            None => return Ok(auth::AuthHeader(None)),
            Some(Credentials::Token(t)) => {
                return auth::bearer(t).map(|h| auth::AuthHeader(Some(h))).map_err(ClientError::InvalidArgument)
            }
            Some(Credentials::Password { user, password }) => (user, password),
        };
        let fresh =
            || self.inner.token.read().as_ref().filter(|(_, renew)| Instant::now() < *renew).map(|(h, _)| h.clone());
        if let Some(h) = fresh() {
            return Ok(auth::AuthHeader(Some(h)));
        }
        let _one_at_a_time = self.inner.login.lock().await;
        if let Some(h) = fresh() {
            return Ok(auth::AuthHeader(Some(h)));
        }
        let (header, renew) = self.log_in(addr, user, password).await?;
        *self.inner.token.write() = Some((header.clone(), renew));
        Ok(auth::AuthHeader(Some(header)))
    }

    /// A SCRAM-SHA-512 login at `addr`: two Authenticate calls; the server's signature is checked
    /// too. Returns the token's header and when to log in again (at 80 % of its lifetime).
    async fn log_in(
        &self,
        addr: &str,
        user: &str,
        password: &str,
    ) -> Result<(tonic::metadata::AsciiMetadataValue, Instant), ClientError> {
        use runnel_security::scram::{Mechanism, ScramClient};
        let mechanism = Mechanism::ScramSha512;
        let failed = |message: String| ClientError::Broker {
            op: "log in",
            target: format!("as '{user}'"),
            addr: addr.to_string(),
            error: Box::new(RunnelError::new(ErrorCode::AuthenticationFailed, message)),
        };
        let nonce: String = (0..24).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
        let (scram, client_first) = ScramClient::start(mechanism, user, password, &nonce);
        let first = v1::AuthenticateRequest {
            mechanism: mechanism.name().to_string(),
            message: client_first,
            session: String::new(),
        };
        let target = format!("as '{user}'");
        let started = Instant::now();
        let r1 = self
            .raw_call("log in", &target, addr, auth::AuthHeader(None), move |mut c, t| async move {
                c.authenticate(with_timeout(first, t)).await
            })
            .await?;
        broker_result("log in", &target, addr, r1.error.as_ref())?;
        let (scram, client_final) = scram.respond(&r1.message).map_err(|e| failed(e.to_string()))?;
        let second = v1::AuthenticateRequest {
            mechanism: mechanism.name().to_string(),
            message: client_final,
            session: r1.session,
        };
        let r2 = self
            .raw_call("log in", &target, addr, auth::AuthHeader(None), move |mut c, t| async move {
                c.authenticate(with_timeout(second, t)).await
            })
            .await?;
        broker_result("log in", &target, addr, r2.error.as_ref())?;
        scram.verify(&r2.message).map_err(|e| failed(e.to_string()))?;
        let header = auth::bearer(&r2.token).map_err(failed)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lifetime = Duration::from_millis(r2.expires_at_ms.saturating_sub(now_ms));
        Ok((header, started + lifetime.mul_f64(0.8)))
    }

    /// Remembers a node's throttle time: the next request to it waits that long first.
    fn note_throttle(&self, addr: &str, throttle_time_ms: u32) {
        if throttle_time_ms > 0 {
            let until = Instant::now() + Duration::from_millis(throttle_time_ms as u64);
            self.inner.throttled.lock().insert(addr.to_string(), until);
        }
    }

    /// A gRPC stub on the cached channel for `addr` (created lazily: no I/O here).
    fn stub(&self, addr: &str, header: auth::AuthHeader) -> Result<Stub, ClientError> {
        let channel = {
            let mut channels = self.inner.channels.lock();
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let c = match &self.inner.config.dialer {
                        Some(d) => {
                            d.0.channel(addr)
                                .map_err(|reason| ClientError::InvalidAddress { addr: addr.to_string(), reason })?
                        }
                        None => endpoint(addr, &self.inner.config)?.connect_lazy(),
                    };
                    channels.insert(addr.to_string(), c.clone());
                    c
                }
            }
        };
        Ok(RunnelClient::with_interceptor(channel, header)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }

    /// Drops the cached channel for `addr` after a connection failure, so the next request dials
    /// afresh instead of reusing a connection that may be half dead.
    fn evict(&self, addr: &str) {
        self.inner.channels.lock().remove(addr);
    }

    /// Remembers which addresses just failed in transit (any gRPC failure counts; broker errors
    /// arrive inside successful responses).
    fn note_health(&self, addr: &str, ok: bool) {
        let mut suspects = self.inner.suspects.lock();
        if ok {
            if !suspects.is_empty() {
                suspects.remove(addr);
            }
        } else {
            suspects.insert(addr.to_string(), Instant::now());
        }
    }

    /// `addr`, unless it just failed in transit and another known node has not: then that node.
    /// Right after a leader dies the metadata still names it until its successor reports in, but
    /// every surviving replica already knows the new leader and answers NOT_LEADER with it, so
    /// asking a live node finds the new leader without waiting for the metadata.
    fn reachable_instead_of(&self, addr: String) -> String {
        let suspect = |a: &str| {
            self.inner.suspects.lock().get(a).is_some_and(|t| Instant::now().duration_since(*t) < SUSPECT_FOR)
        };
        if !suspect(&addr) {
            return addr;
        }
        let known = self.inner.meta.read().candidates(&self.inner.bootstrap, false);
        known.into_iter().find(|a| *a != addr && !suspect(a)).unwrap_or(addr)
    }

    /// `candidates` with addresses that failed recently moved to the end (order otherwise kept).
    fn healthy_first(&self, mut candidates: Vec<String>) -> Vec<String> {
        let suspects = self.inner.suspects.lock();
        if !suspects.is_empty() {
            let now = Instant::now();
            candidates.sort_by_key(|a| suspects.get(a).is_some_and(|t| now.duration_since(*t) < SUSPECT_FOR));
        }
        candidates
    }

    /// One RPC to `addr` with a deadline of `request_timeout + server_wait`, with this client's
    /// credentials, after any throttle time the node asked for.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        target: &str,
        addr: &str,
        server_wait: Duration,
        rpc: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(Stub, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let until = self.inner.throttled.lock().get(addr).copied();
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
            self.inner.throttled.lock().remove(addr);
        }
        let header = self.auth_header(addr).await?;
        let out = self.raw_call_waiting(op, target, addr, header, server_wait, rpc).await;
        if let Err(ClientError::Broker { error, .. }) = &out {
            if error.code == ErrorCode::AuthenticationFailed {
                // Expired or revoked: the next call logs in again.
                *self.inner.token.write() = None;
            }
        }
        out
    }

    async fn raw_call<T, F, Fut>(
        &self,
        op: &'static str,
        target: &str,
        addr: &str,
        header: auth::AuthHeader,
        rpc: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(Stub, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.raw_call_waiting(op, target, addr, header, Duration::ZERO, rpc).await
    }

    async fn raw_call_waiting<T, F, Fut>(
        &self,
        op: &'static str,
        target: &str,
        addr: &str,
        header: auth::AuthHeader,
        server_wait: Duration,
        rpc: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(Stub, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let stub = self.stub(addr, header)?;
        let timeout = self.inner.config.request_timeout + server_wait;
        let result = tokio::time::timeout(timeout, rpc(stub, timeout)).await;
        let refused = matches!(&result, Ok(Err(s)) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied));
        self.note_health(addr, matches!(result, Ok(Ok(_))) || refused);
        match result {
            Err(_) => Err(ClientError::Timeout { op, target: target.to_string(), addr: addr.to_string(), timeout }),
            // The node answered, and refused: not a transport failure, and not worth a retry.
            Ok(Err(status)) if refused => Err(ClientError::Broker {
                op,
                target: target.to_string(),
                addr: addr.to_string(),
                error: Box::new(RunnelError::new(
                    if status.code() == tonic::Code::Unauthenticated {
                        ErrorCode::AuthenticationFailed
                    } else {
                        ErrorCode::AuthorizationFailed
                    },
                    status.message().to_string(),
                )),
            }),
            Ok(Err(status)) => Err(ClientError::Transport {
                op,
                target: target.to_string(),
                addr: addr.to_string(),
                code: status.code(),
                detail: error::describe_status(&status),
            }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    /// One Metadata request to `addr`; merges the answer into the cache. A top-level
    /// UNKNOWN_TOPIC answer counts as "those topics do not exist", not as a failure.
    async fn metadata_from(&self, addr: &str, topics: &[String]) -> Result<v1::MetadataResponse, ClientError> {
        let req = v1::MetadataRequest { topics: topics.to_vec() };
        let resp = self
            .call("read", "cluster metadata", addr, Duration::ZERO, move |mut c, t| async move {
                c.metadata(with_timeout(req, t)).await
            })
            .await?;
        if let Err(e) = check_error(resp.error.as_ref()) {
            if e.code != ErrorCode::UnknownTopic {
                return Err(ClientError::Broker {
                    op: "read",
                    target: "cluster metadata".into(),
                    addr: addr.into(),
                    error: Box::new(e),
                });
            }
        }
        self.inner.meta.write().apply(&resp, topics);
        Ok(resp)
    }

    /// Refreshes metadata from the first node that answers (live brokers, then bootstrap
    /// addresses). Returns the address that answered and its answer.
    async fn refresh(&self, topics: &[String]) -> Result<(String, v1::MetadataResponse), ClientError> {
        let candidates = self.inner.meta.read().candidates(&self.inner.bootstrap, false);
        let candidates = self.healthy_first(candidates);
        let mut last = None;
        for addr in candidates {
            match self.metadata_from(&addr, topics).await {
                Ok(resp) => return Ok((addr, resp)),
                Err(e) => {
                    tracing::debug!(addr = %addr, error = %e, "metadata refresh failed; trying the next node");
                    if e.is_transport() {
                        self.evict(&addr);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no broker address known".into())))
    }

    /// The leader of `topic`/`partition`, refreshing the metadata when the cache does not know it.
    async fn leader(&self, op: &'static str, topic: &str, partition: u32) -> Result<(NodeId, String), ClientError> {
        let cached = self.inner.meta.read().lookup(topic, partition);
        if let Lookup::Leader(id, addr) = cached {
            return Ok((id, self.reachable_instead_of(addr)));
        }
        let (answered_by, _) = self.refresh(&[topic.to_string()]).await?;
        let lookup = self.inner.meta.read().lookup(topic, partition);
        let error = match lookup {
            Lookup::Leader(id, addr) => return Ok((id, self.reachable_instead_of(addr))),
            Lookup::UnknownTopic => RunnelError::unknown_topic(topic),
            Lookup::UnknownPartition(n) => RunnelError::unknown_partition(topic, partition, n),
            Lookup::NoLeader => RunnelError::new(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}/{partition} has no leader right now (an election may be running)"),
            ),
            Lookup::LeaderWithoutAddr(id) => RunnelError::new(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}/{partition} is led by node {id}, whose address is not known yet"),
            ),
        };
        Err(ClientError::Broker {
            op,
            target: format!("{topic}/{partition}"),
            addr: answered_by,
            error: Box::new(error),
        })
    }

    /// Runs `attempt(leader_addr)` against the partition's leader, following leadership changes
    /// and retrying retriable errors within the retry policy.
    async fn with_leader<T, F, Fut>(
        &self,
        op: &'static str,
        topic: &str,
        partition: u32,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let policy = &self.inner.config.retry;
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut unknown = 0u32;
        loop {
            attempts += 1;
            let (err, asked, used) = match self.leader(op, topic, partition).await {
                Ok((id, addr)) => match attempt(addr.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => (e, Some(id), addr),
                },
                Err(e) => (e, None, String::new()),
            };
            let next = match &err {
                ClientError::Broker { error, .. } => match error.code {
                    // A hint naming another leader, or naming the one we meant to ask at an address
                    // we did not use (we asked a live node instead of a leader that had just failed
                    // in transit): go there now, trusting the hint over the failure.
                    ErrorCode::NotLeader => match &error.leader {
                        Some((id, addr)) if !addr.is_empty() && (asked != Some(*id) || used != *addr) => {
                            self.inner.suspects.lock().remove(addr);
                            self.inner.meta.write().set_leader(topic, partition, *id, addr);
                            Next::Now
                        }
                        _ => {
                            self.inner.meta.write().forget_leader(topic, partition);
                            Next::Backoff
                        }
                    },
                    code if code.is_retriable() => {
                        self.inner.meta.write().forget_leader(topic, partition);
                        Next::Backoff
                    }
                    ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => {
                        unknown += 1;
                        self.inner.meta.write().forget_topic(topic);
                        if unknown < UNKNOWN_TOPIC_ATTEMPTS {
                            Next::Backoff
                        } else {
                            Next::Fail
                        }
                    }
                    _ => Next::Fail,
                },
                ClientError::Transport { code, addr, .. } if error::is_retriable_code(*code) => {
                    self.evict(addr);
                    self.inner.meta.write().forget_leader(topic, partition);
                    Next::Backoff
                }
                ClientError::Timeout { addr, .. } => {
                    self.evict(addr);
                    self.inner.meta.write().forget_leader(topic, partition);
                    Next::Backoff
                }
                _ => Next::Fail,
            };
            if matches!(next, Next::Fail) {
                return Err(err);
            }
            let elapsed = started.elapsed();
            let Some(delay) = policy.next_delay(attempts, elapsed, rand::random::<f64>()) else {
                return Err(exhausted(op, format!("{topic}/{partition}"), attempts, elapsed, err));
            };
            tracing::debug!(op, topic, partition, attempts, error = %err, "retrying");
            if matches!(next, Next::Backoff) {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Runs `attempt(addr)` against the controller when known, else any node (which forwards to
    /// the controller). Retries only NOT_CONTROLLER and connection failures, moving to another
    /// node each time.
    /// Runs `attempt` against the known nodes in turn (live brokers, then the bootstrap
    /// addresses), until one answers: for what every node answers from its own copy of the
    /// committed metadata. An answer that is an error (not a failure in transit) is returned.
    async fn with_any_node<T, F, Fut>(&self, op: &'static str, target: &str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let candidates = self.inner.meta.read().candidates(&self.inner.bootstrap, false);
        let mut last = None;
        for addr in self.healthy_first(candidates) {
            match attempt(addr.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transport() => {
                    tracing::debug!(op, target, addr = %addr, error = %e, "request failed in transit; trying the next node");
                    self.evict(&addr);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no broker address known".into())))
    }

    async fn with_controller<T, F, Fut>(&self, op: &'static str, target: &str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let policy = &self.inner.config.retry;
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut hinted: Option<String> = None;
        let mut in_doubt: Option<String> = None;
        let mut tried: Vec<String> = Vec::new();
        loop {
            attempts += 1;
            let addr = match hinted.take() {
                Some(a) => a,
                None => {
                    // The controller first, then each other node once before any repeats.
                    let candidates = self.inner.meta.read().candidates(&self.inner.bootstrap, true);
                    let candidates = self.healthy_first(candidates);
                    if candidates.iter().all(|c| tried.contains(c)) {
                        tried.clear();
                    }
                    let next = candidates.into_iter().find(|c| !tried.contains(c));
                    next.unwrap_or_default()
                }
            };
            tried.push(addr.clone());
            let err = match attempt(addr.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = match &err {
                ClientError::Broker { error, .. } if error.code == ErrorCode::NotController => {
                    hinted = error.leader.as_ref().map(|(_, a)| a.clone()).filter(|a| !a.is_empty());
                    if hinted.is_none() {
                        // Learn the new controller, if the cluster already knows it.
                        let _ = self.refresh(&[]).await;
                    }
                    true
                }
                ClientError::Transport { code, .. } if error::is_retriable_code(*code) => {
                    self.evict(&addr);
                    in_doubt = Some(addr.clone());
                    true
                }
                ClientError::Timeout { .. } => {
                    self.evict(&addr);
                    in_doubt = Some(addr.clone());
                    true
                }
                _ => false,
            };
            if !retry {
                return Err(match (err, in_doubt) {
                    (ClientError::Broker { op, target, addr, mut error }, Some(doubt)) => {
                        error.message.push_str(&format!(
                            " (note: an earlier attempt via {doubt} failed in transit and may have been applied)"
                        ));
                        ClientError::Broker { op, target, addr, error }
                    }
                    (err, _) => err,
                });
            }
            let elapsed = started.elapsed();
            let Some(delay) = policy.next_delay(attempts, elapsed, rand::random::<f64>()) else {
                return Err(exhausted(op, target.to_string(), attempts, elapsed, err));
            };
            tracing::debug!(op, target, attempts, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The error to return when the retry policy runs out: the last error itself if there was only
/// one attempt, else that error wrapped with the attempt count and time spent.
fn exhausted(op: &'static str, target: String, attempts: u32, elapsed: Duration, last: ClientError) -> ClientError {
    if attempts <= 1 {
        return last;
    }
    ClientError::RetriesExhausted { op, target, attempts, elapsed, last: Box::new(last) }
}

fn broker_result(op: &'static str, target: &str, addr: &str, err: Option<&v1::Error>) -> Result<(), ClientError> {
    check_error(err).map_err(|error| ClientError::Broker {
        op,
        target: target.to_string(),
        addr: addr.to_string(),
        error: Box::new(error),
    })
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// Validates `addr` (`host:port`, optionally prefixed with `http://`) and builds its endpoint.
fn endpoint(addr: &str, config: &ClientConfig) -> Result<Endpoint, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress { addr: addr.to_string(), reason: reason.to_string() };
    if addr.starts_with("https://") {
        return Err(invalid("TLS is not supported; use host:port"));
    }
    let host_port = addr.strip_prefix("http://").unwrap_or(addr);
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(invalid("expected host:port"));
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid("expected host:port"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid(&format!("port '{port}' is not a number between 0 and 65535")));
    }
    let ep = Endpoint::from_shared(format!("http://{host_port}")).map_err(|e| invalid(&e.to_string()))?;
    Ok(ep
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.connect_timeout))
}

/// Verifies and decodes fetched batches, dropping records below `offset` (the first batch may
/// start earlier than asked).
fn decode_fetch(
    topic: &str,
    partition: u32,
    offset: u64,
    addr: &str,
    resp: v1::FetchResponse,
) -> Result<FetchResult, ClientError> {
    let corrupt = |error: RunnelError| ClientError::Broker {
        op: "fetch",
        target: format!("{topic}/{partition}"),
        addr: addr.to_string(),
        error: Box::new(error),
    };
    let mut records = Vec::new();
    for fb in &resp.batches {
        let Some(batch) = &fb.batch else {
            return Err(corrupt(RunnelError::new(
                ErrorCode::CorruptBatch,
                format!("the batch at base offset {} arrived without its records", fb.base_offset),
            )));
        };
        let decoded = decode_batch(batch).map_err(|mut e| {
            e.message = format!("batch at base offset {}: {}", fb.base_offset, e.message);
            corrupt(e)
        })?;
        for r in decoded {
            // decode_batch sets every delta (the position, unless compaction kept it apart).
            let o = fb.base_offset + u64::from(r.offset_delta.unwrap_or(0));
            if o < offset {
                continue;
            }
            if let Some(prev) = records.last().map(|r: &ConsumedRecord| r.offset) {
                if o <= prev {
                    return Err(corrupt(RunnelError::new(
                        ErrorCode::CorruptBatch,
                        format!("offsets went backwards in the answer: {o} after {prev}"),
                    )));
                }
            }
            records.push(ConsumedRecord {
                offset: o,
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            });
        }
    }
    // Past the end of the last batch: compaction may have emptied its tail (or all of it), and
    // asking again from inside it would return the same batch forever.
    let batches_end =
        resp.batches.iter().filter_map(|b| b.batch.as_ref().map(|x| b.base_offset + u64::from(x.record_count))).max();
    let next_offset = records.last().map_or(offset, |r| r.offset + 1).max(batches_end.unwrap_or(offset));
    Ok(FetchResult {
        records,
        high_watermark: resp.high_watermark,
        log_start_offset: resp.log_start_offset,
        next_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str) -> Record {
        Record { value: Bytes::from(v.to_string()), timestamp_ms: 1, ..Default::default() }
    }

    #[test]
    fn fetch_skips_records_below_the_requested_offset() {
        let resp = v1::FetchResponse {
            high_watermark: 13,
            log_start_offset: 0,
            batches: vec![
                v1::FetchedBatch { base_offset: 8, batch: Some(encode_batch(vec![rec("a"), rec("b"), rec("c")])) },
                v1::FetchedBatch { base_offset: 11, batch: Some(encode_batch(vec![rec("d"), rec("e")])) },
            ],
            ..Default::default()
        };
        let r = decode_fetch("t", 0, 10, "x:1", resp).unwrap();
        let got: Vec<(u64, &[u8])> = r.records.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(got, vec![(10, &b"c"[..]), (11, b"d"), (12, b"e")]);
        assert_eq!(r.next_offset, 13);
        assert_eq!(r.high_watermark, 13);

        let empty = decode_fetch("t", 0, 13, "x:1", v1::FetchResponse::default()).unwrap();
        assert_eq!(empty.next_offset, 13);
    }

    #[test]
    fn fetch_rejects_corrupt_batches() {
        let mut batch = encode_batch(vec![rec("a")]);
        batch.crc32c ^= 1;
        let resp = v1::FetchResponse {
            batches: vec![v1::FetchedBatch { base_offset: 4, batch: Some(batch) }],
            ..Default::default()
        };
        let e = decode_fetch("t", 2, 4, "x:1", resp).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::CorruptBatch));
        let text = e.to_string();
        assert!(text.contains("t/2") && text.contains("base offset 4") && text.contains("x:1"), "{text}");
    }

    #[test]
    fn addresses_are_validated() {
        let c = ClientConfig::default();
        assert!(endpoint("127.0.0.1:9292", &c).is_ok());
        assert!(endpoint("http://node-1:9292", &c).is_ok());
        for bad in ["127.0.0.1", "host:port", ":9292", "https://a:1", "a:99999"] {
            let e = endpoint(bad, &c).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn connect_reports_unreachable_bootstrap() {
        // Port 1 on localhost: nothing listens there, the connection is refused at once.
        let cfg = ClientConfig { connect_timeout: Duration::from_millis(500), ..Default::default() };
        let e = Client::connect_with(&["127.0.0.1:1".to_string()], cfg).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:1") && text.contains("bootstrap"), "{text}");
        assert!(e.is_transport(), "{e:?}");
        let e = Client::connect(&[]).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)));
    }
}
