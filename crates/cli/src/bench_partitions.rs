//! `runnel bench partitions`: what many idle partitions cost a cluster. Starts a local cluster of
//! real `runnel start` processes and creates topics in steps up to given totals of partitions. Per
//! step it measures how long the cluster took until every partition had a live leader and the
//! cluster was healthy, then - with nothing written - each node's CPU use and resident memory.
//! With `--kill` it finally kills (SIGKILL) a node that is not the controller and measures how
//! long each partition it led took to get a new leader. While partitions are created and during
//! the kill it polls which node is the controller and counts the polls that found none. With
//! `--produce-records` it also measures, after each step's idle sample, a flat-out produce run into
//! a new topic (does the produce path get slower beside thousands of idle partitions?), and after
//! the last step creates a topic of `--fresh-topic-partitions` right after that run and times how
//! soon each of its partitions takes a write. A benchmark: it measures, it asserts nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use runnel_client::{Client, ClientConfig, ErrorCode, RetryPolicy};
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{ClusterHealthRequest, DescribeReplicasRequest, MetadataRequest, MetadataResponse};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::bench_failover::{fmt_percentiles, ms, percentiles, Percentiles};
use crate::local_cluster::{interrupted, metadata, LocalCluster, NodeSettings, RPC_TIMEOUT};
use crate::OutputFormat;

/// How often the controller is looked up while partitions are created and during the kill.
const CONTROLLER_POLL: Duration = Duration::from_millis(100);
/// How often creation / recovery is checked (ClusterHealth, then the full metadata).
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// How often the metadata is read after the kill, to time each partition's failover.
const FAILOVER_POLL: Duration = Duration::from_millis(50);
/// Pause between "created" and the CPU sample: elections that were just won, the first broker
/// heartbeats naming the new leaders, RocksDB flushes are not idle cost.
const SETTLE: Duration = Duration::from_secs(3);
/// Clock ticks per second of utime/stime in /proc/<pid>/stat. Assumed rather than asked with
/// sysconf(_SC_CLK_TCK), which would need the libc crate: the kernel reports these fields in
/// USER_HZ, which is 100 on every architecture Linux runs Runnel on, whatever its CONFIG_HZ.
const CLOCK_TICKS_PER_SEC: u64 = 100;
/// Topics this benchmark creates are named `idle-00000`, `idle-00001`, ...
const TOPIC_PREFIX: &str = "idle-";
/// A topic that does not exist: the Metadata answer for it carries the brokers and the
/// controller but not the thousands of partitions, so polling it every 100 ms costs little.
const NO_SUCH_TOPIC: &str = "__runnel-bench-controller-probe";

#[derive(Debug, Clone, clap::Args)]
pub struct PartitionsBench {
    /// Nodes in the local cluster (all metadata voters): 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Total partitions in the cluster at each step, comma separated, in increasing order; each
    /// step creates the topics that add the difference to the previous one.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,5000,10000")]
    pub steps: Vec<u32>,
    /// Replication factor of the topics created.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Partitions per topic created (the last topic of a step may have fewer).
    #[arg(long, default_value_t = 1000)]
    pub topic_size: u32,
    /// Length of each step's CPU sample of the idle cluster, seconds.
    #[arg(long, default_value_t = 20)]
    pub idle_secs: u64,
    /// After the last step, kill (kill -9) one node that is not the controller and time the
    /// failover of every partition it led; then restart it and wait until the cluster is healthy.
    #[arg(long)]
    pub kill: bool,
    /// Longest wait for each step's partitions to get leaders, for the failover after the kill and
    /// for the cluster to be healthy after the restart, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Settings of the nodes started.
    #[command(flatten)]
    pub node: NodeSettings,
    /// Keep the cluster's directory (data and node logs) after the run; it is always kept when
    /// the run failed.
    #[arg(long)]
    pub keep_dir: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// After each step's CPU sample: produce this many records (acks=all, 100 B, the SDK's
    /// producer with its defaults) into a new topic of `--produce-partitions`, and report
    /// throughput and latency (0 = no produce runs).
    #[arg(long, default_value_t = 0)]
    pub produce_records: u64,
    /// Partitions of each produce run's topic.
    #[arg(long, default_value_t = 6)]
    pub produce_partitions: u32,
    /// Produce runs per step, each into a new topic: on this machine one run's throughput varies
    /// by ±20 % (the first after a step is often the slowest), so compare several.
    #[arg(long, default_value_t = 3)]
    pub produce_runs: u32,
    /// With `--produce-records`: right after the last step's produce run, create a topic of this
    /// many partitions and time, per partition, creation -> first acknowledged write; then produce
    /// `--produce-records` into it (0 = skip).
    #[arg(long, default_value_t = 100)]
    pub fresh_topic_partitions: u32,
}

/// A flat-out produce run (see `--produce-records`).
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSample {
    pub topic: String,
    pub partitions: u32,
    pub records: u64,
    pub records_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub errors: u64,
}

/// A topic created right after a flat-out produce run (see `--fresh-topic-partitions`).
#[derive(Debug, Clone, Serialize)]
pub struct FreshTopicReport {
    pub topic: String,
    pub partitions: u32,
    /// Create call -> the first write acknowledged, per partition (the SDK retries meanwhile).
    pub first_write: Option<Percentiles>,
    /// Partitions whose first write failed (the client gave up): each is a failed produce.
    pub first_write_failed: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Then a flat-out run into it.
    pub produce: Option<ProduceSample>,
}

/// Polls for the controller over one phase (a step's creation, or the kill up to the recovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ControllerGaps {
    /// Polls made (one every 100 ms, each asking every running node).
    pub polls: u64,
    /// Polls in which no running node named a controller that was itself answering.
    pub count: u64,
    /// Longest stretch without a known controller: from the first poll that found none to the
    /// next poll that found one (or to the end of the phase).
    pub longest_ms: f64,
    /// Times the known controller changed from one node to another.
    pub changes: u64,
}

impl ControllerGaps {
    fn merge(&mut self, o: &ControllerGaps) {
        self.polls += o.polls;
        self.count += o.count;
        self.longest_ms = self.longest_ms.max(o.longest_ms);
        self.changes += o.changes;
    }
}

