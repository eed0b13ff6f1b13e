//! The whole cluster in one deterministic simulation.
//!
//! Three or five real Runnel nodes (`runnel_server::serve`: controller, brokers, partition Raft
//! groups) run as turmoil hosts with in-memory storage that separates synced from unsynced writes;
//! a client host runs producers and consumers through the real client library and records a
//! history. Every option — cluster size, workload, the fault schedule — derives from one u64 seed,
//! and time, network and Raft randomness are all driven by it, so a seed replays exactly.
//!
//! A run has two phases. Safety: faults on, load on. Liveness: faults healed, every partition must
//! become readable and every acknowledged write must be in the final read. `runnel-checker` judges
//! the history against the invariants of docs/INVARIANTS.md.

mod net;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runnel_checker::{check, Entry, Recorder, Report};
use runnel_server::{NodeConfig, NodeEnv};
use runnel_storage::{Engine, GroupSyncer, Keyspace, MemEngine, WriteBatch};

pub use net::TurmoilDialer;
pub use runnel_workload::{ClusterView, Operation, Workload};

const PORT: u16 = 9292;
/// Bound on the liveness phase: after the heal, the cluster must serve a full read of every
/// partition within this much simulated time.
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

/// A real bug the checker must catch, planted on purpose (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The storage acknowledges fsyncs it never did: a crash loses "durable" writes. (Often
    /// openraft's own assertions trip over the lost state first and the run aborts.)
    SkipFsync,
    /// Leaders answer acks=all produces before the batch is committed, with a guessed offset.
    AckBeforeCommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Cut one node off from every other host, both ways.
    Isolate(usize),
    /// Messages from the node to the others are dropped; the other direction works.
    IsolateOneWay(usize),
    /// Cut the cluster in two: a minority side with these nodes, the rest with the client.
    Split { minority: usize },
    /// kill -9: the node stops and loses every write it had not synced.
    Crash(usize),
    /// Crash a majority at once (all but one node), then restart them.
    CrashMajority,
    /// Crash every node at once (a power cut), then restart them all.
    CrashAll,
    /// Hold every message to and from the node (a pause), then deliver them.
    Pause(usize),
    /// Every link is slow for a while.
    LatencySpike { max_ms: u64 },
    /// Some messages are dropped.
    MessageLoss { rate_per_mille: u32 },
    /// Cut off whichever node currently leads partition 0 (as the client last saw it).
    IsolateLeader,
    /// Cut off whichever node is the controller (metadata leader).
    IsolateController,
    /// kill -9 the controller: a controller failover.
    CrashController,
    /// kill -9 partition 0's leader: a partition leader failover.
    CrashLeader,
}

/// A node index for a targeted fault: the target if known, else node 0.
fn target(view: &std::sync::Mutex<ClusterView>, controller: bool, nodes: usize) -> usize {
    let v = view.lock().map(|v| v.clone()).unwrap_or_default();
    let id = if controller { v.controller } else { v.partition0_leader };
    id.map(|id| (id as usize).saturating_sub(1)).filter(|i| *i < nodes).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: usize,
    pub partitions: u32,
    /// Partitions of a second topic that stays idle through the safety phase (quiescent groups
    /// under the same faults); each takes one write in the liveness phase.
    pub idle_partitions: u32,
    pub producers: usize,
    /// Simulated length of the safety phase.
    pub safety_ms: u64,
    /// (start ms, duration ms, fault), in start order.
    pub faults: Vec<(u64, u64, Fault)>,
    /// Simulated fsync latency of every node's disk.
    pub fsync_ms: u64,
    pub planted: Option<PlantedBug>,
    /// (start ms, operation), in start order.
    pub operations: Vec<(u64, Operation)>,
    /// A broker unavailable this long has its replicas moved (membership changes without an
    /// operator, when a crash or isolation lasts).
    pub replacement_ms: u64,
}

