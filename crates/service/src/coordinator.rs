//! The group coordinator: the runtime around `runnel_groups::Groups`.
//!
//! Each partition of `__consumer_offsets` that this node leads is a *shard*: the groups hashing to
//! it, loaded by replaying the partition once this node's term has committed its first entry, and
//! kept until leadership moves. Everything a group must not lose — offset commits and completed
//! generations — is written to that partition with acks=all and the shard's term as the leader
//! epoch (so a deposed coordinator's write is refused) before it is acknowledged or acted upon.
//! Membership itself (sessions, who has rejoined) lives in memory, as in Kafka: after a failover
//! the members are restored from the last generation and either heartbeat or expire.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use runnel_broker::{Broker, Partition};
use runnel_groups::group::JoinRequest;
use runnel_groups::record::{decode_value, encode_value, validate_group_name, GroupValue, OffsetValue, StoredKey};
use runnel_groups::{coordinator_partition, Assignor, Groups, JoinOutcome, TopicPartition, OFFSETS_TOPIC};
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

type JoinAnswer = Result<v1::JoinGroupResponse, RunnelError>;

struct Shard {
    partition: Arc<Partition>,
    term: u64,
    groups: Mutex<Groups>,
    /// JoinGroup calls waiting for their group's rebalance: (group, member) → answer.
    waiters: Mutex<BTreeMap<(String, String), oneshot::Sender<JoinAnswer>>>,
    next_member: AtomicU64,
}

impl Shard {
    fn fail_waiters(&self, e: &RunnelError) {
        for (_, tx) in std::mem::take(&mut *self.waiters.lock()) {
            let _ = tx.send(Err(e.clone()));
        }
    }
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
        let mut groups = Groups::default();
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
        let Some(done) = shard.groups.lock().complete_if_ready(group, self.now_ms(), &counts) else {
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
                if let Some(tx) = waiters.remove(&k) {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            return;
        }
        tracing::info!(group, generation = done.generation, members = done.assignments.len(), "group rebalanced");
        let assignor = done.value.assignor.clone().unwrap_or_default();
        for (member, assignment) in &done.assignments {
            if let Some(tx) = waiters.remove(&(group.to_string(), member.clone())) {
                let _ = tx.send(Ok(v1::JoinGroupResponse {
                    error: None,
                    member_id: member.clone(),
                    generation: done.generation,
                    assignment: tps(assignment),
                    assignor: assignor.clone(),
                }));
            }
        }
        for member in &done.removed {
            if let Some(tx) = waiters.remove(&(group.to_string(), member.clone())) {
                let _ = tx.send(Err(RunnelError::new(
                    ErrorCode::UnknownMember,
                    format!("member '{member}' did not rejoin group '{group}' in time and was removed"),
                )));
            }
        }
    }

