//! The controller: whichever node leads the metadata group. It registers brokers, tracks their
//! liveness, places partitions and records partition leaders — always by committing a command to
//! the metadata log first; brokers act only on what is committed.

use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
// tokio's clock, not std's: under the simulator it is simulated time, so sessions and the
// replacement timeout follow the simulation (and replay exactly).
use tokio::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use runnel_meta::{
    place_partitions, plan_rebalance, plan_replacements, BrokerStatus, MetaCommand, MetaResponse, PartitionRecord,
    TopicRecord,
};
use runnel_proto::internal::controller_client::ControllerClient;
use runnel_proto::internal::controller_server::Controller as ControllerRpc;
use runnel_proto::internal::{BrokerHeartbeatRequest, BrokerHeartbeatResponse, ExecuteRequest, ExecuteResponse};
use runnel_raft::codec;
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_raft::network::Router;
use runnel_raft::MetaRaft;
use runnel_types::limits::{MAX_GRPC_MESSAGE_BYTES, MAX_PARTITIONS_PER_TOPIC, MAX_REPLICATION_FACTOR};

use crate::admin::{AdminAnswer, AdminCommand, AdminError};
use runnel_types::topic::{validate_topic_name, TopicConfig};
use runnel_types::{ErrorCode, GroupId, NodeId, RunnelError};
use std::collections::BTreeSet;

pub struct Controller {
    pub node_id: NodeId,
    /// This node's metadata replica; replaced when it stopped on a storage error and was started
    /// again (see `node::run_meta_restarter`).
    raft: parking_lot::RwLock<MetaRaft>,
    pub sm: MetaStateMachine,
    pub router: Router,
    session_timeout: Duration,
    /// Last heartbeat per broker, as seen by this node while it is controller.
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// When (and in which term) this node last became controller: brokers get one session to
    /// report in.
    leader_since: Mutex<Option<(Instant, u64)>>,
    /// A broker unavailable (as this controller has seen it) for longer than this has its replicas
    /// moved to live brokers.
    replacement_timeout: Duration,
    /// Since when this controller has seen each broker not alive. Memory only: after a controller
    /// failover the clock starts again, which only delays a replacement.
    down_since: Mutex<HashMap<NodeId, Instant>>,
    /// Producer ids reserved through the metadata log and not handed out yet: `next..end`.
    /// Reserved ids stay unique even if this node stops being controller, so the block is kept.
    producer_ids: tokio::sync::Mutex<(u64, u64)>,
    /// The latest leader report of each broker not yet acted on, and whether a task is acting on
    /// that broker's reports (one at a time, always the latest; see `heartbeat`).
    reports: Mutex<HashMap<NodeId, (Option<BrokerHeartbeatRequest>, bool)>>,
}

/// Producer ids reserved per metadata write.
const PRODUCER_ID_BLOCK: u64 = 1000;

