//! The receiving side of the multiplexed Raft network: one gRPC service per node that hands each
//! message to the group it names.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::RaftStateMachine;
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{Raft, RaftTypeConfig, Snapshot};
use parking_lot::RwLock;
use runnel_proto::internal::raft_transport_server::RaftTransport;
use runnel_proto::internal::{RaftBatch, RaftBatchReply, RaftMessage, RaftReply, RaftRpcKind};
use runnel_storage::DiskSpace;
use runnel_types::{GroupId, NodeId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::repair::Repair;

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A group's inbound side, type-erased so groups of different type configs share one registry.
pub trait GroupHandler: Send + Sync + 'static {
    /// Handles one message from node `from` (its `RaftMessage.from_node`, which the transport
    /// has checked against the caller's certificate when TLS is on).
    fn handle(&self, kind: RaftRpcKind, payload: Bytes, from: NodeId) -> BoxFut<'_, Result<Vec<u8>, String>>;
}

/// The node a Raft message's own vote names (the candidate or the leader) must be the node it
/// came from: otherwise a member could vote, append or transfer in another member's name.
fn check_sender<C: RaftTypeConfig<NodeId = NodeId>>(vote: &VoteOf<C>, from: NodeId, what: &str) -> Result<(), String> {
    let named = *vote.leader_id().node_id();
    if named != from {
        return Err(format!("{what} names node {named} as its sender, but it came from node {from}: refused"));
    }
    Ok(())
}

/// Wraps a running openraft instance.
pub struct RaftHandler<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    pub raft: Raft<C, SM>,
    pub group: GroupId,
    /// While this replica repairs it refuses votes and leadership transfers (repair.rs).
    pub repair: Arc<Repair>,
    /// When set, replicated entries are refused while the disk is below its replication
    /// watermark (docs/adr/0014); the leader retries them. The metadata group has none: its few
    /// small entries live in the space kept free below that watermark.
    pub space: Option<Arc<DiskSpace>>,
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    codec::decode(b).map_err(|e| e.to_string())
}

fn enc<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, String> {
    let v = r.map_err(|e| e.to_string())?;
    codec::encode(&v).map_err(|e| e.to_string())
}

impl<C, SM> GroupHandler for RaftHandler<C, SM>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>> + Send + Sync,
    Raft<C, SM>: Send + Sync,
{
    fn handle(&self, kind: RaftRpcKind, payload: Bytes, from: NodeId) -> BoxFut<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let repairing = self.repair.is_repairing(self.group);
            match kind {
                RaftRpcKind::Vote | RaftRpcKind::PreVote | RaftRpcKind::TransferLeader if repairing => {
                    return Err(self.repair.refusal(self.group));
                }
                _ => {}
            }
            match kind {
                RaftRpcKind::AppendEntries => {
                    let req: AppendEntriesRequest<C> = dec(&payload)?;
                    check_sender::<C>(&req.vote, from, "an AppendEntries")?;
                    if !req.entries.is_empty() {
                        if let Some(Err(low)) = self.space.as_ref().map(|s| s.check_replicated_data()) {
                            return Err(format!("not storing replicated entries: {low}"));
                        }
                    }
                    if repairing {
                        self.repair.heard_leader_commit(self.group, req.leader_commit.as_ref().map_or(0, |c| c.index));
                    }
                    enc(self.raft.append_entries(req).await)
                }
                RaftRpcKind::Vote => {
                    let req: VoteRequest<C> = dec(&payload)?;
                    check_sender::<C>(&req.vote, from, "a vote request")?;
                    enc(self.raft.vote(req).await)
                }
                RaftRpcKind::PreVote => {
                    let req: VoteRequest<C> = dec(&payload)?;
                    check_sender::<C>(&req.vote, from, "a pre-vote request")?;
                    enc(self.raft.pre_vote(req).await)
                }
                RaftRpcKind::TransferLeader => {
                    let req: TransferLeaderRequest<C> = dec(&payload)?;
                    check_sender::<C>(req.from_leader(), from, "a leadership transfer")?;
                    enc(self.raft.handle_transfer_leader(req).await)
                }
                RaftRpcKind::FullSnapshot => {
                    let (vote, meta, data): (VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>) = dec(&payload)?;
                    check_sender::<C>(&vote, from, "a snapshot")?;
                    enc(self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await)
                }
            }
        })
    }
}

