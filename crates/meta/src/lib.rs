//! The controller's state machine: brokers, topics, partition assignments and epochs.
//!
//! Pure and deterministic: [`ClusterState::apply`] turns a committed [`MetaCommand`] into a new state
//! and a [`MetaResponse`], the same on every metadata replica. The Raft glue lives in `runnel-raft`;
//! the decisions that need the controller's local view (which brokers are live) are made before a
//! command is proposed, and `apply` re-checks everything that must hold.

use std::collections::{BTreeMap, HashMap};

use runnel_types::topic::{validate_topic_name, TopicConfig};
use runnel_types::{ErrorCode, GroupId, NodeId, RunnelError, META_GROUP_ID};
use serde::{Deserialize, Serialize};

mod moves;
mod placement;
pub mod security;
pub use moves::{plan_rebalance, plan_replacements};
pub use placement::place_partitions;

/// Whether a broker is serving, as the controller last committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerStatus {
    /// Heartbeating within its session.
    Alive,
    /// Missed its session timeout; comes back by re-registering (with a new epoch).
    Unavailable,
    /// Announced a graceful shutdown: it is handing its leaderships away and will stop.
    ShuttingDown,
}

impl BrokerStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            BrokerStatus::Alive => "alive",
            BrokerStatus::Unavailable => "unavailable",
            BrokerStatus::ShuttingDown => "shutting-down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: NodeId,
    pub addr: String,
    /// Bumped every time the broker registers anew (a fresh process, or back after being marked
    /// unavailable): a decision about an older epoch no longer applies to it.
    pub epoch: u64,
    /// Random per process start; a heartbeat with a new incarnation re-registers.
    pub incarnation: u64,
    pub status: BrokerStatus,
    /// An operator asked for every replica to move off this broker; new replicas avoid it.
    pub decommissioning: bool,
}

impl BrokerRecord {
    pub fn is_alive(&self) -> bool {
        self.status == BrokerStatus::Alive
    }

    /// May receive new replicas.
    pub fn is_eligible(&self) -> bool {
        self.is_alive() && !self.decommissioning
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub partition: u32,
    pub group_id: GroupId,
    /// Replica brokers; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// Last leader reported and committed; may lag the group's own view by a heartbeat.
    pub leader: Option<NodeId>,
    /// The Raft term of `leader`; only ever increases.
    pub leader_epoch: u64,
    /// Bumped whenever the replica set changes (a reassignment starts or finishes).
    pub partition_epoch: u64,
    /// A reassignment in progress: the replica set the partition's leader is moving the Raft group
    /// to (new replicas join as learners, catch up, then the voters are replaced in one joint
    /// change). Replicas in either set run the group until it finishes.
    pub target_replicas: Option<Vec<NodeId>>,
}

impl PartitionRecord {
    /// Whether `node` hosts a replica now (see [`Self::hosts`]), without allocating: asked for
    /// every partition on every metadata change.
    pub fn is_hosted_on(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.target_replicas.as_ref().is_some_and(|t| t.contains(&node))
    }

    /// Brokers that host a replica now: the replica set plus any reassignment target.
    pub fn hosts(&self) -> Vec<NodeId> {
        let mut all = self.replicas.clone();
        for r in self.target_replicas.iter().flatten() {
            if !all.contains(r) {
                all.push(*r);
            }
        }
        all
    }

