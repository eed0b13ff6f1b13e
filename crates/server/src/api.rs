//! The public `runnel.v1.Runnel` service: a thin adapter over the service layer
//! (`runnel_service`). Each handler finds out who is calling (bearer token, else TLS certificate),
//! turns the request into a service call, and the answer (or error) into the response. Refusals of
//! the access check become UNAUTHENTICATED / PERMISSION_DENIED statuses; every other error goes in
//! the response's `error` field.

use std::sync::Arc;
use std::time::Duration;

use runnel_meta::{BrokerRecord, PartitionRecord, TopicRecord};
use runnel_proto::peer::PeerInfo;
use runnel_proto::v1::runnel_server::Runnel;
use runnel_proto::v1::*;
use runnel_raft::ProducerStamp;
use runnel_security::acl::{Operation, Principal, ResourceType, CLUSTER};
use runnel_service::access::Gatekeeper;
use runnel_service::service::{AclFilter, FetchCommand, OffsetQuery, ProduceCommand, RequestContext, Service};
use runnel_types::{ErrorCode, NodeId, RunnelError};
use tonic::{Request, Response, Status};

use crate::security_wire as security;

pub struct Api {
    pub service: Arc<Service>,
}

fn err(e: &RunnelError) -> Option<Error> {
    Some(e.into())
}

/// A refusal of the access check as the gRPC status a client acts on; `None` for every other
/// error (those go in the response).
fn refusal(e: &RunnelError) -> Option<Status> {
    match e.code {
        ErrorCode::AuthenticationFailed => Some(Status::unauthenticated(e.message.clone())),
        ErrorCode::AuthorizationFailed => Some(Status::permission_denied(e.message.clone())),
        _ => None,
    }
}

/// Splits a service answer: an access refusal ends the call with its status, anything else is
/// answered in the response.
fn outcome<T>(r: Result<T, RunnelError>) -> Result<Result<T, RunnelError>, Status> {
    match r {
        Err(e) => match refusal(&e) {
            Some(status) => Err(status),
            None => Ok(Err(e)),
        },
        ok => Ok(ok),
    }
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

pub fn topic_info(t: &TopicRecord) -> TopicInfo {
    TopicInfo {
        name: t.name.clone(),
        topic_id: t.topic_id,
        partitions: t.partitions.iter().map(partition_info).collect(),
        configs: t.config.to_map().into_iter().collect(),
    }
}

/// Brokers as the committed metadata has them, with their replica and leadership counts.
fn broker_infos<'a>(
    brokers: impl Iterator<Item = &'a BrokerRecord>,
    state: &runnel_meta::ClusterState,
    voters: &[NodeId],
) -> Vec<BrokerInfo> {
    brokers
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

impl Api {
    fn gate(&self) -> &Gatekeeper {
        &self.service.gate
    }

    /// Who sent `req`: the bearer token's user, else the TLS certificate's principal (the order
    /// the gRPC API looks at credentials; see `runnel_service::access`).
    fn principal<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let gate = self.gate();
        let who = match req.metadata().get("authorization") {
            Some(v) => match v.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")) {
                Some(token) => gate.principal_of_token(token.trim()),
                None => Err(gate.refuse("the authorization header must be 'Bearer <token>'".into())),
            },
            None => match req.extensions().get::<PeerInfo>() {
                Some(peer) => gate.principal_of_certificate(&peer.identity),
                None => gate.principal_without_credentials(),
            },
        };
        who.map_err(|e| refusal(&e).unwrap_or_else(|| Status::internal(e.to_string())))
    }

    fn ctx<T>(&self, req: &Request<T>) -> Result<RequestContext, Status> {
        Ok(RequestContext { principal: self.principal(req)? })
    }

    /// Whether `who` may do `op` to `resource` `name` (PERMISSION_DENIED naming why when not).
    fn check(&self, who: &Principal, op: Operation, resource: ResourceType, name: &str) -> Result<(), Status> {
        self.gate()
            .check(who, op, resource, name)
            .map_err(|e| refusal(&e).unwrap_or_else(|| Status::internal(e.to_string())))
    }

    /// The caller, allowed to do `op` to the cluster.
    fn cluster_caller<T>(&self, req: &Request<T>, op: Operation) -> Result<Principal, Status> {
        let who = self.principal(req)?;
        self.check(&who, op, ResourceType::Cluster, CLUSTER)?;
        Ok(who)
    }
}

