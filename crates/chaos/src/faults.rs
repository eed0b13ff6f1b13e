//! The faults, chosen from the run's seed, and how each is applied to the containers and healed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;
use runnel_workload::ClusterView;

use crate::cluster::Cluster;
use crate::host;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a random node's container; restarted when healed.
    Kill,
    /// SIGKILL the node leading partition 0.
    KillLeader,
    /// Freeze a node's processes (`docker pause`), then thaw them.
    Pause,
    /// Restart every node in turn (SIGTERM: a graceful stop with leadership hand-off), waiting
    /// for each to be healthy before the next.
    RollingRestart,
    /// Cut one node off from every other node (clients still reach it).
    IsolateNode,
    /// Cut off partition 0's leader.
    IsolateLeader,
    /// Cut off the controller (metadata leader).
    IsolateController,
    /// Split the nodes into a minority and a majority that cannot talk to each other.
    SplitMinorityMajority,
    /// Two halves that both reach one bridge node but not each other (5 nodes).
    Bridge,
    /// A node hears nothing from the others but its messages reach them.
    OneWay,
    /// Every node drops 20 % of the packets it receives.
    PacketLoss,
    /// A node's data filesystem fills up to below its free-space watermark; space comes back when
    /// healed.
    DiskFull,
    /// A node's data filesystem fills up completely (writes fail with ENOSPC); space comes back
    /// when healed.
    DiskFullHard,
    /// A node loses power: killed, and everything it had not fsync'd is gone.
    PowerLossOne,
    /// A minority of the nodes loses power at once.
    PowerLossMinority,
    /// Every node loses power at once.
    PowerLossAll,
    /// A node is killed, loses what it had not synced, and 8 bytes in the middle of its
    /// write-ahead log are overwritten before it restarts: it must notice and repair.
    CorruptWal,
    /// A node's wall clock jumps (minutes to days, forwards or back), then jumps back.
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::RollingRestart,
        FaultKind::IsolateNode,
        FaultKind::IsolateLeader,
        FaultKind::IsolateController,
        FaultKind::SplitMinorityMajority,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::PacketLoss,
        FaultKind::DiskFull,
        FaultKind::DiskFullHard,
        FaultKind::PowerLossOne,
        FaultKind::PowerLossMinority,
        FaultKind::PowerLossAll,
        FaultKind::CorruptWal,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateController => "isolate-controller",
            FaultKind::SplitMinorityMajority => "split",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::PacketLoss => "packet-loss",
            FaultKind::DiskFull => "disk-full",
            FaultKind::DiskFullHard => "disk-full-hard",
            FaultKind::PowerLossOne => "power-loss-one",
            FaultKind::PowerLossMinority => "power-loss-minority",
            FaultKind::PowerLossAll => "power-loss-all",
            FaultKind::CorruptWal => "corrupt-wal",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    /// Whether the fault makes sense on a cluster of `nodes` (a bridge needs 5).
    pub fn applies_to(self, nodes: usize) -> bool {
        !matches!(self, FaultKind::Bridge) || nodes >= 5
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault '{s}' (one of: {})", names.join(", "))
        })
    }
}

/// One cycle: a fault, how long it lasts, and the quiet gap after it is healed.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub kind: FaultKind,
    pub duration: Duration,
    pub gap: Duration,
}

/// The cycles of a run, from its seed: every enabled kind once first (in a random order, when
/// there are at least as many cycles as kinds), then kinds at random.
pub fn schedule(rng: &mut SmallRng, kinds: &[FaultKind], cycles: usize) -> Vec<Cycle> {
    let mut order: Vec<FaultKind> = kinds.to_vec();
    order.shuffle(rng);
    (0..cycles)
        .map(|i| {
            let kind = if i < order.len() { order[i] } else { kinds[rng.random_range(0..kinds.len())] };
            Cycle {
                kind,
                duration: Duration::from_millis(rng.random_range(2_000..=5_000)),
                gap: Duration::from_millis(rng.random_range(1_500..=3_000)),
            }
        })
        .collect()
}

/// What healing a fault undoes.
pub enum Heal {
    Nothing,
    /// Start these nodes' containers again.
    Start(Vec<u64>),
    Unpause(u64),
    /// Remove the filter rules added on these nodes.
    FlushRules(Vec<u64>),
    /// Delete the ballast file filling a node's disk.
    RemoveBallast(PathBuf),
    /// Set this clock offset file back to `+0`.
    ResetClock(PathBuf),
}

