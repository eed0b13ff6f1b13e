//! Group membership: joins, heartbeats, leaves, session expiry and rebalances, as a pure state
//! machine driven by the coordinator (time is `now_ms`, from a monotonic clock the caller owns).
//!
//! The protocol is Kafka's, with the assignment computed here:
//! - A rebalance starts when a member joins, leaves, changes its subscription or misses its
//!   session. Members learn of it from their heartbeat (`REBALANCE_IN_PROGRESS`) and rejoin.
//! - It completes when every member has rejoined, or at the rebalance deadline (the longest
//!   `rebalance_timeout_ms` of the members) without those that did not: the generation goes up,
//!   the assignor runs, and every waiting JoinGroup is answered with the member's partitions.
//! - Eager assignors (`range`, `roundrobin`): members give up all partitions before rejoining.
//!   The cooperative one keeps them: a member reports what it owns when it rejoins, and a
//!   partition another member still owns is withheld for one generation, after which a follow-up
//!   rebalance hands it over once its old owner has let it go. Nobody stops consuming what it
//!   keeps.
//! - Commits are accepted from members of the current generation only (invariant 8); a group with
//!   no members accepts commits from outside any generation (admin resets, `assign` consumers).
//!
//! A group may instead be a group of Kafka consumers speaking Kafka's *classic* protocol
//! ([`Groups::kafka_join`], [`Groups::kafka_sync`]): the coordinator does not assign, it picks a
//! protocol and a leader when the rebalance completes ([`GroupState::CompletingRebalance`]), hands
//! the leader every member's opaque metadata, and the leader's SyncGroup brings the assignment
//! back, which the coordinator stores and distributes. Which protocol a group speaks is decided by
//! its first member; the committed offsets are the same either way, so a Kafka consumer and a
//! Runnel consumer of the same group name see the same positions.

use std::collections::{BTreeMap, BTreeSet};

use runnel_types::{ErrorCode, RunnelError};

use crate::record::{GroupValue, KafkaGroupValue, MemberValue, OffsetValue};
use crate::{Assignor, TopicPartition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may still be stored).
    Empty,
    /// Waiting for the members to rejoin.
    PreparingRebalance,
    /// Kafka groups only: the generation is formed, the leader's SyncGroup (the assignment) has not
    /// been stored yet.
    CompletingRebalance,
    /// Every member has its partitions for the current generation.
    Stable,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::PreparingRebalance => "preparing-rebalance",
            GroupState::CompletingRebalance => "completing-rebalance",
            GroupState::Stable => "stable",
        }
    }

    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn kafka_name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// The `protocol_type` a Runnel-protocol group reports to Kafka tools.
pub const RUNNEL_PROTOCOL_TYPE: &str = "runnel";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub last_seen_ms: u64,
    /// Has (re)joined during the rebalance in progress.
    pub joined: bool,
    /// What the member said it owns when it last joined (cooperative protocol).
    pub owned: BTreeSet<TopicPartition>,
    pub assignment: BTreeSet<TopicPartition>,
    /// Kafka: `group.instance.id` as the client gave it (kept and shown; static membership, which
    /// would use it, is not implemented).
    pub group_instance_id: Option<String>,
    /// Kafka: where the member connected from (shown by DescribeGroups).
    pub client_host: String,
    /// Kafka: (protocol name, metadata) in the member's order of preference; empty for a Runnel
    /// member.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// Kafka: what the leader assigned this member in the current generation; `None` until the
    /// leader's SyncGroup has been stored.
    pub assignment_bytes: Option<Vec<u8>>,
    /// When the member last (re)joined, counted per group: the first to join leads a new Kafka
    /// generation when the previous leader is gone.
    join_order: u64,
}

impl Member {
    /// Kafka: this member's metadata for `protocol`.
    pub fn metadata_for(&self, protocol: &str) -> Option<&[u8]> {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.as_slice())
    }
}

/// What a Kafka classic-protocol group has on top of a Runnel one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaGroup {
    /// Every member's `protocol_type` (e.g. `consumer`); kept while the group is empty, as Kafka
    /// shows it.
    pub protocol_type: String,
    /// Chosen when a generation forms; `None` while the group is empty.
    pub protocol: Option<String>,
    pub leader: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub state: GroupState,
    pub generation: u64,
    pub assignor: Option<Assignor>,
    pub members: BTreeMap<String, Member>,
    /// Committed offsets, each with the offsets-topic position of the record that set it, so that
    /// commits answered out of order still leave the latest written value.
    pub offsets: BTreeMap<TopicPartition, (OffsetValue, u64)>,
    /// `Some` for a group of Kafka consumers (classic protocol).
    pub kafka: Option<KafkaGroup>,
    rebalance_deadline_ms: u64,
    /// Kafka: a rebalance that an empty group's first join started completes no earlier than this
    /// (Kafka's `group.initial.rebalance.delay.ms`), so members starting together form one
    /// generation instead of a cascade of rebalances.
    hold_until_ms: u64,
    /// Offsets-topic position of the latest group record applied.
    record_position: u64,
    /// Counts (re)joins, for [`Member::join_order`].
    joins: u64,
    /// Kafka: the leader's assignment while the coordinator stores it (a second SyncGroup of the
    /// leader meanwhile waits like a follower's instead of storing it twice).
    pending_assignment: Option<BTreeMap<String, Vec<u8>>>,
}

impl Group {
    fn new(name: &str) -> Self {
        Group {
            name: name.to_string(),
            state: GroupState::Empty,
            generation: 0,
            assignor: None,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            kafka: None,
            rebalance_deadline_ms: 0,
            hold_until_ms: 0,
            record_position: 0,
            joins: 0,
            pending_assignment: None,
        }
    }

    /// Kafka's `protocol_type`: the Kafka members' one, [`RUNNEL_PROTOCOL_TYPE`] for a group that
    /// has had Runnel generations, empty for a group that only has offsets.
    pub fn protocol_type(&self) -> &str {
        match &self.kafka {
            Some(k) => &k.protocol_type,
            None if self.generation > 0 || self.assignor.is_some() => RUNNEL_PROTOCOL_TYPE,
            None => "",
        }
    }

    /// The generation's protocol: the Kafka protocol chosen, or the Runnel assignor.
    pub fn protocol(&self) -> String {
        match &self.kafka {
            Some(k) => k.protocol.clone().unwrap_or_default(),
            None => self.assignor.map(|a| a.name().to_string()).unwrap_or_default(),
        }
    }

