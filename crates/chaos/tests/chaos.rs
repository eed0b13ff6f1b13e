//! The bounded chaos runs CI makes (scripts/test.sh builds the image and the power-loss filesystem
//! first). Each needs root, Docker and /dev/fuse; nextest runs them alone (.config/nextest.toml).

use std::path::PathBuf;
use std::time::Duration;

use runnel_chaos::faults::FaultKind;
use runnel_chaos::{run, ChaosOptions};
use runnel_checker::ViolationKind;

/// The power-loss filesystem binary, built beside this test's binary (target/debug).
fn lossyfs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("RUNNEL_LOSSYFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/chaos-<hash> -> target/debug/runnel-lossyfs
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("runnel-lossyfs")).unwrap_or_default();
    assert!(bin.exists(), "{} is missing: build it first (cargo build --bin runnel-lossyfs)", bin.display());
    bin
}

fn image() -> String {
    let image = std::env::var("RUNNEL_CHAOS_IMAGE").unwrap_or_else(|_| "runnel:chaos".into());
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(present, "the image {image} is missing: run scripts/image.sh --chaos first");
    image
}

fn options(seed: u64, cycles: usize, faults: Vec<FaultKind>) -> ChaosOptions {
    ChaosOptions {
        seed,
        nodes: 3,
        cycles,
        faults,
        partitions: 3,
        producers: 3,
        image: image(),
        lossyfs_binary: lossyfs_binary(),
        work_dir: std::env::temp_dir().join(format!("runnel-chaos-test-{seed}")),
        keep: false,
        plant_skip_fsync: false,
        liveness_bound: Duration::from_secs(90),
    }
}

/// ≥ 20 cycles of every kind that applies to 3 nodes (power loss of one, a minority and all
/// nodes among them): nothing acknowledged is lost, nothing read is invented, the cluster serves
/// every partition afterwards, every node follows the metadata, and no node process dies by
/// itself.
#[test]
fn twenty_mixed_fault_cycles_on_three_containers_lose_nothing() {
    let kinds: Vec<FaultKind> = FaultKind::ALL.into_iter().filter(|k| k.applies_to(3)).collect();
    let seed = 20261204;
    let outcome = run(&options(seed, 20, kinds.clone())).expect("the chaos run could not complete");
    println!("{}", outcome.summary());
    for a in &outcome.actions {
        println!("{a}");
    }
    let counted = runnel_chaos::faults::count(&outcome.cycles);
    for k in [FaultKind::PowerLossOne, FaultKind::PowerLossMinority, FaultKind::PowerLossAll] {
        assert!(counted.contains_key(&k), "the schedule of seed {seed} has no {k} cycle: {counted:?}");
    }
    assert!(outcome.report.stats.acked_values > 0, "nothing was acknowledged: the run tested nothing");
    assert!(outcome.passed(), "seed {seed}:\n{}\n{}", outcome.summary(), outcome.report);
}

/// The planted bug — nodes acknowledge writes before they are synced — is caught by the power-loss
/// fault: acknowledged writes are missing afterwards. (The same bug loses the metadata group's
/// acknowledged commands too: the topic itself may be gone, which the final read reports.)
#[test]
fn power_loss_catches_acknowledging_before_fsync() {
    let seed = 4242;
    let mut opts = options(seed, 3, vec![FaultKind::PowerLossAll]);
    opts.plant_skip_fsync = true;
    let outcome = run(&opts).expect("the chaos run could not complete");
    println!("{}", outcome.summary());
    let lost = outcome
        .report
        .violations
        .iter()
        .filter(|v| match v.kind {
            ViolationKind::LostWrite | ViolationKind::PrefixClosure => true,
            ViolationKind::FinalReadFailed => v.detail.contains("does not exist"),
            _ => false,
        })
        .count();
    assert!(
        lost > 0,
        "acknowledging before fsync went unnoticed through {} power losses:\n{}",
        outcome.cycles.len(),
        outcome.report
    );
    // A failing run keeps its logs for whoever investigates; this failure was the point.
    let _ = std::fs::remove_dir_all(&outcome.work_dir);
}

/// Regression (found by the metadata probe, seed 31): a real ENOSPC (the disk filled by another
/// process, past the free-space watermark) failed a write of a node's metadata replica; openraft
/// stops an instance on a storage error, and unlike partition replicas the metadata replica was
/// not restarted when space returned, so the node stopped following the metadata until its process
/// restarted. Now `MetaReplica::run_restarter` starts a new instance once space is back: a topic
/// created after the heal reaches every node.
#[test]
fn a_real_enospc_leaves_every_nodes_metadata_replica_following() {
    let outcome = run(&options(31, 3, vec![FaultKind::DiskFullHard])).expect("the chaos run could not complete");
    println!("{}", outcome.summary());
    assert!(outcome.passed(), "{}\n{}", outcome.summary(), outcome.report);
}
