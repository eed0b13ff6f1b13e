//! `runnel bench failover`: starts a local cluster of real `runnel start` processes, keeps
//! acks=all producers writing to one partition, and kills the partition's leader with SIGKILL over
//! and over. For each kill it measures the time from the kill until the next acknowledged write,
//! and on the side when a survivor was elected (DescribeReplicas) and when the committed metadata
//! named it (Metadata RPC), so a slow failover can be attributed. The killed node is restarted on
//! its data and must catch up before the next kill. A benchmark: it measures, it asserts nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use runnel_client::{Acks, Client, ClientConfig, Record, RetryPolicy};
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{DescribeReplicasRequest, ReplicaStatus};
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::local_cluster::{interrupted, metadata, LocalCluster, NodeSettings, POLL, RPC_TIMEOUT};
use crate::OutputFormat;

/// Distinct produce error messages kept for the report.
const ERROR_SAMPLES: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverBench {
    /// Nodes in the local cluster (all metadata voters): 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Times the partition leader is killed (kill -9).
    #[arg(long, default_value_t = 20)]
    pub iterations: u32,
    /// Partitions of the topic; the load and the kills target partition 0.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Replication factor of the topic.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Topic created for the run.
    #[arg(long, default_value = "failover")]
    pub topic: String,
    /// Concurrent producers, each sending one acks=all batch at a time to partition 0.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Longest wait for the first acknowledged write after a kill (and for each other step:
    /// leader known, restarted node caught up) before the iteration counts as failed, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Client retry policy: longest backoff between two attempts (default: the client's).
    #[arg(long)]
    pub retry_max_backoff_ms: Option<u64>,
    /// Settings of the nodes started.
    #[command(flatten)]
    pub node: NodeSettings,
    /// Keep the cluster's directory (data and node logs) after the run; it is always kept when
    /// an iteration failed.
    #[arg(long)]
    pub keep_dir: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// p50/p99/min/max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct KillRecord {
    pub iteration: u32,
    /// The partition leader that was killed.
    pub node: u64,
    /// The killed node was also the controller (metadata leader).
    pub was_controller: bool,
    /// Its leader epoch (Raft term).
    pub leader_epoch: u64,
    /// Kill → first acknowledged write; `None`: none within the timeout.
    pub gap_ms: Option<f64>,
    /// Kill → a survivor reports itself leader of partition 0 in a newer term (DescribeReplicas).
    pub elected_ms: Option<f64>,
    /// Kill → the committed metadata names a new leader in a newer epoch (Metadata RPC).
    pub metadata_ms: Option<f64>,
    /// The node elected in its place, as its replica reported.
    pub new_leader: Option<u64>,
    /// Restart of the killed node → its replica's high watermark reached the leader's.
    pub catch_up_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub nodes: usize,
    pub partitions: u32,
    pub replication_factor: u32,
    pub producers: usize,
    pub batch: usize,
    pub record_size: usize,
    pub iterations: u32,
    pub completed: u32,
    pub failures: u32,
    /// Kill → next acknowledged write.
    pub gap: Option<Percentiles>,
    /// Kill → survivor elected.
    pub elected: Option<Percentiles>,
    /// Kill → new leader in the committed metadata.
    pub metadata: Option<Percentiles>,
    pub records_acked: u64,
    pub produce_errors: u64,
    /// A sample of distinct produce errors (after the client's own retries) and the error that
    /// stopped the run, if any.
    pub errors: Vec<String>,
    pub seconds: f64,
    /// Where data and node logs were kept, if they were.
    pub kept_dir: Option<String>,
    pub kills: Vec<KillRecord>,
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5): construction cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Percentiles of `values` (microsecond resolution, 3 significant digits); `None` when empty.
pub fn percentiles(values: &[Duration]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    let mut h = new_histogram();
    for v in values {
        h.saturating_record((v.as_micros().min(u128::from(u64::MAX)) as u64).max(1));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Percentiles {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        min_ms: ms(h.min()),
        max_ms: ms(h.max()),
    })
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn fmt_percentiles(p: Option<&Percentiles>) -> String {
    match p {
        Some(p) => {
            format!("p50 {:.0} ms  p99 {:.0} ms  min {:.0} ms  max {:.0} ms", p.p50_ms, p.p99_ms, p.min_ms, p.max_ms)
        }
        None => "-".to_string(),
    }
}

fn fmt_opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

/// The human-readable report.
pub fn render_text(r: &FailoverReport) -> String {
    let mut out = format!(
        "failover: {} of {} kills answered ({} failed), {} nodes, {} producer(s) x {} records of {} B, {:.1} s\n",
        r.completed, r.iterations, r.failures, r.nodes, r.producers, r.batch, r.record_size, r.seconds
    );
    out.push_str(&format!("kill -> next acked write:   {}\n", fmt_percentiles(r.gap.as_ref())));
    out.push_str(&format!("kill -> survivor elected:   {}\n", fmt_percentiles(r.elected.as_ref())));
    out.push_str(&format!("kill -> metadata names it:  {}\n", fmt_percentiles(r.metadata.as_ref())));
    out.push_str(&format!("records acknowledged: {}   produce errors: {}\n", r.records_acked, r.produce_errors));
    let rows: Vec<Vec<String>> = r
        .kills
        .iter()
        .map(|k| {
            vec![
                k.iteration.to_string(),
                format!("{}{}", k.node, if k.was_controller { " (controller)" } else { "" }),
                k.leader_epoch.to_string(),
                fmt_opt_ms(k.elected_ms),
                fmt_opt_ms(k.metadata_ms),
                fmt_opt_ms(k.gap_ms),
                crate::output::opt_id(k.new_leader),
                fmt_opt_ms(k.catch_up_ms),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&crate::output::table(
            &["#", "KILLED", "EPOCH", "ELECTED_MS", "METADATA_MS", "ACK_GAP_MS", "NEW_LEADER", "CATCH_UP_MS"],
            &rows,
        ));
    }
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if let Some(d) = &r.kept_dir {
        out.push_str(&format!("data and node logs kept in {d}\n"));
    }
    out
}

// -------------------------------------------------------------------------------------------
// The local cluster
// -------------------------------------------------------------------------------------------

/// What only this benchmark asks of the local cluster: partition 0's leader and replicas.
impl LocalCluster {
    /// The leader of `topic`/0 in an epoch ≥ `min_epoch`, as the committed metadata names it and
    /// its own replica confirms (role leader in that very term).
    async fn steady_leader(&mut self, topic: &str, min_epoch: u64, timeout: Duration) -> anyhow::Result<Leader> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            if let Some(l) = self.try_leader(topic, min_epoch).await {
                return Ok(l);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{topic}/0 had no confirmed leader (epoch >= {min_epoch}) within {timeout:?}; logs in {}",
                self.log_dir()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the running nodes in turn; the first whose metadata names a leader that confirms wins.
    async fn try_leader(&self, topic: &str, min_epoch: u64) -> Option<Leader> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(m) = metadata(&node.rpc).await else { continue };
            let named = m
                .topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition == 0))
                .and_then(|p| Some((p.leader?, p.leader_epoch)));
            let Some((id, epoch)) = named else { continue };
            let Some(index) = self.index_of(id).filter(|i| epoch >= min_epoch && self.is_running(*i)) else {
                continue;
            };
            let Some(r) = replica(&self.nodes[index].rpc, topic).await else { continue };
            if r.role == "leader" && r.term == epoch {
                return Some(Leader {
                    index,
                    id,
                    epoch,
                    controller: m.controller_id,
                    high_watermark: r.high_watermark,
                });
            }
        }
        None
    }

    /// Waits until node `i`'s replica of `topic`/0 has applied up to the leader's high watermark
    /// (as the leader reports it once this wait starts).
    async fn wait_caught_up(&mut self, i: usize, topic: &str, min_epoch: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let leader = self.steady_leader(topic, min_epoch, timeout).await?;
        let target = leader.high_watermark;
        loop {
            self.check_children()?;
            if replica(&self.nodes[i].rpc, topic).await.is_some_and(|r| r.high_watermark >= target) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not catch up to high watermark {target} of {topic}/0 within {timeout:?}; logs in {}",
                self.nodes[i].id,
                self.log_dir()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Leader {
    index: usize,
    id: u64,
    epoch: u64,
    controller: Option<u64>,
    high_watermark: u64,
}

/// This node's replica of `topic`/0, if it hosts one.
async fn replica(rpc: &RunnelClient<Channel>, topic: &str) -> Option<ReplicaStatus> {
    let mut c = rpc.clone();
    let resp =
        tokio::time::timeout(RPC_TIMEOUT, c.describe_replicas(DescribeReplicasRequest::default())).await.ok()?.ok()?;
    resp.into_inner().replicas.into_iter().find(|r| r.topic == topic && r.partition == 0)
}

// -------------------------------------------------------------------------------------------
// Load
// -------------------------------------------------------------------------------------------

/// The time of every acknowledged write, in order, and a signal for each new one.
struct AckLog {
    times: Mutex<Vec<Instant>>,
    records: AtomicU64,
    notify: watch::Sender<u64>,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AckLog {
    fn new() -> AckLog {
        AckLog {
            times: Mutex::new(Vec::new()),
            records: AtomicU64::new(0),
            notify: watch::channel(0).0,
            errors: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
        }
    }

    fn ack(&self, records: u64) {
        let n = {
            let mut times = lock(&self.times);
            // Taken under the lock, so the times are in order whatever the producers' interleaving.
            times.push(Instant::now());
            times.len() as u64
        };
        self.records.fetch_add(records, Ordering::Relaxed);
        self.notify.send_replace(n);
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = lock(&self.error_samples);
        if samples.len() < ERROR_SAMPLES && !samples.contains(&e) {
            samples.push(e);
        }
    }

    fn first_after(&self, t: Instant) -> Option<Instant> {
        let times = lock(&self.times);
        let i = times.partition_point(|a| *a <= t);
        times.get(i).copied()
    }

    /// The first write acknowledged after `t`, waiting for it until `deadline`.
    async fn wait_first_after(&self, t: Instant, deadline: Instant) -> Option<Instant> {
        let mut rx = self.notify.subscribe();
        loop {
            if let Some(a) = self.first_after(t) {
                return Some(a);
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

async fn produce_loop(client: Client, topic: String, batch: usize, value: Bytes, log: Arc<AckLog>) {
    loop {
        let records: Vec<Record> = (0..batch).map(|_| Record { value: value.clone(), ..Default::default() }).collect();
        match client.produce(&topic, 0, records, Acks::All).await {
            Ok(_) => log.ack(batch as u64),
            Err(e) => {
                tracing::warn!(error = %e, "produce failed after the client's retries");
                log.error(e.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What the survivors reported after a kill.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    elected: Option<Duration>,
    new_leader: Option<u64>,
    metadata: Option<Duration>,
}

/// Polls the survivors until one reports itself leader of `topic`/0 in a term above `old_epoch`
/// and until their metadata names a leader other than `killed` in such an epoch.
async fn watch_failover(
    survivors: Vec<RunnelClient<Channel>>,
    topic: &str,
    killed: u64,
    old_epoch: u64,
    killed_at: Instant,
    deadline: Instant,
) -> Phases {
    let mut ph = Phases::default();
    while Instant::now() < deadline && (ph.elected.is_none() || ph.metadata.is_none()) {
        for rpc in &survivors {
            if ph.elected.is_none() {
                if let Some(r) = replica(rpc, topic).await {
                    if r.role == "leader" && r.term > old_epoch {
                        ph.elected = Some(killed_at.elapsed());
                        ph.new_leader = r.leader;
                    }
                }
            }
            if ph.metadata.is_none() {
                let named = metadata(rpc).await.and_then(|m| {
                    let t = m.topics.into_iter().find(|t| t.name == topic)?;
                    let p = t.partitions.into_iter().find(|p| p.partition == 0)?;
                    Some(p.leader.is_some_and(|l| l != killed) && p.leader_epoch > old_epoch)
                });
                if named == Some(true) {
                    ph.metadata = Some(killed_at.elapsed());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    ph
}

// -------------------------------------------------------------------------------------------
// The benchmark
// -------------------------------------------------------------------------------------------

/// `runnel bench failover`: runs the benchmark and prints the report, also when the run was cut
/// short (an error, Ctrl-C); fails if it was, or if a kill saw no acknowledged write in time.
pub async fn run(b: &FailoverBench, output: OutputFormat) -> anyhow::Result<()> {
    let (report, stopped) = failover(b).await?;
    match output {
        OutputFormat::Json => crate::output::print_json(&serde_json::to_value(&report)?)?,
        OutputFormat::Text => crate::output::print(&render_text(&report))?,
    }
    match stopped {
        Some(e) => Err(e),
        None if report.failures > 0 => {
            anyhow::bail!("{} of {} kills saw no acknowledged write in time", report.failures, report.iterations)
        }
        None => Ok(()),
    }
}

/// Runs the benchmark. Returns the report, and the error that cut the run short if one did (the
/// report then covers the iterations done so far).
pub async fn failover(b: &FailoverBench) -> anyhow::Result<(FailoverReport, Option<anyhow::Error>)> {
    anyhow::ensure!(b.nodes == 3 || b.nodes == 5, "--nodes must be 3 or 5 (every node is a metadata voter)");
    anyhow::ensure!(
        b.replication_factor >= 3 && b.replication_factor as usize <= b.nodes,
        "--replication-factor must be at least 3 (a kill must leave a quorum) and at most --nodes"
    );
    anyhow::ensure!(
        b.iterations > 0 && b.producers > 0 && b.batch > 0 && b.partitions > 0 && b.timeout_secs > 0,
        "--iterations, --producers, --batch, --partitions and --timeout-secs must be positive"
    );
    let started = Instant::now();
    let mut cluster = LocalCluster::start(b.nodes, "failover", b.node.env()?)?;
    let log = Arc::new(AckLog::new());
    let mut kills: Vec<KillRecord> = Vec::new();
    let mut producers = Vec::new();
    let outcome = {
        let run = run_iterations(b, &mut cluster, &log, &mut kills, &mut producers);
        tokio::select! {
            r = run => r,
            s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}")),
        }
    };
    for p in &producers {
        p.abort();
    }
    let failures = kills.iter().filter(|k| k.gap_ms.is_none()).count() as u32;
    let kept_dir = if b.keep_dir || failures > 0 || outcome.is_err() { cluster.keep_dir() } else { None };
    drop(cluster);
    let mut errors = lock(&log.error_samples).clone();
    if let Err(e) = &outcome {
        errors.push(format!("{e:#}"));
    }
    let durations = |f: fn(&KillRecord) -> Option<f64>| -> Vec<Duration> {
        kills.iter().filter_map(f).map(|v| Duration::from_secs_f64(v / 1000.0)).collect()
    };
    let report = FailoverReport {
        nodes: b.nodes,
        partitions: b.partitions,
        replication_factor: b.replication_factor,
        producers: b.producers,
        batch: b.batch,
        record_size: b.record_size,
        iterations: b.iterations,
        completed: kills.len() as u32 - failures,
        failures,
        gap: percentiles(&durations(|k| k.gap_ms)),
        elected: percentiles(&durations(|k| k.elected_ms)),
        metadata: percentiles(&durations(|k| k.metadata_ms)),
        records_acked: log.records.load(Ordering::Relaxed),
        produce_errors: log.errors.load(Ordering::Relaxed),
        errors,
        seconds: started.elapsed().as_secs_f64(),
        kept_dir: kept_dir.map(|d| d.display().to_string()),
        kills,
    };
    Ok((report, outcome.err()))
}

async fn run_iterations(
    b: &FailoverBench,
    cluster: &mut LocalCluster,
    log: &Arc<AckLog>,
    kills: &mut Vec<KillRecord>,
    producers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(b.timeout_secs);
    let setup = timeout.max(Duration::from_secs(60));
    cluster.wait_ready(setup).await?;
    let defaults = RetryPolicy::default();
    let config = ClientConfig {
        retry: RetryPolicy {
            // Bounded by time, not attempts: keep retrying through a whole failover.
            max_attempts: u32::MAX,
            max_elapsed: timeout,
            max_backoff: b.retry_max_backoff_ms.map_or(defaults.max_backoff, Duration::from_millis),
            ..defaults
        },
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&cluster.addrs(), config).await.context("connecting to the local cluster")?;
    client
        .create_topic(&b.topic, b.partitions, b.replication_factor, Default::default())
        .await
        .with_context(|| format!("creating topic '{}'", b.topic))?;
    let mut leader = cluster.steady_leader(&b.topic, 0, setup).await?;

    let value = Bytes::from(vec![b'x'; b.record_size]);
    for _ in 0..b.producers {
        producers.push(tokio::spawn(produce_loop(
            client.clone(),
            b.topic.clone(),
            b.batch,
            value.clone(),
            log.clone(),
        )));
    }

    let pb = if b.quiet { ProgressBar::hidden() } else { ProgressBar::new(u64::from(b.iterations)) };
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} kills {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = async {
        for iteration in 1..=b.iterations {
            // Under load: a write acknowledged by the current leader since the cluster settled.
            let settled = Instant::now();
            log.wait_first_after(settled, settled + timeout)
                .await
                .with_context(|| format!("no write was acknowledged within {timeout:?} before kill {iteration}"))?;
            leader = cluster.steady_leader(&b.topic, leader.epoch, timeout).await?;

            let survivors: Vec<RunnelClient<Channel>> = cluster
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| *i != leader.index && n.child.is_some())
                .map(|(_, n)| n.rpc.clone())
                .collect();
            let killed_at = cluster.kill9(leader.index)?;
            let deadline = killed_at + timeout;
            let (ack, phases) = tokio::join!(
                log.wait_first_after(killed_at, deadline),
                watch_failover(survivors, &b.topic, leader.id, leader.epoch, killed_at, deadline),
            );
            let gap = ack.map(|a| a.duration_since(killed_at));
            pb.set_message(format!(
                "killed node {}: next ack after {}",
                leader.id,
                gap.map_or_else(|| "none (timeout)".to_string(), |g| format!("{:.0} ms", ms(g)))
            ));
            kills.push(KillRecord {
                iteration,
                node: leader.id,
                was_controller: leader.controller == Some(leader.id),
                leader_epoch: leader.epoch,
                gap_ms: gap.map(ms),
                elected_ms: phases.elected.map(ms),
                metadata_ms: phases.metadata.map(ms),
                new_leader: phases.new_leader,
                catch_up_ms: None,
            });

            let restarted_at = Instant::now();
            cluster.spawn(leader.index, &format!("restarted after kill {iteration}"))?;
            cluster
                .wait_caught_up(leader.index, &b.topic, leader.epoch + 1, timeout.max(Duration::from_secs(60)))
                .await?;
            if let Some(k) = kills.last_mut() {
                k.catch_up_ms = Some(ms(restarted_at.elapsed()));
            }
            leader.epoch += 1;
            pb.inc(1);
        }
        Ok(())
    }
    .await;
    pb.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_of_kill_gaps() {
        assert_eq!(percentiles(&[]), None);
        let one = percentiles(&[d(750)]).unwrap();
        assert_eq!(one.count, 1);
        assert!((one.p50_ms - 750.0).abs() < 1.0 && (one.p99_ms - 750.0).abs() < 1.0, "{one:?}");

        // 1..=100 ms: p50 is 50, p99 is 99, within the histogram's 3 significant digits.
        let gaps: Vec<Duration> = (1..=100).map(d).collect();
        let p = percentiles(&gaps).unwrap();
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.min_ms - 1.0).abs() < 0.01 && (p.max_ms - 100.0).abs() < 0.1, "{p:?}");

        // 20 kills (the default): p99 is the slowest one.
        let mut gaps: Vec<Duration> = (0..19).map(|i| d(600 + i)).collect();
        gaps.push(d(2_400));
        let p = percentiles(&gaps).unwrap();
        assert!((p.p99_ms - 2_400.0).abs() < 2.0 && (p.max_ms - 2_400.0).abs() < 2.0, "{p:?}");
        assert!((p.p50_ms - 609.0).abs() < 1.0, "{p:?}");
    }

    fn report(kills: Vec<KillRecord>) -> FailoverReport {
        let gaps: Vec<Duration> = kills.iter().filter_map(|k| k.gap_ms).map(|v| d(v as u64)).collect();
        FailoverReport {
            nodes: 3,
            partitions: 1,
            replication_factor: 3,
            producers: 2,
            batch: 10,
            record_size: 100,
            iterations: 2,
            completed: gaps.len() as u32,
            failures: kills.len() as u32 - gaps.len() as u32,
            gap: percentiles(&gaps),
            elected: None,
            metadata: None,
            records_acked: 1234,
            produce_errors: 0,
            errors: vec![],
            seconds: 12.5,
            kept_dir: None,
            kills,
        }
    }

    fn kill(iteration: u32, gap_ms: Option<f64>) -> KillRecord {
        KillRecord {
            iteration,
            node: 2,
            was_controller: iteration == 1,
            leader_epoch: 4,
            gap_ms,
            elected_ms: Some(640.0),
            metadata_ms: None,
            new_leader: Some(3),
            catch_up_ms: Some(900.0),
        }
    }

    #[test]
    fn text_report_shows_percentiles_and_every_kill() {
        let text = render_text(&report(vec![kill(1, Some(812.0)), kill(2, None)]));
        assert!(text.starts_with("failover: 1 of 2 kills answered (1 failed), 3 nodes"), "{text}");
        assert!(text.contains("kill -> next acked write:   p50 812 ms  p99 812 ms"), "{text}");
        assert!(text.contains("kill -> survivor elected:   -"), "{text}");
        assert!(text.contains("records acknowledged: 1234"), "{text}");
        let rows: Vec<Vec<&str>> =
            text.lines().skip_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert_eq!(rows[1], ["1", "2", "(controller)", "4", "640", "-", "812", "3", "900"], "{text}");
        assert_eq!(rows[2], ["2", "2", "4", "640", "-", "-", "3", "900"], "{text}");
    }

    #[test]
    fn json_report_keeps_missing_values_null() {
        let v = serde_json::to_value(report(vec![kill(1, None)])).unwrap();
        assert_eq!(v["gap"], serde_json::Value::Null);
        assert_eq!(v["kills"][0]["gap_ms"], serde_json::Value::Null);
        assert_eq!(v["kills"][0]["new_leader"], 3);
        assert_eq!(v["failures"], 1);
    }

    #[tokio::test]
    async fn first_ack_after_an_instant() {
        let log = AckLog::new();
        let before = Instant::now();
        log.ack(10);
        let kill = Instant::now();
        assert_eq!(log.first_after(kill), None);
        assert!(log.first_after(before).is_some());
        // Nothing comes: the wait ends at the deadline.
        assert_eq!(log.wait_first_after(kill, Instant::now() + d(20)).await, None);
        log.ack(10);
        log.ack(10);
        let first = log.wait_first_after(kill, Instant::now() + d(1000)).await.unwrap();
        assert_eq!(Some(first), log.first_after(kill));
        assert!(first > kill);
        assert_eq!(lock(&log.times).len(), 3);
        assert_eq!(log.records.load(Ordering::Relaxed), 30);
    }
}
