//! A harness that runs real `runnel` processes on 127.0.0.1: start, kill -9, SIGTERM, restart,
//! and wait for conditions with bounded timeouts (never sleep-and-hope).
//!
//! With `RUNNEL_IT_TLS=1` every cluster it starts runs with mutual TLS between its nodes (a CA
//! and node certificates made once per test process), and its helpers and [`client_config`]
//! connect over TLS: `scripts/test.sh` runs the failover suite that way too.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{DescribeReplicasRequest, MetadataRequest, MetadataResponse, ReplicaStatus};

/// The `runnel` binary: `$RUNNEL_BIN`, else next to the test executable's `deps/` directory
/// (`scripts/test.sh` builds it before the tests run).
pub fn runnel_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RUNNEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("runnel");
    assert!(bin.exists(), "{} not found: run `cargo build --bin runnel` first (scripts/test.sh does)", bin.display());
    bin
}

/// Whether clusters run with mutual TLS (`RUNNEL_IT_TLS=1`).
pub fn tls_mode() -> bool {
    std::env::var("RUNNEL_IT_TLS").is_ok_and(|v| v == "1")
}

/// The test process's PKI (TLS mode): ca.pem and node-<id>.pem/.key for ids 1 to 16.
fn pki_dir() -> &'static Path {
    static PKI: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        use runnel_security::certs::{issue, new_ca, Subject};
        let dir = tempfile::Builder::new().prefix("runnel-it-pki-").tempdir().expect("tempdir");
        let ca = new_ca("integration-test CA", 2).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
        for id in 1..=16 {
            let ck = issue(&ca, &Subject::Node { id, hosts: vec!["127.0.0.1".into()] }, 2).expect("node cert");
            std::fs::write(dir.path().join(format!("node-{id}.pem")), &ck.cert_pem).expect("write");
            std::fs::write(dir.path().join(format!("node-{id}.key")), &ck.key_pem).expect("write");
        }
        dir
    })
    .path()
}

/// How the harness and tests reach nodes: TLS with the test CA in TLS mode, else plain TCP.
pub fn dialer() -> std::sync::Arc<dyn runnel_proto::dial::Dialer> {
    if !tls_mode() {
        return runnel_proto::dial::tcp();
    }
    let files = runnel_security::tls::TlsFiles { ca: pki_dir().join("ca.pem"), cert: None, key: None };
    std::sync::Arc::new(runnel_security::tls::TlsDialer {
        connect_timeout: Duration::from_millis(500),
        config: files.client_config().expect("the test CA"),
    })
}

/// The SDK's default configuration, over TLS in TLS mode.
pub fn client_config() -> runnel_client::ClientConfig {
    let mut cfg = runnel_client::ClientConfig::default();
    if tls_mode() {
        cfg.dialer = Some(runnel_proto::dial::DialerHandle(dialer()));
    }
    cfg
}

/// A port nothing listens on now, and never one this process handed out before: the OS may give
/// a released port straight back, and a node's gRPC and Kafka ports (both drawn here before the
/// node binds them) must differ. Found by a full run: node 3's gRPC port was node 2's Kafka port,
/// so node 3 never started and node 2 read gRPC's HTTP/2 preface as a Kafka frame.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `f` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Node {
    pub id: u64,
    pub addr: String,
    /// The node's Kafka-protocol listener (every test node has one).
    pub kafka_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Real nodes in a temporary directory removed on drop. The first `voters` nodes are the
