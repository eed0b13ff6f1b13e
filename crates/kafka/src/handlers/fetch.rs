//! Fetch: whole stored batches from the one holding the fetch offset (clients skip the records
//! before it), at least one batch even if it is over the size limits, and a long poll: when
//! nothing at all is ready the request waits up to `max_wait_ms` for any of its partitions to get
//! new records. Fetch sessions (KIP-227) are declined (session id 0), so every request names
//! every partition and every one is answered.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use runnel_service::service::{FetchCommand, Fetched};
use runnel_service::RequestContext;
use runnel_types::{ErrorCode, RunnelError};

use super::topic_name;
use crate::errors::topic_error;
use crate::KafkaFrontEnd;

/// Longest long poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Wanted {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: i32,
}

pub async fn fetch(front: &KafkaFrontEnd, req: FetchRequest) -> FetchResponse {
    let wanted: Vec<Wanted> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| Wanted {
                topic: t.topic.0.to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
            })
        })
        .collect();
    let ctx = front.context();
    let mut results = read_all(front, &ctx, &wanted, 0).await;
    let ready: usize = results.iter().map(|r| r.as_ref().map_or(1, batch_bytes)).sum();
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    if ready < req.min_bytes.max(1) as usize && !wait.is_zero() && !wanted.is_empty() {
        // Nothing yet: wait on every partition at once; the first to get records (or the end
        // of the wait) ends it, and then every partition is read again without waiting.
        let mut waits: FuturesUnordered<_> =
            wanted.iter().map(|w| read_one(front, &ctx, w, wait.as_millis() as u32)).collect();
        while let Some(r) = waits.next().await {
            if r.as_ref().map_or(true, |f| !f.batches.is_empty()) {
                break;
            }
        }
        drop(waits);
        results = read_all(front, &ctx, &wanted, 0).await;
    }
    let mut out = FetchResponse::default();
    out.session_id = 0;
    let mut budget = if req.max_bytes <= 0 { i64::MAX } else { i64::from(req.max_bytes) };
    let mut current: Option<FetchableTopicResponse> = None;
    for (w, r) in wanted.iter().zip(results) {
        if current.as_ref().is_none_or(|t| t.topic.0.as_str() != w.topic) {
            if let Some(t) = current.take() {
                out.responses.push(t);
            }
            let mut t = FetchableTopicResponse::default();
            t.topic = topic_name(&w.topic);
            current = Some(t);
        }
        let mut p = PartitionData::default();
        p.partition_index = w.partition;
        p.high_watermark = -1;
        p.last_stable_offset = -1;
        p.log_start_offset = -1;
        p.preferred_read_replica = BrokerId(-1);
        p.aborted_transactions = Some(Vec::new());
        match r {
            Ok(f) => {
                out.throttle_time_ms = out.throttle_time_ms.max(f.throttle_ms as i32);
                p.high_watermark = f.high_watermark as i64;
                p.last_stable_offset = f.high_watermark as i64;
                p.log_start_offset = f.log_start_offset as i64;
                // The request's overall limit: later partitions get nothing once it is spent,
                // except that the first batch of the response always goes.
                match kafka_batches(&f, &mut budget) {
                    Ok(records) => p.records = Some(records),
                    Err(e) => p.error_code = topic_error(&e),
                }
            }
            Err(e) => {
                p.error_code = topic_error(&e);
                if let Some((start, end)) = e.valid_range {
                    p.log_start_offset = start as i64;
                    p.high_watermark = end as i64;
                    p.last_stable_offset = end as i64;
                }
                p.records = Some(Bytes::new());
            }
        }
        if let Some(t) = current.as_mut() {
            t.partitions.push(p);
        }
    }
    if let Some(t) = current.take() {
        out.responses.push(t);
    }
    out
}

async fn read_all(
    front: &KafkaFrontEnd,
    ctx: &Result<RequestContext, RunnelError>,
    wanted: &[Wanted],
    wait_ms: u32,
) -> Vec<Result<Fetched, RunnelError>> {
    join_all(wanted.iter().map(|w| read_one(front, ctx, w, wait_ms))).await
}

async fn read_one(
    front: &KafkaFrontEnd,
    ctx: &Result<RequestContext, RunnelError>,
    w: &Wanted,
    wait_ms: u32,
) -> Result<Fetched, RunnelError> {
    let ctx = ctx.as_ref().map_err(Clone::clone)?;
    let (Ok(partition), Ok(offset)) = (u32::try_from(w.partition), u64::try_from(w.offset)) else {
        return Err(RunnelError::new(
            ErrorCode::OffsetOutOfRange,
            format!("{}/{}: no offset {}", w.topic, w.partition, w.offset),
        ));
    };
    let cmd = FetchCommand {
        topic: w.topic.clone(),
        partition,
        offset,
        max_bytes: w.max_bytes.max(1) as u32,
        max_wait_ms: wait_ms,
        // Not compared: a client's epoch comes from Metadata, which may trail the partition's
        // term by a heartbeat; reads are served by the leader from committed records either way.
        leader_epoch: None,
        partition_epoch: None,
    };
    front.service.fetch(ctx, cmd).await
}

fn batch_bytes(f: &Fetched) -> usize {
    f.batches.iter().filter_map(|b| b.batch.as_ref()).map(|b| b.records.len()).sum()
}

/// The fetched batches as Kafka batches, spending `budget` (the first batch of the response is
/// sent whatever its size, so a consumer always makes progress).
fn kafka_batches(f: &Fetched, budget: &mut i64) -> Result<Bytes, RunnelError> {
    let epoch = f.leader_epoch.min(i32::MAX as u64) as i32;
    let mut out = BytesMut::new();
    for b in &f.batches {
        let Some(batch) = &b.batch else { continue };
        if *budget <= 0 {
            break;
        }
        let Some(bytes) = runnel_records::to_kafka(batch, b.base_offset, epoch)? else { continue };
        *budget -= bytes.len() as i64;
        out.extend_from_slice(&bytes);
    }
    Ok(out.freeze())
}