impl SimOptions {
    /// Every option from one seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_0f_0b75);
        let nodes = if rng.random_bool(0.8) { 3 } else { 5 };
        let safety_ms = rng.random_range(8_000..16_000);
        let mut faults = Vec::new();
        let mut t = rng.random_range(1_500..3_000);
        while t < safety_ms - 1_000 {
            let dur = rng.random_range(300..3_000u64).min(safety_ms - t);
            let node = rng.random_range(0..nodes);
            let fault = match rng.random_range(0..13) {
                0 => Fault::Isolate(node),
                1 => Fault::IsolateOneWay(node),
                2 => Fault::Split { minority: nodes / 2 },
                3 => Fault::Crash(node),
                4 => Fault::CrashMajority,
                5 => Fault::Pause(node),
                6 => Fault::LatencySpike { max_ms: rng.random_range(20..200) },
                7 => Fault::CrashAll,
                8 => Fault::MessageLoss { rate_per_mille: rng.random_range(5..50) },
                9 => Fault::IsolateLeader,
                10 => Fault::IsolateController,
                11 => Fault::CrashController,
                _ => Fault::CrashLeader,
            };
            faults.push((t, dur, fault));
            t += dur + rng.random_range(200..2_000);
        }
        let (partitions, producers, fsync_ms) =
            (rng.random_range(1..=3), rng.random_range(2..=4), rng.random_range(1..=4));
        // Operations and the replacement timeout come from their own stream, so the faults a seed
        // chose before they existed stay the same.
        let mut ops_rng = SmallRng::seed_from_u64(seed ^ 0x0be7_a7e5);
        let mut operations = Vec::new();
        let mut t = ops_rng.random_range(1_000..4_000);
        while t < safety_ms - 500 {
            let op = if ops_rng.random_bool(0.5) {
                Operation::TransferLeader
            } else {
                Operation::Reassign { pick: ops_rng.random() }
            };
            operations.push((t, op));
            t += ops_rng.random_range(1_000..5_000);
        }
        // Its own stream too: a third of the seeds run with a topic of many idle groups.
        let mut idle_rng = SmallRng::seed_from_u64(seed ^ 0x1d1e_9a57);
        let idle_partitions = if idle_rng.random_bool(0.33) { idle_rng.random_range(8..=40) } else { 0 };
        SimOptions {
            seed,
            nodes,
            partitions,
            idle_partitions,
            producers,
            safety_ms,
            faults,
            fsync_ms,
            planted: None,
            operations,
            replacement_ms: ops_rng.random_range(2_000..6_000),
        }
    }

    /// The command that replays this run.
    pub fn repro(&self) -> String {
        match self.planted {
            None => format!("scripts/sim.sh --seed {}", self.seed),
            Some(PlantedBug::SkipFsync) => format!("scripts/sim.sh --seed {} --plant skip-fsync", self.seed),
            Some(PlantedBug::AckBeforeCommit) => {
                format!("scripts/sim.sh --seed {} --plant ack-before-commit", self.seed)
            }
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} nodes={} partitions={} idle_partitions={} producers={} safety={}ms fsync={}ms planted={:?} faults=[",
            self.seed,
            self.nodes,
            self.partitions,
            self.idle_partitions,
            self.producers,
            self.safety_ms,
            self.fsync_ms,
            self.planted
        )?;
        for (i, (at, dur, fault)) in self.faults.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{fault:?}@{at}ms+{dur}ms")?;
        }
        write!(f, "] replacement={}ms operations=[", self.replacement_ms)?;
        for (i, (at, op)) in self.operations.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{op:?}@{at}ms")?;
        }
        write!(f, "]")
    }
}

pub struct SimOutcome {
    pub options: SimOptions,
    pub history: Vec<Entry>,
    pub report: Report,
    /// Stable hash of the history: equal for equal runs.
    pub fingerprint: u64,
    /// Simulated time the run took.
    pub sim_ms: u64,
}

impl SimOutcome {
    pub fn ok(&self) -> bool {
        self.report.is_ok()
    }
}

/// An engine whose sync does nothing: the planted "forgot to fsync" bug.
struct SkipFsync(Arc<MemEngine>);

impl Engine for SkipFsync {
    fn get(&self, ks: Keyspace, key: &[u8]) -> runnel_storage::Result<Option<Vec<u8>>> {
        self.0.get(ks, key)
    }
    fn scan(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> runnel_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan(ks, from, to, limit)
    }
    fn last_in_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: &[u8],
    ) -> runnel_storage::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.0.last_in_range(ks, from, to)
    }
    fn write(&self, batch: WriteBatch) -> runnel_storage::Result<()> {
        self.0.write(batch)
    }
    fn sync(&self) -> runnel_storage::Result<()> {
        Ok(())
    }
}

fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The simulated wall clock's start: 2026-01-01T00:00:00Z.
const SIM_EPOCH_MS: i64 = 1_767_225_600_000;

fn node_config(i: usize, nodes: usize, replacement_ms: u64) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    // Short sessions, so that brokers are declared unavailable, fence themselves and get replaced
    // within a run.
    cfg.broker_session_timeout_ms = 2_000;
    // A session of eight heartbeats, as the defaults have it (1 s of 6 s would be three).
    cfg.broker_heartbeat_ms = 250;
    // Listens on 0.0.0.0 of a simulated network without TLS.
    cfg.insecure = true;
    cfg.broker_replacement_timeout_ms = replacement_ms;
    cfg.node_id = i as u64 + 1;
    cfg.listen = std::net::SocketAddr::from(([0, 0, 0, 0], PORT));
    cfg.advertise = Some(format!("{}:{PORT}", host(i)));
    cfg.voters = (0..nodes).map(|j| format!("{}={}:{PORT}", j + 1, host(j))).collect();
    cfg
}

