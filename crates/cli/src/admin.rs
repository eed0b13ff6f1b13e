//! `runnel topic ...`, `runnel cluster ...`, `runnel node ...` and `runnel partition ...`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use runnel_client::{v1, NodeId};
use runnel_server::{NodeConfig, NodeFlags};
use serde_json::{json, Value};

use crate::output::{join_ids, opt_id, print, print_json, table, OutputFormat};
use crate::{ClientOpts, ExitWith};

/// How often `node decommission --wait` looks at the metadata.
const DECOMMISSION_POLL: Duration = Duration::from_secs(1);
/// How long `node decommission --wait` waits by default, seconds.
const DECOMMISSION_WAIT_SECS: u64 = 600;

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 characters from [a-zA-Z0-9._-].
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
        /// Replicas per partition (at most the number of brokers).
        #[arg(long, short = 'r', value_parser = clap::value_parser!(u32).range(1..))]
        replication_factor: u32,
        /// Topic setting as key=value, repeatable (e.g. --config max.record.bytes=2097152).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, leaders, replicas and settings.
    Describe { name: String },
    /// Delete a topic and all its records.
    Delete { name: String },
    /// Show every configuration key of a topic with its value, marking those not at the default.
    DescribeConfig { name: String },
    /// Change a topic's configuration, all or nothing; running partitions pick it up at once.
    /// Keys: retention.ms (-1 = forever), retention.bytes (per partition, -1 = unlimited),
    /// cleanup.policy (delete | compact | compact,delete), delete.retention.ms,
    /// min.insync.replicas, max.record.bytes.
    AlterConfig {
        name: String,
        /// Set a key, repeatable (e.g. --set retention.ms=3600000).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Reset a key to its default, repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, the controller, and every partition's leader, replicas and leader epoch.
    Info,
    /// Even out replicas and preferred leaders across the live brokers.
    ///
    /// Prints the moves started (topic/partition: from -> to), or "already balanced".
    Rebalance {
        /// Only print the moves that would be made; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Brokers' status, the controller, the metadata voters and every problem partition.
    ///
    /// Lists every partition that is leaderless or under-replicated, with the reason, as the
    /// answering node sees it in its committed metadata.
    ///
    /// Exit status: 0 when the cluster is healthy (a controller, every partition led and fully
    /// replicated), 1 when it is not or when no node could be asked.
    Health,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every registered node: address, status, metadata voter, decommissioning, replicas and
    /// partitions led.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Start a new node in the foreground that joins an existing cluster.
    ///
    /// Asks the --join node(s) for the cluster's metadata voters, then runs the node like
    /// `runnel start --voters ...` (other settings: RUNNEL_* environment > --config file >
    /// defaults). The node joins the metadata group as a learner and receives replicas from new
    /// topics, reassignments and `runnel cluster rebalance`.
    Add(NodeAddArgs),
    /// Move every replica off a node so it can be stopped (or cancel that).
    ///
    /// With --wait, follows the progress until the node hosts no replica, and exits non-zero if
    /// that takes longer than --timeout-secs (the moves continue in the background).
    Decommission(DecommissionArgs),
    /// Replace a metadata voter (typically a dead node) by another live registered node.
    ReplaceVoter {
        /// The voter to remove.
        #[arg(long)]
        remove: NodeId,
        /// The node to make a voter instead.
        #[arg(long)]
        add: NodeId,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Debug, Args)]
pub struct NodeAddArgs {
    /// The new node's id (unused in the cluster, never reused for another machine).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: NodeId,
    /// Address to bind, e.g. 127.0.0.1:9295.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address others reach this node at (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Node(s) of the cluster to join: host:port[,host:port...].
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub join: Vec<String>,
    /// TOML configuration file for the other settings (as for `runnel start`).
    #[arg(long, env = "RUNNEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// As for `runnel start`: serve without TLS and node authentication beyond loopback.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct DecommissionArgs {
    /// The node to decommission.
    pub id: NodeId,
    /// Stop decommissioning: the node may receive replicas again.
    #[arg(long, conflicts_with = "wait")]
    pub cancel: bool,
    /// Wait until the node hosts no replica, printing progress.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit status 1) after this many seconds [default: 600].
    #[arg(long, requires = "wait", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: Option<u64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Debug, Args)]
pub struct PartitionArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: PartitionCommand,
}

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Move a partition to a new replica set (the first replica is the preferred leader).
    Reassign {
        topic: String,
        partition: u32,
        /// The new replicas, comma separated node ids, e.g. 4,2,3.
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        replicas: Vec<NodeId>,
    },
    /// Hand a partition's leadership to another of its replicas.
    TransferLeader {
        topic: String,
        partition: u32,
        /// The replica to hand leadership to.
        #[arg(long)]
        to: NodeId,
    },
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

pub async fn topic(args: TopicArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let out = args.client.output;
    match args.command {
        TopicCommand::Create { name, partitions, replication_factor, configs } => {
            let mut map = BTreeMap::new();
            for (k, v) in configs {
                if let Some(old) = map.insert(k.clone(), v.clone()) {
                    anyhow::bail!("--config {k} given twice ('{old}' and '{v}')");
                }
            }
            let info = client.create_topic(&name, partitions, replication_factor, map).await?;
            match out {
                OutputFormat::Json => print_json(&topic_json(&info)),
                OutputFormat::Text => print(&format!(
                    "created topic '{name}' with {partitions} partition(s), replication factor {replication_factor}\n"
                )),
            }
        }
        TopicCommand::List => {
            let md = client.metadata(&[]).await?;
            let mut topics = md.topics;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            match out {
                OutputFormat::Json => print_json(&Value::Array(topics.iter().map(topic_json).collect())),
                OutputFormat::Text => {
                    let rows: Vec<Vec<String>> = topics
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.partitions.len().to_string(),
                                replication_factor(t).to_string(),
                                t.topic_id.to_string(),
                            ]
                        })
                        .collect();
                    print(&table(&["TOPIC", "PARTITIONS", "REPLICATION_FACTOR", "TOPIC_ID"], &rows))
                }
            }
        }
        TopicCommand::Describe { name } => {
            let md = client.metadata(std::slice::from_ref(&name)).await?;
            let info =
                md.topics.iter().find(|t| t.name == name).with_context(|| format!("topic '{name}' does not exist"))?;
            match out {
                OutputFormat::Json => print_json(&topic_json(info)),
                OutputFormat::Text => {
                    let configs: BTreeMap<_, _> = info.configs.iter().collect();
                    let configs: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let mut text = format!(
                        "Topic: {}  TopicId: {}  Partitions: {}  ReplicationFactor: {}  Configs: {}\n\n",
                        info.name,
                        info.topic_id,
                        info.partitions.len(),
                        replication_factor(info),
                        if configs.is_empty() { "-".to_string() } else { configs.join(",") }
                    );
                    let mut parts = info.partitions.clone();
                    parts.sort_by_key(|p| p.partition);
                    let rows: Vec<Vec<String>> = parts.iter().map(partition_row).collect();
                    text.push_str(&table(
                        &["PARTITION", "LEADER", "REPLICAS", "LEADER_EPOCH", "PARTITION_EPOCH", "GROUP"],
                        &rows,
                    ));
                    print(&text)
                }
            }
        }
        TopicCommand::DescribeConfig { name } => {
            let (configs, overridden) = client.describe_topic_config(&name).await?;
            match out {
                OutputFormat::Json => {
                    print_json(&json!({ "topic": name, "configs": configs, "overridden": overridden }))
                }
                OutputFormat::Text => print(&config_text(&configs, &overridden)),
            }
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                anyhow::bail!("nothing to change: give --set KEY=VALUE and/or --delete KEY");
            }
            let mut map = BTreeMap::new();
            for (k, v) in set {
                if let Some(old) = map.insert(k.clone(), v.clone()) {
                    anyhow::bail!("--set {k} given twice ('{old}' and '{v}')");
                }
            }
            let configs = client.alter_topic_config(&name, map, delete).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "topic": name, "configs": configs })),
                OutputFormat::Text => {
                    let lines: Vec<String> = configs.iter().map(|(k, v)| format!("  {k}={v}")).collect();
                    print(&format!("altered the configuration of topic '{name}':\n{}\n", lines.join("\n")))
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "deleted": name })),
                OutputFormat::Text => print(&format!("deleted topic '{name}'\n")),
            }
        }
    }
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let out = args.client.output;
    match args.command {
        ClusterCommand::Info => {
            let mut md = client.metadata(&[]).await?;
            md.topics.sort_by(|a, b| a.name.cmp(&b.name));
            match out {
                OutputFormat::Json => print_json(&cluster_json(&md)),
                OutputFormat::Text => print(&cluster_text(&md)),
            }
        }
        ClusterCommand::Rebalance { dry_run } => {
            let mut moves = client.rebalance(dry_run).await?;
            moves.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            match out {
                OutputFormat::Json => print_json(&json!({
                    "dry_run": dry_run,
                    "moves": moves.iter().map(move_json).collect::<Vec<_>>(),
                })),
                OutputFormat::Text => print(&rebalance_text(&moves, dry_run)),
            }
        }
        ClusterCommand::Health => {
            let health = client.cluster_health().await?;
            match out {
                OutputFormat::Json => print_json(&health_json(&health))?,
                OutputFormat::Text => print(&health_text(&health))?,
            }
            if health.healthy {
                Ok(())
            } else {
                Err(ExitWith(1).into())
            }
        }
    }
}

