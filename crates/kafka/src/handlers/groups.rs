//! Consumer groups through Kafka's classic protocol: FindCoordinator names the node leading the
//! group's `__consumer_offsets` partition; JoinGroup/SyncGroup run a rebalance whose assignment
//! the group's leader computes (client-side, as Kafka clients expect); Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups and DescribeGroups follow. The coordinator and the
//! stored offsets are the ones Runnel's own consumers use, so both see the same commits.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use runnel_service::coordinator::KafkaJoin;
use runnel_types::{ErrorCode, RunnelError};

use super::{kafka_address, str_bytes, topic_name};
use crate::errors::kafka_error;
use crate::KafkaFrontEnd;

/// The Kafka code for a refused group call (an access refusal is about the group).
fn group_error(e: &RunnelError) -> i16 {
    kafka_error(e, ResponseError::GroupAuthorizationFailed).code()
}

fn group_id(g: &str) -> GroupId {
    GroupId(str_bytes(g))
}

pub async fn find_coordinator(
    front: &KafkaFrontEnd,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut out = FindCoordinatorResponse::default();
    // Up to version 3 one key; from 4 a list.
    let keys: Vec<String> = if version < 4 {
        vec![req.key.to_string()]
    } else {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    };
    for key in keys {
        let mut c = kafka_protocol::messages::find_coordinator_response::Coordinator::default();
        c.key = str_bytes(&key);
        c.node_id = BrokerId(-1);
        let found = async {
            if req.key_type != 0 {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    "only group coordinators exist here: transactions are not supported",
                ));
            }
            let ctx = front.context()?;
            let (_, node, _) = front.service.find_coordinator(&ctx, &key).await?;
            let state = &front.service.meta.current().state;
            let (host, port) = kafka_address(front, state, node).ok_or_else(|| {
                RunnelError::new(
                    ErrorCode::CoordinatorLoading,
                    format!("node {node} coordinates group '{key}' but its Kafka address is not known yet"),
                )
            })?;
            Ok((node, host, port))
        }
        .await;
        match found {
            Ok((node, host, port)) => {
                c.node_id = BrokerId(node as i32);
                c.host = str_bytes(&host);
                c.port = port;
            }
            Err(e) => {
                c.error_code = if e.code == ErrorCode::CoordinatorLoading || e.code == ErrorCode::LeaderNotAvailable {
                    ResponseError::CoordinatorNotAvailable.code()
                } else {
                    group_error(&e)
                };
                c.error_message = Some(str_bytes(&e.message));
            }
        }
        out.coordinators.push(c);
    }
    if version < 4 {
        if let Some(c) = out.coordinators.pop() {
            out.error_code = c.error_code;
            out.error_message = c.error_message;
            out.node_id = c.node_id;
            out.host = c.host;
            out.port = c.port;
        }
    }
    out
}

