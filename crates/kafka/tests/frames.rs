//! The Kafka decoder against bytes: golden-byte round trips for every (API, version) the node
//! advertises, and random, truncated and bit-flipped frames, which must be refused with a reason
//! (never a panic) and never make the decoder commit memory beyond the frame cap.
//!
//! Golden files (tests/golden/*.hex) pin the exact bytes of each request and answer; after a
//! deliberate codec change, regenerate them with `RUNNEL_UPDATE_GOLDEN=1 cargo test -p
//! runnel-kafka --test frames` and review the diff.

use std::alloc::{GlobalAlloc, Layout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::{Rng, SeedableRng};
use runnel_alloc::{GuardedAlloc, HUGE_ALLOCATION_BYTES};
use runnel_kafka::connection::{parse, Parsed};
use runnel_kafka::versions::SUPPORTED;

/// Counts live heap bytes (allocations below the guard's mapping size, which commit memory as
/// they are made) so a test can bound what decoding one frame takes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRACK: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        track(l.size(), true);
        unsafe { GuardedAlloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(l.size(), false);
        unsafe { GuardedAlloc.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        track(l.size(), true);
        unsafe { GuardedAlloc.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        track(l.size(), false);
        track(new, true);
        unsafe { GuardedAlloc.realloc(p, l, new) }
    }
}

fn track(size: usize, up: bool) {
    if size >= HUGE_ALLOCATION_BYTES {
        return;
    }
    if up {
        let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        if TRACK.load(Ordering::Relaxed) {
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    } else {
        LIVE.fetch_sub(size, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A Kafka v2 record batch of two records (hand-made bytes are not needed: kafka-protocol encodes).
fn records() -> Bytes {
    use kafka_protocol::records::*;
    let rec = |offset: i64, v: &str| Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::copy_from_slice(v.as_bytes())),
        headers: Default::default(),
    };
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut out, &[rec(0, "a"), rec(1, "bb")], &options).unwrap();
    out.freeze()
}

/// Writes a request body of the given version.
type Encoder = Box<dyn Fn(&mut BytesMut, i16)>;

/// One representative request per API for `version`, with the fields that version carries filled
/// in (an encoder refuses a field set that its version does not have).
fn sample_request(api: ApiKey, version: i16) -> Encoder {
    fn enc<T: Encodable + 'static>(t: T) -> Encoder {
        Box::new(move |b, v| t.encode(b, v).unwrap())
    }
    let topic = || TopicName(s("orders"));
    match api {
        ApiKey::ApiVersions if version >= 3 => enc(ApiVersionsRequest::default()
            .with_client_software_name(s("golden"))
            .with_client_software_version(s("1.0"))),
        ApiKey::ApiVersions => enc(ApiVersionsRequest::default()),
        ApiKey::Metadata => enc(MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(topic()))]))
            .with_allow_auto_topic_creation(true)),
        ApiKey::Produce => enc(ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            produce_request::TopicProduceData::default().with_name(topic()).with_partition_data(vec![
                produce_request::PartitionProduceData::default().with_index(0).with_records(Some(records())),
            ]),
        ])),
        ApiKey::Fetch => {
            enc(FetchRequest::default().with_max_wait_ms(500).with_min_bytes(1).with_max_bytes(52_428_800).with_topics(
                vec![fetch_request::FetchTopic::default().with_topic(topic()).with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(42)
                        .with_partition_max_bytes(1_048_576),
                ])],
            ))
        }
        ApiKey::ListOffsets => {
            enc(ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-2)])]))
        }
        ApiKey::InitProducerId => enc(InitProducerIdRequest::default().with_transaction_timeout_ms(60_000)),
        ApiKey::CreateTopics => enc(CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(topic())
                .with_num_partitions(3)
                .with_replication_factor(-1),
        ])),
        ApiKey::DeleteTopics => {
            enc(DeleteTopicsRequest::default().with_timeout_ms(30_000).with_topic_names(vec![topic()]))
        }
        ApiKey::DescribeConfigs => enc(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("orders")),
        ])),
        ApiKey::FindCoordinator => enc(FindCoordinatorRequest::default().with_key(s("billing"))),
        ApiKey::CreatePartitions => enc(CreatePartitionsRequest::default().with_timeout_ms(30_000).with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default().with_name(topic()).with_count(6),
        ])),
        ApiKey::JoinGroup => enc(JoinGroupRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(if version >= 1 { 30_000 } else { -1 })
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"\x00\x01subscription"))])),
        ApiKey::SyncGroup => enc(SyncGroupRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_generation_id(3)
            .with_member_id(s("m-1"))
            .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(s("m-1"))
                .with_assignment(Bytes::from_static(b"\x00\x01assignment"))])),
        ApiKey::Heartbeat => enc(HeartbeatRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_generation_id(3)
            .with_member_id(s("m-1"))),
        ApiKey::LeaveGroup if version >= 3 => enc(LeaveGroupRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_members(vec![leave_group_request::MemberIdentity::default().with_member_id(s("m-1"))])),
        ApiKey::LeaveGroup => {
            enc(LeaveGroupRequest::default().with_group_id(GroupId(s("billing"))).with_member_id(s("m-1")))
        }
        ApiKey::OffsetCommit => enc(OffsetCommitRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_generation_id_or_member_epoch(3)
            .with_member_id(s("m-1"))
            .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic())
                .with_partitions(vec![offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(99)
                    .with_committed_metadata(Some(s("")))])])),
        ApiKey::OffsetFetch => {
            enc(OffsetFetchRequest::default().with_group_id(GroupId(s("billing"))).with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic())
                    .with_partition_indexes(vec![0, 1]),
            ])))
        }
        ApiKey::ListGroups => enc(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => enc(DescribeGroupsRequest::default().with_groups(vec![GroupId(s("billing"))])),
        other => panic!("no sample request for {other:?}: add one for every advertised API"),
    }
}

