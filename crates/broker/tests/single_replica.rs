//! A broker with one single-replica partition on the in-memory engine: the whole produce → Raft →
//! apply → index → fetch path, without RocksDB or a network.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::{Broker, BrokerDeps};
use runnel_meta::{ClusterState, MetaCommand};
use runnel_proto::v1::Record;
use runnel_proto::{decode_batch, encode_batch};
use runnel_raft::meta_sm::MetaView;
use runnel_raft::network::Router;
use runnel_raft::transport::GroupRegistry;
use runnel_raft::RaftTiming;
use runnel_storage::{Engine, GroupSyncer, MemEngine};
use runnel_types::topic::TopicConfig;
use runnel_types::ErrorCode;
use tokio::sync::watch;

fn rec(v: &str) -> Record {
    Record {
        key: Bytes::new(),
        value: Bytes::from(v.to_string()),
        headers: vec![],
        timestamp_ms: 0,
        offset_delta: None,
        ..Default::default()
    }
}

async fn broker_with_topic(
    engine: Arc<dyn Engine>,
    max_record_bytes: u64,
) -> (Arc<Broker>, watch::Sender<Arc<MetaView>>) {
    let repair = runnel_raft::repair::Repair::none(1, engine.clone());
    let deps = BrokerDeps {
        node_id: 1,
        engine: engine.clone(),
        syncer: Arc::new(GroupSyncer::start(engine)),
        space: Arc::new(runnel_storage::DiskSpace::unlimited()),
        repair,
        router: Router::new(
            1,
            runnel_proto::dial::tcp(),
            runnel_raft::liveness::NodeLiveness::new(1, 1, runnel_raft::liveness::LivenessConfig::new(100, 500)),
        ),
        registry: GroupRegistry::default(),
        timing: RaftTiming { heartbeat_ms: 50, election_timeout_ms: 200 },
        raft_seed: 7,
        clock: runnel_broker::system_clock(),
        planted_ack_before_commit: false,
    };
    let broker = Broker::new(deps);
    let mut state = ClusterState::default();
    state.apply(&MetaCommand::RegisterBroker { id: 1, addr: "127.0.0.1:1".into(), incarnation: 1 });
    state.apply(&MetaCommand::CreateTopic {
        name: "t".into(),
        config: TopicConfig { max_record_bytes, ..TopicConfig::default() },
        assignments: vec![vec![1]],
    });
    let (tx, rx) = watch::channel(Arc::new(MetaView { state, applied_index: 2 }));
    tokio::spawn(broker.clone().run_reconciler(rx));
    // As a node does: partition groups elect only when the election driver says so (ADR 0012).
    tokio::spawn(broker.clone().run_election_driver());
    tokio::spawn(broker.clone().run_leadership_tracker());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = broker.partition("t", 0) {
            if p.leadership().0 && p.ensure_readable(None).await.is_ok() {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "single replica never became a ready leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (broker, tx)
}

#[tokio::test]
async fn produce_assigns_dense_offsets_and_fetch_returns_them() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let (broker, _meta) = broker_with_topic(engine, 1024).await;
    let p = broker.partition("t", 0).unwrap();
    let t = Duration::from_secs(5);
    let b0 = p.produce(encode_batch(vec![rec("a"), rec("b")]), None, true, t, None).await.unwrap();
    let b1 = p.produce(encode_batch(vec![rec("c")]), None, true, t, None).await.unwrap();
    let b2 = p.produce(encode_batch(vec![rec("d"), rec("e"), rec("f")]), None, true, t, None).await.unwrap();
    assert_eq!((b0.base_offset, b1.base_offset, b2.base_offset), (0, 2, 3));
    assert_eq!(p.sm.high_watermark(), 6);

    // From inside the second batch: the batch holding offset 2 comes first.
    let out = p.fetch(2, 1 << 20, 0, None).await.unwrap();
    assert_eq!(out.high_watermark, 6);
    let bases: Vec<u64> = out.batches.iter().map(|b| b.base_offset).collect();
    assert_eq!(bases, vec![2, 3]);
    let values: Vec<Bytes> =
        out.batches.iter().flat_map(|b| decode_batch(b.batch.as_ref().unwrap()).unwrap()).map(|r| r.value).collect();
    assert_eq!(values, vec![Bytes::from("c"), Bytes::from("d"), Bytes::from("e"), Bytes::from("f")]);

    let mid = p.fetch(4, 1 << 20, 0, None).await.unwrap();
    assert_eq!(mid.batches.iter().map(|b| b.base_offset).collect::<Vec<_>>(), vec![3]);

    let e = p.fetch(7, 1 << 20, 0, None).await.err().unwrap();
    assert_eq!(e.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(e.valid_range, Some((0, 6)));
    assert!(p.fetch(6, 1 << 20, 0, None).await.unwrap().batches.is_empty());
}

#[tokio::test]
async fn long_poll_wakes_on_new_data() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let (broker, _meta) = broker_with_topic(engine, 1024).await;
    let p = broker.partition("t", 0).unwrap();
    let p2 = p.clone();
    let mut poll = tokio::spawn(async move { p2.fetch(0, 1 << 20, 10_000, None).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut poll).await.is_err(),
        "a fetch at the high watermark must wait for data"
    );
    p.produce(encode_batch(vec![rec("x")]), None, true, Duration::from_secs(5), None).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(5), poll).await.expect("poll woke").unwrap().unwrap();
    assert_eq!(out.batches.len(), 1);
}

