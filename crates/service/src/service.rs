//! [`Service`]: the operations a client asks of a node, in domain terms, each with its access
//! check. A front-end decodes a request, finds out who is asking ([`RequestContext`]), calls one
//! method, and encodes the answer; errors are [`RunnelError`]s, and the access check's refusals
//! carry `AUTHENTICATION_FAILED` / `AUTHORIZATION_FAILED` for the front-end to answer in its own
//! terms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::{Broker, Partition};
use runnel_meta::{BrokerRecord, ClusterState, PartitionRecord, TopicRecord};
use runnel_proto::v1::{FetchedBatch, RecordBatch};
use runnel_raft::meta_sm::{MetaStateMachine, MetaView};
use runnel_raft::ProducerStamp;
use runnel_security::acl::{AclRule, Operation, Principal, ResourceType, CLUSTER};
use runnel_security::quota::Quota;
use runnel_security::quota::QuotaKind;
use runnel_security::scram::Credentials;
use runnel_types::limits::DEFAULT_PRODUCE_TIMEOUT_MS;
use runnel_types::topic::TopicConfig;
use runnel_types::{ErrorCode, NodeId, RunnelError};

use crate::access::{Gatekeeper, MAX_TOKEN_LIFETIME};
use crate::admin::{AdminCommand, PlannedMove};
use crate::controller::Controller;
use crate::coordinator::{Coordinator, GroupDescription, KafkaJoin, KafkaJoined};

/// Who is asking, as the front-end established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub principal: Principal,
}

/// A produce, as any protocol asks for it.
#[derive(Debug, Clone)]
pub struct ProduceCommand {
    pub topic: String,
    pub partition: u32,
    /// `None` is refused (after the access check, so a refusal tells nothing about the request).
    pub batch: Option<RecordBatch>,
    /// `false`: answer once the leader accepted the batch (acks=none/0), not once it committed.
    pub wait_for_commit: bool,
    /// `None`: the broker's default.
    pub timeout: Option<Duration>,
    pub producer: Option<ProducerStamp>,
    pub leader_epoch: Option<u64>,
    pub partition_epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: u64,
    pub leader_epoch: u64,
    pub duplicate: bool,
    /// How long the producer should hold back: its quota's debt after this batch.
    pub throttle_ms: u32,
}

#[derive(Debug, Clone)]
pub struct FetchCommand {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    pub leader_epoch: Option<u64>,
    pub partition_epoch: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub batches: Vec<FetchedBatch>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub leader_epoch: u64,
    pub throttle_ms: u32,
}

/// Which offset a ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAnswer {
    pub offset: u64,
    /// For a timestamp query: whether a record at or after the time exists (else `offset` is the
    /// high watermark).
    pub found: bool,
    pub timestamp_ms: i64,
    pub leader_epoch: u64,
}

/// The cluster as a client may see it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub view: Arc<MetaView>,
    pub voters: Vec<NodeId>,
    pub controller: Option<NodeId>,
    /// The topics asked for (all the caller may describe when none were named).
    pub topics: Vec<TopicRecord>,
    /// A named topic that does not exist.
    pub missing: Option<String>,
}

impl ClusterView {
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.view.state.brokers.values()
    }
}

/// A partition's configuration as the answering node has it: every key, and the keys that differ
/// from the defaults.
pub type DescribedConfig = (BTreeMap<String, String>, Vec<String>);

pub struct Service {
    pub broker: Arc<Broker>,
    pub controller: Arc<Controller>,
    pub meta: MetaStateMachine,
    pub coordinator: Arc<Coordinator>,
    pub gate: Arc<Gatekeeper>,
}