/// A whole request frame: size, header, body.
fn frame(api: ApiKey, version: i16, correlation_id: i32) -> Bytes {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("golden-client")))
        .encode(&mut body, api.request_header_version(version))
        .unwrap();
    sample_request(api, version)(&mut body, version);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32);
    out.extend_from_slice(&body);
    out.freeze()
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .chunks(32)
        .map(|c| c.concat())
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(format!("{name}.hex"));
    let text = hex(bytes) + "\n";
    if std::env::var_os("RUNNEL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (RUNNEL_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "{name}: bytes differ from the golden file");
}

#[test]
fn every_advertised_version_decodes_golden_request_bytes() {
    for (api, lo, hi) in SUPPORTED {
        for version in *lo..=*hi {
            let bytes = frame(*api, version, 7);
            check_golden(&format!("{api:?}-v{version}.request"), &bytes);
            match parse(bytes.slice(4..)) {
                Ok(Parsed::Request { api: got, version: v, header, .. }) => {
                    assert_eq!((got, v, header.correlation_id), (*api, version, 7));
                    assert_eq!(header.client_id.as_deref(), Some("golden-client"));
                }
                Ok(Parsed::UnknownApiVersions { .. }) => panic!("{api:?} v{version} taken for an unknown version"),
                Err(e) => panic!("{api:?} v{version}: {e}"),
            }
        }
    }
}

/// The answers a node encodes, decoded as a client decodes them.
#[test]
fn every_advertised_version_encodes_answers_a_client_decodes() {
    // Decoded by a client and encoded again, an answer gives the same bytes (fields a version
    // does not have are left out, so the bytes, not the structs, are compared).
    fn round<T: Encodable + Decodable>(api: ApiKey, version: i16, t: T) {
        let bytes =
            runnel_kafka::connection::encode(api, version, 9, &t).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        check_golden(&format!("{api:?}-v{version}.response"), &bytes);
        let mut body = bytes.slice(4..);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, 9);
        let back = T::decode(&mut body, version).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert!(body.is_empty(), "{api:?} v{version}: bytes left after the answer");
        let again = runnel_kafka::connection::encode(api, version, 9, &back).unwrap();
        assert_eq!(again, bytes, "{api:?} v{version}");
    }
    let versions = runnel_kafka::handlers::api_versions();
    for (api, lo, hi) in SUPPORTED {
        for v in *lo..=*hi {
            match api {
                ApiKey::ApiVersions => round(*api, v, versions.clone()),
                ApiKey::Metadata => round(
                    *api,
                    v,
                    MetadataResponse::default()
                        .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
                            .with_node_id(BrokerId(1))
                            .with_host(s("127.0.0.1"))
                            .with_port(9092)])
                        .with_cluster_id(Some(s("runnel")))
                        .with_controller_id(BrokerId(1)),
                ),
                ApiKey::Produce => round(*api, v, ProduceResponse::default()),
                ApiKey::Fetch => round(*api, v, FetchResponse::default()),
                ApiKey::ListOffsets => round(*api, v, ListOffsetsResponse::default()),
                ApiKey::InitProducerId => {
                    round(*api, v, InitProducerIdResponse::default().with_producer_id(ProducerId(5)))
                }
                ApiKey::CreateTopics => round(*api, v, CreateTopicsResponse::default()),
                ApiKey::DeleteTopics => round(*api, v, DeleteTopicsResponse::default()),
                ApiKey::DescribeConfigs => round(*api, v, DescribeConfigsResponse::default()),
                ApiKey::CreatePartitions => round(*api, v, CreatePartitionsResponse::default()),
                ApiKey::FindCoordinator => round(*api, v, FindCoordinatorResponse::default().with_port(9092)),
                ApiKey::JoinGroup => round(*api, v, JoinGroupResponse::default().with_generation_id(3)),
                ApiKey::SyncGroup => round(*api, v, SyncGroupResponse::default()),
                ApiKey::Heartbeat => round(*api, v, HeartbeatResponse::default()),
                ApiKey::LeaveGroup => round(*api, v, LeaveGroupResponse::default()),
                ApiKey::OffsetCommit => round(*api, v, OffsetCommitResponse::default()),
                ApiKey::OffsetFetch => round(*api, v, OffsetFetchResponse::default()),
                ApiKey::ListGroups => round(*api, v, ListGroupsResponse::default()),
                ApiKey::DescribeGroups => round(*api, v, DescribeGroupsResponse::default()),
                other => panic!("no sample answer for {other:?}"),
            }
        }
    }
}

