//! `runnel produce`: stdin lines to records, batched per partition.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use runnel_client::{partition_for_key, Acks, Client, ClientError, Record};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::output::{print_json, OutputFormat};
use crate::ClientOpts;

/// Most records in one produce request.
pub const MAX_BATCH_RECORDS: usize = 500;
/// A partition's pending batch is sent once it holds this many bytes of keys and values.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Batches read but not yet sent: bounds memory when the cluster is slower than stdin.
const MAX_FLUSHES_QUEUED: usize = 2;
/// stdin read buffer: one read() fills it, and a flush happens when it runs dry.
const STDIN_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// Answer once the batch is fsynced on a quorum of replicas.
    All,
    /// Answer once the leader accepted the batch; nothing is confirmed durable.
    None,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Key for every record (records with the same key go to the same partition).
    #[arg(long, conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Each line is KEY<SEP>VALUE, split at the first SEP (e.g. --key-separator ':').
    #[arg(long, value_name = "SEP", value_parser = non_empty)]
    pub key_separator: Option<String>,
    /// Write every record to this partition instead of choosing by key.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// all: wait for a quorum fsync; none: wait only for the leader to accept.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    #[command(flatten)]
    pub client: ClientOpts,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the separator must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// How a line becomes a key and a value.
#[derive(Debug, Clone)]
pub enum KeyMode {
    None,
    Fixed(Bytes),
    Separator(Vec<u8>),
}

/// Strips the line ending and splits key from value. `line_no` counts from 1, for errors.
pub fn parse_line(mut line: Vec<u8>, mode: &KeyMode, line_no: u64) -> anyhow::Result<(Bytes, Bytes)> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    match mode {
        KeyMode::None => Ok((Bytes::new(), Bytes::from(line))),
        KeyMode::Fixed(k) => Ok((k.clone(), Bytes::from(line))),
        KeyMode::Separator(sep) => {
            let Some(at) = line.windows(sep.len()).position(|w| w == sep.as_slice()) else {
                bail!(
                    "line {line_no} has no key separator '{}' (expected KEY{}VALUE): '{}'",
                    String::from_utf8_lossy(sep),
                    String::from_utf8_lossy(sep),
                    truncate(&String::from_utf8_lossy(&line), 80)
                );
            };
            let all = Bytes::from(line);
            Ok((all.slice(..at), all.slice(at + sep.len()..)))
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    bytes: usize,
}

type Flush = Vec<(u32, Vec<Record>)>;

#[derive(Debug, Default)]
struct Sent {
    records: u64,
    per_partition: BTreeMap<u32, u64>,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let topic = args.topic.clone();
    let partitions = client.partition_count(&topic).await?;
    if let Some(p) = args.partition {
        if p >= partitions {
            bail!("--partition {p} does not exist: topic '{topic}' has {partitions} partition(s), 0..{partitions}");
        }
    }
    let mode = match (&args.key, &args.key_separator) {
        (Some(k), _) => KeyMode::Fixed(Bytes::from(k.clone().into_bytes())),
        (None, Some(sep)) => KeyMode::Separator(sep.clone().into_bytes()),
        (None, None) => KeyMode::None,
    };
    let acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::None => Acks::None,
    };

    let (tx, rx) = mpsc::channel::<Flush>(MAX_FLUSHES_QUEUED);
    let sender = tokio::spawn(send_loop(client, topic.clone(), acks, rx));
    let read_result = read_stdin(&mode, args.partition, partitions, &tx).await;
    drop(tx);
    let (sent, send_result) = sender.await.context("the sending task failed")?;

    let summary = format!(
        "sent {} record(s) to topic '{topic}' ({} partition(s) written)",
        sent.records,
        sent.per_partition.len()
    );
    // A send failure explains a read loop that stopped early, so it is reported first.
    if let Err(e) = send_result {
        bail!("{e} ({} record(s) were acknowledged before the failure)", sent.records);
    }
    if let Err(e) = read_result {
        bail!("{e:#} ({} record(s) were acknowledged before the failure)", sent.records);
    }
    match args.client.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "topic": topic,
            "records": sent.records,
            "partitions": sent.per_partition,
        }))?,
        OutputFormat::Text => eprintln!("{summary}"),
    }
    Ok(())
}