/// metadata voters; the others join as learners.
pub struct Cluster {
    pub nodes: Vec<Node>,
    voters: String,
    /// Extra `RUNNEL_*` settings every node starts with (`{id}` in a value: the node's id).
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes, all metadata voters, default settings.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, n, &[])
    }

    /// `n` nodes of which the first `voters` vote in the metadata group, with extra environment.
    pub fn start_with(n: usize, voters: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_with_data_dirs(n, voters, env, &[])
    }

    /// As [`Cluster::start_with`], node `i` keeping its data in `data_dirs[i]` where given (e.g. on
    /// a filesystem of a chosen size) instead of under the cluster's temporary directory.
    pub fn start_with_data_dirs(n: usize, voters: usize, env: &[(&str, &str)], data_dirs: &[PathBuf]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("runnel-it-").tempdir().expect("tempdir");
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if tls_mode() {
            let p = |name: &str| pki_dir().join(name).display().to_string();
            env.push(("RUNNEL_TLS_CA_FILE".into(), p("ca.pem")));
            env.push(("RUNNEL_TLS_CERT_FILE".into(), p("node-{id}.pem")));
            env.push(("RUNNEL_TLS_KEY_FILE".into(), p("node-{id}.key")));
        }
        let mut c = Cluster { nodes: Vec::new(), voters: String::new(), env, dir };
        for i in 0..n {
            c.push_node();
            if let Some(d) = data_dirs.get(i) {
                c.nodes[i].data_dir = d.clone();
            }
        }
        c.voters = c.nodes[..voters].iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    fn push_node(&mut self) -> usize {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(Node {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            kafka_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join(format!("node{id}")),
            log: self.dir.path().join(format!("node{id}.log")),
            child: None,
        });
        self.nodes.len() - 1
    }

    /// Starts one more node that joins the running cluster (as a metadata learner); its id.
    pub fn add_node(&mut self) -> u64 {
        let i = self.push_node();
        self.spawn(i);
        self.nodes[i].id
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} already running", node.id);
        let log = File::options().create(true).append(true).open(&node.log).expect("log file");
        let child = Command::new(runnel_bin())
            .args(["start", "--node-id", &node.id.to_string(), "--listen", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--voters", &self.voters])
            .env("RUNNEL_KAFKA_LISTEN", &node.kafka_addr)
            .env("RUNNEL_LOG", std::env::var("RUNNEL_LOG").unwrap_or_else(|_| "info,openraft=error".into()))
            // `{id}` in a value is this node's id (per-node files, e.g. its certificate).
            .envs(self.env.iter().map(|(k, v)| (k.clone(), v.replace("{id}", &node.id.to_string()))))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn runnel");
        node.child = Some(child);
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Every node's Kafka listener, comma-separated (a Kafka client's `bootstrap.servers`).
    pub fn kafka_bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.kafka_addr.clone()).collect::<Vec<_>>().join(",")
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("node id")
    }

    /// kill -9: no chance to flush or hand anything over.
    pub fn kill9(&mut self, id: u64) {
        let i = self.index_of(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self, id: u64) {
        let i = self.index_of(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("node {id} did not exit within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self, id: u64) {
        let i = self.index_of(id);
        self.spawn(i);
    }

    pub async fn client_for(addr: &str) -> Option<RunnelClient<tonic::transport::Channel>> {
        if tls_mode() {
            return Some(RunnelClient::new(dialer().channel(addr).ok()?));
        }
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        Some(RunnelClient::new(ch))
    }

    pub async fn metadata_from(addr: &str) -> Option<MetadataResponse> {
        let mut c = Self::client_for(addr).await?;
        c.metadata(MetadataRequest { topics: vec![] }).await.ok().map(|r| r.into_inner())
    }

    pub async fn replicas_on(addr: &str) -> Option<Vec<ReplicaStatus>> {
        let mut c = Self::client_for(addr).await?;
        c.describe_replicas(DescribeReplicasRequest::default()).await.ok().map(|r| r.into_inner().replicas)
    }

    /// Every running node answers and agrees there is a controller and that all running nodes
    /// are registered brokers.
    pub async fn wait_ready(&self, timeout: Duration) {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        if tls_mode() {
            // TLS mode must really be TLS: a plaintext client gets no answer from a ready node.
            if let Some(n) = running.first() {
                let addr = n.addr.clone();
                wait_for(timeout, &format!("node {} answers over TLS", n.id), || {
                    let addr = addr.clone();
                    async move { Self::metadata_from(&addr).await.map(|_| ()) }
                })
                .await;
                let plain = runnel_proto::dial::tcp().channel(&addr).expect("address");
                let answer = RunnelClient::new(plain).metadata(MetadataRequest { topics: vec![] }).await;
                assert!(answer.is_err(), "RUNNEL_IT_TLS=1, but node {} answered a plaintext client", n.id);
            }
        }
        let want = running.len();
        for n in running {
            let addr = n.addr.clone();
            wait_for(timeout, &format!("node {} ready (controller known, {want} brokers)", n.id), || {
                let addr = addr.clone();
                async move {
                    let m = Self::metadata_from(&addr).await?;
                    (m.controller_id.is_some() && m.brokers.len() >= want).then_some(())
                }
            })
            .await;
        }
    }

    /// Waits until every partition of `topic` has a leader in the committed metadata.
    pub async fn wait_leaders(&self, topic: &str, timeout: Duration) -> Vec<u64> {
        let addr = self.nodes.iter().find(|n| n.is_running()).expect("a running node").addr.clone();
        let topic = topic.to_string();
        wait_for(timeout, &format!("every partition of '{topic}' has a leader"), || {
            let (addr, topic) = (addr.clone(), topic.clone());
            async move {
                let m = Self::metadata_from(&addr).await?;
                let t = m.topics.iter().find(|t| t.name == topic)?;
                t.partitions.iter().map(|p| p.leader).collect::<Option<Vec<u64>>>()
            }
        })
        .await
    }

    /// The last lines of every node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!("----- node {} ({}) -----\n{}\n", n.id, n.log.display(), all[from..].join("\n")));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // RUNNEL_KEEP_TEST_DIR=1 keeps a failed test's data and logs for reading afterwards.
        if std::thread::panicking() && std::env::var_os("RUNNEL_KEEP_TEST_DIR").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("tempdir")).keep();
            eprintln!("kept the failed test's directory: {}", kept.display());
        }
    }
}