pub async fn node(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::List { client: opts } => {
            let client = opts.connect().await?;
            let md = client.metadata(&[]).await?;
            match opts.output {
                OutputFormat::Json => {
                    print_json(&Value::Array(sorted_brokers(&md.brokers).into_iter().map(broker_json).collect()))
                }
                OutputFormat::Text => print(&node_table(&md.brokers)),
            }
        }
        NodeCommand::Add(add) => node_add(add).await,
        NodeCommand::Decommission(d) => decommission(d).await,
        NodeCommand::ReplaceVoter { remove, add, client: opts } => {
            let client = opts.connect().await?;
            let mut voters = client.replace_voter(remove, add).await?;
            voters.sort_unstable();
            match opts.output {
                OutputFormat::Json => print_json(&json!({ "removed": remove, "added": add, "voters": voters })),
                OutputFormat::Text => print(&format!(
                    "replaced metadata voter {remove} by node {add}; voters are now {}\n",
                    join_ids(&voters)
                )),
            }
        }
    }
}

pub async fn partition(args: PartitionArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let out = args.client.output;
    match args.command {
        PartitionCommand::Reassign { topic, partition, replicas } => {
            let info = client.reassign_partition(&topic, partition, replicas).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "topic": topic, "partition": partition_json(&info) })),
                OutputFormat::Text => print(&reassign_text(&topic, &info)),
            }
        }
        PartitionCommand::TransferLeader { topic, partition, to } => {
            let epoch = client.transfer_leader(&topic, partition, to).await?;
            match out {
                OutputFormat::Json => print_json(&json!({
                    "topic": topic, "partition": partition, "leader": to, "leader_epoch": epoch,
                })),
                OutputFormat::Text => {
                    print(&format!("{topic}/{partition}: node {to} now leads (leader epoch {epoch})\n"))
                }
            }
        }
    }
}

