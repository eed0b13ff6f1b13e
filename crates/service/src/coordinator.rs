//! The group coordinator: the runtime around `runnel_groups::Groups`.
//!
//! Each partition of `__consumer_offsets` that this node leads is a *shard*: the groups hashing to
//! it, loaded by replaying the partition once this node's term has committed its first entry, and
//! kept until leadership moves. Everything a group must not lose — offset commits and completed
//! generations — is written to that partition with acks=all and the shard's term as the leader
//! epoch (so a deposed coordinator's write is refused) before it is acknowledged or acted upon.
//! Membership itself (sessions, who has rejoined) lives in memory, as in Kafka: after a failover
//! the members are restored from the last generation and either heartbeat or expire.
//!
//! Two protocols share the coordinator and the stored offsets: Runnel's own (the `v1` methods: the
//! coordinator assigns, JoinGroup answers carry the partitions) and Kafka's classic one
//! ([`Coordinator::kafka_join`], [`Coordinator::kafka_sync`]: the leader member assigns, SyncGroup
//! distributes what it decided, after the coordinator has stored it with the generation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use runnel_broker::{Broker, Partition};
use runnel_groups::group::{Group, JoinRequest};
use runnel_groups::record::{decode_value, encode_value, validate_group_name, GroupValue, OffsetValue, StoredKey};
use runnel_groups::{
    coordinator_partition, Assignor, GroupState, Groups, JoinOutcome, KafkaJoinAnswer, KafkaJoinOutcome,
    KafkaJoinRequest, SyncOutcome, TopicPartition, OFFSETS_TOPIC,
};
use runnel_proto::v1;
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_types::{ErrorCode, NodeId, RunnelError};
use tokio::sync::oneshot;

use crate::admin::AdminCommand;
use crate::controller::Controller;

/// How long a coordinator write may wait for its commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often sessions and rebalance deadlines are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// Session and rebalance timeouts a member may ask for.
const MIN_SESSION_TIMEOUT_MS: u32 = 100;
const MAX_SESSION_TIMEOUT_MS: u32 = 30 * 60 * 1000;
/// Records read per step while loading a shard.
const LOAD_FETCH_BYTES: u32 = 4 * 1024 * 1024;

/// A Kafka JoinGroup, as the Kafka front-end decodes it.
#[derive(Debug, Clone)]
pub struct KafkaJoin {
    pub group: String,
    /// Empty for a new member (which gets a fresh id at once: no MEMBER_ID_REQUIRED round trip).
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub protocol_type: String,
    /// (protocol name, metadata), most preferred first.
    pub protocols: Vec<(String, Bytes)>,
}

/// A Kafka JoinGroup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaJoined {
    pub generation: u64,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol; non-empty only in the leader's
    /// answer.
    pub members: Vec<KafkaMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

impl From<KafkaJoinAnswer> for KafkaJoined {
    fn from(a: KafkaJoinAnswer) -> Self {
        KafkaJoined {
            generation: a.generation,
            protocol_name: a.protocol,
            leader: a.leader,
            member_id: a.member_id,
            members: a
                .members
                .into_iter()
                .map(|m| KafkaMember {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    metadata: Bytes::from(m.metadata),
                })
                .collect(),
        }
    }
}

/// A group as Kafka's DescribeGroups shows it (for a Runnel-protocol group too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    /// Kafka's names: `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable`, `Dead` (no
    /// such group).
    pub state: String,
    /// `consumer` (or whatever the Kafka members gave) for a Kafka group, `runnel` for a Runnel
    /// group, empty for a group that only has offsets.
    pub protocol_type: String,
    /// The generation's protocol (Kafka) or assignor (Runnel); empty unless `Stable`, as in Kafka.
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Kafka members of a stable group: the metadata for the chosen protocol; empty otherwise.
    pub metadata: Bytes,
    /// Kafka members of a stable group: what the leader assigned; empty otherwise.
    pub assignment: Bytes,
}

/// A JoinGroup waiting for its group's rebalance, in the protocol it came in.
enum JoinWaiter {
    Runnel(oneshot::Sender<Result<v1::JoinGroupResponse, RunnelError>>),
    Kafka(oneshot::Sender<Result<KafkaJoined, RunnelError>>),
}

