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

/// A running `kcat -G` group member, its output and diagnostics collected line by line.
struct Member {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Member {
    fn start(bootstrap: &str, group: &str, topic: &str) -> Member {
        let mut child = Command::new("kcat")
            .args(["-b", bootstrap, "-G", group, topic, "-u", "-f", "%p %o %s\n"])
            // Earliest: a member that gets a partition before anything is committed starts at its
            // beginning, whenever the records arrive (kcat's default, latest, would race them).
            .args(["-X", "auto.commit.interval.ms=100", "-X", "session.timeout.ms=6000"])
            .args(["-X", "auto.offset.reset=earliest"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat is not installed: scripts/setup.sh installs it");
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Member { child, out, err }
    }

    /// The partitions of this member's latest assignment (kcat logs "assigned: t [0], t [2]").
    fn assignment(&self) -> Option<Vec<u32>> {
        let err = self.err.lock().unwrap();
        let line = err.iter().rev().find(|l| l.contains("assigned:"))?;
        let list = line.split("assigned:").nth(1)?;
        let mut parts: Vec<u32> = list
            .split(',')
            .filter_map(|p| p.split('[').nth(1)?.trim_end_matches(|c| c == ']' || c == ' ').parse().ok())
            .collect();
        parts.sort();
        Some(parts)
    }

    /// (partition, offset, value) of every record consumed so far.
    fn records(&self) -> Vec<(u32, u64, String)> {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.to_string()))
            })
            .collect()
    }

    /// SIGTERM: kcat leaves the group and commits what it consumed.
    fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn produce_to(bootstrap: &str, topic: &str, partition: u32, values: impl Iterator<Item = String>) {
    let input: String = values.map(|v| v + "\n").collect();
    kcat(&["-b", bootstrap, "-P", "-t", topic, "-p", &partition.to_string()], Some(input.as_bytes()));
}

/// Two `kcat -G` members split a topic's partitions between them and each reads only its own;
/// after both leave and the node restarts, a new member continues from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_group_members_split_partitions_and_resume_after_a_restart() {
    let mut cluster = Cluster::start(1);
    cluster.wait_ready(READY).await;
    let client = connect(&cluster).await;
    client.create_topic("split", 4, 1, BTreeMap::new()).await.expect("create topic");
    cluster.wait_leaders("split", READY).await;
    let bootstrap = cluster.kafka_bootstrap();

    let a = Member::start(&bootstrap, "kcat-group", "split");
    wait_for(READY, "the first member to get every partition", || async {
        (a.assignment()? == vec![0, 1, 2, 3]).then_some(())
    })
    .await;
    let b = Member::start(&bootstrap, "kcat-group", "split");
    let (mine_a, mine_b) = wait_for(READY, "the two members to split the partitions", || async {
        let (x, y) = (a.assignment()?, b.assignment()?);
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort();
        (!x.is_empty() && !y.is_empty() && all == vec![0, 1, 2, 3]).then_some((x, y))
    })
    .await;
    for p in 0..4 {
        produce_to(&bootstrap, "split", p, (0..100).map(|i| format!("p{p}-{i}")));
    }
    wait_for(READY, "the members to read all 400 records", || async {
        (a.records().len() + b.records().len() == 400).then_some(())
    })
    .await;
    for (member, mine) in [(&a, &mine_a), (&b, &mine_b)] {
        let records = member.records();
        assert!(records.iter().all(|(p, _, _)| mine.contains(p)), "a member read only its partitions");
        assert_eq!(records.len(), 100 * mine.len());
        for (p, o, v) in records {
            assert_eq!(v, format!("p{p}-{o}"));
        }
    }
    a.stop();
    b.stop();

    cluster.stop(1);
    cluster.restart(1);
    cluster.wait_ready(READY).await;
    cluster.wait_leaders("split", READY).await;
    for p in 0..4 {
        produce_to(&bootstrap, "split", p, (100..110).map(|i| format!("p{p}-{i}")));
    }
    let c = Member::start(&bootstrap, "kcat-group", "split");
    wait_for(READY, "the new member to read the 40 new records", || async { (c.records().len() >= 40).then_some(()) })
        .await;
    let mut read = c.records();
    read.sort();
    let expected: Vec<(u32, u64, String)> =
        (0..4).flat_map(|p| (100..110).map(move |o| (p, o, format!("p{p}-{o}")))).collect();
    assert_eq!(read, expected, "the group continued from its committed offsets, nothing read twice");
    c.stop();
}
