//! The sending side of the multiplexed Raft network: one lazily connected gRPC channel per peer
//! node, shared by every group; each message names its group.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftTypeConfig};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use parking_lot::RwLock;
use runnel_proto::dial::Dialer;
use runnel_proto::internal::liveness_client::LivenessClient;
use runnel_proto::internal::raft_transport_client::RaftTransportClient;
use runnel_proto::internal::{PingReply, PingRequest, RaftBatch, RaftMessage, RaftReply, RaftRpcKind};
use runnel_types::limits::MAX_GRPC_MESSAGE_BYTES;
use runnel_types::{GroupId, NodeId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec;
use crate::liveness::NodeLiveness;

/// Where each node is and an open channel to it. Cheap to clone; shared by all groups.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    self_id: NodeId,
    dialer: Arc<dyn Dialer>,
    addrs: RwLock<HashMap<NodeId, String>>,
    channels: RwLock<HashMap<(NodeId, Lane), (String, Channel)>>,
    liveness: Arc<NodeLiveness>,
    /// Per peer: the queue of partition-group messages its batcher sends (`run_batcher`).
    batchers: parking_lot::Mutex<HashMap<NodeId, tokio::sync::mpsc::UnboundedSender<Pending>>>,
}

/// A message waiting in a peer's batch queue, and where its reply goes.
struct Pending {
    msg: RaftMessage,
    ttl: Duration,
    reply: tokio::sync::oneshot::Sender<Result<RaftReply, CallError>>,
}

/// Messages one batch carries at most, and bytes of payload (a single larger message still goes,
/// alone: appends are cut to `MAX_APPEND_BYTES`, under the gRPC limit).
const MAX_BATCH_MESSAGES: usize = 512;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Batches in flight to one peer at once. Batching is natural, not timed: a message goes at once
/// when a slot is free, and messages queue (and then leave together) only while every slot is
/// busy — an idle or lightly loaded node adds no latency, a burst of thousands of elections costs
/// a handful of calls.
const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Which connection to a peer a message takes. The metadata group and the liveness pings have a
/// connection of their own, so that a burst of partition traffic (catch-up appends of megabytes)
/// never queues them behind it: the controller's election timer and the failure detector must not
/// be hostage to partition load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Control,
    Data,
}

impl Lane {
    pub fn of(group: GroupId) -> Lane {
        if group == runnel_types::META_GROUP_ID {
            Lane::Control
        } else {
            Lane::Data
        }
    }
}

/// Failure of one RPC, as a plain error openraft can wrap.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

#[derive(Debug, Clone)]
enum CallError {
    /// Could not reach the node (unknown address, connection refused, timed out).
    Unreachable(String),
    /// Reached it, but the call failed (group missing there, decode error, ...).
    Failed(String),
}

impl CallError {
    fn message(self) -> String {
        match self {
            CallError::Unreachable(m) | CallError::Failed(m) => m,
        }
    }

    fn rpc<C: RaftTypeConfig>(self) -> RPCError<C> {
        match self {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&NetError(m))),
            CallError::Failed(m) => RPCError::Network(NetworkError::new(&NetError(m))),
        }
    }
    fn streaming<C: RaftTypeConfig>(self) -> StreamingError<C> {
        match self {
            CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&NetError(m))),
            CallError::Failed(m) => StreamingError::Network(NetworkError::new(&NetError(m))),
        }
    }
}