/// One node's use of the machine while the cluster was idle.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    pub node: u64,
    /// CPU time (user + system) over the sample, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory at the end of the sample (VmRSS), MiB.
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Partitions in the cluster (all topics this benchmark created).
    pub partitions: u32,
    /// partitions x replication factor.
    pub replicas: u64,
    /// Topics created in this step.
    pub topics_created: u32,
    /// First create call → every partition has a live leader in the metadata and ClusterHealth
    /// says healthy; `None` when the step created nothing.
    pub created_ms: Option<f64>,
    /// First create call → no partition's leader or leader epoch changed in the metadata for
    /// `STILL_FOR` (balancing to preferred replicas done); the CPU sample starts then. `None`
    /// when the step created nothing.
    pub settled_ms: Option<f64>,
    /// The CPU sample's actual length, seconds.
    pub idle_secs: f64,
    /// Sum over the nodes, in percent of one core.
    pub cpu_percent: f64,
    /// Sum over the nodes, MiB.
    pub rss_mib: f64,
    /// (RSS of all nodes − that at the first step) / (replicas − those at the first step), KiB;
    /// `None` at the first step or when the replicas did not change.
    pub mem_per_replica_kib: Option<f64>,
    pub nodes: Vec<NodeUsage>,
    /// While the step's topics were created.
    pub controller_gaps: ControllerGaps,
    /// The produce runs after the CPU sample (`--produce-records`).
    pub produce: Vec<ProduceSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillReport {
    /// The node killed (kill -9).
    pub node: u64,
    /// The controller when the node was killed.
    pub controller: Option<u64>,
    /// Partitions the killed node led, as the metadata named them just before the kill.
    pub partitions_led: u64,
    /// Of those: named with another, live leader in a higher epoch within the timeout.
    pub moved: u64,
    /// Of those: still without such a leader when the timeout expired.
    pub never_moved: u64,
    /// Kill → the metadata names the partition's new leader, over the partitions that moved.
    pub failover: Option<Percentiles>,
    /// From the kill until the cluster was healthy again after the restart.
    pub controller_gaps: ControllerGaps,
    /// Restart of the killed node → it registered again (a new broker epoch), the cluster is
    /// healthy and every partition has a live leader.
    pub restart_healthy_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PartitionsReport {
    pub nodes: usize,
    pub replication_factor: u32,
    pub topic_size: u32,
    /// Requested length of each CPU sample, seconds.
    pub idle_secs: u64,
    /// Clock ticks per second assumed for /proc/<pid>/stat.
    pub clock_ticks_per_sec: u64,
    pub steps: Vec<StepReport>,
    pub fresh_topic: Option<FreshTopicReport>,
    pub kill: Option<KillReport>,
    /// Over every step's creation and the kill.
    pub controller_gaps: ControllerGaps,
    /// The error that stopped the run, if one did.
    pub errors: Vec<String>,
    pub seconds: f64,
    /// Where data and node logs were kept, if they were.
    pub kept_dir: Option<String>,
}

// -------------------------------------------------------------------------------------------
// Pure pieces
// -------------------------------------------------------------------------------------------

/// The sizes of the topics that take the cluster from `current` to `target` partitions: as many
/// of `topic_size` as fit, then one with the rest.
pub fn topic_sizes(current: u32, target: u32, topic_size: u32) -> anyhow::Result<Vec<u32>> {
    anyhow::ensure!(topic_size > 0, "--topic-size must be positive");
    anyhow::ensure!(
        target >= current,
        "--steps must not decrease: the cluster already has {current} partitions, the next step asks for {target}"
    );
    let mut left = target - current;
    let mut sizes = Vec::new();
    while left > 0 {
        let n = left.min(topic_size);
        sizes.push(n);
        left -= n;
    }
    Ok(sizes)
}

/// utime + stime (fields 14 and 15 of proc(5)) from the text of /proc/<pid>/stat, in clock
/// ticks. The command name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so the fields are counted from the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS from the text of /proc/<pid>/status, KiB (the kernel writes it as `VmRSS:  1234 kB`).
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let value = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value)
}

/// CPU use in percent of one core: `ticks` clock ticks of CPU time over `elapsed`.
fn cpu_percent(ticks: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    ticks as f64 / CLOCK_TICKS_PER_SEC as f64 / secs * 100.0
}

/// One controller poll: when, and the controller it found (if any).
#[derive(Debug, Clone, Copy)]
struct ControllerPoll {
    at: Instant,
    controller: Option<u64>,
}

/// Counts the polls without a controller and the longest stretch of them; a stretch still open
/// at the last poll lasts until `end`.
fn gap_stats(polls: &[ControllerPoll], end: Instant) -> ControllerGaps {
    let mut g = ControllerGaps { polls: polls.len() as u64, ..ControllerGaps::default() };
    let mut gap_start: Option<Instant> = None;
    let mut last: Option<u64> = None;
    for p in polls {
        match p.controller {
            None => {
                g.count += 1;
                gap_start.get_or_insert(p.at);
            }
            Some(c) => {
                if let Some(s) = gap_start.take() {
                    g.longest_ms = g.longest_ms.max(ms(p.at.saturating_duration_since(s)));
                }
                if last.is_some_and(|l| l != c) {
                    g.changes += 1;
                }
                last = Some(c);
            }
        }
    }
    if let Some(s) = gap_start {
        g.longest_ms = g.longest_ms.max(ms(end.saturating_duration_since(s)));
    }
    g
}

/// Memory per replica added since the first step, KiB; `None` when no replica was added.
fn mem_per_replica_kib(rss_kib: f64, replicas: u64, base_rss_kib: f64, base_replicas: u64) -> Option<f64> {
    (replicas > base_replicas).then(|| (rss_kib - base_rss_kib) / (replicas - base_replicas) as f64)
}

// -------------------------------------------------------------------------------------------
// Text output
// -------------------------------------------------------------------------------------------

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn fmt_produce(p: &ProduceSample) -> String {
    format!(
        "{} ({} partitions): {} records, {:.0} records/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
        p.topic, p.partitions, p.records, p.records_per_sec, p.latency_ms_p50, p.latency_ms_p99, p.errors
    )
}

fn fmt_gaps(g: &ControllerGaps) -> String {
    format!(
        "{} of {} polls without a controller, longest {:.0} ms, {} controller change(s)",
        g.count, g.polls, g.longest_ms, g.changes
    )
}