impl JoinWaiter {
    fn fail(self, e: RunnelError) {
        match self {
            JoinWaiter::Runnel(tx) => {
                let _ = tx.send(Err(e));
            }
            JoinWaiter::Kafka(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }

    /// Whether the JoinGroup gave up waiting.
    fn is_closed(&self) -> bool {
        match self {
            JoinWaiter::Runnel(tx) => tx.is_closed(),
            JoinWaiter::Kafka(tx) => tx.is_closed(),
        }
    }
}

/// A Kafka SyncGroup waiting for its leader's: the generation it synced, and where to answer.
type SyncWaiter = (u64, oneshot::Sender<Result<Bytes, RunnelError>>);

struct Shard {
    partition: Arc<Partition>,
    term: u64,
    groups: Mutex<Groups>,
    /// JoinGroup calls waiting for their group's rebalance: (group, member) → answer.
    waiters: Mutex<BTreeMap<(String, String), JoinWaiter>>,
    /// Kafka SyncGroup calls waiting for their leader's: (group, member) → answer. Locked after
    /// `groups` when both are held, as `waiters`.
    syncs: Mutex<BTreeMap<(String, String), SyncWaiter>>,
    next_member: AtomicU64,
}

impl Shard {
    fn fail_waiters(&self, e: &RunnelError) {
        for (_, w) in std::mem::take(&mut *self.waiters.lock()) {
            w.fail(e.clone());
        }
        for (_, (_, tx)) in std::mem::take(&mut *self.syncs.lock()) {
            let _ = tx.send(Err(e.clone()));
        }
    }

    /// Answers (and forgets) `group`'s waiting SyncGroups: `answer` gives each member's result
    /// from its member id and the generation it synced.
    fn answer_syncs(&self, group: &str, answer: impl Fn(&str, u64) -> Result<Bytes, RunnelError>) {
        let mut syncs = self.syncs.lock();
        let keys: Vec<_> = syncs.keys().filter(|(g, _)| g == group).cloned().collect();
        for k in keys {
            if let Some((generation, tx)) = syncs.remove(&k) {
                let _ = tx.send(answer(&k.1, generation));
            }
        }
    }

    /// A member left: its waiting JoinGroup or SyncGroup (if any) learns it.
    fn answer_left(&self, group: &str, member: &str) {
        let key = (group.to_string(), member.to_string());
        let left = || RunnelError::new(ErrorCode::UnknownMember, format!("member '{member}' left group '{group}'"));
        if let Some(w) = self.waiters.lock().remove(&key) {
            w.fail(left());
        }
        if let Some((_, tx)) = self.syncs.lock().remove(&key) {
            let _ = tx.send(Err(left()));
        }
    }
}

/// Undoes a leader's pending assignment when its SyncGroup is dropped while the store is in flight
/// (the client went away): the group would otherwise wait for an assignment nobody is storing until
/// every member's SyncGroup timed out. The group rebalances instead; the coordinator's tick then
/// answers the waiting SyncGroups.
struct PendingStore<'a> {
    coordinator: &'a Coordinator,
    shard: &'a Shard,
    group: &'a str,
    generation: u64,
    armed: bool,
}

impl Drop for PendingStore<'_> {
    fn drop(&mut self) {
        if self.armed {
            let now = self.coordinator.now_ms();
            self.shard.groups.lock().kafka_sync_failed(self.group, self.generation, now);
        }
    }
}

fn rebalancing(group: &str) -> RunnelError {
    RunnelError::new(
        ErrorCode::RebalanceInProgress,
        format!("group '{group}' started a new rebalance before this SyncGroup was answered; rejoin"),
    )
}

/// Checks a JoinGroup's session timeout; returns the rebalance timeout to use. Kafka does not bound
/// the rebalance timeout (clients send `max.poll.interval.ms`, which may be huge), so it is
/// clamped rather than refused for Kafka members.
fn check_timeouts(session_timeout_ms: u32, rebalance_timeout_ms: u32, clamp: bool) -> Result<u32, RunnelError> {
    let range = MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS;
    let why = format!("must be between {MIN_SESSION_TIMEOUT_MS} and {MAX_SESSION_TIMEOUT_MS}");
    if !range.contains(&session_timeout_ms) {
        return Err(RunnelError::invalid_config("session_timeout_ms", session_timeout_ms, &why));
    }
    if clamp {
        return Ok(rebalance_timeout_ms.clamp(MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS));
    }
    if !range.contains(&rebalance_timeout_ms) {
        return Err(RunnelError::invalid_config("rebalance_timeout_ms", rebalance_timeout_ms, &why));
    }
    Ok(rebalance_timeout_ms)
}

pub struct Coordinator {
    broker: Arc<Broker>,
    meta: MetaStateMachine,
    controller: Arc<Controller>,
    offsets_partitions: u32,
    offsets_replication: u32,
    shards: Mutex<BTreeMap<u32, Arc<Shard>>>,
    /// One shard loads at a time (loads are rare: at a leadership change).
    load_lock: tokio::sync::Mutex<()>,
    started: tokio::time::Instant,
}

fn now_wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn tps(v: &BTreeSet<TopicPartition>) -> Vec<v1::TopicPartition> {
    v.iter().map(|tp| v1::TopicPartition { topic: tp.topic.clone(), partition: tp.partition }).collect()
}

impl Coordinator {
    pub fn new(
        broker: Arc<Broker>,
        meta: MetaStateMachine,
        controller: Arc<Controller>,
        offsets_partitions: u32,
        offsets_replication: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            meta,
            controller,
            offsets_partitions,
            offsets_replication,
            shards: Mutex::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            started: tokio::time::Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn offsets_partition_count(&self) -> Option<u32> {
        self.meta.current().state.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len() as u32).filter(|n| *n > 0)
    }

    /// The coordinator of `group` per the committed metadata: (partition, leader).
    fn locate(&self, group: &str) -> Result<(u32, Option<(NodeId, String)>), RunnelError> {
        let view = self.meta.current();
        let t = view.state.topics.get(OFFSETS_TOPIC).filter(|t| !t.partitions.is_empty()).ok_or_else(|| {
            RunnelError::new(
                ErrorCode::CoordinatorLoading,
                format!("the {OFFSETS_TOPIC} topic does not exist yet (FindCoordinator creates it)"),
            )
        })?;
        let p = coordinator_partition(group, t.partitions.len() as u32);
        let leader = t.partitions.get(p as usize).and_then(|r| r.leader);
        Ok((p, leader.and_then(|l| self.controller.router.addr(l).map(|a| (l, a)))))
    }