/// `runnel node add`: learns the metadata voters from the cluster, then runs the node like
/// `runnel start` does.
async fn node_add(args: NodeAddArgs) -> anyhow::Result<()> {
    let join = args.join.join(",");
    // A cluster that requires TLS is reached with this node's own TLS settings (its node
    // certificate passes every check); without TLS, with the RUNNEL_USER/PASSWORD/TOKEN
    // credentials if the cluster requires authentication.
    let tls = crate::ClientOpts {
        bootstrap: args.join.clone(),
        output: crate::OutputFormat::Text,
        tls_ca: std::env::var_os("RUNNEL_TLS_CA_FILE").map(PathBuf::from),
        tls_cert: std::env::var_os("RUNNEL_TLS_CERT_FILE").map(PathBuf::from),
        tls_key: std::env::var_os("RUNNEL_TLS_KEY_FILE").map(PathBuf::from),
        user: std::env::var("RUNNEL_USER").ok(),
        password: std::env::var("RUNNEL_PASSWORD").ok(),
        token: std::env::var("RUNNEL_TOKEN").ok(),
    };
    let client = tls.connect().await.with_context(|| format!("could not reach the cluster to join (--join {join})"))?;
    let md = client.metadata(&[]).await.with_context(|| format!("reading the cluster's metadata via {join}"))?;
    drop(client);
    let voters = cluster_voters(&md).map_err(anyhow::Error::msg)?;
    let provisional = args.advertise.clone().unwrap_or_else(|| args.listen.to_string());
    check_registration(&md, args.node_id, &provisional).map_err(anyhow::Error::msg)?;
    let flags = NodeFlags {
        config: args.config,
        node_id: Some(args.node_id),
        listen: Some(args.listen.to_string()),
        advertise: args.advertise,
        data_dir: Some(args.data_dir),
        voters: Some(voters.clone()),
        insecure: args.insecure,
    };
    let cfg = NodeConfig::load(&flags).with_context(|| {
        format!(
            "building the configuration of node {} (metadata voters from the cluster: {})",
            args.node_id,
            voters.join(",")
        )
    })?;
    // The environment or a --config file may have set the advertised address.
    check_registration(&md, cfg.node_id, &cfg.advertise_addr()).map_err(anyhow::Error::msg)?;
    tracing::info!(
        node_id = cfg.node_id,
        advertise = %cfg.advertise_addr(),
        join = %join,
        voters = %voters.join(","),
        "joining the cluster"
    );
    runnel_server::run_node(cfg).await
}

