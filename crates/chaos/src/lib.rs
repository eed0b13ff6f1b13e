//! Chaos on real containers: the shipped binary in the project's own image, a cluster from the
//! project's own Compose file, real RocksDB on a filesystem that can lose power, real TCP that
//! iptables cuts, frozen processes, full disks and damaged logs — faults chosen from a printed seed.
//!
//! A run: bring the cluster up, run the recorded workload (`runnel-workload`: acks=all producers
//! of unique values and assign readers, every operation in a history), inject one fault per
//! cycle and heal it, then heal everything, read every partition in full, and judge the history
//! with `runnel-checker`. The summary names the cycles, the faults by kind, the records and the
//! anomalies by kind; any anomaly fails the run. `scripts/chaos.sh` is the entry point; the
//! faults and what healing undoes are in [`faults`], the cluster and its cleanup in [`cluster`].

pub mod cluster;
pub mod faults;
pub mod host;
pub mod replicas;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use runnel_checker::{summary_line, Recorder, Report};
use runnel_client::{Client, ClientConfig};
use runnel_workload::{ClusterView, Workload};

use crate::cluster::{Cluster, ClusterSpec};
use crate::faults::{Cycle, FaultKind};

/// Set on SIGINT/SIGTERM ([`stop_on_signals`]): the run injects no further fault, heals, and
/// tears the cluster down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT and SIGTERM end the run early but cleanly (containers, network, volumes and mounts
/// removed) instead of killing the runner with the cluster still up.
pub fn stop_on_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("chaos: interrupted: healing and tearing the cluster down");
            INTERRUPTED.store(true, Ordering::SeqCst);
        });
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seed: u64,
    pub nodes: usize,
    pub cycles: usize,
    /// The fault kinds to choose from.
    pub faults: Vec<FaultKind>,
    pub partitions: u32,
    pub producers: usize,
    pub image: String,
    pub lossyfs_binary: PathBuf,
    pub work_dir: PathBuf,
    /// Keep the work directory (node logs, history) after a passing run too.
    pub keep: bool,
    /// Plant the bug the power-loss fault must catch: nodes acknowledge before fsync.
    pub plant_skip_fsync: bool,
    /// After the heal, every partition must be readable in full within this long.
    pub liveness_bound: Duration,
}

/// What a run found.
pub struct Outcome {
    pub report: Report,
    pub cycles: Vec<Cycle>,
    /// What each cycle did, for the log.
    pub actions: Vec<String>,
    /// Node id -> how many times its process exited by itself and Docker restarted it.
    pub node_exits: BTreeMap<u64, u64>,
    /// Where replicas of a partition disagree about its committed records (cross-replica check),
    /// and nodes whose metadata no longer follows the metadata group after healing.
    pub replica_divergence: Vec<String>,
    /// Partitions the cross-replica check compared.
    pub partitions_compared: usize,
    pub elapsed: Duration,
    pub work_dir: PathBuf,
}

impl Outcome {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let faults: Vec<String> = faults::count(&self.cycles).iter().map(|(k, n)| format!("{k} {n}")).collect();
        let st = &self.report.stats;
        s.push_str(&format!(
            "cycles: {} in {:.0} s\nfaults: {}\nrecords: {} acknowledged in {} batches; {} produce failures \
             ({} definite, {} indeterminate); {} reads returned {} records; {} final reads ({} failed)\n",
            self.cycles.len(),
            self.elapsed.as_secs_f64(),
            faults.join(", "),
            st.acked_values,
            st.acked_batches,
            st.produce_definite_failures + st.produce_indeterminate_failures,
            st.produce_definite_failures,
            st.produce_indeterminate_failures,
            st.reads,
            st.records_read,
            st.final_reads,
            st.final_read_failures,
        ));
        let exits: Vec<String> =
            self.node_exits.iter().filter(|(_, n)| **n > 0).map(|(id, n)| format!("node {id}: {n}")).collect();
        s.push_str(&format!(
            "node exits (restarted by Docker): {}\n",
            if exits.is_empty() { "none".into() } else { exits.join(", ") }
        ));
        s.push_str(&format!(
            "replicas and metadata after healing: {} partitions compared, {}\n",
            self.partitions_compared,
            if self.replica_divergence.is_empty() {
                "byte-identical up to their common high watermark; every node follows the metadata".to_string()
            } else {
                format!("DIVERGENT: {}", self.replica_divergence.join(" | "))
            }
        ));
        let counts: Vec<String> =
            self.report.counts().iter().map(|((inv, k), n)| format!("{k} {n} (inv {inv})")).collect();
        s.push_str(&format!(
            "anomalies: {}\n{}",
            if counts.is_empty() { "none".into() } else { counts.join(", ") },
            summary_line(&self.report)
        ));
        s
    }

    /// A run passes when the checker found nothing, the replicas agree, and no node exited by
    /// itself.
    pub fn passed(&self) -> bool {
        self.report.is_ok() && self.replica_divergence.is_empty() && self.node_exits.values().all(|n| *n == 0)
    }
}

