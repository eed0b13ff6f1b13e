//! Cluster changes only the controller carries out, as protocol-neutral commands.
//!
//! A front-end (gRPC, Kafka, …) that accepts such a change checks the caller's rights, then calls
//! [`Controller::execute`](crate::controller::Controller::execute): on the controller it runs at
//! once; on any other node it is forwarded, once, over the node-to-node `Controller.Execute` RPC
//! (only the sending node's certificate may make that call), and the controller's answer comes
//! back. Before this, each gRPC handler forwarded by re-sending its own request to the
//! controller's public API, eight copies of the same block.

use std::collections::BTreeMap;

use runnel_meta::{PartitionRecord, TopicRecord};
use runnel_security::acl::AclRule;
use runnel_security::quota::Quota;
use runnel_security::scram::Credentials;
use runnel_types::{ErrorCode, NodeId, RunnelError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    AlterTopicConfig {
        topic: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    Decommission {
        node: NodeId,
        cancel: bool,
    },
    Reassign {
        topic: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
    Rebalance {
        dry_run: bool,
    },
    ReplaceVoter {
        remove: NodeId,
        add: NodeId,
    },
    NewProducerId,
    PutUser {
        name: String,
        credentials: Vec<Credentials>,
    },
    DeleteUser {
        name: String,
    },
    AddAcls {
        rules: Vec<AclRule>,
    },
    RemoveAcls {
        rules: Vec<AclRule>,
    },
    SetQuota {
        principal: String,
        quota: Option<Quota>,
    },
    /// Grows `topic` to `total` partitions (appended: earlier commands keep their encoding).
    CreatePartitions {
        topic: String,
        total: u32,
    },
}

impl AdminCommand {
    /// What it does, for error messages and logs (never a credential).
    pub fn describe(&self) -> String {
        match self {
            AdminCommand::CreateTopic { name, .. } => format!("create topic '{name}'"),
            AdminCommand::DeleteTopic { name } => format!("delete topic '{name}'"),
            AdminCommand::AlterTopicConfig { topic, .. } => format!("alter the configuration of topic '{topic}'"),
            AdminCommand::Decommission { node, cancel: false } => format!("decommission node {node}"),
            AdminCommand::Decommission { node, cancel: true } => format!("cancel the decommission of node {node}"),
            AdminCommand::Reassign { topic, partition, .. } => format!("reassign {topic}/{partition}"),
            AdminCommand::Rebalance { .. } => "rebalance".into(),
            AdminCommand::ReplaceVoter { remove, add } => format!("replace metadata voter {remove} by {add}"),
            AdminCommand::NewProducerId => "allocate a producer id".into(),
            AdminCommand::PutUser { name, .. } => format!("create user '{name}'"),
            AdminCommand::DeleteUser { name } => format!("delete user '{name}'"),
            AdminCommand::AddAcls { rules } => format!("add {} ACL(s)", rules.len()),
            AdminCommand::RemoveAcls { rules } => format!("remove {} ACL(s)", rules.len()),
            AdminCommand::SetQuota { principal, .. } => format!("set the quota of {principal}"),
            AdminCommand::CreatePartitions { topic, total } => format!("grow topic '{topic}' to {total} partitions"),
        }
    }
}

/// A partition move planned by a rebalance: (topic, partition, from, to).
pub type PlannedMove = (String, u32, Vec<NodeId>, Vec<NodeId>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAnswer {
    Done,
    Topic(TopicRecord),
    /// Replicas still to move off a decommissioning node.
    Remaining(u32),
    Partition(PartitionRecord),
    Moves(Vec<PlannedMove>),
    Voters(Vec<NodeId>),
    ProducerId(u64),
    /// How many of the rules to remove existed.
    Removed(u64),
}

/// A [`RunnelError`] on the node-to-node wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    pub code: u32,
    pub message: String,
    pub leader: Option<(NodeId, String)>,
}

impl From<&RunnelError> for AdminError {
    fn from(e: &RunnelError) -> Self {
        AdminError { code: e.code as u32, message: e.message.clone(), leader: e.leader.clone() }
    }
}

impl From<AdminError> for RunnelError {
    fn from(e: AdminError) -> Self {
        let mut out = RunnelError::new(ErrorCode::from_u32(e.code).unwrap_or(ErrorCode::Internal), e.message);
        out.leader = e.leader;
        out
    }
}

fn unexpected(what: &str, got: &AdminAnswer) -> RunnelError {
    RunnelError::internal(format!("the controller answered {what} with {got:?}"))
}

impl AdminAnswer {
    pub fn into_topic(self) -> Result<TopicRecord, RunnelError> {
        match self {
            AdminAnswer::Topic(t) => Ok(t),
            other => Err(unexpected("a topic change", &other)),
        }
    }

    pub fn into_remaining(self) -> Result<u32, RunnelError> {
        match self {
            AdminAnswer::Remaining(n) => Ok(n),
            other => Err(unexpected("a decommission", &other)),
        }
    }

    pub fn into_partition(self) -> Result<PartitionRecord, RunnelError> {
        match self {
            AdminAnswer::Partition(p) => Ok(p),
            other => Err(unexpected("a reassignment", &other)),
        }
    }

    pub fn into_moves(self) -> Result<Vec<PlannedMove>, RunnelError> {
        match self {
            AdminAnswer::Moves(m) => Ok(m),
            other => Err(unexpected("a rebalance", &other)),
        }
    }

    pub fn into_voters(self) -> Result<Vec<NodeId>, RunnelError> {
        match self {
            AdminAnswer::Voters(v) => Ok(v),
            other => Err(unexpected("a voter replacement", &other)),
        }
    }

    pub fn into_producer_id(self) -> Result<u64, RunnelError> {
        match self {
            AdminAnswer::ProducerId(id) => Ok(id),
            other => Err(unexpected("a producer id request", &other)),
        }
    }

    pub fn into_removed(self) -> Result<u64, RunnelError> {
        match self {
            AdminAnswer::Removed(n) => Ok(n),
            other => Err(unexpected("an ACL removal", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded command and its answer survive the node-to-node encoding, and an error keeps
    /// its code, message and leader hint (a client follows NOT_CONTROLLER to the new controller).
    #[test]
    fn commands_answers_and_errors_cross_the_wire_intact() {
        let cmd = AdminCommand::CreateTopic {
            name: "orders".into(),
            partitions: 3,
            replication_factor: 2,
            configs: [("retention.ms".to_string(), "1000".to_string())].into_iter().collect(),
        };
        let bytes = runnel_raft::codec::encode(&cmd).unwrap();
        assert_eq!(runnel_raft::codec::decode::<AdminCommand>(&bytes).unwrap(), cmd);
        assert_eq!(cmd.describe(), "create topic 'orders'");

        let mut e = RunnelError::new(ErrorCode::NotController, "node 2 is not the controller");
        e.leader = Some((3, "10.0.0.3:9292".into()));
        let answer: Result<AdminAnswer, AdminError> = Err(AdminError::from(&e));
        let bytes = runnel_raft::codec::encode(&answer).unwrap();
        let back: Result<AdminAnswer, AdminError> = runnel_raft::codec::decode(&bytes).unwrap();
        assert_eq!(RunnelError::from(back.unwrap_err()), e);

        assert_eq!(AdminAnswer::Removed(2).into_removed().unwrap(), 2);
        let wrong = AdminAnswer::Done.into_topic().unwrap_err();
        assert_eq!(wrong.code, ErrorCode::Internal);
        assert!(wrong.message.contains("Done"), "{}", wrong.message);
    }
}