/// An ApiVersions newer than the node knows gets UNSUPPORTED_VERSION in v0 framing.
#[test]
fn an_unknown_api_versions_version_is_answered_not_closed() {
    let mut bytes = BytesMut::new();
    bytes.put_i16(ApiKey::ApiVersions as i16);
    bytes.put_i16(99);
    bytes.put_i32(11);
    match parse(bytes.freeze()) {
        Ok(Parsed::UnknownApiVersions { correlation_id }) => assert_eq!(correlation_id, 11),
        other => panic!("expected the v0 fallback, got {}", other.is_ok()),
    }
    // Any other API of an unknown version closes the connection, naming the range.
    let mut bytes = BytesMut::new();
    bytes.put_i16(ApiKey::Produce as i16);
    bytes.put_i16(2);
    bytes.put_i32(11);
    let why = parse(bytes.freeze()).err().expect("refused").0;
    assert!(why.contains("Produce version 2 is not supported (this node answers 3 to 9)"), "{why}");
}

fn parse_bounded(bytes: Bytes) -> Result<(), String> {
    let size = bytes.len();
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let before = LIVE.load(Ordering::Relaxed);
    TRACK.store(true, Ordering::Relaxed);
    let out = parse(bytes);
    TRACK.store(false, Ordering::Relaxed);
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    // Whatever counts a frame claims, the heap memory decoding commits stays below the frame cap
    // (larger reservations are mappings that commit nothing until used: runnel-alloc).
    assert!(grew <= runnel_kafka::MAX_FRAME_BYTES, "decoding a {size}-byte frame took {grew} bytes of heap");
    out.map(|_| ()).map_err(|e| e.0)
}

/// Random bytes, truncations and bit flips of valid frames of every advertised (API, version):
/// each parses or is refused with a reason; none panics or commits memory beyond a bound.
#[test]
fn random_truncated_and_flipped_frames_are_refused_without_harm() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_CAFE);
    let mut refused = 0;
    for (api, lo, hi) in SUPPORTED {
        for version in *lo..=*hi {
            let valid = frame(*api, version, 1).slice(4..);
            for cut in 0..valid.len() {
                if parse_bounded(valid.slice(..cut)).is_err() {
                    refused += 1;
                }
            }
            for _ in 0..200 {
                let mut b = valid.to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
                let _ = parse_bounded(Bytes::from(b));
            }
            // A huge element count in the first bytes after the header (the classic abort).
            let mut b = valid.to_vec();
            let at = (12 + rng.random_range(0..8)).min(b.len().saturating_sub(4));
            b[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
            let _ = parse_bounded(Bytes::from(b));
        }
    }
    for _ in 0..20_000 {
        let len = rng.random_range(0..256);
        let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if b.len() >= 4 && rng.random_bool(0.7) {
            // Mostly well-known API keys and versions, so bodies get decoded.
            let (api, lo, hi) = SUPPORTED[rng.random_range(0..SUPPORTED.len())];
            b[0..2].copy_from_slice(&(api as i16).to_be_bytes());
            b[2..4].copy_from_slice(&rng.random_range(lo..=hi).to_be_bytes());
        }
        let _ = parse_bounded(Bytes::from(b));
    }
    assert!(refused > 1000, "truncated frames are refused ({refused})");
}