/// Applies one fault. Returns what it did (for the log) and how to heal it.
pub fn apply(
    cluster: &Cluster,
    rng: &mut SmallRng,
    kind: FaultKind,
    view: &std::sync::Mutex<ClusterView>,
) -> Result<(String, Heal)> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let random_node = |rng: &mut SmallRng| ids[rng.random_range(0..ids.len())];
    let seen = view.lock().map(|v| v.clone()).unwrap_or_default();
    let minority = |rng: &mut SmallRng| {
        let mut all = ids.clone();
        all.shuffle(rng);
        all.truncate((ids.len() - 1) / 2);
        all
    };
    match kind {
        FaultKind::Kill | FaultKind::KillLeader => {
            let id = match kind {
                FaultKind::KillLeader => seen.partition0_leader.unwrap_or_else(|| random_node(rng)),
                _ => random_node(rng),
            };
            cluster.kill(id)?;
            Ok((format!("kill -9 node {id}"), Heal::Start(vec![id])))
        }
        FaultKind::Pause => {
            let id = random_node(rng);
            cluster.docker("pause", id)?;
            Ok((format!("pause node {id}"), Heal::Unpause(id)))
        }
        FaultKind::RollingRestart => {
            for &id in &ids {
                let c = cluster.container(id)?;
                host::run("docker", &["restart", "-t", "15", &c])?;
                wait_healthy(cluster, id)?;
            }
            Ok((format!("rolling restart of nodes {ids:?}"), Heal::Nothing))
        }
        FaultKind::IsolateNode | FaultKind::IsolateLeader | FaultKind::IsolateController => {
            let id = match kind {
                FaultKind::IsolateLeader => seen.partition0_leader,
                FaultKind::IsolateController => seen.controller,
                _ => None,
            }
            .unwrap_or_else(|| random_node(rng));
            let others: Vec<u64> = ids.iter().copied().filter(|o| *o != id).collect();
            partition(cluster, &[id], &others)?;
            Ok((format!("isolate node {id}"), Heal::FlushRules(ids.clone())))
        }
        FaultKind::SplitMinorityMajority => {
            let small = minority(rng);
            let big: Vec<u64> = ids.iter().copied().filter(|i| !small.contains(i)).collect();
            partition(cluster, &small, &big)?;
            Ok((format!("split {small:?} | {big:?}"), Heal::FlushRules(ids.clone())))
        }
        FaultKind::Bridge => {
            let mut all = ids.clone();
            all.shuffle(rng);
            let half = all.len() / 2;
            let (left, rest) = all.split_at(half);
            let (bridge, right) = rest.split_at(1);
            partition(cluster, left, right)?;
            Ok((format!("bridge {left:?} | {bridge:?} | {right:?}"), Heal::FlushRules(ids.clone())))
        }
        FaultKind::OneWay => {
            let id = random_node(rng);
            for other in ids.iter().filter(|o| **o != id) {
                let ip = &cluster.node(*other)?.ip;
                cluster.iptables(id, &["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
            }
            Ok((format!("node {id} hears nobody (its messages still arrive)"), Heal::FlushRules(vec![id])))
        }
        FaultKind::PacketLoss => {
            let subnet = format!("{}.0/24", cluster.spec.net);
            for &id in &ids {
                cluster.iptables(
                    id,
                    &[
                        "-A",
                        "INPUT",
                        "-s",
                        &subnet,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        "0.2",
                        "-j",
                        "DROP",
                    ],
                )?;
            }
            Ok(("every node drops 20% of incoming packets".into(), Heal::FlushRules(ids.clone())))
        }
        FaultKind::DiskFull | FaultKind::DiskFullHard => {
            let id = random_node(rng);
            let node = cluster.node(id)?;
            // Soft: less than half the watermark is left, so produce is refused and replicas stop
            // storing. Hard: nothing is left, whatever the node was about to write fails.
            let keep = if kind == FaultKind::DiskFull { cluster.spec.min_free_bytes / 4 } else { 0 };
            let ballast = node.disk.join("ballast");
            let free = host::free_bytes(&node.disk)?;
            let fill = free.saturating_sub(keep);
            write_ballast(&ballast, fill)?;
            Ok((
                format!("fill node {id}'s disk ({} MiB written, {} MiB left)", fill >> 20, keep >> 20),
                Heal::RemoveBallast(ballast),
            ))
        }
        FaultKind::PowerLossOne | FaultKind::PowerLossMinority | FaultKind::PowerLossAll => {
            let victims = match kind {
                FaultKind::PowerLossOne => vec![random_node(rng)],
                FaultKind::PowerLossMinority => minority(rng),
                _ => ids.clone(),
            };
            let mut dropped = Vec::new();
            for &id in &victims {
                cluster.kill(id)?;
            }
            for &id in &victims {
                dropped.push(format!("node {id}: {}", drop_unsynced(cluster, id)?));
            }
            Ok((format!("power loss on {victims:?} ({})", dropped.join("; ")), Heal::Start(victims)))
        }
        FaultKind::ClockSkew => {
            if !cluster.spec.faketime {
                bail!("clock faults need the nodes to run under libfaketime (image runnel:chaos)");
            }
            let id = random_node(rng);
            let skew = ["-2d", "-3h", "-10m", "+10m", "+1h", "+3d"][rng.random_range(0..6)];
            let file = cluster.node(id)?.clock_file.clone();
            std::fs::write(&file, format!("{skew}\n")).with_context(|| format!("writing {}", file.display()))?;
            Ok((format!("node {id}'s clock jumps {skew}"), Heal::ResetClock(file)))
        }
        FaultKind::CorruptWal => {
            let id = random_node(rng);
            cluster.kill(id)?;
            let dropped = drop_unsynced(cluster, id)?;
            let what = corrupt_wal(&cluster.node(id)?.backing.join("db"), rng)?;
            Ok((format!("node {id} killed ({dropped}), {what}"), Heal::Start(vec![id])))
        }
    }
}

pub fn heal(cluster: &Cluster, heal: Heal) -> Result<String> {
    match heal {
        Heal::Nothing => Ok(String::new()),
        Heal::Start(ids) => {
            for &id in &ids {
                cluster.docker("start", id)?;
            }
            Ok(format!("started {ids:?}"))
        }
        Heal::Unpause(id) => {
            cluster.docker("unpause", id)?;
            Ok(format!("unpaused {id}"))
        }
        Heal::FlushRules(ids) => {
            for &id in &ids {
                // A node restarted meanwhile has a fresh network namespace without the rules.
                if cluster.running(id) == Some(true) {
                    cluster.iptables(id, &["-F", "INPUT"])?;
                    cluster.iptables(id, &["-F", "OUTPUT"])?;
                }
            }
            Ok(format!("network of {ids:?} healed"))
        }
        Heal::RemoveBallast(path) => {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            Ok(format!("removed {}", path.display()))
        }
        Heal::ResetClock(path) => {
            std::fs::write(&path, "+0\n").with_context(|| format!("writing {}", path.display()))?;
            Ok(format!("clock reset ({})", path.display()))
        }
    }
}

/// After the last cycle: every node running, unpaused, with no filter rules and no ballast.
pub fn heal_everything(cluster: &Cluster) -> Result<()> {
    for n in &cluster.nodes {
        if cluster.paused(n.id) {
            cluster.docker("unpause", n.id)?;
        }
        if cluster.running(n.id) == Some(false) {
            cluster.docker("start", n.id)?;
        } else {
            cluster.iptables(n.id, &["-F", "INPUT"])?;
            cluster.iptables(n.id, &["-F", "OUTPUT"])?;
        }
        let ballast = n.disk.join("ballast");
        if ballast.exists() {
            std::fs::remove_file(&ballast)?;
        }
        std::fs::write(&n.clock_file, "+0\n")?;
    }
    Ok(())
}

/// Drops traffic between every node of `a` and every node of `b`, both ways.
fn partition(cluster: &Cluster, a: &[u64], b: &[u64]) -> Result<()> {
    for (side, other) in [(a, b), (b, a)] {
        for &id in side {
            for &o in other {
                let ip = &cluster.node(o)?.ip;
                cluster.iptables(id, &["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
                cluster.iptables(id, &["-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
            }
        }
    }
    Ok(())
}

fn drop_unsynced(cluster: &Cluster, id: u64) -> Result<String> {
    let node = cluster.node(id)?;
    match &node.fs {
        Some(fs) => fs.drop_unsynced(),
        None => bail!("node {id} has no power-loss filesystem"),
    }
}

fn wait_healthy(cluster: &Cluster, id: u64) -> Result<()> {
    let c = cluster.container(id)?;
    host::wait_until(Duration::from_secs(60), &format!("node {id} to be healthy after its restart"), || {
        host::run("docker", &["inspect", "-f", "{{.State.Health.Status}}", &c]).is_ok_and(|s| s.trim() == "healthy")
    })
}

fn write_ballast(path: &std::path::Path, bytes: u64) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if let Err(e) = f.write_all(&chunk[..n]) {
            // The node may have written meanwhile: a full disk is what we wanted.
            if e.raw_os_error() == Some(28) {
                break;
            }
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        left -= n as u64;
    }
    Ok(())
}

/// Overwrites 8 bytes in the middle of the largest write-ahead log file in `db` (durable state of
/// a stopped node).
fn corrupt_wal(db: &std::path::Path, rng: &mut SmallRng) -> Result<String> {
    let mut wals: Vec<(u64, PathBuf)> = std::fs::read_dir(db)
        .with_context(|| format!("listing {}", db.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .collect();
    wals.sort();
    let Some((len, path)) = wals.pop() else { return Ok("no write-ahead log to damage".into()) };
    if len < 4096 {
        return Ok(format!("write-ahead log {} too small to damage ({len} bytes)", path.display()));
    }
    let at = len / 4 + rng.random_range(0..len / 2);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&rng.random::<[u8; 8]>())?;
    f.sync_all()?;
    Ok(format!("8 bytes overwritten at {at} of {} ({len} bytes)", path.display()))
}

/// Counts per fault kind, for the summary.
pub fn count(cycles: &[Cycle]) -> BTreeMap<FaultKind, usize> {
    let mut m = BTreeMap::new();
    for c in cycles {
        *m.entry(c.kind).or_insert(0) += 1;
    }
    m
}
