//! The controller: whichever node leads the metadata group. It registers brokers, tracks their
//! liveness, places partitions and records partition leaders — always by committing a command to
//! the metadata log first; brokers act only on what is committed.

use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use runnel_meta::{place_partitions, MetaCommand, MetaResponse, TopicRecord};
use runnel_proto::internal::controller_server::Controller as ControllerRpc;
use runnel_proto::internal::{BrokerHeartbeatRequest, BrokerHeartbeatResponse};
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_raft::network::Router;
use runnel_raft::MetaRaft;
use runnel_types::limits::{MAX_PARTITIONS_PER_TOPIC, MAX_REPLICATION_FACTOR};
use runnel_types::topic::{validate_topic_name, TopicConfig};
use runnel_types::{ErrorCode, NodeId, RunnelError};

pub struct Controller {
    pub node_id: NodeId,
    pub raft: MetaRaft,
    pub sm: MetaStateMachine,
    pub router: Router,
    session_timeout: Duration,
    /// Last heartbeat per broker, as seen by this node while it is controller.
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// When this node last became controller: brokers get one session to report in.
    leader_since: Mutex<Option<Instant>>,
}

impl Controller {
    pub fn new(
        node_id: NodeId,
        raft: MetaRaft,
        sm: MetaStateMachine,
        router: Router,
        session_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            raft,
            sm,
            router,
            session_timeout,
            last_seen: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
        })
    }

    pub fn is_controller(&self) -> bool {
        let m = self.raft.metrics();
        let leader = m.borrow_watched().state == ServerState::Leader;
        let mut since = self.leader_since.lock();
        match (leader, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
        leader
    }

    /// The controller's id and address, when known.
    pub fn controller(&self) -> Option<(NodeId, String)> {
        let id = self.raft.metrics().borrow_watched().current_leader?;
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
        match tokio::time::timeout(Duration::from_secs(10), self.raft.client_write(cmd)).await {
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
            None => self.leader_since.lock().is_some_and(|t| t.elapsed() < self.session_timeout),
        }
    }

    pub fn live_brokers(&self) -> Vec<NodeId> {
        let view = self.sm.current();
        view.state.brokers.keys().cloned().filter(|id| self.is_live(*id)).collect()
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

    pub async fn delete_topic(&self, name: &str) -> Result<(), RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        self.propose(MetaCommand::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    async fn heartbeat(&self, req: BrokerHeartbeatRequest) -> Result<u64, RunnelError> {
        if !self.is_controller() {
            return Err(self.not_controller());
        }
        self.last_seen.lock().insert(req.broker_id, Instant::now());
        self.router.set_addr(req.broker_id, &req.addr);
        let view = self.sm.current();
        let known = view.state.brokers.get(&req.broker_id);
        let epoch = match known {
            Some(b) if b.incarnation == req.incarnation && b.addr == req.addr => b.epoch,
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
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config.membership().get_node(&req.broker_id).is_some()
        };
        if !in_membership {
            let raft = self.raft.clone();
            let (id, addr) = (req.broker_id, req.addr.clone());
            tokio::spawn(async move {
                if let Err(e) = raft.add_learner(id, BasicNode { addr }, false).await {
                    tracing::warn!(broker = id, error = %e, "could not add broker as metadata learner");
                }
            });
        }
        let reports: Vec<_> = req.leaders.iter().map(|l| (l.group_id, req.broker_id, l.term)).collect();
        let changes = view.state.leader_changes(&reports);
        if !changes.is_empty() {
            self.propose(MetaCommand::ReportLeaders { reports: changes }).await?;
        }
        Ok(epoch)
    }
}

/// gRPC face of the controller, for brokers.
pub struct ControllerService(pub Arc<Controller>);

#[tonic::async_trait]
impl ControllerRpc for ControllerService {
    async fn broker_heartbeat(
        &self,
        req: tonic::Request<BrokerHeartbeatRequest>,
    ) -> Result<tonic::Response<BrokerHeartbeatResponse>, tonic::Status> {
        let c = &self.0;
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
}
