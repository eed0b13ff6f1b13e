//! `runnel-sim --seed N` (one run, verbose) or `runnel-sim --seeds N [--first S]` (many, summary).

use std::process::ExitCode;

use clap::Parser;
use runnel_sim::{run, PlantedBug, SimOptions};

#[derive(Parser)]
#[command(name = "runnel-sim", about = "Deterministic simulation of a Runnel cluster")]
struct Args {
    /// Run exactly this seed and print its options, result and violations.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many consecutive seeds starting at --first (default: a random start).
    #[arg(long)]
    seeds: Option<u64>,
    #[arg(long)]
    first: Option<u64>,
    /// Plant a known bug (the checker must catch it): ack-before-commit or skip-fsync.
    #[arg(long)]
    plant: Option<String>,
    /// Partitions of the idle topic, instead of what the seed picks (a many-group run).
    #[arg(long)]
    idle_partitions: Option<u32>,
    /// Write the history as JSON Lines here (with --seed).
    #[arg(long)]
    history: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let planted = match args.plant.as_deref() {
        None => None,
        Some("skip-fsync") => Some(PlantedBug::SkipFsync),
        Some("ack-before-commit") => Some(PlantedBug::AckBeforeCommit),
        Some(other) => {
            eprintln!("error: unknown --plant '{other}' (known: ack-before-commit, skip-fsync)");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => {
            let first = args.first.unwrap_or_else(|| rand::random::<u32>() as u64);
            (first..first + n).collect()
        }
        (None, None) => vec![rand::random::<u32>() as u64],
    };
    let mut failed = Vec::new();
    for seed in &seeds {
        let mut options = SimOptions::from_seed(*seed);
        options.planted = planted;
        if let Some(n) = args.idle_partitions {
            options.idle_partitions = n;
        }
        if seeds.len() == 1 {
            println!("options: {options}");
        }
        match run(options.clone()) {
            Ok(out) => {
                if let Some(path) = &args.history {
                    if let Ok(f) = std::fs::File::create(path) {
                        let _ = runnel_checker::write_jsonl(std::io::BufWriter::new(f), &out.history);
                    }
                }
                println!(
                    "seed {seed}: {} ({} events, {} ms simulated, fingerprint {:016x})",
                    runnel_checker::summary_line(&out.report),
                    out.history.len(),
                    out.sim_ms,
                    out.fingerprint
                );
                if !out.ok() {
                    println!("{}", out.report);
                    println!("reproduce: {}", options.repro());
                    failed.push(*seed);
                }
            }
            Err(e) => {
                println!("seed {seed}: ERROR {e}\nreproduce: {}", options.repro());
                failed.push(*seed);
            }
        }
    }
    println!(
        "{} seeds, {} failed{}",
        seeds.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": {failed:?}") }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
