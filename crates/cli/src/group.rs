//! `runnel group list|describe|delete|reset-offsets`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use runnel_client::{v1, Client, CommittedOffsets, OffsetSpec};
use serde_json::{json, Value};

use crate::output::{print, print_json, table, OutputFormat};
use crate::ClientOpts;

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every consumer group: state, members, generation.
    List,
    /// A group's members and their partitions, and per partition the committed offset, the end
    /// of the log and the lag between them.
    Describe { group: String },
    /// Delete a group and its committed offsets (it must have no active members).
    Delete { group: String },
    /// Move a group's committed offsets for a topic (the group must have no active members).
    ///
    /// Prints the new offset of every partition.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime"])))]
pub struct ResetArgs {
    pub group: String,
    /// The topic whose offsets move.
    #[arg(long)]
    pub topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// To the oldest record still stored.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the end of the log (skip everything not yet read).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (clamped to each partition's valid range).
    #[arg(long)]
    pub to_offset: Option<u64>,
    /// To the first record at or after this time: RFC 3339 (2026-11-21T10:00:00Z) or
    /// milliseconds since the Unix epoch.
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// Only print what would be committed.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn group(args: GroupArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let out = args.client.output;
    match args.command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            match out {
                OutputFormat::Json => print_json(&Value::Array(
                    groups
                        .iter()
                        .map(|g| {
                            json!({"group": g.group, "state": g.state, "members": g.members,
                                   "generation": g.generation, "assignor": g.assignor})
                        })
                        .collect(),
                )),
                OutputFormat::Text => {
                    let rows: Vec<Vec<String>> = groups
                        .iter()
                        .map(|g| {
                            vec![
                                g.group.clone(),
                                g.state.clone(),
                                g.members.to_string(),
                                g.generation.to_string(),
                                if g.assignor.is_empty() { "-".into() } else { g.assignor.clone() },
                            ]
                        })
                        .collect();
                    print(&table(&["GROUP", "STATE", "MEMBERS", "GENERATION", "ASSIGNOR"], &rows))
                }
            }
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            let lags = lag_rows(&client, &d).await?;
            match out {
                OutputFormat::Json => print_json(&describe_json(&d, &lags)),
                OutputFormat::Text => print(&describe_text(&d, &lags)),
            }
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "deleted": group })),
                OutputFormat::Text => print(&format!("deleted group '{group}'\n")),
            }
        }
        GroupCommand::ResetOffsets(r) => reset(&client, r, out).await,
    }
}

/// (topic, partition, committed, end offset, lag, owner) for every partition the group has an
/// offset for or a member is assigned.
type LagRow = (String, u32, Option<u64>, u64, Option<u64>, String);

async fn lag_rows(client: &Client, d: &v1::DescribeGroupResponse) -> anyhow::Result<Vec<LagRow>> {
    let mut parts: BTreeMap<(String, u32), (Option<u64>, String)> = BTreeMap::new();
    for o in &d.offsets {
        parts.entry((o.topic.clone(), o.partition)).or_default().0 = Some(o.offset);
    }
    for m in &d.members {
        for tp in &m.assignment {
            parts.entry((tp.topic.clone(), tp.partition)).or_default().1 = m.member_id.clone();
        }
    }
    let mut rows = Vec::new();
    for ((topic, partition), (committed, owner)) in parts {
        let end = client.list_offsets(&topic, partition, OffsetSpec::Latest).await?;
        let lag = committed.map(|c| end.saturating_sub(c));
        rows.push((topic, partition, committed, end, lag, owner));
    }
    Ok(rows)
}

