//! Log maintenance on a single-replica partition over the in-memory engine, with a controlled
//! clock: retention by time and size (TrimLog, hollow batches), seek by timestamp, compaction,
//! live configuration changes, min.insync.replicas.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::{Broker, BrokerDeps, Partition};
use runnel_meta::{ClusterState, MetaCommand};
use runnel_proto::v1::Record;
use runnel_proto::{decode_batch, encode_batch};
use runnel_raft::meta_sm::MetaView;
use runnel_raft::network::Router;
use runnel_raft::transport::GroupRegistry;
use runnel_raft::{codec, PartitionCommand, PartitionTypes, RaftTiming};
use runnel_storage::keys::{group_end, group_key};
use runnel_storage::{Engine, GroupSyncer, Keyspace, MemEngine};
use runnel_types::topic::TopicConfig;
use runnel_types::ErrorCode;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(5);

struct Fixture {
    broker: Arc<Broker>,
    meta: watch::Sender<Arc<MetaView>>,
    state: ClusterState,
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn start(engine: Arc<dyn Engine>, config: &[(&str, &str)], now: Arc<AtomicI64>) -> Fixture {
    let clock = now.clone();
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
        clock: Arc::new(move || clock.load(Ordering::SeqCst)),
        planted_ack_before_commit: false,
    };
    let broker = Broker::new(deps);
    let mut state = ClusterState::default();
    state.apply(&MetaCommand::RegisterBroker { id: 1, addr: "127.0.0.1:1".into(), incarnation: 1 });
    state.apply(&MetaCommand::CreateTopic {
        name: "t".into(),
        config: TopicConfig::from_map(&configs(config)).unwrap(),
        assignments: vec![vec![1]],
    });
    let (tx, rx) = watch::channel(Arc::new(MetaView { state: state.clone(), applied_index: 2 }));
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
    Fixture { broker, meta: tx, state }
}

impl Fixture {
    fn p(&self) -> Arc<Partition> {
        self.broker.partition("t", 0).unwrap()
    }

