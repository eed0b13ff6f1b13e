//! A local cluster of real `runnel start` processes, for the benchmarks that kill and restart
//! nodes (`runnel bench failover`, `runnel bench partitions`). Every node is a metadata voter,
//! listens on a free port of 127.0.0.1 and keeps its data and log in one temporary directory.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{MetadataRequest, MetadataResponse};
use runnel_types::limits::MAX_GRPC_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};

/// How often cluster state is polled while waiting for something.
pub(crate) const POLL: Duration = Duration::from_millis(25);
/// Deadline of one control RPC (Metadata, DescribeReplicas, ClusterHealth) to a node.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Node settings a benchmark passes to every node it starts (as `RUNNEL_*` variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeSettings {
    /// Node setting raft_heartbeat_ms (default: the node default).
    #[arg(long)]
    pub raft_heartbeat_ms: Option<u64>,
    /// Node setting raft_election_timeout_ms (default: the node default).
    #[arg(long)]
    pub raft_election_timeout_ms: Option<u64>,
    /// Node setting broker_heartbeat_ms (default: the node default).
    #[arg(long)]
    pub broker_heartbeat_ms: Option<u64>,
    /// Node setting broker_session_timeout_ms (default: the node default).
    #[arg(long)]
    pub broker_session_timeout_ms: Option<u64>,
    /// Any other node setting, as in the node's configuration file (e.g.
    /// node_liveness_timeout_ms=300); repeatable.
    #[arg(long = "node-setting", value_name = "KEY=VALUE", value_parser = crate::admin::parse_key_value)]
    pub node_setting: Vec<(String, String)>,
}

/// Keys the cluster sets itself for every node: a `--node-setting` may not override them.
const OWN_KEYS: [&str; 5] = ["node_id", "listen", "advertise", "data_dir", "voters"];

impl NodeSettings {
    /// The settings given, as `RUNNEL_*` variables. Fails on a key the node does not have (the
    /// node would silently ignore it) or one the cluster sets itself.
    pub fn env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = [
            ("RUNNEL_RAFT_HEARTBEAT_MS", self.raft_heartbeat_ms),
            ("RUNNEL_RAFT_ELECTION_TIMEOUT_MS", self.raft_election_timeout_ms),
            ("RUNNEL_BROKER_HEARTBEAT_MS", self.broker_heartbeat_ms),
            ("RUNNEL_BROKER_SESSION_TIMEOUT_MS", self.broker_session_timeout_ms),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
        .collect();
        if self.node_setting.is_empty() {
            return Ok(env);
        }
        // The node's keys are its configuration's fields: taken from the configuration itself,
        // so a setting added to the node is accepted here without a change.
        let known = serde_json::to_value(runnel_server::NodeConfig::default())
            .context("listing the node's configuration keys")?;
        let known: Vec<&String> = known.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        for (k, v) in &self.node_setting {
            anyhow::ensure!(
                !OWN_KEYS.contains(&k.as_str()),
                "--node-setting {k}: the benchmark sets {k} itself for each node it starts"
            );
            anyhow::ensure!(
                known.contains(&k),
                "--node-setting {k}: not a node setting (known: {})",
                known
                    .iter()
                    .filter(|n| !OWN_KEYS.contains(&n.as_str()))
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let var = format!("RUNNEL_{}", k.to_uppercase());
            env.retain(|(e, _)| *e != var);
            env.push((var, v.clone()));
        }
        Ok(env)
    }
}

pub(crate) struct NodeProc {
    pub id: u64,
    pub addr: String,
    data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Lazily connected; reconnects by itself after the node restarts.
    pub rpc: RunnelClient<Channel>,
}

/// Child processes of a benchmark; every one still running is killed (SIGKILL) on drop, so
/// none outlives an error, a panic or Ctrl-C.
pub(crate) struct LocalCluster {
    pub nodes: Vec<NodeProc>,
    voters: String,
    bin: PathBuf,
    /// Names the benchmark in the temporary directory's name and in the node logs.
    label: String,
    /// Settings passed to every node as `RUNNEL_*` variables.
    env: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Distinct free ports on 127.0.0.1 (all listeners are held until every port is chosen).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().context("finding free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl LocalCluster {
    /// Starts `nodes` nodes of this very binary (`runnel start`), all metadata voters, with the
    /// settings `env`; `label` names the benchmark (`failover`) in the directory and logs.
    pub fn start(nodes: usize, label: &str, env: Vec<(String, String)>) -> anyhow::Result<LocalCluster> {
        let bin = std::env::current_exe().context("locating the runnel binary")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("runnel-{label}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        let ports = free_ports(nodes)?;
        let mut procs = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let id = i as u64 + 1;
            let addr = format!("127.0.0.1:{port}");
            let ep = Endpoint::from_shared(format!("http://{addr}"))
                .with_context(|| format!("address {addr}"))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(RPC_TIMEOUT);
            procs.push(NodeProc {
                id,
                addr,
                data_dir: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                // Metadata of a cluster with many partitions exceeds tonic's 4 MiB default.
                rpc: RunnelClient::new(ep.connect_lazy()).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES),
            });
        }
        let voters = procs.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        let mut c =
            LocalCluster { nodes: procs, voters, bin, label: label.to_string(), env, dir: Some(dir), kept: None };
        for i in 0..c.nodes.len() {
            c.spawn(i, "started")?;
        }
        Ok(c)
    }