/// Runs one simulation to the end and judges its history. A panic anywhere in the simulated
/// cluster (an assertion in our code or openraft's) is returned as an error with its message.
pub fn run(options: SimOptions) -> Result<SimOutcome, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(options))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("panic in the simulated cluster: {msg}"))
        }
    }
}

fn run_inner(options: SimOptions) -> Result<SimOutcome, String> {
    let seed = options.seed;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(options.safety_ms + 120_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(2))
        // Segments queued per socket: held (paused) links release many at once.
        .tcp_capacity(1 << 20)
        .build();

    let engines: Vec<Arc<MemEngine>> = (0..options.nodes).map(|_| Arc::new(MemEngine::new())).collect();
    for i in 0..options.nodes {
        let engine = engines[i].clone();
        let cfg = node_config(i, options.nodes, options.replacement_ms);
        let planted = options.planted;
        let starts = Arc::new(AtomicU64::new(0));
        sim.host(host(i), move || {
            let (engine, cfg, starts) = (engine.clone(), cfg.clone(), starts.clone());
            async move {
                let n = starts.fetch_add(1, Ordering::Relaxed);
                let engine: Arc<dyn Engine> = match planted {
                    Some(PlantedBug::SkipFsync) => Arc::new(SkipFsync(engine)),
                    _ => engine,
                };
                let mix = seed ^ (cfg.node_id << 48) ^ (n << 32);
                let repair = runnel_raft::repair::Repair::none(cfg.node_id, engine.clone());
                let env = NodeEnv {
                    syncer: Arc::new(GroupSyncer::spawn_task(engine.clone(), Duration::from_millis(options.fsync_ms))),
                    engine,
                    space: Arc::new(runnel_storage::DiskSpace::unlimited()),
                    repair,
                    dialer: Arc::new(TurmoilDialer),
                    raft_seed: mix,
                    incarnation: mix.rotate_left(17) ^ 0x1ca7,
                    planted_ack_before_commit: planted == Some(PlantedBug::AckBeforeCommit),
                    // Simulated wall clock: a fixed epoch plus simulated time, so retention and
                    // batch timestamps replay exactly from the seed.
                    clock: Arc::new(|| SIM_EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as i64)),
                    // The simulated network has no TLS (real processes test it).
                    node_auth: runnel_proto::peer::NodeAuth::Open,
                };
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                runnel_server::serve(cfg, env, net::incoming(listener), std::future::pending())
                    .await
                    .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })?;
                Ok(())
            }
        });
    }

    let recorder = Recorder::default();
    let view = Arc::new(std::sync::Mutex::new(ClusterView::default()));
    let wl = Workload {
        seed,
        topic: "sim".into(),
        bootstrap: (0..options.nodes).map(|i| format!("{}:{PORT}", host(i))).collect(),
        partitions: options.partitions,
        idle_partitions: options.idle_partitions,
        producers: options.producers,
        safety: Duration::from_millis(options.safety_ms),
        liveness_bound: LIVENESS_BOUND,
        recorder: recorder.clone(),
        view: view.clone(),
        operations: options.operations.clone(),
        client: runnel_client::ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            produce_timeout_ms: 2_000,
            dialer: Some(runnel_proto::dial::DialerHandle(Arc::new(TurmoilDialer))),
            ..runnel_client::ClientConfig::default()
        },
    };
    sim.client("client", async move { wl.run().await.map_err(|e| -> Box<dyn std::error::Error> { e.into() }) });

    // The driver: applies each fault at its time, heals it after its duration, and heals
    // everything when the safety phase ends.
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc4a5_4c4a);
    let mut pending: Vec<(u64, u64, Fault)> = options.faults.clone();
    pending.reverse();
    // Active faults, with the node a targeted fault resolved to when it started.
    let mut active: Vec<(u64, Fault)> = Vec::new();
    let mut healed_all = false;
    loop {
        let done = sim.step().map_err(|e| format!("simulation error: {e}"))?;
        if done {
            break;
        }
        let now = sim.elapsed().as_millis() as u64;
        while pending.last().is_some_and(|(at, _, _)| *at <= now) {
            let Some((at, dur, fault)) = pending.pop() else { break };
            // Targeted faults become their plain form on the node that is the target right now.
            let fault = match fault {
                Fault::IsolateLeader => Fault::Isolate(target(&view, false, options.nodes)),
                Fault::IsolateController => Fault::Isolate(target(&view, true, options.nodes)),
                Fault::CrashController => Fault::Crash(target(&view, true, options.nodes)),
                Fault::CrashLeader => Fault::Crash(target(&view, false, options.nodes)),
                f => f,
            };
            apply(&mut sim, &engines, &options, fault, &mut rng);
            active.push((at + dur, fault));
        }
        let (due, keep): (Vec<_>, Vec<_>) = active.drain(..).partition(|(until, _)| *until <= now);
        active = keep;
        for (_, fault) in due {
            heal(&mut sim, &options, fault);
        }
        if !healed_all && now >= options.safety_ms {
            healed_all = true;
            for (_, fault) in active.drain(..) {
                heal(&mut sim, &options, fault);
            }
            for i in 0..options.nodes {
                if !sim.is_host_running(host(i)) {
                    sim.bounce(host(i));
                }
            }
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    let history = recorder.entries();
    let report = check(&history);
    Ok(SimOutcome { fingerprint: recorder.fingerprint(), options, history, report, sim_ms })
}

fn others(nodes: usize, i: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..nodes).filter(|j| *j != i).map(host).collect();
    v.push("client".into());
    v
}

