//! `runnel topic ...` and `runnel cluster info`.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use runnel_client::v1;
use serde_json::{json, Value};

use crate::output::{join_ids, opt_id, print, print_json, table, OutputFormat};
use crate::ClientOpts;

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
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
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
    match args.command {
        ClusterCommand::Info => {
            let mut md = client.metadata(&[]).await?;
            md.topics.sort_by(|a, b| a.name.cmp(&b.name));
            match args.client.output {
                OutputFormat::Json => print_json(&cluster_json(&md)),
                OutputFormat::Text => print(&cluster_text(&md)),
            }
        }
    }
}

fn replication_factor(t: &v1::TopicInfo) -> usize {
    t.partitions.iter().map(|p| p.replicas.len()).max().unwrap_or(0)
}

fn partition_row(p: &v1::PartitionInfo) -> Vec<String> {
    vec![
        p.partition.to_string(),
        opt_id(p.leader),
        join_ids(&p.replicas),
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
        "brokers": md.brokers.iter().map(|b| json!({
            "id": b.id, "addr": b.addr, "alive": b.alive, "epoch": b.epoch,
        })).collect::<Vec<_>>(),
        "topics": md.topics.iter().map(topic_json).collect::<Vec<_>>(),
    })
}

fn cluster_text(md: &v1::MetadataResponse) -> String {
    let controller = match md.controller_id {
        Some(id) => match md.brokers.iter().find(|b| b.id == id) {
            Some(b) => format!("node {id} ({})", b.addr),
            None => format!("node {id}"),
        },
        None => "none (no metadata leader right now)".to_string(),
    };
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
    fn cluster_text_lists_everything() {
        let md = v1::MetadataResponse {
            brokers: vec![v1::BrokerInfo { id: 1, addr: "127.0.0.1:9292".into(), alive: true, epoch: 2 }],
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
}
