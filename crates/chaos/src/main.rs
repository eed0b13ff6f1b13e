//! `runnel-chaos`: see the crate docs and scripts/chaos.sh.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use runnel_chaos::faults::FaultKind;
use runnel_chaos::ChaosOptions;

#[derive(Parser, Debug)]
#[command(name = "runnel-chaos", about = "Faults on a containerised Runnel cluster, judged by the history checker")]
struct Args {
    /// The run's seed (printed; the same seed replays the same fault schedule). Default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size (3 or 5: deploy/compose/compose-N.yml).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault cycles (one fault each, then healed).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Fault kinds to choose from, comma-separated (default: all that apply to the cluster size).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    #[arg(long, default_value_t = 3)]
    producers: usize,
    /// The image to run (`scripts/image.sh --chaos` builds runnel:chaos: runnel:latest plus
    /// libfaketime, which clock-skew faults need).
    #[arg(long, default_value = "runnel:chaos")]
    image: String,
    /// The power-loss filesystem binary.
    #[arg(long, env = "RUNNEL_LOSSYFS_BIN")]
    lossyfs: PathBuf,
    /// Where mounts, node logs and the history go (default: a new directory under /tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory after a passing run (a failing run always keeps it).
    #[arg(long)]
    keep: bool,
    /// Plant a bug the run must catch: nodes acknowledge writes before fsync
    /// (RUNNEL_UNSAFE_SKIP_FSYNC). The run is expected to FAIL with lost writes.
    #[arg(long)]
    plant_skip_fsync: bool,
    /// After the heal every partition must be readable in full within this many seconds.
    #[arg(long, default_value_t = 90)]
    liveness_secs: u64,
}

fn main() -> ExitCode {
    let filter = std::env::var("RUNNEL_LOG").unwrap_or_else(|_| "warn,runnel_chaos=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    runnel_chaos::stop_on_signals();
    let seed = args.seed.unwrap_or_else(rand::random);
    let faults = if args.faults.is_empty() { FaultKind::ALL.to_vec() } else { args.faults };
    let work_dir = args.work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("runnel-chaos-{seed}")));
    println!(
        "chaos: seed {seed}, {} nodes, {} cycles{}; work dir {}",
        args.nodes,
        args.cycles,
        if args.plant_skip_fsync { ", PLANTED BUG: acknowledge before fsync" } else { "" },
        work_dir.display()
    );
    let opts = ChaosOptions {
        seed,
        nodes: args.nodes,
        cycles: args.cycles,
        faults,
        partitions: args.partitions,
        producers: args.producers,
        image: args.image,
        lossyfs_binary: args.lossyfs,
        work_dir,
        keep: args.keep,
        plant_skip_fsync: args.plant_skip_fsync,
        liveness_bound: Duration::from_secs(args.liveness_secs),
    };
    match runnel_chaos::run(&opts) {
        Ok(outcome) => {
            println!("{}", outcome.summary());
            for v in outcome.report.violations.iter().take(20) {
                println!("  {v}");
            }
            if outcome.passed() {
                println!("PASSED (seed {seed})");
                ExitCode::SUCCESS
            } else {
                println!("FAILED (seed {seed}); node logs and the history are in {}", outcome.work_dir.display());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos run could not complete (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}