/// The human-readable report.
pub fn render_text(r: &PartitionsReport) -> String {
    let mut out = format!(
        "partitions: {} nodes, RF {}, topics of up to {} partitions, idle CPU sampled over {} s \
         ({} clock ticks/s assumed), {:.1} s in all\n",
        r.nodes, r.replication_factor, r.topic_size, r.idle_secs, r.clock_ticks_per_sec, r.seconds
    );
    let per_node = |s: &StepReport, f: fn(&NodeUsage) -> f64| {
        s.nodes.iter().map(|n| format!("{:.1}", f(n))).collect::<Vec<_>>().join("/")
    };
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.partitions.to_string(),
                s.replicas.to_string(),
                fmt_opt(s.created_ms, 0),
                fmt_opt(s.settled_ms, 0),
                format!("{:.1}", s.cpu_percent),
                per_node(s, |n| n.cpu_percent),
                format!("{:.0}", s.rss_mib),
                per_node(s, |n| n.rss_mib),
                fmt_opt(s.mem_per_replica_kib, 1),
                format!("{}/{}", s.controller_gaps.count, s.controller_gaps.polls),
                format!("{:.0}", s.controller_gaps.longest_ms),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let ids = r.steps.first().map(|s| s.nodes.iter().map(|n| n.node.to_string()).collect::<Vec<_>>().join("/"));
        let cpu_nodes = format!("CPU%_NODE_{}", ids.clone().unwrap_or_default());
        let rss_nodes = format!("RSS_MIB_NODE_{}", ids.unwrap_or_default());
        out.push_str(&crate::output::table(
            &[
                "PARTITIONS",
                "REPLICAS",
                "CREATED_MS",
                "SETTLED_MS",
                "CPU%",
                &cpu_nodes,
                "RSS_MIB",
                &rss_nodes,
                "KIB/REPLICA",
                "CTRL_GAPS",
                "LONGEST_GAP_MS",
            ],
            &rows,
        ));
    }
    for st in &r.steps {
        for p in &st.produce {
            out.push_str(&format!("produce beside {} idle partitions: {}\n", st.partitions, fmt_produce(p)));
        }
    }
    if let Some(f) = &r.fresh_topic {
        out.push_str(&format!(
            "topic of {} partitions created right after: create -> first write acknowledged, per partition: {}; {} failed{}\n",
            f.partitions,
            fmt_percentiles(f.first_write.as_ref()),
            f.first_write_failed,
            f.first_error.as_ref().map_or_else(String::new, |e| format!(" (first: {e})"))
        ));
        if let Some(p) = &f.produce {
            out.push_str(&format!("then produce into it: {}\n", fmt_produce(p)));
        }
    }
    if let Some(k) = &r.kill {
        out.push_str(&format!(
            "kill -9 node {} (controller: {}): it led {} partitions; {} got a new leader, {} did not in time\n",
            k.node,
            crate::output::opt_id(k.controller),
            k.partitions_led,
            k.moved,
            k.never_moved
        ));
        out.push_str(&format!(
            "kill -> new leader in metadata, per partition: {}\n",
            fmt_percentiles(k.failover.as_ref())
        ));
        out.push_str(&format!("controller during the kill: {}\n", fmt_gaps(&k.controller_gaps)));
        out.push_str(&format!("restart -> healthy: {} ms\n", fmt_opt(k.restart_healthy_ms, 0)));
    }
    out.push_str(&format!("controller overall: {}\n", fmt_gaps(&r.controller_gaps)));
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if let Some(d) = &r.kept_dir {
        out.push_str(&format!("data and node logs kept in {d}\n"));
    }
    out
}

// -------------------------------------------------------------------------------------------
// Observing the cluster
// -------------------------------------------------------------------------------------------

/// Polls every node for the controller in the background until stopped. The task is aborted if
/// the watch is dropped without `stop` (the run was cut short).
struct ControllerWatch {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Vec<ControllerPoll>>>,
}

impl Drop for ControllerWatch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl ControllerWatch {
    fn start(rpcs: Vec<RunnelClient<Channel>>) -> ControllerWatch {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut polls = Vec::new();
            let mut tick = tokio::time::interval(CONTROLLER_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let at = Instant::now();
                let controller = known_controller(&rpcs).await;
                polls.push(ControllerPoll { at, controller });
            }
            polls
        });
        ControllerWatch { stop, task: Some(task) }
    }

    async fn stop(mut self) -> anyhow::Result<ControllerGaps> {
        let end = Instant::now();
        self.stop.send_replace(true);
        let task = self.task.take().context("the controller watch was already stopped")?;
        let polls = task.await.context("the controller watch task failed")?;
        Ok(gap_stats(&polls, end))
    }
}

/// Asks every node at once which node is the controller. Known: some node names a controller
/// that itself answered this poll (so a dead controller that others still name does not count).
async fn known_controller(rpcs: &[RunnelClient<Channel>]) -> Option<u64> {
    let answers = futures::future::join_all(rpcs.iter().map(|rpc| async move {
        let mut c = rpc.clone();
        let req = MetadataRequest { topics: vec![NO_SUCH_TOPIC.to_string()] };
        let resp = tokio::time::timeout(RPC_TIMEOUT, c.metadata(req)).await.ok()?.ok()?.into_inner();
        Some((resp.node_id, resp.controller_id))
    }))
    .await;
    let answered: Vec<(u64, Option<u64>)> = answers.into_iter().flatten().collect();
    answered.iter().filter_map(|(_, c)| *c).find(|c| answered.iter().any(|(n, _)| n == c))
}

/// The full metadata from the first running node that answers.
async fn any_metadata(cluster: &LocalCluster) -> Option<MetadataResponse> {
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !cluster.is_running(i) {
            continue;
        }
        if let Some(m) = metadata(&node.rpc).await {
            if m.error.is_none() {
                return Some(m);
            }
        }
    }
    None
}