    /// Adds a new member, which starts a rebalance unless one is under way. `initial_delay_ms`:
    /// how long a Kafka group that had no members holds its first rebalance open for more members,
    /// each new one extending the hold (never past the rebalance deadline), as Kafka does.
    fn admit(&mut self, member: Member, now_ms: u64, initial_delay_ms: u64) {
        let id = member.id.clone();
        let was_empty = self.members.is_empty();
        self.members.insert(id.clone(), member);
        if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now_ms, Some(&id));
        }
        if self.kafka.is_some() && initial_delay_ms > 0 && (was_empty || now_ms < self.hold_until_ms) {
            self.hold_until_ms = (now_ms + initial_delay_ms).min(self.rebalance_deadline_ms);
        }
    }

    fn start_rebalance(&mut self, now_ms: u64, except: Option<&str>) {
        self.state = GroupState::PreparingRebalance;
        // A leader's assignment still being stored belongs to the generation being replaced.
        self.pending_assignment = None;
        for m in self.members.values_mut() {
            m.joined = except == Some(m.id.as_str());
        }
        let longest = self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + longest;
    }

    /// Whether every partition of every topic a member subscribes to is assigned to some member.
    fn covers_subscription(&self, partitions: &BTreeMap<String, u32>) -> bool {
        let assigned: BTreeSet<&TopicPartition> = self.members.values().flat_map(|m| m.assignment.iter()).collect();
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| m.topics.iter()).collect();
        topics.into_iter().all(|t| {
            (0..partitions.get(t).copied().unwrap_or(0)).all(|p| assigned.contains(&TopicPartition::new(t.clone(), p)))
        })
    }

    /// The record that makes this generation survive a coordinator failover.
    pub fn to_value(&self) -> GroupValue {
        self.value_with(None)
    }

    /// [`Group::to_value`], with the Kafka members' assignments taken from `assignment` (the
    /// leader's, about to be stored) when given.
    fn value_with(&self, assignment: Option<&BTreeMap<String, Vec<u8>>>) -> GroupValue {
        let protocol = self.kafka.as_ref().and_then(|k| k.protocol.as_deref());
        GroupValue {
            generation: self.generation,
            assignor: self.assignor.map(|a| a.name().to_string()),
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    assignment: m.assignment.iter().cloned().collect(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_host: m.client_host.clone(),
                    protocol_metadata: protocol.and_then(|p| m.metadata_for(p)).map(<[u8]>::to_vec),
                    assignment_bytes: match assignment {
                        Some(a) => Some(a.get(&m.id).cloned().unwrap_or_default()),
                        None => m.assignment_bytes.clone(),
                    },
                })
                .collect(),
            kafka: self.kafka.as_ref().map(|k| KafkaGroupValue {
                protocol_type: k.protocol_type.clone(),
                protocol: k.protocol.clone(),
                leader: k.leader.clone(),
            }),
        }
    }

    /// What a Kafka member's JoinGroup is answered for the current generation: the leader also
    /// gets every member's metadata for the chosen protocol.
    fn kafka_answer(&self, member_id: &str) -> KafkaJoinAnswer {
        let protocol = self.kafka.as_ref().and_then(|k| k.protocol.clone()).unwrap_or_default();
        let leader = self.kafka.as_ref().and_then(|k| k.leader.clone()).unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| KafkaMemberMetadata {
                    member_id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol).map(<[u8]>::to_vec).unwrap_or_default(),
                })
                .collect()
        } else {
            Vec::new()
        };
        KafkaJoinAnswer { generation: self.generation, protocol, leader, member_id: member_id.to_string(), members }
    }

    /// Forms a Kafka generation from the members that rejoined: the leader (the previous one if it
    /// is still a member, else the first to rejoin) and the protocol (the first of the leader's
    /// that every member supports — Kafka has the members vote; preferring the leader's order is
    /// simpler and picks a protocol every member supports all the same).
    fn form_kafka_generation(&mut self, now_ms: u64) -> BTreeMap<String, KafkaJoinAnswer> {
        let previous = self.kafka.as_ref().and_then(|k| k.leader.clone()).filter(|l| self.members.contains_key(l));
        let first_joined = self.members.values().min_by_key(|m| m.join_order).map(|m| m.id.clone());
        let leader = previous.or(first_joined).unwrap_or_default();
        let leader_protocols: Vec<&str> = self
            .members
            .get(&leader)
            .map(|m| m.protocols.iter().map(|(p, _)| p.as_str()).collect())
            .unwrap_or_default();
        let everyone = |p: &str| self.members.values().all(|m| m.metadata_for(p).is_some());
        // kafka_join refuses a member sharing no protocol with the others, so one is always found;
        // the leader's first is only a fallback should that ever not hold.
        let protocol = leader_protocols
            .iter()
            .find(|p| everyone(p))
            .or(leader_protocols.first())
            .map(|p| p.to_string())
            .unwrap_or_default();
        for m in self.members.values_mut() {
            m.joined = false;
            m.last_seen_ms = now_ms;
            m.assignment_bytes = None;
            m.assignment.clear();
        }
        if let Some(k) = self.kafka.as_mut() {
            k.protocol = Some(protocol);
            k.leader = Some(leader);
        }
        self.state = GroupState::CompletingRebalance;
        self.pending_assignment = None;
        self.members.keys().map(|id| (id.clone(), self.kafka_answer(id))).collect()
    }
}

/// A Kafka classic-protocol JoinGroup.
#[derive(Debug, Clone)]
pub struct KafkaJoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// The id a new member gets (the caller makes it unique).
    pub fresh_member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// (protocol name, metadata), most preferred first.
    pub protocols: Vec<(String, Vec<u8>)>,
}

/// A member as the Kafka leader's JoinGroup answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMemberMetadata {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The member's metadata for the generation's protocol.
    pub metadata: Vec<u8>,
}

/// A Kafka JoinGroup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaJoinAnswer {
    pub generation: u64,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member, in the leader's answer only.
    pub members: Vec<KafkaMemberMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaJoinOutcome {
    /// A known member rejoined with unchanged protocols while no rebalance is under way.
    Ready(KafkaJoinAnswer),
    /// Answer once the rebalance completes ([`Groups::complete_if_ready`]).
    Wait { member_id: String },
}

/// What to do with a Kafka SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The generation's assignment is known: this member's part.
    Ready(Vec<u8>),
    /// The leader's assignment: store `value` (the generation with every member's assignment),
    /// then call [`Groups::kafka_sync_stored`] (or [`Groups::kafka_sync_failed`]).
    Store(GroupValue),
    /// Wait for the leader's assignment to be stored, at most `rebalance_timeout_ms`.
    Wait { rebalance_timeout_ms: u64 },
}

/// A JoinGroup.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// The id a new member gets (the caller makes it unique).
    pub fresh_member_id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub assignor: Assignor,
    pub owned: BTreeSet<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The member is already in the stable generation with an unchanged subscription.
    Ready { member_id: String, generation: u64, assignment: BTreeSet<TopicPartition> },
    /// Answer once the rebalance completes ([`Groups::complete_if_ready`]).
    Wait { member_id: String },
}

/// A rebalance that completed (or a group that became empty): store `value`, then answer the
/// waiting members.
#[derive(Debug, Clone)]
pub struct Completed {
    pub group: String,
    pub generation: u64,
    /// Runnel groups: each member's partitions.
    pub assignments: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Kafka groups: each member's JoinGroup answer.
    pub kafka_answers: BTreeMap<String, KafkaJoinAnswer>,
    /// Members removed because they did not rejoin in time.
    pub removed: Vec<String>,
    pub value: GroupValue,
}

/// All groups one coordinator (one offsets-topic partition) is responsible for.
#[derive(Debug, Default)]
pub struct Groups {
    pub groups: BTreeMap<String, Group>,
    /// Kafka's `group.initial.rebalance.delay.ms` for Kafka groups (0: none; the coordinator uses
    /// [`KAFKA_INITIAL_REBALANCE_DELAY_MS`]).
    pub kafka_initial_delay_ms: u64,
}

/// Kafka's default `group.initial.rebalance.delay.ms`: consumers started together (a deployment
/// rolling out) join one first generation instead of rebalancing once per member.
pub const KAFKA_INITIAL_REBALANCE_DELAY_MS: u64 = 3_000;

fn error(code: ErrorCode, msg: String) -> RunnelError {
    RunnelError::new(code, msg)
}

impl Groups {
    pub fn get(&self, group: &str) -> Option<&Group> {
        self.groups.get(group)
    }