    /// The replica set this partition is heading to (the current one when nothing is moving).
    pub fn final_replicas(&self) -> &[NodeId] {
        self.target_replicas.as_deref().unwrap_or(&self.replicas)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: u64,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionRecord>,
}

impl TopicRecord {
    /// Where `group` is in `partitions`, if this topic has it. A topic's groups are allocated
    /// consecutively at creation, so this is arithmetic plus a check (O(1) per topic instead of a
    /// scan of its partitions), with a scan as the fallback should that ever not hold.
    pub fn index_of_group(&self, group: GroupId) -> Option<usize> {
        let first = self.partitions.first()?.group_id;
        let last = self.partitions.last()?.group_id;
        if last.checked_sub(first) == Some(self.partitions.len() as u64 - 1) {
            if !(first..=last).contains(&group) {
                return None;
            }
            let i = (group - first) as usize;
            if self.partitions.get(i).is_some_and(|p| p.group_id == group) {
                return Some(i);
            }
        }
        self.partitions.iter().position(|p| p.group_id == group)
    }
}

/// Most producer ids one `AllocateProducerIds` may reserve.
pub const MAX_PRODUCER_ID_BLOCK: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    RegisterBroker {
        id: NodeId,
        addr: String,
        incarnation: u64,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
        assignments: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Sets (`set`) and resets to their defaults (`delete`) a topic's configuration keys; all or
    /// nothing, validated again on apply.
    AlterTopicConfig {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    /// Leaders as reported by brokers: (group, leader, term). Older terms are ignored.
    ReportLeaders {
        reports: Vec<(GroupId, NodeId, u64)>,
    },
    /// The controller stopped hearing from broker `id` (registration `epoch`), or the broker announced
    /// its shutdown. Ignored when the broker has re-registered since (a newer epoch).
    MarkBrokerUnavailable {
        id: NodeId,
        epoch: u64,
        shutting_down: bool,
    },
    /// Start (or stop) moving every replica off broker `id`.
    SetDecommissioning {
        id: NodeId,
        on: bool,
    },
    /// Move partitions (by group) to new replica sets. A new order of the same set takes effect at
    /// once (it only changes the preferred leader); a new set becomes the partition's target.
    ReassignPartitions {
        moves: Vec<(GroupId, Vec<NodeId>)>,
    },
    /// The partition's Raft voters now equal its target (reported by its leader): the target
    /// becomes the replica set. `partition_epoch` must match the reassignment being finished.
    FinishReassignment {
        group: GroupId,
        partition_epoch: u64,
    },
    /// Reserve `count` idempotent-producer ids (the controller hands them out one by one without
    /// further metadata writes; ids of a block it never hands out are simply skipped).
    AllocateProducerIds {
        count: u64,
    },
    /// Creates a user or replaces its credentials (which revokes its tokens); with `if_absent`,
    /// an existing user is left as it is (the configured bootstrap user). `token_key` signs
    /// bearer tokens and is used only if the cluster has none yet (drawn by the proposer: apply
    /// must be deterministic).
    PutUser {
        name: String,
        credentials: Vec<runnel_security::scram::Credentials>,
        token_key: Vec<u8>,
        if_absent: bool,
    },
    /// Sets the key that signs bearer tokens, if the cluster has none yet.
    SetTokenKey {
        key: Vec<u8>,
    },
    DeleteUser {
        name: String,
    },
    /// Adds access rules (all or nothing).
    AddAcls {
        rules: Vec<runnel_security::acl::AclRule>,
    },
    /// Removes these exact rules; answers how many were present.
    RemoveAcls {
        rules: Vec<runnel_security::acl::AclRule>,
    },
    /// Sets (or with `None` removes) a principal's quota.
    SetQuota {
        principal: String,
        quota: Option<runnel_security::quota::Quota>,
    },
    /// The addresses broker `id` advertises for its other protocols (`kafka` → `host:port`), so
    /// every node can name every other node's listener (a Kafka Metadata answer lists them all).
    /// Replaces the broker's previous set; an empty set removes it.
    SetListeners {
        id: NodeId,
        listeners: BTreeMap<String, String>,
    },
    /// Adds partitions to topic `name` (Kafka's CreatePartitions): one per replica set, numbered
    /// after the existing ones. Existing partitions and their records are untouched.
    AddPartitions {
        name: String,
        assignments: Vec<Vec<NodeId>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    BrokerRegistered {
        epoch: u64,
    },
    TopicCreated {
        topic_id: u64,
    },
    Rejected {
        code: u32,
        message: String,
    },
    /// Producer ids `first..first + count` are reserved for the proposer.
    ProducerIds {
        first: u64,
        count: u64,
    },
    /// How many of the rules to remove were present.
    Removed {
        count: u64,
    },
}

impl MetaResponse {
    fn rejected(e: RunnelError) -> Self {
        MetaResponse::Rejected { code: e.code as u32, message: e.message }
    }

    pub fn into_result(self) -> Result<MetaResponse, RunnelError> {
        match self {
            MetaResponse::Rejected { code, message } => {
                Err(RunnelError::new(ErrorCode::from_u32(code).unwrap_or(ErrorCode::Internal), message))
            }
            ok => Ok(ok),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub brokers: BTreeMap<NodeId, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub next_topic_id: u64,
    /// Next partition Raft group id; 0 is the metadata group, so this starts at 1.
    pub next_group_id: GroupId,
    /// The first idempotent-producer id not yet reserved (ids start at 1).
    pub next_producer_id: u64,
    /// Users, ACLs and quotas. Encoded after the rest of a snapshot, and only when not empty
    /// (`runnel_raft::meta_sm`), so snapshots of clusters that never used them keep their format.
    #[serde(skip)]
    pub security: security::SecurityState,
    /// Per broker, the addresses of its other protocols' listeners by protocol (`kafka`). Encoded
    /// after the security part of a snapshot, and only when not empty, like it.
    #[serde(skip)]
    pub listeners: BTreeMap<NodeId, BTreeMap<String, String>>,
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::RegisterBroker { id, addr, incarnation } => {
                let (epoch, decommissioning) = match self.brokers.get(id) {
                    Some(b) if b.incarnation == *incarnation && b.addr == *addr && b.is_alive() => {
                        (b.epoch, b.decommissioning)
                    }
                    Some(b) => (b.epoch + 1, b.decommissioning),
                    None => (1, false),
                };
                self.brokers.insert(
                    *id,
                    BrokerRecord {
                        id: *id,
                        addr: addr.clone(),
                        epoch,
                        incarnation: *incarnation,
                        status: BrokerStatus::Alive,
                        decommissioning,
                    },
                );
                MetaResponse::BrokerRegistered { epoch }
            }
            MetaCommand::CreateTopic { name, config, assignments } => {
                if let Err(e) = validate_topic_name(name) {
                    return MetaResponse::rejected(e);
                }
                if self.topics.contains_key(name) {
                    return MetaResponse::rejected(RunnelError::new(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic '{name}' already exists"),
                    ));
                }
                if assignments.is_empty() {
                    return MetaResponse::rejected(RunnelError::invalid_config("partitions", 0, "must be at least 1"));
                }
                if let Err(e) = self.check_assignments(name, 0, assignments) {
                    return MetaResponse::rejected(e);
                }
                let topic_id = self.next_topic_id.max(1);
                self.next_topic_id = topic_id + 1;
                let partitions = self.new_partitions(0, assignments);
                self.topics.insert(
                    name.clone(),
                    TopicRecord { name: name.clone(), topic_id, config: config.clone(), partitions },
                );
                MetaResponse::TopicCreated { topic_id }
            }
            MetaCommand::PutUser { name, credentials, token_key, if_absent } => {
                if *if_absent && self.security.users.contains_key(name) {
                    return MetaResponse::Done;
                }
                match self.security.put_user(name, credentials, token_key) {
                    Ok(_) => MetaResponse::Done,
                    Err(e) => MetaResponse::rejected(e),
                }
            }
            MetaCommand::SetTokenKey { key } => match self.security.set_token_key(key) {
                Ok(()) => MetaResponse::Done,
                Err(e) => MetaResponse::rejected(e),
            },
            MetaCommand::DeleteUser { name } => match self.security.delete_user(name) {
                Ok(()) => MetaResponse::Done,
                Err(e) => MetaResponse::rejected(e),
            },
            MetaCommand::AddAcls { rules } => match self.security.add_acls(rules) {
                Ok(()) => MetaResponse::Done,
                Err(e) => MetaResponse::rejected(e),
            },
            MetaCommand::RemoveAcls { rules } => MetaResponse::Removed { count: self.security.remove_acls(rules) },
            MetaCommand::SetQuota { principal, quota } => match self.security.set_quota(principal, *quota) {
                Ok(()) => MetaResponse::Done,
                Err(e) => MetaResponse::rejected(e),
            },
            MetaCommand::AddPartitions { name, assignments } => {
                let Some(existing) = self.topics.get(name).map(|t| t.partitions.len() as u32) else {
                    return MetaResponse::rejected(RunnelError::unknown_topic(name));
                };
                if assignments.is_empty() {
                    return MetaResponse::rejected(RunnelError::invalid_config(
                        "partitions",
                        existing,
                        "adding partitions needs at least one new partition",
                    ));
                }
                if let Err(e) = self.check_assignments(name, existing, assignments) {
                    return MetaResponse::rejected(e);
                }
                let added = self.new_partitions(existing, assignments);
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions.extend(added);
                }
                MetaResponse::Done
            }
            MetaCommand::SetListeners { id, listeners } => {
                if listeners.is_empty() {
                    self.listeners.remove(id);
                } else {
                    self.listeners.insert(*id, listeners.clone());
                }
                MetaResponse::Done
            }
            MetaCommand::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return MetaResponse::rejected(RunnelError::unknown_topic(name));
                }
                MetaResponse::Done
            }
            MetaCommand::AlterTopicConfig { name, set, delete } => {
                let Some(t) = self.topics.get_mut(name) else {
                    return MetaResponse::rejected(RunnelError::unknown_topic(name));
                };
                match t.config.with_changes(set, delete) {
                    Ok(c) => {
                        t.config = c;
                        MetaResponse::Done
                    }
                    Err(e) => MetaResponse::rejected(e),
                }
            }
            MetaCommand::ReportLeaders { reports } => {
                // One pass over the partitions, not one search per report: after a node dies a
                // single report names thousands of groups (found by profiling `bench partitions`:
                // a search per report made every metadata replica quadratic in partitions).
                let mut by_group: HashMap<GroupId, (NodeId, u64)> = HashMap::with_capacity(reports.len());
                for (group, leader, term) in reports {
                    let e = by_group.entry(*group).or_insert((*leader, *term));
                    if *term > e.1 {
                        *e = (*leader, *term);
                    }
                }
                for p in self.topics.values_mut().flat_map(|t| t.partitions.iter_mut()) {
                    let Some((leader, term)) = by_group.get(&p.group_id) else { continue };
                    // Epochs only increase: a late report from an older term changes nothing.
                    if *term > p.leader_epoch || (*term == p.leader_epoch && p.leader.is_none()) {
                        p.leader = Some(*leader);
                        p.leader_epoch = *term;
                    }
                }
                MetaResponse::Done
            }
            MetaCommand::MarkBrokerUnavailable { id, epoch, shutting_down } => {
                let Some(b) = self.brokers.get_mut(id) else {
                    return MetaResponse::rejected(unknown_broker(*id));
                };
                if b.epoch != *epoch {
                    return MetaResponse::rejected(RunnelError::new(
                        ErrorCode::StaleEpoch,
                        format!("broker {id} is at epoch {}, not {epoch}: it re-registered since", b.epoch),
                    ));
                }
                b.status = if *shutting_down { BrokerStatus::ShuttingDown } else { BrokerStatus::Unavailable };
                MetaResponse::Done
            }
            MetaCommand::SetDecommissioning { id, on } => {
                let Some(b) = self.brokers.get_mut(id) else {
                    return MetaResponse::rejected(unknown_broker(*id));
                };
                b.decommissioning = *on;
                MetaResponse::Done
            }
            MetaCommand::ReassignPartitions { moves } => {
                // All or nothing: validate every move before applying any.
                for (group, target) in moves {
                    if self.partition_by_group(*group).is_none() {
                        return MetaResponse::rejected(RunnelError::new(
                            ErrorCode::UnknownPartition,
                            format!("no partition has Raft group {group}"),
                        ));
                    }
                    let mut distinct = target.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    if target.is_empty() || distinct.len() != target.len() {
                        return MetaResponse::rejected(RunnelError::new(
                            ErrorCode::InvalidRequest,
                            format!("replica set {target:?} for group {group} must be non-empty and distinct"),
                        ));
                    }
                    if let Some(unknown) = target.iter().find(|r| !self.brokers.contains_key(r)) {
                        return MetaResponse::rejected(RunnelError::new(
                            ErrorCode::NotEnoughBrokers,
                            format!("replica set {target:?} names broker {unknown}, which is not registered"),
                        ));
                    }
                }
                for (group, target) in moves {
                    let Some(p) = self.partition_by_group_mut(*group) else { continue };
                    match p.target_replicas.clone() {
                        // Only the order (the preferred leader) changes: nothing to move.
                        None if same_set(&p.replicas, target) => p.replicas = target.clone(),
                        None => {
                            p.target_replicas = Some(target.clone());
                            p.partition_epoch += 1;
                        }
                        Some(old) if old == *target => {}
                        Some(old) => {
                            // A move replaces one in progress. The abandoned target's replicas may
                            // already be Raft members (learners or voters): they stay in the replica
                            // set, keeping their data, until the new move finishes and the Raft
                            // membership no longer has them. Dropping them now would let one delete
                            // its log while still a member (found by the simulator, seed 774838544).
                            for r in old {
                                if !p.replicas.contains(&r) {
                                    p.replicas.push(r);
                                }
                            }
                            p.target_replicas = Some(target.clone());
                            p.partition_epoch += 1;
                        }
                    }
                }
                MetaResponse::Done
            }
            MetaCommand::FinishReassignment { group, partition_epoch } => {
                let Some(p) = self.partition_by_group_mut(*group) else {
                    return MetaResponse::rejected(RunnelError::new(
                        ErrorCode::UnknownPartition,
                        format!("no partition has Raft group {group}"),
                    ));
                };
                if p.partition_epoch != *partition_epoch {
                    return MetaResponse::rejected(RunnelError::new(
                        ErrorCode::StaleEpoch,
                        format!("group {group} is at partition epoch {}, not {partition_epoch}", p.partition_epoch),
                    ));
                }
                if let Some(target) = p.target_replicas.take() {
                    p.replicas = target;
                    p.partition_epoch += 1;
                }
                MetaResponse::Done
            }
            MetaCommand::AllocateProducerIds { count } => {
                if *count == 0 || *count > MAX_PRODUCER_ID_BLOCK {
                    return MetaResponse::rejected(RunnelError::new(
                        ErrorCode::InvalidRequest,
                        format!("producer id block of {count}: must be between 1 and {MAX_PRODUCER_ID_BLOCK}"),
                    ));
                }
                let first = self.next_producer_id.max(1);
                let Some(end) = first.checked_add(*count) else {
                    return MetaResponse::rejected(RunnelError::internal("producer ids are exhausted"));
                };
                self.next_producer_id = end;
                MetaResponse::ProducerIds { first, count: *count }
            }
        }
    }

