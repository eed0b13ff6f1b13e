//! One error type with stable numeric codes, shared by server and client. A retired code is never
//! reused (the numbers match `runnel.v1.ErrorCode`).

use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    UnknownTopic = 1,
    UnknownPartition = 2,
    NotLeader = 3,
    OffsetOutOfRange = 4,
    RecordTooLarge = 5,
    InvalidConfig = 6,
    TopicAlreadyExists = 7,
    CorruptBatch = 8,
    NotEnoughBrokers = 9,
    NotController = 10,
    Timeout = 11,
    StaleEpoch = 12,
    InvalidRequest = 13,
    LeaderNotAvailable = 14,
    Internal = 15,
    Storage = 16,
    NotCoordinator = 17,
    CoordinatorLoading = 18,
    UnknownMember = 19,
    IllegalGeneration = 20,
    RebalanceInProgress = 21,
    GroupNotEmpty = 22,
    UnknownGroup = 23,
    InconsistentGroupProtocol = 24,
    NoCommittedOffset = 25,
    CommitRegression = 26,
    /// acks=all produce refused: fewer in-sync replicas than the topic's `min.insync.replicas`.
    NotEnoughReplicas = 40,
    OutOfOrderSequence = 30,
    InvalidProducerEpoch = 31,
    UnknownProducerId = 32,
    /// Security (50-59): no valid credentials (unknown user, wrong password, expired or revoked
    /// token, none given).
    AuthenticationFailed = 50,
    /// The principal is authenticated but no ACL allows the operation (or one denies it).
    AuthorizationFailed = 51,
    UnknownUser = 52,
}

impl ErrorCode {
    pub fn from_u32(v: u32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => UnknownTopic,
            2 => UnknownPartition,
            3 => NotLeader,
            4 => OffsetOutOfRange,
            5 => RecordTooLarge,
            6 => InvalidConfig,
            7 => TopicAlreadyExists,
            8 => CorruptBatch,
            9 => NotEnoughBrokers,
            10 => NotController,
            11 => Timeout,
            12 => StaleEpoch,
            13 => InvalidRequest,
            14 => LeaderNotAvailable,
            15 => Internal,
            16 => Storage,
            17 => NotCoordinator,
            18 => CoordinatorLoading,
            19 => UnknownMember,
            20 => IllegalGeneration,
            21 => RebalanceInProgress,
            22 => GroupNotEmpty,
            23 => UnknownGroup,
            24 => InconsistentGroupProtocol,
            25 => NoCommittedOffset,
            26 => CommitRegression,
            40 => NotEnoughReplicas,
            30 => OutOfOrderSequence,
            31 => InvalidProducerEpoch,
            32 => UnknownProducerId,
            50 => AuthenticationFailed,
            51 => AuthorizationFailed,
            52 => UnknownUser,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            UnknownTopic => "UNKNOWN_TOPIC",
            UnknownPartition => "UNKNOWN_PARTITION",
            NotLeader => "NOT_LEADER",
            OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            RecordTooLarge => "RECORD_TOO_LARGE",
            InvalidConfig => "INVALID_CONFIG",
            TopicAlreadyExists => "TOPIC_ALREADY_EXISTS",
            CorruptBatch => "CORRUPT_BATCH",
            NotEnoughBrokers => "NOT_ENOUGH_BROKERS",
            NotController => "NOT_CONTROLLER",
            Timeout => "TIMEOUT",
            StaleEpoch => "STALE_EPOCH",
            InvalidRequest => "INVALID_REQUEST",
            LeaderNotAvailable => "LEADER_NOT_AVAILABLE",
            Internal => "INTERNAL",
            Storage => "STORAGE",
            NotCoordinator => "NOT_COORDINATOR",
            CoordinatorLoading => "COORDINATOR_LOADING",
            UnknownMember => "UNKNOWN_MEMBER",
            IllegalGeneration => "ILLEGAL_GENERATION",
            RebalanceInProgress => "REBALANCE_IN_PROGRESS",
            GroupNotEmpty => "GROUP_NOT_EMPTY",
            UnknownGroup => "UNKNOWN_GROUP",
            InconsistentGroupProtocol => "INCONSISTENT_GROUP_PROTOCOL",
            NoCommittedOffset => "NO_COMMITTED_OFFSET",
            CommitRegression => "COMMIT_REGRESSION",
            NotEnoughReplicas => "NOT_ENOUGH_REPLICAS",
            OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            InvalidProducerEpoch => "INVALID_PRODUCER_EPOCH",
            UnknownProducerId => "UNKNOWN_PRODUCER_ID",
            AuthenticationFailed => "AUTHENTICATION_FAILED",
            AuthorizationFailed => "AUTHORIZATION_FAILED",
            UnknownUser => "UNKNOWN_USER",
        }
    }

    /// Errors a client may retry after refreshing metadata (leadership moved or is moving).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::NotController
                | ErrorCode::Timeout
                | ErrorCode::StaleEpoch
                | ErrorCode::NotCoordinator
                | ErrorCode::CoordinatorLoading
                | ErrorCode::NotEnoughReplicas
        )
    }
}

/// An error as it crosses the API: a code, a message naming what was wrong, and the hints a client
/// needs to recover (the current leader, the valid offset range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct RunnelError {
    pub code: ErrorCode,
    pub message: String,
    pub leader: Option<(NodeId, String)>,
    pub valid_range: Option<(u64, u64)>,
}

impl RunnelError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), leader: None, valid_range: None }
    }

    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(ErrorCode::UnknownTopic, format!("topic '{topic}' does not exist"))
    }

    pub fn unknown_partition(topic: &str, partition: u32, count: usize) -> Self {
        Self::new(
            ErrorCode::UnknownPartition,
            format!("topic '{topic}' has no partition {partition} (it has {count}: 0..{count})"),
        )
    }

    pub fn not_leader(topic: &str, partition: u32, leader: Option<(NodeId, String)>) -> Self {
        let msg = match &leader {
            Some((id, addr)) => {
                format!("this node does not lead {topic}/{partition}; the leader is node {id} at {addr}")
            }
            None => format!("this node does not lead {topic}/{partition}; the leader is not known yet"),
        };
        Self { code: ErrorCode::NotLeader, message: msg, leader, valid_range: None }
    }

    pub fn offset_out_of_range(topic: &str, partition: u32, offset: u64, start: u64, end: u64) -> Self {
        Self {
            code: ErrorCode::OffsetOutOfRange,
            message: format!("offset {offset} is outside {topic}/{partition}'s valid range [{start}, {end}]"),
            leader: None,
            valid_range: Some((start, end)),
        }
    }

    /// This node does not coordinate `group`; `coordinator` is the node that does, when known.
    pub fn not_coordinator(group: &str, coordinator: Option<(NodeId, String)>) -> Self {
        let msg = match &coordinator {
            Some((id, addr)) => format!("this node does not coordinate group '{group}'; node {id} at {addr} does"),
            None => format!("this node does not coordinate group '{group}'; its coordinator is not known yet"),
        };
        Self { code: ErrorCode::NotCoordinator, message: msg, leader: coordinator, valid_range: None }
    }

    pub fn invalid_config(field: &str, value: impl std::fmt::Display, why: &str) -> Self {
        Self::new(ErrorCode::InvalidConfig, format!("invalid value '{value}' for '{field}': {why}"))
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, msg)
    }
}