    pub fn spawn(&mut self, i: usize, why: &str) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(i).with_context(|| format!("no node at index {i}"))?;
        anyhow::ensure!(node.child.is_none(), "node {} is already running", node.id);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let _ = writeln!(log, "===== runnel bench {}: node {} {why} =====", self.label, node.id);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["start", "--node-id", &node.id.to_string(), "--listen", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--voters", &self.voters])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log);
        // Node defaults unless a flag overrides them: no RUNNEL_* setting from this environment
        // (a config file, another node's id or data dir) reaches the children.
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("RUNNEL_") && k != "RUNNEL_LOG") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUNNEL_LOG", std::env::var("RUNNEL_LOG").unwrap_or_else(|_| "info,openraft=error".into()));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().with_context(|| format!("starting node {} ({})", node.id, self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap; returns the instant the process was gone.
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<Instant> {
        let node = self.nodes.get_mut(i).with_context(|| format!("no node at index {i}"))?;
        let mut child = node.child.take().with_context(|| format!("node {} is not running", node.id))?;
        child.kill().with_context(|| format!("killing node {}", node.id))?;
        child.wait().with_context(|| format!("reaping node {}", node.id))?;
        Ok(Instant::now())
    }

    /// Fails if a node that should be running has exited.
    pub fn check_children(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    n.child = None;
                    anyhow::bail!("node {} exited unexpectedly ({status}); see {}", n.id, n.log.display());
                }
            }
        }
        Ok(())
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.child.is_some())
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i).and_then(|n| n.child.as_ref()).map(Child::id)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Keeps the directory (data and logs) past the end of the run.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        if let Some(d) = self.dir.take() {
            self.kept = Some(d.keep());
        }
        self.kept.clone()
    }

    /// Every node answers, knows a controller and all brokers are registered.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len();
        loop {
            self.check_children()?;
            let mut ready = true;
            for node in &self.nodes {
                let ok = metadata(&node.rpc).await.is_some_and(|m| m.controller_id.is_some() && m.brokers.len() >= n);
                ready &= ok;
            }
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster was not ready (controller known, {n} brokers registered) within {timeout:?}; logs in {}",
                self.log_dir()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn log_dir(&self) -> String {
        self.nodes.first().and_then(|n| n.log.parent()).map_or_else(String::new, |p| p.display().to_string())
    }
}

/// The node's full metadata (every topic); `None` if it did not answer within [`RPC_TIMEOUT`].
pub(crate) async fn metadata(rpc: &RunnelClient<Channel>) -> Option<MetadataResponse> {
    let mut c = rpc.clone();
    let resp = tokio::time::timeout(RPC_TIMEOUT, c.metadata(MetadataRequest { topics: vec![] })).await.ok()?.ok()?;
    Some(resp.into_inner())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, naming the signal; never if neither can be watched.
pub(crate) async fn interrupted() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = int => "Ctrl-C",
        _ = term => "SIGTERM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_settings_only_for_given_flags() {
        let s = NodeSettings { raft_election_timeout_ms: Some(300), ..Default::default() };
        assert_eq!(s.env().unwrap(), vec![("RUNNEL_RAFT_ELECTION_TIMEOUT_MS".to_string(), "300".to_string())]);
    }

    #[test]
    fn node_setting_keys_are_checked() {
        let s = NodeSettings {
            raft_heartbeat_ms: Some(50),
            node_setting: vec![("broker_heartbeat_ms".into(), "200".into()), ("raft_heartbeat_ms".into(), "75".into())],
            ..Default::default()
        };
        // A generic setting of the same key replaces the flag's value rather than doubling it.
        assert_eq!(
            s.env().unwrap(),
            vec![
                ("RUNNEL_BROKER_HEARTBEAT_MS".to_string(), "200".to_string()),
                ("RUNNEL_RAFT_HEARTBEAT_MS".to_string(), "75".to_string()),
            ]
        );
        let typo = NodeSettings { node_setting: vec![("raft_heartbeat".into(), "1".into())], ..Default::default() };
        assert!(typo.env().unwrap_err().to_string().contains("not a node setting"));
        let own = NodeSettings { node_setting: vec![("data_dir".into(), "/x".into())], ..Default::default() };
        assert!(own.env().unwrap_err().to_string().contains("sets data_dir itself"));
    }
}
