//! The controller's state machine: brokers, topics, partition assignments and epochs.
//!
//! Pure and deterministic: [`ClusterState::apply`] turns a committed [`MetaCommand`] into a new state
//! and a [`MetaResponse`], the same on every metadata replica. The Raft glue lives in `runnel-raft`;
//! the decisions that need the controller's local view (which brokers are live) are made before a
//! command is proposed, and `apply` re-checks everything that must hold.

use std::collections::BTreeMap;

use runnel_types::topic::{validate_topic_name, TopicConfig};
use runnel_types::{ErrorCode, GroupId, NodeId, RunnelError, META_GROUP_ID};
use serde::{Deserialize, Serialize};

mod placement;
pub use placement::place_partitions;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: NodeId,
    pub addr: String,
    /// Bumped every time the broker registers anew (a fresh process): fences its older self.
    pub epoch: u64,
    /// Random per process start; a heartbeat with a new incarnation re-registers.
    pub incarnation: u64,
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
    /// Bumped whenever the replica set changes.
    pub partition_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: u64,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionRecord>,
}

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
    /// Leaders as reported by brokers: (group, leader, term). Older terms are ignored.
    ReportLeaders {
        reports: Vec<(GroupId, NodeId, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    BrokerRegistered { epoch: u64 },
    TopicCreated { topic_id: u64 },
    Rejected { code: u32, message: String },
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
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::RegisterBroker { id, addr, incarnation } => {
                let epoch = match self.brokers.get(id) {
                    Some(b) if b.incarnation == *incarnation && b.addr == *addr => b.epoch,
                    Some(b) => b.epoch + 1,
                    None => 1,
                };
                self.brokers
                    .insert(*id, BrokerRecord { id: *id, addr: addr.clone(), epoch, incarnation: *incarnation });
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
                for (p, replicas) in assignments.iter().enumerate() {
                    let mut seen = replicas.clone();
                    seen.sort_unstable();
                    seen.dedup();
                    if replicas.is_empty() || seen.len() != replicas.len() {
                        return MetaResponse::rejected(RunnelError::internal(format!(
                            "partition {p} of '{name}' has an invalid replica set {replicas:?}"
                        )));
                    }
                    if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                        return MetaResponse::rejected(RunnelError::new(
                            ErrorCode::NotEnoughBrokers,
                            format!("partition {p} of '{name}' names broker {unknown}, which is not registered"),
                        ));
                    }
                }
                let topic_id = self.next_topic_id.max(1);
                self.next_topic_id = topic_id + 1;
                let mut partitions = Vec::with_capacity(assignments.len());
                for (p, replicas) in assignments.iter().enumerate() {
                    let group_id = self.next_group_id.max(META_GROUP_ID + 1);
                    self.next_group_id = group_id + 1;
                    partitions.push(PartitionRecord {
                        partition: p as u32,
                        group_id,
                        replicas: replicas.clone(),
                        leader: None,
                        leader_epoch: 0,
                        partition_epoch: 1,
                    });
                }
                self.topics.insert(
                    name.clone(),
                    TopicRecord { name: name.clone(), topic_id, config: config.clone(), partitions },
                );
                MetaResponse::TopicCreated { topic_id }
            }
            MetaCommand::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return MetaResponse::rejected(RunnelError::unknown_topic(name));
                }
                MetaResponse::Done
            }
            MetaCommand::ReportLeaders { reports } => {
                for (group, leader, term) in reports {
                    if let Some(p) = self.partition_by_group_mut(*group) {
                        // Epochs only increase: a late report from an older term changes nothing.
                        if *term > p.leader_epoch || (*term == p.leader_epoch && p.leader.is_none()) {
                            p.leader = Some(*leader);
                            p.leader_epoch = *term;
                        }
                    }
                }
                MetaResponse::Done
            }
        }
    }

    fn partition_by_group_mut(&mut self, group: GroupId) -> Option<&mut PartitionRecord> {
        self.topics.values_mut().flat_map(|t| t.partitions.iter_mut()).find(|p| p.group_id == group)
    }

    /// (topic, partition record) for every partition with a replica on `node`.
    pub fn partitions_on(&self, node: NodeId) -> Vec<(&TopicRecord, &PartitionRecord)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter(|(_, p)| p.replicas.contains(&node))
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
            MetaCommand::ReportLeaders { reports } => write!(f, "ReportLeaders({reports:?})"),
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
}