impl Service {
    /// The local replica of `topic/partition`, or the error a client can act on (NOT_LEADER with
    /// the leader when this node knows it).
    pub fn local(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, RunnelError> {
        if let Some(p) = self.broker.partition(topic, partition) {
            return Ok(p);
        }
        let view = self.meta.current();
        let t = view.state.topics.get(topic).ok_or_else(|| RunnelError::unknown_topic(topic))?;
        let p = t
            .partitions
            .get(partition as usize)
            .ok_or_else(|| RunnelError::unknown_partition(topic, partition, t.partitions.len()))?;
        let hint = p
            .leader
            .filter(|l| *l != self.broker.node_id())
            .and_then(|l| self.controller.router.addr(l).map(|a| (l, a)));
        Err(RunnelError::not_leader(topic, partition, hint))
    }

    /// Checks `op` on the cluster and waits out the caller's request quota.
    async fn admit_cluster(&self, ctx: &RequestContext, op: Operation) -> Result<(), RunnelError> {
        self.gate.check(&ctx.principal, op, ResourceType::Cluster, CLUSTER)?;
        self.gate.throttle(&ctx.principal, None).await;
        Ok(())
    }

    pub async fn produce(&self, ctx: &RequestContext, cmd: ProduceCommand) -> Result<Produced, RunnelError> {
        let who = &ctx.principal;
        self.gate.check(who, Operation::Write, ResourceType::Topic, &cmd.topic)?;
        self.gate.throttle(who, Some(QuotaKind::ProduceBytes)).await;
        if cmd.topic == runnel_groups::OFFSETS_TOPIC {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("'{}' is internal: only group coordinators write to it", cmd.topic),
            ));
        }
        let p = self.local(&cmd.topic, cmd.partition)?;
        p.check_partition_epoch(cmd.partition_epoch)?;
        let batch =
            cmd.batch.ok_or_else(|| RunnelError::new(ErrorCode::InvalidRequest, "produce request has no batch"))?;
        if cmd.producer.is_some() && !cmd.wait_for_commit {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                "an idempotent produce needs acks=all (with acks=none the producer cannot learn what committed)",
            ));
        }
        let bytes = batch.records.len() as u64;
        let timeout = cmd.timeout.unwrap_or(Duration::from_millis(DEFAULT_PRODUCE_TIMEOUT_MS as u64));
        let o = p.produce(batch, cmd.producer, cmd.wait_for_commit, timeout, cmd.leader_epoch).await?;
        Ok(Produced {
            base_offset: o.base_offset,
            leader_epoch: o.leader_epoch,
            duplicate: o.duplicate,
            throttle_ms: self.gate.charge(who, QuotaKind::ProduceBytes, bytes),
        })
    }

    pub async fn fetch(&self, ctx: &RequestContext, cmd: FetchCommand) -> Result<Fetched, RunnelError> {
        let who = &ctx.principal;
        self.gate.check(who, Operation::Read, ResourceType::Topic, &cmd.topic)?;
        self.gate.throttle(who, Some(QuotaKind::FetchBytes)).await;
        let p = self.local(&cmd.topic, cmd.partition)?;
        p.check_partition_epoch(cmd.partition_epoch)?;
        let o = p.fetch(cmd.offset, cmd.max_bytes, cmd.max_wait_ms, cmd.leader_epoch).await?;
        let bytes = o.batches.iter().filter_map(|b| b.batch.as_ref()).map(|b| b.records.len() as u64).sum();
        Ok(Fetched {
            batches: o.batches,
            high_watermark: o.high_watermark,
            log_start_offset: o.log_start_offset,
            leader_epoch: o.leader_epoch,
            throttle_ms: self.gate.charge(who, QuotaKind::FetchBytes, bytes),
        })
    }

    pub async fn list_offsets(
        &self,
        ctx: &RequestContext,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<OffsetAnswer, RunnelError> {
        self.gate.check(&ctx.principal, Operation::Describe, ResourceType::Topic, topic)?;
        self.gate.throttle(&ctx.principal, None).await;
        let p = self.local(topic, partition)?;
        let leader_epoch = p.ensure_readable(None).await?;
        let (offset, found, timestamp_ms) = match query {
            OffsetQuery::Earliest => (p.sm.log_start(), true, 0),
            OffsetQuery::Latest => (p.sm.high_watermark(), true, 0),
            OffsetQuery::Timestamp(ts) => match p.offset_for_timestamp(ts)? {
                Some((offset, ts)) => (offset, true, ts),
                None => (p.sm.high_watermark(), false, 0),
            },
        };
        Ok(OffsetAnswer { offset, found, timestamp_ms, leader_epoch })
    }

    /// The brokers, the controller and the topics asked for (every topic the caller may describe
    /// when `topics` is empty). A named topic the caller may not describe is refused before its
    /// existence is looked up, so a refusal tells nothing.
    pub async fn metadata(&self, ctx: &RequestContext, topics: &[String]) -> Result<ClusterView, RunnelError> {
        let who = &ctx.principal;
        self.gate.throttle(who, None).await;
        let view = self.meta.current();
        let mut found = Vec::new();
        let mut missing = None;
        if topics.is_empty() {
            found = view
                .state
                .topics
                .values()
                .filter(|t| self.gate.may(who, Operation::Describe, ResourceType::Topic, &t.name))
                .cloned()
                .collect();
        } else {
            for name in topics {
                self.gate.check(who, Operation::Describe, ResourceType::Topic, name)?;
                match view.state.topics.get(name) {
                    Some(t) => found.push(t.clone()),
                    None => missing = Some(name.clone()),
                }
            }
        }
        Ok(ClusterView {
            voters: self.controller.voters(),
            controller: self.controller.controller().map(|(id, _)| id),
            topics: found,
            missing,
            view,
        })
    }

    /// A new idempotent producer's id (epoch 0), or the next epoch of `current`.
    pub async fn init_producer_id(
        &self,
        ctx: &RequestContext,
        current: Option<(u64, u32)>,
    ) -> Result<(u64, u32), RunnelError> {
        // As in Kafka: an idempotent producer needs write access to some topic.
        self.gate.check_any(&ctx.principal, Operation::Write, ResourceType::Topic)?;
        self.gate.throttle(&ctx.principal, None).await;
        // An epoch bump needs no state: the id is the caller's alone, and partitions fence the
        // older epoch when the new one first writes to them.
        if let Some((id, epoch)) = current {
            return match epoch.checked_add(1) {
                Some(epoch) => Ok((id, epoch)),
                None => Err(RunnelError::new(
                    ErrorCode::InvalidProducerEpoch,
                    format!("producer {id} has used every epoch; ask for a new producer id"),
                )),
            };
        }
        let id = self.controller.execute(AdminCommand::NewProducerId).await?.into_producer_id()?;
        Ok((id, 0))
    }

    pub async fn create_topic(
        &self,
        ctx: &RequestContext,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord, RunnelError> {
        let who = &ctx.principal;
        // Creating on the cluster allows every topic, as in Kafka.
        if !self.gate.may(who, Operation::Create, ResourceType::Cluster, CLUSTER) {
            self.gate.check(who, Operation::Create, ResourceType::Topic, name)?;
        }
        self.gate.throttle(who, None).await;
        let cmd = AdminCommand::CreateTopic { name: name.to_string(), partitions, replication_factor, configs };
        self.controller.execute(cmd).await?.into_topic()
    }

    pub async fn delete_topic(&self, ctx: &RequestContext, name: &str) -> Result<(), RunnelError> {
        self.gate.check(&ctx.principal, Operation::Delete, ResourceType::Topic, name)?;
        self.gate.throttle(&ctx.principal, None).await;
        self.controller.execute(AdminCommand::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    pub async fn describe_topic_config(
        &self,
        ctx: &RequestContext,
        topic: &str,
    ) -> Result<DescribedConfig, RunnelError> {
        self.gate.check(&ctx.principal, Operation::Describe, ResourceType::Topic, topic)?;
        self.gate.throttle(&ctx.principal, None).await;
        let view = self.meta.current();
        let t = view.state.topics.get(topic).ok_or_else(|| RunnelError::unknown_topic(topic))?;
        let defaults = TopicConfig::default().to_map();
        let configs = t.config.to_map();
        let overridden = configs.iter().filter(|(k, v)| defaults.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        Ok((configs, overridden))
    }

    /// Grows `topic` to `total` partitions (Kafka's CreatePartitions).
    pub async fn create_partitions(
        &self,
        ctx: &RequestContext,
        topic: &str,
        total: u32,
    ) -> Result<TopicRecord, RunnelError> {
        self.gate.check(&ctx.principal, Operation::Alter, ResourceType::Topic, topic)?;
        self.gate.throttle(&ctx.principal, None).await;
        let cmd = AdminCommand::CreatePartitions { topic: topic.to_string(), total };
        self.controller.execute(cmd).await?.into_topic()
    }

    pub async fn alter_topic_config(
        &self,
        ctx: &RequestContext,
        topic: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<TopicRecord, RunnelError> {
        self.gate.check(&ctx.principal, Operation::Alter, ResourceType::Topic, topic)?;
        self.gate.throttle(&ctx.principal, None).await;
        let cmd = AdminCommand::AlterTopicConfig { topic: topic.to_string(), set, delete };
        self.controller.execute(cmd).await?.into_topic()
    }

    pub async fn decommission(&self, ctx: &RequestContext, node: NodeId, cancel: bool) -> Result<u32, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::Decommission { node, cancel }).await?.into_remaining()
    }

    pub async fn reassign(
        &self,
        ctx: &RequestContext,
        topic: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<PartitionRecord, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        let cmd = AdminCommand::Reassign { topic: topic.to_string(), partition, replicas };
        self.controller.execute(cmd).await?.into_partition()
    }

    pub async fn rebalance(&self, ctx: &RequestContext, dry_run: bool) -> Result<Vec<PlannedMove>, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::Rebalance { dry_run }).await?.into_moves()
    }

    pub async fn replace_voter(
        &self,
        ctx: &RequestContext,
        remove: NodeId,
        add: NodeId,
    ) -> Result<Vec<NodeId>, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::ReplaceVoter { remove, add }).await?.into_voters()
    }

    /// The cluster's health from this node's committed metadata.
    pub async fn health(&self, ctx: &RequestContext) -> Result<Health, RunnelError> {
        self.admit_cluster(ctx, Operation::Describe).await?;
        let view = self.meta.current();
        let problems = partition_problems(&view.state);
        let controller = self.controller.controller().map(|(id, _)| id);
        Ok(Health {
            healthy: problems.is_empty() && controller.is_some(),
            problems,
            controller,
            voters: self.controller.voters(),
            partitions: view.state.topics.values().map(|t| t.partitions.len() as u32).sum(),
            view,
        })
    }

    /// Hands `topic/partition`'s leadership to replica `to` (this node must lead it); answers once
    /// `to` has taken over (up to 5 s) with the new leader epoch.
    pub async fn transfer_leader(
        &self,
        ctx: &RequestContext,
        topic: &str,
        partition: u32,
        to: NodeId,
    ) -> Result<u64, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        let p = self.local(topic, partition)?;
        let term = p.ensure_leader(None)?;
        if to == self.broker.node_id() {
            return Ok(term);
        }
        if !p.caught_up_voters().contains(&to) {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("node {to} is not a caught-up voter of {topic}/{partition}; it cannot take leadership now"),
            ));
        }
        p.transfer_leadership(to).await?;
        match p.await_leader(to, term, Duration::from_secs(5)).await {
            Some(t) => Ok(t),
            None => Err(RunnelError::new(
                ErrorCode::Timeout,
                format!("{topic}/{partition}: node {to} did not take leadership within 5 s"),
            )),
        }
    }
}

