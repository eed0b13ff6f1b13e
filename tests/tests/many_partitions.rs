//! Thousands of partitions on a 3-node cluster of real processes (docs/adr/0012): their Raft
//! groups are quiescent, a node-level failure detector replaces per-group heartbeats. The cluster
//! must take a 2,000-partition topic in stride, and when a node that leads hundreds of them is
//! killed, every one of those partitions must get a new leader and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel_client::Client;
use runnel_proto::v1::ClusterHealthRequest;
use runnel_tests::{partitions_of, wait_for, Cluster, Load};

/// Partitions of the idle topic (RF 3: 6,000 replicas on the three nodes).
const IDLE_PARTITIONS: u32 = 2_000;
/// Generous: CI machines are small and other tests may run beside this one.
const SETTLE: Duration = Duration::from_secs(180);

fn running_addr(cluster: &Cluster) -> String {
    cluster.nodes.iter().find(|n| n.is_running()).expect("a running node").addr.clone()
}

async fn wait_healthy(cluster: &Cluster, timeout: Duration, what: &str) {
    let addr = running_addr(cluster);
    wait_for(timeout, what, || {
        let addr = addr.clone();
        async move {
            let mut c = Cluster::client_for(&addr).await?;
            let h = c.cluster_health(ClusterHealthRequest {}).await.ok()?.into_inner();
            (h.healthy && h.partitions >= IDLE_PARTITIONS).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_partitions_become_healthy_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let mut cfg = runnel_client::ClientConfig::default();
    cfg.retry.max_elapsed = Duration::from_secs(60);
    cfg.retry.max_attempts = 600;
    let client = Client::connect_with(&cluster.addrs(), cfg).await.expect("connect");

    let created = Instant::now();
    client.create_topic("idle", IDLE_PARTITIONS, 3, Default::default()).await.expect("create the idle topic");
    wait_healthy(&cluster, SETTLE, "2,000 partitions healthy (a live leader each, fully replicated)").await;
    eprintln!("{IDLE_PARTITIONS} partitions healthy {:?} after the create call", created.elapsed());

    // A written topic beside them, and one write to a sample of the idle partitions (the first
    // write to a quiescent leader renews its lease first).
    client.create_topic("events", 3, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("events", SETTLE).await;
    let mut load = Load::start(&client, "events", 3);
    load.wait_progress(20, SETTLE, "20 acknowledged batches per partition").await;
    let mut idle_acked: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    for p in (0..IDLE_PARTITIONS).step_by(97) {
        let value = format!("idle-{p}-before");
        let base = client
            .produce("idle", p, vec![runnel_tests::record("", value.clone())], runnel_proto::v1::Acks::All)
            .await
            .unwrap_or_else(|e| panic!("write to idle/{p}: {e}"));
        idle_acked.insert(p, (base, value));
    }

    // kill -9 the node that leads the most idle partitions (not the controller, so this measures
    // partition failover alone; the controller's own failover is tested in failover.rs).
    let addr = running_addr(&cluster);
    let meta = Cluster::metadata_from(&addr).await.expect("metadata");
    let controller = meta.controller_id.expect("a controller");
    let before = partitions_of(&addr, "idle").await.expect("idle partitions");
    let mut led: BTreeMap<u64, Vec<(u32, u64)>> = BTreeMap::new();
    for p in &before {
        if let Some(l) = p.leader {
            led.entry(l).or_default().push((p.partition, p.leader_epoch));
        }
    }
    let (victim, victim_led) = led
        .iter()
        .filter(|(n, _)| **n != controller)
        .max_by_key(|(_, v)| v.len())
        .map(|(n, v)| (*n, v.clone()))
        .expect("a non-controller node leads idle partitions");
    assert!(victim_led.len() >= 100, "node {victim} leads only {} partitions; placement is uneven", victim_led.len());
    cluster.kill9(victim);
    let killed = Instant::now();

    // Every partition it led gets a live leader in a newer epoch.
    let survivor = running_addr(&cluster);
    let deadline = Instant::now() + SETTLE;
    loop {
        let unled: Vec<u32> = match partitions_of(&survivor, "idle").await {
            Some(now) => victim_led
                .iter()
                .filter(|(p, epoch)| {
                    let q = &now[*p as usize];
                    !(q.leader.is_some_and(|l| l != victim) && q.leader_epoch > *epoch)
                })
                .map(|(p, _)| *p)
                .collect(),
            None => victim_led.iter().map(|(p, _)| *p).collect(),
        };
        if unled.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // Say what each surviving replica's Raft thinks of the partitions left behind: the
            // metadata only mirrors what leaders report.
            let mut why = String::new();
            for n in cluster.nodes.iter().filter(|n| n.is_running()) {
                for r in Cluster::replicas_on(&n.addr).await.unwrap_or_default() {
                    if r.topic == "idle" && unled.iter().take(5).any(|p| *p == r.partition) {
                        why += &format!(
                            "\n  node {}: idle/{} role {} term {} leader {:?} last log {} committed {}",
                            n.id, r.partition, r.role, r.term, r.leader, r.last_log_index, r.committed_index
                        );
                    }
                }
            }
            panic!(
                "after {SETTLE:?}, {} of the {} partitions node {victim} led have no new leader in the metadata ({:?}…); the survivors' replicas:{why}",
                unled.len(),
                victim_led.len(),
                &unled[..unled.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("node {victim} led {} partitions: all re-led {:?} after the kill", victim_led.len(), killed.elapsed());
    load.wait_progress(20, SETTLE, "writes continue on every partition after the kill").await;

    // The idle partitions take writes again, and nothing acknowledged is lost.
    for (p, (base, value)) in &idle_acked {
        let after = format!("idle-{p}-after");
        let at = client
            .produce("idle", *p, vec![runnel_tests::record("", after.clone())], runnel_proto::v1::Acks::All)
            .await
            .unwrap_or_else(|e| panic!("write to idle/{p} after the kill: {e}"));
        assert!(at > *base, "idle/{p}: the write after the kill got offset {at}, not after {base}");
        let values = runnel_tests::offsets_and_values(&client, "idle", *p).await;
        assert_eq!(values, vec![(*base, value.clone()), (at, after)], "idle/{p}: acknowledged records");
    }
    load.stop().await;
    let read = load.verify(&client).await;
    eprintln!("{} batches acknowledged on 'events', {read} records read back", load.acked_batches());

    // The killed node returns and the cluster is whole again.
    cluster.restart(victim);
    wait_healthy(&cluster, SETTLE, "healthy again after the node returned").await;
}
