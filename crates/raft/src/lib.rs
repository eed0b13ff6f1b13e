//! Raft glue shared by every group on a node: the openraft type configurations, the log store on
//! the node's shared [`Engine`](runnel_storage::Engine), the multiplexed network (one gRPC
//! connection per peer, messages tagged with their group id), and the metadata state machine.

pub mod codec;
pub mod liveness;
pub mod log_store;
pub mod meta_sm;
pub mod network;
pub mod partition_types;
pub mod transport;

use std::sync::Arc;

pub use openraft;
pub use partition_types::{PartitionCommand, PartitionResponse, ProducerStamp, StoredBatch};
use runnel_meta::{MetaCommand, MetaResponse};

/// Tokio, with openraft's randomness (election timeouts, tick jitter) drawn from a seeded RNG:
/// a simulation seeds it from its one u64 seed; production seeds it at random.
pub type RaftRuntime = openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

openraft::declare_raft_types!(
    /// The metadata group: commands change the cluster state the controller manages.
    pub MetaTypes:
        D = MetaCommand,
        R = MetaResponse,
        AsyncRuntime = RaftRuntime,
);

openraft::declare_raft_types!(
    /// A partition group: commands append record batches.
    pub PartitionTypes:
        D = PartitionCommand,
        R = PartitionResponse,
        AsyncRuntime = RaftRuntime,
);

/// Starts an openraft instance whose tasks draw randomness from `seed` (see [`RaftRuntime`]).
/// Every group must be created through this: openraft's spawned tasks read the seed from a task
/// local set here.
pub async fn start_raft<C, SM, LS, N>(
    seed: u64,
    id: C::NodeId,
    config: Arc<openraft::Config>,
    network: N,
    log_store: LS,
    state_machine: SM,
) -> Result<openraft::Raft<C, SM>, openraft::error::Fatal<C>>
where
    C: openraft::RaftTypeConfig<AsyncRuntime = RaftRuntime>,
    SM: openraft::storage::RaftStateMachine<C>,
    LS: openraft::storage::RaftLogStorage<C>,
    N: openraft::network::RaftNetworkFactory<C>,
    N::Network: openraft::network::NetSnapshot<C, SnapshotData = SM::SnapshotData>,
{
    RaftRuntime::scope(seed, openraft::Raft::new(id, config, network, log_store, state_machine)).await
}

/// A per-group seed from the node's seed: distinct groups get unrelated sequences.
pub fn group_seed(node_seed: u64, group: runnel_types::GroupId) -> u64 {
    let mut z = node_seed ^ group.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub type MetaRaft = openraft::Raft<MetaTypes, meta_sm::MetaStateMachine>;

/// Timing shared by every group on the node.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
}

/// How a group decides when to elect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// openraft's own timers: the leader heartbeats every `heartbeat_ms`, a follower that hears
    /// nothing for an election timeout campaigns. The metadata group runs this way: one group, and
    /// it must never depend on anything else to recover.
    Timers,
    /// No timers at all (docs/adr/0012): an idle group sends nothing and wakes nothing. Appends
    /// and commit updates still flow as they happen; elections are started from outside, by the
    /// node's election driver, when the node-level failure detector says the leader is gone.
    Quiescent,
}

/// openraft configuration for one group.
///
/// Snapshots are never built automatically and logs never purged: a partition's Raft log *is*
/// its data (see docs/adr/0002), and retention will purge it explicitly.
pub fn group_config(
    name: &str,
    timing: RaftTiming,
    pacing: Pacing,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let timers = pacing == Pacing::Timers;
    let cfg = openraft::Config {
        enable_tick: timers,
        enable_heartbeat: timers,
        enable_elect: timers,
        cluster_name: name.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_ms,
        // openraft also uses the upper bound as the leader lease: a follower only campaigns after
        // lease + a random timeout in [min, max) without hearing from its leader. 1.5x keeps that
        // sum (the failover time) at 2.5-3x the lower bound while leaving a wide enough window
        // that two followers rarely time out together (a split vote costs another round).
        election_timeout_max: timing.election_timeout_ms + timing.election_timeout_ms / 2,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 256,
        // A leader restarted after a crash must win a new election, never resume in its old term:
        // a crash can lose its own unsynced log tail, and resuming under the same leader id would
        // then hand out those log ids again for different entries, which followers holding the
        // originals cannot detect. Found by the simulator (seed 5014; docs/adr/0005).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}