/// Why the cluster is not settled yet (`None`: it is): asks a running node for ClusterHealth
/// and, once that is healthy, counts `expected` partitions and (given `rejoined`: node, broker
/// epoch) names that node alive in a later broker epoch, for the full metadata to check that
/// every partition names a live leader. Health first, because its answer is small when the
/// cluster is healthy, while the metadata lists every partition.
async fn unsettled(cluster: &LocalCluster, expected: u64, rejoined: Option<(u64, u64)>) -> Option<String> {
    let mut last = "no node answered ClusterHealth".to_string();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !cluster.is_running(i) {
            continue;
        }
        let mut c = node.rpc.clone();
        let health = match tokio::time::timeout(RPC_TIMEOUT, c.cluster_health(ClusterHealthRequest {})).await {
            Ok(Ok(h)) => h.into_inner(),
            Ok(Err(e)) => {
                last = format!("node {}: ClusterHealth failed: {}", node.id, e.message());
                continue;
            }
            Err(_) => {
                last = format!("node {}: ClusterHealth timed out", node.id);
                continue;
            }
        };
        if let Some(e) = &health.error {
            last = format!("node {}: ClusterHealth: {}", node.id, e.message);
            continue;
        }
        if u64::from(health.partitions) < expected {
            return Some(format!("node {} knows {} of {expected} partitions", node.id, health.partitions));
        }
        if !health.healthy {
            let example = health.problems.first().map_or_else(
                || "no controller known".to_string(),
                |p| format!("e.g. {}/{} {}: {}", p.topic, p.partition, p.kind, p.reason),
            );
            return Some(format!("node {}: not healthy, {} problem(s), {example}", node.id, health.problems.len()));
        }
        // A node restarted before its broker session expired still counts as alive under its old
        // epoch: health alone would pass before the new process has even started.
        if let Some((id, old_epoch)) = rejoined {
            if !health.brokers.iter().any(|b| b.id == id && b.alive && b.epoch > old_epoch) {
                return Some(format!("node {id} has not registered again (broker epoch > {old_epoch})"));
            }
        }
        let Some(m) = metadata(&node.rpc).await else {
            last = format!("node {}: Metadata did not answer", node.id);
            continue;
        };
        return leaderless(&m, expected);
    }
    Some(last)
}

/// Checks the metadata: `expected` partitions in this benchmark's topics, and a live leader for
/// every partition of the cluster. `None` when both hold, else what does not.
fn leaderless(m: &MetadataResponse, expected: u64) -> Option<String> {
    let ours: u64 =
        m.topics.iter().filter(|t| t.name.starts_with(TOPIC_PREFIX)).map(|t| t.partitions.len() as u64).sum();
    if ours < expected {
        return Some(format!("node {}'s metadata lists {ours} of {expected} partitions", m.node_id));
    }
    let alive = |id: u64| m.brokers.iter().any(|b| b.id == id && b.alive);
    let mut missing = 0u64;
    let mut example = None;
    for t in &m.topics {
        for p in &t.partitions {
            if !p.leader.is_some_and(alive) {
                missing += 1;
                example.get_or_insert_with(|| format!("{}/{}", t.name, p.partition));
            }
        }
    }
    example.map(|e| format!("node {}'s metadata: {missing} partition(s) without a live leader, e.g. {e}", m.node_id))
}

/// How long the metadata's leaders must stay unchanged to count as settled.
const STILL_FOR: Duration = Duration::from_secs(5);
/// Longest wait for that.
const STILL_WITHIN: Duration = Duration::from_secs(180);

/// Waits until no partition's (leader, epoch) changed in the metadata for [`STILL_FOR`] (at most
/// [`STILL_WITHIN`]); returns the time since `from`.
async fn wait_leaders_still(cluster: &LocalCluster, from: Instant) -> Duration {
    let started = Instant::now();
    let mut last: Option<Vec<(Option<u64>, u64)>> = None;
    let mut still_since = Instant::now();
    while started.elapsed() < STILL_WITHIN {
        if let Some(m) = any_metadata(cluster).await {
            let now: Vec<(Option<u64>, u64)> =
                m.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (p.leader, p.leader_epoch))).collect();
            if last.as_ref() != Some(&now) {
                last = Some(now);
                still_since = Instant::now();
            } else if still_since.elapsed() >= STILL_FOR {
                return still_since.duration_since(from);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    from.elapsed()
}

/// Waits until [`unsettled`] finds nothing, failing at `deadline` with what was still missing.
async fn wait_settled(
    cluster: &mut LocalCluster,
    expected: u64,
    rejoined: Option<(u64, u64)>,
    deadline: Instant,
    what: &str,
) -> anyhow::Result<()> {
    loop {
        cluster.check_children()?;
        let Some(why) = unsettled(cluster, expected, rejoined).await else { return Ok(()) };
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not done by the deadline: {why}; logs in {}",
            cluster.log_dir()
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Each running node's CPU use over `window` and its resident memory at the end of it.
async fn sample_idle(cluster: &mut LocalCluster, window: Duration) -> anyhow::Result<(Vec<NodeUsage>, Duration)> {
    cluster.check_children()?;
    let read_ticks = |id: u64, pid: u32| -> anyhow::Result<u64> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("node {id}: reading {path}"))?;
        parse_stat_cpu_ticks(&text).with_context(|| format!("node {id}: no utime/stime in {path}: {text:?}"))
    };
    let mut first = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        if let Some(pid) = cluster.pid(i) {
            first.push((n.id, pid, read_ticks(n.id, pid)?));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    // A node that died during the sample would make its numbers meaningless (and its pid may
    // belong to another process by now).
    cluster.check_children()?;
    // Reading the files takes microseconds: one end time serves every node.
    let elapsed = started.elapsed();
    let mut usage = Vec::new();
    for (id, pid, t0) in first {
        let t1 = read_ticks(id, pid)?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("node {id}: reading {path}"))?;
        let rss = parse_vm_rss_kib(&status).with_context(|| format!("node {id}: no VmRSS line in {path}"))?;
        usage.push(NodeUsage {
            node: id,
            cpu_percent: cpu_percent(t1.saturating_sub(t0), elapsed),
            rss_mib: rss as f64 / 1024.0,
        });
    }
    Ok((usage, elapsed))
}

// -------------------------------------------------------------------------------------------
// The benchmark
// -------------------------------------------------------------------------------------------

/// Progress lines on stderr (none with --quiet).
struct Progress {
    quiet: bool,
    started: Instant,
}

impl Progress {
    fn say(&self, msg: &str) {
        if !self.quiet {
            eprintln!("[{:7.1} s] {msg}", self.started.elapsed().as_secs_f64());
        }
    }
}

/// `runnel bench partitions`: runs the benchmark and prints the report, also when the run was
/// cut short (an error, Ctrl-C); fails if it was, or if a partition of the killed node found no
/// new leader in time.
pub async fn run(b: &PartitionsBench, output: OutputFormat) -> anyhow::Result<()> {
    let (report, stopped) = partitions(b).await?;
    match output {
        OutputFormat::Json => crate::output::print_json(&serde_json::to_value(&report)?)?,
        OutputFormat::Text => crate::output::print(&render_text(&report))?,
    }
    match (stopped, &report.kill) {
        (Some(e), _) => Err(e),
        (None, Some(k)) if k.never_moved > 0 => anyhow::bail!(
            "{} of the {} partitions node {} led got no new leader within {} s",
            k.never_moved,
            k.partitions_led,
            k.node,
            b.timeout_secs
        ),
        _ => Ok(()),
    }
}

fn validate(b: &PartitionsBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.nodes == 3 || b.nodes == 5, "--nodes must be 3 or 5 (every node is a metadata voter)");
    anyhow::ensure!(
        b.replication_factor >= 1 && b.replication_factor as usize <= b.nodes,
        "--replication-factor must be between 1 and --nodes ({})",
        b.nodes
    );
    anyhow::ensure!(
        !b.kill || b.replication_factor >= 3,
        "--kill needs --replication-factor 3 or more: the partitions of the killed node must keep a quorum"
    );
    anyhow::ensure!(!b.steps.is_empty(), "--steps must name at least one partition count");
    anyhow::ensure!(b.idle_secs > 0 && b.timeout_secs > 0, "--idle-secs and --timeout-secs must be positive");
    anyhow::ensure!(
        b.produce_records == 0 || (b.produce_partitions > 0 && b.produce_runs > 0),
        "--produce-partitions and --produce-runs must be positive when --produce-records is set"
    );
    let mut current = 0;
    for s in &b.steps {
        topic_sizes(current, *s, b.topic_size)?;
        current = *s;
    }
    Ok(())
}