/// A record with `key` and `value` and no timestamp (the leader stamps its batch with the time it
/// was appended, so time retention sees it as new).
pub fn record(key: &str, value: String) -> runnel_proto::v1::Record {
    record_at(key, value, 0)
}

/// A record with `key`, `value` and timestamp `timestamp_ms`.
pub fn record_at(key: &str, value: String, timestamp_ms: i64) -> runnel_proto::v1::Record {
    runnel_proto::v1::Record {
        key: bytes::Bytes::from(key.to_string()),
        value: bytes::Bytes::from(value),
        headers: vec![],
        timestamp_ms,
        offset_delta: None,
        ..Default::default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reads a whole partition from offset 0 up to its high watermark.
pub async fn read_all(
    client: &runnel_client::Client,
    topic: &str,
    partition: u32,
) -> Vec<runnel_client::ConsumedRecord> {
    read_from(client, topic, partition, 0).await
}

/// Every record of a partition as (offset, value as text), from offset 0 to its high watermark.
pub async fn offsets_and_values(client: &runnel_client::Client, topic: &str, partition: u32) -> Vec<(u64, String)> {
    read_all(client, topic, partition)
        .await
        .iter()
        .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
        .collect()
}

/// Reads a partition from `offset` up to its high watermark (following the fetch's next offset,
/// so batches compaction emptied are stepped over).
pub async fn read_from(
    client: &runnel_client::Client,
    topic: &str,
    partition: u32,
    mut offset: u64,
) -> Vec<runnel_client::ConsumedRecord> {
    let mut out = Vec::new();
    loop {
        let r = client.fetch(topic, partition, offset, 1 << 20, 0).await.expect("fetch");
        let moved = r.next_offset > offset;
        offset = r.next_offset;
        let done = !moved || offset >= r.high_watermark;
        out.extend(r.records);
        if done {
            return out;
        }
    }
}

/// A constant acks=all load: one producer task per partition, each sending batches of 10 unique
/// values and recording every acknowledged batch (base offset and values) and every failed call.
pub struct Load {
    pub topic: String,
    /// Per partition: (base offset, values) of every acknowledged batch.
    pub acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u32, Vec<(u64, Vec<String>)>>>>,
    /// Produce calls that failed after the client's own retries, with their errors.
    pub failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(client: &runnel_client::Client, topic: &str, partitions: u32) -> Load {
        let mut load = Load {
            topic: topic.to_string(),
            acked: Default::default(),
            failures: Default::default(),
            stop: Default::default(),
            tasks: Vec::new(),
        };
        for p in 0..partitions {
            let (client, acked, failures, stop, topic) =
                (client.clone(), load.acked.clone(), load.failures.clone(), load.stop.clone(), topic.to_string());
            load.tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let values: Vec<String> = (0..10).map(|j| format!("{topic}-p{p}-{i}-{j}")).collect();
                    let records = values.iter().map(|v| record("", v.clone())).collect();
                    match client.produce(&topic, p, records, runnel_proto::v1::Acks::All).await {
                        Ok(base) => acked.lock().unwrap().entry(p).or_default().push((base, values)),
                        Err(e) => failures.lock().unwrap().push(format!("{topic}/{p}: {e}")),
                    }
                    i += 1;
                }
            }));
        }
        load
    }

    /// Acknowledged batches so far, over all partitions.
    pub fn acked_batches(&self) -> usize {
        self.acked.lock().unwrap().values().map(|v| v.len()).sum()
    }

    /// Acknowledged batches so far on `partition`.
    pub fn acked_on(&self, partition: u32) -> usize {
        self.acked.lock().unwrap().get(&partition).map_or(0, |v| v.len())
    }

    /// Waits until every partition has `more` acknowledged batches beyond what it has now.
    pub async fn wait_progress(&self, more: usize, timeout: Duration, what: &str) {
        let base: Vec<(u32, usize)> = {
            let a = self.acked.lock().unwrap();
            a.keys().map(|p| (*p, a[p].len())).collect()
        };
        let partitions = self.tasks.len() as u32;
        wait_for(timeout, what, || {
            let ok = (0..partitions).all(|p| {
                let start = base.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n);
                self.acked_on(p) >= start + more
            });
            async move { ok.then_some(()) }
        })
        .await;
    }

    /// Stops the producers and waits for them.
    pub async fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("producer task");
        }
    }

    /// Reads every partition back through `client` and asserts that every acknowledged record is
    /// at its acknowledged offset. Returns the records read. (A produce retried after a lost answer
    /// may be stored twice until the idempotent producer exists; that is not checked here.)
    pub async fn verify(&self, client: &runnel_client::Client) -> usize {
        let acked = self.acked.lock().unwrap().clone();
        let mut total = 0;
        for (p, batches) in &acked {
            let log = read_all(client, &self.topic, *p).await;
            let by_offset: std::collections::HashMap<u64, String> =
                log.iter().map(|r| (r.offset, String::from_utf8(r.value.to_vec()).expect("utf8 value"))).collect();
            for (base, values) in batches {
                for (j, v) in values.iter().enumerate() {
                    let at = base + j as u64;
                    assert_eq!(
                        by_offset.get(&at),
                        Some(v),
                        "{}/{p}: acknowledged record {v} missing at offset {at}",
                        self.topic
                    );
                }
            }
            total += log.len();
        }
        total
    }
}

/// The metadata as node `addr` has it, and the given topic's partitions in it.
pub async fn partitions_of(addr: &str, topic: &str) -> Option<Vec<runnel_proto::v1::PartitionInfo>> {
    let m = Cluster::metadata_from(addr).await?;
    Some(m.topics.into_iter().find(|t| t.name == topic)?.partitions)
}
