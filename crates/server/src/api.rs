//! The public `runnel.v1.Runnel` service: routes each call to the local partition replica, the
//! local copy of the metadata, or the controller.

use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runnel_broker::{Broker, Partition};
use runnel_meta::{ClusterState, MetaCommand, MetaResponse, PartitionRecord, TopicRecord};
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::runnel_server::Runnel;
use runnel_proto::v1::*;
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_raft::ProducerStamp;
use runnel_types::limits::{DEFAULT_PRODUCE_TIMEOUT_MS, MAX_GRPC_MESSAGE_BYTES};
use runnel_types::topic::TopicConfig;
use runnel_types::{ErrorCode, NodeId, RunnelError};
use tonic::{Request, Response, Status};

use crate::auth::{node_request, Gatekeeper};
use crate::controller::Controller;
use crate::coordinator::Coordinator;
use crate::security_wire as security;

pub struct Api {
    pub broker: Arc<Broker>,
    pub controller: Arc<Controller>,
    pub meta: MetaStateMachine,
    pub coordinator: Arc<Coordinator>,
    /// Authentication, ACLs and quotas: every call below passes through it once.
    pub gate: Arc<Gatekeeper>,
}

use runnel_security::acl::{Operation, ResourceType, CLUSTER};
use runnel_security::quota::QuotaKind;

fn err(e: &RunnelError) -> Option<Error> {
    Some(e.into())
}

pub fn partition_info(p: &PartitionRecord) -> PartitionInfo {
    PartitionInfo {
        partition: p.partition,
        group_id: p.group_id,
        replicas: p.replicas.clone(),
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        target_replicas: p.target_replicas.clone().unwrap_or_default(),
    }
}

/// Brokers as the committed metadata has them, with their replica and leadership counts.
fn broker_infos(state: &ClusterState, voters: &[NodeId]) -> Vec<BrokerInfo> {
    state
        .brokers
        .values()
        .map(|b| {
            let hosted = state.partitions_on(b.id);
            BrokerInfo {
                id: b.id,
                addr: b.addr.clone(),
                alive: b.is_alive(),
                epoch: b.epoch,
                status: b.status.as_str().to_string(),
                decommissioning: b.decommissioning,
                voter: voters.contains(&b.id),
                replica_count: hosted.len() as u32,
                leader_count: hosted.iter().filter(|(_, p)| p.leader == Some(b.id)).count() as u32,
            }
        })
        .collect()
}

/// Every partition that is leaderless or under-replicated, and why, judged from the metadata.
pub fn partition_problems(state: &ClusterState) -> Vec<PartitionProblem> {
    let mut out = Vec::new();
    let status = |id: &NodeId| state.brokers.get(id).map(|b| b.status.as_str()).unwrap_or("not registered");
    let alive = |id: &NodeId| state.brokers.get(id).is_some_and(|b| b.is_alive());
    for t in state.topics.values() {
        for p in &t.partitions {
            let problem = |kind: &str, reason: String| PartitionProblem {
                topic: t.name.clone(),
                partition: p.partition,
                kind: kind.to_string(),
                reason,
            };
            match p.leader {
                None => out.push(problem("leaderless", "no leader has been elected yet".into())),
                Some(l) if !alive(&l) => out.push(problem(
                    "leaderless",
                    format!("its last leader, node {l}, is {}; no other replica has taken over yet", status(&l)),
                )),
                _ => {}
            }
            let down: Vec<String> =
                p.replicas.iter().filter(|r| !alive(r)).map(|r| format!("node {r} is {}", status(r))).collect();
            if !down.is_empty() {
                out.push(problem(
                    "under-replicated",
                    format!("{} of {} replicas are not serving: {}", down.len(), p.replicas.len(), down.join(", ")),
                ));
            }
            if let Some(target) = &p.target_replicas {
                let adding: Vec<_> = target.iter().filter(|r| !p.replicas.contains(r)).collect();
                let removing: Vec<_> = p.replicas.iter().filter(|r| !target.contains(r)).collect();
                out.push(problem(
                    "under-replicated",
                    format!("reassignment in progress: adding {adding:?}, removing {removing:?}"),
                ));
            }
        }
    }
    out
}

