//! Failover, self-healing and online cluster changes with real processes: leader and controller
//! crashes under load, re-replication after the replacement timeout, rolling restarts, adding a
//! node with a rebalance, and decommissioning.

use std::time::{Duration, Instant};

use runnel_client::Client;
use runnel_proto::v1::{ClusterHealthRequest, DecommissionNodeRequest, PartitionInfo, RebalanceRequest};
use runnel_tests::{partitions_of, wait_for, Cluster, Load};

const READY: Duration = Duration::from_secs(60);

/// A client that keeps retrying through a failover (the default gives up sooner).
async fn patient_client(cluster: &Cluster) -> Client {
    let mut cfg = runnel_tests::client_config();
    cfg.retry.max_elapsed = Duration::from_secs(30);
    cfg.retry.max_attempts = 300;
    Client::connect_with(&cluster.addrs(), cfg).await.expect("connect")
}

fn running_addr(cluster: &Cluster) -> String {
    cluster.nodes.iter().find(|n| n.is_running()).expect("a running node").addr.clone()
}

/// Waits until `check` holds for the topic's partitions as a running node's metadata has them.
async fn wait_partitions<F>(cluster: &Cluster, topic: &str, what: &str, timeout: Duration, check: F)
where
    F: Fn(&[PartitionInfo]) -> bool,
{
    let addr = running_addr(cluster);
    wait_for(timeout, what, || {
        let addr = addr.clone();
        let ps = async move { partitions_of(&addr, topic).await };
        let check = &check;
        async move { ps.await.filter(|ps| check(ps)).map(|_| ()) }
    })
    .await;
}