fn describe_text(d: &v1::DescribeGroupResponse, lags: &[LagRow]) -> String {
    let mut s = format!(
        "group '{}': {}, generation {}, assignor {}, {} member(s), coordinator node {}\n",
        d.group,
        d.state,
        d.generation,
        if d.assignor.is_empty() { "-" } else { &d.assignor },
        d.members.len(),
        d.coordinator
    );
    if !d.members.is_empty() {
        s.push('\n');
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                let parts: Vec<String> =
                    m.assignment.iter().map(|tp| format!("{}/{}", tp.topic, tp.partition)).collect();
                vec![m.member_id.clone(), m.client_id.clone(), parts.join(",")]
            })
            .collect();
        s.push_str(&table(&["MEMBER", "CLIENT", "PARTITIONS"], &rows));
    }
    if !lags.is_empty() {
        s.push('\n');
        let rows: Vec<Vec<String>> = lags
            .iter()
            .map(|(t, p, c, end, lag, owner)| {
                vec![
                    t.clone(),
                    p.to_string(),
                    c.map_or("-".into(), |c| c.to_string()),
                    end.to_string(),
                    lag.map_or("-".into(), |l| l.to_string()),
                    if owner.is_empty() { "-".into() } else { owner.clone() },
                ]
            })
            .collect();
        s.push_str(&table(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"], &rows));
    }
    s
}

fn describe_json(d: &v1::DescribeGroupResponse, lags: &[LagRow]) -> Value {
    json!({
        "group": d.group,
        "state": d.state,
        "generation": d.generation,
        "assignor": d.assignor,
        "coordinator": d.coordinator,
        "members": d.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "topics": m.topics,
            "assignment": m.assignment.iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "partitions": lags.iter().map(|(t, p, c, end, lag, owner)| json!({
            "topic": t, "partition": p, "committed": c, "end": end, "lag": lag,
            "member": if owner.is_empty() { Value::Null } else { Value::String(owner.clone()) },
        })).collect::<Vec<_>>(),
    })
}

/// Milliseconds since the Unix epoch, from RFC 3339 or a plain number.
pub fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("'{s}' is neither RFC 3339 (2026-11-21T10:00:00Z) nor milliseconds since the epoch")
    })?;
    let d = t.duration_since(std::time::UNIX_EPOCH).with_context(|| format!("'{s}' is before 1970"))?;
    Ok(d.as_millis() as i64)
}

async fn reset(client: &Client, r: ResetArgs, out: OutputFormat) -> anyhow::Result<()> {
    let count = client.partition_count(&r.topic).await?;
    let partitions: Vec<u32> = match r.partition {
        Some(p) if p >= count => bail!("--partition {p} does not exist: topic '{}' has {count} partition(s)", r.topic),
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let at = r.to_datetime.as_deref().map(parse_datetime).transpose()?;
    let mut offsets = CommittedOffsets::new();
    for p in partitions {
        let start = client.list_offsets(&r.topic, p, OffsetSpec::Earliest).await?;
        let end = client.list_offsets(&r.topic, p, OffsetSpec::Latest).await?;
        let to = if r.to_earliest {
            start
        } else if r.to_latest {
            end
        } else if let Some(o) = r.to_offset {
            o.clamp(start, end)
        } else if let Some(ts) = at {
            client.offset_for_timestamp(&r.topic, p, ts).await?.0
        } else {
            bail!("say where to: --to-earliest, --to-latest, --to-offset N or --to-datetime T")
        };
        offsets.insert((r.topic.clone(), p), to);
    }
    if !r.dry_run {
        // Outside any generation: refused while the group has active members.
        client.commit_offsets(&r.group, "", -1, &offsets).await?;
    }
    match out {
        OutputFormat::Json => print_json(&json!({
            "group": r.group,
            "dry_run": r.dry_run,
            "offsets": offsets.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o})).collect::<Vec<_>>(),
        })),
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> =
                offsets.iter().map(|((t, p), o)| vec![t.clone(), p.to_string(), o.to_string()]).collect();
            let mut s = table(&["TOPIC", "PARTITION", "NEW OFFSET"], &rows);
            if r.dry_run {
                s.push_str("(dry run: nothing committed)\n");
            }
            print(&s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_as_rfc3339_or_epoch_millis() {
        assert_eq!(parse_datetime("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_datetime("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        let e = parse_datetime("yesterday").unwrap_err().to_string();
        assert!(e.contains("'yesterday'"), "{e}");
    }
}
