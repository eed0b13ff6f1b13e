//! The `runnel` command line: run a node (`start`, `dev`) or talk to a cluster (`topic`,
//! `produce`, `consume`, `cluster`). `main.rs` only parses arguments, sets up logging and maps
//! errors to the exit code.

pub mod admin;
pub mod bench;
pub mod consume;
pub mod output;
pub mod produce;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use runnel_client::Client;
use runnel_server::{NodeConfig, NodeFlags};
use runnel_types::DEFAULT_BOOTSTRAP;

pub use output::OutputFormat;

/// Runnel: a replicated, Raft-based log service.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster node (settings: flags > RUNNEL_* environment > --config file > defaults).
    Start(StartArgs),
    /// Run a single-node cluster with everything embedded, for development.
    Dev(DevArgs),
    /// Create, list, describe and delete topics.
    Topic(admin::TopicArgs),
    /// Send stdin lines to a topic, one record per line.
    Produce(produce::ProduceArgs),
    /// Print a topic's records, one per line.
    Consume(consume::ConsumeArgs),
    /// Show the cluster's state.
    Cluster(admin::ClusterArgs),
    /// Measure the cluster: throughput and latency under load.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// Concurrent producers; reports records/s, MB/s and request latency percentiles.
    Produce(bench::ProduceBench),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub node: NodeFlags,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to bind (default: 127.0.0.1:9292).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (default: ./runnel-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Options every client command takes. They may come before or after the subcommand's own
/// arguments (`runnel topic --bootstrap a:1 list` and `runnel topic list --bootstrap a:1`).
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Nodes to bootstrap from: host:port[,host:port...].
    #[arg(long, env = "RUNNEL_BOOTSTRAP", value_delimiter = ',', default_value = DEFAULT_BOOTSTRAP, global = true)]
    pub bootstrap: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
}

impl ClientOpts {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.bootstrap).await?)
    }
}

impl Command {
    /// The log level when `RUNNEL_LOG` is not set: nodes log progress, client commands only
    /// problems (their output is the point).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Start(_) | Command::Dev(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs a parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Start(args) => {
            let cfg = NodeConfig::load(&args.node).context("loading the node configuration")?;
            runnel_server::run_node(cfg).await
        }
        Command::Dev(args) => {
            let cfg = NodeConfig::dev(args.listen, args.data_dir);
            tracing::info!(listen = %cfg.listen, data_dir = %cfg.data_dir.display(), "starting a single-node development cluster");
            runnel_server::run_node(cfg).await
        }
        Command::Topic(args) => admin::topic(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Cluster(args) => admin::cluster(args).await,
        Command::Bench(args) => {
            let client = args.client.connect().await?;
            match &args.kind {
                BenchKind::Produce(b) => {
                    let report = bench::produce(&client, b).await?;
                    match args.client.output {
                        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                        OutputFormat::Text => bench::print_text(&report),
                    }
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_options_parse_anywhere() {
        let cli =
            Cli::try_parse_from(["runnel", "topic", "--bootstrap", "a:1,b:2", "list", "--output", "json"]).unwrap();
        let Command::Topic(t) = cli.command else { panic!("not a topic command") };
        assert_eq!(t.client.bootstrap, vec!["a:1", "b:2"]);
        assert_eq!(t.client.output, OutputFormat::Json);

        let cli = Cli::try_parse_from([
            "runnel",
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "max.record.bytes=10",
            "--bootstrap",
            "c:3",
        ])
        .unwrap();
        let Command::Topic(t) = cli.command else { panic!("not a topic command") };
        assert_eq!(t.client.bootstrap, vec!["c:3"]);
        let admin::TopicCommand::Create { configs, partitions, .. } = t.command else { panic!("not create") };
        assert_eq!(partitions, 3);
        assert_eq!(configs, vec![("max.record.bytes".to_string(), "10".to_string())]);

        assert!(Cli::try_parse_from(["runnel", "topic", "create", "x", "--partitions", "0", "-r", "1"]).is_err());
        assert!(Cli::try_parse_from(["runnel", "produce", "t", "--key", "k", "--key-separator", ":"]).is_err());
        let cli = Cli::try_parse_from(["runnel", "start", "--node-id", "2", "--voters", "1=a:1,2=b:2,3=c:3"]).unwrap();
        let Command::Start(s) = cli.command else { panic!("not start") };
        assert_eq!(s.node.node_id, Some(2));
        assert_eq!(s.node.voters.map(|v| v.len()), Some(3));
    }
}