/// While `group`'s replica here is repairing, follows its commit index and tells `repair`, which
/// ends the repair once it has reached what the leader had committed (repair.rs).
pub fn follow_repair<C, SM>(raft: &Raft<C, SM>, group: GroupId, repair: &Arc<Repair>)
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
{
    if !repair.is_repairing(group) {
        return;
    }
    let mut metrics = raft.metrics();
    let repair = repair.clone();
    tokio::spawn(async move {
        use openraft::type_config::async_runtime::WatchReceiver;
        loop {
            let committed = metrics.borrow_watched().local_committed.as_ref().map(|c| c.index);
            repair.committed(group, committed);
            if !repair.is_repairing(group) || metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Groups running on this node, by id.
#[derive(Clone, Default)]
pub struct GroupRegistry {
    groups: Arc<RwLock<HashMap<GroupId, Arc<dyn GroupHandler>>>>,
}

impl GroupRegistry {
    pub fn insert(&self, group: GroupId, h: Arc<dyn GroupHandler>) {
        self.groups.write().insert(group, h);
    }
    pub fn remove(&self, group: GroupId) {
        self.groups.write().remove(&group);
    }
    pub fn get(&self, group: GroupId) -> Option<Arc<dyn GroupHandler>> {
        self.groups.read().get(&group).cloned()
    }
}

/// The `RaftTransport` gRPC service.
pub struct TransportService {
    pub registry: GroupRegistry,
    /// Every message from a peer proves it is alive (see `liveness`): under load its requests
    /// keep arriving even when a ping is slow.
    pub liveness: std::sync::Arc<crate::liveness::NodeLiveness>,
    pub stats: Arc<TransportStats>,
    /// With mutual TLS, a message is accepted only from the node its `from_node` names.
    pub auth: runnel_proto::peer::NodeAuth,
}

/// What this node received: single calls, batches and the messages batches carried.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub calls: std::sync::atomic::AtomicU64,
    pub batches: std::sync::atomic::AtomicU64,
    pub batched_messages: std::sync::atomic::AtomicU64,
}

/// Hands one message to the group it names and wraps the outcome as a reply.
async fn dispatch(registry: &GroupRegistry, m: RaftMessage) -> RaftReply {
    let failed = |error: String| RaftReply { payload: Bytes::new(), error };
    let Ok(kind) = RaftRpcKind::try_from(m.kind) else {
        return failed(format!("unknown raft rpc kind {}", m.kind));
    };
    let Some(h) = registry.get(m.group_id) else {
        // Not started here yet (metadata not applied) or deleted: the sender backs off and retries.
        return failed(format!("group {} is not running on this node", m.group_id));
    };
    match h.handle(kind, m.payload, m.from_node).await {
        Ok(p) => RaftReply { payload: Bytes::from(p), error: String::new() },
        Err(e) => failed(e),
    }
}

type ReplyStream = Pin<Box<dyn futures::Stream<Item = Result<RaftBatchReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn call(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        self.auth.check(req.extensions(), req.get_ref().from_node, "raft message")?;
        let m = req.into_inner();
        self.liveness.heard(m.from_node);
        self.stats.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if RaftRpcKind::try_from(m.kind).is_err() {
            return Err(tonic::Status::invalid_argument(format!("unknown raft rpc kind {}", m.kind)));
        }
        Ok(tonic::Response::new(dispatch(&self.registry, m).await))
    }

    type CallBatchStream = ReplyStream;

    async fn call_batch(
        &self,
        req: tonic::Request<RaftBatch>,
    ) -> Result<tonic::Response<Self::CallBatchStream>, tonic::Status> {
        for m in &req.get_ref().messages {
            self.auth.check(req.extensions(), m.from_node, "raft message")?;
        }
        let batch = req.into_inner();
        if let Some(m) = batch.messages.first() {
            self.liveness.heard(m.from_node);
        }
        self.stats.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.batched_messages.fetch_add(batch.messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Every group answers concurrently; replies leave in the order they are ready.
        let pending: FuturesUnordered<_> = batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(index, m)| {
                let registry = self.registry.clone();
                async move { RaftBatchReply { index: index as u32, reply: Some(dispatch(&registry, m).await) } }
            })
            .collect();
        Ok(tonic::Response::new(Box::pin(pending.map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetaTypes, PartitionTypes};

    fn vote<C: RaftTypeConfig<NodeId = NodeId, Term = u64>>(term: u64, node: NodeId) -> VoteOf<C> {
        VoteOf::<C>::from_leader_id(openraft::alias::LeaderIdOf::<C>::new(term, node), false)
    }

    #[test]
    fn a_message_whose_vote_names_another_node_than_its_sender_is_refused() {
        assert!(check_sender::<MetaTypes>(&vote::<MetaTypes>(7, 2), 2, "a vote request").is_ok());
        let e = check_sender::<MetaTypes>(&vote::<MetaTypes>(7, 1), 2, "a vote request").unwrap_err();
        assert!(e.contains("a vote request names node 1") && e.contains("came from node 2"), "{e}");
        assert!(check_sender::<PartitionTypes>(&vote::<PartitionTypes>(3, 3), 1, "an AppendEntries").is_err());
    }
}
