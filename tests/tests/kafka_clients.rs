//! The Python Kafka clients (tests/kafka/clients.py, in the virtualenv scripts/setup.sh makes:
//! confluent-kafka on librdkafka, kafka-python, aiokafka) against real nodes. This file owns the
//! cluster: it kills and restarts nodes while the clients run and checks the outcome through
//! Runnel's own SDK.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use runnel_client::Client;
use runnel_tests::{client_config, partitions_of, read_all, wait_for, Cluster};

const READY: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    let venv = std::env::var("RUNNEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/runnel/venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} is missing: scripts/setup.sh creates the Kafka clients' virtualenv", py.display());
    py
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/clients.py")
}

fn clients(scenario: &str, args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.arg(script()).arg(scenario).args(args).stdin(Stdio::null());
    c
}

fn run(scenario: &str, args: &[&str]) -> Output {
    let out = clients(scenario, args).output().expect("run python");
    assert!(
        out.status.success(),
        "{scenario} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn connect(cluster: &Cluster) -> Client {
    Client::connect_with(&cluster.addrs(), client_config()).await.expect("connect")
}

/// confluent-kafka's idempotent producer (acks=all) while the partition's leader is killed with
/// -9: every acknowledged record is in the partition exactly once, in the order it was sent, at
/// the offset the producer was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_librdkafka_producer_survives_a_leader_kill_exactly_once() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("idem", 1, 3, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("idem", READY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, ready) = (dir.path().join("acked.jsonl"), dir.path().join("ready"));
    let producer: Child = clients(
        "idempotent-produce",
        &[
            "--bootstrap",
            &cluster.kafka_bootstrap(),
            "--topic",
            "idem",
            "--count",
            "20000",
            "--out",
            out.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn producer");
    wait_for(READY, "the producer to be a quarter through", || async { ready.exists().then_some(()) }).await;
    let leader = partitions_of(&cluster.addrs()[0], "idem").await.and_then(|p| p[0].leader).expect("leader");
    cluster.kill9(leader);
    let status = tokio::task::spawn_blocking(move || producer.wait_with_output()).await.unwrap().expect("producer");
    assert!(
        status.status.success(),
        "producer failed:\n{}\n{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    cluster.restart(leader);

    let acked: Vec<(String, u64)> = std::fs::read_to_string(&out)
        .expect("acked records")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["value"].as_str().unwrap().to_string(), v["offset"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(acked.len(), 20_000, "every record acknowledged");
    let records = read_all(&client, "idem", 0).await;
    let stored: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    let expected: Vec<String> = (0..20_000).map(|i| format!("v{i}")).collect();
    assert_eq!(stored, expected, "exactly once, in order");
    let at: HashMap<&str, u64> = records.iter().map(|r| (std::str::from_utf8(&r.value).unwrap(), r.offset)).collect();
    for (value, offset) in &acked {
        assert_eq!(at[value.as_str()], *offset, "{value} acknowledged at {offset}");
    }
}

/// gzip, snappy, lz4 and zstd batches from librdkafka are stored and read back intact, headers
/// included, by librdkafka and by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kafka_codec_round_trips() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("codecs", 1, 1, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("codecs", READY).await;
    run("codecs", &["--bootstrap", &cluster.kafka_bootstrap(), "--topic", "codecs"]);
    let records = read_all(&client, "codecs", 0).await;
    assert_eq!(records.len(), 5 * 200);
    for (i, r) in records.iter().enumerate() {
        let codec = ["gzip", "snappy", "lz4", "zstd", "none"][i / 200];
        assert_eq!(r.key, codec.as_bytes());
        assert_eq!(r.value, format!("{codec}-{}-{}", i % 200, "abc".repeat(i % 200 % 30)).as_bytes());
    }
}

/// A librdkafka group consumer: manual commits, a rebalance as a member joins and leaves,
/// committed(), offsets_for_times; the SDK sees the same committed offsets for the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_group_consumer_commits_what_the_sdk_sees() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("grouped", 3, 1, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("grouped", READY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("committed.json");
    run(
        "group",
        &[
            "--bootstrap",
            &cluster.kafka_bootstrap(),
            "--topic",
            "grouped",
            "--group",
            "rdkafka-group",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let committed: BTreeMap<String, u64> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let seen = client.committed_offsets("rdkafka-group", &[]).await.expect("committed offsets");
    let seen: BTreeMap<String, u64> = seen.into_iter().map(|((_, p), o)| (p.to_string(), o)).collect();
    assert_eq!(seen, committed, "the SDK sees what librdkafka committed");
}

/// kafka-python with its defaults and aiokafka: produce, consume in a group, commit, resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_and_aiokafka_produce_consume_and_commit() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    for t in ["kp", "aio"] {
        client.create_topic(t, 1, 1, BTreeMap::new()).await.expect("create topic");
        cluster.wait_leaders(t, READY).await;
    }
    let bootstrap = cluster.kafka_bootstrap();
    run("kafka-python", &["--bootstrap", &bootstrap, "--topic", "kp", "--group", "kp-group"]);
    run("aiokafka", &["--bootstrap", &bootstrap, "--topic", "aio", "--group", "aio-group"]);
    let kp = client.committed_offsets("kp-group", &[]).await.expect("kp offsets");
    assert_eq!(kp.get(&("kp".to_string(), 0)), Some(&300), "{kp:?}");
    let aio = client.committed_offsets("aio-group", &[]).await.expect("aio offsets");
    assert_eq!(aio.get(&("aio".to_string(), 0)), Some(&200), "{aio:?}");
}
