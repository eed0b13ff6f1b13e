//! Invariant 6 with real processes: an idempotent producer's retries never duplicate a record,
//! across a leader kill -9 and a whole-cluster restart, and the broker's sequence checks answer
//! with the original offsets, or refuse gaps and fenced epochs.

use std::collections::HashMap;
use std::time::Duration;

use runnel_client::{encode_batch_with, Acks, Client, Compression, ErrorCode, Producer, ProducerConfig, ProducerStamp};
use runnel_tests::{partitions_of, read_all, record, wait_for, Cluster};

const READY: Duration = Duration::from_secs(60);

/// Retries through a whole failover; every 4th produce answer is "lost", so the client resends
/// batches that did commit.
async fn lossy_client(cluster: &Cluster) -> Client {
    let mut cfg = runnel_client::ClientConfig::default();
    cfg.retry.max_elapsed = Duration::from_secs(30);
    cfg.retry.max_attempts = 300;
    cfg.drop_every_nth_produce_answer = 4;
    Client::connect_with(&cluster.addrs(), cfg).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_under_a_leader_kill_leave_every_record_exactly_once() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = lossy_client(&cluster).await;
    client.create_topic("idem", 1, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("idem", READY).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_size_bytes: 2048,
            linger: Duration::from_millis(2),
            compression: Compression::Lz4,
            ..ProducerConfig::default()
        },
    )
    .await
    .expect("producer");
    assert!(producer.producer_id().is_some_and(|(id, epoch)| id > 0 && epoch == 0));

    const N: usize = 4000;
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut futures = Vec::with_capacity(N);
            for i in 0..N {
                let f = producer.send_to("idem", 0, record("", format!("v{i}"))).await.expect("send");
                futures.push(f);
                if i % 50 == 0 {
                    // Pace the sender so the kill lands mid-stream.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let mut acked = Vec::with_capacity(N);
            for (i, f) in futures.into_iter().enumerate() {
                let m = f.await.unwrap_or_else(|e| panic!("record v{i} failed: {e}"));
                acked.push(m.offset);
            }
            acked
        })
    };

    // Kill the leader once some records are in.
    let addr = cluster.nodes[0].addr.clone();
    wait_for(READY, "1000 records committed before the kill", || {
        let client = client.clone();
        async move {
            let hw = client.list_offsets("idem", 0, runnel_client::OffsetSpec::Latest).await.ok()?;
            (hw >= 1000).then_some(())
        }
    })
    .await;
    let leader = partitions_of(&addr, "idem").await.expect("metadata")[0].leader.expect("leader");
    cluster.kill9(leader);
    let acked = tokio::time::timeout(Duration::from_secs(120), sender).await.expect("sends finish").expect("sender");
    cluster.restart(leader);
    cluster.wait_ready(READY).await;

    let log = read_all(&client, "idem", 0).await;
    assert_eq!(log.len(), N, "exactly one record per send, no duplicates and no gaps");
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, r) in log.iter().enumerate() {
        assert_eq!(r.offset, i as u64, "offsets are contiguous from 0");
        let v = String::from_utf8(r.value.to_vec()).expect("utf8");
        assert!(seen.insert(v.clone(), r.offset).is_none(), "{v} is stored twice");
    }
    for (i, offset) in acked.iter().enumerate() {
        // Acknowledged at the offset it is stored at, and in the order it was sent (invariant 3).
        assert_eq!(seen.get(&format!("v{i}")), Some(offset), "v{i} acknowledged at {offset}");
        assert_eq!(*offset, i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_checked_after_a_full_restart() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let mut cfg = runnel_client::ClientConfig::default();
    cfg.retry.max_elapsed = Duration::from_secs(30);
    cfg.retry.max_attempts = 300;
    let client = Client::connect_with(&cluster.addrs(), cfg.clone()).await.expect("connect");
    client.create_topic("seq", 1, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("seq", READY).await;
    let (id, epoch) = client.init_producer_id(None).await.expect("producer id");
    let (id2, _) = client.init_producer_id(None).await.expect("second producer id");
    assert_ne!(id, id2, "every producer gets its own id");
    let batch = |seq: u64, n: usize| {
        let records = (0..n).map(|i| record("", format!("s{}", seq + i as u64))).collect();
        (encode_batch_with(records, Compression::Zstd), ProducerStamp { producer_id: id, epoch, base_sequence: seq })
    };

    let (b0, s0) = batch(0, 3);
    let first = client.produce_batch("seq", 0, b0.clone(), Acks::All, Some(s0)).await.expect("first batch");
    assert!(!first.duplicate);
    let (b1, s1) = batch(3, 2);
    let second = client.produce_batch("seq", 0, b1, Acks::All, Some(s1)).await.expect("second batch");
    assert_eq!(second.base_offset, first.base_offset + 3);

    // Every node restarts: the producer state comes back from disk on every replica.
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    for id in &ids {
        cluster.stop(*id);
    }
    for id in &ids {
        cluster.restart(*id);
    }
    cluster.wait_ready(READY).await;
    cluster.wait_leaders("seq", READY).await;
    let client = Client::connect_with(&cluster.addrs(), cfg).await.expect("reconnect");

    let retry = client.produce_batch("seq", 0, b0, Acks::All, Some(s0)).await.expect("retried batch");
    assert!(retry.duplicate, "a retry of a committed batch is recognised after a restart");
    assert_eq!(retry.base_offset, first.base_offset);

    let (gap, sgap) = batch(9, 1);
    let e = client.produce_batch("seq", 0, gap, Acks::All, Some(sgap)).await.expect_err("a gap");
    assert_eq!(e.code(), Some(ErrorCode::OutOfOrderSequence), "{e}");
    assert!(e.to_string().contains("next expected is 5"), "{e}");

    // A new epoch fences the old one.
    let (same, next_epoch) = client.init_producer_id(Some((id, epoch))).await.expect("epoch bump");
    assert_eq!((same, next_epoch), (id, epoch + 1));
    let fresh = encode_batch_with(vec![record("", "e1".into())], Compression::None);
    client
        .produce_batch(
            "seq",
            0,
            fresh,
            Acks::All,
            Some(ProducerStamp { producer_id: id, epoch: next_epoch, base_sequence: 0 }),
        )
        .await
        .expect("new epoch starts at 0");
    let (b5, s5) = batch(5, 1);
    let e = client.produce_batch("seq", 0, b5, Acks::All, Some(s5)).await.expect_err("old epoch");
    assert_eq!(e.code(), Some(ErrorCode::InvalidProducerEpoch), "{e}");

    let log = read_all(&client, "seq", 0).await;
    let values: Vec<String> = log.iter().map(|r| String::from_utf8(r.value.to_vec()).expect("utf8")).collect();
    assert_eq!(values, vec!["s0", "s1", "s2", "s3", "s4", "e1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_for_good_does_not_stop_the_producer() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    // Gives up after 3 s: a batch sent while the partition has no quorum fails for good.
    let mut cfg = runnel_client::ClientConfig::default();
    cfg.retry.max_elapsed = Duration::from_secs(3);
    let client = Client::connect_with(&cluster.addrs(), cfg).await.expect("connect");
    client.create_topic("epoch", 1, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("epoch", READY).await;
    let producer =
        Producer::new(client.clone(), ProducerConfig { linger: Duration::from_millis(1), ..ProducerConfig::default() })
            .await
            .expect("producer");
    let send = |v: &str| {
        let (producer, v) = (producer.clone(), v.to_string());
        async move { producer.send_to("epoch", 0, record("", v)).await.expect("buffered").await }
    };
    assert_eq!(send("before").await.expect("first record").offset, 0);

    // Both followers die: nothing can commit, so this batch fails once the retries run out.
    let addr = cluster.nodes[0].addr.clone();
    let leader = partitions_of(&addr, "epoch").await.expect("metadata")[0].leader.expect("leader");
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    for f in &followers {
        cluster.kill9(*f);
    }
    let lost = send("unknown").await;
    assert!(lost.is_err(), "no quorum, yet the batch was acknowledged: {lost:?}");

    // The followers come back; the producer goes on (under a new epoch on this partition).
    for f in &followers {
        cluster.restart(*f);
    }
    cluster.wait_ready(READY).await;
    wait_for(READY, "the partition is fully replicated again", || {
        let client = client.clone();
        async move { client.cluster_health().await.ok().filter(|h| h.healthy).map(|_| ()) }
    })
    .await;
    let after = send("after").await.expect("a send after the failure succeeds");
    let again = send("after-2").await.expect("and the next one");
    assert_eq!(again.offset, after.offset + 1);

    // Whether "unknown" was written is unknown (as in Kafka); everything else is there once.
    let values: Vec<String> = read_all(&client, "epoch", 0)
        .await
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).expect("utf8"))
        .collect();
    let without_unknown: Vec<&str> = values.iter().map(String::as_str).filter(|v| *v != "unknown").collect();
    assert_eq!(without_unknown, ["before", "after", "after-2"], "log: {values:?}");
    assert!(values.len() <= 4, "log: {values:?}");
}