/// The `voters` setting (`id=host:port`, by id) for a node joining the cluster described by `md`:
/// its registered brokers that vote in the metadata group.
fn cluster_voters(md: &v1::MetadataResponse) -> Result<Vec<String>, String> {
    let mut voters = Vec::new();
    for b in sorted_brokers(&md.brokers).into_iter().filter(|b| b.voter) {
        if b.addr.is_empty() {
            return Err(format!("the cluster reports metadata voter {} without an address; try again shortly", b.id));
        }
        voters.push(format!("{}={}", b.id, b.addr));
    }
    if voters.is_empty() {
        return Err(format!(
            "node {} reported no metadata voters among the cluster's {} registered node(s); is the cluster still \
             starting (no controller yet)? Try again shortly, or --join another node",
            md.node_id,
            md.brokers.len()
        ));
    }
    Ok(voters)
}

/// Refuses to join as `node_id` at `advertise` when either already belongs to another node.
fn check_registration(md: &v1::MetadataResponse, node_id: NodeId, advertise: &str) -> Result<(), String> {
    for b in &md.brokers {
        if b.id == node_id && !b.addr.is_empty() && b.addr != advertise {
            let used: Vec<u64> = sorted_brokers(&md.brokers).iter().map(|b| b.id).collect();
            return Err(format!(
                "node id {node_id} is already registered to {} (this node would advertise {advertise}); choose an \
                 unused --node-id (registered: {})",
                b.addr,
                join_ids(&used)
            ));
        }
        if b.id != node_id && b.addr == advertise {
            return Err(format!(
                "address {advertise} is already registered to node {}; give this node another --listen (or \
                 --advertise) address",
                b.id
            ));
        }
    }
    Ok(())
}