pub async fn join_group(
    front: &KafkaFrontEnd,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let mut out = JoinGroupResponse::default();
    out.generation_id = -1;
    out.member_id = req.member_id.clone();
    out.protocol_type = Some(req.protocol_type.clone());
    let group = req.group_id.0.to_string();
    let join = KafkaJoin {
        group: group.clone(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: client_id.to_string(),
        client_host: String::new(),
        session_timeout_ms: req.session_timeout_ms.max(0) as u32,
        // Version 0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 { req.session_timeout_ms } else { req.rebalance_timeout_ms }.max(0)
            as u32,
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
    };
    let joined = match front.context() {
        Ok(ctx) => front.service.kafka_join(&ctx, join).await,
        Err(e) => Err(e),
    };
    match joined {
        Ok(j) => {
            out.generation_id = j.generation.min(i32::MAX as u64) as i32;
            out.protocol_name = Some(str_bytes(&j.protocol_name));
            out.leader = str_bytes(&j.leader);
            out.member_id = str_bytes(&j.member_id);
            out.members = j
                .members
                .into_iter()
                .map(|m| {
                    let mut r = JoinGroupResponseMember::default();
                    r.member_id = str_bytes(&m.member_id);
                    r.group_instance_id = m.group_instance_id.as_deref().map(str_bytes);
                    r.metadata = m.metadata;
                    r
                })
                .collect();
        }
        Err(e) => {
            tracing::debug!(group = %group, error = %e, "Kafka JoinGroup refused");
            out.error_code = group_error(&e);
        }
    }
    out
}

pub async fn sync_group(front: &KafkaFrontEnd, req: SyncGroupRequest) -> SyncGroupResponse {
    let mut out = SyncGroupResponse::default();
    out.protocol_type = req.protocol_type.clone();
    out.protocol_name = req.protocol_name.clone();
    let group = req.group_id.0.to_string();
    let assignments: Vec<(String, Bytes)> =
        req.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
    let synced = match (front.context(), u64::try_from(req.generation_id)) {
        (Ok(ctx), Ok(generation)) => {
            front.service.kafka_sync(&ctx, &group, &req.member_id, generation, assignments).await
        }
        (Err(e), _) => Err(e),
        (_, Err(_)) => Err(RunnelError::new(
            ErrorCode::IllegalGeneration,
            format!("group '{group}': generation {} does not exist", req.generation_id),
        )),
    };
    match synced {
        Ok(assignment) => out.assignment = assignment,
        Err(e) => {
            tracing::debug!(group = %group, error = %e, "Kafka SyncGroup refused");
            out.error_code = group_error(&e);
        }
    }
    out
}

pub async fn heartbeat(front: &KafkaFrontEnd, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut out = HeartbeatResponse::default();
    let group = req.group_id.0.to_string();
    let result = match (front.context(), u64::try_from(req.generation_id)) {
        (Ok(ctx), Ok(generation)) => front.service.kafka_heartbeat(&ctx, &group, &req.member_id, generation).await,
        (Err(e), _) => Err(e),
        (_, Err(_)) => Err(RunnelError::new(
            ErrorCode::IllegalGeneration,
            format!("group '{group}': generation {} does not exist", req.generation_id),
        )),
    };
    if let Err(e) = result {
        out.error_code = group_error(&e);
    }
    out
}

pub async fn leave_group(front: &KafkaFrontEnd, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let mut out = LeaveGroupResponse::default();
    let group = req.group_id.0.to_string();
    // Up to version 2 one member; from 3 a list.
    let members: Vec<(String, Option<kafka_protocol::protocol::StrBytes>)> = if version < 3 {
        vec![(req.member_id.to_string(), None)]
    } else {
        req.members.iter().map(|m| (m.member_id.to_string(), m.group_instance_id.clone())).collect()
    };
    let ids: Vec<String> = members.iter().map(|(m, _)| m.clone()).collect();
    let result = match front.context() {
        Ok(ctx) => front.service.kafka_leave(&ctx, &group, &ids).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(each) => {
            for ((member, instance), r) in members.into_iter().zip(each) {
                let mut m = MemberResponse::default();
                m.member_id = str_bytes(&member);
                m.group_instance_id = instance;
                if let Err(e) = r {
                    m.error_code = group_error(&e);
                }
                out.members.push(m);
            }
            if version < 3 {
                out.error_code = out.members.first().map_or(0, |m| m.error_code);
                out.members.clear();
            }
        }
        Err(e) => out.error_code = group_error(&e),
    }
    out
}

pub async fn offset_commit(front: &KafkaFrontEnd, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let mut offsets = Vec::new();
    let mut bad: Vec<(String, i32)> = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            match (u32::try_from(p.partition_index), u64::try_from(p.committed_offset)) {
                (Ok(partition), Ok(offset)) => offsets.push((
                    t.name.0.to_string(),
                    partition,
                    offset,
                    p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                )),
                _ => bad.push((t.name.0.to_string(), p.partition_index)),
            }
        }
    }
    let result = match front.context() {
        Ok(ctx) => {
            let generation = i64::from(req.generation_id_or_member_epoch);
            front.service.commit_offsets(&ctx, &group, &req.member_id, generation, offsets).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::debug!(group = %group, error = %e, "Kafka OffsetCommit refused");
    }
    let code = match &result {
        Ok(()) => 0,
        Err(e) if e.code == ErrorCode::AuthorizationFailed && e.message.contains("topic") => {
            ResponseError::TopicAuthorizationFailed.code()
        }
        Err(e) => group_error(e),
    };
    let mut out = OffsetCommitResponse::default();
    for t in req.topics {
        let mut topic = OffsetCommitResponseTopic::default();
        topic.name = t.name.clone();
        for p in t.partitions {
            let mut r = OffsetCommitResponsePartition::default();
            r.partition_index = p.partition_index;
            r.error_code = if bad.contains(&(t.name.0.to_string(), p.partition_index)) {
                ResponseError::InvalidCommitOffsetSize.code()
            } else {
                code
            };
            topic.partitions.push(r);
        }
        out.topics.push(topic);
    }
    out
}

/// Partitions asked for, by topic.
type TopicPartitions = Vec<(String, Vec<i32>)>;