/// Consumer groups, for any protocol's front-end. As in Kafka: taking part in a group (join,
/// sync, heartbeat, leave, commit) needs read access to it, and a commit read access to every
/// topic it names too; looking at a group (its coordinator, offsets, description) needs describe
/// access to it.
impl Service {
    /// Checks `op` on group `group` and waits out the caller's request quota.
    async fn admit_group(&self, ctx: &RequestContext, op: Operation, group: &str) -> Result<(), RunnelError> {
        self.gate.check(&ctx.principal, op, ResourceType::Group, group)?;
        self.gate.throttle(&ctx.principal, None).await;
        Ok(())
    }

    /// Which node coordinates `group`: (offsets partition, node id, its address on the node-to-node
    /// and gRPC API). Creates the offsets topic on first use.
    pub async fn find_coordinator(
        &self,
        ctx: &RequestContext,
        group: &str,
    ) -> Result<(u32, NodeId, String), RunnelError> {
        self.admit_group(ctx, Operation::Describe, group).await?;
        self.coordinator.find(group).await
    }

    pub async fn kafka_join(&self, ctx: &RequestContext, r: KafkaJoin) -> Result<KafkaJoined, RunnelError> {
        self.admit_group(ctx, Operation::Read, &r.group).await?;
        self.coordinator.kafka_join(r).await
    }

