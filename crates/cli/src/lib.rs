//! The `runnel` command line: run a node (`start`, `dev`, `node add`) or talk to a cluster
//! (`topic`, `produce`, `consume`, `cluster`, `node`, `partition`). `main.rs` only parses
//! arguments, sets up logging and maps errors to the exit code.

pub mod access;
pub mod admin;
pub mod bench;
pub mod bench_e2e;
pub mod bench_failover;
pub mod bench_partitions;
pub mod certs;
pub mod consume;
pub mod group;
pub mod local_cluster;
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
    /// List, describe and delete consumer groups; reset their offsets.
    Group(group::GroupArgs),
    /// Show the cluster's state and health; rebalance it.
    Cluster(admin::ClusterArgs),
    /// List, add, decommission nodes; replace metadata voters.
    Node(admin::NodeArgs),
    /// Reassign a partition's replicas or move its leadership.
    Partition(admin::PartitionArgs),
    /// Measure the cluster: throughput and latency under load.
    Bench(BenchArgs),
    /// Make a cluster CA and the node and client certificates it signs (TLS, node identity).
    Certs(certs::CertsArgs),
    /// Create, delete and list users (SCRAM passwords).
    User(access::UserArgs),
    /// Add, remove and list access rules (principal × operation × resource).
    Acl(access::AclArgs),
    /// Set, remove and list per-principal quotas.
    Quota(access::QuotaArgs),
    /// Create bearer tokens.
    Token(access::TokenArgs),
    /// Show who the cluster takes you to be.
    Whoami(access::WhoAmIArgs),
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
    /// Catch-up read of a topic's partitions from offset 0; reports records/s, MB/s and fetch
    /// latency percentiles.
    Consume(bench::ConsumeBench),
    /// Producers at a paced rate and the members of one consumer group; every record carries its
    /// send time: reports send-to-poll latency percentiles and checks nothing is missing.
    E2e(bench_e2e::E2eBench),
    /// Starts its own local cluster, kills the partition leader (kill -9) under acks=all load
    /// again and again; reports the time from each kill to the next acknowledged write
    /// (ignores --bootstrap).
    Failover(bench_failover::FailoverBench),
    /// Starts its own local cluster and creates idle partitions in steps; reports per step the
    /// time until every partition has a leader, the nodes' idle CPU and memory, and optionally
    /// (--kill) the failover of one node's partitions (ignores --bootstrap).
    Partitions(bench_partitions::PartitionsBench),
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
    /// The cluster CA certificate (PEM): connect over TLS and trust only servers it signed.
    #[arg(long, env = "RUNNEL_TLS_CA_FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, signed by the cluster CA (with --tls-key).
    #[arg(long, env = "RUNNEL_TLS_CERT_FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RUNNEL_TLS_KEY_FILE", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Log in as this user (SCRAM-SHA-512; with --password).
    #[arg(long, env = "RUNNEL_USER", global = true)]
    pub user: Option<String>,
    /// The user's password (prefer the RUNNEL_PASSWORD variable: flags show in the process list).
    #[arg(long, env = "RUNNEL_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// A bearer token (from `runnel token create`) instead of a user and password.
    #[arg(long, env = "RUNNEL_TOKEN", global = true, hide_env_values = true, conflicts_with_all = ["user", "password"])]
    pub token: Option<String>,
}

/// Ends the command with this exit status and no further message: the command already printed
/// why (`runnel cluster health` on an unhealthy cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