pub fn topic_info(t: &TopicRecord) -> TopicInfo {
    TopicInfo {
        name: t.name.clone(),
        topic_id: t.topic_id,
        partitions: t.partitions.iter().map(partition_info).collect(),
        configs: t.config.to_map().into_iter().collect(),
    }
}

impl Api {
    fn addr_of(&self, id: NodeId) -> Option<String> {
        self.controller.router.addr(id)
    }

    /// The local replica of `topic/partition`, or the error a client can act on.
    fn local(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, RunnelError> {
        if let Some(p) = self.broker.partition(topic, partition) {
            return Ok(p);
        }
        let view = self.meta.current();
        let t = view.state.topics.get(topic).ok_or_else(|| RunnelError::unknown_topic(topic))?;
        let p = t
            .partitions
            .get(partition as usize)
            .ok_or_else(|| RunnelError::unknown_partition(topic, partition, t.partitions.len()))?;
        let hint = p.leader.filter(|l| *l != self.broker.node_id()).and_then(|l| self.addr_of(l).map(|a| (l, a)));
        Err(RunnelError::not_leader(topic, partition, hint))
    }

    /// Commits `cmd` on the controller, or has `forward` send the request there.
    async fn propose_forwarded<F, Fut>(&self, cmd: MetaCommand, forward: F) -> Result<(), RunnelError>
    where
        F: FnOnce(RunnelClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Error>, Status>>,
    {
        if self.controller.is_controller() {
            return self.controller.propose(cmd).await.map(|_| ());
        }
        let c = self.controller_client().await?;
        match forward(c).await {
            Ok(error) => runnel_proto::check_error(error.as_ref()),
            Err(status) => Err(RunnelError::new(
                ErrorCode::NotController,
                format!("forwarding to the controller: {}", status.message()),
            )),
        }
    }

    /// `msg` for the controller, sent as this node: the caller was checked here already.
    fn forward<T>(&self, msg: T) -> Request<T> {
        node_request(&self.meta, self.broker.node_id(), msg)
    }

    /// The caller, allowed to do `op` to the cluster.
    fn cluster_caller<T>(&self, req: &Request<T>, op: Operation) -> Result<runnel_security::acl::Principal, Status> {
        let who = self.gate.principal(req)?;
        self.gate.check(&who, op, ResourceType::Cluster, CLUSTER)?;
        Ok(who)
    }

    async fn controller_client(&self) -> Result<RunnelClient<tonic::transport::Channel>, RunnelError> {
        let (id, addr) = self.controller.controller().ok_or_else(|| {
            RunnelError::new(ErrorCode::NotController, "no metadata leader (controller) is known yet; retry shortly")
        })?;
        let ch =
            self.controller.router.dialer().channel(&addr).map_err(|e| {
                RunnelError::new(ErrorCode::NotController, format!("controller node {id} at {addr}: {e}"))
            })?;
        Ok(RunnelClient::new(ch).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }
}

#[tonic::async_trait]
impl Runnel for Api {
    async fn produce(&self, req: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Write, ResourceType::Topic, &r.topic)?;
        self.gate.throttle(&who, Some(QuotaKind::ProduceBytes)).await;
        let bytes = r.batch.as_ref().map(|b| b.records.len() as u64).unwrap_or(0);
        let out = async {
            if r.topic == runnel_groups::OFFSETS_TOPIC {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!("'{}' is internal: only group coordinators write to it", r.topic),
                ));
            }
            let p = self.local(&r.topic, r.partition)?;
            p.check_partition_epoch(r.partition_epoch)?;
            let batch =
                r.batch.ok_or_else(|| RunnelError::new(ErrorCode::InvalidRequest, "produce request has no batch"))?;
            let timeout_ms = if r.timeout_ms == 0 { DEFAULT_PRODUCE_TIMEOUT_MS } else { r.timeout_ms };
            let wait = r.acks != Acks::None as i32;
            let producer = match (r.producer_id, r.producer_epoch, r.base_sequence) {
                (None, None, None) => None,
                (Some(producer_id), Some(epoch), Some(base_sequence)) => {
                    Some(ProducerStamp { producer_id, epoch, base_sequence })
                }
                (id, epoch, seq) => {
                    return Err(RunnelError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "an idempotent produce sets producer_id, producer_epoch and base_sequence together; got \
                             producer_id {id:?}, producer_epoch {epoch:?}, base_sequence {seq:?}"
                        ),
                    ))
                }
            };
            if producer.is_some() && !wait {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    "an idempotent produce needs acks=all (with acks=none the producer cannot learn what committed)",
                ));
            }
            p.produce(batch, producer, wait, Duration::from_millis(timeout_ms as u64), r.leader_epoch).await
        }
        .await;
        Ok(Response::new(match out {
            Ok(o) => ProduceResponse {
                error: None,
                base_offset: o.base_offset,
                leader_epoch: o.leader_epoch,
                node_id: self.broker.node_id(),
                duplicate: o.duplicate,
                throttle_time_ms: self.gate.charge(&who, QuotaKind::ProduceBytes, bytes),
            },
            Err(e) => ProduceResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Read, ResourceType::Topic, &r.topic)?;
        self.gate.throttle(&who, Some(QuotaKind::FetchBytes)).await;
        let out = async {
            let p = self.local(&r.topic, r.partition)?;
            p.check_partition_epoch(r.partition_epoch)?;
            p.fetch(r.offset, r.max_bytes, r.max_wait_ms, r.leader_epoch).await
        }
        .await;
        Ok(Response::new(match out {
            Ok(o) => {
                let bytes = o.batches.iter().filter_map(|b| b.batch.as_ref()).map(|b| b.records.len() as u64).sum();
                FetchResponse {
                    error: None,
                    high_watermark: o.high_watermark,
                    log_start_offset: o.log_start_offset,
                    batches: o.batches,
                    leader_epoch: o.leader_epoch,
                    throttle_time_ms: self.gate.charge(&who, QuotaKind::FetchBytes, bytes),
                }
            }
            Err(e) => FetchResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn list_offsets(&self, req: Request<ListOffsetsRequest>) -> Result<Response<ListOffsetsResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Describe, ResourceType::Topic, &r.topic)?;
        self.gate.throttle(&who, None).await;
        let out = async {
            let p = self.local(&r.topic, r.partition)?;
            let term = p.ensure_readable(None).await?;
            let spec = OffsetSpec::try_from(r.spec).map_err(|_| {
                RunnelError::new(ErrorCode::InvalidRequest, format!("unknown offset spec {} in ListOffsets", r.spec))
            })?;
            let answer = match spec {
                OffsetSpec::Earliest => (p.sm.log_start(), true, 0),
                OffsetSpec::Latest => (p.sm.high_watermark(), true, 0),
                OffsetSpec::Timestamp => match p.offset_for_timestamp(r.timestamp_ms)? {
                    Some((offset, ts)) => (offset, true, ts),
                    None => (p.sm.high_watermark(), false, 0),
                },
            };
            Ok((answer, term))
        }
        .await;
        Ok(Response::new(match out {
            Ok(((offset, found, timestamp_ms), leader_epoch)) => {
                ListOffsetsResponse { error: None, offset, leader_epoch, found, timestamp_ms }
            }
            Err(e) => ListOffsetsResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn metadata(&self, req: Request<MetadataRequest>) -> Result<Response<MetadataResponse>, Status> {
        let who = self.gate.principal(&req)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let view = self.meta.current();
        let brokers = broker_infos(&view.state, &self.controller.voters());
        let mut topics = Vec::new();
        let mut error = None;
        if r.topics.is_empty() {
            // Only the topics the caller may see (as Kafka does), without a denial per topic.
            topics = view
                .state
                .topics
                .values()
                .filter(|t| self.gate.may(&who, Operation::Describe, ResourceType::Topic, &t.name))
                .map(topic_info)
                .collect();
        } else {
            for name in &r.topics {
                // Checked before existence, so a refusal does not tell whether the topic exists.
                self.gate.check(&who, Operation::Describe, ResourceType::Topic, name)?;
                match view.state.topics.get(name) {
                    Some(t) => topics.push(topic_info(t)),
                    None => error = err(&RunnelError::unknown_topic(name)),
                }
            }
        }
        Ok(Response::new(MetadataResponse {
            error,
            brokers,
            controller_id: self.controller.controller().map(|(id, _)| id),
            topics,
            metadata_version: view.applied_index,
            node_id: self.broker.node_id(),
        }))
    }

    async fn init_producer_id(
        &self,
        req: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        let who = self.gate.principal(&req)?;
        // As in Kafka: an idempotent producer needs write access to some topic.
        self.gate.check_any(&who, Operation::Write, ResourceType::Topic)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        // An epoch bump needs no state: the id is the caller's alone, and partitions fence the
        // older epoch when the new one first writes to them.
        if let Some(id) = r.producer_id {
            return Ok(Response::new(match r.producer_epoch.checked_add(1) {
                Some(epoch) => InitProducerIdResponse { error: None, producer_id: id, producer_epoch: epoch },
                None => InitProducerIdResponse {
                    error: err(&RunnelError::new(
                        ErrorCode::InvalidProducerEpoch,
                        format!("producer {id} has used every epoch; ask for a new producer id"),
                    )),
                    ..Default::default()
                },
            }));
        }
        if !self.controller.is_controller() {
            let out = match self.controller_client().await {
                Ok(mut c) => c.init_producer_id(self.forward(r)).await.map(|x| x.into_inner()),
                Err(e) => return Ok(Response::new(InitProducerIdResponse { error: err(&e), ..Default::default() })),
            };
            return out.map(Response::new);
        }
        Ok(Response::new(match self.controller.new_producer_id().await {
            Ok(id) => InitProducerIdResponse { error: None, producer_id: id, producer_epoch: 0 },
            Err(e) => InitProducerIdResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        // Creating on the cluster allows every topic, as in Kafka.
        if !self.gate.may(&who, Operation::Create, ResourceType::Cluster, CLUSTER) {
            self.gate.check(&who, Operation::Create, ResourceType::Topic, &r.name)?;
        }
        self.gate.throttle(&who, None).await;
        if !self.controller.is_controller() {
            let out = match self.controller_client().await {
                Ok(mut c) => c.create_topic(self.forward(r)).await.map(|x| x.into_inner()),
                Err(e) => return Ok(Response::new(CreateTopicResponse { error: err(&e), topic: None })),
            };
            return out.map(Response::new);
        }
        let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
        Ok(Response::new(
            match self.controller.create_topic(&r.name, r.partitions, r.replication_factor, &configs).await {
                Ok(t) => CreateTopicResponse { error: None, topic: Some(topic_info(&t)) },
                Err(e) => CreateTopicResponse { error: err(&e), topic: None },
            },
        ))
    }

    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Delete, ResourceType::Topic, &r.name)?;
        self.gate.throttle(&who, None).await;
        if !self.controller.is_controller() {
            let out = match self.controller_client().await {
                Ok(mut c) => c.delete_topic(self.forward(r)).await.map(|x| x.into_inner()),
                Err(e) => return Ok(Response::new(DeleteTopicResponse { error: err(&e) })),
            };
            return out.map(Response::new);
        }
        Ok(Response::new(DeleteTopicResponse {
            error: self.controller.delete_topic(&r.name).await.err().as_ref().and_then(err),
        }))
    }

    async fn describe_topic_config(
        &self,
        req: Request<DescribeTopicConfigRequest>,
    ) -> Result<Response<DescribeTopicConfigResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Describe, ResourceType::Topic, &r.topic)?;
        self.gate.throttle(&who, None).await;
        let view = self.meta.current();
        Ok(Response::new(match view.state.topics.get(&r.topic) {
            Some(t) => {
                let defaults = TopicConfig::default().to_map();
                let configs = t.config.to_map();
                let overridden =
                    configs.iter().filter(|(k, v)| defaults.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
                DescribeTopicConfigResponse { error: None, configs: configs.into_iter().collect(), overridden }
            }
            None => {
                DescribeTopicConfigResponse { error: err(&RunnelError::unknown_topic(&r.topic)), ..Default::default() }
            }
        }))
    }

    async fn alter_topic_config(
        &self,
        req: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Alter, ResourceType::Topic, &r.topic)?;
        self.gate.throttle(&who, None).await;
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.alter_topic_config(self.forward(r)).await,
                Err(e) => Ok(Response::new(AlterTopicConfigResponse { error: err(&e), ..Default::default() })),
            };
        }
        let set: BTreeMap<String, String> = r.set.into_iter().collect();
        Ok(Response::new(match self.controller.alter_topic_config(&r.topic, &set, &r.delete).await {
            Ok(t) => AlterTopicConfigResponse { error: None, configs: t.config.to_map().into_iter().collect() },
            Err(e) => AlterTopicConfigResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn describe_replicas(
        &self,
        req: Request<DescribeReplicasRequest>,
    ) -> Result<Response<DescribeReplicasResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate.throttle(&who, None).await;
        let req = req.into_inner();
        let mut replicas: Vec<ReplicaStatus> = self
            .broker
            .partitions()
            .iter()
            .filter(|p| req.topic.as_ref().is_none_or(|t| *t == p.topic))
            .map(|p| {
                let (digest, digest_end, digest_error) = match req.digest_up_to.map(|up_to| p.digest(up_to)) {
                    None => (None, 0, String::new()),
                    Some(Ok((_, end, crc))) => (Some(crc), end, String::new()),
                    Some(Err(e)) => (None, 0, e.to_string()),
                };
                let m = p.raft.metrics();
                let m = m.borrow_watched();
                ReplicaStatus {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    group_id: p.group,
                    role: match m.state {
                        openraft::ServerState::Leader => "leader",
                        openraft::ServerState::Follower => "follower",
                        openraft::ServerState::Candidate => "candidate",
                        openraft::ServerState::Learner => "learner",
                        openraft::ServerState::Shutdown => "shutdown",
                    }
                    .to_string(),
                    term: m.current_term,
                    leader: m.current_leader,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    committed_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
                    high_watermark: p.sm.high_watermark(),
                    replicas: p.replicas(),
                    log_start_offset: p.sm.log_start(),
                    retained_bytes: p.sm.retained_bytes(),
                    compactions: p.sm.compactions(),
                    digest,
                    digest_end,
                    digest_error,
                }
            })
            .collect();
        replicas.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(Response::new(DescribeReplicasResponse { error: None, node_id: self.broker.node_id(), replicas }))
    }

    async fn decommission_node(
        &self,
        req: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.decommission_node(self.forward(r)).await,
                Err(e) => Ok(Response::new(DecommissionNodeResponse { error: err(&e), remaining_replicas: 0 })),
            };
        }
        Ok(Response::new(match self.controller.decommission(r.node_id, r.cancel).await {
            Ok(remaining_replicas) => DecommissionNodeResponse { error: None, remaining_replicas },
            Err(e) => DecommissionNodeResponse { error: err(&e), remaining_replicas: 0 },
        }))
    }

    async fn reassign_partition(
        &self,
        req: Request<ReassignPartitionRequest>,
    ) -> Result<Response<ReassignPartitionResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.reassign_partition(self.forward(r)).await,
                Err(e) => Ok(Response::new(ReassignPartitionResponse { error: err(&e), partition: None })),
            };
        }
        Ok(Response::new(match self.controller.reassign(&r.topic, r.partition, r.replicas).await {
            Ok(p) => ReassignPartitionResponse { error: None, partition: Some(partition_info(&p)) },
            Err(e) => ReassignPartitionResponse { error: err(&e), partition: None },
        }))
    }

    async fn rebalance(&self, req: Request<RebalanceRequest>) -> Result<Response<RebalanceResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.rebalance(self.forward(r)).await,
                Err(e) => Ok(Response::new(RebalanceResponse { error: err(&e), moves: vec![] })),
            };
        }
        Ok(Response::new(match self.controller.rebalance(r.dry_run).await {
            Ok(moves) => RebalanceResponse {
                error: None,
                moves: moves
                    .into_iter()
                    .map(|(topic, partition, from, to)| PartitionMove { topic, partition, from, to })
                    .collect(),
            },
            Err(e) => RebalanceResponse { error: err(&e), moves: vec![] },
        }))
    }

    async fn replace_voter(&self, req: Request<ReplaceVoterRequest>) -> Result<Response<ReplaceVoterResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.replace_voter(self.forward(r)).await,
                Err(e) => Ok(Response::new(ReplaceVoterResponse { error: err(&e), voters: vec![] })),
            };
        }
        Ok(Response::new(match self.controller.replace_voter(r.remove, r.add).await {
            Ok(voters) => ReplaceVoterResponse { error: None, voters },
            Err(e) => ReplaceVoterResponse { error: err(&e), voters: vec![] },
        }))
    }

    async fn cluster_health(
        &self,
        req: Request<ClusterHealthRequest>,
    ) -> Result<Response<ClusterHealthResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate.throttle(&who, None).await;
        let view = self.meta.current();
        let voters = self.controller.voters();
        let problems = partition_problems(&view.state);
        Ok(Response::new(ClusterHealthResponse {
            error: None,
            healthy: problems.is_empty() && self.controller.controller().is_some(),
            problems,
            brokers: broker_infos(&view.state, &voters),
            controller_id: self.controller.controller().map(|(id, _)| id),
            metadata_voters: voters,
            partitions: view.state.topics.values().map(|t| t.partitions.len() as u32).sum(),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let out = async {
            let p = self.local(&r.topic, r.partition)?;
            let term = p.ensure_leader(None)?;
            if r.to == self.broker.node_id() {
                return Ok(term);
            }
            if !p.caught_up_voters().contains(&r.to) {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "node {} is not a caught-up voter of {}/{}; it cannot take leadership now",
                        r.to, r.topic, r.partition
                    ),
                ));
            }
            p.transfer_leadership(r.to).await?;
            // Answer once the new leader has taken over (bounded).
            let mut rx = p.raft.metrics();
            let moved = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let (leader, t) = {
                        let m = rx.borrow_watched();
                        (m.current_leader, m.current_term)
                    };
                    if leader == Some(r.to) && t > term {
                        return t;
                    }
                    if rx.changed().await.is_err() {
                        return 0;
                    }
                }
            })
            .await;
            match moved {
                Ok(t) if t > term => Ok(t),
                _ => Err(RunnelError::new(
                    ErrorCode::Timeout,
                    format!("{}/{}: node {} did not take leadership within 5 s", r.topic, r.partition, r.to),
                )),
            }
        }
        .await;
        Ok(Response::new(match out {
            Ok(leader_epoch) => TransferLeaderResponse { error: None, leader_epoch },
            Err(e) => TransferLeaderResponse { error: err(&e), leader_epoch: 0 },
        }))
    }

    async fn find_coordinator(
        &self,
        req: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Describe, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(match self.coordinator.find(&r.group).await {
            Ok((partition, node_id, addr)) => FindCoordinatorResponse { error: None, node_id, addr, partition },
            Err(e) => FindCoordinatorResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn join_group(&self, req: Request<JoinGroupRequest>) -> Result<Response<JoinGroupResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(match self.coordinator.join(r).await {
            Ok(r) => r,
            Err(e) => JoinGroupResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(HeartbeatResponse { error: self.coordinator.heartbeat(r).await.err().as_ref().and_then(err) }))
    }

    async fn leave_group(&self, req: Request<LeaveGroupRequest>) -> Result<Response<LeaveGroupResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(LeaveGroupResponse { error: self.coordinator.leave(r).await.err().as_ref().and_then(err) }))
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        // As in Kafka: committing needs read access to the group and to every topic named.
        self.gate.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        let topics: std::collections::BTreeSet<&str> = r.offsets.iter().map(|o| o.topic.as_str()).collect();
        for t in topics {
            self.gate.check(&who, Operation::Read, ResourceType::Topic, t)?;
        }
        self.gate.throttle(&who, None).await;
        Ok(Response::new(CommitOffsetsResponse {
            error: self.coordinator.commit(r).await.err().as_ref().and_then(err),
        }))
    }

    async fn fetch_offsets(&self, req: Request<FetchOffsetsRequest>) -> Result<Response<FetchOffsetsResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Describe, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(match self.coordinator.fetch_offsets(r).await {
            // Only offsets of topics the caller may see.
            Ok(offsets) => FetchOffsetsResponse {
                error: None,
                offsets: offsets
                    .into_iter()
                    .filter(|o| self.gate.may(&who, Operation::Describe, ResourceType::Topic, &o.topic))
                    .collect(),
            },
            Err(e) => FetchOffsetsResponse { error: err(&e), offsets: vec![] },
        }))
    }

    async fn list_groups(&self, req: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        let who = self.gate.principal(&req)?;
        self.gate.throttle(&who, None).await;
        let all = self.gate.may(&who, Operation::Describe, ResourceType::Cluster, CLUSTER);
        Ok(Response::new(match self.coordinator.list().await {
            Ok(groups) => ListGroupsResponse {
                error: None,
                groups: groups
                    .into_iter()
                    .filter(|g| all || self.gate.may(&who, Operation::Describe, ResourceType::Group, &g.group))
                    .collect(),
            },
            Err(e) => ListGroupsResponse { error: err(&e), groups: vec![] },
        }))
    }

    async fn describe_group(
        &self,
        req: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Describe, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(match self.coordinator.describe(&r.group).await {
            Ok(r) => r,
            Err(e) => DescribeGroupResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn delete_group(&self, req: Request<DeleteGroupRequest>) -> Result<Response<DeleteGroupResponse>, Status> {
        let who = self.gate.principal(&req)?;
        let r = req.into_inner();
        self.gate.check(&who, Operation::Delete, ResourceType::Group, &r.group)?;
        self.gate.throttle(&who, None).await;
        Ok(Response::new(DeleteGroupResponse {
            error: self.coordinator.delete(&r.group).await.err().as_ref().and_then(err),
        }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        Ok(Response::new(self.gate.authenticate(req.into_inner())))
    }

    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let who = self.gate.principal(&req)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let user = match (&who, r.user.as_str()) {
            (runnel_security::acl::Principal::User(me), "") => me.clone(),
            (runnel_security::acl::Principal::User(me), other) if other == me => me.clone(),
            (_, "") => {
                return Ok(Response::new(CreateTokenResponse {
                    error: err(&RunnelError::new(
                        ErrorCode::InvalidRequest,
                        format!("{who} is no user: name the user the token is for"),
                    )),
                    ..Default::default()
                }))
            }
            (_, other) => {
                self.gate.check(&who, Operation::Admin, ResourceType::Cluster, CLUSTER)?;
                other.to_string()
            }
        };
        let max = crate::config::MAX_TOKEN_LIFETIME_SECS;
        if r.lifetime_secs > max {
            return Ok(Response::new(CreateTokenResponse {
                error: err(&RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!("a token lives at most {max} s (30 days), not {} s", r.lifetime_secs),
                )),
                ..Default::default()
            }));
        }
        let lifetime =
            if r.lifetime_secs == 0 { self.gate.token_lifetime() } else { Duration::from_secs(r.lifetime_secs) };
        Ok(Response::new(match self.gate.issue_token(&user, lifetime) {
            Ok((token, expires_at_ms)) => CreateTokenResponse { error: None, token, expires_at_ms },
            Err(e) => CreateTokenResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let who = self.gate.principal(&req)?;
        Ok(Response::new(WhoAmIResponse {
            error: None,
            principal: who.name(),
            superuser: self.gate.is_superuser(&who),
            authentication_required: self.gate.required(),
        }))
    }

    async fn put_user(&self, req: Request<PutUserRequest>) -> Result<Response<PutUserResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let out = async {
            let credentials = security::credentials_from_proto(&r.credentials)?;
            let cmd = MetaCommand::PutUser {
                name: r.name.clone(),
                credentials,
                token_key: crate::auth::new_token_key(),
                if_absent: false,
            };
            self.propose_forwarded(cmd, |mut c| async move {
                c.put_user(self.forward(r)).await.map(|x| x.into_inner().error)
            })
            .await
        }
        .await;
        Ok(Response::new(PutUserResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let cmd = MetaCommand::DeleteUser { name: r.name.clone() };
        let out = self
            .propose_forwarded(cmd, |mut c| async move {
                c.delete_user(self.forward(r)).await.map(|x| x.into_inner().error)
            })
            .await;
        Ok(Response::new(DeleteUserResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate.throttle(&who, None).await;
        let view = self.meta.current();
        let users = view
            .state
            .security
            .users
            .values()
            .map(|u| UserInfo {
                name: u.name.clone(),
                mechanisms: u.credentials.iter().map(|c| c.mechanism.name().to_string()).collect(),
            })
            .collect();
        Ok(Response::new(ListUsersResponse { error: None, users }))
    }

    async fn add_acls(&self, req: Request<AddAclsRequest>) -> Result<Response<AddAclsResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let out = async {
            let rules = r.rules.iter().map(security::acl_from_proto).collect::<Result<Vec<_>, _>>()?;
            let cmd = MetaCommand::AddAcls { rules };
            self.propose_forwarded(cmd, |mut c| async move {
                c.add_acls(self.forward(r)).await.map(|x| x.into_inner().error)
            })
            .await
        }
        .await;
        Ok(Response::new(AddAclsResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn remove_acls(&self, req: Request<RemoveAclsRequest>) -> Result<Response<RemoveAclsResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let rules = match r.rules.iter().map(security::acl_from_proto).collect::<Result<Vec<_>, _>>() {
            Ok(rules) => rules,
            Err(e) => return Ok(Response::new(RemoveAclsResponse { error: err(&e), removed: 0 })),
        };
        if !self.controller.is_controller() {
            return match self.controller_client().await {
                Ok(mut c) => c.remove_acls(self.forward(r)).await,
                Err(e) => Ok(Response::new(RemoveAclsResponse { error: err(&e), removed: 0 })),
            };
        }
        Ok(Response::new(match self.controller.propose(MetaCommand::RemoveAcls { rules }).await {
            Ok(MetaResponse::Removed { count }) => RemoveAclsResponse { error: None, removed: count },
            Ok(other) => RemoveAclsResponse {
                error: err(&RunnelError::internal(format!("RemoveAcls answered {other:?}"))),
                removed: 0,
            },
            Err(e) => RemoveAclsResponse { error: err(&e), removed: 0 },
        }))
    }

    async fn list_acls(&self, req: Request<ListAclsRequest>) -> Result<Response<ListAclsResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let view = self.meta.current();
        let rules = view
            .state
            .security
            .acls
            .iter()
            .filter(|a| r.principal.is_empty() || a.principal == r.principal)
            .filter(|a| r.resource_type.is_empty() || a.resource.as_str() == r.resource_type.to_ascii_lowercase())
            .filter(|a| r.name.is_empty() || a.name == r.name)
            .map(security::acl_to_proto)
            .collect();
        Ok(Response::new(ListAclsResponse { error: None, rules }))
    }

    async fn set_quota(&self, req: Request<SetQuotaRequest>) -> Result<Response<SetQuotaResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Admin)?;
        self.gate.throttle(&who, None).await;
        let r = req.into_inner();
        let cmd = MetaCommand::SetQuota {
            principal: r.principal.clone(),
            quota: r.quota.as_ref().map(security::quota_from_proto),
        };
        let out =
            self.propose_forwarded(cmd, |mut c| async move {
                c.set_quota(self.forward(r)).await.map(|x| x.into_inner().error)
            })
            .await;
        Ok(Response::new(SetQuotaResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn list_quotas(&self, req: Request<ListQuotasRequest>) -> Result<Response<ListQuotasResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate.throttle(&who, None).await;
        let view = self.meta.current();
        let quotas = view
            .state
            .security
            .quotas
            .iter()
            .map(|(p, q)| PrincipalQuota { principal: p.clone(), quota: Some(security::quota_to_proto(q)) })
            .collect();
        Ok(Response::new(ListQuotasResponse { error: None, quotas }))
    }
}