impl Router {
    pub fn new(self_id: NodeId, dialer: Arc<dyn Dialer>, liveness: Arc<NodeLiveness>) -> Self {
        Self {
            inner: Arc::new(RouterInner {
                self_id,
                dialer,
                addrs: RwLock::new(HashMap::new()),
                channels: RwLock::new(HashMap::new()),
                liveness,
                batchers: parking_lot::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The node's failure detector (every successful call counts as hearing from the peer).
    pub fn liveness(&self) -> &Arc<NodeLiveness> {
        &self.inner.liveness
    }

    /// Records (or updates) a node's address. A changed address drops the old channel.
    pub fn set_addr(&self, node: NodeId, addr: &str) {
        let mut addrs = self.inner.addrs.write();
        if addrs.get(&node).map(String::as_str) != Some(addr) {
            addrs.insert(node, addr.to_string());
            self.inner.channels.write().retain(|(n, _), _| *n != node);
        }
        drop(addrs);
        self.inner.liveness.watch(node);
    }

    fn evict(&self, node: NodeId, lane: Lane) {
        self.inner.channels.write().remove(&(node, lane));
    }

    /// The dialer this node uses for every outgoing connection.
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        self.inner.dialer.clone()
    }

    pub fn addr(&self, node: NodeId) -> Option<String> {
        self.inner.addrs.read().get(&node).cloned()
    }

    fn channel(&self, node: NodeId, lane: Lane) -> Result<Channel, CallError> {
        let addr =
            self.addr(node).ok_or_else(|| CallError::Unreachable(format!("no address known for node {node}")))?;
        if let Some((a, ch)) = self.inner.channels.read().get(&(node, lane)) {
            if *a == addr {
                return Ok(ch.clone());
            }
        }
        let ch = self.inner.dialer.channel(&addr).map_err(|e| CallError::Unreachable(format!("node {node}: {e}")))?;
        self.inner.channels.write().insert((node, lane), (addr, ch.clone()));
        Ok(ch)
    }

    /// One liveness ping to `target` on the control connection.
    pub async fn ping(&self, target: NodeId, req: PingRequest, ttl: Duration) -> Result<PingReply, String> {
        let ch = self.channel(target, Lane::Control).map_err(|e| e.message())?;
        let mut client = LivenessClient::new(ch)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        match tokio::time::timeout(ttl, client.ping(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(format!("node {target}: {status}")),
            Err(_) => {
                self.evict(target, Lane::Control);
                Err(format!("node {target}: ping timed out after {ttl:?}"))
            }
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RaftRpcKind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let lane = Lane::of(group);
        // Partition groups do not detect failures by RPC timeouts (the node-level detector does),
        // so their calls get a generous deadline: under a burst (thousands of groups electing at
        // once on two cores) short deadlines only cancel work already done, and a wave of
        // cancelled HTTP/2 streams makes the server reset the whole shared connection.
        let ttl = if lane == Lane::Data { ttl.max(DATA_RPC_MIN_TTL) } else { ttl };
        let payload = codec::encode(req).map_err(|e| CallError::Failed(e.to_string()))?;
        let msg = RaftMessage {
            group_id: group,
            kind: kind as i32,
            payload: Bytes::from(payload),
            from_node: self.inner.self_id,
        };
        // Partition groups' elections and appends share batches per peer; snapshots (large, slow)
        // and leadership transfers (rare) go alone, the metadata group on its own connection.
        let batched =
            lane == Lane::Data && matches!(kind, RaftRpcKind::AppendEntries | RaftRpcKind::Vote | RaftRpcKind::PreVote);
        let reply = if batched {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.batcher(target)
                .send(Pending { msg, ttl, reply: tx })
                .map_err(|_| CallError::Unreachable(format!("node {target}: its batch queue is closed")))?;
            match tokio::time::timeout(ttl, rx).await {
                Err(_) => {
                    return Err(CallError::Unreachable(format!(
                        "node {target}: {kind:?} for group {group} timed out after {ttl:?}"
                    )))
                }
                Ok(Err(_)) => {
                    return Err(CallError::Unreachable(format!(
                        "node {target}: {kind:?} for group {group}: its batch was dropped"
                    )))
                }
                Ok(Ok(r)) => r?,
            }
        } else {
            let ch = self.channel(target, lane)?;
            let mut client = RaftTransportClient::new(ch)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
            match tokio::time::timeout(ttl, client.call(msg)).await {
                Err(_) => {
                    // The connection may be stuck (a peer that vanished mid-stream): start a new one.
                    self.evict(target, lane);
                    return Err(CallError::Unreachable(format!(
                        "node {target}: {kind:?} for group {group} timed out after {ttl:?}"
                    )));
                }
                Ok(Err(status)) => return Err(status_error(target, &status)),
                Ok(Ok(r)) => r.into_inner(),
            }
        };
        // The peer's node answered: it is alive, whatever its group said.
        self.inner.liveness.heard(target);
        if !reply.error.is_empty() {
            return Err(CallError::Failed(format!("node {target} group {group}: {}", reply.error)));
        }
        codec::decode(&reply.payload).map_err(|e| CallError::Failed(e.to_string()))
    }
}

impl Router {
    /// The queue of `target`'s batcher, started on first use.
    fn batcher(&self, target: NodeId) -> tokio::sync::mpsc::UnboundedSender<Pending> {
        let mut batchers = self.inner.batchers.lock();
        if let Some(tx) = batchers.get(&target).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        batchers.insert(target, tx.clone());
        tokio::spawn(run_batcher(Arc::downgrade(&self.inner), target, rx));
        tx
    }
}

/// Sends `target`'s queued messages in batches, at most `MAX_BATCHES_IN_FLIGHT` at a time. Ends
/// when the router is gone.
async fn run_batcher(router: Weak<RouterInner>, target: NodeId, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: whatever arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.msg.payload.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.msg.payload.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = router.upgrade() else { return };
        tokio::spawn(async move {
            send_batch(Router { inner }, target, batch).await;
            drop(slot);
        });
    }
}

/// One `CallBatch` to `target`; every waiting caller gets its own reply or the batch's failure.
async fn send_batch(router: Router, target: NodeId, batch: Vec<Pending>) {
    let deadline = tokio::time::Instant::now() + batch.iter().map(|p| p.ttl).max().unwrap_or(DATA_RPC_MIN_TTL);
    let mut messages = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for p in batch {
        messages.push(p.msg);
        waiting.push(Some(p.reply));
    }
    let fail_rest = |waiting: &mut Vec<Option<tokio::sync::oneshot::Sender<Result<RaftReply, CallError>>>>,
                     e: CallError| {
        for tx in waiting.iter_mut().filter_map(Option::take) {
            let _ = tx.send(Err(e.clone()));
        }
    };
    let ch = match router.channel(target, Lane::Data) {
        Ok(ch) => ch,
        Err(e) => return fail_rest(&mut waiting, e),
    };
    let mut client = RaftTransportClient::new(ch)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let timed_out = || CallError::Unreachable(format!("node {target}: a batch of Raft messages timed out"));
    let mut replies = match tokio::time::timeout_at(deadline, client.call_batch(RaftBatch { messages })).await {
        Err(_) => {
            router.evict(target, Lane::Data);
            return fail_rest(&mut waiting, timed_out());
        }
        Ok(Err(status)) => return fail_rest(&mut waiting, status_error(target, &status)),
        Ok(Ok(r)) => r.into_inner(),
    };
    router.inner.liveness.heard(target);
    loop {
        match tokio::time::timeout_at(deadline, replies.message()).await {
            Ok(Ok(Some(item))) => {
                if let Some(tx) = waiting.get_mut(item.index as usize).and_then(Option::take) {
                    let _ = tx.send(Ok(item.reply.unwrap_or_default()));
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => return fail_rest(&mut waiting, status_error(target, &status)),
            Err(_) => {
                router.evict(target, Lane::Data);
                return fail_rest(&mut waiting, timed_out());
            }
        }
    }
    fail_rest(&mut waiting, CallError::Failed(format!("node {target}: its batch reply left a message unanswered")));
}

/// How a failed gRPC call is reported to openraft: transport trouble is "unreachable" (retried
/// with backoff), anything else a failed call.
fn status_error(target: NodeId, status: &tonic::Status) -> CallError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            CallError::Unreachable(format!("node {target}: {}", status.message()))
        }
        _ => CallError::Failed(format!("node {target}: {status}")),
    }
}

/// The shortest deadline of a partition group's RPC (see `Router::call`).
const DATA_RPC_MIN_TTL: Duration = Duration::from_secs(3);

/// Bytes of entries one AppendEntries carries at most (well under the gRPC message limit, and small
/// enough that one request does not hold a follower's apply loop for long).
const MAX_APPEND_BYTES: usize = 8 * 1024 * 1024;

/// How many of `entries`, from the first, fit in `budget` encoded bytes (always at least one: a
/// single entry is bounded by the batch size limit, which is under the message limit).
fn entries_within<E: Serialize>(entries: &[E], budget: usize) -> Result<usize, codec::CodecError> {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        total += codec::encoded_len(e)?;
        if total > budget && i > 0 {
            return Ok(i);
        }
    }
    Ok(entries.len())
}

fn ttl(option: &RPCOption) -> Duration {
    option.hard_ttl().max(Duration::from_millis(50))
}

impl<C> GroupRouter<C, GroupId> for Router
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        target: NodeId,
        group_id: GroupId,
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // openraft bounds a request by entry count only; with batches of up to 16 MiB per entry a
        // lagging follower's catch-up request could exceed the gRPC message limit and fail again
        // on every retry. Send a prefix that fits and report how far it got (PartialSuccess):
        // openraft continues from there.
        let keep = entries_within(&rpc.entries, MAX_APPEND_BYTES).map_err(|e| CallError::Failed(e.0).rpc())?;
        let truncated = keep < rpc.entries.len();
        if truncated {
            rpc.entries.truncate(keep);
        }
        let last = rpc.entries.last().map(|e| e.log_id());
        let resp: AppendEntriesResponse<C> = self
            .call(target, group_id, RaftRpcKind::AppendEntries, &rpc, ttl(&option))
            .await
            .map_err(CallError::rpc)?;
        Ok(match resp {
            AppendEntriesResponse::Success if truncated => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
    }

    async fn vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(target, group_id, RaftRpcKind::Vote, &rpc, ttl(&option)).await.map_err(CallError::rpc)
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(target, group_id, RaftRpcKind::PreVote, &rpc, ttl(&option)).await.map_err(CallError::rpc)
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group_id: GroupId,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        self.call(target, group_id, RaftRpcKind::FullSnapshot, &req, ttl(&option).max(Duration::from_secs(30)))
            .await
            .map_err(CallError::streaming)
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group_id: GroupId,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(target, group_id, RaftRpcKind::TransferLeader, &req, ttl(&option)).await.map_err(CallError::rpc)
    }

    fn backoff(&self) -> Option<Backoff> {
        // A peer that is down is retried every 200 ms rather than in a tight loop.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}

/// The per-group network factory openraft asks for: (shared router, group id).
pub type NetworkFactory = GroupNetworkFactory<Router, GroupId>;

pub fn network_factory(router: &Router, group: GroupId) -> NetworkFactory {
    GroupNetworkFactory::new(router.clone(), group)
}

macro_rules! impl_factory {
    ($t:ty) => {
        impl RaftNetworkFactory<$t> for GroupNetworkFactory<Router, GroupId> {
            type Network = GroupNetworkAdapter<$t, GroupId, Router>;

            async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
                GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id)
            }
        }
    };
}

impl_factory!(crate::MetaTypes);
impl_factory!(crate::PartitionTypes);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{GroupHandler, GroupRegistry, TransportService, TransportStats};
    use runnel_proto::internal::raft_transport_server::RaftTransportServer;
    use std::sync::atomic::Ordering;