    pub fn partition_by_group(&self, group: GroupId) -> Option<&PartitionRecord> {
        self.topics.values().find_map(|t| t.partitions.get(t.index_of_group(group)?))
    }

    /// Brokers that may receive new replicas.
    pub fn eligible_brokers(&self) -> Vec<NodeId> {
        self.brokers.values().filter(|b| b.is_eligible()).map(|b| b.id).collect()
    }

    fn partition_by_group_mut(&mut self, group: GroupId) -> Option<&mut PartitionRecord> {
        self.topics.values_mut().find_map(|t| {
            let i = t.index_of_group(group)?;
            t.partitions.get_mut(i)
        })
    }

    /// (topic, partition record) for every partition with a replica on `node`, counting the
    /// replicas a reassignment is adding.
    pub fn partitions_on(&self, node: NodeId) -> Vec<(&TopicRecord, &PartitionRecord)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter(|(_, p)| p.is_hosted_on(node))
            .collect()
    }

    /// Reports that would change the committed leader view (to avoid proposing no-ops).
    pub fn leader_changes(&self, reports: &[(GroupId, NodeId, u64)]) -> Vec<(GroupId, NodeId, u64)> {
        let current: BTreeMap<GroupId, (Option<NodeId>, u64)> = self
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.group_id, (p.leader, p.leader_epoch)))
            .collect();
        reports
            .iter()
            .filter(|(g, l, term)| match current.get(g) {
                Some((cur, epoch)) => *term > *epoch || (*term == *epoch && *cur != Some(*l)),
                None => false,
            })
            .cloned()
            .collect()
    }
}