/// Runs one chaos run. The cluster is torn down before this returns, also on error.
pub fn run(opts: &ChaosOptions) -> Result<Outcome> {
    if opts.faults.is_empty() {
        bail!("no fault kinds to choose from");
    }
    let kinds: Vec<FaultKind> = opts.faults.iter().copied().filter(|k| k.applies_to(opts.nodes)).collect();
    if kinds.is_empty() {
        bail!("none of the chosen faults applies to {} nodes", opts.nodes);
    }
    let compose_file = cluster::repo_path(&format!("deploy/compose/compose-{}.yml", opts.nodes));
    if !compose_file.exists() {
        bail!("no Compose file for {} nodes ({})", opts.nodes, compose_file.display());
    }
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let cycles = faults::schedule(&mut rng, &kinds, opts.cycles);
    let started = Instant::now();
    let spec = ClusterSpec {
        nodes: opts.nodes,
        compose_file,
        image: opts.image.clone(),
        work_dir: opts.work_dir.clone(),
        lossyfs_binary: opts.lossyfs_binary.clone(),
        disk_bytes: 768 << 20,
        min_free_bytes: 96 << 20,
        skip_fsync: opts.plant_skip_fsync,
        faketime: opts.faults.contains(&FaultKind::ClockSkew),
        // A subnet per seed, so that runs of different seeds can share a Docker host.
        net: format!("172.29.{}", 16 + opts.seed % 200),
        project: format!("runnel-chaos-{}", opts.seed),
    };
    let mut cluster = Cluster::up(spec)?;
    let result = drive(&cluster, opts, &cycles, &mut rng);
    cluster.save_logs();
    let node_exits: BTreeMap<u64, u64> = cluster.nodes.iter().map(|n| (n.id, cluster.restarts(n.id))).collect();
    let (report, actions, (replica_divergence, partitions_compared)) = match result {
        Ok(r) => r,
        Err(e) => {
            cluster.teardown(true);
            return Err(e.context(format!("node logs are in {}", opts.work_dir.display())));
        }
    };
    let outcome = Outcome {
        report,
        cycles,
        actions,
        node_exits,
        replica_divergence,
        partitions_compared,
        elapsed: started.elapsed(),
        work_dir: opts.work_dir.clone(),
    };
    cluster.teardown(opts.keep || !outcome.passed());
    Ok(outcome)
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        produce_timeout_ms: 5_000,
        ..ClientConfig::default()
    }
}

/// Waits for the cluster, runs the workload with the fault cycles beside it, and judges the
/// history.
type Judged = (Report, Vec<String>, (Vec<String>, usize));

