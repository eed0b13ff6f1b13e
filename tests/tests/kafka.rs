//! Existing Kafka tools against real nodes' Kafka listeners: kcat (librdkafka) lists the cluster,
//! produces and consumes through the Kafka protocol, and what one protocol writes the other reads
//! with the same keys, values, headers and offsets.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use runnel_client::{Acks, Client};
use runnel_tests::{client_config, read_all, wait_for, Cluster};

const READY: Duration = Duration::from_secs(60);

/// Runs kcat with `args`, feeding `stdin`; panics with its output when it fails.
fn kcat(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: scripts/setup.sh installs it (Debian package kcat)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write to kcat");
    }
    let out = child.wait_with_output().expect("kcat output");
    assert!(out.status.success(), "kcat {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

async fn connect(cluster: &Cluster) -> Client {
    Client::connect_with(&cluster.addrs(), client_config()).await.expect("connect")
}

/// kcat -L lists every node with its Kafka address and every partition with its leader, as the
/// cluster's own metadata has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_lists_every_node_and_partition_leader() {
    let cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("listed", 3, 3, BTreeMap::new()).await.expect("create topic");
    let leaders = cluster.wait_leaders("listed", READY).await;
    let bootstrap = cluster.nodes[0].kafka_addr.clone();
    // Leaders are reported to the metadata by heartbeat: wait until kcat sees all three.
    let listing = wait_for(READY, "kcat -L to show every node and partition leader", || {
        let bootstrap = bootstrap.clone();
        let leaders = leaders.clone();
        async move {
            let out = kcat(&["-b", &bootstrap, "-L", "-J", "-t", "listed"], None);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let got: Vec<u64> =
                v["topics"][0]["partitions"].as_array()?.iter().map(|p| p["leader"].as_u64()).collect::<Option<_>>()?;
            let brokers = v["brokers"].as_array()?.len();
            (brokers == 3 && got == leaders).then_some(v)
        }
    })
    .await;
    let mut brokers: Vec<(u64, String)> = listing["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_u64().unwrap(), b["name"].as_str().unwrap().to_string()))
        .collect();
    brokers.sort();
    let expected: Vec<(u64, String)> = cluster.nodes.iter().map(|n| (n.id, n.kafka_addr.clone())).collect();
    assert_eq!(brokers, expected, "every node advertises its own Kafka address");
    for p in listing["topics"][0]["partitions"].as_array().unwrap() {
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
    }
}

/// 10,000 keyed records with headers through kcat -P come back byte-identical through kcat -C,
/// and the gRPC SDK reads the same records at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_round_trips_keyed_records_with_headers_and_the_sdk_reads_them() {
    let cluster = Cluster::start(3);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("kcat", 1, 3, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("kcat", READY).await;
    let bootstrap = cluster.kafka_bootstrap();

    const N: usize = 10_000;
    let input: String = (0..N).map(|i| format!("key-{i}\tvalue {i} {}\n", "x".repeat(i % 50))).collect();
    kcat(
        &[
            "-b",
            &bootstrap,
            "-P",
            "-t",
            "kcat",
            "-p",
            "0",
            "-K",
            "\t",
            "-H",
            "origin=kcat",
            "-H",
            "n=1",
            "-X",
            "enable.idempotence=true",
            "-X",
            "linger.ms=5",
        ],
        Some(input.as_bytes()),
    );
    let out = kcat(
        &["-b", &bootstrap, "-C", "-t", "kcat", "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%o\t%k\t%s\t%h\n"],
        None,
    );
    let consumed = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), N, "every record produced comes back once");
    for (i, line) in lines.iter().enumerate() {
        let expected = format!("{i}\tkey-{i}\tvalue {i} {}\torigin=kcat,n=1", "x".repeat(i % 50));
        assert_eq!(*line, expected, "record {i}");
    }

    // The same records through gRPC: same offsets, keys, values and headers.
    let records = read_all(&client, "kcat", 0).await;
    assert_eq!(records.len(), N);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.key, format!("key-{i}").as_bytes());
        assert_eq!(r.value, format!("value {i} {}", "x".repeat(i % 50)).as_bytes());
        let headers: Vec<(String, Vec<u8>)> = r.headers.iter().map(|h| (h.key.clone(), h.value.to_vec())).collect();
        assert_eq!(headers, vec![("origin".to_string(), b"kcat".to_vec()), ("n".to_string(), b"1".to_vec())]);
        assert!(r.timestamp_ms > 0, "kcat stamps records with their creation time");
    }
}

/// Records produced through gRPC are read by kcat at the offsets the SDK was answered with, and
/// records kcat appends after them continue the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_and_kcat_share_one_offset_space() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("mixed", 1, 1, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("mixed", READY).await;
    let bootstrap = cluster.kafka_bootstrap();

    let mut with_header = runnel_tests::record("sdk-key-1", "sdk value 1".into());
    with_header.headers.push(runnel_proto::v1::Header { key: "h".into(), value: "v".into(), ..Default::default() });
    let base = client
        .produce("mixed", 0, vec![runnel_tests::record("sdk-key-0", "sdk value 0".into()), with_header], Acks::All)
        .await
        .expect("produce");
    assert_eq!(base, 0);
    kcat(&["-b", &bootstrap, "-P", "-t", "mixed", "-p", "0", "-K", ":"], Some(b"kcat-key:kcat value\n"));

    let out = kcat(
        &["-b", &bootstrap, "-C", "-t", "mixed", "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%o|%k|%s|%h\n"],
        None,
    );
    let consumed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        consumed.lines().collect::<Vec<_>>(),
        vec!["0|sdk-key-0|sdk value 0|", "1|sdk-key-1|sdk value 1|h=v", "2|kcat-key|kcat value|"]
    );
    // A mid-batch start offset: kcat skips the batch's earlier records.
    let out = kcat(&["-b", &bootstrap, "-C", "-t", "mixed", "-p", "0", "-o", "1", "-e", "-q", "-f", "%o "], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 2 ");

    let records = read_all(&client, "mixed", 0).await;
    let seen: Vec<(u64, &[u8], &[u8])> = records.iter().map(|r| (r.offset, &r.key[..], &r.value[..])).collect();
    assert_eq!(
        seen,
        vec![
            (0, &b"sdk-key-0"[..], &b"sdk value 0"[..]),
            (1, b"sdk-key-1", b"sdk value 1"),
            (2, b"kcat-key", b"kcat value")
        ]
    );
}

/// A topic a Kafka producer names that does not exist is created (auto.create.topics), and kcat
/// reads back what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_producer_creates_a_missing_topic() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let bootstrap = cluster.kafka_bootstrap();
    kcat(&["-b", &bootstrap, "-P", "-t", "auto-created"], Some(b"one\ntwo\n"));
    let out = kcat(&["-b", &bootstrap, "-C", "-t", "auto-created", "-o", "beginning", "-e", "-q", "-f", "%s\n"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    let client = connect(&cluster).await;
    let topics = client.metadata(&["auto-created".to_string()]).await.expect("metadata");
    assert_eq!(topics.topics.len(), 1, "{topics:?}");
}