    pub async fn kafka_sync(
        &self,
        ctx: &RequestContext,
        group: &str,
        member_id: &str,
        generation: u64,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, RunnelError> {
        self.admit_group(ctx, Operation::Read, group).await?;
        self.coordinator.kafka_sync(group, member_id, generation, assignments).await
    }

    pub async fn kafka_heartbeat(
        &self,
        ctx: &RequestContext,
        group: &str,
        member_id: &str,
        generation: u64,
    ) -> Result<(), RunnelError> {
        self.admit_group(ctx, Operation::Read, group).await?;
        self.coordinator.kafka_heartbeat(group, member_id, generation).await
    }

    /// One result per member, in order; the outer error is for the whole request.
    pub async fn kafka_leave(
        &self,
        ctx: &RequestContext,
        group: &str,
        member_ids: &[String],
    ) -> Result<Vec<Result<(), RunnelError>>, RunnelError> {
        self.admit_group(ctx, Operation::Read, group).await?;
        self.coordinator.kafka_leave(group, member_ids).await
    }

    /// `offsets`: (topic, partition, offset, metadata); generation -1 and member "" for a commit
    /// outside any generation (only while the group has no members).
    pub async fn commit_offsets(
        &self,
        ctx: &RequestContext,
        group: &str,
        member_id: &str,
        generation: i64,
        offsets: Vec<(String, u32, u64, String)>,
    ) -> Result<(), RunnelError> {
        let who = &ctx.principal;
        self.gate.check(who, Operation::Read, ResourceType::Group, group)?;
        let topics: BTreeSet<&str> = offsets.iter().map(|(t, ..)| t.as_str()).collect();
        for t in topics {
            self.gate.check(who, Operation::Read, ResourceType::Topic, t)?;
        }
        self.gate.throttle(who, None).await;
        self.coordinator.commit_offsets(group, member_id, generation, offsets).await
    }

    /// The group's committed offsets of the named partitions (all of them when `partitions` is
    /// empty): (topic, partition, offset, metadata). Only topics the caller may describe are
    /// answered; partitions without a commit are left out.
    pub async fn committed_offsets(
        &self,
        ctx: &RequestContext,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<Vec<(String, u32, u64, String)>, RunnelError> {
        self.admit_group(ctx, Operation::Describe, group).await?;
        let offsets = self.coordinator.committed_offsets(group, partitions).await?;
        Ok(offsets
            .into_iter()
            .filter(|(t, ..)| self.gate.may(&ctx.principal, Operation::Describe, ResourceType::Topic, t))
            .collect())
    }

    /// A group as Kafka's DescribeGroups shows it; `Dead` when there is no such group.
    pub async fn describe_group(&self, ctx: &RequestContext, group: &str) -> Result<GroupDescription, RunnelError> {
        self.admit_group(ctx, Operation::Describe, group).await?;
        self.coordinator.describe_group(group).await
    }

    /// The groups this node coordinates that the caller may describe (all of them with describe
    /// access to the cluster): (group, protocol_type, state).
    pub async fn list_groups(&self, ctx: &RequestContext) -> Result<Vec<(String, String, String)>, RunnelError> {
        let who = &ctx.principal;
        self.gate.throttle(who, None).await;
        let all = self.gate.may(who, Operation::Describe, ResourceType::Cluster, CLUSTER);
        let groups = self.coordinator.list_groups().await?;
        Ok(groups
            .into_iter()
            .filter(|(g, ..)| all || self.gate.may(who, Operation::Describe, ResourceType::Group, g))
            .collect())
    }
}

/// Who the node takes a caller to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    pub principal: Principal,
    pub superuser: bool,
    pub authentication_required: bool,
}

/// A user as lists show it: never its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub name: String,
    pub mechanisms: Vec<&'static str>,
}