    /// A group that answers `request + its id` after `delay`, or once `gate` opens.
    struct Echo {
        id: u64,
        delay: Duration,
        gate: Option<Arc<tokio::sync::Notify>>,
    }

    impl GroupHandler for Echo {
        fn handle(
            &self,
            _kind: RaftRpcKind,
            payload: Bytes,
            _from: NodeId,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
            Box::pin(async move {
                let n: u64 = codec::decode(&payload).map_err(|e| e.to_string())?;
                match &self.gate {
                    Some(gate) => gate.notified().await,
                    None => tokio::time::sleep(self.delay).await,
                }
                codec::encode(&(n + self.id)).map_err(|e| e.to_string())
            })
        }
    }

    /// A node serving `registry` on a local port, and a router of another node pointing at it.
    async fn pair(registry: GroupRegistry) -> (Router, Arc<TransportStats>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(TransportStats::default());
        let liveness = NodeLiveness::new(2, 1, crate::liveness::LivenessConfig::new(100, 500));
        let service =
            TransportService { registry, liveness, stats: stats.clone(), auth: runnel_proto::peer::NodeAuth::Open };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftTransportServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let router = Router::new(
            1,
            runnel_proto::dial::tcp(),
            NodeLiveness::new(1, 1, crate::liveness::LivenessConfig::new(100, 500)),
        );
        router.set_addr(2, &addr.to_string());
        (router, stats)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_groups_messages_to_one_peer_travel_in_a_few_batches_and_each_gets_its_own_reply() {
        let registry = GroupRegistry::default();
        for g in 1..=500u64 {
            registry.insert(g, Arc::new(Echo { id: g * 1000, delay: Duration::from_millis(20), gate: None }));
        }
        let (router, stats) = pair(registry).await;
        let calls = (1..=500u64).map(|g| {
            let router = router.clone();
            async move {
                let r: Result<u64, CallError> = router.call(2, g, RaftRpcKind::Vote, &g, Duration::from_secs(10)).await;
                (g, r.map_err(|e| e.message()))
            }
        });
        for (g, r) in futures::future::join_all(calls).await {
            assert_eq!(r, Ok(g + g * 1000), "group {g} got another group's reply or none");
        }
        let (batches, carried, single) = (
            stats.batches.load(Ordering::Relaxed),
            stats.batched_messages.load(Ordering::Relaxed),
            stats.calls.load(Ordering::Relaxed),
        );
        assert_eq!((carried, single), (500, 0), "every vote travels in a batch");
        assert!(batches <= 50, "500 votes in {batches} batches: they were not batched");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_group_does_not_hold_the_replies_of_the_others_in_its_batch() {
        let registry = GroupRegistry::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        registry.insert(1, Arc::new(Echo { id: 0, delay: Duration::ZERO, gate: Some(gate.clone()) }));
        for g in 2..=50u64 {
            registry.insert(g, Arc::new(Echo { id: 0, delay: Duration::from_millis(50), gate: None }));
        }
        let (router, stats) = pair(registry).await;
        // One batch: the slow group's message first, then the others.
        let mut batch = Vec::new();
        let mut replies = Vec::new();
        for g in 1..=50u64 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = RaftMessage {
                group_id: g,
                kind: RaftRpcKind::Vote as i32,
                payload: Bytes::from(codec::encode(&g).unwrap()),
                from_node: 1,
            };
            batch.push(Pending { msg, ttl: Duration::from_secs(30), reply: tx });
            replies.push(rx);
        }
        let slow = replies.remove(0);
        tokio::spawn(send_batch(router, 2, batch));
        // The slow group answers only after all the others have: if it held their replies, this
        // would never finish.
        let others = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(replies))
            .await
            .expect("the other groups' replies waited for the slow group in their batch");
        for (i, r) in others.into_iter().enumerate() {
            let reply = r.unwrap().map_err(|e| e.message()).unwrap();
            assert_eq!(codec::decode::<u64>(&reply.payload).unwrap(), i as u64 + 2);
        }
        assert_eq!(stats.batches.load(Ordering::Relaxed), 1, "the test needs them all in one batch");
        gate.notify_one();
        let reply = slow.await.unwrap().map_err(|e| e.message()).unwrap();
        assert_eq!(codec::decode::<u64>(&reply.payload).unwrap(), 1);
    }

    #[test]
    fn an_append_request_is_cut_to_the_byte_budget_but_never_to_nothing() {
        let entries: Vec<Vec<u8>> = (0..10).map(|_| vec![7u8; 1000]).collect();
        let one = codec::encoded_len(&entries[0]).unwrap();
        assert_eq!(entries_within(&entries, 10 * one).unwrap(), 10);
        assert_eq!(entries_within(&entries, 3 * one).unwrap(), 3);
        assert_eq!(entries_within(&entries, 3 * one + 1).unwrap(), 3);
        assert_eq!(entries_within(&entries, 10).unwrap(), 1, "one oversized entry still goes alone");
        assert_eq!(entries_within::<Vec<u8>>(&[], 10).unwrap(), 0);
    }
}