/// Reads stdin line by line into per-partition batches; hands batches to the sender when one is
/// full and whenever stdin has nothing more buffered (so interactive lines go out at once and
/// piped input goes out in large batches).
async fn read_stdin(
    mode: &KeyMode,
    fixed_partition: Option<u32>,
    partitions: u32,
    tx: &mpsc::Sender<Flush>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(STDIN_BUFFER_BYTES, tokio::io::stdin());
    let mut pending: BTreeMap<u32, Pending> = BTreeMap::new();
    // Keyless records stick to one partition until its batch is sent, then move to the next
    // (Kafka's sticky partitioner): large batches without starving any partition.
    let partitions = partitions.max(1);
    let mut sticky = rand::random::<u32>() % partitions;
    let mut line_no = 0u64;
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).await.context("reading stdin")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let (key, value) = parse_line(line, mode, line_no)?;
        let partition = match fixed_partition {
            Some(p) => p,
            None if !key.is_empty() => partition_for_key(&key, partitions),
            None => sticky,
        };
        let entry = pending.entry(partition).or_default();
        entry.bytes += key.len() + value.len();
        entry.records.push(Record { key, value, timestamp_ms: now_ms(), ..Default::default() });
        let full = entry.records.len() >= MAX_BATCH_RECORDS || entry.bytes >= MAX_BATCH_BYTES;
        if full || reader.buffer().is_empty() {
            let flush: Flush = if full {
                pending.remove(&partition).map(|p| vec![(partition, p.records)]).unwrap_or_default()
            } else {
                std::mem::take(&mut pending).into_iter().map(|(p, b)| (p, b.records)).collect()
            };
            if flush.iter().any(|(p, _)| *p == sticky) {
                sticky = (sticky + 1) % partitions;
            }
            if tx.send(flush).await.is_err() {
                // The sender stopped after an error; it reports it.
                return Ok(());
            }
        }
    }
    let flush: Flush = pending.into_iter().map(|(p, b)| (p, b.records)).collect();
    if !flush.is_empty() {
        let _ = tx.send(flush).await;
    }
    Ok(())
}

/// Sends flushes in order, each flush's partitions concurrently: at most one batch per partition
/// is in flight, so records keep their stdin order within a partition.
async fn send_loop(
    client: Client,
    topic: String,
    acks: Acks,
    mut rx: mpsc::Receiver<Flush>,
) -> (Sent, Result<(), ClientError>) {
    let mut sent = Sent::default();
    while let Some(flush) = rx.recv().await {
        let sends = flush.into_iter().map(|(p, records)| {
            let count = records.len() as u64;
            let client = &client;
            let topic = &topic;
            async move { (p, count, client.produce(topic, p, records, acks).await) }
        });
        let mut failure = None;
        for (p, count, result) in futures::future::join_all(sends).await {
            match result {
                Ok(base) => {
                    tracing::debug!(partition = p, base_offset = base, count, "batch acknowledged");
                    sent.records += count;
                    *sent.per_partition.entry(p).or_default() += count;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return (sent, Err(e));
        }
    }
    (sent, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn lines_split_into_key_and_value() {
        let sep = KeyMode::Separator(b"::".to_vec());
        let (k, v) = parse_line(line("user-1::hello::world\r\n"), &sep, 1).unwrap();
        assert_eq!((&k[..], &v[..]), (&b"user-1"[..], &b"hello::world"[..]));
        let (k, v) = parse_line(line("::v\n"), &sep, 2).unwrap();
        assert_eq!((&k[..], &v[..]), (&b""[..], &b"v"[..]));
        let e = parse_line(line("no separator here\n"), &sep, 7).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("'::'"), "{e}");

        let (k, v) = parse_line(line("plain"), &KeyMode::None, 1).unwrap();
        assert!(k.is_empty());
        assert_eq!(&v[..], b"plain");
        let (k, _) = parse_line(line("x\n"), &KeyMode::Fixed(Bytes::from_static(b"K")), 1).unwrap();
        assert_eq!(&k[..], b"K");
        let (_, v) = parse_line(line("\n"), &KeyMode::None, 1).unwrap();
        assert!(v.is_empty());
    }

    #[test]
    fn long_lines_are_truncated_in_errors() {
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("ab", 3), "ab");
        assert_eq!(truncate("ééé", 2), "éé...");
    }
}