#[tonic::async_trait]
impl Runnel for Api {
    async fn produce(&self, req: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let producer = match (r.producer_id, r.producer_epoch, r.base_sequence) {
            (None, None, None) => None,
            (Some(producer_id), Some(epoch), Some(base_sequence)) => {
                Some(ProducerStamp { producer_id, epoch, base_sequence })
            }
            (id, epoch, seq) => {
                let e = RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "an idempotent produce sets producer_id, producer_epoch and base_sequence together; got \
                         producer_id {id:?}, producer_epoch {epoch:?}, base_sequence {seq:?}"
                    ),
                );
                return Ok(Response::new(ProduceResponse { error: err(&e), ..Default::default() }));
            }
        };
        let cmd = ProduceCommand {
            topic: r.topic,
            partition: r.partition,
            batch: r.batch,
            wait_for_commit: r.acks != Acks::None as i32,
            timeout: (r.timeout_ms != 0).then(|| Duration::from_millis(r.timeout_ms as u64)),
            producer,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
        };
        Ok(Response::new(match outcome(self.service.produce(&ctx, cmd).await)? {
            Ok(o) => ProduceResponse {
                error: None,
                base_offset: o.base_offset,
                leader_epoch: o.leader_epoch,
                node_id: self.service.broker.node_id(),
                duplicate: o.duplicate,
                throttle_time_ms: o.throttle_ms,
            },
            Err(e) => ProduceResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let cmd = FetchCommand {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            max_bytes: r.max_bytes,
            max_wait_ms: r.max_wait_ms,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
        };
        // gRPC clients read Runnel batches only: batches a Kafka client produced are stored as it
        // sent them and transcoded here, on the way out (ADR 0020).
        let fetched = self.service.fetch(&ctx, cmd).await.and_then(|mut o| {
            for fetched in &mut o.batches {
                if let Some(batch) = fetched.batch.as_mut().filter(|b| b.compression == runnel_records::KAFKA_BATCH) {
                    *batch = runnel_records::to_runnel(batch)?;
                }
            }
            Ok(o)
        });
        Ok(Response::new(match outcome(fetched)? {
            Ok(o) => FetchResponse {
                error: None,
                high_watermark: o.high_watermark,
                log_start_offset: o.log_start_offset,
                batches: o.batches,
                leader_epoch: o.leader_epoch,
                throttle_time_ms: o.throttle_ms,
            },
            Err(e) => FetchResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn list_offsets(&self, req: Request<ListOffsetsRequest>) -> Result<Response<ListOffsetsResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let query = match OffsetSpec::try_from(r.spec) {
            Ok(OffsetSpec::Earliest) => OffsetQuery::Earliest,
            Ok(OffsetSpec::Latest) => OffsetQuery::Latest,
            Ok(OffsetSpec::Timestamp) => OffsetQuery::Timestamp(r.timestamp_ms),
            Err(_) => {
                let e = RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!("unknown offset spec {} in ListOffsets", r.spec),
                );
                return Ok(Response::new(ListOffsetsResponse { error: err(&e), ..Default::default() }));
            }
        };
        Ok(Response::new(match outcome(self.service.list_offsets(&ctx, &r.topic, r.partition, query).await)? {
            Ok(a) => ListOffsetsResponse {
                error: None,
                offset: a.offset,
                leader_epoch: a.leader_epoch,
                found: a.found,
                timestamp_ms: a.timestamp_ms,
            },
            Err(e) => ListOffsetsResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn metadata(&self, req: Request<MetadataRequest>) -> Result<Response<MetadataResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let c = match outcome(self.service.metadata(&ctx, &r.topics).await)? {
            Ok(c) => c,
            Err(e) => return Ok(Response::new(MetadataResponse { error: err(&e), ..Default::default() })),
        };
        Ok(Response::new(MetadataResponse {
            error: c.missing.as_deref().map(RunnelError::unknown_topic).as_ref().and_then(err),
            brokers: broker_infos(c.brokers(), &c.view.state, &c.voters),
            controller_id: c.controller,
            topics: c.topics.iter().map(topic_info).collect(),
            metadata_version: c.view.applied_index,
            node_id: self.service.broker.node_id(),
        }))
    }

    async fn init_producer_id(
        &self,
        req: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let current = r.producer_id.map(|id| (id, r.producer_epoch));
        Ok(Response::new(match outcome(self.service.init_producer_id(&ctx, current).await)? {
            Ok((producer_id, producer_epoch)) => InitProducerIdResponse { error: None, producer_id, producer_epoch },
            Err(e) => InitProducerIdResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let configs = r.configs.into_iter().collect();
        let out = self.service.create_topic(&ctx, &r.name, r.partitions, r.replication_factor, configs).await;
        Ok(Response::new(match outcome(out)? {
            Ok(t) => CreateTopicResponse { error: None, topic: Some(topic_info(&t)) },
            Err(e) => CreateTopicResponse { error: err(&e), topic: None },
        }))
    }

    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let out = outcome(self.service.delete_topic(&ctx, &req.into_inner().name).await)?;
        Ok(Response::new(DeleteTopicResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn describe_topic_config(
        &self,
        req: Request<DescribeTopicConfigRequest>,
    ) -> Result<Response<DescribeTopicConfigResponse>, Status> {
        let ctx = self.ctx(&req)?;
        Ok(Response::new(match outcome(self.service.describe_topic_config(&ctx, &req.into_inner().topic).await)? {
            Ok((configs, overridden)) => {
                DescribeTopicConfigResponse { error: None, configs: configs.into_iter().collect(), overridden }
            }
            Err(e) => DescribeTopicConfigResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn alter_topic_config(
        &self,
        req: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let out = self.service.alter_topic_config(&ctx, &r.topic, r.set.into_iter().collect(), r.delete).await;
        Ok(Response::new(match outcome(out)? {
            Ok(t) => AlterTopicConfigResponse { error: None, configs: t.config.to_map().into_iter().collect() },
            Err(e) => AlterTopicConfigResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn describe_replicas(
        &self,
        req: Request<DescribeReplicasRequest>,
    ) -> Result<Response<DescribeReplicasResponse>, Status> {
        let who = self.cluster_caller(&req, Operation::Describe)?;
        self.gate().throttle(&who, None).await;
        let req = req.into_inner();
        let mut replicas: Vec<ReplicaStatus> = self
            .service
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
                let raft = p.raft_status();
                ReplicaStatus {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    group_id: p.group,
                    role: raft.role.to_string(),
                    term: raft.term,
                    leader: raft.leader,
                    last_log_index: raft.last_log_index,
                    committed_index: raft.committed_index,
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
        Ok(Response::new(DescribeReplicasResponse { error: None, node_id: self.service.broker.node_id(), replicas }))
    }

    async fn decommission_node(
        &self,
        req: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        Ok(Response::new(match outcome(self.service.decommission(&ctx, r.node_id, r.cancel).await)? {
            Ok(remaining_replicas) => DecommissionNodeResponse { error: None, remaining_replicas },
            Err(e) => DecommissionNodeResponse { error: err(&e), remaining_replicas: 0 },
        }))
    }

    async fn reassign_partition(
        &self,
        req: Request<ReassignPartitionRequest>,
    ) -> Result<Response<ReassignPartitionResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        Ok(Response::new(match outcome(self.service.reassign(&ctx, &r.topic, r.partition, r.replicas).await)? {
            Ok(p) => ReassignPartitionResponse { error: None, partition: Some(partition_info(&p)) },
            Err(e) => ReassignPartitionResponse { error: err(&e), partition: None },
        }))
    }

    async fn rebalance(&self, req: Request<RebalanceRequest>) -> Result<Response<RebalanceResponse>, Status> {
        let ctx = self.ctx(&req)?;
        Ok(Response::new(match outcome(self.service.rebalance(&ctx, req.into_inner().dry_run).await)? {
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
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        Ok(Response::new(match outcome(self.service.replace_voter(&ctx, r.remove, r.add).await)? {
            Ok(voters) => ReplaceVoterResponse { error: None, voters },
            Err(e) => ReplaceVoterResponse { error: err(&e), voters: vec![] },
        }))
    }

    async fn cluster_health(
        &self,
        req: Request<ClusterHealthRequest>,
    ) -> Result<Response<ClusterHealthResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let h = match outcome(self.service.health(&ctx).await)? {
            Ok(h) => h,
            Err(e) => return Ok(Response::new(ClusterHealthResponse { error: err(&e), ..Default::default() })),
        };
        Ok(Response::new(ClusterHealthResponse {
            error: None,
            healthy: h.healthy,
            problems: h
                .problems
                .into_iter()
                .map(|p| PartitionProblem {
                    topic: p.topic,
                    partition: p.partition,
                    kind: p.kind.to_string(),
                    reason: p.reason,
                })
                .collect(),
            brokers: broker_infos(h.view.state.brokers.values(), &h.view.state, &h.voters),
            controller_id: h.controller,
            metadata_voters: h.voters,
            partitions: h.partitions,
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        Ok(Response::new(match outcome(self.service.transfer_leader(&ctx, &r.topic, r.partition, r.to).await)? {
            Ok(leader_epoch) => TransferLeaderResponse { error: None, leader_epoch },
            Err(e) => TransferLeaderResponse { error: err(&e), leader_epoch: 0 },
        }))
    }

    async fn find_coordinator(
        &self,
        req: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        Ok(Response::new(match outcome(self.service.find_coordinator(&ctx, &r.group).await)? {
            Ok((partition, node_id, addr)) => FindCoordinatorResponse { error: None, node_id, addr, partition },
            Err(e) => FindCoordinatorResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn join_group(&self, req: Request<JoinGroupRequest>) -> Result<Response<JoinGroupResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(match self.service.coordinator.join(r).await {
            Ok(r) => r,
            Err(e) => JoinGroupResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(HeartbeatResponse {
            error: self.service.coordinator.heartbeat(r).await.err().as_ref().and_then(err),
        }))
    }

    async fn leave_group(&self, req: Request<LeaveGroupRequest>) -> Result<Response<LeaveGroupResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Read, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(LeaveGroupResponse {
            error: self.service.coordinator.leave(r).await.err().as_ref().and_then(err),
        }))
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        // The service checks read access to the group and to every topic named, as Kafka does.
        let offsets = r.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset, o.metadata)).collect();
        let committed = self.service.commit_offsets(&ctx, &r.group, &r.member_id, r.generation, offsets).await;
        Ok(Response::new(CommitOffsetsResponse { error: outcome(committed)?.err().as_ref().and_then(err) }))
    }

    async fn fetch_offsets(&self, req: Request<FetchOffsetsRequest>) -> Result<Response<FetchOffsetsResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Describe, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(match self.service.coordinator.fetch_offsets(r).await {
            // Only offsets of topics the caller may see.
            Ok(offsets) => FetchOffsetsResponse {
                error: None,
                offsets: offsets
                    .into_iter()
                    .filter(|o| self.gate().may(&who, Operation::Describe, ResourceType::Topic, &o.topic))
                    .collect(),
            },
            Err(e) => FetchOffsetsResponse { error: err(&e), offsets: vec![] },
        }))
    }

    async fn list_groups(&self, req: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        let who = self.principal(&req)?;
        self.gate().throttle(&who, None).await;
        let all = self.gate().may(&who, Operation::Describe, ResourceType::Cluster, CLUSTER);
        Ok(Response::new(match self.service.coordinator.list().await {
            Ok(groups) => ListGroupsResponse {
                error: None,
                groups: groups
                    .into_iter()
                    .filter(|g| all || self.gate().may(&who, Operation::Describe, ResourceType::Group, &g.group))
                    .collect(),
            },
            Err(e) => ListGroupsResponse { error: err(&e), groups: vec![] },
        }))
    }

    async fn describe_group(
        &self,
        req: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Describe, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(match self.service.coordinator.describe(&r.group).await {
            Ok(r) => r,
            Err(e) => DescribeGroupResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn delete_group(&self, req: Request<DeleteGroupRequest>) -> Result<Response<DeleteGroupResponse>, Status> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.check(&who, Operation::Delete, ResourceType::Group, &r.group)?;
        self.gate().throttle(&who, None).await;
        Ok(Response::new(DeleteGroupResponse {
            error: self.service.coordinator.delete(&r.group).await.err().as_ref().and_then(err),
        }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(match self.gate().authenticate(&r.mechanism, &r.message, &r.session) {
            Ok(step) => {
                let (token, expires_at_ms, principal) = match step.done {
                    Some(l) => (l.token, l.expires_at_ms, l.principal.name()),
                    None => Default::default(),
                };
                AuthenticateResponse {
                    error: None,
                    message: step.message,
                    session: step.session,
                    token,
                    expires_at_ms,
                    principal,
                }
            }
            Err(e) => AuthenticateResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let user = (!r.user.is_empty()).then_some(r.user.as_str());
        let lifetime = (r.lifetime_secs != 0).then(|| Duration::from_secs(r.lifetime_secs));
        Ok(Response::new(match outcome(self.service.create_token(&ctx, user, lifetime).await)? {
            Ok((token, expires_at_ms)) => CreateTokenResponse { error: None, token, expires_at_ms },
            Err(e) => CreateTokenResponse { error: err(&e), ..Default::default() },
        }))
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let me = self.service.who_am_i(&self.ctx(&req)?);
        Ok(Response::new(WhoAmIResponse {
            error: None,
            principal: me.principal.name(),
            superuser: me.superuser,
            authentication_required: me.authentication_required,
        }))
    }

    async fn put_user(&self, req: Request<PutUserRequest>) -> Result<Response<PutUserResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let out = match security::credentials_from_proto(&r.credentials) {
            Ok(credentials) => self.service.put_user(&ctx, &r.name, credentials).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(PutUserResponse { error: outcome(out)?.err().as_ref().and_then(err) }))
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let out = outcome(self.service.delete_user(&ctx, &req.into_inner().name).await)?;
        Ok(Response::new(DeleteUserResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let ctx = self.ctx(&req)?;
        Ok(Response::new(match outcome(self.service.list_users(&ctx).await)? {
            Ok(users) => ListUsersResponse {
                error: None,
                users: users
                    .into_iter()
                    .map(|u| UserInfo {
                        name: u.name,
                        mechanisms: u.mechanisms.iter().map(|m| m.to_string()).collect(),
                    })
                    .collect(),
            },
            Err(e) => ListUsersResponse { error: err(&e), users: vec![] },
        }))
    }

    async fn add_acls(&self, req: Request<AddAclsRequest>) -> Result<Response<AddAclsResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let out = match r.rules.iter().map(security::acl_from_proto).collect::<Result<Vec<_>, _>>() {
            Ok(rules) => self.service.add_acls(&ctx, rules).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(AddAclsResponse { error: outcome(out)?.err().as_ref().and_then(err) }))
    }

    async fn remove_acls(&self, req: Request<RemoveAclsRequest>) -> Result<Response<RemoveAclsResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let out = match r.rules.iter().map(security::acl_from_proto).collect::<Result<Vec<_>, _>>() {
            Ok(rules) => self.service.remove_acls(&ctx, rules).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(match outcome(out)? {
            Ok(removed) => RemoveAclsResponse { error: None, removed },
            Err(e) => RemoveAclsResponse { error: err(&e), removed: 0 },
        }))
    }

    async fn list_acls(&self, req: Request<ListAclsRequest>) -> Result<Response<ListAclsResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let resource = match nonempty(r.resource_type) {
            None => None,
            Some(t) => match ResourceType::parse(&t) {
                Some(rt) => Some(rt),
                None => {
                    let e = RunnelError::new(
                        ErrorCode::InvalidRequest,
                        format!("unknown resource type '{t}'; use one of {}", ResourceType::NAMES),
                    );
                    return Ok(Response::new(ListAclsResponse { error: err(&e), rules: vec![] }));
                }
            },
        };
        let filter = AclFilter { principal: nonempty(r.principal), resource, name: nonempty(r.name) };
        Ok(Response::new(match outcome(self.service.list_acls(&ctx, &filter).await)? {
            Ok(rules) => ListAclsResponse { error: None, rules: rules.iter().map(security::acl_to_proto).collect() },
            Err(e) => ListAclsResponse { error: err(&e), rules: vec![] },
        }))
    }

    async fn set_quota(&self, req: Request<SetQuotaRequest>) -> Result<Response<SetQuotaResponse>, Status> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let quota = r.quota.as_ref().map(security::quota_from_proto);
        let out = outcome(self.service.set_quota(&ctx, &r.principal, quota).await)?;
        Ok(Response::new(SetQuotaResponse { error: out.err().as_ref().and_then(err) }))
    }

    async fn list_quotas(&self, req: Request<ListQuotasRequest>) -> Result<Response<ListQuotasResponse>, Status> {
        let ctx = self.ctx(&req)?;
        Ok(Response::new(match outcome(self.service.list_quotas(&ctx).await)? {
            Ok(quotas) => ListQuotasResponse {
                error: None,
                quotas: quotas
                    .iter()
                    .map(|(p, q)| PrincipalQuota { principal: p.clone(), quota: Some(security::quota_to_proto(q)) })
                    .collect(),
            },
            Err(e) => ListQuotasResponse { error: err(&e), quotas: vec![] },
        }))
    }
}
