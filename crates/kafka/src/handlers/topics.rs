//! CreateTopics, DeleteTopics and InitProducerId: cluster changes, each forwarded to the
//! controller by the service.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId,
};
use runnel_types::{ErrorCode, RunnelError};

use super::{message, topic_name};
use crate::errors::{kafka_error, topic_error};
use crate::KafkaFrontEnd;

pub async fn create_topics(front: &KafkaFrontEnd, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let ctx = front.context();
    let mut out = CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = topic_name(&name);
        r.num_partitions = -1;
        r.replication_factor = -1;
        let result = async {
            let ctx = ctx.as_ref().map_err(Clone::clone)?;
            if !t.assignments.is_empty() {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    "manual replica assignments are not supported: give a partition count and replication factor",
                ));
            }
            let partitions = if t.num_partitions == -1 {
                front.settings.default_partitions
            } else {
                u32::try_from(t.num_partitions).map_err(|_| {
                    RunnelError::invalid_config(
                        "partitions",
                        t.num_partitions,
                        "must be at least 1 (or -1: the default)",
                    )
                })?
            };
            let view = front.service.meta.current();
            let live = view.state.brokers.values().filter(|b| b.is_alive()).count().max(1) as u32;
            let rf = if t.replication_factor == -1 {
                live.min(3)
            } else {
                u32::try_from(t.replication_factor).map_err(|_| {
                    RunnelError::invalid_config(
                        "replication_factor",
                        t.replication_factor,
                        "must be at least 1 (or -1: the default)",
                    )
                })?
            };
            let configs: BTreeMap<String, String> = t
                .configs
                .iter()
                .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                .collect();
            if req.validate_only {
                runnel_types::topic::validate_topic_name(&name)?;
                runnel_types::topic::TopicConfig::from_map(&configs)?;
                if view.state.topics.contains_key(&name) {
                    return Err(RunnelError::new(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic '{name}' already exists"),
                    ));
                }
                return Ok((partitions, rf));
            }
            let topic = front.service.create_topic(ctx, &name, partitions, rf, configs).await?;
            Ok((topic.partitions.len() as u32, rf))
        }
        .await;
        match result {
            Ok((partitions, rf)) => {
                r.num_partitions = partitions as i32;
                r.replication_factor = rf as i16;
            }
            Err(e) => {
                r.error_code = kafka_error(&e, ResponseError::TopicAuthorizationFailed).code();
                if e.code == ErrorCode::InvalidConfig && e.message.contains("replication") {
                    r.error_code = ResponseError::InvalidReplicationFactor.code();
                } else if e.code == ErrorCode::InvalidConfig && e.message.contains("partitions") {
                    r.error_code = ResponseError::InvalidPartitions.code();
                } else if e.code == ErrorCode::InvalidRequest && e.message.contains("topic name") {
                    r.error_code = ResponseError::InvalidTopicException.code();
                }
                r.error_message = message(&e);
            }
        }
        out.topics.push(r);
    }
    out
}

