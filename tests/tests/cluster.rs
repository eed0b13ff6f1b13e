//! Three real nodes on 127.0.0.1: replication, restarts and leader failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_client::{partition_for_key, Client, ConsumedRecord};
use runnel_proto::v1::{Acks, Record};
use runnel_tests::{read_all, record, wait_for, Cluster};

/// (base offset, the values the batch carried) of an acknowledged produce.
type AckedBatch = (u64, Vec<String>);

const READY: Duration = Duration::from_secs(60);

async fn read_topic(client: &Client, topic: &str, partitions: u32) -> BTreeMap<u32, Vec<ConsumedRecord>> {
    let mut all = BTreeMap::new();
    for p in 0..partitions {
        all.insert(p, read_all(client, topic, p).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_round_trip_and_survive_restarts() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    client.create_topic("orders", 6, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("orders", READY).await;

    // 10,000 keyed records in batches of 200; keys repeat so each key's records must stay in order.
    const N: usize = 10_000;
    let mut sent_partition_of_key: HashMap<String, u32> = HashMap::new();
    for chunk in 0..N / 200 {
        let records: Vec<Record> = (chunk * 200..(chunk + 1) * 200)
            .map(|i| record(&format!("key-{}", i % 317), format!("value-{i:05}")))
            .collect();
        let produced = client.produce_keyed("orders", records, Acks::All).await.expect("produce");
        assert_eq!(produced.iter().map(|b| b.record_count as usize).sum::<usize>(), 200);
    }
    for k in 0..317 {
        let key = format!("key-{k}");
        sent_partition_of_key.insert(key.clone(), partition_for_key(key.as_bytes(), 6));
    }

    let check = |all: &BTreeMap<u32, Vec<ConsumedRecord>>| {
        let mut seen = vec![0u32; N];
        for (p, recs) in all {
            let mut last_index_per_key: HashMap<&[u8], usize> = HashMap::new();
            for (pos, r) in recs.iter().enumerate() {
                assert_eq!(r.offset, pos as u64, "partition {p}: offsets must be dense from 0");
                let key = std::str::from_utf8(&r.key).unwrap();
                assert_eq!(sent_partition_of_key[key], *p, "{key} read from partition {p}, sent elsewhere");
                let idx: usize = std::str::from_utf8(&r.value).unwrap()["value-".len()..].parse().unwrap();
                assert_eq!(format!("key-{}", idx % 317), key, "value {idx} came back with the wrong key");
                seen[idx] += 1;
                if let Some(prev) = last_index_per_key.insert(&r.key, idx) {
                    assert!(prev < idx, "partition {p}: {key} reordered ({prev} before {idx} was sent, read after)");
                }
            }
        }
        let missing: Vec<usize> = (0..N).filter(|i| seen[*i] == 0).collect();
        let dup: Vec<usize> = (0..N).filter(|i| seen[*i] > 1).collect();
        assert!(missing.is_empty(), "{} records missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
        assert!(dup.is_empty(), "{} records duplicated, e.g. {:?}", dup.len(), &dup[..dup.len().min(10)]);
    };
    let before = read_topic(&client, "orders", 6).await;
    check(&before);

    // Clean restart of every node: everything is still there.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_ready(READY).await;
    cluster.wait_leaders("orders", READY).await;
    let after = read_topic(&client, "orders", 6).await;
    assert_eq!(after, before, "data changed across a clean restart of all nodes");

    // Crash every node at once (kill -9): acknowledged data was fsynced on a quorum, so it survives.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_ready(READY).await;
    cluster.wait_leaders("orders", READY).await;
    let after_crash = read_topic(&client, "orders", 6).await;
    assert_eq!(after_crash, before, "data changed across kill -9 of all nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_under_acks_all_load_loses_nothing() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    client.create_topic("events", 3, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("events", READY).await;

    // Acknowledged batches: base offset -> the 10 values it carried.
    let acked: Arc<Mutex<Vec<AckedBatch>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failures = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let values: Vec<String> = (0..10).map(|j| format!("v-{i}-{j}")).collect();
                let records = values.iter().map(|v| record("", v.clone())).collect();
                match client.produce("events", 0, records, Acks::All).await {
                    Ok(base) => acked.lock().unwrap().push((base, values)),
                    Err(_) => failures += 1,
                }
                i += 1;
            }
            failures
        })
    };

    let acked_count = || acked.lock().unwrap().len();
    wait_for(READY, "300 acknowledged batches before the kill", || async { (acked_count() >= 300).then_some(()) })
        .await;
    let meta = Cluster::metadata_from(&cluster.nodes[0].addr).await.expect("metadata");
    let leader = meta.topics.iter().find(|t| t.name == "events").unwrap().partitions[0].leader.expect("leader");
    cluster.kill9(leader);
    let at_kill = acked_count();
    wait_for(READY, "writes resume through another leader (300 more acks)", || async {
        (acked_count() >= at_kill + 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = producer.await.unwrap();

    let survivor = cluster.nodes.iter().find(|n| n.id != leader).unwrap().addr.clone();
    let client = Client::connect(&[survivor]).await.expect("connect");
    let log = read_all(&client, "events", 0).await;
    let by_offset: HashMap<u64, String> =
        log.iter().map(|r| (r.offset, String::from_utf8(r.value.to_vec()).unwrap())).collect();
    let acked = acked.lock().unwrap().clone();
    for (base, values) in &acked {
        for (j, v) in values.iter().enumerate() {
            let at = base + j as u64;
            assert_eq!(by_offset.get(&at), Some(v), "acknowledged record {v} missing at offset {at}");
        }
    }
    eprintln!("{} batches acknowledged, {failures} produce calls failed around the kill of node {leader}", acked.len());

    // The killed node comes back and catches up with the leader's high watermark.
    cluster.restart(leader);
    let addr = cluster.nodes[cluster.index_of(leader)].addr.clone();
    let leader_hw = log.len() as u64;
    wait_for(READY, "the restarted node's replica catches up", || {
        let addr = addr.clone();
        async move {
            let reps = Cluster::replicas_on(&addr).await?;
            let r = reps.iter().find(|r| r.topic == "events" && r.partition == 0)?;
            (r.high_watermark >= leader_hw).then_some(())
        }
    })
    .await;
}
