//! One partition replica on this node: its Raft group, state machine and the produce/fetch logic.

use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use runnel_meta::PartitionRecord;

use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::TypeConfigExt;
use openraft::{BasicNode, EntryPayload, Raft, ServerState};
use runnel_proto::v1;
use runnel_raft::log_store::LogStore;
use runnel_raft::network::Router;
use runnel_raft::{codec, PartitionCommand, PartitionResponse, PartitionTypes, ProducerStamp, StoredBatch};
use runnel_storage::keys::group_key;
use runnel_storage::{DiskSpace, Engine, Keyspace};
use runnel_types::limits::{DEFAULT_FETCH_BYTES, MAX_BATCH_BYTES, MAX_FETCH_BYTES, MAX_FETCH_WAIT_MS};
use runnel_types::topic::TopicConfig;
use runnel_types::{ErrorCode, GroupId, NodeId, RunnelError};

use crate::partition_sm::{IndexEntry, PartitionStateMachine};

/// How long a read waits for a just-elected leader to commit its first entry.
const LEADER_READY_WAIT: Duration = Duration::from_secs(2);

pub type PartitionRaft = Raft<PartitionTypes, PartitionStateMachine>;

pub struct Partition {
    pub topic: String,
    pub partition: u32,
    pub group: GroupId,
    /// The partition's committed metadata (replicas, reassignment target, epochs), kept current by
    /// the broker's reconciler.
    pub record: RwLock<PartitionRecord>,
    /// The topic's configuration, kept current by the reconciler (`AlterTopicConfig`).
    pub config: RwLock<TopicConfig>,
    /// Wall-clock milliseconds since the Unix epoch (the simulator passes a deterministic one).
    pub clock: Clock,
    /// The Raft group itself: only this crate drives it; others use the methods below
    /// (`raft_status`, `transfer_leadership`, `await_leader`).
    pub(crate) raft: PartitionRaft,
    pub sm: PartitionStateMachine,
    pub log: LogStore<PartitionTypes>,
    pub engine: Arc<dyn Engine>,
    pub node_id: NodeId,
    /// Where other nodes are: NOT_LEADER answers name the leader's address.
    pub router: Router,
    /// Set while this broker cannot reach the controller: it then refuses writes as leader.
    pub fence: Arc<Fence>,
    /// Free space on the data directory: below its watermark produce is refused (docs/adr/0014).
    pub space: Arc<DiskSpace>,
    /// TEST ONLY: see `BrokerDeps::planted_ack_before_commit`.
    pub planted_ack_before_commit: bool,
    /// The node's latest applied metadata, when known: produce checks records against the topic
    /// configuration there, so a configuration change is in effect on this node as soon as its
    /// metadata replica applied it (`config` is updated only by the next reconciler pass; a
    /// produce in between was checked against the old configuration — found by the CLI test of
    /// `cleanup.policy=compact`).
    pub(crate) meta: Option<tokio::sync::watch::Receiver<Arc<runnel_raft::meta_sm::MetaView>>>,
    /// The last leadership transfer this node started as leader: (term, when). openraft's leader
    /// stops taking writes once it starts a transfer and never resumes on its own; with quiescent
    /// groups nothing else would elect if the target ignored it, so leader duties retry it.
    pub(crate) transfer: parking_lot::Mutex<Option<PendingTransfer>>,
    /// Leader duties look at the group again once a transfer starts (see `run_leader_duties`).
    pub(crate) duty_checks: Arc<crate::dirty::DirtyGroups>,
    /// The group's metrics channel, subscribed once: `Raft::metrics()` hands out a new receiver
    /// per call, and periodic duties over thousands of groups spent most of their time there.
    pub(crate) metrics_rx:
        openraft::type_config::alias::WatchReceiverOf<PartitionTypes, openraft::RaftMetrics<PartitionTypes>>,
}

/// A leadership transfer this node started as leader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingTransfer {
    term: u64,
    /// The first attempt in this term, and the latest retry.
    first: tokio::time::Instant,
    last: tokio::time::Instant,
}

/// Milliseconds since the Unix epoch, through a seam so simulations stay reproducible.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}