/// Waits until the answering node reports the cluster healthy: every partition led by a live
/// broker and fully replicated, no reassignment in progress.
async fn wait_healthy(cluster: &Cluster, timeout: Duration) {
    let addr = running_addr(cluster);
    wait_for(timeout, "cluster health reports healthy", || {
        let addr = addr.clone();
        async move {
            let mut c = Cluster::client_for(&addr).await?;
            let h = c.cluster_health(ClusterHealthRequest {}).await.ok()?.into_inner();
            h.healthy.then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_then_controller_killed_under_load_loses_nothing() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = patient_client(&cluster).await;
    client.create_topic("events", 3, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("events", READY).await;
    let mut load = Load::start(&client, "events", 3);
    load.wait_progress(50, READY, "50 acknowledged batches per partition").await;

    // 1. kill -9 the leader of partition 0.
    let before = partitions_of(&running_addr(&cluster), "events").await.expect("metadata");
    let (leader, epoch) = (before[0].leader.expect("leader"), before[0].leader_epoch);
    cluster.kill9(leader);
    let killed_at = Instant::now();
    load.wait_progress(50, READY, "writes resume on every partition after the leader's kill").await;
    wait_partitions(&cluster, "events", "metadata names a new leader for partition 0", READY, |ps| {
        ps[0].leader.is_some_and(|l| l != leader) && ps[0].leader_epoch > epoch
    })
    .await;
    eprintln!("partition leader {leader} killed: new leader in the metadata after {:?}", killed_at.elapsed());
    cluster.restart(leader);
    cluster.wait_ready(READY).await;

    // 2. kill -9 the controller.
    let meta = Cluster::metadata_from(&running_addr(&cluster)).await.expect("metadata");
    let controller = meta.controller_id.expect("controller");
    cluster.kill9(controller);
    let killed_at = Instant::now();
    let survivor = cluster.nodes.iter().find(|n| n.is_running()).expect("survivor").addr.clone();
    wait_for(READY, "a new controller is elected", || {
        let survivor = survivor.clone();
        async move {
            let m = Cluster::metadata_from(&survivor).await?;
            m.controller_id.filter(|c| *c != controller).map(|_| ())
        }
    })
    .await;
    eprintln!("controller {controller} killed: new controller after {:?}", killed_at.elapsed());
    load.wait_progress(50, READY, "writes resume on every partition after the controller's kill").await;
    // Committed metadata survived: the topic is still there, and every partition has a live leader.
    wait_partitions(&cluster, "events", "every partition has a leader other than the dead node", READY, |ps| {
        ps.len() == 3 && ps.iter().all(|p| p.leader.is_some_and(|l| l != controller))
    })
    .await;
    cluster.restart(controller);
    cluster.wait_ready(READY).await;
    load.wait_progress(20, READY, "writes continue with every node back").await;
    load.stop().await;

    let read = load.verify(&client).await;
    let failures = load.failures.lock().unwrap().clone();
    eprintln!(
        "{} batches acknowledged, {read} records read back, {} failed calls",
        load.acked_batches(),
        failures.len()
    );
    assert!(failures.is_empty(), "produce calls failed despite retries: {failures:?}");
    wait_healthy(&cluster, READY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_replaced_and_the_replication_factor_restored() {
    // Four nodes (three metadata voters); a broker unavailable for 5 s has its replicas moved.
    let mut cluster = Cluster::start_with(
        4,
        3,
        &[("RUNNEL_BROKER_SESSION_TIMEOUT_MS", "2000"), ("RUNNEL_BROKER_REPLACEMENT_TIMEOUT_MS", "5000")],
    );
    cluster.wait_ready(READY).await;
    let client = patient_client(&cluster).await;
    client.create_topic("orders", 4, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("orders", READY).await;
    let mut load = Load::start(&client, "orders", 4);
    load.wait_progress(30, READY, "30 acknowledged batches per partition").await;

    // A voter that hosts replicas (with 4 partitions x 3 replicas on 4 brokers, every one does).
    let victim = 2;
    let before = partitions_of(&running_addr(&cluster), "orders").await.expect("metadata");
    assert!(before.iter().any(|p| p.replicas.contains(&victim)), "node {victim} hosts no replica: {before:?}");
    cluster.kill9(victim);
    wait_partitions(&cluster, "orders", "RF=3 restored without the dead node", Duration::from_secs(90), |ps| {
        ps.iter().all(|p| p.replicas.len() == 3 && !p.replicas.contains(&victim) && p.target_replicas.is_empty())
    })
    .await;
    wait_healthy(&cluster, READY).await;
    load.wait_progress(20, READY, "writes continue after the move").await;
    load.stop().await;
    load.verify(&client).await;

    // Every new replica holds the data: on each live node, each replica reaches its leader's high
    // watermark.
    let after = partitions_of(&running_addr(&cluster), "orders").await.expect("metadata");
    for p in &after {
        let leader = p.leader.expect("leader");
        let leader_addr = cluster.nodes[cluster.index_of(leader)].addr.clone();
        let hw = Cluster::replicas_on(&leader_addr)
            .await
            .and_then(|rs| rs.into_iter().find(|r| r.topic == "orders" && r.partition == p.partition))
            .expect("leader replica")
            .high_watermark;
        for r in &p.replicas {
            let addr = cluster.nodes[cluster.index_of(*r)].addr.clone();
            let partition = p.partition;
            wait_for(READY, &format!("node {r}'s replica of orders/{partition} reaches {hw}"), || {
                let addr = addr.clone();
                async move {
                    let rs = Cluster::replicas_on(&addr).await?;
                    let x = rs.into_iter().find(|x| x.topic == "orders" && x.partition == partition)?;
                    (x.high_watermark >= hw).then_some(())
                }
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_keeps_writes_available() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = patient_client(&cluster).await;
    client.create_topic("rolling", 3, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("rolling", READY).await;
    let mut load = Load::start(&client, "rolling", 3);
    load.wait_progress(30, READY, "30 acknowledged batches per partition").await;

    for id in 1..=3 {
        // SIGTERM: the node hands its leaderships away first, then stops.
        cluster.stop(id);
        load.wait_progress(20, READY, &format!("writes continue while node {id} is down")).await;
        cluster.restart(id);
        cluster.wait_ready(READY).await;
        wait_healthy(&cluster, READY).await;
        load.wait_progress(20, READY, &format!("writes continue after node {id} is back")).await;
    }
    load.stop().await;
    let read = load.verify(&client).await;
    let failures = load.failures.lock().unwrap().clone();
    eprintln!("{} batches acknowledged, {read} records read back", load.acked_batches());
    assert!(failures.is_empty(), "writes were unavailable during the rolling restart: {failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_takes_replicas_and_leaders_and_a_decommissioned_one_ends_empty() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = patient_client(&cluster).await;
    client.create_topic("grow", 6, 3, Default::default()).await.expect("create topic");
    cluster.wait_leaders("grow", READY).await;
    let mut load = Load::start(&client, "grow", 6);
    load.wait_progress(10, READY, "10 acknowledged batches per partition").await;

    let new = cluster.add_node();
    cluster.wait_ready(READY).await;
    let addr = running_addr(&cluster);
    let mut admin = Cluster::client_for(&addr).await.expect("admin client");
    let plan = admin.rebalance(RebalanceRequest { dry_run: false }).await.expect("rebalance").into_inner();
    assert!(plan.error.is_none(), "rebalance: {:?}", plan.error);
    assert!(plan.moves.iter().any(|m| m.to.contains(&new)), "the plan gives node {new} nothing: {:?}", plan.moves);
    wait_partitions(&cluster, "grow", &format!("node {new} hosts replicas and leads a partition"), READY, |ps| {
        ps.iter().all(|p| p.target_replicas.is_empty())
            && ps.iter().filter(|p| p.replicas.contains(&new)).count() >= 4
            && ps.iter().any(|p| p.leader == Some(new))
    })
    .await;

    // Decommission node 1: every replica moves off it, and it leads nothing.
    let victim = 1;
    let r = admin
        .decommission_node(DecommissionNodeRequest { node_id: victim, cancel: false })
        .await
        .expect("decommission")
        .into_inner();
    assert!(r.error.is_none(), "decommission: {:?}", r.error);
    wait_partitions(&cluster, "grow", &format!("node {victim} hosts no replica"), READY, |ps| {
        ps.iter().all(|p| !p.replicas.contains(&victim) && p.target_replicas.is_empty() && p.leader != Some(victim))
    })
    .await;
    let m = Cluster::metadata_from(&addr).await.expect("metadata");
    let b = m.brokers.iter().find(|b| b.id == victim).expect("broker");
    assert_eq!((b.replica_count, b.leader_count, b.decommissioning), (0, 0, true), "{b:?}");
    // And it has stopped its replicas.
    wait_for(READY, "the decommissioned node stops its replicas", || {
        let addr = cluster.nodes[0].addr.clone();
        async move { Cluster::replicas_on(&addr).await.filter(|r| r.is_empty()).map(|_| ()) }
    })
    .await;
    load.wait_progress(10, READY, "writes continue after the moves").await;
    load.stop().await;
    load.verify(&client).await;
    wait_healthy(&cluster, READY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_metadata_voter_is_replaced_by_another_node() {
    // Voters 1, 2, 3; node 4 follows the metadata as a learner.
    let mut cluster = Cluster::start_with(4, 3, &[]);
    cluster.wait_ready(READY).await;
    let client = patient_client(&cluster).await;
    client.create_topic("before", 1, 3, Default::default()).await.expect("create topic");

    // Voter 3 dies for good; node 4 takes its place.
    cluster.kill9(3);
    let voters = wait_for(READY, "voter 3 replaced by node 4", || {
        let client = client.clone();
        async move { client.replace_voter(3, 4).await.ok() }
    })
    .await;
    assert_eq!(voters, vec![1, 2, 4]);
    // Health is answered from whichever node answers first, as that node sees the metadata group:
    // a follower may still be between the joint configuration ([1, 2, 3, 4]) and the final one.
    wait_for(READY, "cluster health reports voters [1, 2, 4]", || {
        let client = client.clone();
        async move { (client.cluster_health().await.ok()?.metadata_voters == [1, 2, 4]).then_some(()) }
    })
    .await;

    // With the new voter set, losing voter 2 as well still leaves a quorum (1 and 4): the
    // controller keeps committing metadata, and nothing committed before is lost.
    cluster.kill9(2);
    wait_for(READY, "a topic can still be created with voters 1 and 4 alive", || {
        let client = client.clone();
        async move {
            match client.create_topic("after", 1, 1, Default::default()).await {
                Ok(_) => Some(()),
                Err(e) if e.code() == Some(runnel_types::ErrorCode::TopicAlreadyExists) => Some(()),
                Err(_) => None,
            }
        }
    })
    .await;
    // Node 4, now a voter, has every committed topic (its copy may trail the controller briefly).
    let addr = cluster.nodes[3].addr.clone();
    wait_for(READY, "node 4's metadata has the topics created before and after the replacement", || {
        let addr = addr.clone();
        async move {
            let m = Cluster::metadata_from(&addr).await?;
            let names: Vec<&str> = m.topics.iter().map(|t| t.name.as_str()).collect();
            (names.contains(&"before") && names.contains(&"after")).then_some(())
        }
    })
    .await;
}