fn drive(cluster: &Cluster, opts: &ChaosOptions, cycles: &[Cycle], rng: &mut SmallRng) -> Result<Judged> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let bootstrap = cluster.bootstrap();
    runtime.block_on(wait_ready(&bootstrap, opts.nodes))?;
    tracing::info!(nodes = opts.nodes, "cluster ready");

    // The workload runs through the whole schedule; the first fault comes after it is under way.
    const LEAD: Duration = Duration::from_secs(3);
    let safety = LEAD + cycles.iter().map(|c| c.duration + c.gap).sum::<Duration>();
    let recorder = Recorder::default();
    let view = Arc::new(Mutex::new(ClusterView::default()));
    let workload = Workload {
        seed: opts.seed,
        topic: "chaos".into(),
        bootstrap: bootstrap.clone(),
        partitions: opts.partitions,
        idle_partitions: 0,
        producers: opts.producers,
        safety,
        liveness_bound: opts.liveness_bound,
        recorder: recorder.clone(),
        view: view.clone(),
        operations: Vec::new(),
        client: client_config(),
    };
    let workload = runtime.spawn(workload.run());

    let mut actions = Vec::new();
    sleep_rest(Instant::now(), LEAD);
    for (i, cycle) in cycles.iter().enumerate() {
        if interrupted() {
            break;
        }
        let t = Instant::now();
        let heal = match faults::apply(cluster, rng, cycle.kind, &view) {
            Ok((what, heal)) => {
                let line = format!("cycle {:>3}: {:<20} {what}", i + 1, cycle.kind.name());
                println!("{line}");
                actions.push(line);
                heal
            }
            Err(e) => {
                // A fault that could not be applied (its target was down) is reported, not fatal.
                let line = format!("cycle {:>3}: {:<20} not applied: {e:#}", i + 1, cycle.kind.name());
                println!("{line}");
                actions.push(line);
                faults::Heal::Nothing
            }
        };
        sleep_rest(t, cycle.duration);
        let healed =
            faults::heal(cluster, heal).with_context(|| format!("healing cycle {} ({})", i + 1, cycle.kind))?;
        if !healed.is_empty() {
            tracing::info!(cycle = i + 1, "{healed}");
        }
        sleep_rest(Instant::now(), cycle.gap);
    }
    faults::heal_everything(cluster).context("healing every fault at the end")?;
    if interrupted() {
        // The workload runs to the end of its planned safety phase; do not wait for it.
        workload.abort();
        bail!("interrupted after {} fault cycles", actions.len());
    }
    println!("healed; reading every partition in full");
    runtime.block_on(workload).context("workload task")?.map_err(|e| anyhow::anyhow!("workload: {e}"))?;
    let history = opts.work_dir.join("history.jsonl");
    if let Ok(f) = std::fs::File::create(&history) {
        let _ = recorder.write_jsonl(std::io::BufWriter::new(f));
    }
    let nodes: Vec<(u64, String)> = cluster.nodes.iter().map(|n| (n.id, format!("{}:9292", n.ip))).collect();
    let (mut problems, compared) = runtime.block_on(replicas::compare(&nodes, "chaos", Duration::from_secs(30)));
    let metadata = runtime.block_on(async {
        match Client::connect_with(&bootstrap, client_config()).await {
            Ok(client) => replicas::metadata_follows(&nodes, &client, Duration::from_secs(30)).await,
            Err(e) => vec![format!("could not connect after healing: {e}")],
        }
    });
    problems.extend(metadata);
    let replicas = (problems, compared);
    Ok((recorder.check(), actions, replicas))
}

/// Sleeps until `total` after `since`, in short steps so that an interruption is noticed.
fn sleep_rest(since: Instant, total: Duration) {
    while let Some(rest) = total.checked_sub(since.elapsed()) {
        if interrupted() || rest.is_zero() {
            return;
        }
        std::thread::sleep(rest.min(Duration::from_millis(100)));
    }
}

/// Ready: a node answers metadata naming a controller and every node alive.
async fn wait_ready(bootstrap: &[String], nodes: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        match Client::connect_with(bootstrap, client_config()).await {
            Ok(client) => match client.metadata(&[]).await {
                Ok(m) if m.controller_id.is_some() && m.brokers.iter().filter(|b| b.alive).count() >= nodes => {
                    return Ok(())
                }
                Ok(m) => last = format!("controller {:?}, {} brokers", m.controller_id, m.brokers.len()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the cluster was not ready within 120 s: {last}")
}