impl ClusterState {
    /// Every replica set names distinct, registered brokers. Partitions are numbered from `first`.
    fn check_assignments(&self, name: &str, first: u32, assignments: &[Vec<NodeId>]) -> Result<(), RunnelError> {
        for (i, replicas) in assignments.iter().enumerate() {
            let p = first as usize + i;
            let mut seen = replicas.clone();
            seen.sort_unstable();
            seen.dedup();
            if replicas.is_empty() || seen.len() != replicas.len() {
                return Err(RunnelError::internal(format!(
                    "partition {p} of '{name}' has an invalid replica set {replicas:?}"
                )));
            }
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(RunnelError::new(
                    ErrorCode::NotEnoughBrokers,
                    format!("partition {p} of '{name}' names broker {unknown}, which is not registered"),
                ));
            }
        }
        Ok(())
    }

    /// New partitions numbered from `first`, each with a fresh Raft group.
    fn new_partitions(&mut self, first: u32, assignments: &[Vec<NodeId>]) -> Vec<PartitionRecord> {
        let mut partitions = Vec::with_capacity(assignments.len());
        for (i, replicas) in assignments.iter().enumerate() {
            let group_id = self.next_group_id.max(META_GROUP_ID + 1);
            self.next_group_id = group_id + 1;
            partitions.push(PartitionRecord {
                partition: first + i as u32,
                group_id,
                replicas: replicas.clone(),
                leader: None,
                leader_epoch: 0,
                partition_epoch: 1,
                target_replicas: None,
            });
        }
        partitions
    }
}

