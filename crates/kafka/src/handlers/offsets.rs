//! ListOffsets: the earliest offset (-2), the latest (-1), or the first offset whose record is at
//! or after a timestamp (offset -1 when there is none, as Kafka answers).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use runnel_service::service::OffsetQuery;

use super::topic_name;
use crate::errors::topic_error;
use crate::KafkaFrontEnd;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub async fn list_offsets(front: &KafkaFrontEnd, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let ctx = front.context();
    let mut out = ListOffsetsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut topic = ListOffsetsTopicResponse::default();
        topic.name = topic_name(&name);
        for p in t.partitions {
            let mut r = ListOffsetsPartitionResponse::default();
            r.partition_index = p.partition_index;
            r.timestamp = -1;
            r.offset = -1;
            r.leader_epoch = -1;
            let query = match p.timestamp {
                LATEST => Some(OffsetQuery::Latest),
                EARLIEST => Some(OffsetQuery::Earliest),
                ts if ts >= 0 => Some(OffsetQuery::Timestamp(ts)),
                // -3 (max timestamp) and the tiered-storage queries.
                _ => None,
            };
            let (Some(query), Ok(partition)) = (query, u32::try_from(p.partition_index)) else {
                r.error_code = if p.partition_index < 0 {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::UnsupportedVersion.code()
                };
                topic.partitions.push(r);
                continue;
            };
            let answer = match &ctx {
                Ok(ctx) => front.service.list_offsets(ctx, &name, partition, query).await,
                Err(e) => Err(e.clone()),
            };
            match answer {
                Ok(a) => {
                    // Versions before 4 have no leader epoch field (setting it fails the encode).
                    if version >= 4 {
                        r.leader_epoch = a.leader_epoch.min(i32::MAX as u64) as i32;
                    }
                    match query {
                        OffsetQuery::Timestamp(_) if !a.found => {}
                        OffsetQuery::Timestamp(_) => {
                            r.offset = a.offset as i64;
                            r.timestamp = a.timestamp_ms;
                        }
                        _ => r.offset = a.offset as i64,
                    }
                }
                Err(e) => r.error_code = topic_error(&e),
            }
            topic.partitions.push(r);
        }
        out.topics.push(topic);
    }
    out
}