/// `runnel node decommission`.
async fn decommission(args: DecommissionArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let out = args.client.output;
    let id = args.id;
    let remaining = client.decommission_node(id, args.cancel).await?;
    if args.cancel {
        return match out {
            OutputFormat::Json => {
                print_json(&json!({ "node_id": id, "decommissioning": false, "replicas": remaining }))
            }
            OutputFormat::Text => print(&format!(
                "node {id}: decommissioning cancelled; it hosts {remaining} replica(s) and may receive new ones\n"
            )),
        };
    }
    let progress = |text: String| match out {
        // Keep stdout one JSON document; progress goes to stderr.
        OutputFormat::Json => {
            eprintln!("{text}");
            Ok(())
        }
        OutputFormat::Text => print(&format!("{text}\n")),
    };
    let done = |remaining: u32| match out {
        OutputFormat::Json => {
            print_json(&json!({ "node_id": id, "decommissioning": true, "remaining_replicas": remaining }))
        }
        OutputFormat::Text if remaining == 0 => print(&format!("node {id} hosts no replicas: it can be stopped\n")),
        OutputFormat::Text => Ok(()),
    };
    if remaining == 0 {
        return done(0);
    }
    progress(format!("node {id}: decommissioning; {remaining} replica(s) to move off it"))?;
    if !args.wait {
        if out == OutputFormat::Text {
            print(&format!("follow with `runnel node list`, or wait with `runnel node decommission {id} --wait`\n"))?;
        }
        return done(remaining);
    }
    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(DECOMMISSION_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = Some(remaining);
    loop {
        tokio::time::sleep(DECOMMISSION_POLL).await;
        match client.metadata(&[]).await {
            Err(e) => tracing::warn!(error = %e, "reading the metadata failed; will try again"),
            Ok(md) => match md.brokers.iter().find(|b| b.id == id) {
                None => {
                    progress(format!("node {id} is no longer registered"))?;
                    return done(0);
                }
                Some(b) if !b.decommissioning => anyhow::bail!(
                    "decommissioning of node {id} was cancelled (by another command?) while it still hosts {} replica(s)",
                    b.replica_count
                ),
                Some(b) if b.replica_count == 0 => return done(0),
                Some(b) => {
                    if last != Some(b.replica_count) {
                        progress(format!("node {id}: {} replica(s) left to move", b.replica_count))?;
                        last = Some(b.replica_count);
                    }
                }
            },
        }
        if tokio::time::Instant::now() >= deadline {
            let left = last.map_or_else(|| "some".to_string(), |n| n.to_string());
            anyhow::bail!(
                "node {id} still hosts {left} replica(s) after {} s; the moves continue in the background \
                 (follow with `runnel node list`)",
                timeout.as_secs()
            );
        }
    }
}

fn config_text(configs: &BTreeMap<String, String>, overridden: &[String]) -> String {
    let rows: Vec<Vec<String>> = configs
        .iter()
        .map(|(k, v)| {
            let source = if overridden.contains(k) { "topic" } else { "default" };
            vec![k.clone(), v.clone(), source.to_string()]
        })
        .collect();
    table(&["KEY", "VALUE", "SOURCE"], &rows)
}

fn replication_factor(t: &v1::TopicInfo) -> usize {
    t.partitions.iter().map(|p| p.replicas.len()).max().unwrap_or(0)
}

/// `1,2,3`, or `1,2,3 -> 2,3,4` while a reassignment moves the partition.
fn replicas_text(p: &v1::PartitionInfo) -> String {
    if p.target_replicas.is_empty() {
        join_ids(&p.replicas)
    } else {
        format!("{} -> {}", join_ids(&p.replicas), join_ids(&p.target_replicas))
    }
}

fn partition_row(p: &v1::PartitionInfo) -> Vec<String> {
    vec![
        p.partition.to_string(),
        opt_id(p.leader),
        replicas_text(p),
        p.leader_epoch.to_string(),
        p.partition_epoch.to_string(),
        p.group_id.to_string(),
    ]
}

fn partition_json(p: &v1::PartitionInfo) -> Value {
    json!({
        "partition": p.partition,
        "leader": p.leader,
        "replicas": p.replicas,
        "target_replicas": p.target_replicas,
        "leader_epoch": p.leader_epoch,
        "partition_epoch": p.partition_epoch,
        "group_id": p.group_id,
    })
}

fn topic_json(t: &v1::TopicInfo) -> Value {
    let mut parts = t.partitions.clone();
    parts.sort_by_key(|p| p.partition);
    let configs: BTreeMap<_, _> = t.configs.iter().collect();
    json!({
        "name": t.name,
        "topic_id": t.topic_id,
        "replication_factor": replication_factor(t),
        "configs": configs,
        "partitions": parts.iter().map(partition_json).collect::<Vec<_>>(),
    })
}

fn cluster_json(md: &v1::MetadataResponse) -> Value {
    json!({
        "node_id": md.node_id,
        "metadata_version": md.metadata_version,
        "controller_id": md.controller_id,
        "brokers": md.brokers.iter().map(broker_json).collect::<Vec<_>>(),
        "topics": md.topics.iter().map(topic_json).collect::<Vec<_>>(),
    })
}

fn controller_text(controller_id: Option<u64>, brokers: &[v1::BrokerInfo]) -> String {
    match controller_id {
        Some(id) => match brokers.iter().find(|b| b.id == id) {
            Some(b) => format!("node {id} ({})", b.addr),
            None => format!("node {id}"),
        },
        None => "none (no metadata leader right now)".to_string(),
    }
}

fn cluster_text(md: &v1::MetadataResponse) -> String {
    let controller = controller_text(md.controller_id, &md.brokers);
    let mut text = format!(
        "Controller: {controller}\nAnswered by: node {} at metadata version {}\n\n",
        md.node_id, md.metadata_version
    );
    let mut brokers = md.brokers.clone();
    brokers.sort_by_key(|b| b.id);
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            vec![b.id.to_string(), b.addr.clone(), if b.alive { "yes" } else { "no" }.to_string(), b.epoch.to_string()]
        })
        .collect();
    text.push_str(&table(&["BROKER", "ADDRESS", "ALIVE", "EPOCH"], &rows));
    text.push('\n');
    let mut rows = Vec::new();
    for t in &md.topics {
        let mut parts = t.partitions.clone();
        parts.sort_by_key(|p| p.partition);
        for p in &parts {
            let mut row = vec![t.name.clone()];
            row.extend(partition_row(p));
            rows.push(row);
        }
    }
    if rows.is_empty() {
        text.push_str("(no topics)\n");
    } else {
        text.push_str(&table(
            &["TOPIC", "PARTITION", "LEADER", "REPLICAS", "LEADER_EPOCH", "PARTITION_EPOCH", "GROUP"],
            &rows,
        ));
    }
    text
}