/// Which rules a list shows; `None` matches every rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub principal: Option<String>,
    pub resource: Option<ResourceType>,
    pub name: Option<String>,
}

impl Service {
    pub fn who_am_i(&self, ctx: &RequestContext) -> WhoAmI {
        WhoAmI {
            principal: ctx.principal.clone(),
            superuser: self.gate.is_superuser(&ctx.principal),
            authentication_required: self.gate.required(),
        }
    }

    /// A bearer token for the caller (`user` `None` or the caller's own name) or, with the admin
    /// operation on the cluster, for another user; valid `lifetime` (`None`: the node's default).
    pub async fn create_token(
        &self,
        ctx: &RequestContext,
        user: Option<&str>,
        lifetime: Option<Duration>,
    ) -> Result<(String, u64), RunnelError> {
        let who = &ctx.principal;
        self.gate.throttle(who, None).await;
        let user = match (who, user) {
            (Principal::User(me), None) => me.clone(),
            (Principal::User(me), Some(other)) if other == me => me.clone(),
            (_, None) => {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    format!("{who} is no user: name the user the token is for"),
                ))
            }
            (_, Some(other)) => {
                self.gate.check(who, Operation::Admin, ResourceType::Cluster, CLUSTER)?;
                other.to_string()
            }
        };
        let lifetime = lifetime.unwrap_or_else(|| self.gate.token_lifetime());
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a token lives at most {} s (30 days), not {} s",
                    MAX_TOKEN_LIFETIME.as_secs(),
                    lifetime.as_secs()
                ),
            ));
        }
        self.gate.issue_token(&user, lifetime)
    }

    /// Creates a user or sets its new credentials (which revokes its tokens).
    pub async fn put_user(
        &self,
        ctx: &RequestContext,
        name: &str,
        credentials: Vec<Credentials>,
    ) -> Result<(), RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::PutUser { name: name.to_string(), credentials }).await.map(|_| ())
    }

    pub async fn delete_user(&self, ctx: &RequestContext, name: &str) -> Result<(), RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::DeleteUser { name: name.to_string() }).await.map(|_| ())
    }

    pub async fn list_users(&self, ctx: &RequestContext) -> Result<Vec<UserSummary>, RunnelError> {
        self.admit_cluster(ctx, Operation::Describe).await?;
        let view = self.meta.current();
        Ok(view
            .state
            .security
            .users
            .values()
            .map(|u| UserSummary {
                name: u.name.clone(),
                mechanisms: u.credentials.iter().map(|c| c.mechanism.name()).collect(),
            })
            .collect())
    }

    pub async fn add_acls(&self, ctx: &RequestContext, rules: Vec<AclRule>) -> Result<(), RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::AddAcls { rules }).await.map(|_| ())
    }

    /// Removes these exact rules; how many existed.
    pub async fn remove_acls(&self, ctx: &RequestContext, rules: Vec<AclRule>) -> Result<u64, RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::RemoveAcls { rules }).await?.into_removed()
    }

    pub async fn list_acls(&self, ctx: &RequestContext, filter: &AclFilter) -> Result<Vec<AclRule>, RunnelError> {
        self.admit_cluster(ctx, Operation::Describe).await?;
        let view = self.meta.current();
        Ok(view
            .state
            .security
            .acls
            .iter()
            .filter(|a| filter.principal.as_ref().is_none_or(|p| a.principal == *p))
            .filter(|a| filter.resource.is_none_or(|r| a.resource == r))
            .filter(|a| filter.name.as_ref().is_none_or(|n| a.name == *n))
            .cloned()
            .collect())
    }

    /// Sets (or with `None` removes) a principal's quota.
    pub async fn set_quota(
        &self,
        ctx: &RequestContext,
        principal: &str,
        quota: Option<Quota>,
    ) -> Result<(), RunnelError> {
        self.admit_cluster(ctx, Operation::Admin).await?;
        self.controller.execute(AdminCommand::SetQuota { principal: principal.to_string(), quota }).await.map(|_| ())
    }

    pub async fn list_quotas(&self, ctx: &RequestContext) -> Result<Vec<(String, Quota)>, RunnelError> {
        self.admit_cluster(ctx, Operation::Describe).await?;
        let view = self.meta.current();
        Ok(view.state.security.quotas.iter().map(|(p, q)| (p.clone(), *q)).collect())
    }
}

/// A partition that is leaderless or under-replicated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProblem {
    pub topic: String,
    pub partition: u32,
    /// `leaderless` or `under-replicated`.
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    pub problems: Vec<PartitionProblem>,
    pub controller: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub partitions: u32,
    pub view: Arc<MetaView>,
}

/// Every partition that is leaderless or under-replicated, and why, judged from the metadata.
pub fn partition_problems(state: &ClusterState) -> Vec<PartitionProblem> {
    let mut out = Vec::new();
    let status = |id: &NodeId| state.brokers.get(id).map(|b| b.status.as_str()).unwrap_or("not registered");
    let alive = |id: &NodeId| state.brokers.get(id).is_some_and(|b| b.is_alive());
    for t in state.topics.values() {
        for p in &t.partitions {
            let problem = |kind: &'static str, reason: String| PartitionProblem {
                topic: t.name.clone(),
                partition: p.partition,
                kind,
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
