//! Raft glue shared by every group on a node: the openraft type configurations, the log store on
//! the node's shared [`Engine`](runnel_storage::Engine), the multiplexed network (one gRPC
//! connection per peer, messages tagged with their group id), and the metadata state machine.

pub mod codec;
pub mod liveness;
pub mod log_store;
pub mod meta_sm;
pub mod network;
pub mod partition_types;
pub mod repair;
pub mod transport;

use std::sync::Arc;

pub use openraft;
pub use partition_types::{PartitionCommand, PartitionResponse, ProducerStamp, StoredBatch};
use runnel_meta::{MetaCommand, MetaResponse};

/// Tokio, with openraft's randomness (election timeouts, tick jitter) drawn from a seeded RNG:
/// a simulation seeds it from its one u64 seed; production seeds it at random.
pub type RaftRuntime = openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

/// Standard Raft leader ids: at most one leader per term, so a term *is* a leader epoch (docs/adr/0013).
/// openraft's default (`leader_id_adv`) orders leader ids by (term, node id) and lets a second
/// candidate win the same term with a higher node id; the metadata, produce answers and clients
/// all name a leader by its term alone, and with two leaders in one term the metadata kept the
/// first forever (found by `many_partitions`: partitions of a killed node never re-led in the
/// metadata although the survivors had elected a leader long before).
pub type StdLeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>;

openraft::declare_raft_types!(
    /// The metadata group: commands change the cluster state the controller manages.
    pub MetaTypes:
        D = MetaCommand,
        R = MetaResponse,
        LeaderId = StdLeaderId,
        AsyncRuntime = RaftRuntime,
);

openraft::declare_raft_types!(
    /// A partition group: commands append record batches.
    pub PartitionTypes:
        D = PartitionCommand,
        R = PartitionResponse,
        LeaderId = StdLeaderId,
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
        // A follower whose log comes back shorter (a damaged WAL dropped its tail) is caught up
        // again instead of panicking the leader; it may not vote until then (repair.rs,
        // docs/adr/0015).
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use openraft::vote::{RaftLeaderId, RaftVote};

    use super::{MetaTypes, PartitionTypes};

    /// One leader per term (docs/adr/0013): a candidate that asks for a term in which a voter has
    /// already seen another leader committed must be refused, whatever the node ids. With
    /// openraft's default leader ids, node 3 asking for term 2 outranked node 2's committed term 2,
    /// and two leaders of one term left the metadata naming the first one forever.
    #[test]
    fn a_second_candidate_cannot_win_a_term_that_has_a_leader() {
        fn check<C: openraft::RaftTypeConfig<NodeId = u64, Term = u64>>(types: &str) {
            let vote = |term: u64, node: u64, committed: bool| {
                C::Vote::from_leader_id(C::LeaderId::new(term, node), committed)
            };
            let leader = vote(2, 2, true);
            for candidate in [1u64, 3] {
                let asks = vote(2, candidate, false);
                assert_ne!(
                    RaftVote::partial_cmp(&asks, &leader),
                    Some(Ordering::Greater),
                    "{types}: term 2 is led by node 2; node {candidate} must not win it"
                );
            }
            assert_eq!(
                RaftVote::partial_cmp(&vote(3, 1, false), &leader),
                Some(Ordering::Greater),
                "{types}: a later term wins"
            );
        }
        check::<PartitionTypes>("partition groups");
        check::<MetaTypes>("the metadata group");
    }
}
