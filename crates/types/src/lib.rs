//! Runnel's vocabulary: identifiers, offsets, epochs, limits and the error codes every other crate
//! speaks. No I/O lives here.

pub mod error;
pub mod limits;
pub mod topic;

pub use error::{ErrorCode, RunnelError};

/// A node (broker) id. Also the Raft node id in every group the node belongs to.
pub type NodeId = u64;
/// A Raft group id. Group 0 is the metadata group; partitions get ids from the controller.
pub type GroupId = u64;
/// A partition number within a topic.
pub type PartitionId = u32;
/// A record's position in its partition log.
pub type Offset = u64;

/// The Raft group that holds the cluster metadata; its leader is the controller.
pub const META_GROUP_ID: GroupId = 0;

/// The port `runnel dev` and node 1 of `scripts/cluster.sh` listen on.
pub const DEFAULT_PORT: u16 = 9292;
/// The Kafka-protocol listener of `runnel dev` (Kafka's own default port).
pub const DEFAULT_KAFKA_PORT: u16 = 9092;
/// The address clients use when no `--bootstrap` is given.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9292";