/// The links a split cuts: every minority node to every majority node and to the client.
fn split_links(nodes: usize, minority: usize) -> Vec<(String, String)> {
    let mut links = Vec::new();
    for a in 0..minority {
        for b in minority..nodes {
            links.push((host(a), host(b)));
        }
        links.push((host(a), "client".to_string()));
    }
    links
}

fn crash(sim: &mut turmoil::Sim<'_>, engines: &[Arc<MemEngine>], i: usize, rng: &mut SmallRng) {
    if sim.is_host_running(host(i)) {
        sim.crash(host(i));
        // A real disk may have persisted some of the unsynced writes, in order.
        let unsynced = engines[i].unsynced_batches();
        tracing::info!(node = i + 1, unsynced, at_ms = sim.elapsed().as_millis() as u64, "crash");
        let keep = if unsynced == 0 { 0 } else { rng.random_range(0..=unsynced) };
        engines[i].crash(keep);
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, engines: &[Arc<MemEngine>], o: &SimOptions, fault: Fault, rng: &mut SmallRng) {
    tracing::info!(?fault, at_ms = sim.elapsed().as_millis() as u64, "fault");
    match fault {
        Fault::Isolate(i) => {
            for other in others(o.nodes, i) {
                sim.partition(host(i), other);
            }
        }
        Fault::IsolateOneWay(i) => {
            for other in others(o.nodes, i) {
                sim.partition_oneway(host(i), other);
            }
        }
        Fault::Split { minority } => {
            for (a, b) in split_links(o.nodes, minority) {
                sim.partition(a, b);
            }
        }
        Fault::Crash(i) => crash(sim, engines, i, rng),
        Fault::CrashMajority => {
            for i in 1..o.nodes {
                crash(sim, engines, i, rng);
            }
        }
        Fault::CrashAll => {
            for i in 0..o.nodes {
                crash(sim, engines, i, rng);
            }
        }
        Fault::Pause(i) => {
            for other in others(o.nodes, i) {
                sim.hold(host(i), other);
            }
        }
        Fault::LatencySpike { max_ms } => sim.set_max_message_latency(Duration::from_millis(max_ms)),
        Fault::MessageLoss { rate_per_mille } => sim.set_fail_rate(rate_per_mille as f64 / 1000.0),
        // Resolved to Isolate/Crash by the driver before they get here.
        Fault::IsolateLeader | Fault::IsolateController | Fault::CrashController | Fault::CrashLeader => {}
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, o: &SimOptions, fault: Fault) {
    match fault {
        Fault::Isolate(i) | Fault::IsolateOneWay(i) => {
            for other in others(o.nodes, i) {
                sim.repair(host(i), other);
            }
        }
        Fault::Split { minority } => {
            for (a, b) in split_links(o.nodes, minority) {
                sim.repair(a, b);
            }
        }
        Fault::Crash(i) => {
            if !sim.is_host_running(host(i)) {
                sim.bounce(host(i));
            }
        }
        Fault::CrashMajority | Fault::CrashAll => {
            for i in 0..o.nodes {
                if !sim.is_host_running(host(i)) {
                    sim.bounce(host(i));
                }
            }
        }
        Fault::Pause(i) => {
            for other in others(o.nodes, i) {
                sim.release(host(i), other);
            }
        }
        Fault::LatencySpike { .. } => sim.set_max_message_latency(Duration::from_millis(2)),
        Fault::MessageLoss { .. } => sim.set_fail_rate(0.0),
        Fault::IsolateLeader | Fault::IsolateController | Fault::CrashController | Fault::CrashLeader => {}
    }
}