impl ClientOpts {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut config = runnel_client::ClientConfig::default();
        if let Some(ca) = &self.tls_ca {
            let files = runnel_security::tls::TlsFiles {
                ca: ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            };
            let tls = files.client_config().context("TLS settings (--tls-ca, --tls-cert, --tls-key)")?;
            let dialer = runnel_security::tls::TlsDialer { connect_timeout: config.connect_timeout, config: tls };
            config.dialer = Some(runnel_proto::dial::DialerHandle(std::sync::Arc::new(dialer)));
        } else if self.tls_cert.is_some() || self.tls_key.is_some() {
            anyhow::bail!(
                "--tls-cert and --tls-key need --tls-ca (the cluster CA that signed the servers' certificates)"
            );
        }
        config.credentials = match (&self.user, &self.password, &self.token) {
            (_, _, Some(token)) => Some(runnel_client::Credentials::Token(token.clone())),
            (Some(user), Some(password), None) => {
                Some(runnel_client::Credentials::Password { user: user.clone(), password: password.clone() })
            }
            (Some(_), None, None) => anyhow::bail!("--user needs --password (or RUNNEL_PASSWORD)"),
            (None, Some(_), None) => anyhow::bail!("--password needs --user (or RUNNEL_USER)"),
            (None, None, None) => None,
        };
        Ok(Client::connect_with(&self.bootstrap, config).await?)
    }
}