    /// Any node: which node coordinates `group`. Creates the offsets topic on first use.
    pub async fn find(&self, group: &str) -> Result<(u32, NodeId, String), RunnelError> {
        validate_group_name(group)?;
        if self.offsets_partition_count().is_none() {
            self.create_offsets_topic().await?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut rx = self.meta.subscribe();
        loop {
            if let Ok((p, Some((id, addr)))) = self.locate(group) {
                return Ok((p, id, addr));
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(RunnelError::new(
                    ErrorCode::CoordinatorLoading,
                    format!("group '{group}': the {OFFSETS_TOPIC} partition that coordinates it has no leader yet"),
                ));
            }
        }
    }

    async fn create_offsets_topic(&self) -> Result<(), RunnelError> {
        // From the committed metadata: only the controller tracks liveness in memory.
        let live = self.meta.current().state.brokers.values().filter(|b| b.is_alive()).count().max(1) as u32;
        let rf = self.offsets_replication.min(live);
        let cmd = AdminCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: self.offsets_partitions,
            replication_factor: rf,
            // Compaction keeps the latest commit per partition and the latest generation per group,
            // which bounds what a new coordinator replays.
            configs: [(runnel_types::topic::KEY_CLEANUP_POLICY.to_string(), "compact".to_string())]
                .into_iter()
                .collect(),
        };
        let out = self.controller.execute(cmd).await.map(|_| ());
        match out {
            Err(e) if e.code == ErrorCode::TopicAlreadyExists => Ok(()),
            Err(e) if e.code.is_retriable() => Err(RunnelError::new(ErrorCode::CoordinatorLoading, e.message)),
            other => other,
        }
    }

    /// The loaded shard coordinating `group`, or NOT_COORDINATOR naming who does.
    async fn shard(&self, group: &str) -> Result<Arc<Shard>, RunnelError> {
        validate_group_name(group)?;
        let (p, hint) = self.locate(group)?;
        self.shard_for(p, group, hint).await
    }

    async fn shard_for(&self, p: u32, group: &str, hint: Option<(NodeId, String)>) -> Result<Arc<Shard>, RunnelError> {
        let not_coordinator = |hint: Option<(NodeId, String)>| {
            RunnelError::not_coordinator(group, hint.filter(|(id, _)| *id != self.broker.node_id()))
        };
        let partition = self.broker.partition(OFFSETS_TOPIC, p).ok_or_else(|| not_coordinator(hint.clone()))?;
        let term = match partition.ensure_readable(None).await {
            Ok(t) => t,
            Err(e) if e.code == ErrorCode::NotLeader => return Err(not_coordinator(e.leader.or(hint))),
            Err(e) => return Err(RunnelError::new(ErrorCode::CoordinatorLoading, e.message)),
        };
        if let Some(s) = self.current_shard(p, term, &partition) {
            return Ok(s);
        }
        let _loading = self.load_lock.lock().await;
        if let Some(s) = self.current_shard(p, term, &partition) {
            return Ok(s);
        }
        let shard = Arc::new(self.load(partition, term).await?);
        if let Some(old) = self.shards.lock().insert(p, shard.clone()) {
            old.fail_waiters(&not_coordinator(None));
        }
        tracing::info!(
            partition = p,
            term,
            groups = shard.groups.lock().groups.len(),
            "group coordinator shard loaded"
        );
        Ok(shard)
    }

    fn current_shard(&self, p: u32, term: u64, partition: &Arc<Partition>) -> Option<Arc<Shard>> {
        self.shards.lock().get(&p).filter(|s| s.term == term && Arc::ptr_eq(&s.partition, partition)).cloned()
    }