/// Runs the benchmark. Returns the report, and the error that cut the run short if one did (the
/// report then covers the steps done so far).
pub async fn partitions(b: &PartitionsBench) -> anyhow::Result<(PartitionsReport, Option<anyhow::Error>)> {
    validate(b)?;
    let env = b.node.env()?;
    let started = Instant::now();
    let progress = Progress { quiet: b.quiet, started };
    progress.say(&format!("starting {} nodes", b.nodes));
    let mut cluster = LocalCluster::start(b.nodes, "partitions", env)?;
    let mut steps = Vec::new();
    let mut fresh_topic = None;
    let mut kill = None;
    let outcome = {
        let run = run_steps(b, &mut cluster, &progress, &mut steps, &mut fresh_topic, &mut kill);
        tokio::select! {
            r = run => r,
            s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}")),
        }
    };
    let kept_dir = if b.keep_dir || outcome.is_err() { cluster.keep_dir() } else { None };
    drop(cluster);
    let mut controller_gaps = ControllerGaps::default();
    for s in &steps {
        controller_gaps.merge(&s.controller_gaps);
    }
    if let Some(k) = &kill {
        controller_gaps.merge(&k.controller_gaps);
    }
    let report = PartitionsReport {
        nodes: b.nodes,
        replication_factor: b.replication_factor,
        topic_size: b.topic_size,
        idle_secs: b.idle_secs,
        clock_ticks_per_sec: CLOCK_TICKS_PER_SEC,
        steps,
        fresh_topic,
        kill,
        controller_gaps,
        errors: outcome.as_ref().err().map(|e| format!("{e:#}")).into_iter().collect(),
        seconds: started.elapsed().as_secs_f64(),
        kept_dir: kept_dir.map(|d| d.display().to_string()),
    };
    Ok((report, outcome.err()))
}

async fn run_steps(
    b: &PartitionsBench,
    cluster: &mut LocalCluster,
    progress: &Progress,
    steps: &mut Vec<StepReport>,
    fresh_topic: &mut Option<FreshTopicReport>,
    kill: &mut Option<KillReport>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(b.timeout_secs);
    cluster.wait_ready(timeout.max(Duration::from_secs(60))).await?;
    let defaults = RetryPolicy::default();
    let config = ClientConfig {
        // Creating a topic of thousands of partitions on a busy machine may take longer than the
        // client's default 5 s per request.
        request_timeout: Duration::from_secs(30),
        retry: RetryPolicy { max_attempts: u32::MAX, max_elapsed: timeout, ..defaults },
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&cluster.addrs(), config).await.context("connecting to the local cluster")?;
    let rpcs: Vec<RunnelClient<Channel>> = cluster.nodes.iter().map(|n| n.rpc.clone()).collect();

    let mut total = 0u32;
    let mut next_topic = 0u32;
    let mut baseline: Option<(u64, f64)> = None;
    for (i, &target) in b.steps.iter().enumerate() {
        let sizes = topic_sizes(total, target, b.topic_size)?;
        let replicas = u64::from(target) * u64::from(b.replication_factor);
        progress.say(&format!(
            "step {}/{}: {target} partitions ({replicas} replicas): creating {} topic(s)",
            i + 1,
            b.steps.len(),
            sizes.len()
        ));
        let watch = ControllerWatch::start(rpcs.clone());
        let created_from = Instant::now();
        for size in &sizes {
            let name = format!("{TOPIC_PREFIX}{next_topic:05}");
            next_topic += 1;
            match client.create_topic(&name, *size, b.replication_factor, Default::default()).await {
                Ok(_) => {}
                // The client retried a create whose first answer was lost: it did happen.
                Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
                Err(e) => return Err(e).with_context(|| format!("creating topic '{name}' ({size} partitions)")),
            }
        }
        wait_settled(cluster, u64::from(target), None, created_from + timeout, &format!("step to {target} partitions"))
            .await?;
        let created = created_from.elapsed();
        let controller_gaps = watch.stop().await?;
        total = target;
        let what = if sizes.is_empty() {
            "nothing to create, cluster healthy".to_string()
        } else {
            format!("every partition has a live leader, cluster healthy after {:.0} ms", ms(created))
        };
        progress.say(&format!(
            "step {}/{}: {what}; settling {} s, sampling CPU for {} s",
            i + 1,
            b.steps.len(),
            SETTLE.as_secs(),
            b.idle_secs
        ));
        tokio::time::sleep(SETTLE).await;
        // "Idle" means nothing moves: leaders balanced back to preferred replicas (a few dozen
        // transfers per second per node) would otherwise be sampled as idle cost.
        let settled = if sizes.is_empty() { None } else { Some(wait_leaders_still(cluster, created_from).await) };
        let (nodes, elapsed) = sample_idle(cluster, Duration::from_secs(b.idle_secs)).await?;
        let cpu: f64 = nodes.iter().map(|n| n.cpu_percent).sum();
        let rss_mib: f64 = nodes.iter().map(|n| n.rss_mib).sum();
        let (base_replicas, base_rss_mib) = *baseline.get_or_insert((replicas, rss_mib));
        let per_replica = mem_per_replica_kib(rss_mib * 1024.0, replicas, base_rss_mib * 1024.0, base_replicas);
        progress.say(&format!(
            "step {}/{}: idle CPU {cpu:.1}% of a core, RSS {rss_mib:.0} MiB{}",
            i + 1,
            b.steps.len(),
            per_replica.map_or_else(String::new, |k| format!(", {k:.1} KiB per replica"))
        ));
        let mut produce = Vec::new();
        for run in 0..if b.produce_records > 0 { b.produce_runs } else { 0 } {
            let topic = format!("{LOAD_TOPIC_PREFIX}{i:02}-{run}");
            progress.say(&format!(
                "step {}/{}: producing {} records into {topic}",
                i + 1,
                b.steps.len(),
                b.produce_records
            ));
            let sample = produce_run(cluster, &topic, b.produce_partitions, b.produce_records).await?;
            progress.say(&format!("step {}/{}: {}", i + 1, b.steps.len(), fmt_produce(&sample)));
            produce.push(sample);
        }
        steps.push(StepReport {
            partitions: target,
            replicas,
            topics_created: sizes.len() as u32,
            created_ms: (!sizes.is_empty()).then(|| ms(created)),
            settled_ms: settled.map(ms),
            idle_secs: elapsed.as_secs_f64(),
            cpu_percent: cpu,
            rss_mib,
            mem_per_replica_kib: per_replica,
            nodes,
            controller_gaps,
            produce,
        });
    }
    if b.produce_records > 0 && b.fresh_topic_partitions > 0 {
        progress
            .say(&format!("creating a topic of {} partitions right after the produce run", b.fresh_topic_partitions));
        let report = fresh_topic_run(cluster, b.fresh_topic_partitions, b.produce_records).await?;
        progress.say(&format!(
            "fresh topic: first write per partition {}; {} failed",
            fmt_percentiles(report.first_write.as_ref()),
            report.first_write_failed
        ));
        *fresh_topic = Some(report);
        // Its elections and balancing are not part of the kill's measurement.
        wait_settled(cluster, u64::from(total), None, Instant::now() + timeout, "the fresh topic").await?;
    }
    if b.kill {
        kill_phase(b, cluster, progress, &rpcs, u64::from(total), kill).await?;
    }
    Ok(())
}

