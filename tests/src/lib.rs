//! A harness that runs real `runnel` processes on 127.0.0.1: start, kill -9, SIGTERM, restart,
//! and wait for conditions with bounded timeouts (never sleep-and-hope).

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

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
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
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// N real nodes, all metadata voters, in a temporary directory removed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    voters: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::Builder::new().prefix("runnel-it-").tempdir().expect("tempdir");
        let nodes: Vec<Node> = (1..=n as u64)
            .map(|id| Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
            })
            .collect();
        let voters = nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        let mut c = Cluster { nodes, voters, dir };
        for i in 0..n {
            c.spawn(i);
        }
        c
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
            .env("RUNNEL_LOG", std::env::var("RUNNEL_LOG").unwrap_or_else(|_| "info".into()))
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
        c.describe_replicas(DescribeReplicasRequest {}).await.ok().map(|r| r.into_inner().replicas)
    }

    /// Every running node answers and agrees there is a controller and that all running nodes
    /// are registered brokers.
    pub async fn wait_ready(&self, timeout: Duration) {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
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
    }
}