    /// Replays the partition into a fresh `Groups`.
    async fn load(&self, partition: Arc<Partition>, term: u64) -> Result<Shard, RunnelError> {
        let mut groups = Groups {
            kafka_initial_delay_ms: runnel_groups::group::KAFKA_INITIAL_REBALANCE_DELAY_MS,
            ..Groups::default()
        };
        let now = self.now_ms();
        let hw = partition.sm.high_watermark();
        let mut offset = 0u64;
        while offset < hw {
            let out = match partition.fetch(offset, LOAD_FETCH_BYTES, 0, Some(term)).await {
                Ok(o) => o,
                // Retention may have removed the start: continue from the first offset kept.
                Err(e) if e.code == ErrorCode::OffsetOutOfRange => match e.valid_range {
                    Some((start, _)) if start > offset => {
                        offset = start;
                        continue;
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(RunnelError::new(ErrorCode::CoordinatorLoading, e.message)),
            };
            let mut progressed = false;
            for fb in &out.batches {
                let Some(batch) = &fb.batch else { continue };
                let records = runnel_proto::decode_batch(batch)?;
                for r in records {
                    let at = fb.base_offset + u64::from(r.offset_delta.unwrap_or(0));
                    if at < offset || at >= hw {
                        continue;
                    }
                    apply_stored(&mut groups, &r.key, &r.value, at, now)?;
                }
                let end = fb.base_offset + u64::from(batch.record_count);
                if end > offset {
                    offset = end;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(Shard {
            partition,
            term,
            groups: Mutex::new(groups),
            waiters: Mutex::new(BTreeMap::new()),
            syncs: Mutex::new(BTreeMap::new()),
            next_member: AtomicU64::new(0),
        })
    }

    /// Writes records to the shard's partition (acks=all, fenced by the shard's term); returns the
    /// offset of the first.
    async fn write(&self, shard: &Shard, records: Vec<(StoredKey, Vec<u8>)>) -> Result<u64, RunnelError> {
        let ts = now_wall_ms();
        let records = records
            .into_iter()
            .map(|(k, v)| v1::Record {
                key: Bytes::from(k.encode()),
                value: Bytes::from(v),
                headers: vec![],
                timestamp_ms: ts,
                offset_delta: None,
                ..Default::default()
            })
            .collect();
        let batch = runnel_proto::encode_batch(records);
        match shard.partition.produce(batch, None, true, WRITE_TIMEOUT, Some(shard.term)).await {
            Ok(out) => Ok(out.base_offset),
            Err(e)
                if matches!(e.code, ErrorCode::NotLeader | ErrorCode::StaleEpoch | ErrorCode::LeaderNotAvailable) =>
            {
                Err(RunnelError::new(
                    ErrorCode::NotCoordinator,
                    format!("this node stopped coordinating while writing: {}", e.message),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.meta.current().state.topics.iter().map(|(n, t)| (n.clone(), t.partitions.len() as u32)).collect()
    }

    /// Completes `group`'s rebalance if it is ready: stores the generation, then answers the
    /// members waiting in JoinGroup.
    async fn try_complete(&self, shard: &Shard, group: &str) {
        let counts = self.partition_counts();
        let done = {
            let mut groups = shard.groups.lock();
            // Every rebalance start is followed by this call: SyncGroups still waiting belong to a
            // generation that will not get an assignment.
            if groups.get(group).is_none_or(|g| g.state != GroupState::CompletingRebalance) {
                shard.answer_syncs(group, |_, _| Err(rebalancing(group)));
            }
            groups.complete_if_ready(group, self.now_ms(), &counts)
        };
        let Some(done) = done else {
            return;
        };
        let stored = encode_value(&done.value).map(|v| (StoredKey::Group(group.to_string()), v));
        let written = match stored {
            Ok(rec) => self.write(shard, vec![rec]).await,
            Err(e) => Err(e),
        };
        let mut waiters = shard.waiters.lock();
        if let Err(e) = written {
            tracing::warn!(group, error = %e, "could not store a completed generation");
            let keys: Vec<_> = waiters.keys().filter(|(g, _)| g == group).cloned().collect();
            for k in keys {
                if let Some(w) = waiters.remove(&k) {
                    w.fail(e.clone());
                }
            }
            return;
        }
        let members = done.assignments.len() + done.kafka_answers.len();
        tracing::info!(group, generation = done.generation, members, "group rebalanced");
        let assignor = done.value.assignor.clone().unwrap_or_default();
        // A group is of one kind while it has members, so each waiter gets an answer in its own
        // protocol; the other arms are for completeness.
        let mixed = || {
            RunnelError::new(
                ErrorCode::InconsistentGroupProtocol,
                format!("group '{group}' changed protocol while this JoinGroup waited; rejoin"),
            )
        };
        for (member, assignment) in &done.assignments {
            match waiters.remove(&(group.to_string(), member.clone())) {
                Some(JoinWaiter::Runnel(tx)) => {
                    let _ = tx.send(Ok(v1::JoinGroupResponse {
                        error: None,
                        member_id: member.clone(),
                        generation: done.generation,
                        assignment: tps(assignment),
                        assignor: assignor.clone(),
                    }));
                }
                Some(w) => w.fail(mixed()),
                None => {}
            }
        }
        for (member, answer) in &done.kafka_answers {
            match waiters.remove(&(group.to_string(), member.clone())) {
                Some(JoinWaiter::Kafka(tx)) => {
                    let _ = tx.send(Ok(answer.clone().into()));
                }
                Some(w) => w.fail(mixed()),
                None => {}
            }
        }
        for member in &done.removed {
            if let Some(w) = waiters.remove(&(group.to_string(), member.clone())) {
                w.fail(RunnelError::new(
                    ErrorCode::UnknownMember,
                    format!("member '{member}' did not rejoin group '{group}' in time and was removed"),
                ));
            }
        }
    }

    /// A fresh member id: unique without randomness, as the term is new at every leadership change
    /// of this shard.
    fn fresh_member_id(&self, shard: &Shard, client_id: &str) -> String {
        let n = shard.next_member.fetch_add(1, Ordering::Relaxed);
        let client = if client_id.is_empty() { "member" } else { client_id };
        format!("{client}-{}-{}-{n}", self.broker.node_id(), shard.term)
    }

    /// Waits for a JoinGroup's answer (registered in `shard.waiters`) until its rebalance timeout.
    async fn await_join<T>(
        &self,
        shard: &Shard,
        group: &str,
        member_id: String,
        rebalance_timeout_ms: u32,
        rx: oneshot::Receiver<Result<T, RunnelError>>,
    ) -> Result<T, RunnelError> {
        let wait = Duration::from_millis(u64::from(rebalance_timeout_ms)) + Duration::from_secs(1);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RunnelError::not_coordinator(group, None)),
            Err(_) => {
                // Only our own entry: a newer JoinGroup of the member may have replaced it.
                let key = (group.to_string(), member_id);
                let mut waiters = shard.waiters.lock();
                if waiters.get(&key).is_some_and(JoinWaiter::is_closed) {
                    waiters.remove(&key);
                }
                Err(RunnelError::new(
                    ErrorCode::RebalanceInProgress,
                    format!("group '{group}' did not finish rebalancing within the rebalance timeout; rejoin"),
                ))
            }
        }
    }

    /// Registers a waiting JoinGroup (the caller holds the groups lock, so a completion cannot
    /// slip in between), answering any older one of the same member.
    fn register_join(&self, shard: &Shard, group: &str, member_id: &str, w: JoinWaiter) {
        if let Some(old) = shard.waiters.lock().insert((group.to_string(), member_id.to_string()), w) {
            old.fail(RunnelError::new(
                ErrorCode::RebalanceInProgress,
                "superseded by a newer JoinGroup of the same member",
            ));
        }
    }

    pub async fn join(&self, r: v1::JoinGroupRequest) -> Result<v1::JoinGroupResponse, RunnelError> {
        if r.topics.is_empty() {
            return Err(RunnelError::new(ErrorCode::InvalidRequest, "JoinGroup names no topics to subscribe to"));
        }
        check_timeouts(r.session_timeout_ms, r.rebalance_timeout_ms, false)?;
        let assignor = Assignor::parse(if r.assignor.is_empty() { "range" } else { &r.assignor })?;
        let shard = self.shard(&r.group).await?;
        let fresh = self.fresh_member_id(&shard, &r.client_id);
        let req = JoinRequest {
            group: r.group.clone(),
            member_id: r.member_id.clone(),
            fresh_member_id: fresh,
            client_id: r.client_id.clone(),
            topics: r.topics.iter().cloned().collect(),
            session_timeout_ms: u64::from(r.session_timeout_ms),
            rebalance_timeout_ms: u64::from(r.rebalance_timeout_ms),
            assignor,
            owned: r.owned.iter().map(|tp| TopicPartition::new(tp.topic.clone(), tp.partition)).collect(),
        };
        let (tx, rx) = oneshot::channel();
        let member_id = {
            let mut groups = shard.groups.lock();
            let outcome = groups.join(req, self.now_ms());
            tracing::debug!(
                group = %r.group,
                member = %r.member_id,
                term = shard.term,
                outcome = ?outcome.as_ref().map(|o| matches!(o, JoinOutcome::Ready { .. })),
                "join (Ok(true): answered at once)"
            );
            match outcome? {
                JoinOutcome::Ready { member_id, generation, assignment } => {
                    return Ok(v1::JoinGroupResponse {
                        error: None,
                        member_id,
                        generation,
                        assignment: tps(&assignment),
                        assignor: assignor.name().to_string(),
                    })
                }
                JoinOutcome::Wait { member_id } => {
                    self.register_join(&shard, &r.group, &member_id, JoinWaiter::Runnel(tx));
                    member_id
                }
            }
        };
        self.try_complete(&shard, &r.group).await;
        self.await_join(&shard, &r.group, member_id, r.rebalance_timeout_ms, rx).await
    }

    /// A Kafka classic-protocol JoinGroup: answered once the rebalance it joins completes (at
    /// once for an unchanged rejoin of a stable member), the leader's answer listing every member.
    pub async fn kafka_join(&self, r: KafkaJoin) -> Result<KafkaJoined, RunnelError> {
        let rebalance_timeout_ms = check_timeouts(r.session_timeout_ms, r.rebalance_timeout_ms, true)?;
        let shard = self.shard(&r.group).await?;
        let req = KafkaJoinRequest {
            group: r.group.clone(),
            member_id: r.member_id.clone(),
            fresh_member_id: self.fresh_member_id(&shard, &r.client_id),
            group_instance_id: r.group_instance_id,
            client_id: r.client_id,
            client_host: r.client_host,
            session_timeout_ms: u64::from(r.session_timeout_ms),
            rebalance_timeout_ms: u64::from(rebalance_timeout_ms),
            protocol_type: r.protocol_type,
            protocols: r.protocols.into_iter().map(|(name, metadata)| (name, metadata.to_vec())).collect(),
        };
        let (tx, rx) = oneshot::channel();
        let member_id = {
            let mut groups = shard.groups.lock();
            match groups.kafka_join(req, self.now_ms())? {
                KafkaJoinOutcome::Ready(answer) => return Ok(answer.into()),
                KafkaJoinOutcome::Wait { member_id } => {
                    self.register_join(&shard, &r.group, &member_id, JoinWaiter::Kafka(tx));
                    member_id
                }
            }
        };
        tracing::debug!(group = %r.group, member = %member_id, term = shard.term, "kafka join waits for the rebalance");
        self.try_complete(&shard, &r.group).await;
        self.await_join(&shard, &r.group, member_id, rebalance_timeout_ms, rx).await
    }

    /// A Kafka SyncGroup: the member's assignment for `generation`. The leader's (with every
    /// member's assignment) is stored with the generation before anyone is answered; the others
    /// wait for it, at most their rebalance timeout.
    pub async fn kafka_sync(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, RunnelError> {
        let shard = self.shard(group).await?;
        let assignment = assignments.into_iter().map(|(m, b)| (m, b.to_vec())).collect();
        let (outcome, rx) = {
            let mut groups = shard.groups.lock();
            let outcome = groups.kafka_sync(group, member_id, generation, assignment, self.now_ms())?;
            let mut rx = None;
            if let SyncOutcome::Wait { .. } = outcome {
                // Registered under the groups lock, so the stored assignment cannot slip in between.
                let (tx, r) = oneshot::channel();
                rx = Some(r);
                let key = (group.to_string(), member_id.to_string());
                if let Some((_, old)) = shard.syncs.lock().insert(key, (generation, tx)) {
                    let _ = old.send(Err(RunnelError::new(
                        ErrorCode::RebalanceInProgress,
                        "superseded by a newer SyncGroup of the same member",
                    )));
                }
            }
            (outcome, rx)
        };
        match (outcome, rx) {
            (SyncOutcome::Ready(bytes), _) => Ok(Bytes::from(bytes)),
            (SyncOutcome::Store(value), _) => self.store_assignment(&shard, group, member_id, generation, &value).await,
            (SyncOutcome::Wait { rebalance_timeout_ms }, Some(rx)) => {
                match tokio::time::timeout(Duration::from_millis(rebalance_timeout_ms), rx).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(RunnelError::not_coordinator(group, None)),
                    Err(_) => {
                        let key = (group.to_string(), member_id.to_string());
                        let mut syncs = shard.syncs.lock();
                        if syncs.get(&key).is_some_and(|(_, tx)| tx.is_closed()) {
                            syncs.remove(&key);
                        }
                        Err(RunnelError::new(
                            ErrorCode::RebalanceInProgress,
                            format!(
                                "group '{group}': the leader's assignment for generation {generation} did not arrive \
                                 within the rebalance timeout; rejoin"
                            ),
                        ))
                    }
                }
            }
            (SyncOutcome::Wait { .. }, None) => Err(RunnelError::internal("a waiting SyncGroup has no answer channel")),
        }
    }

    /// Stores the leader's assignment with its generation, then makes the group stable and
    /// answers the waiting SyncGroups; returns the leader's own share.
    async fn store_assignment(
        &self,
        shard: &Shard,
        group: &str,
        leader: &str,
        generation: u64,
        value: &GroupValue,
    ) -> Result<Bytes, RunnelError> {
        let mut guard = PendingStore { coordinator: self, shard, group, generation, armed: true };
        let written = match encode_value(value) {
            Ok(v) => self.write(shard, vec![(StoredKey::Group(group.to_string()), v)]).await,
            Err(e) => Err(e),
        };
        guard.armed = false;
        if let Err(e) = written {
            tracing::warn!(group, generation, error = %e, "could not store a Kafka group's assignment");
            {
                let mut groups = shard.groups.lock();
                groups.kafka_sync_failed(group, generation, self.now_ms());
                // As Kafka: the waiting members get the store's error, and rejoin.
                shard.answer_syncs(group, |_, _| Err(e.clone()));
            }
            self.try_complete(shard, group).await;
            return Err(e);
        }
        let mut groups = shard.groups.lock();
        let Some(assignment) = groups.kafka_sync_stored(group, generation) else {
            return Err(rebalancing(group));
        };
        let share = |member: &str| Bytes::from(assignment.get(member).cloned().unwrap_or_default());
        shard.answer_syncs(
            group,
            |member, synced| {
                if synced == generation {
                    Ok(share(member))
                } else {
                    Err(rebalancing(group))
                }
            },
        );
        tracing::info!(group, generation, members = assignment.len(), "kafka group assignment stored");
        Ok(share(leader))
    }

    pub async fn heartbeat(&self, r: v1::HeartbeatRequest) -> Result<(), RunnelError> {
        self.kafka_heartbeat(&r.group, &r.member_id, r.generation).await
    }

    /// A heartbeat of either protocol (named for the Kafka front-end, which calls it).
    pub async fn kafka_heartbeat(&self, group: &str, member_id: &str, generation: u64) -> Result<(), RunnelError> {
        let shard = self.shard(group).await?;
        let out = shard.groups.lock().heartbeat(group, member_id, generation, self.now_ms());
        if let Err(e) = &out {
            tracing::debug!(group, member = member_id, generation, error = %e, "heartbeat refused");
        }
        out
    }

    pub async fn leave(&self, r: v1::LeaveGroupRequest) -> Result<(), RunnelError> {
        let shard = self.shard(&r.group).await?;
        shard.groups.lock().leave(&r.group, &r.member_id, self.now_ms())?;
        shard.answer_left(&r.group, &r.member_id);
        self.try_complete(&shard, &r.group).await;
        Ok(())
    }

    /// Members leaving (Kafka v3+ sends several): one result per member, in order; the outer
    /// error is for the whole request (e.g. NOT_COORDINATOR).
    pub async fn kafka_leave(
        &self,
        group: &str,
        member_ids: &[String],
    ) -> Result<Vec<Result<(), RunnelError>>, RunnelError> {
        let shard = self.shard(group).await?;
        let mut out = Vec::with_capacity(member_ids.len());
        for m in member_ids {
            let left = shard.groups.lock().leave(group, m, self.now_ms());
            if left.is_ok() {
                shard.answer_left(group, m);
            }
            out.push(left);
        }
        self.try_complete(&shard, group).await;
        Ok(out)
    }

    pub async fn commit(&self, r: v1::CommitOffsetsRequest) -> Result<(), RunnelError> {
        let offsets = r.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset, o.metadata)).collect();
        self.commit_offsets(&r.group, &r.member_id, r.generation, offsets).await
    }

    /// Commits `offsets` (topic, partition, offset, metadata) for a member of `generation`, or,
    /// with generation -1 and member "", from outside any generation (only while the group has no
    /// members). Answered once the records are committed by a quorum.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: i64,
        offsets: Vec<(String, u32, u64, String)>,
    ) -> Result<(), RunnelError> {
        let shard = self.shard(group).await?;
        let asked: Vec<(TopicPartition, u64)> =
            offsets.iter().map(|(t, p, o, _)| (TopicPartition::new(t.clone(), *p), *o)).collect();
        shard.groups.lock().check_commit(group, member_id, generation, &asked)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let ts = now_wall_ms();
        let mut records = Vec::with_capacity(offsets.len());
        let mut values = Vec::with_capacity(offsets.len());
        for (topic, partition, offset, metadata) in offsets {
            let tp = TopicPartition::new(topic, partition);
            let v = OffsetValue { offset, metadata, commit_timestamp_ms: ts, generation };
            records.push((StoredKey::Offset(group.to_string(), tp.clone()), encode_value(&v)?));
            values.push((tp, v));
        }
        let base = self.write(&shard, records).await?;
        let mut groups = shard.groups.lock();
        for (i, (tp, v)) in values.into_iter().enumerate() {
            groups.apply_offset(group, tp, Some(v), base + i as u64);
        }
        Ok(())
    }

    /// The committed offsets of the named partitions (every one the group has when `partitions`
    /// is empty); partitions without a commit are left out.
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: BTreeSet<TopicPartition>,
    ) -> Result<Vec<(TopicPartition, OffsetValue)>, RunnelError> {
        let shard = self.shard(group).await?;
        let groups = shard.groups.lock();
        let Some(g) = groups.get(group) else { return Ok(vec![]) };
        Ok(g.offsets
            .iter()
            .filter(|(tp, _)| partitions.is_empty() || partitions.contains(*tp))
            .map(|(tp, (v, _))| (tp.clone(), v.clone()))
            .collect())
    }

    pub async fn fetch_offsets(&self, r: v1::FetchOffsetsRequest) -> Result<Vec<v1::CommittedOffset>, RunnelError> {
        let wanted = r.partitions.into_iter().map(|tp| TopicPartition::new(tp.topic, tp.partition)).collect();
        Ok(self.stored_offsets(&r.group, wanted).await?.iter().map(|(tp, v)| committed(tp, v)).collect())
    }

    /// Committed offsets of the named partitions (all of the group's when `partitions` is empty):
    /// (topic, partition, offset, metadata). Partitions without a commit are left out.
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<Vec<(String, u32, u64, String)>, RunnelError> {
        let wanted = partitions.iter().map(|(t, p)| TopicPartition::new(t.clone(), *p)).collect();
        Ok(self
            .stored_offsets(group, wanted)
            .await?
            .into_iter()
            .map(|(tp, v)| (tp.topic, tp.partition, v.offset, v.metadata))
            .collect())
    }

    /// The shards of every offsets partition this node leads (loading them first).
    async fn local_shards(&self) -> Result<Vec<Arc<Shard>>, RunnelError> {
        let Some(n) = self.offsets_partition_count() else { return Ok(vec![]) };
        let mut out = Vec::new();
        for p in 0..n {
            let Some(partition) = self.broker.partition(OFFSETS_TOPIC, p) else { continue };
            if !partition.leadership().0 {
                continue;
            }
            match self.shard_for(p, "(list)", None).await {
                Ok(s) => out.push(s),
                Err(e) if e.code == ErrorCode::NotCoordinator => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Groups coordinated by this node (loading every shard it leads first).
    pub async fn list(&self) -> Result<Vec<v1::GroupListing>, RunnelError> {
        let mut out = Vec::new();
        for shard in self.local_shards().await? {
            let groups = shard.groups.lock();
            for g in groups.groups.values().filter(|g| exists(g)) {
                out.push(v1::GroupListing {
                    group: g.name.clone(),
                    state: g.state.as_str().to_string(),
                    members: g.members.len() as u32,
                    generation: g.generation,
                    assignor: g.assignor.map(|a| a.name().to_string()).unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    /// Groups coordinated by this node, as Kafka's ListGroups gives them: (group, protocol_type,
    /// state).
    pub async fn list_groups(&self) -> Result<Vec<(String, String, String)>, RunnelError> {
        let mut out = Vec::new();
        for shard in self.local_shards().await? {
            let groups = shard.groups.lock();
            for g in groups.groups.values().filter(|g| exists(g)) {
                out.push((g.name.clone(), g.protocol_type().to_string(), g.state.kafka_name().to_string()));
            }
        }
        Ok(out)
    }

    /// A group as Kafka's DescribeGroups gives it; a group that does not exist is `Dead` with no
    /// members (not an error, as in Kafka).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, RunnelError> {
        let shard = self.shard(group).await?;
        let groups = shard.groups.lock();
        let Some(g) = groups.get(group).filter(|g| exists(g)) else {
            return Ok(GroupDescription {
                group: group.to_string(),
                state: "Dead".to_string(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: vec![],
            });
        };
        // As Kafka: the protocol and the members' metadata and assignments only once the
        // generation is stable (before, they are not settled).
        let stable = g.state == GroupState::Stable;
        let protocol = if stable { g.protocol() } else { String::new() };
        let members = g
            .members
            .values()
            .map(|m| {
                let (metadata, assignment) = match (&g.kafka, stable) {
                    (Some(_), true) => (
                        m.metadata_for(&protocol).map(Bytes::copy_from_slice).unwrap_or_default(),
                        m.assignment_bytes.clone().map(Bytes::from).unwrap_or_default(),
                    ),
                    _ => (Bytes::new(), Bytes::new()),
                };
                DescribedMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata,
                    assignment,
                }
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_string(),
            state: g.state.kafka_name().to_string(),
            protocol_type: g.protocol_type().to_string(),
            protocol,
            members,
        })
    }

    pub async fn describe(&self, group: &str) -> Result<v1::DescribeGroupResponse, RunnelError> {
        let shard = self.shard(group).await?;
        let groups = shard.groups.lock();
        let g = groups
            .get(group)
            .ok_or_else(|| RunnelError::new(ErrorCode::UnknownGroup, format!("group '{group}' does not exist")))?;
        Ok(v1::DescribeGroupResponse {
            error: None,
            group: group.to_string(),
            state: g.state.as_str().to_string(),
            generation: g.generation,
            assignor: g.assignor.map(|a| a.name().to_string()).unwrap_or_default(),
            members: g
                .members
                .values()
                .map(|m| v1::GroupMember {
                    member_id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    assignment: tps(&m.assignment),
                })
                .collect(),
            offsets: g.offsets.iter().map(|(tp, (v, _))| committed(tp, v)).collect(),
            coordinator: self.broker.node_id(),
        })
    }

    pub async fn delete(&self, group: &str) -> Result<(), RunnelError> {
        let shard = self.shard(group).await?;
        let removed = shard.groups.lock().delete(group)?;
        let mut tombstones: Vec<(StoredKey, Vec<u8>)> =
            removed.into_iter().map(|tp| (StoredKey::Offset(group.to_string(), tp), Vec::new())).collect();
        tombstones.push((StoredKey::Group(group.to_string()), Vec::new()));
        self.write(&shard, tombstones).await?;
        Ok(())
    }

    /// Expires sessions, completes rebalances whose deadline passed, and drops shards this node
    /// no longer leads (answering their waiting members NOT_COORDINATOR).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let shards: Vec<(u32, Arc<Shard>)> = self.shards.lock().iter().map(|(p, s)| (*p, s.clone())).collect();
            for (p, shard) in shards {
                let (leader, term, _) = shard.partition.leadership();
                let current =
                    self.broker.partition(OFFSETS_TOPIC, p).is_some_and(|x| Arc::ptr_eq(&x, &shard.partition));
                if !leader || term != shard.term || !current {
                    let mut shards = self.shards.lock();
                    if shards.get(&p).is_some_and(|s| Arc::ptr_eq(s, &shard)) {
                        shards.remove(&p);
                    }
                    drop(shards);
                    shard.fail_waiters(&RunnelError::new(
                        ErrorCode::NotCoordinator,
                        "this node stopped coordinating the group (its offsets partition moved)",
                    ));
                    continue;
                }
                let counts = self.partition_counts();
                let rebalancing = shard.groups.lock().tick(self.now_ms(), &counts);
                for group in rebalancing {
                    self.try_complete(&shard, &group).await;
                }
            }
        }
    }
}

/// Whether a group is worth showing: a failed JoinGroup leaves an entry with nothing in it.
fn exists(g: &Group) -> bool {
    !(g.members.is_empty() && g.offsets.is_empty() && g.generation == 0)
}

fn committed(tp: &TopicPartition, v: &OffsetValue) -> v1::CommittedOffset {
    v1::CommittedOffset {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: v.offset,
        metadata: v.metadata.clone(),
        commit_timestamp_ms: v.commit_timestamp_ms,
    }
}

/// Applies one stored record while loading (an empty value is a tombstone).
fn apply_stored(groups: &mut Groups, key: &[u8], value: &[u8], at: u64, now_ms: u64) -> Result<(), RunnelError> {
    let key = StoredKey::decode(key)?;
    match &key {
        StoredKey::Group(g) => {
            let v: Option<GroupValue> = if value.is_empty() { None } else { Some(decode_value(&key, value)?) };
            groups.apply_group(g, v, at, now_ms);
        }
        StoredKey::Offset(g, tp) => {
            let v: Option<OffsetValue> = if value.is_empty() { None } else { Some(decode_value(&key, value)?) };
            groups.apply_offset(g, tp.clone(), v, at);
        }
    }
    Ok(())
}