/// Topics of the produce runs are named `load-<step>-<run>`, the one created
/// right after the last run `fresh`.
const LOAD_TOPIC_PREFIX: &str = "load-";
const FRESH_TOPIC: &str = "fresh";

/// A client as users get it (default timeouts and retries): what the produce runs measure.
async fn user_client(cluster: &LocalCluster) -> anyhow::Result<Client> {
    Client::connect_with(&cluster.addrs(), ClientConfig::default()).await.context("connecting to the local cluster")
}

/// One flat-out produce run into a new topic (see `--produce-records`).
async fn produce_run(
    cluster: &LocalCluster,
    topic: &str,
    partitions: u32,
    records: u64,
) -> anyhow::Result<ProduceSample> {
    let client = user_client(cluster).await?;
    let b = crate::bench::ProduceBench {
        topic: topic.to_string(),
        records,
        record_size: 100,
        mode: "producer".into(),
        batch: 100,
        in_flight: None,
        batch_bytes: 1024 * 1024,
        linger_ms: 5,
        compression: "none".into(),
        producers: 1,
        no_idempotence: false,
        keyed: false,
        rate: 0,
        partitions,
        replication_factor: 3,
        acks: "all".into(),
        quiet: true,
    };
    let r = crate::bench::produce(&client, &b).await.with_context(|| format!("producing into '{topic}'"))?;
    Ok(ProduceSample {
        topic: topic.to_string(),
        partitions,
        records: r.records,
        records_per_sec: r.records_per_sec,
        latency_ms_p50: r.latency_ms_p50,
        latency_ms_p99: r.latency_ms_p99,
        errors: r.errors,
    })
}

/// Creates a topic of `partitions` and writes one record to each partition at once, timing
/// create -> acknowledged per partition with the SDK's default retries; then a produce run into it.
async fn fresh_topic_run(cluster: &LocalCluster, partitions: u32, records: u64) -> anyhow::Result<FreshTopicReport> {
    let client = user_client(cluster).await?;
    let created_from = Instant::now();
    client
        .create_topic(FRESH_TOPIC, partitions, 3, Default::default())
        .await
        .with_context(|| format!("creating topic '{FRESH_TOPIC}'"))?;
    let writes = (0..partitions).map(|p| {
        let client = client.clone();
        async move {
            let record = runnel_proto::v1::Record {
                value: format!("first write to {p}").into_bytes().into(),
                ..Default::default()
            };
            client
                .produce(FRESH_TOPIC, p, vec![record], runnel_proto::v1::Acks::All)
                .await
                .map(|_| created_from.elapsed())
                .map_err(|e| format!("{FRESH_TOPIC}/{p}: {e}"))
        }
    });
    let results = futures::future::join_all(writes).await;
    let took: Vec<Duration> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let produce = produce_run(cluster, FRESH_TOPIC, partitions, records).await?;
    Ok(FreshTopicReport {
        topic: FRESH_TOPIC.to_string(),
        partitions,
        first_write: percentiles(&took),
        first_write_failed: failed.len() as u64,
        first_error: failed.first().map(|e| e.to_string()),
        produce: Some(produce),
    })
}