/// A broker fences itself (refuses produce as a leader) while it has not reached the controller
/// within its session timeout: the controller may be declaring it unavailable and moving its
/// replicas, so it must not keep acknowledging writes on its own view.
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
}

impl Fence {
    pub fn set(&self, fenced: bool) -> bool {
        self.fenced.swap(fenced, Ordering::SeqCst) != fenced
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

/// What a produce got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    pub base_offset: u64,
    /// The term the batch was committed in (acks=all).
    pub leader_epoch: u64,
    /// An idempotent retry of a batch already in the partition: `base_offset` is the original's.
    pub duplicate: bool,
}

pub struct FetchOutcome {
    pub batches: Vec<v1::FetchedBatch>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub leader_epoch: u64,
}

/// Where this replica's Raft group stands, as openraft sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub committed_index: u64,
}

impl Partition {
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.metrics_rx.borrow_watched();
        RaftStatus {
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
        }
    }

    /// Waits (at most `timeout`) until node `to` leads in a term after `after_term`; that term.
    pub async fn await_leader(&self, to: NodeId, after_term: u64, timeout: Duration) -> Option<u64> {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                let (leader, term) = {
                    let m = rx.borrow_watched();
                    (m.current_leader, m.current_term)
                };
                if leader == Some(to) && term > after_term {
                    return Some(term);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// (is leader, term, current leader id) from openraft's view.
    pub fn leadership(&self) -> (bool, u64, Option<NodeId>) {
        let m = self.metrics_rx.borrow_watched();
        (m.state == ServerState::Leader, m.current_term, m.current_leader)
    }

    /// The topic's configuration as this node's metadata has it now (see `meta`).
    pub fn current_config(&self) -> TopicConfig {
        let latest =
            self.meta.as_ref().and_then(|m| m.borrow().state.topics.get(&self.topic).map(|t| t.config.clone()));
        latest.unwrap_or_else(|| self.config.read().clone())
    }

    pub fn ensure_leader(&self, epoch: Option<u64>) -> Result<u64, RunnelError> {
        let (is_leader, term, leader, quorum) = {
            let m = self.metrics_rx.borrow_watched();
            if let Err(fatal) = &m.running_state {
                // Its Raft instance stopped on an error (a write that hit a full disk): say so
                // rather than "no leader known"; the broker restarts it (Broker::run_replica_restarter).
                return Err(RunnelError::new(
                    ErrorCode::Storage,
                    format!(
                        "{}/{}: node {}'s replica stopped on an error and is being restarted: {fatal}",
                        self.topic, self.partition, self.node_id
                    ),
                ));
            }
            let is_leader = m.state == ServerState::Leader;
            // Quiescent groups have no heartbeats that would tell a leader it lost its followers:
            // the node-level detector does. A leader cut off from a majority of its voters could
            // neither commit a write nor know that a new leader has been elected meanwhile, so it
            // serves nothing (docs/adr/0012).
            let quorum =
                is_leader && self.router.liveness().quorum_reachable(m.membership_config.membership().voter_ids());
            (is_leader, m.current_term, m.current_leader, quorum)
        };
        if !is_leader {
            let hint = self.leader_hint(leader);
            return Err(RunnelError::not_leader(&self.topic, self.partition, hint));
        }
        if !quorum {
            return Err(RunnelError::new(
                ErrorCode::LeaderNotAvailable,
                format!(
                    "{}/{}: node {} leads it but cannot reach a majority of its replicas; a new leader is being \
                     elected where they are",
                    self.topic, self.partition, self.node_id
                ),
            ));
        }
        if let Some(e) = epoch {
            if e != term {
                return Err(RunnelError::new(
                    ErrorCode::StaleEpoch,
                    format!(
                        "request for {}/{} carries leader epoch {e}, the current one is {term}",
                        self.topic, self.partition
                    ),
                ));
            }
        }
        Ok(term)
    }

    /// Like [`Self::ensure_leader`], and also waits until this leader has applied an entry of its
    /// own term: before that its high watermark can trail what the previous leader acknowledged,
    /// and a read would appear to go backwards.
    pub async fn ensure_readable(&self, epoch: Option<u64>) -> Result<u64, RunnelError> {
        let term = self.ensure_leader(epoch)?;
        let mut rx = self.metrics_rx.clone();
        let ready = |m: &openraft::RaftMetrics<PartitionTypes>| {
            m.state != ServerState::Leader
                || m.current_term != term
                || m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == term)
        };
        let deadline = tokio::time::Instant::now() + LEADER_READY_WAIT;
        loop {
            if ready(&rx.borrow_watched()) {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(RunnelError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!(
                            "{}/{}: the new leader has not committed its first entry yet",
                            self.topic, self.partition
                        ),
                    ))
                }
            }
        }
        self.ensure_leader(epoch)
    }

    /// Validates and appends a batch; with `wait` the answer comes after the commit (acks=all).
    /// A batch from an idempotent producer carries `producer`; whether it is new, a retry of one
    /// already appended, or out of order is decided when it is applied (see `producer_state`).
    pub async fn produce(
        &self,
        batch: v1::RecordBatch,
        producer: Option<ProducerStamp>,
        wait: bool,
        timeout: Duration,
        epoch: Option<u64>,
    ) -> Result<ProduceOutcome, RunnelError> {
        let term = self.ensure_leader(epoch)?;
        if self.fence.is_fenced() {
            return Err(RunnelError::new(
                ErrorCode::LeaderNotAvailable,
                format!(
                    "{}/{}: broker {} is fenced (it has lost contact with the controller) and takes no writes",
                    self.topic, self.partition, self.node_id
                ),
            ));
        }
        if let Err(low) = self.space.check_new_data() {
            return Err(RunnelError::new(
                ErrorCode::Storage,
                format!("{}/{}: node {} is low on disk space: {low}", self.topic, self.partition, self.node_id),
            ));
        }
        if batch.records.len() > MAX_BATCH_BYTES {
            return Err(RunnelError::new(
                ErrorCode::RecordTooLarge,
                format!("batch of {} bytes exceeds the limit of {MAX_BATCH_BYTES} bytes", batch.records.len()),
            ));
        }
        if batch.record_count == 0 {
            return Err(RunnelError::new(ErrorCode::InvalidRequest, "produce request carries no records"));
        }
        // Checks the CRC and that every record decodes, before anything reaches the log; a Kafka
        // batch also its Kafka header, CRC and codec.
        let records = runnel_records::records(&batch)?;
        if records.len() != batch.record_count as usize {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                "a produced batch must hold one record per offset it spans (offset deltas are for compaction)",
            ));
        }
        // A Kafka batch's max timestamp is its header's (the Kafka front-end stored it in the batch),
        // which Kafka fetches serve as is; a Runnel batch's is its records'. One with no timestamp
        // (0, the wire default) is stamped with the leader's clock, so time retention and
        // seek-by-time treat it as appended now.
        let max_timestamp_ms = if batch.compression == runnel_records::KAFKA_BATCH {
            batch.max_timestamp_ms
        } else {
            records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0)
        };
        let max_timestamp_ms = if max_timestamp_ms <= 0 { (self.clock)() } else { max_timestamp_ms };
        let config = self.current_config();
        for (i, r) in records.iter().enumerate() {
            let size = runnel_proto::record_size(r);
            if size > config.max_record_bytes {
                return Err(RunnelError::new(
                    ErrorCode::RecordTooLarge,
                    format!(
                        "record {i} of the batch is {size} bytes; topic '{}' allows at most {} (max.record.bytes)",
                        self.topic, config.max_record_bytes
                    ),
                ));
            }
            // A Kafka null key is empty too.
            if config.cleanup_policy.compacts() && (r.key.is_empty() || r.key_null) {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "record {i} of the batch has no key; topic '{}' is compacted (cleanup.policy={}), which \
                         keeps the latest record per key, so every record needs one",
                        self.topic,
                        config.cleanup_policy.as_str()
                    ),
                ));
            }
        }
        if wait {
            let in_sync = self.caught_up_voters().len();
            if in_sync < config.min_insync_replicas as usize {
                return Err(RunnelError::new(
                    ErrorCode::NotEnoughReplicas,
                    format!(
                        "{}/{}: only {in_sync} replica(s) are in sync, topic '{}' requires {} for acks=all \
                         (min.insync.replicas)",
                        self.topic, self.partition, self.topic, config.min_insync_replicas
                    ),
                ));
            }
        }
        let stored = StoredBatch {
            crc32c: batch.crc32c,
            record_count: batch.record_count,
            records: batch.records,
            compression: batch.compression,
            max_timestamp_ms,
        };
        let cmd = match producer {
            Some(producer) => PartitionCommand::AppendIdempotent { batch: stored, producer },
            None => PartitionCommand::Append(stored),
        };
        self.renew_lease().await;
        if wait && self.planted_ack_before_commit {
            // The planted bug: answer with the offset the batch would get if nothing else were in
            // flight, before it is committed (or even appended).
            let guess = self.sm.high_watermark();
            let _ = self.raft.client_write_ff(cmd, None).await;
            return Ok(ProduceOutcome { base_offset: guess, leader_epoch: term, duplicate: false });
        }
        if !wait {
            self.raft.client_write_ff(cmd, None).await.map_err(|e| {
                RunnelError::new(ErrorCode::LeaderNotAvailable, format!("{}/{}: {e}", self.topic, self.partition))
            })?;
            return Ok(ProduceOutcome { base_offset: 0, leader_epoch: term, duplicate: false });
        }
        let res = tokio::time::timeout(timeout, self.raft.client_write(cmd)).await.map_err(|_| {
            RunnelError::new(
                ErrorCode::Timeout,
                format!(
                    "{}/{}: batch not committed within {} ms; it may still be",
                    self.topic,
                    self.partition,
                    timeout.as_millis()
                ),
            )
        })?;
        match res {
            Ok(r) => match r.data {
                // The term of the entry itself: exact even if leadership changed since the check.
                PartitionResponse::Appended { base_offset } => {
                    Ok(ProduceOutcome { base_offset, leader_epoch: r.log_id.leader_id.term, duplicate: false })
                }
                PartitionResponse::Duplicate { base_offset } => {
                    Ok(ProduceOutcome { base_offset, leader_epoch: r.log_id.leader_id.term, duplicate: true })
                }
                PartitionResponse::Rejected { reason } => Err(RunnelError::new(ErrorCode::CorruptBatch, reason)),
                PartitionResponse::Trimmed { .. } => Err(RunnelError::internal(format!(
                    "{}/{}: an append was answered as a trim",
                    self.topic, self.partition
                ))),
                PartitionResponse::Refused { code, reason } => Err(RunnelError::new(
                    ErrorCode::from_u32(code).unwrap_or(ErrorCode::Internal),
                    format!("{}/{}: {reason}", self.topic, self.partition),
                )),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                if f.reason == openraft::errors::ForwardReason::LeaseExpired =>
            {
                Err(RunnelError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!(
                        "{}/{}: node {} leads it but no majority of its replicas has acknowledged it lately; \
                         the write was not taken",
                        self.topic, self.partition, self.node_id
                    ),
                ))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let hint = self.leader_hint(f.leader_id);
                Err(RunnelError::not_leader(&self.topic, self.partition, hint))
            }
            Err(e) => {
                Err(RunnelError::new(ErrorCode::LeaderNotAvailable, format!("{}/{}: {e}", self.topic, self.partition)))
            }
        }
    }

    /// Reads whole batches from `offset` up to the high watermark, waiting up to `max_wait_ms`
    /// when there is nothing new yet.
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        epoch: Option<u64>,
    ) -> Result<FetchOutcome, RunnelError> {
        let term = self.ensure_readable(epoch).await?;
        let max_bytes = if max_bytes == 0 { DEFAULT_FETCH_BYTES } else { max_bytes.min(MAX_FETCH_BYTES) } as usize;
        let log_start = self.sm.log_start();
        let mut hw = self.sm.high_watermark();
        if offset > hw || offset < log_start {
            return Err(RunnelError::offset_out_of_range(&self.topic, self.partition, offset, log_start, hw));
        }
        if offset == hw && max_wait_ms > 0 {
            let mut rx = self.sm.watch_hw();
            let wait = Duration::from_millis(max_wait_ms.min(MAX_FETCH_WAIT_MS) as u64);
            let _ = tokio::time::timeout(wait, rx.wait_for(|h| *h > offset)).await;
            hw = self.sm.high_watermark();
        }
        let mut out =
            FetchOutcome { batches: Vec::new(), high_watermark: hw, log_start_offset: log_start, leader_epoch: term };
        if offset >= hw {
            return Ok(out);
        }
        let rows =
            self.sm.index_from(offset, hw, 1024).map_err(|e| RunnelError::new(ErrorCode::Storage, e.to_string()))?;
        let mut bytes = 0usize;
        for row in rows {
            // Retention may have deleted it since the index was read: its entry is hollow now.
            if row.end_offset() <= self.sm.log_start() {
                continue;
            }
            let b = self.read_batch(&row)?;
            bytes += b.records.len();
            out.batches.push(v1::FetchedBatch {
                base_offset: row.base_offset,
                batch: Some(v1::RecordBatch {
                    crc32c: b.crc32c,
                    record_count: b.record_count,
                    records: b.records,
                    compression: b.compression,
                    max_timestamp_ms: b.max_timestamp_ms,
                }),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        out.log_start_offset = self.sm.log_start();
        Ok(out)
    }

    /// The stored batch an index row points at, checked against its checksum and record count:
    /// the trust boundary on the read side, paired with the check before append.
    fn read_batch(&self, row: &IndexEntry) -> Result<StoredBatch, RunnelError> {
        let raw = self
            .engine
            .get(Keyspace::Log, &group_key(self.group, row.log_index))
            .map_err(|e| RunnelError::new(ErrorCode::Storage, e.to_string()))?
            .ok_or_else(|| {
                RunnelError::internal(format!(
                    "{}/{}: index points offset {} at log entry {} which is missing",
                    self.topic, self.partition, row.base_offset, row.log_index
                ))
            })?;
        let entry: <PartitionTypes as openraft::RaftTypeConfig>::Entry =
            codec::decode(&raw).map_err(|e| RunnelError::new(ErrorCode::Storage, e.to_string()))?;
        let EntryPayload::Normal(cmd) = entry.payload else {
            return Err(RunnelError::internal(format!(
                "{}/{}: index points offset {} at log entry {} which is not a batch",
                self.topic, self.partition, row.base_offset, row.log_index
            )));
        };
        let Some(b) = cmd.into_batch() else {
            return Err(RunnelError::internal(format!(
                "{}/{}: index points offset {} at log entry {} which is not a batch",
                self.topic, self.partition, row.base_offset, row.log_index
            )));
        };
        // Trust boundary, paired with the check before append: never serve a corrupt batch.
        if !b.checksum_ok() || b.record_count != row.record_count {
            return Err(RunnelError::new(
                ErrorCode::CorruptBatch,
                format!(
                    "{}/{}: stored batch at offset {} fails its checksum on read",
                    self.topic, self.partition, row.base_offset
                ),
            ));
        }
        Ok(b)
    }

    /// A checksum (crc32c) of the record batches this replica holds from its log start up to
    /// `up_to` (capped at its high watermark, and at the last whole batch below it): offsets and
    /// record bytes. Replicas whose digests over the same range agree hold byte-identical
    /// committed records (the chaos runner's cross-replica check). Returns (from, to, digest).
    pub fn digest(&self, up_to: u64) -> Result<(u64, u64, u32), RunnelError> {
        let from = self.sm.log_start();
        let end = up_to.min(self.sm.high_watermark());
        let (mut covered, mut crc) = (from, 0u32);
        while covered < end {
            let rows = self
                .sm
                .index_from(covered, end, 1024)
                .map_err(|e| RunnelError::new(ErrorCode::Storage, e.to_string()))?;
            let before = covered;
            for row in rows {
                if row.end_offset() <= covered {
                    continue;
                }
                if row.end_offset() > end {
                    return Ok((from, covered, crc));
                }
                let b = self.read_batch(&row)?;
                crc = crc32c::crc32c_append(crc, &row.base_offset.to_le_bytes());
                crc = crc32c::crc32c_append(crc, &b.records);
                covered = row.end_offset();
            }
            if covered == before {
                break;
            }
        }
        Ok((from, covered, crc))
    }

    /// The first record at or after `ts` (ms): (offset, its timestamp), or None when there is
    /// none below the high watermark. The time index names the first batch whose running max
    /// reaches `ts` (no earlier batch holds such a record); its records, and if compaction removed
    /// them the next batches', are scanned for the first one at or after `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>, RunnelError> {
        let storage = |e: std::io::Error| RunnelError::new(ErrorCode::Storage, e.to_string());
        let hw = self.sm.high_watermark();
        let Some(mut from) = self.sm.first_batch_reaching(ts).map_err(storage)? else { return Ok(None) };
        // Bounded: the answer is almost always in the first batch.
        for _ in 0..64 {
            if from >= hw {
                return Ok(None);
            }
            let rows = self.sm.index_from(from, hw, 256).map_err(storage)?;
            if rows.is_empty() {
                return Ok(None);
            }
            for row in &rows {
                from = row.end_offset();
                let Some(b) = self.sm.read_batch(row).map_err(storage)? else { continue };
                if b.max_timestamp_ms < ts || b.is_hollow() {
                    continue;
                }
                let batch = v1::RecordBatch {
                    crc32c: b.crc32c,
                    record_count: b.record_count,
                    records: b.records,
                    compression: b.compression,
                    max_timestamp_ms: b.max_timestamp_ms,
                };
                let records = runnel_records::records(&batch)?;
                let at = |r: &v1::Record| row.base_offset + u64::from(r.offset_delta.unwrap_or(0));
                if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts && at(r) >= self.sm.log_start()) {
                    return Ok(Some((at(r), r.timestamp_ms)));
                }
                // Records without timestamps: the batch was stamped when appended.
                if let Some(r) = records.first().filter(|_| records.iter().all(|r| r.timestamp_ms <= 0)) {
                    return Ok(Some((at(r), b.max_timestamp_ms)));
                }
            }
        }
        Err(RunnelError::new(
            ErrorCode::Timeout,
            format!("{}/{}: no record at or after {ts} ms found within the scan limit", self.topic, self.partition),
        ))
    }

    /// (leader id, address) for a NOT_LEADER answer, when the leader is another known node.
    pub fn leader_hint(&self, leader: Option<NodeId>) -> Option<(NodeId, String)> {
        leader.filter(|l| *l != self.node_id).and_then(|l| self.router.addr(l).map(|a| (l, a)))
    }

    /// Refuses a request made against another version of the replica set than this replica has.
    pub fn check_partition_epoch(&self, epoch: Option<u64>) -> Result<(), RunnelError> {
        let current = self.record.read().partition_epoch;
        match epoch {
            Some(e) if e != current => Err(RunnelError::new(
                ErrorCode::StaleEpoch,
                format!(
                    "request for {}/{} carries partition epoch {e}, this replica is at {current}: the replica set \
                     changed; refresh the metadata",
                    self.topic, self.partition
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn replicas(&self) -> Vec<NodeId> {
        self.record.read().replicas.clone()
    }

    /// The group's committed voters, or None while it is in a joint (changing) configuration.
    pub fn committed_voters(&self) -> Option<BTreeSet<NodeId>> {
        let m = self.metrics_rx.borrow_watched();
        let joint = m.committed_membership_config.membership().get_joint_config();
        match joint.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        }
    }

    /// In-sync voters: those that have every entry this leader has committed (this node
    /// included); empty when this node is not the leader. Under load a follower trails the
    /// leader's last entry by the appends in flight, so "in sync" is measured against the commit
    /// point, as Kafka's ISR is; openraft's leader transfer then waits for the target to reach the
    /// leader's last entry before it campaigns.
    pub fn caught_up_voters(&self) -> Vec<NodeId> {
        let m = self.metrics_rx.borrow_watched();
        if m.state != ServerState::Leader {
            return Vec::new();
        }
        let committed = m.local_committed.as_ref().map(|l| l.index);
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters
            .into_iter()
            .filter(|v| {
                *v == self.node_id
                    || m.replication.as_ref().and_then(|r| r.get(v).cloned().flatten()).map(|l| l.index) >= committed
            })
            .collect()
    }

    /// Makes sure this leader's lease is current before a write. openraft refuses writes from a
    /// leader that no quorum has acknowledged within the lease (`ForwardReason::LeaseExpired`);
    /// a quiescent group's leader sends no heartbeats, so after an idle spell its lease has run
    /// out. One heartbeat round renews it: the first write after idleness pays one round trip to
    /// the followers, the next ones nothing (every append acknowledgement renews it too). Found by
    /// the simulator's many-idle-groups run (seed 1, 100 idle partitions): writes to a leader that
    /// had been idle were refused forever as "leader not known".
    pub async fn renew_lease(&self) {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let fresh = |m: &openraft::RaftMetrics<PartitionTypes>| {
            m.state != ServerState::Leader
                || m.membership_config.membership().voter_ids().count() <= 1
                // With a margin: the write must reach the core while the lease still runs.
                || m.last_quorum_acked.as_ref().is_some_and(|t| PartitionTypes::now() < **t + lease / 2)
        };
        let mut rx = self.metrics_rx.clone();
        if fresh(&rx.borrow_watched()) {
            return;
        }
        if self.raft.trigger().heartbeat().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + lease * 2;
        loop {
            if fresh(&rx.borrow_watched()) {
                return;
            }
            // Not renewed in time (followers unreachable): the write is refused with a clear error.
            if !matches!(tokio::time::timeout_at(deadline, rx.changed()).await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// Starts handing leadership to `to` (this node must lead). Recorded, so that a transfer the
    /// target never completes is noticed and retried (see [`Self::transfer_age`]).
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), RunnelError> {
        let (is_leader, term, _) = self.leadership();
        if is_leader {
            let already = *self.transfer.lock();
            let already = already.filter(|t| t.term == term);
            if already.is_none() {
                self.reach_follower(to).await;
            }
            let now = tokio::time::Instant::now();
            *self.transfer.lock() = Some(PendingTransfer { term, first: already.map_or(now, |t| t.first), last: now });
            self.duty_checks.mark(self.group);
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| RunnelError::internal(format!("{}/{}: {e}", self.topic, self.partition)))
    }

    /// How long ago this node, still leading in the same term, started handing leadership away
    /// (first attempt, latest retry); `None` when it started none in this term (or no longer
    /// leads). A transfer the target never completes leaves openraft's leader refusing writes, so
    /// leader duties retry it and, later, give the group up (see `manager.rs`).
    pub fn transfer_age(&self) -> Option<(Duration, Duration)> {
        let pending = (*self.transfer.lock())?;
        let (is_leader, term, _) = self.leadership();
        (is_leader && pending.term == term).then(|| (pending.first.elapsed(), pending.last.elapsed()))
    }

    /// Sends a heartbeat and waits (briefly) until `to` has answered one: the target of a
    /// transfer ignores it unless it follows this leader's current term, and in a quiescent group a
    /// follower that restarted has not heard from its leader since — nothing else would tell it.
    /// (Once a transfer starts, openraft sends no more heartbeats.)
    async fn reach_follower(&self, to: NodeId) {
        let start = PartitionTypes::now();
        if self.raft.trigger().heartbeat().await.is_err() {
            return;
        }
        let wait = Duration::from_millis(self.raft.config().election_timeout_max * 2);
        let mut rx = self.metrics_rx.clone();
        let reached = |m: &openraft::RaftMetrics<PartitionTypes>| {
            m.state != ServerState::Leader
                || m.heartbeat.as_ref().and_then(|h| h.get(&to).cloned().flatten()).is_some_and(|t| *t >= start)
        };
        let _ = tokio::time::timeout(wait, async {
            while !reached(&rx.borrow_watched()) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    pub fn membership_nodes(
        replicas: &[NodeId],
        addr: &dyn Fn(NodeId) -> Option<String>,
    ) -> BTreeMap<NodeId, BasicNode> {
        replicas.iter().map(|r| (*r, BasicNode { addr: addr(*r).unwrap_or_default() })).collect()
    }
}
