//! Metadata: the brokers (each with its Kafka address), the controller, and the topics with each
//! partition's leader, leader epoch (the partition's Raft term), replicas and in-sync replicas.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use runnel_meta::TopicRecord;
use runnel_service::service::ClusterView;

use super::{kafka_address, str_bytes, topic_name};
use crate::errors::topic_error;
use crate::KafkaFrontEnd;

/// The cluster id Kafka clients see.
pub const CLUSTER_ID: &str = "runnel";

/// A topic's Kafka id: derived from its Runnel topic id, never the all-zero "no id".
pub fn topic_uuid(topic_id: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0x5255_4e4e_454c_0001, topic_id)
}

pub async fn metadata(front: &KafkaFrontEnd, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut out = MetadataResponse::default();
    out.cluster_id = Some(str_bytes(CLUSTER_ID));
    out.controller_id = BrokerId(-1);
    let ctx = match front.context() {
        Ok(c) => c,
        Err(e) => {
            // No topic details for a caller the node does not accept; say so on each one asked.
            for t in req.topics.iter().flatten() {
                let mut r = MetadataResponseTopic::default();
                r.name = t.name.clone();
                r.error_code = topic_error(&e);
                out.topics.push(r);
            }
            return out;
        }
    };
    // Every topic the caller may describe; a named one missing from it either does not exist or
    // may not be described (told apart below).
    let view = match front.service.metadata(&ctx, &[]).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "Kafka Metadata: the service refused");
            return out;
        }
    };
    brokers(front, &view, &mut out);
    let visible: BTreeMap<&str, &TopicRecord> = view.topics.iter().map(|t| (t.name.as_str(), t)).collect();
    // Version 0 asks for every topic with an empty list; later versions with a null one.
    let names: Option<Vec<String>> = match &req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect()),
    };
    let Some(names) = names else {
        out.topics = view.topics.iter().map(|t| topic(front, &view, t)).collect();
        return out;
    };
    // Auto-creation is the client's choice from version 4 on, always asked for before.
    let may_create = front.settings.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for name in names {
        if let Some(t) = visible.get(name.as_str()) {
            out.topics.push(topic(front, &view, t));
            continue;
        }
        let mut r = MetadataResponseTopic::default();
        r.name = Some(topic_name(&name));
        r.error_code = if view.view.state.topics.contains_key(&name) {
            ResponseError::TopicAuthorizationFailed.code()
        } else if may_create {
            match auto_create(front, &ctx, &view, &name).await {
                Ok(t) => {
                    out.topics.push(topic(front, &view, &t));
                    continue;
                }
                Err(e) if e.code == runnel_types::ErrorCode::TopicAlreadyExists => {
                    ResponseError::LeaderNotAvailable.code()
                }
                Err(e) => {
                    tracing::debug!(topic = %name, error = %e, "Kafka Metadata: auto-creation refused");
                    topic_error(&e)
                }
            }
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        };
        out.topics.push(r);
    }
    out
}

/// Creates `name` for a client that asked for it: `kafka_default_partitions` partitions, as many
/// replicas as there are live brokers up to 3.
async fn auto_create(
    front: &KafkaFrontEnd,
    ctx: &runnel_service::RequestContext,
    view: &ClusterView,
    name: &str,
) -> Result<TopicRecord, runnel_types::RunnelError> {
    let live = view.brokers().filter(|b| b.is_alive()).count().max(1) as u32;
    let rf = live.min(3);
    tracing::info!(
        topic = name,
        partitions = front.settings.default_partitions,
        rf,
        "Kafka client auto-creates a topic"
    );
    front.service.create_topic(ctx, name, front.settings.default_partitions, rf, BTreeMap::new()).await
}

fn brokers(front: &KafkaFrontEnd, view: &ClusterView, out: &mut MetadataResponse) {
    let state = &view.view.state;
    for b in view.brokers().filter(|b| b.is_alive()) {
        let Some((host, port)) = kafka_address(front, state, b.id) else { continue };
        let mut r = MetadataResponseBroker::default();
        r.node_id = BrokerId(b.id as i32);
        r.host = str_bytes(&host);
        r.port = port;
        out.brokers.push(r);
    }
    if let Some(c) = view.controller {
        out.controller_id = BrokerId(c as i32);
    }
}

fn topic(front: &KafkaFrontEnd, view: &ClusterView, t: &TopicRecord) -> MetadataResponseTopic {
    let state = &view.view.state;
    let alive = |id: &u64| state.brokers.get(id).is_some_and(|b| b.is_alive());
    let mut r = MetadataResponseTopic::default();
    r.name = Some(topic_name(&t.name));
    r.topic_id = topic_uuid(t.topic_id);
    r.is_internal = t.name == runnel_groups::OFFSETS_TOPIC;
    r.topic_authorized_operations = i32::MIN;
    for p in &t.partitions {
        let mut m = MetadataResponsePartition::default();
        m.partition_index = p.partition as i32;
        m.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r as i32)).collect();
        m.isr_nodes = p.replicas.iter().filter(|r| alive(r)).map(|r| BrokerId(*r as i32)).collect();
        m.offline_replicas = p.replicas.iter().filter(|r| !alive(r)).map(|r| BrokerId(*r as i32)).collect();
        // The Raft term: real and only increasing, the same epoch Fetch and ListOffsets answer.
        m.leader_epoch = p.leader_epoch.min(i32::MAX as u64) as i32;
        match p.leader.filter(|l| alive(l) && kafka_address(front, state, *l).is_some()) {
            Some(l) => m.leader_id = BrokerId(l as i32),
            None => {
                m.leader_id = BrokerId(-1);
                m.error_code = ResponseError::LeaderNotAvailable.code();
            }
        }
        r.partitions.push(m);
    }
    r
}