fn sorted_brokers(brokers: &[v1::BrokerInfo]) -> Vec<&v1::BrokerInfo> {
    let mut out: Vec<&v1::BrokerInfo> = brokers.iter().collect();
    out.sort_by_key(|b| b.id);
    out
}

/// The status the controller committed, or alive/unavailable from a node that does not report it.
fn broker_status(b: &v1::BrokerInfo) -> String {
    if !b.status.is_empty() {
        b.status.clone()
    } else if b.alive {
        "alive".to_string()
    } else {
        "unavailable".to_string()
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn broker_json(b: &v1::BrokerInfo) -> Value {
    json!({
        "id": b.id,
        "addr": b.addr,
        "alive": b.alive,
        "epoch": b.epoch,
        "status": broker_status(b),
        "voter": b.voter,
        "decommissioning": b.decommissioning,
        "replicas": b.replica_count,
        "leaders": b.leader_count,
    })
}

/// `runnel node list` (and the broker part of `cluster health`): one row per node, by id.
fn node_table(brokers: &[v1::BrokerInfo]) -> String {
    if brokers.is_empty() {
        return "(no registered nodes)\n".to_string();
    }
    let rows: Vec<Vec<String>> = sorted_brokers(brokers)
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.addr.clone(),
                broker_status(b),
                yes_no(b.voter),
                yes_no(b.decommissioning),
                b.replica_count.to_string(),
                b.leader_count.to_string(),
            ]
        })
        .collect();
    table(&["ID", "ADDRESS", "STATUS", "VOTER", "DECOMMISSIONING", "REPLICAS", "LEADERS"], &rows)
}

fn move_json(m: &v1::PartitionMove) -> Value {
    json!({ "topic": m.topic, "partition": m.partition, "from": m.from, "to": m.to })
}

fn rebalance_text(moves: &[v1::PartitionMove], dry_run: bool) -> String {
    if moves.is_empty() {
        return "already balanced\n".to_string();
    }
    let mut text = if dry_run {
        format!("would move {} partition(s) (dry run: nothing moved):\n", moves.len())
    } else {
        format!("moving {} partition(s):\n", moves.len())
    };
    for m in moves {
        text.push_str(&format!("  {}/{}: {} -> {}\n", m.topic, m.partition, join_ids(&m.from), join_ids(&m.to)));
    }
    text
}

fn reassign_text(topic: &str, p: &v1::PartitionInfo) -> String {
    if p.target_replicas.is_empty() {
        format!("{topic}/{}: replicas are {} (leader {})\n", p.partition, join_ids(&p.replicas), opt_id(p.leader))
    } else {
        format!(
            "{topic}/{}: moving from replicas {} to {}; `runnel topic describe {topic}` shows when it is done\n",
            p.partition,
            join_ids(&p.replicas),
            join_ids(&p.target_replicas)
        )
    }
}

fn sorted_problems(h: &v1::ClusterHealthResponse) -> Vec<&v1::PartitionProblem> {
    let mut problems: Vec<&v1::PartitionProblem> = h.problems.iter().collect();
    problems.sort_by(|a, b| (&a.topic, a.partition, &a.kind).cmp(&(&b.topic, b.partition, &b.kind)));
    problems
}

fn health_json(h: &v1::ClusterHealthResponse) -> Value {
    let mut voters = h.metadata_voters.clone();
    voters.sort_unstable();
    json!({
        "healthy": h.healthy,
        "partitions": h.partitions,
        "controller_id": h.controller_id,
        "metadata_voters": voters,
        "brokers": sorted_brokers(&h.brokers).into_iter().map(broker_json).collect::<Vec<_>>(),
        "problems": sorted_problems(h).into_iter().map(|p| json!({
            "topic": p.topic, "partition": p.partition, "kind": p.kind, "reason": p.reason,
        })).collect::<Vec<_>>(),
    })
}