    /// Commits a config change to the (fake) metadata and waits until the replica has it.
    async fn alter(&mut self, set: &[(&str, &str)]) {
        let r =
            self.state.apply(&MetaCommand::AlterTopicConfig { name: "t".into(), set: configs(set), delete: vec![] });
        assert_eq!(r, runnel_meta::MetaResponse::Done);
        let want = self.state.topics["t"].config.clone();
        self.meta.send_replace(Arc::new(MetaView { state: self.state.clone(), applied_index: 3 }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *self.p().config.read() != want {
            assert!(tokio::time::Instant::now() < deadline, "the replica never picked up the new config");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn rec(k: &str, v: &str, ts: i64) -> Record {
    Record {
        key: Bytes::from(k.to_string()),
        value: Bytes::from(v.to_string()),
        headers: vec![],
        timestamp_ms: ts,
        offset_delta: None,
        ..Default::default()
    }
}

/// Every record readable from the log start, as (offset, key, value).
async fn read_all(p: &Partition) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut next = p.sm.log_start();
    loop {
        let f = p.fetch(next, 1 << 20, 0, None).await.unwrap();
        if f.batches.is_empty() {
            return out;
        }
        for b in &f.batches {
            let batch = b.batch.as_ref().unwrap();
            for r in decode_batch(batch).unwrap() {
                let o = b.base_offset + u64::from(r.offset_delta.unwrap());
                if o >= next {
                    out.push((o, String::from_utf8_lossy(&r.key).into(), String::from_utf8_lossy(&r.value).into()));
                }
            }
            next = next.max(b.base_offset + u64::from(batch.record_count));
        }
    }
}

/// The partition's Raft log entries that carry batches: (log index, record count, bytes).
fn stored_batches(engine: &dyn Engine, group: u64) -> Vec<(u64, u32, usize)> {
    engine
        .scan(Keyspace::Log, &group_key(group, 0), &group_end(group), usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(_, v)| {
            let e: <PartitionTypes as openraft::RaftTypeConfig>::Entry = codec::decode(&v).unwrap();
            match e.payload {
                openraft::EntryPayload::Normal(PartitionCommand::Append(b)) => {
                    Some((e.log_id.index, b.record_count, b.records.len()))
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test]
async fn retention_by_time_hollows_old_batches_and_fetch_below_is_out_of_range() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let now = Arc::new(AtomicI64::new(10_000));
    let f = start(engine.clone(), &[("retention.ms", "1000")], now.clone()).await;
    let p = f.p();
    // Batches with max timestamps 100, 200, 9_500.
    p.produce(encode_batch(vec![rec("k", "a", 100), rec("k", "b", 50)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("k", "c", 200)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("k", "d", 9_500), rec("k", "e", 9_000)]), None, true, T, None).await.unwrap();
    assert_eq!(p.sm.high_watermark(), 5);
    let bytes_before = p.sm.retained_bytes();

    // now - retention = 9_000: the first batch whose running max reaches it starts at offset 3.
    assert_eq!(p.enforce_retention().await.unwrap(), Some(3));
    assert_eq!(p.sm.log_start(), 3);
    assert!(p.sm.retained_bytes() < bytes_before);
    assert_eq!(p.enforce_retention().await.unwrap(), None, "nothing more to delete");

    let e = p.fetch(1, 1 << 20, 0, None).await.err().unwrap();
    assert_eq!(e.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(e.valid_range, Some((3, 5)));
    let out = p.fetch(3, 1 << 20, 0, None).await.unwrap();
    assert_eq!(out.log_start_offset, 3);
    assert_eq!(read_all(&p).await.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(), vec!["d", "e"]);

    // The trimmed entries are still in the Raft log, hollow, with their spans.
    let stored = stored_batches(engine.as_ref(), p.group);
    assert_eq!(stored.iter().map(|s| (s.1, s.2 == 0)).collect::<Vec<_>>(), vec![(2, true), (1, true), (2, false)]);

    // Seek by time never lands below the log start.
    assert_eq!(p.offset_for_timestamp(0).unwrap().map(|x| x.0), Some(3));
    // Everything goes once it is all old; the log is then empty at the high watermark.
    now.store(100_000, Ordering::SeqCst);
    assert_eq!(p.enforce_retention().await.unwrap(), Some(5));
    assert!(read_all(&p).await.is_empty());
    let b = p.produce(encode_batch(vec![rec("k", "f", 100_000)]), None, true, T, None).await.unwrap().base_offset;
    assert_eq!(b, 5, "offsets continue after retention");
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_whole_batches_and_survives_restart() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let now = Arc::new(AtomicI64::new(10_000));
    {
        let f = start(engine.clone(), &[("retention.ms", "-1")], now.clone()).await;
        let p = f.p();
        for i in 0..5 {
            p.produce(encode_batch(vec![rec("k", &format!("value-{i}"), 10_000)]), None, true, T, None).await.unwrap();
        }
        let per_batch = p.sm.retained_bytes() / 5;
        assert!(p.enforce_retention().await.unwrap().is_none(), "unlimited by default");
        let mut f = f;
        f.alter(&[("retention.bytes", &(per_batch * 2).to_string())]).await;
        assert_eq!(p.enforce_retention().await.unwrap(), Some(3));
        assert_eq!(p.sm.retained_bytes(), per_batch * 2);
        f.broker.shutdown().await;
    }
    let f = start(engine, &[("retention.ms", "-1")], now).await;
    let p = f.p();
    assert_eq!(p.sm.log_start(), 3, "the log start is part of the applied state");
    assert_eq!(read_all(&p).await.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4]);
}

#[tokio::test]
async fn seek_by_timestamp_finds_the_first_record_at_or_after() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let f = start(engine, &[], Arc::new(AtomicI64::new(1_000))).await;
    let p = f.p();
    // offsets 0,1 | 2,3 | 4 with timestamps 100,150 | 120,300 | 250 (not monotonic).
    p.produce(encode_batch(vec![rec("k", "a", 100), rec("k", "b", 150)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("k", "c", 120), rec("k", "d", 300)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("k", "e", 250)]), None, true, T, None).await.unwrap();
    assert_eq!(p.offset_for_timestamp(0).unwrap(), Some((0, 100)));
    assert_eq!(p.offset_for_timestamp(130).unwrap(), Some((1, 150)));
    assert_eq!(p.offset_for_timestamp(151).unwrap(), Some((3, 300)));
    assert_eq!(p.offset_for_timestamp(300).unwrap(), Some((3, 300)));
    assert_eq!(p.offset_for_timestamp(301).unwrap(), None);
    // Records without timestamps take the leader's clock for their batch.
    p.produce(encode_batch(vec![rec("k", "f", 0)]), None, true, T, None).await.unwrap();
    assert_eq!(p.offset_for_timestamp(900).unwrap(), Some((5, 1_000)));
}

#[tokio::test]
async fn compaction_keeps_the_latest_value_per_key_and_expires_tombstones() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let now = Arc::new(AtomicI64::new(50_000));
    let f = start(engine, &[("cleanup.policy", "compact"), ("delete.retention.ms", "1000")], now.clone()).await;
    let p = f.p();
    let e = p.produce(encode_batch(vec![rec("", "keyless", 50_000)]), None, true, T, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("no key") && e.message.contains("compact"), "{e}");

    p.produce(encode_batch(vec![rec("a", "a1", 50_000), rec("b", "b1", 50_000)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("a", "a2", 50_000), rec("c", "c1", 50_000)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("b", "", 50_000), rec("a", "a3", 50_000)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("c", "c2", 50_000)]), None, true, T, None).await.unwrap();
    let before = p.sm.retained_bytes();

    let stats = p.compact().await.unwrap().unwrap();
    assert_eq!(stats.records_removed, 4);
    assert!(p.sm.retained_bytes() < before);
    let got = read_all(&p).await;
    let want: Vec<(u64, String, String)> =
        vec![(4, "b".into(), "".into()), (5, "a".into(), "a3".into()), (6, "c".into(), "c2".into())];
    assert_eq!(got, want, "one record per key, at its original offset; the young tombstone stays");
    // Batches emptied by compaction still span their offsets: a fetch from inside them moves on.
    let out = p.fetch(0, 1 << 20, 0, None).await.unwrap();
    assert_eq!(out.batches.first().map(|b| b.base_offset), Some(0));

    assert_eq!(p.compact().await.unwrap().unwrap().records_removed, 0, "a second pass changes nothing");
    now.store(60_000, Ordering::SeqCst);
    assert_eq!(p.compact().await.unwrap().unwrap().records_removed, 1);
    let got = read_all(&p).await;
    assert_eq!(got.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), vec!["a", "c"], "the tombstone expired");
    let b = p.produce(encode_batch(vec![rec("d", "d1", 60_000)]), None, true, T, None).await.unwrap().base_offset;
    assert_eq!(b, 7, "offsets continue after compaction");
}

#[tokio::test]
async fn a_live_config_change_takes_effect_and_min_insync_refuses_acks_all() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let now = Arc::new(AtomicI64::new(10_000));
    let mut f = start(engine, &[], now).await;
    let p = f.p();
    p.produce(encode_batch(vec![rec("k", "old", 1_000)]), None, true, T, None).await.unwrap();
    p.produce(encode_batch(vec![rec("k", "new", 9_900)]), None, true, T, None).await.unwrap();
    assert_eq!(p.enforce_retention().await.unwrap(), None, "7 days keeps both");
    f.alter(&[("retention.ms", "500")]).await;
    assert_eq!(p.enforce_retention().await.unwrap(), Some(1));

    f.alter(&[("min.insync.replicas", "2")]).await;
    let e = p.produce(encode_batch(vec![rec("k", "x", 10_000)]), None, true, T, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotEnoughReplicas);
    assert!(e.message.contains("min.insync.replicas") && e.message.contains('2'), "{e}");
    assert!(
        p.produce(encode_batch(vec![rec("k", "x", 10_000)]), None, false, T, None).await.is_ok(),
        "acks=none is allowed"
    );
}

/// A Kafka client's batch of `records`, gzip-compressed, as the Kafka front-end stores it.
fn kafka_batch(records: &[Record]) -> runnel_proto::v1::RecordBatch {
    let bytes = runnel_records::encode_kafka_batch(records, 1, None).unwrap();
    let (header, bytes) = runnel_records::split_kafka_batches(&bytes).unwrap().remove(0);
    runnel_records::kafka_to_stored(&header, bytes)
}

/// Every record readable from the log start through the records view (either format), as
/// (offset, key, value or None when null).
async fn read_view(p: &Partition) -> Vec<(u64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut next = p.sm.log_start();
    loop {
        let f = p.fetch(next, 1 << 20, 0, None).await.unwrap();
        if f.batches.is_empty() {
            return out;
        }
        for b in &f.batches {
            let batch = b.batch.as_ref().unwrap();
            for r in runnel_records::records(batch).unwrap() {
                let o = b.base_offset + u64::from(r.offset_delta.unwrap());
                if o >= next {
                    let value = (!r.value_null).then(|| String::from_utf8_lossy(&r.value).into());
                    out.push((o, String::from_utf8_lossy(&r.key).into(), value));
                }
            }
            next = next.max(b.base_offset + u64::from(batch.record_count));
        }
    }
}

#[tokio::test]
async fn kafka_batches_are_validated_and_a_null_value_is_compacted_as_a_tombstone() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let now = Arc::new(AtomicI64::new(50_000));
    let f = start(engine, &[("cleanup.policy", "compact"), ("delete.retention.ms", "1000")], now.clone()).await;
    let p = f.p();
    let tombstone = |k: &str| Record { value_null: true, ..rec(k, "", 50_000) };

    // A null key is no key.
    let null_key = Record { key_null: true, ..rec("", "v", 50_000) };
    let e = p.produce(kafka_batch(&[null_key]), None, true, T, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("no key"), "{e}");
    // A damaged Kafka batch is refused before it reaches the log.
    let mut bad = kafka_batch(&[rec("a", "x", 50_000)]);
    let mut raw = bad.records.to_vec();
    raw[30] ^= 1;
    bad.records = Bytes::from(raw);
    bad.crc32c = crc32c::crc32c(&bad.records);
    let e = p.produce(bad, None, true, T, None).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::CorruptBatch);
    assert!(e.message.contains("Kafka record batch CRC mismatch"), "{e}");

    // a@0 b@1 | b=null@2 c@3 | a@4 d=""@5 (empty, not null: a value in Kafka).
    p.produce(kafka_batch(&[rec("a", "a1", 50_000), rec("b", "b1", 50_000)]), None, true, T, None).await.unwrap();
    p.produce(kafka_batch(&[tombstone("b"), rec("c", "c1", 50_000)]), None, true, T, None).await.unwrap();
    p.produce(kafka_batch(&[rec("a", "a2", 50_000), rec("d", "", 50_000)]), None, true, T, None).await.unwrap();
    assert_eq!(p.sm.high_watermark(), 6);
    // The time index reads Kafka batches too.
    assert_eq!(p.offset_for_timestamp(40_000).unwrap(), Some((0, 50_000)));

    let stats = p.compact().await.unwrap().unwrap();
    assert_eq!((stats.batches_rewritten, stats.records_removed), (1, 2));
    let some = |s: &str| Some(s.to_string());
    let want = vec![
        (2, "b".to_string(), None),
        (3, "c".to_string(), some("c1")),
        (4, "a".to_string(), some("a2")),
        (5, "d".to_string(), some("")),
    ];
    assert_eq!(read_view(&p).await, want, "the young null tombstone stays, null");

    now.store(60_000, Ordering::SeqCst);
    let stats = p.compact().await.unwrap().unwrap();
    assert_eq!((stats.batches_rewritten, stats.records_removed), (1, 1), "the null tombstone expired");
    let want = vec![(3, "c".to_string(), some("c1")), (4, "a".to_string(), some("a2")), (5, "d".to_string(), some(""))];
    assert_eq!(read_view(&p).await, want, "offsets kept; an empty Kafka value is no tombstone");
    // The rewritten batch is a Runnel batch now; the untouched one is still the client's bytes.
    let out = p.fetch(3, 1 << 20, 0, None).await.unwrap();
    let formats: Vec<i32> = out.batches.iter().map(|b| b.batch.as_ref().unwrap().compression).collect();
    assert_eq!(formats, vec![0, runnel_records::KAFKA_BATCH]);
    assert_eq!(p.compact().await.unwrap().unwrap().records_removed, 0, "a third pass changes nothing");
}