impl Controller {
    pub fn new(
        node_id: NodeId,
        raft: MetaRaft,
        sm: MetaStateMachine,
        router: Router,
        session_timeout: Duration,
        replacement_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            raft: parking_lot::RwLock::new(raft),
            sm,
            router,
            session_timeout,
            last_seen: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            replacement_timeout,
            down_since: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
        })
    }

    /// Carries out a cluster change: here when this node is the controller, else forwarded to the
    /// controller over `Controller.Execute` (one hop: a controller that lost its role on the way
    /// answers NOT_CONTROLLER naming the new one, and the caller retries). The caller has checked
    /// the requester's rights already.
    pub async fn execute(&self, cmd: AdminCommand) -> Result<AdminAnswer, RunnelError> {
        if self.is_controller() {
            return self.execute_here(cmd).await;
        }
        let (id, addr) = self.controller().ok_or_else(|| {
            RunnelError::new(ErrorCode::NotController, "no metadata leader (controller) is known yet; retry shortly")
        })?;
        let what = cmd.describe();
        let command = codec::encode(&cmd).map_err(|e| RunnelError::internal(format!("encoding '{what}': {e}")))?;
        let channel =
            self.router.dialer().channel(&addr).map_err(|e| {
                RunnelError::new(ErrorCode::NotController, format!("controller node {id} at {addr}: {e}"))
            })?;
        let resp = ControllerClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .execute(ExecuteRequest { from_node: self.node_id, command: command.into() })
            .await
            .map_err(|s| {
                let mut e = RunnelError::new(
                    ErrorCode::NotController,
                    format!("forwarding '{what}' to controller node {id} at {addr}: {}", s.message()),
                );
                e.leader = Some((id, addr.clone()));
                e
            })?
            .into_inner();
        let answer: Result<AdminAnswer, AdminError> = codec::decode(&resp.answer)
            .map_err(|e| RunnelError::internal(format!("the controller's answer to '{what}': {e}")))?;
        answer.map_err(RunnelError::from)
    }

    async fn execute_here(&self, cmd: AdminCommand) -> Result<AdminAnswer, RunnelError> {
        match cmd {
            AdminCommand::CreateTopic { name, partitions, replication_factor, configs } => {
                self.create_topic(&name, partitions, replication_factor, &configs).await.map(AdminAnswer::Topic)
            }
            AdminCommand::DeleteTopic { name } => self.delete_topic(&name).await.map(|_| AdminAnswer::Done),
            AdminCommand::AlterTopicConfig { topic, set, delete } => {
                self.alter_topic_config(&topic, &set, &delete).await.map(AdminAnswer::Topic)
            }
            AdminCommand::CreatePartitions { topic, total } => {
                self.create_partitions(&topic, total).await.map(AdminAnswer::Topic)
            }
            AdminCommand::Decommission { node, cancel } => {
                self.decommission(node, cancel).await.map(AdminAnswer::Remaining)
            }
            AdminCommand::Reassign { topic, partition, replicas } => {
                self.reassign(&topic, partition, replicas).await.map(AdminAnswer::Partition)
            }
            AdminCommand::Rebalance { dry_run } => self.rebalance(dry_run).await.map(AdminAnswer::Moves),
            AdminCommand::ReplaceVoter { remove, add } => {
                self.replace_voter(remove, add).await.map(AdminAnswer::Voters)
            }
            AdminCommand::NewProducerId => self.new_producer_id().await.map(AdminAnswer::ProducerId),
            AdminCommand::PutUser { name, credentials } => {
                // The token key is drawn here, by the proposer: applying must be deterministic.
                let token_key = crate::access::new_token_key();
                let cmd = MetaCommand::PutUser { name, credentials, token_key, if_absent: false };
                self.propose(cmd).await.map(|_| AdminAnswer::Done)
            }
            AdminCommand::DeleteUser { name } => {
                self.propose(MetaCommand::DeleteUser { name }).await.map(|_| AdminAnswer::Done)
            }
            AdminCommand::AddAcls { rules } => {
                self.propose(MetaCommand::AddAcls { rules }).await.map(|_| AdminAnswer::Done)
            }
            AdminCommand::RemoveAcls { rules } => match self.propose(MetaCommand::RemoveAcls { rules }).await? {
                MetaResponse::Removed { count } => Ok(AdminAnswer::Removed(count)),
                other => Err(RunnelError::internal(format!("RemoveAcls answered {other:?}"))),
            },
            AdminCommand::SetQuota { principal, quota } => {
                self.propose(MetaCommand::SetQuota { principal, quota }).await.map(|_| AdminAnswer::Done)
            }
        }
    }

    /// A new idempotent-producer id (epoch 0), from the reserved block; reserves a new block
    /// through the metadata log when it is used up (one metadata write per 1000 producers).
    pub async fn new_producer_id(&self) -> Result<u64, RunnelError> {
        self.ensure_controller()?;
        let mut ids = self.producer_ids.lock().await;
        if ids.0 >= ids.1 {
            match self.propose(MetaCommand::AllocateProducerIds { count: PRODUCER_ID_BLOCK }).await? {
                MetaResponse::ProducerIds { first, count } => *ids = (first, first + count),
                other => return Err(RunnelError::internal(format!("producer id allocation answered {other:?}"))),
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    pub fn ensure_controller(&self) -> Result<(), RunnelError> {
        if self.is_controller() {
            Ok(())
        } else {
            Err(self.not_controller())
        }
    }

    /// This node's metadata replica.
    pub fn raft(&self) -> MetaRaft {
        self.raft.read().clone()
    }

    /// Uses `raft` as this node's metadata replica from now on (the previous one stopped).
    pub fn replace_raft(&self, raft: MetaRaft) {
        *self.raft.write() = raft;
    }

    /// The metadata group's voters.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.raft().metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().voter_ids().collect()
    }

    pub fn is_controller(&self) -> bool {
        let (leader, term) = {
            let m = self.raft().metrics();
            let m = m.borrow_watched();
            (m.state == ServerState::Leader, m.current_term)
        };
        let mut since = self.leader_since.lock();
        match (leader, *since) {
            (true, Some((_, t))) if t == term => {}
            (true, _) => {
                *since = Some((Instant::now(), term));
                // Heartbeats seen in an earlier term as controller are stale: brokers have been
                // reporting to another controller since. Everyone starts with a fresh session.
                self.last_seen.lock().clear();
            }
            (false, _) => *since = None,
        }
        leader
    }

    /// The controller's id and address, when known.
    pub fn controller(&self) -> Option<(NodeId, String)> {
        let id = self.raft().metrics().borrow_watched().current_leader?;
        Some((id, self.router.addr(id)?))
    }

    fn not_controller(&self) -> RunnelError {
        let mut e = RunnelError::new(
            ErrorCode::NotController,
            match self.controller() {
                Some((id, addr)) => format!("node {} is not the controller; node {id} at {addr} is", self.node_id),
                None => format!("node {} is not the controller and no controller is known yet", self.node_id),
            },
        );
        e.leader = self.controller();
        e
    }

    /// Commits a command to the metadata log and returns its result once applied.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaResponse, RunnelError> {
        match tokio::time::timeout(Duration::from_secs(10), self.raft().client_write(cmd)).await {
            Err(_) => Err(RunnelError::new(ErrorCode::Timeout, "metadata change not committed within 10 s")),
            Ok(Ok(r)) => r.data.into_result(),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(self.not_controller()),
            Ok(Err(e)) => Err(RunnelError::new(ErrorCode::NotController, format!("metadata group: {e}"))),
        }
    }

    pub fn is_live(&self, id: NodeId) -> bool {
        if id == self.node_id {
            return true;
        }
        let seen = self.last_seen.lock().get(&id).cloned();
        match seen {
            Some(t) => t.elapsed() < self.session_timeout,
            // A newly elected controller has heard from nobody yet: registered brokers get one
            // session timeout to report in before they count as not live.
            None => self.leader_since.lock().is_some_and(|(t, _)| t.elapsed() < self.session_timeout),
        }
    }

    /// Brokers that heartbeat within their session and may take new replicas.
    pub fn live_brokers(&self) -> Vec<NodeId> {
        let view = self.sm.current();
        view.state.brokers.values().filter(|b| b.is_eligible() && self.is_live(b.id)).map(|b| b.id).collect()
    }

    /// The controller's periodic duties, every `every` while this node is controller: mark brokers
    /// that missed their session unavailable, and move replicas off brokers that stayed unavailable
    /// past the replacement timeout or are being decommissioned.
    pub async fn run_duties(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_controller() {
                self.down_since.lock().clear();
                continue;
            }
            if let Err(e) = self.duties_once().await {
                tracing::debug!(error = %e, "controller duties");
            }
        }
    }

    async fn duties_once(&self) -> Result<(), RunnelError> {
        let view = self.sm.current();
        for b in view.state.brokers.values() {
            if b.is_alive() && !self.is_live(b.id) {
                tracing::warn!(
                    broker = b.id,
                    epoch = b.epoch,
                    "broker missed its session timeout: marking it unavailable"
                );
                self.propose(MetaCommand::MarkBrokerUnavailable { id: b.id, epoch: b.epoch, shutting_down: false })
                    .await?;
            }
        }
        let view = self.sm.current();
        let mut evict = BTreeSet::new();
        {
            let mut down = self.down_since.lock();
            down.retain(|id, _| view.state.brokers.get(id).is_some_and(|b| !b.is_alive()));
            for b in view.state.brokers.values() {
                if b.decommissioning {
                    evict.insert(b.id);
                }
                if !b.is_alive() {
                    let since = *down.entry(b.id).or_insert_with(Instant::now);
                    if since.elapsed() >= self.replacement_timeout {
                        evict.insert(b.id);
                    }
                }
            }
        }
        if evict.is_empty() {
            return Ok(());
        }
        let moves = plan_replacements(&view.state, &evict);
        if !moves.is_empty() {
            tracing::info!(?evict, ?moves, "moving replicas off unavailable or decommissioned brokers");
            self.propose(MetaCommand::ReassignPartitions { moves }).await?;
        }
        Ok(())
    }

    /// Replicas still on `node` (counting reassignments moving onto it).
    pub fn replicas_on(&self, node: NodeId) -> u32 {
        self.sm.current().state.partitions_on(node).len() as u32
    }

    pub async fn decommission(&self, node: NodeId, cancel: bool) -> Result<u32, RunnelError> {
        self.ensure_controller()?;
        let view = self.sm.current();
        if !view.state.brokers.contains_key(&node) {
            return Err(RunnelError::new(ErrorCode::InvalidRequest, format!("node {node} is not registered")));
        }
        if !cancel {
            let others = view.state.eligible_brokers().into_iter().filter(|b| *b != node).count();
            let max_rf = view.state.topics.values().flat_map(|t| t.partitions.iter()).map(|p| p.replicas.len()).max();
            if let Some(rf) = max_rf.filter(|rf| *rf > others) {
                return Err(RunnelError::new(
                    ErrorCode::NotEnoughBrokers,
                    format!(
                        "decommissioning node {node} would leave {others} eligible brokers, fewer than the replication factor {rf} some partitions need"
                    ),
                ));
            }
        }
        self.propose(MetaCommand::SetDecommissioning { id: node, on: !cancel }).await?;
        if !cancel {
            // Start moving at once rather than on the next duty tick.
            self.duties_once().await?;
        }
        Ok(self.replicas_on(node))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<PartitionRecord, RunnelError> {
        let view = self.sm.current();
        let t = view.state.topics.get(topic).ok_or_else(|| RunnelError::unknown_topic(topic))?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| RunnelError::unknown_partition(topic, partition, t.partitions.len()))
    }

    pub async fn reassign(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<PartitionRecord, RunnelError> {
        self.ensure_controller()?;
        let p = self.partition(topic, partition)?;
        let view = self.sm.current();
        for r in &replicas {
            match view.state.brokers.get(r) {
                None => {
                    return Err(RunnelError::new(
                        ErrorCode::InvalidRequest,
                        format!("replica {r} for {topic}/{partition} is not a registered node"),
                    ))
                }
                Some(b) if !b.is_alive() && !p.replicas.contains(r) => {
                    return Err(RunnelError::new(
                        ErrorCode::NotEnoughBrokers,
                        format!("node {r} is {}; a new replica must go to a live node", b.status.as_str()),
                    ))
                }
                _ => {}
            }
        }
        self.propose(MetaCommand::ReassignPartitions { moves: vec![(p.group_id, replicas)] }).await?;
        self.partition(topic, partition)
    }

    /// Plans (and unless `dry_run`, starts) moves that even out replicas and preferred leaders.
    pub async fn rebalance(&self, dry_run: bool) -> Result<Vec<(String, u32, Vec<NodeId>, Vec<NodeId>)>, RunnelError> {
        self.ensure_controller()?;
        let view = self.sm.current();
        let moves = plan_rebalance(&view.state);
        let mut described = Vec::new();
        for (group, to) in &moves {
            for t in view.state.topics.values() {
                for p in t.partitions.iter().filter(|p| p.group_id == *group) {
                    described.push((t.name.clone(), p.partition, p.final_replicas().to_vec(), to.clone()));
                }
            }
        }
        if !dry_run && !moves.is_empty() {
            self.propose(MetaCommand::ReassignPartitions { moves }).await?;
        }
        Ok(described)
    }

    /// Replaces metadata voter `remove` by `add`: `add` first joins as a learner and catches up,
    /// then one joint membership change swaps them.
    pub async fn replace_voter(&self, remove: NodeId, add: NodeId) -> Result<Vec<NodeId>, RunnelError> {
        self.ensure_controller()?;
        let mut voters: BTreeSet<NodeId> = self.voters().into_iter().collect();
        if !voters.contains(&remove) {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("node {remove} is not a metadata voter (voters: {voters:?})"),
            ));
        }
        if voters.contains(&add) {
            return Err(RunnelError::new(ErrorCode::InvalidRequest, format!("node {add} is already a metadata voter")));
        }
        if !self.is_live(add) || !self.sm.current().state.brokers.get(&add).is_some_and(|b| b.is_alive()) {
            return Err(RunnelError::new(
                ErrorCode::NotEnoughBrokers,
                format!("node {add} is not a live registered node; start it first"),
            ));
        }
        let addr = self
            .router
            .addr(add)
            .ok_or_else(|| RunnelError::new(ErrorCode::InvalidRequest, format!("no address known for node {add}")))?;
        let write_err =
            |e: &dyn std::fmt::Display| RunnelError::new(ErrorCode::Timeout, format!("metadata group: {e}"));
        match tokio::time::timeout(Duration::from_secs(30), self.raft().add_learner(add, BasicNode { addr }, true))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(write_err(&e)),
            Err(_) => return Err(write_err(&format!("node {add} did not catch up within 30 s"))),
        }
        voters.remove(&remove);
        voters.insert(add);
        match tokio::time::timeout(Duration::from_secs(30), self.raft().change_membership(voters.clone(), true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(write_err(&e)),
            Err(_) => return Err(write_err(&"voter change not committed within 30 s")),
        }
        tracing::info!(remove, add, ?voters, "metadata voter replaced");
        Ok(voters.into_iter().collect())
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        rf: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<TopicRecord, RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(RunnelError::invalid_config(
                "partitions",
                partitions,
                &format!("must be between 1 and {MAX_PARTITIONS_PER_TOPIC}"),
            ));
        }
        if rf == 0 || rf > MAX_REPLICATION_FACTOR {
            return Err(RunnelError::invalid_config(
                "replication_factor",
                rf,
                &format!("must be between 1 and {MAX_REPLICATION_FACTOR}"),
            ));
        }
        let config = TopicConfig::from_map(configs)?;
        let view = self.sm.current();
        if view.state.topics.contains_key(name) {
            return Err(RunnelError::new(ErrorCode::TopicAlreadyExists, format!("topic '{name}' already exists")));
        }
        let live = self.live_brokers();
        let assignments = place_partitions(&view.state, &live, partitions, rf)?;
        self.propose(MetaCommand::CreateTopic { name: name.to_string(), config, assignments }).await?;
        self.sm.current().state.topics.get(name).cloned().ok_or_else(|| RunnelError::unknown_topic(name))
    }

    /// Changes a topic's configuration (checked here for a clear answer, and again on apply).
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<TopicRecord, RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        let view = self.sm.current();
        let t = view.state.topics.get(name).ok_or_else(|| RunnelError::unknown_topic(name))?;
        t.config.with_changes(set, delete)?;
        self.propose(MetaCommand::AlterTopicConfig {
            name: name.to_string(),
            set: set.clone(),
            delete: delete.to_vec(),
        })
        .await?;
        self.sm.current().state.topics.get(name).cloned().ok_or_else(|| RunnelError::unknown_topic(name))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        self.propose(MetaCommand::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    /// Grows `name` to `total` partitions; the new ones are placed like a new topic's, with the
    /// topic's replication factor.
    async fn create_partitions(&self, name: &str, total: u32) -> Result<TopicRecord, RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        let view = self.sm.current();
        let t = view.state.topics.get(name).ok_or_else(|| RunnelError::unknown_topic(name))?;
        let current = t.partitions.len() as u32;
        if total <= current || total > MAX_PARTITIONS_PER_TOPIC {
            return Err(RunnelError::invalid_config(
                "partitions",
                total,
                &format!(
                    "topic '{name}' has {current}; partitions can only be added, up to {MAX_PARTITIONS_PER_TOPIC}"
                ),
            ));
        }
        let rf = t.partitions.first().map_or(1, |p| p.replicas.len() as u32);
        let live = self.live_brokers();
        let assignments = place_partitions(&view.state, &live, total - current, rf)?;
        self.propose(MetaCommand::AddPartitions { name: name.to_string(), assignments }).await?;
        self.sm.current().state.topics.get(name).cloned().ok_or_else(|| RunnelError::unknown_topic(name))
    }

    async fn heartbeat(self: &Arc<Self>, req: BrokerHeartbeatRequest) -> Result<u64, RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        self.last_seen.lock().insert(req.broker_id, Instant::now());
        self.router.set_addr(req.broker_id, &req.addr);
        let view = self.sm.current();
        let known = view.state.brokers.get(&req.broker_id);
        let epoch = match known {
            Some(b) if req.shutting_down && b.incarnation == req.incarnation => {
                if b.status != BrokerStatus::ShuttingDown {
                    self.propose(MetaCommand::MarkBrokerUnavailable { id: b.id, epoch: b.epoch, shutting_down: true })
                        .await?;
                }
                b.epoch
            }
            Some(b) if b.incarnation == req.incarnation && b.addr == req.addr && b.is_alive() => b.epoch,
            _ => match self
                .propose(MetaCommand::RegisterBroker {
                    id: req.broker_id,
                    addr: req.addr.clone(),
                    incarnation: req.incarnation,
                })
                .await?
            {
                MetaResponse::BrokerRegistered { epoch } => epoch,
                other => return Err(RunnelError::internal(format!("unexpected answer to RegisterBroker: {other:?}"))),
            },
        };
        // Every broker keeps a copy of the metadata: brokers that are not voters join as learners.
        let in_membership = {
            let m = self.raft().metrics();
            let m = m.borrow_watched();
            m.membership_config.membership().get_node(&req.broker_id).is_some()
        };
        let listeners_known = view.state.listeners.get(&req.broker_id).cloned().unwrap_or_default();
        if listeners_known.len() != req.listeners.len()
            || req.listeners.iter().any(|(k, v)| listeners_known.get(k) != Some(v))
        {
            let listeners = req.listeners.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            self.propose(MetaCommand::SetListeners { id: req.broker_id, listeners }).await?;
        }
        if !in_membership {
            let raft = self.raft();
            let (id, addr) = (req.broker_id, req.addr.clone());
            tokio::spawn(async move {
                if let Err(e) = raft.add_learner(id, BasicNode { addr }, false).await {
                    tracing::warn!(broker = id, error = %e, "could not add broker as metadata learner");
                }
            });
        }
        if req.leaders_unchanged {
            return Ok(epoch);
        }
        // The heartbeat is answered now and the report acted on in the background: committing
        // thousands of leader changes can take longer than a heartbeat may (a broker whose
        // heartbeats time out fences itself). One task per broker, always on its latest report.
        let broker = req.broker_id;
        let spawn = {
            let mut reports = self.reports.lock();
            let slot = reports.entry(broker).or_insert((None, false));
            slot.0 = Some(req);
            !std::mem::replace(&mut slot.1, true)
        };
        if spawn {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let next = {
                        let mut reports = me.reports.lock();
                        let slot = reports.entry(broker).or_insert((None, false));
                        match slot.0.take() {
                            Some(r) => r,
                            None => {
                                slot.1 = false;
                                return;
                            }
                        }
                    };
                    if let Err(e) = me.act_on_leader_report(&next).await {
                        tracing::debug!(broker, error = %e, "leader report not applied; the next report retries");
                    }
                }
            });
        }
        Ok(epoch)
    }

    /// Commits what a broker's leader report changes: leaders and their epochs, and reassignments
    /// whose target is now the committed voter set.
    async fn act_on_leader_report(&self, req: &BrokerHeartbeatRequest) -> Result<(), RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        let view = self.sm.current();
        let reports: Vec<_> = req.leaders.iter().map(|l| (l.group_id, req.broker_id, l.term)).collect();
        let changes = view.state.leader_changes(&reports);
        if !changes.is_empty() {
            self.propose(MetaCommand::ReportLeaders { reports: changes }).await?;
        }
        // A reassignment is finished once its leader reports the target as the committed voters.
        let view = self.sm.current();
        // Leaders report voters only for partitions being reassigned (the rest as empty).
        for l in req.leaders.iter().filter(|l| !l.joint && !l.voters.is_empty()) {
            let Some(p) = view.state.partition_by_group(l.group_id) else { continue };
            let Some(target) = &p.target_replicas else { continue };
            let voters: BTreeSet<NodeId> = l.voters.iter().cloned().collect();
            if voters == target.iter().cloned().collect::<BTreeSet<_>>() && p.leader_epoch <= l.term {
                let group: GroupId = l.group_id;
                self.propose(MetaCommand::FinishReassignment { group, partition_epoch: p.partition_epoch }).await?;
                tracing::info!(group, replicas = ?target, "reassignment finished");
            }
        }
        Ok(())
    }
}