fn unknown_broker(id: NodeId) -> RunnelError {
    RunnelError::new(ErrorCode::InvalidRequest, format!("broker {id} is not registered"))
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl std::fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaCommand::RegisterBroker { id, addr, incarnation } => {
                write!(f, "RegisterBroker(id={id}, addr={addr}, incarnation={incarnation:x})")
            }
            MetaCommand::CreateTopic { name, assignments, .. } => {
                write!(f, "CreateTopic({name}, {} partitions)", assignments.len())
            }
            MetaCommand::DeleteTopic { name } => write!(f, "DeleteTopic({name})"),
            MetaCommand::SetListeners { id, listeners } => write!(f, "SetListeners(id={id}, {listeners:?})"),
            MetaCommand::AddPartitions { name, assignments } => {
                write!(f, "AddPartitions({name}, {} more)", assignments.len())
            }
            MetaCommand::AlterTopicConfig { name, set, delete } => {
                write!(f, "AlterTopicConfig({name}, set {set:?}, delete {delete:?})")
            }
            MetaCommand::ReportLeaders { reports } => write!(f, "ReportLeaders({reports:?})"),
            MetaCommand::MarkBrokerUnavailable { id, epoch, shutting_down } => {
                write!(f, "MarkBrokerUnavailable(id={id}, epoch={epoch}, shutting_down={shutting_down})")
            }
            MetaCommand::SetDecommissioning { id, on } => write!(f, "SetDecommissioning(id={id}, on={on})"),
            MetaCommand::ReassignPartitions { moves } => write!(f, "ReassignPartitions({moves:?})"),
            MetaCommand::FinishReassignment { group, partition_epoch } => {
                write!(f, "FinishReassignment(group={group}, partition_epoch={partition_epoch})")
            }
            MetaCommand::AllocateProducerIds { count } => write!(f, "AllocateProducerIds(count={count})"),
            // Never the credentials or the key: this line goes to logs.
            MetaCommand::PutUser { name, if_absent, .. } => write!(f, "PutUser({name}, if_absent={if_absent})"),
            MetaCommand::SetTokenKey { .. } => write!(f, "SetTokenKey"),
            MetaCommand::DeleteUser { name } => write!(f, "DeleteUser({name})"),
            MetaCommand::AddAcls { rules } => write!(f, "AddAcls({} rules)", rules.len()),
            MetaCommand::RemoveAcls { rules } => write!(f, "RemoveAcls({} rules)", rules.len()),
            MetaCommand::SetQuota { principal, quota } => write!(f, "SetQuota({principal}, {quota:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_brokers(n: u64) -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=n {
            s.apply(&MetaCommand::RegisterBroker { id, addr: format!("h:{id}"), incarnation: 7 });
        }
        s
    }

    #[test]
    fn added_partitions_follow_the_existing_ones_with_new_groups() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&MetaCommand::RegisterBroker { id, addr: format!("h:{id}"), incarnation: 7 });
        }
        let config = TopicConfig::default();
        s.apply(&MetaCommand::CreateTopic { name: "t".into(), config, assignments: vec![vec![1, 2]] });
        let first_group = s.topics["t"].partitions[0].group_id;
        let r = s.apply(&MetaCommand::AddPartitions { name: "t".into(), assignments: vec![vec![2, 3], vec![3, 1]] });
        assert_eq!(r, MetaResponse::Done);
        let parts: Vec<(u32, u64, Vec<u64>)> =
            s.topics["t"].partitions.iter().map(|p| (p.partition, p.group_id, p.replicas.clone())).collect();
        assert_eq!(
            parts,
            vec![(0, first_group, vec![1, 2]), (1, first_group + 1, vec![2, 3]), (2, first_group + 2, vec![3, 1])]
        );
        let bad = s.apply(&MetaCommand::AddPartitions { name: "t".into(), assignments: vec![vec![9]] });
        assert!(matches!(bad, MetaResponse::Rejected { .. }), "an unregistered broker is refused");
        assert_eq!(s.topics["t"].partitions.len(), 3, "a refused change adds nothing");
        let none = s.apply(&MetaCommand::AddPartitions { name: "nope".into(), assignments: vec![vec![1]] });
        assert!(matches!(none, MetaResponse::Rejected { .. }));
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&MetaCommand::AllocateProducerIds { count: 100 }),
            MetaResponse::ProducerIds { first: 1, count: 100 }
        );
        assert_eq!(
            s.apply(&MetaCommand::AllocateProducerIds { count: 5 }),
            MetaResponse::ProducerIds { first: 101, count: 5 }
        );
        let r = s.apply(&MetaCommand::AllocateProducerIds { count: 0 }).into_result().unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRequest);
        assert_eq!(s.next_producer_id, 106);
    }

    #[test]
    fn register_bumps_epoch_only_for_a_new_incarnation() {
        let mut s = with_brokers(1);
        assert_eq!(s.brokers[&1].epoch, 1);
        s.apply(&MetaCommand::RegisterBroker { id: 1, addr: "h:1".into(), incarnation: 7 });
        assert_eq!(s.brokers[&1].epoch, 1);
        let r = s.apply(&MetaCommand::RegisterBroker { id: 1, addr: "h:1".into(), incarnation: 8 });
        assert_eq!(r, MetaResponse::BrokerRegistered { epoch: 2 });
    }

    #[test]
    fn create_and_delete_topics() {
        let mut s = with_brokers(3);
        let cmd = MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1, 2, 3], vec![2, 3, 1]],
        };
        assert_eq!(s.apply(&cmd), MetaResponse::TopicCreated { topic_id: 1 });
        let groups: Vec<_> = s.topics["t"].partitions.iter().map(|p| p.group_id).collect();
        assert_eq!(groups, vec![1, 2]);
        assert!(matches!(s.apply(&cmd), MetaResponse::Rejected { code: 7, .. }));
        assert_eq!(s.apply(&MetaCommand::DeleteTopic { name: "t".into() }), MetaResponse::Done);
        assert!(matches!(
            s.apply(&MetaCommand::DeleteTopic { name: "t".into() }),
            MetaResponse::Rejected { code: 1, .. }
        ));
        // Group ids are never reused, so a recreated topic cannot meet its predecessor's data.
        s.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1]],
        });
        assert_eq!(s.topics["t"].partitions[0].group_id, 3);
    }

    #[test]
    fn alter_topic_config_is_validated_and_all_or_nothing() {
        let mut s = with_brokers(1);
        s.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1]],
        });
        let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let alter = |set, delete: &[&str]| MetaCommand::AlterTopicConfig {
            name: "t".into(),
            set,
            delete: delete.iter().map(|k| k.to_string()).collect(),
        };
        let r = s.apply(&alter(set(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]), &[]));
        assert_eq!(r, MetaResponse::Done);
        assert_eq!(s.topics["t"].config.retention_ms, 1000);
        assert!(s.topics["t"].config.cleanup_policy.compacts());
        // One bad value rejects the whole change.
        let before = s.topics["t"].config.clone();
        let r = s.apply(&alter(set(&[("retention.bytes", "5"), ("min.insync.replicas", "zero")]), &[]));
        match r {
            MetaResponse::Rejected { code, message } => {
                assert_eq!(code, ErrorCode::InvalidConfig as u32);
                assert!(message.contains("min.insync.replicas") && message.contains("zero"), "{message}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(s.topics["t"].config, before);
        // Deleting a key restores its default.
        assert_eq!(s.apply(&alter(set(&[]), &["retention.ms"])), MetaResponse::Done);
        assert_eq!(s.topics["t"].config.retention_ms, TopicConfig::default().retention_ms);
        let r = s.apply(&MetaCommand::AlterTopicConfig { name: "nope".into(), set: set(&[]), delete: vec![] });
        assert!(matches!(r, MetaResponse::Rejected { code: 1, .. }));
    }

    #[test]
    fn unknown_replica_is_rejected() {
        let mut s = with_brokers(2);
        let r = s.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1, 9]],
        });
        assert!(matches!(r, MetaResponse::Rejected { code: 9, .. }), "{r:?}");
        assert!(s.topics.is_empty());
    }

    #[test]
    fn leader_epochs_only_increase() {
        let mut s = with_brokers(3);
        s.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1, 2, 3]],
        });
        s.apply(&MetaCommand::ReportLeaders { reports: vec![(1, 2, 5)] });
        s.apply(&MetaCommand::ReportLeaders { reports: vec![(1, 1, 4)] });
        let p = &s.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (Some(2), 5));
        assert!(s.leader_changes(&[(1, 2, 5)]).is_empty());
        assert_eq!(s.leader_changes(&[(1, 3, 6)]), vec![(1, 3, 6)]);
    }

    #[test]
    fn groups_are_found_in_every_topic_and_one_report_updates_many() {
        let mut s = with_brokers(3);
        for (name, n) in [("a", 3u32), ("b", 1), ("c", 4)] {
            s.apply(&MetaCommand::CreateTopic {
                name: name.into(),
                config: TopicConfig::default(),
                assignments: (0..n).map(|_| vec![1, 2, 3]).collect(),
            });
        }
        // Groups 1..=3 are a's, 4 is b's, 5..=8 are c's.
        let all: Vec<(String, u32, GroupId)> = s
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.clone(), p.partition, p.group_id)))
            .collect();
        assert_eq!(all.len(), 8);
        for (topic, partition, group) in &all {
            let p = s.partition_by_group(*group).expect("every group is found");
            assert_eq!((p.partition, p.group_id), (*partition, *group), "group {group} of {topic}");
        }
        assert!(s.partition_by_group(0).is_none() && s.partition_by_group(9).is_none());
        // One report naming groups of every topic (one of them twice, and one unknown).
        let reports = vec![(1, 2, 3), (4, 3, 2), (8, 1, 7), (8, 2, 6), (42, 1, 1)];
        s.apply(&MetaCommand::ReportLeaders { reports });
        let led = |g: GroupId| s.partition_by_group(g).map(|p| (p.leader, p.leader_epoch));
        assert_eq!(led(1), Some((Some(2), 3)));
        assert_eq!(led(4), Some((Some(3), 2)));
        assert_eq!(led(8), Some((Some(1), 7)), "the higher term of two reports wins");
        assert_eq!(led(2), Some((None, 0)), "groups not reported are untouched");
        // A topic whose groups are not consecutive (not made by CreateTopic today) is still searched.
        if let Some(t) = s.topics.get_mut("c") {
            t.partitions.swap(0, 3);
        }
        assert_eq!(s.partition_by_group(5).map(|p| p.group_id), Some(5));
        assert_eq!(s.topics["c"].index_of_group(8), Some(0));
    }

    fn one_partition(replicas: Vec<NodeId>, brokers: u64) -> ClusterState {
        let mut s = with_brokers(brokers);
        s.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![replicas],
        });
        s
    }

    #[test]
    fn a_broker_marked_unavailable_comes_back_with_a_new_epoch() {
        let mut s = with_brokers(2);
        let mark = MetaCommand::MarkBrokerUnavailable { id: 2, epoch: 1, shutting_down: false };
        assert_eq!(s.apply(&mark), MetaResponse::Done);
        assert_eq!(s.brokers[&2].status, BrokerStatus::Unavailable);
        assert_eq!(s.eligible_brokers(), vec![1]);
        // The same process heartbeats again: it re-registers, with a new epoch.
        let r = s.apply(&MetaCommand::RegisterBroker { id: 2, addr: "h:2".into(), incarnation: 7 });
        assert_eq!(r, MetaResponse::BrokerRegistered { epoch: 2 });
        assert!(s.brokers[&2].is_alive());
        // A decision about the old epoch no longer applies.
        assert!(matches!(s.apply(&mark), MetaResponse::Rejected { code: 12, .. }));
        assert!(s.brokers[&2].is_alive());
    }

    #[test]
    fn reassignment_targets_then_finishes_with_epochs() {
        let mut s = one_partition(vec![1, 2, 3], 4);
        let moves = vec![(1, vec![1, 2, 4])];
        assert_eq!(s.apply(&MetaCommand::ReassignPartitions { moves: moves.clone() }), MetaResponse::Done);
        let p = s.partition_by_group(1).unwrap().clone();
        assert_eq!(
            (p.replicas.clone(), p.target_replicas.clone(), p.partition_epoch),
            (vec![1, 2, 3], Some(vec![1, 2, 4]), 2)
        );
        assert_eq!(p.hosts(), vec![1, 2, 3, 4]);
        assert_eq!(s.partitions_on(4).len(), 1, "the added replica starts while the move is in progress");
        // Re-proposing the same move changes nothing.
        s.apply(&MetaCommand::ReassignPartitions { moves });
        assert_eq!(s.partition_by_group(1).unwrap().partition_epoch, 2);
        // A finish for another epoch is stale.
        let stale = MetaCommand::FinishReassignment { group: 1, partition_epoch: 1 };
        assert!(matches!(s.apply(&stale), MetaResponse::Rejected { code: 12, .. }));
        s.apply(&MetaCommand::FinishReassignment { group: 1, partition_epoch: 2 });
        let p = s.partition_by_group(1).unwrap();
        assert_eq!((p.replicas.clone(), p.target_replicas.clone(), p.partition_epoch), (vec![1, 2, 4], None, 3));
        assert!(s.partitions_on(3).is_empty());
    }

    #[test]
    fn a_new_order_of_the_same_replicas_only_moves_the_preferred_leader() {
        let mut s = one_partition(vec![1, 2, 3], 3);
        s.apply(&MetaCommand::ReassignPartitions { moves: vec![(1, vec![3, 1, 2])] });
        let p = s.partition_by_group(1).unwrap();
        assert_eq!((p.replicas.clone(), p.target_replicas.clone(), p.partition_epoch), (vec![3, 1, 2], None, 1));
    }

    #[test]
    fn bad_reassignments_are_rejected_whole() {
        let mut s = one_partition(vec![1, 2, 3], 3);
        for (moves, code) in [
            (vec![(1, vec![1, 1, 2])], 13),
            (vec![(1, vec![])], 13),
            (vec![(1, vec![1, 2, 9])], 9),
            (vec![(1, vec![1, 2]), (77, vec![1])], 2),
        ] {
            let r = s.apply(&MetaCommand::ReassignPartitions { moves: moves.clone() });
            assert!(matches!(r, MetaResponse::Rejected { code: c, .. } if c == code), "{moves:?}: {r:?}");
        }
        assert_eq!(s.partition_by_group(1).unwrap().target_replicas, None);
    }

    #[test]
    fn a_move_that_replaces_one_in_progress_keeps_every_possible_member_hosting() {
        let mut s = one_partition(vec![1, 2, 3], 5);
        s.apply(&MetaCommand::ReassignPartitions { moves: vec![(1, vec![1, 2, 4])] });
        s.apply(&MetaCommand::ReassignPartitions { moves: vec![(1, vec![1, 2, 5])] });
        let p = s.partition_by_group(1).unwrap().clone();
        assert_eq!(p.target_replicas, Some(vec![1, 2, 5]));
        assert_eq!(p.replicas, vec![1, 2, 3, 4], "node 4 may already be a member: it keeps hosting");
        assert_eq!(p.partition_epoch, 3);
        assert!(!s.partitions_on(4).is_empty() && !s.partitions_on(3).is_empty());
        // Even moving back to the original set goes through the Raft group, not straight to it.
        s.apply(&MetaCommand::ReassignPartitions { moves: vec![(1, vec![1, 2, 3])] });
        let p = s.partition_by_group(1).unwrap().clone();
        assert_eq!((p.target_replicas.clone(), p.partition_epoch), (Some(vec![1, 2, 3]), 4));
        s.apply(&MetaCommand::FinishReassignment { group: 1, partition_epoch: 4 });
        assert_eq!(s.partition_by_group(1).unwrap().replicas, vec![1, 2, 3]);
        assert!(s.partitions_on(4).is_empty() && s.partitions_on(5).is_empty());
    }
}
