//! Log maintenance on three real nodes (RF=3): retention by time and size on every replica, the
//! log start and OFFSET_OUT_OF_RANGE below it, compaction, seek by timestamp, and topic
//! configuration changes (validation, live effect). Short maintenance intervals keep them quick.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_client::{Client, ErrorCode};
use runnel_proto::v1::{Acks, ReplicaStatus};
use runnel_tests::{now_ms, read_from, record, record_at, wait_for, Cluster};

const READY: Duration = Duration::from_secs(60);
/// Bound for maintenance to happen: intervals are a few hundred ms, so this is generous.
const MAINTENANCE: Duration = Duration::from_secs(30);

const ENV: [(&str, &str); 2] = [("RUNNEL_RETENTION_CHECK_INTERVAL_MS", "200"), ("RUNNEL_CLEANER_INTERVAL_MS", "300")];

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn started() -> (Cluster, Client) {
    let cluster = Cluster::start_with(3, 3, &ENV);
    cluster.wait_ready(READY).await;
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    (cluster, client)
}

/// Partition 0 of `topic` as each of the three nodes' replica reports it.
async fn replica_states(cluster: &Cluster, topic: &str) -> Option<Vec<ReplicaStatus>> {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        let rs = Cluster::replicas_on(&n.addr).await?;
        out.push(rs.into_iter().find(|r| r.topic == topic && r.partition == 0)?);
    }
    Some(out)
}

/// Waits until every replica of `topic`/0 satisfies `ok`; their states then.
async fn wait_replicas(
    cluster: &Cluster,
    topic: &str,
    what: &str,
    ok: impl Fn(&ReplicaStatus) -> bool,
) -> Vec<ReplicaStatus> {
    let ok = &ok;
    wait_for(MAINTENANCE, what, || async move {
        let rs = replica_states(cluster, topic).await?;
        rs.iter().all(ok).then_some(rs)
    })
    .await
}

/// Waits until every replica of `topic`/0 has completed two more compaction passes than the most
/// any had now (the first may have started before the last write was applied).
async fn wait_compacted(cluster: &Cluster, topic: &str, what: &str) -> Vec<ReplicaStatus> {
    let before = replica_states(cluster, topic).await.expect("replicas");
    let target = before.iter().map(|r| r.compactions).max().unwrap_or(0) + 2;
    wait_replicas(cluster, topic, what, |r| r.compactions >= target).await
}