pub async fn delete_topics(front: &KafkaFrontEnd, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let ctx = front.context();
    // Up to version 5 topics come as names; from 6 as (name, id) pairs.
    let names: Vec<String> = if version < 6 {
        req.topic_names.iter().map(|n| n.0.to_string()).collect()
    } else {
        req.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect()
    };
    let mut out = DeleteTopicsResponse::default();
    for name in names {
        let mut r = DeletableTopicResult::default();
        r.name = Some(topic_name(&name));
        let result = match &ctx {
            Ok(ctx) => front.service.delete_topic(ctx, &name).await,
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = result {
            r.error_code = topic_error(&e);
            r.error_message = message(&e);
        }
        out.responses.push(r);
    }
    out
}

pub async fn init_producer_id(front: &KafkaFrontEnd, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default();
    out.producer_id = ProducerId(-1);
    out.producer_epoch = -1;
    if req.transactional_id.is_some() {
        out.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        tracing::debug!("Kafka InitProducerId refused: transactional producers are not supported");
        return out;
    }
    // From version 3 a producer may ask for the next epoch of the id it has.
    let current = (req.producer_id.0 >= 0 && req.producer_epoch >= 0)
        .then_some((req.producer_id.0 as u64, req.producer_epoch as u32));
    let result = match front.context() {
        Ok(ctx) => front.service.init_producer_id(&ctx, current).await,
        Err(e) => Err(e),
    };
    match result.and_then(|(id, epoch)| {
        let epoch = i16::try_from(epoch).map_err(|_| {
            RunnelError::new(ErrorCode::InvalidProducerEpoch, format!("producer {id} has used every Kafka epoch"))
        })?;
        Ok((id, epoch))
    }) {
        Ok((id, epoch)) => {
            out.producer_id = ProducerId(id as i64);
            out.producer_epoch = epoch;
        }
        Err(e) => {
            out.error_code = kafka_error(&e, ResponseError::ClusterAuthorizationFailed).code();
            tracing::debug!(error = %e, "Kafka InitProducerId refused");
        }
    }
    out
}

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources: set on the topic, or the default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

pub async fn describe_configs(
    front: &KafkaFrontEnd,
    req: kafka_protocol::messages::DescribeConfigsRequest,
) -> kafka_protocol::messages::DescribeConfigsResponse {
    use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
    let ctx = front.context();
    let mut out = kafka_protocol::messages::DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let wanted = |k: &str| res.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|w| w.as_str() == k));
        match res.resource_type {
            RESOURCE_TOPIC => {
                let described = match &ctx {
                    Ok(ctx) => front.service.describe_topic_config(ctx, &res.resource_name).await,
                    Err(e) => Err(e.clone()),
                };
                match described {
                    Ok((configs, overridden)) => {
                        for (k, v) in configs.iter().filter(|(k, _)| wanted(k)) {
                            let mut c = DescribeConfigsResourceResult::default();
                            c.name = super::str_bytes(k);
                            c.value = Some(super::str_bytes(v));
                            c.config_source = if overridden.contains(k) { SOURCE_TOPIC } else { SOURCE_DEFAULT };
                            r.configs.push(c);
                        }
                    }
                    Err(e) => {
                        r.error_code = topic_error(&e);
                        r.error_message = message(&e);
                    }
                }
            }
            // A broker's settings are the node's configuration file; none are exposed here.
            RESOURCE_BROKER => {}
            other => {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(super::str_bytes(&format!("resource type {other} has no configuration here")));
            }
        }
        out.results.push(r);
    }
    out
}

pub async fn create_partitions(
    front: &KafkaFrontEnd,
    req: kafka_protocol::messages::CreatePartitionsRequest,
) -> kafka_protocol::messages::CreatePartitionsResponse {
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    let ctx = front.context();
    let mut out = kafka_protocol::messages::CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let result = async {
            let ctx = ctx.as_ref().map_err(Clone::clone)?;
            if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err(RunnelError::new(
                    ErrorCode::InvalidRequest,
                    "manual replica assignments are not supported: give only the new partition count",
                ));
            }
            let total = u32::try_from(t.count)
                .map_err(|_| RunnelError::invalid_config("partitions", t.count, "must be positive"))?;
            if req.validate_only {
                let view = front.service.meta.current();
                let current = view.state.topics.get(&name).ok_or_else(|| RunnelError::unknown_topic(&name))?;
                if total <= current.partitions.len() as u32 {
                    return Err(RunnelError::invalid_config(
                        "partitions",
                        total,
                        &format!("topic '{name}' has {}; partitions can only be added", current.partitions.len()),
                    ));
                }
                return Ok(());
            }
            front.service.create_partitions(ctx, &name, total).await.map(|_| ())
        }
        .await;
        if let Err(e) = result {
            r.error_code = if e.code == ErrorCode::InvalidConfig {
                ResponseError::InvalidPartitions.code()
            } else {
                topic_error(&e)
            };
            r.error_message = message(&e);
        }
        out.results.push(r);
    }
    out
}