fn health_text(h: &v1::ClusterHealthResponse) -> String {
    let mut voters = h.metadata_voters.clone();
    voters.sort_unstable();
    let mut text = format!(
        "Controller: {}\nMetadata voters: {}\n\n",
        controller_text(h.controller_id, &h.brokers),
        if voters.is_empty() { "-".to_string() } else { join_ids(&voters) }
    );
    text.push_str(&node_table(&h.brokers));
    text.push('\n');
    if h.healthy {
        text.push_str(&format!("healthy: {} partitions, all led and fully replicated\n", h.partitions));
        return text;
    }
    if h.controller_id.is_none() {
        text.push_str("unhealthy: no controller (the metadata group has no leader)\n");
    }
    let problems = sorted_problems(h);
    if !problems.is_empty() {
        let affected: BTreeSet<(&str, u32)> = problems.iter().map(|p| (p.topic.as_str(), p.partition)).collect();
        text.push_str(&format!("unhealthy: {} of {} partitions have problems\n\n", affected.len(), h.partitions));
        let rows: Vec<Vec<String>> = problems
            .iter()
            .map(|p| vec![p.topic.clone(), p.partition.to_string(), p.kind.clone(), p.reason.clone()])
            .collect();
        text.push_str(&table(&["TOPIC", "PARTITION", "PROBLEM", "REASON"], &rows));
    } else if h.controller_id.is_some() {
        text.push_str("unhealthy (the answering node gave no reason)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value("a.b=1").unwrap(), ("a.b".into(), "1".into()));
        assert_eq!(parse_key_value("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_key_value("novalue").unwrap_err().contains("novalue"));
        assert!(parse_key_value("=1").is_err());
    }

    #[test]
    fn config_text_marks_overrides() {
        let configs = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("cleanup.policy".to_string(), "delete".to_string()),
        ]);
        let text = config_text(&configs, &["retention.ms".to_string()]);
        assert!(text.contains("retention.ms    1000    topic"), "{text}");
        assert!(text.contains("cleanup.policy  delete  default"), "{text}");
    }

    #[test]
    fn cluster_text_lists_everything() {
        let md = v1::MetadataResponse {
            brokers: vec![v1::BrokerInfo {
                id: 1,
                addr: "127.0.0.1:9292".into(),
                alive: true,
                epoch: 2,
                ..Default::default()
            }],
            controller_id: Some(1),
            topics: vec![v1::TopicInfo {
                name: "orders".into(),
                partitions: vec![v1::PartitionInfo {
                    partition: 0,
                    replicas: vec![1],
                    leader: None,
                    leader_epoch: 3,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            node_id: 1,
            ..Default::default()
        };
        let text = cluster_text(&md);
        assert!(text.contains("Controller: node 1 (127.0.0.1:9292)"), "{text}");
        assert!(text.contains("orders  0          -       1         3"), "{text}");
        let j = cluster_json(&md);
        assert_eq!(j["topics"][0]["partitions"][0]["leader"], Value::Null);
        assert_eq!(j["brokers"][0]["alive"], Value::Bool(true));
    }

    fn broker(id: u64, addr: &str, status: &str, voter: bool) -> v1::BrokerInfo {
        v1::BrokerInfo {
            id,
            addr: addr.into(),
            alive: status == "alive",
            epoch: 1,
            status: status.into(),
            voter,
            ..Default::default()
        }
    }

    #[test]
    fn node_table_lists_every_column() {
        let mut b2 = broker(2, "10.0.0.2:9292", "alive", false);
        b2.decommissioning = true;
        b2.replica_count = 4;
        b2.leader_count = 1;
        let brokers = vec![b2, broker(1, "10.0.0.1:9292", "alive", true), broker(3, "10.0.0.3:9292", "", false)];
        let text = node_table(&brokers);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  ADDRESS        STATUS       VOTER  DECOMMISSIONING  REPLICAS  LEADERS", "{text}");
        assert_eq!(lines[1], "1   10.0.0.1:9292  alive        yes    no               0         0", "{text}");
        assert_eq!(lines[2], "2   10.0.0.2:9292  alive        no     yes              4         1", "{text}");
        // A node that does not report a status: derived from `alive`.
        assert_eq!(lines[3], "3   10.0.0.3:9292  unavailable  no     no               0         0", "{text}");
        assert_eq!(node_table(&[]), "(no registered nodes)\n");
        let j = broker_json(&brokers[0]);
        assert_eq!(
            (j["id"].as_u64(), j["decommissioning"].as_bool(), j["replicas"].as_u64()),
            (Some(2), Some(true), Some(4))
        );
    }

    fn health(problems: Vec<v1::PartitionProblem>, controller: Option<u64>) -> v1::ClusterHealthResponse {
        v1::ClusterHealthResponse {
            healthy: problems.is_empty() && controller.is_some(),
            problems,
            brokers: vec![
                broker(1, "a:1", "alive", true),
                broker(2, "b:2", "unavailable", true),
                broker(3, "c:3", "alive", true),
            ],
            controller_id: controller,
            metadata_voters: vec![3, 1, 2],
            partitions: 6,
            ..Default::default()
        }
    }

    #[test]
    fn health_text_when_healthy() {
        let h = health(vec![], Some(1));
        let text = health_text(&h);
        assert!(text.starts_with("Controller: node 1 (a:1)\nMetadata voters: 1,2,3\n"), "{text}");
        assert!(text.contains("2   b:2      unavailable"), "{text}");
        assert!(text.ends_with("healthy: 6 partitions, all led and fully replicated\n"), "{text}");
        assert_eq!(health_json(&h)["healthy"], Value::Bool(true));
    }

    #[test]
    fn health_text_names_every_problem() {
        let problem = |topic: &str, partition: u32, kind: &str, reason: &str| v1::PartitionProblem {
            topic: topic.into(),
            partition,
            kind: kind.into(),
            reason: reason.into(),
        };
        let h = health(
            vec![
                problem("orders", 1, "under-replicated", "1 of 3 replicas are not serving: node 2 is unavailable"),
                problem("orders", 0, "under-replicated", "1 of 3 replicas are not serving: node 2 is unavailable"),
                problem("orders", 0, "leaderless", "its last leader, node 2, is unavailable"),
            ],
            Some(1),
        );
        let text = health_text(&h);
        assert!(text.contains("unhealthy: 2 of 6 partitions have problems"), "{text}");
        assert!(!text.contains("healthy: 6"), "{text}");
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        assert_eq!(tail[3], "TOPIC   PARTITION  PROBLEM           REASON", "{text}");
        assert_eq!(tail[2], "orders  0          leaderless        its last leader, node 2, is unavailable", "{text}");
        assert!(tail[1].starts_with("orders  0          under-replicated  1 of 3"), "{text}");
        assert!(tail[0].starts_with("orders  1          under-replicated"), "{text}");
        let j = health_json(&h);
        assert_eq!(j["healthy"], Value::Bool(false));
        assert_eq!(j["problems"][0]["kind"], "leaderless");
        assert_eq!(j["metadata_voters"], json!([1, 2, 3]));

        let text = health_text(&health(vec![], None));
        assert!(text.contains("Controller: none"), "{text}");
        assert!(text.contains("unhealthy: no controller"), "{text}");
    }

    #[test]
    fn rebalance_and_reassign_texts() {
        assert_eq!(rebalance_text(&[], false), "already balanced\n");
        let moves =
            vec![v1::PartitionMove { topic: "orders".into(), partition: 2, from: vec![1, 2, 3], to: vec![4, 2, 3] }];
        assert_eq!(rebalance_text(&moves, false), "moving 1 partition(s):\n  orders/2: 1,2,3 -> 4,2,3\n");
        assert!(rebalance_text(&moves, true).starts_with("would move 1 partition(s) (dry run"));
        assert_eq!(move_json(&moves[0])["to"], json!([4, 2, 3]));

        let mut p = v1::PartitionInfo { partition: 2, replicas: vec![1, 2, 3], leader: Some(1), ..Default::default() };
        assert_eq!(reassign_text("orders", &p), "orders/2: replicas are 1,2,3 (leader 1)\n");
        p.target_replicas = vec![4, 2, 3];
        assert!(reassign_text("orders", &p).starts_with("orders/2: moving from replicas 1,2,3 to 4,2,3"));
        assert_eq!(partition_row(&p)[2], "1,2,3 -> 4,2,3");
    }

    #[test]
    fn joining_needs_voters_and_a_free_id_and_address() {
        let md = v1::MetadataResponse {
            brokers: vec![
                broker(3, "h:3", "alive", true),
                broker(1, "h:1", "alive", true),
                broker(4, "h:4", "alive", false),
                broker(2, "h:2", "unavailable", true),
            ],
            node_id: 1,
            ..Default::default()
        };
        assert_eq!(cluster_voters(&md).unwrap(), vec!["1=h:1", "2=h:2", "3=h:3"]);
        assert!(check_registration(&md, 5, "h:5").is_ok());
        // Restarting a registered node at its own address is fine.
        assert!(check_registration(&md, 4, "h:4").is_ok());
        let e = check_registration(&md, 4, "h:9").unwrap_err();
        assert!(e.contains("node id 4 is already registered to h:4") && e.contains("1,2,3,4"), "{e}");
        let e = check_registration(&md, 5, "h:2").unwrap_err();
        assert!(e.contains("h:2 is already registered to node 2"), "{e}");

        let no_voters = v1::MetadataResponse { brokers: vec![broker(4, "h:4", "alive", false)], ..Default::default() };
        assert!(cluster_voters(&no_voters).unwrap_err().contains("no metadata voters"));
    }
}