/// Kills a node that is not the controller, times each of its partitions' failover, restarts it
/// and waits for the cluster to be healthy. `report` is filled in as the phase goes, so a
/// failure in the restart still reports the failover.
async fn kill_phase(
    b: &PartitionsBench,
    cluster: &mut LocalCluster,
    progress: &Progress,
    rpcs: &[RunnelClient<Channel>],
    total: u64,
    report: &mut Option<KillReport>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(b.timeout_secs);
    let watch = ControllerWatch::start(rpcs.to_vec());

    // The victim: the non-controller that leads the most partitions (the most failovers to
    // time), chosen from the controller's own view of the metadata when it can be had.
    let deadline = Instant::now() + timeout;
    let (m, controller) = loop {
        cluster.check_children()?;
        let controller = known_controller(rpcs).await;
        let from_controller = match controller.and_then(|c| cluster.index_of(c)) {
            Some(i) => metadata(&cluster.nodes[i].rpc).await,
            None => None,
        };
        if let (Some(c), Some(m)) = (controller, from_controller) {
            break (m, c);
        }
        anyhow::ensure!(Instant::now() < deadline, "no controller known within {timeout:?} before the kill");
        tokio::time::sleep(CONTROLLER_POLL).await;
    };
    let led_by = |id: u64| -> Vec<((String, u32), u64)> {
        m.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter(|(_, p)| p.leader == Some(id))
            .map(|(t, p)| ((t.name.clone(), p.partition), p.leader_epoch))
            .collect()
    };
    let victim = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| n.id != controller && cluster.is_running(*i))
        .max_by_key(|(_, n)| led_by(n.id).len())
        .map(|(i, n)| (i, n.id))
        .context("no running node other than the controller to kill")?;
    let (index, node) = victim;
    let led: HashMap<(String, u32), u64> = led_by(node).into_iter().collect();
    let broker_epoch = m.brokers.iter().find(|b| b.id == node).map_or(0, |b| b.epoch);
    progress
        .say(&format!("kill -9 node {node} (the controller is node {controller}); it leads {} partitions", led.len()));

    let killed_at = cluster.kill9(index)?;
    let kill_deadline = killed_at + timeout;
    let mut pending = led.clone();
    let mut times: Vec<Duration> = Vec::new();
    while !pending.is_empty() && Instant::now() < kill_deadline {
        cluster.check_children()?;
        if let Some(m) = any_metadata(cluster).await {
            let elapsed = killed_at.elapsed();
            let alive = |id: u64| m.brokers.iter().any(|b| b.id == id && b.alive);
            for t in &m.topics {
                for p in &t.partitions {
                    let key = (t.name.clone(), p.partition);
                    let Some(old_epoch) = pending.get(&key) else { continue };
                    let moved = p.leader.is_some_and(|l| {
                        l != node && alive(l) && cluster.index_of(l).is_some_and(|i| cluster.is_running(i))
                    });
                    if moved && p.leader_epoch > *old_epoch {
                        pending.remove(&key);
                        times.push(elapsed);
                    }
                }
            }
        }
        tokio::time::sleep(FAILOVER_POLL).await;
    }
    let failover = percentiles(&times);
    progress.say(&format!(
        "{} of {} partitions got a new leader ({}); {} did not in time",
        times.len(),
        led.len(),
        fmt_percentiles(failover.as_ref()),
        pending.len()
    ));
    if !pending.is_empty() {
        // Name a few, with what the metadata says now, for whoever investigates.
        let now = any_metadata(cluster).await;
        for ((topic, partition), epoch) in pending.iter().take(5) {
            let current = now.as_ref().and_then(|m| {
                m.topics
                    .iter()
                    .find(|t| t.name == *topic)?
                    .partitions
                    .iter()
                    .find(|p| p.partition == *partition)
                    .cloned()
            });
            eprintln!(
                "not moved: {topic}/{partition} (led by node {node} at epoch {epoch}); metadata now: leader {:?} epoch {:?}",
                current.as_ref().and_then(|p| p.leader),
                current.as_ref().map(|p| p.leader_epoch)
            );
        }
        // And what each surviving replica's Raft says about them: the metadata only mirrors
        // what leaders report, the replicas tell why no election happened.
        for (i, n) in cluster.nodes.iter().enumerate() {
            if !cluster.is_running(i) {
                continue;
            }
            let mut c = n.rpc.clone();
            let Ok(Ok(resp)) =
                tokio::time::timeout(RPC_TIMEOUT, c.describe_replicas(DescribeReplicasRequest::default())).await
            else {
                eprintln!("node {}: no answer to DescribeReplicas", n.id);
                continue;
            };
            for r in resp
                .into_inner()
                .replicas
                .iter()
                .filter(|r| pending.contains_key(&(r.topic.clone(), r.partition)))
                .take(5)
            {
                eprintln!(
                    "node {}: {}/{} group {} role {} term {} leader {:?} last log {} committed {} replicas {:?}",
                    n.id,
                    r.topic,
                    r.partition,
                    r.group_id,
                    r.role,
                    r.term,
                    r.leader,
                    r.last_log_index,
                    r.committed_index,
                    r.replicas
                );
            }
        }
    }
    *report = Some(KillReport {
        node,
        controller: Some(controller),
        partitions_led: led.len() as u64,
        moved: times.len() as u64,
        never_moved: pending.len() as u64,
        failover,
        controller_gaps: ControllerGaps::default(),
        restart_healthy_ms: None,
    });

    progress.say(&format!("restarting node {node}"));
    let restarted_at = Instant::now();
    cluster.spawn(index, "restarted after the kill")?;
    let healthy = wait_settled(
        cluster,
        total,
        Some((node, broker_epoch)),
        restarted_at + timeout,
        &format!("recovery after restarting node {node}"),
    )
    .await;
    let restart_healthy = restarted_at.elapsed();
    let gaps = watch.stop().await?;
    if let Some(r) = report.as_mut() {
        r.controller_gaps = gaps;
        r.restart_healthy_ms = healthy.is_ok().then(|| ms(restart_healthy));
    }
    healthy?;
    progress.say(&format!("cluster healthy again {:.0} ms after the restart", ms(restart_healthy)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_split_into_topics_of_at_most_topic_size() {
        assert_eq!(topic_sizes(0, 0, 1000).unwrap(), Vec::<u32>::new());
        assert_eq!(topic_sizes(0, 1000, 1000).unwrap(), vec![1000]);
        assert_eq!(topic_sizes(1000, 5000, 1000).unwrap(), vec![1000; 4]);
        assert_eq!(topic_sizes(0, 250, 100).unwrap(), vec![100, 100, 50]);
        assert_eq!(topic_sizes(200, 200, 100).unwrap(), Vec::<u32>::new());
        assert!(topic_sizes(500, 100, 100).unwrap_err().to_string().contains("must not decrease"));
        assert!(topic_sizes(0, 10, 0).is_err());
    }

    #[test]
    fn cpu_ticks_from_proc_stat() {
        // A real line of /proc/<pid>/stat, utime 1523 and stime 411 (fields 14 and 15).
        let line = "12345 (runnel) S 1 12345 12345 0 -1 4194560 5000 0 0 0 1523 411 0 0 20 0 37 0 \
                    98765 2147483648 40000 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(1934));
        // A command name with spaces and parentheses does not shift the fields.
        let odd = line.replace("(runnel)", "(run (x) nel)");
        assert_eq!(parse_stat_cpu_ticks(&odd), Some(1934));
        assert_eq!(parse_stat_cpu_ticks("12345 (runnel) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        // 200 ticks (2 s of CPU) over 10 s is 20% of one core.
        assert!((cpu_percent(200, Duration::from_secs(10)) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn rss_from_proc_status() {
        let status = "Name:\trunnel\nVmPeak:\t  900000 kB\nVmRSS:\t  123456 kB\nRssAnon:\t  100000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(123_456));
        assert_eq!(parse_vm_rss_kib("Name:\trunnel\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t 12 MB\n"), None);
    }

    #[test]
    fn memory_per_replica_is_relative_to_the_first_step() {
        assert_eq!(mem_per_replica_kib(1000.0, 0, 1000.0, 0), None);
        // 3000 replicas added 30 000 KiB: 10 KiB each.
        assert_eq!(mem_per_replica_kib(31_000.0, 3000, 1000.0, 0), Some(10.0));
        assert_eq!(mem_per_replica_kib(31_000.0, 6000, 1000.0, 3000), Some(10.0));
    }

    #[test]
    fn controller_gaps_count_polls_and_the_longest_stretch() {
        let t0 = Instant::now();
        let at = |ms: u64, c: Option<u64>| ControllerPoll { at: t0 + Duration::from_millis(ms), controller: c };
        let polls = [
            at(0, Some(1)),
            at(100, None),
            at(200, None),
            at(300, Some(2)),
            at(400, None),
            at(500, Some(2)),
            at(600, None),
        ];
        let g = gap_stats(&polls, t0 + Duration::from_millis(650));
        assert_eq!((g.polls, g.count, g.changes), (7, 4, 1));
        // 100 → 300 ms is the longest; the open gap at the end lasts 600 → 650 ms.
        assert!((g.longest_ms - 200.0).abs() < 1e-6, "{g:?}");
        let none = gap_stats(&[], t0);
        assert_eq!(none, ControllerGaps::default());
        let open = gap_stats(&[at(0, None)], t0 + Duration::from_millis(400));
        assert!((open.longest_ms - 400.0).abs() < 1e-6, "{open:?}");
    }

    fn step(partitions: u32, created_ms: Option<f64>) -> StepReport {
        StepReport {
            partitions,
            replicas: u64::from(partitions) * 3,
            topics_created: u32::from(created_ms.is_some()),
            created_ms,
            settled_ms: created_ms,
            idle_secs: 20.0,
            cpu_percent: 3.0,
            rss_mib: 300.0,
            mem_per_replica_kib: created_ms.map(|_| 12.5),
            nodes: (1..=3).map(|n| NodeUsage { node: n, cpu_percent: 1.0, rss_mib: 100.0 }).collect(),
            controller_gaps: ControllerGaps { polls: 10, count: 2, longest_ms: 200.0, changes: 0 },
            produce: Vec::from_iter(created_ms.map(|_| ProduceSample {
                topic: "load-01".into(),
                partitions: 6,
                records: 1000,
                records_per_sec: 50_000.0,
                latency_ms_p50: 10.0,
                latency_ms_p99: 40.0,
                errors: 0,
            })),
        }
    }

    #[test]
    fn text_and_json_reports() {
        let r = PartitionsReport {
            nodes: 3,
            replication_factor: 3,
            topic_size: 1000,
            idle_secs: 20,
            clock_ticks_per_sec: 100,
            steps: vec![step(0, None), step(1000, Some(4321.0))],
            fresh_topic: Some(FreshTopicReport {
                topic: "fresh".into(),
                partitions: 100,
                first_write: percentiles(&[Duration::from_millis(900)]),
                first_write_failed: 1,
                first_error: Some("fresh/7: NOT_LEADER".into()),
                produce: None,
            }),
            kill: Some(KillReport {
                node: 2,
                controller: Some(1),
                partitions_led: 333,
                moved: 333,
                never_moved: 0,
                failover: percentiles(&[Duration::from_millis(700)]),
                controller_gaps: ControllerGaps::default(),
                restart_healthy_ms: Some(2500.0),
            }),
            controller_gaps: ControllerGaps::default(),
            errors: vec![],
            seconds: 99.0,
            kept_dir: None,
        };
        let text = render_text(&r);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("PARTITIONS"))
            .take(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][5], "CPU%_NODE_1/2/3", "{text}");
        assert_eq!(rows[1], ["0", "0", "-", "-", "3.0", "1.0/1.0/1.0", "300", "100.0/100.0/100.0", "-", "2/10", "200"]);
        assert_eq!(rows[2][..5], ["1000", "3000", "4321", "4321", "3.0"], "{text}");
        assert!(text.contains("kill -9 node 2 (controller: 1): it led 333 partitions; 333 got a new leader"), "{text}");
        assert!(text.contains("per partition: p50 700 ms"), "{text}");
        assert!(text.contains("restart -> healthy: 2500 ms"), "{text}");
        assert!(
            text.contains("produce beside 1000 idle partitions: load-01 (6 partitions): 1000 records, 50000 records/s, p50 10.0 ms, p99 40.0 ms, 0 errors"),
            "{text}"
        );
        assert!(!text.contains("produce beside 0 idle"), "no produce run at that step: {text}");
        assert!(
            text.contains("per partition: p50 900 ms") && text.contains("1 failed (first: fresh/7: NOT_LEADER)"),
            "{text}"
        );

        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["steps"][0]["created_ms"], serde_json::Value::Null);
        assert_eq!(v["steps"][1]["nodes"][2]["node"], 3);
        assert_eq!(v["kill"]["failover"]["count"], 1);
        assert_eq!(v["steps"][1]["controller_gaps"]["longest_ms"], 200.0);
    }

    #[test]
    fn options_are_checked() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let cli = crate::Cli::try_parse_from(["runnel", "bench", "partitions"].iter().chain(args)).unwrap();
            let crate::Command::Bench(b) = cli.command else { panic!("not bench") };
            let crate::BenchKind::Partitions(p) = b.kind else { panic!("not partitions") };
            p
        };
        let d = parse(&[]);
        assert_eq!(d.steps, vec![0, 1000, 5000, 10000]);
        assert_eq!((d.nodes, d.replication_factor, d.topic_size, d.idle_secs, d.timeout_secs), (3, 3, 1000, 20, 300));
        assert!(validate(&d).is_ok());
        assert_eq!((d.produce_records, d.produce_partitions, d.fresh_topic_partitions), (0, 6, 100));
        let p = parse(&["--steps", "0,200", "--topic-size", "100", "--kill", "--node-setting", "raft_heartbeat_ms=40"]);
        assert!(p.kill && validate(&p).is_ok());
        assert!(validate(&parse(&["--steps", "100,50"])).is_err());
        assert!(validate(&parse(&["--nodes", "4"])).is_err());
        assert!(validate(&parse(&["--replication-factor", "1", "--kill"])).is_err());
        assert!(validate(&parse(&["--replication-factor", "1"])).is_ok());
        assert!(validate(&parse(&["--produce-records", "10", "--produce-partitions", "0"])).is_err());
    }
}