    pub async fn join(&self, r: v1::JoinGroupRequest) -> Result<v1::JoinGroupResponse, RunnelError> {
        if r.topics.is_empty() {
            return Err(RunnelError::new(ErrorCode::InvalidRequest, "JoinGroup names no topics to subscribe to"));
        }
        for (field, v) in
            [("session_timeout_ms", r.session_timeout_ms), ("rebalance_timeout_ms", r.rebalance_timeout_ms)]
        {
            if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&v) {
                return Err(RunnelError::invalid_config(
                    field,
                    v,
                    &format!("must be between {MIN_SESSION_TIMEOUT_MS} and {MAX_SESSION_TIMEOUT_MS}"),
                ));
            }
        }
        let assignor = Assignor::parse(if r.assignor.is_empty() { "range" } else { &r.assignor })?;
        let shard = self.shard(&r.group).await?;
        let n = shard.next_member.fetch_add(1, Ordering::Relaxed);
        let client = if r.client_id.is_empty() { "member" } else { r.client_id.as_str() };
        // Unique without randomness: the term is new at every leadership change of this shard.
        let fresh = format!("{client}-{}-{}-{n}", self.broker.node_id(), shard.term);
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
                    // Registered under the same lock, so a completion cannot slip in between.
                    if let Some(old) = shard.waiters.lock().insert((r.group.clone(), member_id.clone()), tx) {
                        let _ = old.send(Err(RunnelError::new(
                            ErrorCode::RebalanceInProgress,
                            "superseded by a newer JoinGroup of the same member",
                        )));
                    }
                    member_id
                }
            }
        };
        self.try_complete(&shard, &r.group).await;
        let wait = Duration::from_millis(u64::from(r.rebalance_timeout_ms)) + Duration::from_secs(1);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RunnelError::not_coordinator(&r.group, None)),
            Err(_) => {
                shard.waiters.lock().remove(&(r.group.clone(), member_id));
                Err(RunnelError::new(
                    ErrorCode::RebalanceInProgress,
                    format!("group '{}' did not finish rebalancing within the rebalance timeout; rejoin", r.group),
                ))
            }
        }
    }

    pub async fn heartbeat(&self, r: v1::HeartbeatRequest) -> Result<(), RunnelError> {
        let shard = self.shard(&r.group).await?;
        let out = shard.groups.lock().heartbeat(&r.group, &r.member_id, r.generation, self.now_ms());
        if let Err(e) = &out {
            tracing::debug!(group = %r.group, member = %r.member_id, generation = r.generation, error = %e, "heartbeat refused");
        }
        out
    }

    pub async fn leave(&self, r: v1::LeaveGroupRequest) -> Result<(), RunnelError> {
        let shard = self.shard(&r.group).await?;
        shard.groups.lock().leave(&r.group, &r.member_id, self.now_ms())?;
        if let Some(tx) = shard.waiters.lock().remove(&(r.group.clone(), r.member_id.clone())) {
            let _ = tx.send(Err(RunnelError::new(ErrorCode::UnknownMember, "the member left the group")));
        }
        self.try_complete(&shard, &r.group).await;
        Ok(())
    }

    pub async fn commit(&self, r: v1::CommitOffsetsRequest) -> Result<(), RunnelError> {
        let shard = self.shard(&r.group).await?;
        let asked: Vec<(TopicPartition, u64)> =
            r.offsets.iter().map(|o| (TopicPartition::new(o.topic.clone(), o.partition), o.offset)).collect();
        shard.groups.lock().check_commit(&r.group, &r.member_id, r.generation, &asked)?;
        if r.offsets.is_empty() {
            return Ok(());
        }
        let ts = now_wall_ms();
        let mut records = Vec::with_capacity(r.offsets.len());
        let mut values = Vec::with_capacity(r.offsets.len());
        for o in &r.offsets {
            let tp = TopicPartition::new(o.topic.clone(), o.partition);
            let v = OffsetValue {
                offset: o.offset,
                metadata: o.metadata.clone(),
                commit_timestamp_ms: ts,
                generation: r.generation,
            };
            records.push((StoredKey::Offset(r.group.clone(), tp.clone()), encode_value(&v)?));
            values.push((tp, v));
        }
        let base = self.write(&shard, records).await?;
        let mut groups = shard.groups.lock();
        for (i, (tp, v)) in values.into_iter().enumerate() {
            groups.apply_offset(&r.group, tp, Some(v), base + i as u64);
        }
        Ok(())
    }

    pub async fn fetch_offsets(&self, r: v1::FetchOffsetsRequest) -> Result<Vec<v1::CommittedOffset>, RunnelError> {
        let shard = self.shard(&r.group).await?;
        let groups = shard.groups.lock();
        let Some(g) = groups.get(&r.group) else { return Ok(vec![]) };
        let wanted: BTreeSet<TopicPartition> =
            r.partitions.iter().map(|tp| TopicPartition::new(tp.topic.clone(), tp.partition)).collect();
        Ok(g.offsets
            .iter()
            .filter(|(tp, _)| wanted.is_empty() || wanted.contains(*tp))
            .map(|(tp, (v, _))| committed(tp, v))
            .collect())
    }

    /// Groups coordinated by this node (loading every shard it leads first).
    pub async fn list(&self) -> Result<Vec<v1::GroupListing>, RunnelError> {
        let Some(n) = self.offsets_partition_count() else { return Ok(vec![]) };
        let mut out = Vec::new();
        for p in 0..n {
            let Some(partition) = self.broker.partition(OFFSETS_TOPIC, p) else { continue };
            if !partition.leadership().0 {
                continue;
            }
            let shard = match self.shard_for(p, "(list)", None).await {
                Ok(s) => s,
                Err(e) if e.code == ErrorCode::NotCoordinator => continue,
                Err(e) => return Err(e),
            };
            let groups = shard.groups.lock();
            for g in groups.groups.values() {
                if g.members.is_empty() && g.offsets.is_empty() && g.generation == 0 {
                    continue;
                }
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
