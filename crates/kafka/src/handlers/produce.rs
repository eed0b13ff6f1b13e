//! Produce: each partition's record batches are checked (CRC, magic, counts) and stored as the
//! client sent them (ADR 0020); an idempotent producer's stamp comes from the batch header, so a
//! retried batch is answered with its original offset and an out-of-order one is refused, by the
//! same partition check gRPC producers meet.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use runnel_raft::ProducerStamp;
use runnel_service::service::ProduceCommand;
use runnel_service::RequestContext;
use runnel_types::{ErrorCode, RunnelError};

use super::{message, topic_name};
use crate::errors::topic_error;
use crate::KafkaFrontEnd;

/// The answer, or `None` for acks=0 (the client waits for nothing).
pub async fn produce(front: &KafkaFrontEnd, req: ProduceRequest) -> Option<ProduceResponse> {
    let acks = req.acks;
    let ctx = front.context();
    let refusal = if !matches!(acks, -1..=1) {
        Some((ResponseError::InvalidRequiredAcks, format!("acks={acks}: Kafka producers ask for 0, 1 or -1 (all)")))
    } else if req.transactional_id.is_some() {
        Some((ResponseError::InvalidRequest, "transactional producers are not supported".to_string()))
    } else {
        None
    };
    let timeout = Duration::from_millis(req.timeout_ms.clamp(1, 300_000) as u64);
    let mut topics = Vec::new();
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let parts = t.partition_data.into_iter().map(|p| {
            let (name, ctx, refusal) = (name.clone(), ctx.clone(), refusal.clone());
            async move {
                let mut r = PartitionProduceResponse::default();
                r.index = p.index;
                r.base_offset = -1;
                r.log_append_time_ms = -1;
                r.log_start_offset = -1;
                let result = match (refusal, ctx) {
                    (Some((code, why)), _) => Err((code.code(), why)),
                    (None, Err(e)) => Err((topic_error(&e), e.message)),
                    (None, Ok(ctx)) => produce_partition(front, &ctx, &name, p.index, p.records, acks, timeout)
                        .await
                        .map_err(|e| (topic_error(&e), e.message)),
                };
                match result {
                    Ok((base, throttle)) => {
                        r.base_offset = base as i64;
                        (r, throttle)
                    }
                    Err((code, why)) => {
                        tracing::debug!(topic = %name, partition = p.index, code, reason = %why, "Kafka produce refused");
                        r.error_code = code;
                        r.error_message = message(&RunnelError::new(ErrorCode::InvalidRequest, why));
                        (r, 0)
                    }
                }
            }
        });
        let answers = join_all(parts).await;
        topics.push((name, answers));
    }
    if acks == 0 {
        return None;
    }
    let mut out = ProduceResponse::default();
    for (name, answers) in topics {
        let mut t = TopicProduceResponse::default();
        t.name = topic_name(&name);
        for (r, throttle) in answers {
            out.throttle_time_ms = out.throttle_time_ms.max(throttle as i32);
            t.partition_responses.push(r);
        }
        out.responses.push(t);
    }
    Some(out)
}

/// Appends one partition's batches; the first batch's base offset and the quota's throttle.
async fn produce_partition(
    front: &KafkaFrontEnd,
    ctx: &RequestContext,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
    acks: i16,
    timeout: Duration,
) -> Result<(u64, u32), RunnelError> {
    let partition = u32::try_from(index)
        .map_err(|_| RunnelError::new(ErrorCode::UnknownPartition, format!("{topic}: no partition {index}")))?;
    let records = records.ok_or_else(|| {
        RunnelError::new(ErrorCode::CorruptBatch, format!("{topic}/{partition}: produce request without records"))
    })?;
    let batches = runnel_records::split_kafka_batches(&records)?;
    let mut first = None;
    let mut throttle = 0;
    for (header, bytes) in batches {
        let producer = header.is_idempotent().then(|| ProducerStamp {
            producer_id: header.producer_id as u64,
            epoch: header.producer_epoch.max(0) as u32,
            base_sequence: header.base_sequence.max(0) as u64,
        });
        let cmd = ProduceCommand {
            topic: topic.to_string(),
            partition,
            batch: Some(runnel_records::kafka_to_stored(&header, bytes)),
            wait_for_commit: acks != 0,
            timeout: Some(timeout),
            producer,
            leader_epoch: None,
            partition_epoch: None,
        };
        let produced = front.service.produce(ctx, cmd).await?;
        first.get_or_insert(produced.base_offset);
        throttle = throttle.max(produced.throttle_ms);
    }
    // `split_kafka_batches` refuses a request without batches, so there was a first one.
    first.map(|f| (f, throttle)).ok_or_else(|| RunnelError::new(ErrorCode::CorruptBatch, "no record batch"))
}