/// gRPC face of the controller, for brokers. With mutual TLS a heartbeat is accepted only from the
/// node it names (so nobody re-registers a broker under another address).
pub struct ControllerService(pub Arc<Controller>, pub runnel_proto::peer::NodeAuth);

#[tonic::async_trait]
impl ControllerRpc for ControllerService {
    async fn broker_heartbeat(
        &self,
        req: tonic::Request<BrokerHeartbeatRequest>,
    ) -> Result<tonic::Response<BrokerHeartbeatResponse>, tonic::Status> {
        let c = &self.0;
        self.1.check(req.extensions(), req.get_ref().broker_id, "broker heartbeat")?;
        let resp = match c.heartbeat(req.into_inner()).await {
            Ok(epoch) => BrokerHeartbeatResponse {
                accepted: true,
                error: String::new(),
                controller_id: Some(c.node_id),
                broker_epoch: epoch,
            },
            Err(e) => BrokerHeartbeatResponse {
                accepted: false,
                error: e.to_string(),
                controller_id: c.controller().map(|(id, _)| id),
                broker_epoch: 0,
            },
        };
        Ok(tonic::Response::new(resp))
    }

    async fn execute(
        &self,
        req: tonic::Request<ExecuteRequest>,
    ) -> Result<tonic::Response<ExecuteResponse>, tonic::Status> {
        self.1.check(req.extensions(), req.get_ref().from_node, "forwarded cluster change")?;
        let r = req.into_inner();
        let cmd: AdminCommand = codec::decode(&r.command).map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "a cluster change forwarded by node {} does not decode: {e}",
                r.from_node
            ))
        })?;
        let answer = self.0.execute_here(cmd).await.map_err(|e| AdminError::from(&e));
        let answer =
            codec::encode(&answer).map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?;
        Ok(tonic::Response::new(ExecuteResponse { answer: answer.into() }))
    }
}