    pub fn join(&mut self, req: JoinRequest, now_ms: u64) -> Result<JoinOutcome, RunnelError> {
        let g = self.groups.entry(req.group.clone()).or_insert_with(|| Group::new(&req.group));
        if !req.member_id.is_empty() && !g.members.contains_key(&req.member_id) {
            return Err(error(
                ErrorCode::UnknownMember,
                format!(
                    "member '{}' is not in group '{}' (its session may have expired); rejoin as a new member",
                    req.member_id, req.group
                ),
            ));
        }
        if let Some(k) = g.kafka.as_ref().filter(|_| !g.members.is_empty()) {
            return Err(error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group '{}' is a group of {} Kafka consumer(s) (protocol_type '{}'); a Runnel consumer \
                     cannot join it until they have left",
                    req.group,
                    g.members.len(),
                    k.protocol_type
                ),
            ));
        }
        // An empty group takes the kind of its first member.
        g.kafka = None;
        if let Some(a) = g.assignor.filter(|_| !g.members.is_empty()) {
            if a != req.assignor {
                return Err(error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group '{}' uses the {} assignor; this member asked for {}",
                        req.group,
                        a.name(),
                        req.assignor.name()
                    ),
                ));
            }
        }
        g.assignor = Some(req.assignor);
        g.joins += 1;
        if req.member_id.is_empty() {
            let id = req.fresh_member_id.clone();
            g.admit(
                Member {
                    id: id.clone(),
                    client_id: req.client_id,
                    topics: req.topics,
                    session_timeout_ms: req.session_timeout_ms,
                    rebalance_timeout_ms: req.rebalance_timeout_ms,
                    last_seen_ms: now_ms,
                    joined: true,
                    owned: req.owned,
                    assignment: BTreeSet::new(),
                    group_instance_id: None,
                    client_host: String::new(),
                    protocols: Vec::new(),
                    assignment_bytes: None,
                    join_order: g.joins,
                },
                now_ms,
                0,
            );
            return Ok(JoinOutcome::Wait { member_id: id });
        }
        let id = req.member_id.clone();
        let stable = g.state == GroupState::Stable;
        let Some(m) = g.members.get_mut(&id) else {
            return Err(error(ErrorCode::UnknownMember, format!("member '{id}' is not in group '{}'", req.group)));
        };
        let same_subscription = m.topics == req.topics;
        m.last_seen_ms = now_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.owned = req.owned;
        if stable && same_subscription {
            // A rejoin that changes nothing (e.g. a retried JoinGroup whose answer was lost).
            return Ok(JoinOutcome::Ready {
                member_id: id,
                generation: g.generation,
                assignment: m.assignment.clone(),
            });
        }
        m.topics = req.topics;
        m.joined = true;
        m.join_order = g.joins;
        if g.state != GroupState::PreparingRebalance {
            g.start_rebalance(now_ms, Some(&id));
        }
        Ok(JoinOutcome::Wait { member_id: id })
    }

    /// A Kafka classic-protocol JoinGroup. Every member must give the same `protocol_type` and
    /// share at least one protocol with all the others; a group of Runnel members is refused.
    pub fn kafka_join(&mut self, req: KafkaJoinRequest, now_ms: u64) -> Result<KafkaJoinOutcome, RunnelError> {
        let delay = self.kafka_initial_delay_ms;
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "a JoinGroup for group '{}' needs a protocol_type and at least one protocol (got type '{}' and \
                     {} protocol(s))",
                    req.group,
                    req.protocol_type,
                    req.protocols.len()
                ),
            ));
        }
        let g = self.groups.entry(req.group.clone()).or_insert_with(|| Group::new(&req.group));
        if !req.member_id.is_empty() && !g.members.contains_key(&req.member_id) {
            return Err(error(
                ErrorCode::UnknownMember,
                format!(
                    "member '{}' is not in group '{}' (its session may have expired); rejoin as a new member",
                    req.member_id, req.group
                ),
            ));
        }
        let offered: Vec<&str> = req.protocols.iter().map(|(p, _)| p.as_str()).collect();
        if !g.members.is_empty() {
            let Some(k) = &g.kafka else {
                return Err(error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group '{}' is a Runnel-protocol group with {} member(s); a Kafka consumer cannot join it \
                         until they have left",
                        req.group,
                        g.members.len()
                    ),
                ));
            };
            if k.protocol_type != req.protocol_type {
                return Err(error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group '{}' has protocol_type '{}'; this member asked for '{}'",
                        req.group, k.protocol_type, req.protocol_type
                    ),
                ));
            }
            // The protocols every other member supports: the joiner must support one of them too.
            let mut others = g.members.values().filter(|m| m.id != req.member_id).peekable();
            if others.peek().is_some() {
                let common: Vec<&str> = offered
                    .iter()
                    .copied()
                    .filter(|p| {
                        g.members.values().filter(|m| m.id != req.member_id).all(|m| m.metadata_for(p).is_some())
                    })
                    .collect();
                if common.is_empty() {
                    let theirs: BTreeSet<&str> =
                        others.flat_map(|m| m.protocols.iter().map(|(p, _)| p.as_str())).collect();
                    return Err(error(
                        ErrorCode::InconsistentGroupProtocol,
                        format!(
                            "group '{}': this member offers protocols {offered:?}, none of which every other member \
                             supports (they offer {theirs:?}); use an assignor the group already uses",
                            req.group
                        ),
                    ));
                }
            }
        } else {
            // An empty group takes the kind (and protocol_type) of its first member.
            g.assignor = None;
            g.kafka = Some(KafkaGroup { protocol_type: req.protocol_type.clone(), protocol: None, leader: None });
        }
        g.joins += 1;
        if req.member_id.is_empty() {
            let id = req.fresh_member_id.clone();
            g.admit(
                Member {
                    id: id.clone(),
                    client_id: req.client_id,
                    topics: BTreeSet::new(),
                    session_timeout_ms: req.session_timeout_ms,
                    rebalance_timeout_ms: req.rebalance_timeout_ms,
                    last_seen_ms: now_ms,
                    joined: true,
                    owned: BTreeSet::new(),
                    assignment: BTreeSet::new(),
                    group_instance_id: req.group_instance_id,
                    client_host: req.client_host,
                    protocols: req.protocols,
                    assignment_bytes: None,
                    join_order: g.joins,
                },
                now_ms,
                delay,
            );
            return Ok(KafkaJoinOutcome::Wait { member_id: id });
        }
        let id = req.member_id.clone();
        let state = g.state;
        let Some(m) = g.members.get_mut(&id) else {
            return Err(error(ErrorCode::UnknownMember, format!("member '{id}' is not in group '{}'", req.group)));
        };
        let unchanged = m.protocols == req.protocols;
        let is_leader = g.kafka.as_ref().and_then(|k| k.leader.as_deref()) == Some(id.as_str());
        m.last_seen_ms = now_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.group_instance_id = req.group_instance_id;
        // A rejoin that changes nothing (e.g. a retried JoinGroup whose answer was lost): the
        // current generation, as Kafka answers it. Except the leader's in a stable group: a leader
        // rejoins because it wants to assign again (its view of the topics changed: it may have
        // assigned before it knew a topic's partitions), so, as in Kafka, that starts a rebalance.
        let answer_now = match state {
            GroupState::CompletingRebalance => unchanged,
            GroupState::Stable => unchanged && !is_leader,
            _ => false,
        };
        if answer_now {
            return Ok(KafkaJoinOutcome::Ready(g.kafka_answer(&id)));
        }
        m.protocols = req.protocols;
        m.joined = true;
        m.join_order = g.joins;
        if state != GroupState::PreparingRebalance {
            g.start_rebalance(now_ms, Some(&id));
        }
        Ok(KafkaJoinOutcome::Wait { member_id: id })
    }

    /// A Kafka SyncGroup: a follower waits for the leader's; the leader's brings the assignment
    /// (member id → bytes; members it names that are not in the group are ignored, members it
    /// leaves out get empty bytes, as in Kafka).
    pub fn kafka_sync(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u64,
        assignment: Vec<(String, Vec<u8>)>,
        now_ms: u64,
    ) -> Result<SyncOutcome, RunnelError> {
        let g = self.member_group(group, member_id)?;
        let Some(k) = &g.kafka else {
            return Err(error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group '{group}' speaks the Runnel protocol, which has no SyncGroup (its JoinGroup answers carry \
                     the assignment)"
                ),
            ));
        };
        let is_leader = k.leader.as_deref() == Some(member_id);
        if generation != g.generation {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!("group '{group}' is at generation {}, not {generation}; rejoin", g.generation),
            ));
        }
        let Some(m) = g.members.get_mut(member_id) else {
            return Err(error(ErrorCode::UnknownMember, format!("member '{member_id}' is not in group '{group}'")));
        };
        m.last_seen_ms = now_ms;
        let rebalance_timeout_ms = m.rebalance_timeout_ms;
        match g.state {
            GroupState::Empty | GroupState::PreparingRebalance => Err(error(
                ErrorCode::RebalanceInProgress,
                format!("group '{group}' is rebalancing; rejoin to get this member's assignment"),
            )),
            GroupState::Stable => Ok(SyncOutcome::Ready(m.assignment_bytes.clone().unwrap_or_default())),
            GroupState::CompletingRebalance if is_leader && g.pending_assignment.is_none() => {
                let mut pending: BTreeMap<String, Vec<u8>> =
                    g.members.keys().map(|id| (id.clone(), Vec::new())).collect();
                for (id, bytes) in assignment {
                    if let Some(slot) = pending.get_mut(&id) {
                        *slot = bytes;
                    }
                }
                let value = g.value_with(Some(&pending));
                g.pending_assignment = Some(pending);
                Ok(SyncOutcome::Store(value))
            }
            GroupState::CompletingRebalance => Ok(SyncOutcome::Wait { rebalance_timeout_ms }),
        }
    }

    /// The leader's assignment for `generation` is stored: the group is stable. Returns each
    /// member's assignment, to answer the waiting SyncGroups; `None` when the group has moved on
    /// meanwhile (a rebalance started: the waiting members were told to rejoin).
    pub fn kafka_sync_stored(&mut self, group: &str, generation: u64) -> Option<BTreeMap<String, Vec<u8>>> {
        let g = self.groups.get_mut(group)?;
        if g.generation != generation || g.state != GroupState::CompletingRebalance {
            return None;
        }
        let pending = g.pending_assignment.take()?;
        let mut out = BTreeMap::new();
        for (id, m) in g.members.iter_mut() {
            let bytes = pending.get(id).cloned().unwrap_or_default();
            m.assignment_bytes = Some(bytes.clone());
            out.insert(id.clone(), bytes);
        }
        g.state = GroupState::Stable;
        Some(out)
    }

    /// Storing the leader's assignment failed: the members rejoin, as in Kafka (the caller then
    /// calls [`Groups::complete_if_ready`] as after any rebalance start).
    pub fn kafka_sync_failed(&mut self, group: &str, generation: u64, now_ms: u64) {
        if let Some(g) = self.groups.get_mut(group) {
            if g.generation == generation && g.state == GroupState::CompletingRebalance {
                g.start_rebalance(now_ms, None);
            }
        }
    }

    /// Completes `group`'s rebalance if every member has rejoined or its deadline has passed.
    /// `partitions`: partition count per topic (from the cluster metadata).
    pub fn complete_if_ready(
        &mut self,
        group: &str,
        now_ms: u64,
        partitions: &BTreeMap<String, u32>,
    ) -> Option<Completed> {
        let g = self.groups.get_mut(group)?;
        if g.state != GroupState::PreparingRebalance {
            return None;
        }
        let all_joined = g.members.values().all(|m| m.joined);
        if (!all_joined || now_ms < g.hold_until_ms) && now_ms < g.rebalance_deadline_ms {
            return None;
        }
        let removed: Vec<String> = g.members.values().filter(|m| !m.joined).map(|m| m.id.clone()).collect();
        for id in &removed {
            g.members.remove(id);
        }
        g.generation += 1;
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.assignor = None;
            if let Some(k) = g.kafka.as_mut() {
                k.protocol = None;
                k.leader = None;
            }
            return Some(Completed {
                group: group.to_string(),
                generation: g.generation,
                assignments: BTreeMap::new(),
                kafka_answers: BTreeMap::new(),
                removed,
                value: g.to_value(),
            });
        }
        if g.kafka.is_some() {
            let kafka_answers = g.form_kafka_generation(now_ms);
            return Some(Completed {
                group: group.to_string(),
                generation: g.generation,
                assignments: BTreeMap::new(),
                kafka_answers,
                removed,
                value: g.to_value(),
            });
        }
        let assignor = g.assignor.unwrap_or(Assignor::Range);
        let inputs = g.members.iter().map(|(id, m)| (id.clone(), (m.topics.clone(), m.owned.clone()))).collect();
        let target = assignor.assign(&inputs, partitions);
        let mut withheld = false;
        let mut assignments = BTreeMap::new();
        for (id, m) in g.members.iter_mut() {
            let mut mine = target.get(id).cloned().unwrap_or_default();
            if assignor.is_cooperative() {
                // Not yet: another member still owns it and has not been told to let it go.
                let before = mine.len();
                mine.retain(|tp| !inputs.iter().any(|(other, (_, owned))| other != id && owned.contains(tp)));
                withheld |= mine.len() != before;
            }
            m.assignment = mine.clone();
            m.joined = false;
            m.last_seen_ms = now_ms;
            assignments.insert(id.clone(), mine);
        }
        g.state = GroupState::Stable;
        let done = Completed {
            group: group.to_string(),
            generation: g.generation,
            assignments,
            kafka_answers: BTreeMap::new(),
            removed,
            value: g.to_value(),
        };
        if withheld {
            // The members giving partitions up learn of this rebalance from their next heartbeat,
            // let those partitions go, and rejoin; then they are handed over.
            g.start_rebalance(now_ms, None);
        }
        Some(done)
    }

    pub fn heartbeat(&mut self, group: &str, member_id: &str, generation: u64, now_ms: u64) -> Result<(), RunnelError> {
        let g = self.member_group(group, member_id)?;
        let state = g.state;
        let current = g.generation;
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen_ms = now_ms;
        }
        if state == GroupState::PreparingRebalance {
            return Err(error(
                ErrorCode::RebalanceInProgress,
                format!("group '{group}' is rebalancing; rejoin to get this member's partitions"),
            ));
        }
        if generation != current {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!("group '{group}' is at generation {current}, not {generation}; rejoin"),
            ));
        }
        Ok(())
    }

    fn member_group(&mut self, group: &str, member_id: &str) -> Result<&mut Group, RunnelError> {
        let g = self.groups.get_mut(group).filter(|g| g.members.contains_key(member_id)).ok_or_else(|| {
            error(
                ErrorCode::UnknownMember,
                format!("member '{member_id}' is not in group '{group}' (its session may have expired); rejoin"),
            )
        })?;
        Ok(g)
    }

    /// Removes a member; the others rebalance (or the group becomes empty: the caller then calls
    /// [`Groups::complete_if_ready`], which reports it).
    pub fn leave(&mut self, group: &str, member_id: &str, now_ms: u64) -> Result<(), RunnelError> {
        let g = self.member_group(group, member_id)?;
        g.members.remove(member_id);
        // A rebalance under way keeps its deadline; a stable (or, for Kafka, completing) group
        // starts one.
        if g.state != GroupState::PreparingRebalance || g.members.is_empty() {
            g.start_rebalance(now_ms, None);
        }
        Ok(())
    }

    /// Removes members whose session expired (members waiting in a JoinGroup do not expire) and
    /// starts the rebalances that causes. Returns the groups that are rebalancing, for
    /// [`Groups::complete_if_ready`].
    ///
    /// A stable group whose assignment no longer covers every partition of its members' topics
    /// (`partitions`: partition count per topic, from the cluster metadata) also rebalances: a
    /// topic grew, or the coordinator moved between a cooperative generation that withheld
    /// partitions and the follow-up rebalance that hands them over (that follow-up lived only in
    /// the old coordinator's memory; the stored generation shows the gap).
    pub fn tick(&mut self, now_ms: u64, partitions: &BTreeMap<String, u32>) -> Vec<String> {
        let mut rebalancing = Vec::new();
        for g in self.groups.values_mut() {
            // Kafka members' subscriptions are opaque to the coordinator (their clients watch the
            // metadata and rejoin themselves).
            if g.state == GroupState::Stable && g.kafka.is_none() && !g.covers_subscription(partitions) {
                g.start_rebalance(now_ms, None);
            }
            let waiting = g.state == GroupState::PreparingRebalance;
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| !(waiting && m.joined) && now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                g.members.remove(id);
            }
            if !expired.is_empty() && matches!(g.state, GroupState::Stable | GroupState::CompletingRebalance) {
                g.start_rebalance(now_ms, None);
            }
            if g.state == GroupState::PreparingRebalance {
                rebalancing.push(g.name.clone());
            }
        }
        rebalancing
    }

    /// Checks that a commit may be made: by a member of the current generation, or, when the
    /// group has no members, from outside any generation (`member_id` empty: an admin reset, the
    /// only way an offset moves backwards). A member never moves a committed offset backwards
    /// (invariant 8).
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        generation: i64,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), RunnelError> {
        let g = self.groups.get(group);
        let members = g.map_or(0, |g| g.members.len());
        if member_id.is_empty() {
            if members > 0 {
                return Err(error(
                    ErrorCode::RebalanceInProgress,
                    format!("group '{group}' has {members} active member(s); only they may commit (stop them first)"),
                ));
            }
            return Ok(());
        }
        let Some(g) = g.filter(|g| g.members.contains_key(member_id)) else {
            return Err(error(
                ErrorCode::UnknownMember,
                format!("member '{member_id}' is not in group '{group}'; its commit is refused (rejoin)"),
            ));
        };
        if generation != g.generation as i64 {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!(
                    "commit from generation {generation} refused: group '{group}' is at generation {}",
                    g.generation
                ),
            ));
        }
        if g.state == GroupState::CompletingRebalance {
            // As Kafka: the generation has formed but its assignment is not out yet, so no member
            // knows what it owns in it.
            return Err(error(
                ErrorCode::RebalanceInProgress,
                format!(
                    "group '{group}' is completing generation {} (waiting for its leader's SyncGroup); commit after \
                     SyncGroup",
                    g.generation
                ),
            ));
        }
        // A Kafka consumer may seek back and commit the earlier position (Kafka's commits are
        // "last write wins", and clients rely on it); Runnel's own members never move one back.
        let may_regress = g.kafka.is_some();
        for (tp, o) in offsets.iter().filter(|_| !may_regress) {
            if let Some((stored, _)) = g.offsets.get(tp).filter(|(v, _)| v.offset > *o) {
                return Err(error(
                    ErrorCode::CommitRegression,
                    format!(
                        "group '{group}' has committed offset {} for {tp}; a member may not move it back to {o} \
                         (use `runnel group reset-offsets` with the group stopped)",
                        stored.offset
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies a stored offset (or its deletion) written at `position` in the offsets topic.
    pub fn apply_offset(&mut self, group: &str, tp: TopicPartition, value: Option<OffsetValue>, position: u64) {
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group::new(group));
        if g.offsets.get(&tp).is_some_and(|(_, at)| *at > position) {
            return;
        }
        match value {
            Some(v) => {
                g.offsets.insert(tp, (v, position));
            }
            None => {
                g.offsets.remove(&tp);
            }
        }
    }

    /// Applies a stored group record while loading. Members come back with a fresh session: those
    /// that are gone expire and the group rebalances. A Kafka generation stored before its leader's
    /// assignment was comes back rebalancing: its members never learnt what they own, so they must
    /// rejoin.
    pub fn apply_group(&mut self, group: &str, value: Option<GroupValue>, position: u64, now_ms: u64) {
        let Some(v) = value else {
            self.groups.remove(group);
            return;
        };
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group::new(group));
        if g.record_position > position {
            return;
        }
        g.record_position = position;
        g.generation = v.generation;
        g.assignor = v.assignor.as_deref().and_then(|a| Assignor::parse(a).ok());
        g.kafka =
            v.kafka.map(|k| KafkaGroup { protocol_type: k.protocol_type, protocol: k.protocol, leader: k.leader });
        g.pending_assignment = None;
        let protocol = g.kafka.as_ref().and_then(|k| k.protocol.clone());
        g.members = v
            .members
            .into_iter()
            .map(|m| {
                let assignment: BTreeSet<TopicPartition> = m.assignment.into_iter().collect();
                // Only the chosen protocol's metadata is stored (as Kafka does): a member that
                // rejoins offering more protocols starts a rebalance.
                let protocols = match (&protocol, m.protocol_metadata) {
                    (Some(p), Some(md)) => vec![(p.clone(), md)],
                    _ => Vec::new(),
                };
                (
                    m.id.clone(),
                    Member {
                        id: m.id,
                        client_id: m.client_id,
                        topics: m.topics.into_iter().collect(),
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        last_seen_ms: now_ms,
                        joined: false,
                        owned: assignment.clone(),
                        assignment,
                        group_instance_id: m.group_instance_id,
                        client_host: m.client_host,
                        protocols,
                        assignment_bytes: m.assignment_bytes,
                        join_order: 0,
                    },
                )
            })
            .collect();
        let unsynced = g.kafka.is_some() && g.members.values().any(|m| m.assignment_bytes.is_none());
        if g.members.is_empty() {
            g.state = GroupState::Empty;
        } else if unsynced {
            g.start_rebalance(now_ms, None);
        } else {
            g.state = GroupState::Stable;
        }
    }

    /// Removes an empty group and its offsets; returns the offsets it had (to store tombstones).
    pub fn delete(&mut self, group: &str) -> Result<Vec<TopicPartition>, RunnelError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| error(ErrorCode::UnknownGroup, format!("group '{group}' does not exist")))?;
        if !g.members.is_empty() {
            return Err(error(
                ErrorCode::GroupNotEmpty,
                format!("group '{group}' has {} active member(s); stop them before deleting it", g.members.len()),
            ));
        }
        let tps = g.offsets.keys().cloned().collect();
        self.groups.remove(group);
        Ok(tps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(gs: &mut Groups, member: &str, fresh: &str, owned: &[u32], assignor: Assignor, now: u64) -> JoinOutcome {
        gs.join(
            JoinRequest {
                group: "g".into(),
                member_id: member.into(),
                fresh_member_id: fresh.into(),
                client_id: "c".into(),
                topics: BTreeSet::from(["t".to_string()]),
                session_timeout_ms: 1000,
                rebalance_timeout_ms: 5000,
                assignor,
                owned: owned.iter().map(|p| TopicPartition::new("t", *p)).collect(),
            },
            now,
        )
        .unwrap()
    }

    fn parts() -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_string(), 6)])
    }

    fn nums(s: &BTreeSet<TopicPartition>) -> Vec<u32> {
        s.iter().map(|tp| tp.partition).collect()
    }

    /// Three members join a 6-partition topic and get 2 each in generation 1.
    fn three_members(assignor: Assignor) -> Groups {
        let mut gs = Groups::default();
        assert_eq!(join(&mut gs, "", "a", &[], assignor, 0), JoinOutcome::Wait { member_id: "a".into() });
        join(&mut gs, "", "b", &[], assignor, 1);
        join(&mut gs, "", "c", &[], assignor, 2);
        let done = gs.complete_if_ready("g", 3, &parts()).expect("everyone joined");
        assert_eq!(done.generation, 1);
        assert!(done.assignments.values().all(|s| s.len() == 2), "{:?}", done.assignments);
        gs
    }

    fn kjoin(
        gs: &mut Groups,
        member: &str,
        fresh: &str,
        protocols: &[&str],
        now: u64,
    ) -> Result<KafkaJoinOutcome, RunnelError> {
        gs.kafka_join(
            KafkaJoinRequest {
                group: "g".into(),
                member_id: member.into(),
                fresh_member_id: fresh.into(),
                group_instance_id: None,
                client_id: "kc".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 1000,
                rebalance_timeout_ms: 5000,
                protocol_type: "consumer".into(),
                // Each member's metadata names it, so the leader's list shows whose is whose.
                protocols: protocols
                    .iter()
                    .map(|p| (p.to_string(), format!("{p}:{member}{fresh}").into_bytes()))
                    .collect(),
            },
            now,
        )
    }

    /// Kafka members a and b join; generation 1 forms with a as leader and `range` as protocol.
    fn kafka_pair() -> (Groups, Completed) {
        let mut gs = Groups::default();
        let a = kjoin(&mut gs, "", "a", &["range", "roundrobin"], 0).unwrap();
        assert_eq!(a, KafkaJoinOutcome::Wait { member_id: "a".into() });
        kjoin(&mut gs, "", "b", &["roundrobin", "range"], 1).unwrap();
        let done = gs.complete_if_ready("g", 2, &BTreeMap::new()).expect("both joined");
        (gs, done)
    }

    /// Found by kafka-python: a consumer's first JoinGroup may precede its metadata, so as leader
    /// it assigns nothing, then rejoins unchanged once it knows the topic. Answered with the
    /// current generation, its new assignment was never taken and it consumed nothing; as in
    /// Kafka, a stable group's leader rejoining starts a rebalance.
    #[test]
    fn a_stable_leader_that_rejoins_unchanged_gets_a_new_generation() {
        let mut gs = Groups::default();
        kjoin(&mut gs, "", "a", &["range"], 0).unwrap();
        gs.complete_if_ready("g", 1, &BTreeMap::new()).expect("a alone");
        let SyncOutcome::Store(_) = gs.kafka_sync("g", "a", 1, vec![("a".into(), vec![])], 2).unwrap() else {
            panic!("the leader's sync is stored")
        };
        gs.kafka_sync_stored("g", 1).unwrap();
        assert_eq!(gs.get("g").unwrap().state, GroupState::Stable);
        assert!(matches!(kjoin(&mut gs, "a", "", &["range"], 3).unwrap(), KafkaJoinOutcome::Wait { .. }));
        let done = gs.complete_if_ready("g", 4, &BTreeMap::new()).expect("the leader rejoined");
        assert_eq!((done.generation, done.kafka_answers["a"].leader.as_str()), (2, "a"));
        let SyncOutcome::Store(_) = gs.kafka_sync("g", "a", 2, vec![("a".into(), b"t:0".to_vec())], 5).unwrap() else {
            panic!("the new assignment is stored")
        };
        assert_eq!(gs.kafka_sync_stored("g", 2).unwrap()["a"], b"t:0".to_vec());
    }

    #[test]
    fn a_kafka_member_may_commit_an_earlier_offset_after_seeking_back() {
        let mut gs = Groups::default();
        kjoin(&mut gs, "", "a", &["range"], 0).unwrap();
        gs.complete_if_ready("g", 1, &BTreeMap::new()).expect("a alone");
        gs.kafka_sync("g", "a", 1, vec![("a".into(), vec![])], 2).unwrap();
        gs.kafka_sync_stored("g", 1).unwrap();
        let t0 = TopicPartition::new("t", 0);
        let v = OffsetValue { offset: 50, metadata: String::new(), commit_timestamp_ms: 0, generation: 1 };
        gs.apply_offset("g", t0.clone(), Some(v), 1);
        gs.check_commit("g", "a", 1, &[(t0, 10)]).unwrap();
    }

    /// Found by librdkafka's test 0113 (l_unsubscribe): two consumers subscribing together must
    /// form one first generation; completing at once for the first made it take every partition
    /// and give half back a moment later (an extra assignment and revocation).
    #[test]
    fn an_empty_kafka_groups_first_rebalance_waits_for_members_starting_together() {
        let mut gs = Groups { kafka_initial_delay_ms: 3000, ..Groups::default() };
        kjoin(&mut gs, "", "a", &["range"], 0).unwrap();
        assert!(gs.complete_if_ready("g", 10, &BTreeMap::new()).is_none(), "held open for more members");
        kjoin(&mut gs, "", "b", &["range"], 2000).unwrap();
        assert!(gs.complete_if_ready("g", 4000, &BTreeMap::new()).is_none(), "b's join extended the hold");
        let done = gs.complete_if_ready("g", 5000, &BTreeMap::new()).expect("the hold is over");
        assert_eq!((done.generation, done.kafka_answers.len()), (1, 2), "one generation with both");
        // A later member joining a stable group is not held: everyone is asked to rejoin at once.
        kjoin(&mut gs, "", "c", &["range"], 6000).unwrap();
        for m in ["a", "b"] {
            kjoin(&mut gs, m, "", &["range"], 6001).unwrap();
        }
        assert!(gs.complete_if_ready("g", 6002, &BTreeMap::new()).is_some());
    }

    #[test]
    fn kafka_join_forms_a_generation_with_a_leader_that_gets_every_member() {
        let (gs, done) = kafka_pair();
        assert_eq!(done.generation, 1);
        assert!(done.assignments.is_empty(), "the coordinator assigns nothing in a Kafka group");
        let a = &done.kafka_answers["a"];
        let b = &done.kafka_answers["b"];
        // The leader's preference wins: b prefers roundrobin but supports range.
        assert_eq!((a.generation, a.protocol.as_str(), a.leader.as_str()), (1, "range", "a"));
        assert_eq!(
            (b.generation, b.protocol.as_str(), b.leader.as_str(), b.member_id.as_str()),
            (1, "range", "a", "b")
        );
        assert!(b.members.is_empty(), "only the leader gets the member list");
        let listed: Vec<(&str, &[u8])> =
            a.members.iter().map(|m| (m.member_id.as_str(), m.metadata.as_slice())).collect();
        assert_eq!(listed, [("a", b"range:a".as_slice()), ("b", b"range:b".as_slice())]);
        let g = gs.get("g").unwrap();
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!((g.protocol_type(), g.protocol().as_str()), ("consumer", "range"));
        // The generation is stored without assignments yet.
        let kv = done.value.kafka.as_ref().unwrap();
        assert_eq!((kv.protocol.as_deref(), kv.leader.as_deref()), (Some("range"), Some("a")));
        assert!(done.value.members.iter().all(|m| m.assignment_bytes.is_none() && m.protocol_metadata.is_some()));
    }

    #[test]
    fn kafka_sync_stores_the_leaders_assignment_then_answers_the_followers() {
        let (mut gs, _) = kafka_pair();
        // Heartbeats are fine while the assignment is on its way; commits are not.
        gs.heartbeat("g", "b", 1, 3).unwrap();
        assert_eq!(gs.check_commit("g", "b", 1, &[]).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert_eq!(gs.kafka_sync("g", "b", 1, vec![], 4).unwrap(), SyncOutcome::Wait { rebalance_timeout_ms: 5000 });
        let e = gs.kafka_sync("g", "b", 2, vec![], 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::IllegalGeneration);
        assert_eq!(gs.kafka_sync("g", "zed", 1, vec![], 4).unwrap_err().code, ErrorCode::UnknownMember);
        let assignment = vec![("a".to_string(), b"A".to_vec()), ("ghost".to_string(), b"G".to_vec())];
        let SyncOutcome::Store(value) = gs.kafka_sync("g", "a", 1, assignment, 5).unwrap() else {
            panic!("the leader's sync is stored")
        };
        let stored: Vec<(&str, Option<&[u8]>)> =
            value.members.iter().map(|m| (m.id.as_str(), m.assignment_bytes.as_deref())).collect();
        assert_eq!(
            stored,
            [("a", Some(b"A".as_slice())), ("b", Some(b"".as_slice()))],
            "b got nothing; ghost is ignored"
        );
        // A retried leader sync while the first is being stored waits instead of storing again.
        assert!(matches!(gs.kafka_sync("g", "a", 1, vec![], 6).unwrap(), SyncOutcome::Wait { .. }));
        assert_eq!(gs.get("g").unwrap().state, GroupState::CompletingRebalance, "stable only once stored");
        let answers = gs.kafka_sync_stored("g", 1).unwrap();
        assert_eq!(answers, BTreeMap::from([("a".to_string(), b"A".to_vec()), ("b".to_string(), vec![])]));
        assert_eq!(gs.get("g").unwrap().state, GroupState::Stable);
        assert_eq!(gs.kafka_sync("g", "a", 1, vec![], 7).unwrap(), SyncOutcome::Ready(b"A".to_vec()));
        gs.check_commit("g", "b", 1, &[]).unwrap();
        // An unchanged rejoin of a follower is answered at once (a retried JoinGroup).
        let KafkaJoinOutcome::Ready(again) = kjoin(&mut gs, "b", "", &["roundrobin", "range"], 8).unwrap() else {
            panic!("unchanged rejoin of a stable follower")
        };
        assert_eq!((again.generation, again.members.len()), (1, 0), "a follower gets no member list");
        // A rejoin with other protocols rebalances; the leader stays the leader.
        assert!(matches!(kjoin(&mut gs, "b", "", &["range"], 9).unwrap(), KafkaJoinOutcome::Wait { .. }));
        assert_eq!(gs.heartbeat("g", "a", 1, 10).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert_eq!(gs.kafka_sync("g", "a", 1, vec![], 10).unwrap_err().code, ErrorCode::RebalanceInProgress);
        kjoin(&mut gs, "a", "", &["range", "roundrobin"], 11).unwrap();
        let done = gs.complete_if_ready("g", 12, &BTreeMap::new()).unwrap();
        assert_eq!((done.generation, done.kafka_answers["b"].leader.as_str()), (2, "a"));
    }

    #[test]
    fn a_rebalance_during_the_leaders_store_discards_it_and_a_failed_store_rebalances() {
        let (mut gs, _) = kafka_pair();
        assert!(matches!(gs.kafka_sync("g", "a", 1, vec![], 3).unwrap(), SyncOutcome::Store(_)));
        kjoin(&mut gs, "", "c", &["range"], 4).unwrap();
        assert_eq!(gs.kafka_sync_stored("g", 1), None, "c's join started a rebalance meanwhile");
        assert_eq!(gs.get("g").unwrap().state, GroupState::PreparingRebalance);
        for m in ["a", "b"] {
            kjoin(&mut gs, m, "", &["range"], 5).unwrap();
        }
        gs.complete_if_ready("g", 6, &BTreeMap::new()).unwrap();
        assert!(matches!(gs.kafka_sync("g", "a", 2, vec![], 7).unwrap(), SyncOutcome::Store(_)));
        gs.kafka_sync_failed("g", 2, 8);
        assert_eq!(gs.get("g").unwrap().state, GroupState::PreparingRebalance);
    }

    #[test]
    fn a_kafka_leader_that_leaves_is_replaced_by_the_first_to_rejoin() {
        let (mut gs, _) = kafka_pair();
        gs.leave("g", "a", 3).unwrap();
        assert_eq!(gs.get("g").unwrap().state, GroupState::PreparingRebalance, "leaving a completing group rebalances");
        kjoin(&mut gs, "", "c", &["range"], 4).unwrap();
        kjoin(&mut gs, "b", "", &["range"], 5).unwrap();
        let done = gs.complete_if_ready("g", 6, &BTreeMap::new()).unwrap();
        assert_eq!(done.kafka_answers["b"].leader, "c");
        assert_eq!(done.kafka_answers["c"].members.len(), 2);
        // Everyone leaves: the group is empty and keeps its protocol_type but no protocol.
        gs.leave("g", "b", 7).unwrap();
        gs.leave("g", "c", 7).unwrap();
        let done = gs.complete_if_ready("g", 8, &BTreeMap::new()).unwrap();
        assert!(done.kafka_answers.is_empty());
        let g = gs.get("g").unwrap();
        assert_eq!((g.state, g.protocol_type(), g.protocol().as_str()), (GroupState::Empty, "consumer", ""));
    }

    #[test]
    fn kafka_and_runnel_members_do_not_mix_but_an_empty_group_switches() {
        let (mut gs, _) = kafka_pair();
        let e = gs
            .join(
                JoinRequest {
                    group: "g".into(),
                    member_id: String::new(),
                    fresh_member_id: "r".into(),
                    client_id: "c".into(),
                    topics: BTreeSet::from(["t".to_string()]),
                    session_timeout_ms: 1000,
                    rebalance_timeout_ms: 1000,
                    assignor: Assignor::Range,
                    owned: BTreeSet::new(),
                },
                10,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("Kafka consumer"), "{e}");
        // And the other way round.
        let mut runnel = three_members(Assignor::Range);
        let e = kjoin(&mut runnel, "", "k", &["range"], 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("Runnel-protocol"), "{e}");
        for m in ["a", "b", "c"] {
            runnel.leave("g", m, 11).unwrap();
        }
        runnel.complete_if_ready("g", 12, &parts()).unwrap();
        assert_eq!(runnel.get("g").unwrap().protocol_type(), RUNNEL_PROTOCOL_TYPE);
        assert!(matches!(kjoin(&mut runnel, "", "k", &["range"], 13).unwrap(), KafkaJoinOutcome::Wait { .. }));
        let done = runnel.complete_if_ready("g", 14, &parts()).unwrap();
        assert_eq!((done.generation, done.kafka_answers["k"].leader.as_str()), (3, "k"));
        assert_eq!(runnel.get("g").unwrap().protocol_type(), "consumer");
    }

    #[test]
    fn kafka_members_must_share_a_protocol_and_a_protocol_type() {
        let (mut gs, _) = kafka_pair();
        let e = kjoin(&mut gs, "", "c", &["cooperative-sticky"], 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("cooperative-sticky") && e.message.contains("range"), "{e}");
        // One shared protocol is enough.
        assert!(kjoin(&mut gs, "", "c", &["sticky", "roundrobin"], 3).is_ok());
        let mut other_type = KafkaJoinRequest {
            group: "g".into(),
            member_id: String::new(),
            fresh_member_id: "d".into(),
            group_instance_id: None,
            client_id: "x".into(),
            client_host: String::new(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 1000,
            protocol_type: "connect".into(),
            protocols: vec![("range".into(), vec![])],
        };
        assert_eq!(gs.kafka_join(other_type.clone(), 4).unwrap_err().code, ErrorCode::InconsistentGroupProtocol);
        other_type.protocols.clear();
        other_type.protocol_type = "consumer".into();
        assert_eq!(gs.kafka_join(other_type, 4).unwrap_err().code, ErrorCode::InconsistentGroupProtocol);
        // Completes with the protocol everyone supports.
        kjoin(&mut gs, "a", "", &["range", "roundrobin"], 5).unwrap();
        kjoin(&mut gs, "b", "", &["roundrobin", "range"], 5).unwrap();
        let done = gs.complete_if_ready("g", 6, &BTreeMap::new()).unwrap();
        assert_eq!(done.kafka_answers["a"].protocol, "roundrobin");
    }

    #[test]
    fn a_loaded_kafka_group_is_stable_with_its_assignment_or_rebalances_without_one() {
        let (mut gs, formed) = kafka_pair();
        // Stored before the leader's sync: the members must rejoin.
        let mut next = Groups::default();
        next.apply_group("g", Some(formed.value.clone()), 1, 100);
        assert_eq!(next.get("g").unwrap().state, GroupState::PreparingRebalance);
        assert_eq!(next.heartbeat("g", "a", 1, 101).unwrap_err().code, ErrorCode::RebalanceInProgress);

        let SyncOutcome::Store(value) = gs.kafka_sync("g", "a", 1, vec![("b".into(), b"B".to_vec())], 3).unwrap()
        else {
            panic!("the leader's sync is stored")
        };
        let json = crate::record::encode_value(&value).unwrap();
        let value = crate::record::decode_value(&crate::record::StoredKey::Group("g".into()), &json).unwrap();
        let mut next = Groups::default();
        next.apply_group("g", Some(value), 2, 100);
        let g = next.get("g").unwrap();
        assert_eq!((g.state, g.generation, g.protocol().as_str()), (GroupState::Stable, 1, "range"));
        assert_eq!(g.kafka.as_ref().unwrap().leader.as_deref(), Some("a"));
        assert_eq!(g.members["b"].client_host, "/127.0.0.1");
        assert_eq!(next.kafka_sync("g", "b", 1, vec![], 101).unwrap(), SyncOutcome::Ready(b"B".to_vec()));
        assert_eq!(next.kafka_sync("g", "a", 1, vec![], 101).unwrap(), SyncOutcome::Ready(vec![]));
        next.heartbeat("g", "a", 1, 102).unwrap();
        // A follower rejoining with its stored protocol alone is unchanged: answered at once (a
        // leader's rejoin would start a rebalance, as in Kafka).
        let req = KafkaJoinRequest {
            group: "g".into(),
            member_id: "b".into(),
            fresh_member_id: String::new(),
            group_instance_id: None,
            client_id: "kc".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 5000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), b"range:b".to_vec())],
        };
        let KafkaJoinOutcome::Ready(answer) = next.kafka_join(req, 103).unwrap() else { panic!("stable rejoin") };
        assert_eq!((answer.generation, answer.leader.as_str(), answer.members.len()), (1, "a", 0));
        // a keeps heartbeating, b goes silent: it expires and the group rebalances.
        next.heartbeat("g", "a", 1, 1100).unwrap();
        assert_eq!(next.tick(1200, &BTreeMap::new()), vec!["g".to_string()]);
        assert_eq!(next.get("g").unwrap().members.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_dead_member_expires_and_the_others_take_its_partitions() {
        let mut gs = three_members(Assignor::Range);
        // a and b heartbeat; c goes silent.
        for now in [500, 1000, 1500] {
            gs.heartbeat("g", "a", 1, now).unwrap();
            gs.heartbeat("g", "b", 1, now).unwrap();
            assert!(gs.tick(now, &BTreeMap::new()).is_empty() || now > 1000);
        }
        assert_eq!(gs.tick(1500, &BTreeMap::new()), vec!["g".to_string()]);
        assert_eq!(gs.heartbeat("g", "a", 1, 1510).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert!(matches!(join(&mut gs, "a", "x", &[], Assignor::Range, 1520), JoinOutcome::Wait { .. }));
        assert!(gs.complete_if_ready("g", 1521, &parts()).is_none(), "b has not rejoined yet");
        join(&mut gs, "b", "x", &[], Assignor::Range, 1530);
        let done = gs.complete_if_ready("g", 1531, &parts()).unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2]);
        assert_eq!(nums(&done.assignments["b"]), [3, 4, 5]);
        // c's commits are refused from now on; a's only with the new generation.
        assert_eq!(gs.check_commit("g", "c", 1, &[]).unwrap_err().code, ErrorCode::UnknownMember);
        assert_eq!(gs.check_commit("g", "a", 1, &[]).unwrap_err().code, ErrorCode::IllegalGeneration);
        gs.check_commit("g", "a", 2, &[]).unwrap();
        let t0 = TopicPartition::new("t", 0);
        let v = OffsetValue { offset: 50, metadata: String::new(), commit_timestamp_ms: 0, generation: 2 };
        gs.apply_offset("g", t0.clone(), Some(v), 1);
        gs.check_commit("g", "a", 2, &[(t0.clone(), 50), (t0.clone(), 60)]).unwrap();
        let e = gs.check_commit("g", "a", 2, &[(t0, 49)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::CommitRegression);
        assert!(e.message.contains("offset 50") && e.message.contains("49"), "{e}");
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_deadline() {
        let mut gs = three_members(Assignor::RoundRobin);
        gs.leave("g", "c", 100).unwrap();
        join(&mut gs, "a", "x", &[], Assignor::RoundRobin, 110);
        // b keeps heartbeating (so it does not expire) but never rejoins.
        assert!(gs.complete_if_ready("g", 4000, &parts()).is_none());
        let done = gs.complete_if_ready("g", 100 + 5000, &parts()).unwrap();
        assert_eq!(done.removed, vec!["b".to_string()]);
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn cooperative_rebalance_revokes_first_then_assigns() {
        let mut gs = Groups::default();
        join(&mut gs, "", "a", &[], Assignor::CooperativeSticky, 0);
        let done = gs.complete_if_ready("g", 1, &parts()).unwrap();
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2, 3, 4, 5]);
        // b joins; a rejoins still owning everything and keeps consuming.
        join(&mut gs, "", "b", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "a", "x", &[0, 1, 2, 3, 4, 5], Assignor::CooperativeSticky, 11);
        let done = gs.complete_if_ready("g", 12, &parts()).unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(done.assignments["a"].len(), 3, "a gives up three");
        assert!(done.assignments["b"].is_empty(), "b gets nothing a still owns");
        // A follow-up rebalance started; a rejoins owning only its three, b gets the rest.
        assert_eq!(gs.get("g").unwrap().state, GroupState::PreparingRebalance);
        let a_keeps: Vec<u32> = nums(&done.assignments["a"]);
        join(&mut gs, "a", "x", &a_keeps, Assignor::CooperativeSticky, 20);
        join(&mut gs, "b", "x", &[], Assignor::CooperativeSticky, 21);
        let done = gs.complete_if_ready("g", 22, &parts()).unwrap();
        assert_eq!(done.generation, 3);
        assert_eq!(nums(&done.assignments["a"]), a_keeps);
        assert_eq!(done.assignments["b"].len(), 3);
        assert!(done.assignments["b"].is_disjoint(&done.assignments["a"]));
        assert_eq!(gs.get("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn mixed_assignors_are_refused_and_unknown_members_told_to_rejoin() {
        let mut gs = three_members(Assignor::Range);
        let e = gs
            .join(
                JoinRequest {
                    group: "g".into(),
                    member_id: String::new(),
                    fresh_member_id: "d".into(),
                    client_id: "c".into(),
                    topics: BTreeSet::from(["t".to_string()]),
                    session_timeout_ms: 1000,
                    rebalance_timeout_ms: 1000,
                    assignor: Assignor::RoundRobin,
                    owned: BTreeSet::new(),
                },
                10,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert_eq!(gs.heartbeat("g", "nobody", 1, 10).unwrap_err().code, ErrorCode::UnknownMember);
        // An unchanged rejoin of a stable member is answered at once (a retried JoinGroup).
        let again = join(&mut gs, "a", "x", &[], Assignor::Range, 11);
        assert!(matches!(again, JoinOutcome::Ready { generation: 1, .. }));
    }

    #[test]
    fn commits_outside_a_generation_only_for_empty_groups_and_delete_needs_empty() {
        let mut gs = three_members(Assignor::Range);
        assert_eq!(gs.check_commit("g", "", -1, &[]).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert_eq!(gs.delete("g").unwrap_err().code, ErrorCode::GroupNotEmpty);
        for m in ["a", "b", "c"] {
            gs.leave("g", m, 5).unwrap();
        }
        let done = gs.complete_if_ready("g", 6, &parts()).unwrap();
        assert!(done.assignments.is_empty());
        assert_eq!(gs.get("g").unwrap().state, GroupState::Empty);
        gs.check_commit("g", "", -1, &[]).unwrap();
        gs.check_commit("other", "", -1, &[]).unwrap();
        let v = OffsetValue { offset: 5, metadata: String::new(), commit_timestamp_ms: 0, generation: -1 };
        gs.apply_offset("g", TopicPartition::new("t", 0), Some(v.clone()), 10);
        // An older record (answered late) never overwrites a newer one.
        gs.apply_offset("g", TopicPartition::new("t", 0), Some(OffsetValue { offset: 3, ..v }), 9);
        assert_eq!(gs.get("g").unwrap().offsets[&TopicPartition::new("t", 0)].0.offset, 5);
        assert_eq!(gs.delete("g").unwrap(), vec![TopicPartition::new("t", 0)]);
        assert_eq!(gs.delete("g").unwrap_err().code, ErrorCode::UnknownGroup);
    }

    #[test]
    fn a_loaded_group_keeps_its_generation_and_expires_absent_members() {
        let gs0 = three_members(Assignor::Range);
        let value = gs0.get("g").unwrap().to_value();
        let mut gs = Groups::default();
        gs.apply_group("g", Some(value), 7, 100);
        let g = gs.get("g").unwrap();
        assert_eq!((g.generation, g.state, g.members.len()), (1, GroupState::Stable, 3));
        gs.heartbeat("g", "a", 1, 600).unwrap();
        assert!(gs.tick(900, &BTreeMap::new()).is_empty());
        assert_eq!(gs.tick(1200, &BTreeMap::new()), vec!["g".to_string()], "b and c never came back");
        join(&mut gs, "a", "x", &[], Assignor::Range, 1300);
        let done = gs.complete_if_ready("g", 1300, &parts()).unwrap();
        assert_eq!(done.generation, 2, "generations keep increasing across a coordinator failover");
    }

    #[test]
    fn a_coordinator_failover_between_a_withholding_generation_and_its_follow_up_still_hands_over() {
        // Found by tests/tests/groups.rs: generation 2 withheld partitions from b and c, the
        // offsets partition's leadership moved, and the new coordinator loaded a "stable" group in
        // which b and c owned nothing, forever.
        let mut gs = Groups::default();
        join(&mut gs, "", "a", &[], Assignor::CooperativeSticky, 0);
        gs.complete_if_ready("g", 1, &parts()).unwrap();
        join(&mut gs, "", "b", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "", "c", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "a", "x", &[0, 1, 2, 3, 4, 5], Assignor::CooperativeSticky, 11);
        gs.complete_if_ready("g", 12, &parts()).unwrap();
        let stored = gs.get("g").unwrap().to_value();

        let mut next = Groups::default();
        next.apply_group("g", Some(stored), 3, 100);
        assert_eq!(next.get("g").unwrap().state, GroupState::Stable);
        // Unchanged rejoins are answered at once, but the next tick sees the gap and rebalances.
        assert!(matches!(join(&mut next, "b", "x", &[], Assignor::CooperativeSticky, 101), JoinOutcome::Ready { .. }));
        assert_eq!(next.tick(102, &parts()), vec!["g".to_string()]);
        assert_eq!(next.heartbeat("g", "a", 2, 103).unwrap_err().code, ErrorCode::RebalanceInProgress);
        let a_owns = nums(&next.get("g").unwrap().members["a"].assignment);
        for m in ["a", "b", "c"] {
            let owned = if m == "a" { a_owns.clone() } else { vec![] };
            join(&mut next, m, "x", &owned, Assignor::CooperativeSticky, 104);
        }
        let done = next.complete_if_ready("g", 105, &parts()).unwrap();
        assert_eq!(done.generation, 3);
        assert!(done.assignments.values().all(|p| p.len() == 2), "{:?}", done.assignments);
        assert_eq!(next.get("g").unwrap().state, GroupState::Stable);
        assert!(next.tick(106, &parts()).is_empty(), "a complete assignment does not rebalance again");
    }
}
