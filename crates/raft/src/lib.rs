//! Raft glue shared by every group on a node: the openraft type configurations, the log store on
//! the node's shared [`Engine`](runnel_storage::Engine), the multiplexed network (one gRPC
//! connection per peer, messages tagged with their group id), and the metadata state machine.

pub mod codec;
pub mod log_store;
pub mod meta_sm;
pub mod network;
pub mod partition_types;
pub mod transport;

use std::sync::Arc;

pub use openraft;
pub use partition_types::{PartitionCommand, PartitionResponse, StoredBatch};
use runnel_meta::{MetaCommand, MetaResponse};

openraft::declare_raft_types!(
    /// The metadata group: commands change the cluster state the controller manages.
    pub MetaTypes:
        D = MetaCommand,
        R = MetaResponse,
);

openraft::declare_raft_types!(
    /// A partition group: commands append record batches.
    pub PartitionTypes:
        D = PartitionCommand,
        R = PartitionResponse,
);

pub type MetaRaft = openraft::Raft<MetaTypes, meta_sm::MetaStateMachine>;

/// Timing shared by every group on the node.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
}

/// openraft configuration for one group.
///
/// Snapshots are never built automatically and logs never purged: a partition's Raft log *is*
/// its data (see docs/adr/0002), and retention will purge it explicitly.
pub fn group_config(name: &str, timing: RaftTiming) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let cfg = openraft::Config {
        cluster_name: name.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_ms,
        election_timeout_max: timing.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 256,
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}