#[tokio::test]
async fn bad_batches_are_refused_and_change_nothing() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let (broker, _meta) = broker_with_topic(engine, 8).await;
    let p = broker.partition("t", 0).unwrap();
    let t = Duration::from_secs(5);
    let e = p.produce(encode_batch(vec![rec("way too large")]), None, true, t, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::RecordTooLarge);
    assert!(e.message.contains("max.record.bytes") && e.message.contains('8'), "{e}");

    let mut corrupt = encode_batch(vec![rec("ok")]);
    corrupt.crc32c ^= 1;
    assert_eq!(p.produce(corrupt, None, true, t, None).await.unwrap_err().code, ErrorCode::CorruptBatch);

    let e = p.produce(encode_batch(vec![rec("ok")]), None, true, t, Some(999)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleEpoch);
    let e = p.check_partition_epoch(Some(7)).unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleEpoch);
    assert!(e.message.contains("partition epoch 7") && e.message.contains("at 1"), "{e}");
    p.check_partition_epoch(Some(1)).unwrap();
    p.check_partition_epoch(None).unwrap();

    assert_eq!(p.sm.high_watermark(), 0, "refused batches must not take offsets");
    p.produce(encode_batch(vec![rec("ok")]), None, true, t, None).await.unwrap();
    assert_eq!(p.sm.high_watermark(), 1);
}

#[tokio::test]
async fn state_survives_restart_on_the_same_engine() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    {
        let (broker, _meta) = broker_with_topic(engine.clone(), 1024).await;
        let p = broker.partition("t", 0).unwrap();
        for i in 0..5 {
            p.produce(encode_batch(vec![rec(&format!("v{i}"))]), None, true, Duration::from_secs(5), None)
                .await
                .unwrap();
        }
        broker.shutdown().await;
    }
    let (broker, _meta) = broker_with_topic(engine, 1024).await;
    let p = broker.partition("t", 0).unwrap();
    let out = p.fetch(0, 1 << 20, 0, None).await.unwrap();
    assert_eq!(out.high_watermark, 5);
    assert_eq!(out.batches.len(), 5);
    let b = p.produce(encode_batch(vec![rec("v5")]), None, true, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(b.base_offset, 5);
}

#[tokio::test]
async fn idempotent_retries_get_the_original_offsets_across_a_restart() {
    use runnel_proto::encode_batch_with;
    use runnel_proto::v1::Compression;
    use runnel_raft::ProducerStamp;

    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let t = Duration::from_secs(5);
    let stamp = |seq| Some(ProducerStamp { producer_id: 42, epoch: 0, base_sequence: seq });
    let batch0 = encode_batch_with(vec![rec("a"), rec("b")], Compression::Lz4);
    {
        let (broker, _meta) = broker_with_topic(engine.clone(), 1024).await;
        let p = broker.partition("t", 0).unwrap();
        let first = p.produce(batch0.clone(), stamp(0), true, t, None).await.unwrap();
        assert_eq!((first.base_offset, first.duplicate), (0, false));
        let again = p.produce(batch0.clone(), stamp(0), true, t, None).await.unwrap();
        assert_eq!((again.base_offset, again.duplicate), (0, true));
        let zstd = encode_batch_with(vec![rec("c")], Compression::Zstd);
        assert_eq!(p.produce(zstd, stamp(2), true, t, None).await.unwrap().base_offset, 2);
        assert_eq!(p.sm.high_watermark(), 3);
        broker.shutdown().await;
    }
    let (broker, _meta) = broker_with_topic(engine, 1024).await;
    let p = broker.partition("t", 0).unwrap();
    let retry = p.produce(batch0, stamp(0), true, t, None).await.unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (0, true), "producer state came back from disk");
    let e = p.produce(encode_batch(vec![rec("gap")]), stamp(7), true, t, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfOrderSequence);
    assert!(e.message.contains("next expected is 3"), "{e}");
    assert_eq!(p.sm.high_watermark(), 3, "duplicates and refusals take no offsets");
    let out = p.fetch(0, 1 << 20, 0, None).await.unwrap();
    let values: Vec<Bytes> =
        out.batches.iter().flat_map(|b| decode_batch(b.batch.as_ref().unwrap()).unwrap()).map(|r| r.value).collect();
    assert_eq!(values, vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]);
}
