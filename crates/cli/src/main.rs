//! The `runnel` binary. See `runnel --help`.

use std::process::ExitCode;

use clap::Parser;
use runnel_cli::Cli;
use tracing_subscriber::EnvFilter;

/// A malformed request claiming billions of elements reserves address space instead of aborting
/// the node (runnel-alloc explains why).
#[global_allocator]
static ALLOC: runnel_alloc::GuardedAlloc = runnel_alloc::GuardedAlloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.command.default_log_level());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(runnel_cli::run(cli));
    // Do not wait for a blocking stdin read that will never finish.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<runnel_cli::ExitWith>() {
            // The command already said why (e.g. `cluster health` printed the problems).
            Some(exit) => ExitCode::from(exit.0),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs go to stderr, filtered by `RUNNEL_LOG` (e.g. `debug`, `runnel_client=debug,warn`).
fn init_logging(default_level: &str) {
    let filter = match std::env::var("RUNNEL_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("warning: ignoring RUNNEL_LOG='{spec}': {e}");
                EnvFilter::new(default_level)
            }
        },
        _ => EnvFilter::new(default_level),
    };
    // Colours only on a terminal: in a file, journald or `docker logs` they are escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