pub async fn offset_fetch(front: &KafkaFrontEnd, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let mut out = OffsetFetchResponse::default();
    // Up to version 7 one group; from 8 a list of groups.
    let asked: Vec<(String, Option<TopicPartitions>)> = if version < 8 {
        let topics = req
            .topics
            .as_ref()
            .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
        vec![(req.group_id.0.to_string(), topics)]
    } else {
        req.groups
            .iter()
            .map(|g| {
                let topics = g
                    .topics
                    .as_ref()
                    .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
                (g.group_id.0.to_string(), topics)
            })
            .collect()
    };
    for (group, topics) in asked {
        let wanted: Vec<(String, u32)> = topics
            .iter()
            .flatten()
            .flat_map(|(t, ps)| ps.iter().filter_map(|p| u32::try_from(*p).ok()).map(move |p| (t.clone(), p)))
            .collect();
        let result = match front.context() {
            Ok(ctx) => front.service.committed_offsets(&ctx, &group, &wanted).await,
            Err(e) => Err(e),
        };
        let (code, committed) = match result {
            Ok(c) => (0, c),
            Err(e) => (group_error(&e), Vec::new()),
        };
        // Every partition asked for is answered, -1 where nothing is committed; with no list,
        // every partition the group has a commit for.
        let mut rows: Vec<(String, i32, i64, String)> = match &topics {
            Some(ts) => ts
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .map(|(t, p)| {
                    let found = committed.iter().find(|c| c.0 == t && i64::from(c.1) == i64::from(p));
                    (t, p, found.map_or(-1, |c| c.2 as i64), found.map(|c| c.3.clone()).unwrap_or_default())
                })
                .collect(),
            None => committed.into_iter().map(|(t, p, o, m)| (t, p as i32, o as i64, m)).collect(),
        };
        rows.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        if version < 8 {
            // Version 1 has no group-level error: the partitions carry it.
            if version >= 2 {
                out.error_code = code;
            } else if code != 0 {
                for r in rows.iter_mut() {
                    r.2 = -1;
                }
            }
            for (t, p, o, m) in rows {
                if out.topics.last().is_none_or(|x| x.name.0.as_str() != t.as_str()) {
                    let mut topic = OffsetFetchResponseTopic::default();
                    topic.name = topic_name(&t);
                    out.topics.push(topic);
                }
                let mut r = OffsetFetchResponsePartition::default();
                r.partition_index = p;
                r.committed_offset = o;
                r.committed_leader_epoch = -1;
                r.metadata = Some(str_bytes(&m));
                if version < 2 {
                    r.error_code = code;
                }
                if let Some(topic) = out.topics.last_mut() {
                    topic.partitions.push(r);
                }
            }
        } else {
            let mut g = OffsetFetchResponseGroup::default();
            g.group_id = group_id(&group);
            g.error_code = code;
            for (t, p, o, m) in rows {
                if g.topics.last().is_none_or(|x| x.name.0.as_str() != t.as_str()) {
                    let mut topic = OffsetFetchResponseTopics::default();
                    topic.name = topic_name(&t);
                    g.topics.push(topic);
                }
                let mut r = OffsetFetchResponsePartitions::default();
                r.partition_index = p;
                r.committed_offset = o;
                r.committed_leader_epoch = -1;
                r.metadata = Some(str_bytes(&m));
                if let Some(topic) = g.topics.last_mut() {
                    topic.partitions.push(r);
                }
            }
            out.groups.push(g);
        }
    }
    out
}

pub async fn list_groups(front: &KafkaFrontEnd, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut out = ListGroupsResponse::default();
    let result = match front.context() {
        Ok(ctx) => front.service.list_groups(&ctx).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(groups) => {
            for (group, protocol_type, state) in groups {
                if !req.states_filter.is_empty() && !req.states_filter.iter().any(|s| s.eq_ignore_ascii_case(&state)) {
                    continue;
                }
                let mut g = ListedGroup::default();
                g.group_id = group_id(&group);
                g.protocol_type = str_bytes(&protocol_type);
                g.group_state = str_bytes(&state);
                g.group_type = str_bytes("classic");
                out.groups.push(g);
            }
        }
        Err(e) => out.error_code = group_error(&e),
    }
    out
}

pub async fn describe_groups(front: &KafkaFrontEnd, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut out = DescribeGroupsResponse::default();
    for g in req.groups {
        let name = g.0.to_string();
        let mut d = DescribedGroup::default();
        d.group_id = g;
        d.authorized_operations = i32::MIN;
        let result = match front.context() {
            Ok(ctx) => front.service.describe_group(&ctx, &name).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(desc) => {
                d.group_state = str_bytes(&desc.state);
                d.protocol_type = str_bytes(&desc.protocol_type);
                d.protocol_data = str_bytes(&desc.protocol);
                d.members = desc
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut r = DescribedGroupMember::default();
                        r.member_id = str_bytes(&m.member_id);
                        r.group_instance_id = m.group_instance_id.as_deref().map(str_bytes);
                        r.client_id = str_bytes(&m.client_id);
                        r.client_host = str_bytes(&m.client_host);
                        r.member_metadata = m.metadata;
                        r.member_assignment = m.assignment;
                        r
                    })
                    .collect();
            }
            Err(e) => {
                d.error_code = group_error(&e);
                d.error_message = Some(str_bytes(&e.message));
            }
        }
        out.groups.push(d);
    }
    out
}