impl Command {
    /// The log level when `RUNNEL_LOG` is not set: nodes log progress, client commands only
    /// problems (their output is the point).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            // openraft warns once per failed RPC per group: with thousands of partitions, one
            // unreachable peer would write a line per group per retry. Its errors still show.
            Command::Start(_) | Command::Dev(_) => "info,openraft=error",
            Command::Node(admin::NodeArgs { command: admin::NodeCommand::Add(_) }) => "info",
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
            let cfg = NodeConfig::load_dev(args.listen, args.data_dir).context("loading the node configuration")?;
            tracing::info!(listen = %cfg.listen, data_dir = %cfg.data_dir.display(), "starting a single-node development cluster");
            runnel_server::run_node(cfg).await
        }
        Command::Topic(args) => admin::topic(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Group(args) => group::group(args).await,
        Command::Cluster(args) => admin::cluster(args).await,
        Command::Node(args) => admin::node(args).await,
        Command::Partition(args) => admin::partition(args).await,
        Command::Certs(args) => certs::run(&args),
        Command::User(args) => access::user(args).await,
        Command::Acl(args) => access::acl(args).await,
        Command::Quota(args) => access::quota(args).await,
        Command::Token(args) => access::token(args).await,
        Command::Whoami(args) => access::whoami(args).await,
        Command::Bench(args) => match &args.kind {
            BenchKind::Produce(b) => {
                let client = args.client.connect().await?;
                let report = bench::produce(&client, b).await?;
                match args.client.output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                    OutputFormat::Text => bench::print_text(&report),
                }
                Ok(())
            }
            BenchKind::Consume(b) => {
                let client = args.client.connect().await?;
                let report = bench::consume(&client, b).await?;
                match args.client.output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                    OutputFormat::Text => bench::print_consume_text(&report),
                }
                Ok(())
            }
            BenchKind::E2e(b) => {
                let client = args.client.connect().await?;
                let report = bench_e2e::run(&client, b).await?;
                match args.client.output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                    OutputFormat::Text => bench_e2e::print_text(&report),
                }
                anyhow::ensure!(
                    report.missing == 0,
                    "{} acknowledged records never reached a consumer",
                    report.missing
                );
                Ok(())
            }
            BenchKind::Failover(b) => bench_failover::run(b, args.client.output).await,
            BenchKind::Partitions(b) => bench_partitions::run(b, args.client.output).await,
        },
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

    #[test]
    fn operator_commands_parse() {
        let cli = Cli::try_parse_from(["runnel", "node", "list", "--bootstrap", "a:1", "--output", "json"]).unwrap();
        let Command::Node(admin::NodeArgs { command: admin::NodeCommand::List { client } }) = cli.command else {
            panic!("not node list")
        };
        assert_eq!(client.bootstrap, vec!["a:1"]);
        assert_eq!(client.output, OutputFormat::Json);

        let cli = Cli::try_parse_from([
            "runnel",
            "node",
            "add",
            "--node-id",
            "4",
            "--listen",
            "127.0.0.1:9295",
            "--data-dir",
            "/tmp/n4",
            "--join",
            "127.0.0.1:9292,127.0.0.1:9293",
        ])
        .unwrap();
        assert_eq!(cli.command.default_log_level(), "info");
        let Command::Node(admin::NodeArgs { command: admin::NodeCommand::Add(add) }) = cli.command else {
            panic!("not node add")
        };
        assert_eq!((add.node_id, add.join.len(), add.advertise), (4, 2, None));
        // --join is required; node ids start at 1.
        assert!(Cli::try_parse_from(["runnel", "node", "add", "--node-id", "4", "--listen", "a:1", "--data-dir", "d"])
            .is_err());
        assert!(Cli::try_parse_from([
            "runnel",
            "node",
            "add",
            "--node-id",
            "0",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "d",
            "--join",
            "a:1"
        ])
        .is_err());

        let cli =
            Cli::try_parse_from(["runnel", "node", "decommission", "3", "--wait", "--timeout-secs", "30"]).unwrap();
        let Command::Node(admin::NodeArgs { command: admin::NodeCommand::Decommission(d) }) = cli.command else {
            panic!("not decommission")
        };
        assert_eq!((d.id, d.wait, d.cancel, d.timeout_secs), (3, true, false, Some(30)));
        assert!(Cli::try_parse_from(["runnel", "node", "decommission", "3", "--cancel", "--wait"]).is_err());
        assert!(Cli::try_parse_from(["runnel", "node", "decommission", "3", "--timeout-secs", "5"]).is_err());
        assert!(Cli::try_parse_from(["runnel", "node", "replace-voter", "--remove", "1", "--add", "4"]).is_ok());

        let cli =
            Cli::try_parse_from(["runnel", "partition", "reassign", "orders", "2", "--replicas", "4,2,3"]).unwrap();
        let Command::Partition(p) = cli.command else { panic!("not partition") };
        let admin::PartitionCommand::Reassign { topic, partition, replicas } = p.command else {
            panic!("not reassign")
        };
        assert_eq!((topic.as_str(), partition, replicas), ("orders", 2, vec![4, 2, 3]));
        assert!(Cli::try_parse_from(["runnel", "partition", "reassign", "orders", "2"]).is_err());
        assert!(Cli::try_parse_from(["runnel", "partition", "transfer-leader", "orders", "0", "--to", "2"]).is_ok());

        let cli = Cli::try_parse_from(["runnel", "cluster", "rebalance", "--dry-run"]).unwrap();
        let Command::Cluster(c) = cli.command else { panic!("not cluster") };
        assert!(matches!(c.command, admin::ClusterCommand::Rebalance { dry_run: true }));
        assert!(Cli::try_parse_from(["runnel", "cluster", "health", "--output", "json"]).is_ok());
        assert!(Cli::try_parse_from(["runnel", "cluster", "info"]).is_ok());
    }

    /// The new user's password and the caller's own are different arguments: with
    /// RUNNEL_PASSWORD set (the caller's), `user create` must not take it as the new user's.
    #[test]
    fn a_new_users_password_is_not_the_callers() {
        let cli = Cli::try_parse_from([
            "runnel",
            "user",
            "create",
            "bob",
            "--new-password",
            "bobs",
            "--user",
            "admin",
            "--password",
            "admins",
        ])
        .unwrap();
        let Command::User(u) = cli.command else { panic!("not user") };
        let access::UserCommand::Create { new_password, .. } = u.command else { panic!("not create") };
        assert_eq!(new_password.as_deref(), Some("bobs"));
        assert_eq!(u.client.password.as_deref(), Some("admins"));
        let cli = Cli::try_parse_from(["runnel", "user", "create", "bob", "--password", "admins"]).unwrap();
        let Command::User(u) = cli.command else { panic!("not user") };
        let access::UserCommand::Create { new_password, .. } = u.command else { panic!("not create") };
        assert_eq!(new_password, None);
    }
}