async fn produce(client: &Client, topic: &str, records: Vec<runnel_proto::v1::Record>) -> u64 {
    client.produce(topic, 0, records, Acks::All).await.expect("produce")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_time_and_size_deletes_old_records_on_every_replica() {
    let (cluster, client) = started().await;

    // Time: 50 records an hour old, then 50 new ones; retention.ms = 10 minutes.
    client.create_topic("by-time", 1, 3, configs(&[("retention.ms", "600000")])).await.expect("create");
    cluster.wait_leaders("by-time", READY).await;
    let old = now_ms() - 3_600_000;
    for b in 0..5 {
        produce(&client, "by-time", (0..10).map(|i| record_at("k", format!("old-{b}-{i}"), old + i)).collect()).await;
    }
    for b in 0..5 {
        produce(&client, "by-time", (0..10).map(|i| record("k", format!("new-{b}-{i}"))).collect()).await;
    }
    let rs = wait_replicas(&cluster, "by-time", "every replica of by-time trims to offset 50", |r| {
        r.log_start_offset == 50 && r.high_watermark == 100
    })
    .await;
    assert!(rs.iter().all(|r| r.retained_bytes > 0), "{rs:?}");
    let e = client.fetch("by-time", 0, 10, 1 << 20, 0).await.expect_err("below the log start");
    assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");
    assert_eq!(e.valid_range(), Some((50, 100)), "{e}");
    assert_eq!(client.list_offsets("by-time", 0, runnel_client::OffsetSpec::Earliest).await.unwrap(), 50);
    let rest = read_from(&client, "by-time", 0, 50).await;
    assert_eq!(rest.len(), 50);
    assert!(rest.iter().all(|r| r.value.starts_with(b"new-")));
    assert_eq!(rest.first().map(|r| r.offset), Some(50));

    // Size: 20 batches of 10 records of ~100 bytes, keep at most ~3 batches' worth.
    client
        .create_topic("by-size", 1, 3, configs(&[("retention.ms", "-1"), ("retention.bytes", "4000")]))
        .await
        .expect("create");
    cluster.wait_leaders("by-size", READY).await;
    for b in 0..20 {
        produce(
            &client,
            "by-size",
            (0..10).map(|i| record("k", format!("{b:03}-{i:02}-{}", "x".repeat(90)))).collect(),
        )
        .await;
    }
    let rs = wait_replicas(&cluster, "by-size", "every replica of by-size trims to <= 4000 bytes", |r| {
        r.high_watermark == 200 && r.log_start_offset > 0 && r.retained_bytes <= 4000
    })
    .await;
    let start = rs[0].log_start_offset;
    assert!(rs.iter().all(|r| r.log_start_offset == start), "replicas agree on the log start: {rs:?}");
    assert_eq!(start % 10, 0, "whole batches go: {start}");
    assert!(start >= 160, "at most ~4 batches kept: log start {start}");
    let e = client.fetch("by-size", 0, 0, 1 << 20, 0).await.expect_err("below the log start");
    assert_eq!(e.valid_range(), Some((start, 200)), "{e}");
    let rest = read_from(&client, "by-size", 0, start).await;
    assert_eq!(rest.len() as u64, 200 - start);
    assert!(rest.last().is_some_and(|r| r.value.starts_with(b"019-09")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_exactly_the_latest_value_per_key() {
    let (cluster, client) = started().await;
    client
        .create_topic("table", 1, 3, configs(&[("cleanup.policy", "compact"), ("delete.retention.ms", "600000")]))
        .await
        .expect("create");
    cluster.wait_leaders("table", READY).await;

    let e = client.produce("table", 0, vec![record("", "no key".into())], Acks::All).await.expect_err("keyless");
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    assert!(e.to_string().contains("no key"), "{e}");

    // 5 keys, 4 rounds of values, one batch per round; then a tombstone for k1.
    let mut last: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for round in 0..4 {
        let recs: Vec<_> = (0..5).map(|k| record(&format!("k{k}"), format!("v{round}-k{k}"))).collect();
        let base = produce(&client, "table", recs).await;
        for k in 0..5 {
            last.insert(format!("k{k}"), (base + k, format!("v{round}-k{k}")));
        }
    }
    let tomb = produce(&client, "table", vec![record("k1", String::new())]).await;
    last.insert("k1".into(), (tomb, String::new()));

    let rs = wait_compacted(&cluster, "table", "every replica compacted twice after the writes").await;
    let read = read_from(&client, "table", 0, 0).await;
    let got: BTreeMap<String, (u64, String)> = read
        .iter()
        .map(|r| {
            (String::from_utf8_lossy(&r.key).into_owned(), (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
        })
        .collect();
    assert_eq!(read.len(), 5, "one record per key: {read:?}");
    assert_eq!(got, last, "each key's last value at its original offset; the young tombstone stays");
    let sizes: Vec<u64> = rs.iter().map(|r| r.retained_bytes).collect();
    assert!(sizes.iter().all(|s| *s == sizes[0]), "every replica compacted its own copy alike: {sizes:?}");

    // A live change: tombstones now expire at once; k1 disappears.
    client.alter_topic_config("table", configs(&[("delete.retention.ms", "0")]), vec![]).await.expect("alter");
    wait_compacted(&cluster, "table", "every replica compacted twice after the change").await;
    let read = read_from(&client, "table", 0, 0).await;
    let keys: Vec<String> = read.iter().map(|r| String::from_utf8_lossy(&r.key).into_owned()).collect();
    assert_eq!(keys, vec!["k0", "k2", "k3", "k4"], "{read:?}");
    let next = produce(&client, "table", vec![record("k9", "after".into())]).await;
    assert_eq!(next, tomb + 1, "offsets continue where they were");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_by_timestamp_lands_on_the_first_record_at_or_after_it() {
    let (cluster, client) = started().await;
    client.create_topic("seek", 1, 3, Default::default()).await.expect("create");
    cluster.wait_leaders("seek", READY).await;
    let t0 = now_ms() - 60_000;
    // Offsets 0..30 with timestamps t0, t0+10, ..., t0+290, in three batches.
    for b in 0..3 {
        let recs = (0..10).map(|i| record_at("k", format!("v{}", b * 10 + i), t0 + (b * 10 + i) * 10)).collect();
        produce(&client, "seek", recs).await;
    }
    assert_eq!(client.offset_for_timestamp("seek", 0, t0 - 1000).await.unwrap(), (0, Some(t0)));
    assert_eq!(client.offset_for_timestamp("seek", 0, t0 + 155).await.unwrap(), (16, Some(t0 + 160)));
    assert_eq!(client.offset_for_timestamp("seek", 0, t0 + 200).await.unwrap(), (20, Some(t0 + 200)));
    assert_eq!(client.offset_for_timestamp("seek", 0, t0 + 290).await.unwrap(), (29, Some(t0 + 290)));
    assert_eq!(client.offset_for_timestamp("seek", 0, t0 + 291).await.unwrap(), (30, None), "none: the high watermark");
    let from = read_from(&client, "seek", 0, 16).await;
    assert_eq!(from.first().map(|r| (r.offset, r.timestamp_ms)), Some((16, t0 + 160)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_config_is_validated_and_a_change_takes_effect_live() {
    let (cluster, client) = started().await;
    client.create_topic("live", 1, 3, Default::default()).await.expect("create");
    cluster.wait_leaders("live", READY).await;

    let (cfg, overridden) = client.describe_topic_config("live").await.expect("describe");
    assert_eq!(cfg["retention.ms"], "604800000");
    assert_eq!(cfg["cleanup.policy"], "delete");
    assert!(overridden.is_empty(), "{overridden:?}");

    for (k, v) in
        [("retention.ms", "soon"), ("cleanup.policy", "shred"), ("min.insync.replicas", "0"), ("no.such.key", "1")]
    {
        let e = client.alter_topic_config("live", configs(&[(k, v)]), vec![]).await.expect_err("invalid");
        assert_eq!(e.code(), Some(ErrorCode::InvalidConfig), "{e}");
        assert!(e.to_string().contains(k) && e.to_string().contains(v), "names key and value: {e}");
    }
    let e = client.alter_topic_config("nope", configs(&[("retention.ms", "1")]), vec![]).await.expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}");
    let e = client
        .create_topic("bad", 1, 3, configs(&[("retention.bytes", "-7")]))
        .await
        .expect_err("invalid at creation too");
    assert!(e.to_string().contains("retention.bytes") && e.to_string().contains("-7"), "{e}");

    // Records an hour old survive the default 7 days...
    let old = now_ms() - 3_600_000;
    produce(&client, "live", (0..10).map(|i| record_at("k", format!("old-{i}"), old)).collect()).await;
    produce(&client, "live", vec![record("k", "new".into())]).await;
    let rs = replica_states(&cluster, "live").await.expect("replicas");
    assert!(rs.iter().all(|r| r.log_start_offset == 0), "{rs:?}");
    // ...until retention.ms drops to 10 minutes on the running topic.
    let after = client.alter_topic_config("live", configs(&[("retention.ms", "600000")]), vec![]).await.expect("alter");
    assert_eq!(after["retention.ms"], "600000");
    wait_replicas(&cluster, "live", "every replica of live trims to 10", |r| r.log_start_offset == 10).await;
    let (_, overridden) = client.describe_topic_config("live").await.expect("describe");
    assert_eq!(overridden, vec!["retention.ms".to_string()]);
    // Deleting the key restores the default.
    let after = client.alter_topic_config("live", BTreeMap::new(), vec!["retention.ms".into()]).await.expect("reset");
    assert_eq!(after["retention.ms"], "604800000");
}
