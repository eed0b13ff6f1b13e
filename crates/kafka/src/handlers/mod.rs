//! One function per Kafka API: decode the request body, call the service, build the answer.

mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod topics;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use runnel_meta::ClusterState;
use runnel_types::NodeId;

use crate::connection::{Answer, Closed};
use crate::{host_and_port, versions, KafkaFrontEnd};

/// The listener name under which brokers record their Kafka address in the metadata.
pub const KAFKA_LISTENER: &str = "kafka";

fn decode<T: Decodable>(api: ApiKey, version: i16, buf: &mut Bytes) -> Result<T, Closed> {
    T::decode(buf, version).map_err(|e| Closed(format!("{api:?} v{version}: malformed request: {e}")))
}

/// A decoded request of any API this node answers.
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    CreatePartitions(CreatePartitionsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
}

/// Decodes the body of an `api` request of `version` (already checked to be supported).
pub fn decode_request(api: ApiKey, version: i16, buf: &mut Bytes) -> Result<Request, Closed> {
    Ok(match api {
        ApiKey::ApiVersions => Request::ApiVersions(decode(api, version, buf)?),
        ApiKey::Metadata => Request::Metadata(decode(api, version, buf)?),
        ApiKey::Produce => Request::Produce(decode(api, version, buf)?),
        ApiKey::Fetch => Request::Fetch(decode(api, version, buf)?),
        ApiKey::ListOffsets => Request::ListOffsets(decode(api, version, buf)?),
        ApiKey::InitProducerId => Request::InitProducerId(decode(api, version, buf)?),
        ApiKey::CreateTopics => Request::CreateTopics(decode(api, version, buf)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(decode(api, version, buf)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(decode(api, version, buf)?),
        ApiKey::CreatePartitions => Request::CreatePartitions(decode(api, version, buf)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(decode(api, version, buf)?),
        ApiKey::JoinGroup => Request::JoinGroup(decode(api, version, buf)?),
        ApiKey::SyncGroup => Request::SyncGroup(decode(api, version, buf)?),
        ApiKey::Heartbeat => Request::Heartbeat(decode(api, version, buf)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(decode(api, version, buf)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(decode(api, version, buf)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(decode(api, version, buf)?),
        ApiKey::ListGroups => Request::ListGroups(decode(api, version, buf)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(decode(api, version, buf)?),
        other => return Err(Closed(format!("{other:?} is not supported"))),
    })
}

/// Runs one request; `None` when it gets no answer.
pub(crate) async fn dispatch(
    front: &KafkaFrontEnd,
    version: i16,
    header: &RequestHeader,
    request: Request,
) -> Option<Box<dyn Answer>> {
    fn some<T: Answer + 'static>(t: T) -> Option<Box<dyn Answer>> {
        Some(Box::new(t))
    }
    match request {
        Request::ApiVersions(_) => some(api_versions()),
        Request::Metadata(r) => some(metadata::metadata(front, r, version).await),
        Request::Produce(r) => produce::produce(front, r).await.map(|r| Box::new(r) as _),
        Request::Fetch(r) => some(fetch::fetch(front, r).await),
        Request::ListOffsets(r) => some(offsets::list_offsets(front, r, version).await),
        Request::InitProducerId(r) => some(topics::init_producer_id(front, r).await),
        Request::CreateTopics(r) => some(topics::create_topics(front, r).await),
        Request::DeleteTopics(r) => some(topics::delete_topics(front, r, version).await),
        Request::DescribeConfigs(r) => some(topics::describe_configs(front, r).await),
        Request::CreatePartitions(r) => some(topics::create_partitions(front, r).await),
        Request::FindCoordinator(r) => some(groups::find_coordinator(front, r, version).await),
        Request::JoinGroup(r) => {
            let client_id = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            some(groups::join_group(front, r, version, &client_id).await)
        }
        Request::SyncGroup(r) => some(groups::sync_group(front, r).await),
        Request::Heartbeat(r) => some(groups::heartbeat(front, r).await),
        Request::LeaveGroup(r) => some(groups::leave_group(front, r, version).await),
        Request::OffsetCommit(r) => some(groups::offset_commit(front, r).await),
        Request::OffsetFetch(r) => some(groups::offset_fetch(front, r, version).await),
        Request::ListGroups(r) => some(groups::list_groups(front, r).await),
        Request::DescribeGroups(r) => some(groups::describe_groups(front, r).await),
    }
}

/// Every API and version range this node answers.
pub fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = versions::SUPPORTED
        .iter()
        .map(|(key, lo, hi)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*lo).with_max_version(*hi)
        })
        .collect();
    r
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Where Kafka clients reach broker `id`: its recorded Kafka listener (this node's own from its
/// settings, which are current before the metadata is).
pub(crate) fn kafka_address(front: &KafkaFrontEnd, state: &ClusterState, id: NodeId) -> Option<(String, i32)> {
    if id == front.service.broker.node_id() {
        return host_and_port(&front.settings.advertised);
    }
    state.listeners.get(&id).and_then(|l| l.get(KAFKA_LISTENER)).and_then(|a| host_and_port(a))
}

/// A Kafka error message field: `None` for success.
pub(crate) fn message(e: &runnel_types::RunnelError) -> Option<StrBytes> {
    Some(str_bytes(&e.message))
}
