//! `runnel consume`: print records from one or all partitions of a topic.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use runnel_client::{Client, ClientError, ConsumedRecord, ErrorCode, OffsetSpec};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::OutputFormat;
use crate::ClientOpts;

/// Bytes asked for per fetch.
const FETCH_MAX_BYTES: u32 = 1024 * 1024;
/// Long-poll wait per fetch when a partition has nothing new.
const FETCH_MAX_WAIT_MS: u32 = 1_000;
/// If an empty fetch comes back faster than this, the broker did not long-poll: pause before
/// asking again rather than spinning.
const EMPTY_FETCH_PAUSE_MS: u64 = 100;
/// Fetched batches waiting to be printed, across partitions (backpressure on the fetchers).
const MAX_BATCHES_QUEUED: usize = 16;

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(u64),
}

fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        n => n
            .parse::<u64>()
            .map(StartAt::Offset)
            .map_err(|_| format!("expected an offset (a whole number), 'earliest' or 'latest', got '{s}'")),
    }
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (default: all partitions).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Start at this offset (a number, 'earliest' or 'latest'); needs --partition.
    #[arg(long, requires = "partition", conflicts_with = "from_beginning", value_parser = parse_start)]
    pub offset: Option<StartAt>,
    /// Start at the oldest record still stored (default: only records produced from now on).
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit after printing this many records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: Option<u64>,
    /// Print each record's key before its value, tab separated.
    #[arg(long)]
    pub print_key: bool,
    /// Print "Partition:P<TAB>Offset:O<TAB>" before each record.
    #[arg(long)]
    pub print_offset: bool,
    /// Exit when no record arrives for this many milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

type Batch = Result<(u32, Vec<ConsumedRecord>), ClientError>;

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let topic = args.topic.clone();
    let count = client.partition_count(&topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => {
            bail!("--partition {p} does not exist: topic '{topic}' has {count} partition(s), 0..{count}")
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let start = match (args.offset, args.from_beginning) {
        (Some(s), _) => s,
        (None, true) => StartAt::Earliest,
        (None, false) => StartAt::Latest,
    };

    let (tx, mut rx) = mpsc::channel::<Batch>(MAX_BATCHES_QUEUED);
    // Dropping the JoinSet (on any return) aborts the fetchers.
    let mut fetchers = JoinSet::new();
    for p in partitions {
        fetchers.spawn(fetch_loop(client.clone(), topic.clone(), p, start, tx.clone()));
    }
    drop(tx);

    let limit = args.max_records.unwrap_or(u64::MAX);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed = 0u64;
    let mut ctrl_c = std::pin::pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::new();
    'outer: while printed < limit {
        let next = tokio::select! {
            biased;
            _ = &mut ctrl_c => break,
            next = recv(&mut rx, idle) => next,
        };
        let (partition, records) = match next {
            Received::Batch(Ok(b)) => b,
            Received::Batch(Err(e)) => return Err(e.into()),
            Received::Idle | Received::Closed => break,
        };
        for r in &records {
            line.clear();
            format_record(&mut line, partition, r, &args, args.client.output)?;
            if let Err(e) = out.write_all(&line) {
                return quiet_broken_pipe(e);
            }
            printed += 1;
            if printed >= limit {
                break 'outer;
            }
        }
        if let Err(e) = out.flush() {
            return quiet_broken_pipe(e);
        }
    }
    if let Err(e) = out.flush() {
        return quiet_broken_pipe(e);
    }
    eprintln!("consumed {printed} record(s)");
    Ok(())
}

enum Received {
    Batch(Batch),
    /// `--timeout-ms` passed with nothing new.
    Idle,
    /// Every fetcher stopped.
    Closed,
}

async fn recv(rx: &mut mpsc::Receiver<Batch>, idle: Option<Duration>) -> Received {
    let next = match idle {
        Some(d) => match tokio::time::timeout(d, rx.recv()).await {
            Ok(n) => n,
            Err(_) => return Received::Idle,
        },
        None => rx.recv().await,
    };
    next.map_or(Received::Closed, Received::Batch)
}

fn quiet_broken_pipe(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        bail!("writing to stdout: {e}")
    }
}

/// Fetches one partition forever, sending non-empty batches to the printer. Jumps to the nearest
/// valid offset (with a warning) when its position falls outside the log, e.g. after retention.
async fn fetch_loop(client: Client, topic: String, partition: u32, start: StartAt, tx: mpsc::Sender<Batch>) {
    let mut offset = match start {
        StartAt::Offset(o) => o,
        StartAt::Earliest | StartAt::Latest => {
            let spec = if start == StartAt::Earliest { OffsetSpec::Earliest } else { OffsetSpec::Latest };
            match client.list_offsets(&topic, partition, spec).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    };
    // An offset the user typed that is out of range is their mistake: report it. Once reading,
    // falling out of range (retention overtook us) moves to the nearest valid offset instead.
    let mut explicit = matches!(start, StartAt::Offset(_));
    loop {
        let asked = Instant::now();
        match client.fetch(&topic, partition, offset, FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS).await {
            Ok(r) if r.records.is_empty() => {
                if asked.elapsed() < Duration::from_millis(EMPTY_FETCH_PAUSE_MS) {
                    tokio::time::sleep(Duration::from_millis(EMPTY_FETCH_PAUSE_MS)).await;
                }
            }
            Ok(r) => {
                explicit = false;
                offset = r.next_offset;
                if tx.send(Ok((partition, r.records))).await.is_err() {
                    return;
                }
            }
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) && explicit => {
                let msg = match e.valid_range() {
                    Some((start, end)) => {
                        format!("--offset {offset} is outside {topic}/{partition}'s valid range [{start}, {end}]")
                    }
                    None => format!("--offset {offset} is out of range: {e}"),
                };
                let _ = tx.send(Err(ClientError::InvalidArgument(msg))).await;
                return;
            }
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                let (start, end) = match e.valid_range() {
                    Some(range) => range,
                    None => {
                        let earliest = client.list_offsets(&topic, partition, OffsetSpec::Earliest).await;
                        let latest = client.list_offsets(&topic, partition, OffsetSpec::Latest).await;
                        match (earliest, latest) {
                            (Ok(s), Ok(l)) => (s, l),
                            (Err(e), _) | (_, Err(e)) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                };
                let to = if offset < start { start } else { end };
                eprintln!(
                    "warning: offset {offset} is outside {topic}/{partition}'s valid range [{start}, {end}]; continuing from {to}"
                );
                offset = to;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Formats one record as a line: raw value bytes (with optional prefixes) or a JSON object.
fn format_record(
    out: &mut Vec<u8>,
    partition: u32,
    r: &ConsumedRecord,
    args: &ConsumeArgs,
    format: OutputFormat,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|h| (h.key.clone(), Value::String(String::from_utf8_lossy(&h.value).into_owned())))
                .collect();
            let obj = json!({
                "partition": partition,
                "offset": r.offset,
                "key": if r.key.is_empty() { Value::Null } else { Value::String(String::from_utf8_lossy(&r.key).into_owned()) },
                "value": String::from_utf8_lossy(&r.value),
                "timestamp_ms": r.timestamp_ms,
                "headers": headers,
            });
            serde_json::to_writer(&mut *out, &obj)?;
        }
        OutputFormat::Text => {
            if args.print_offset {
                out.extend_from_slice(format!("Partition:{partition}\tOffset:{}\t", r.offset).as_bytes());
            }
            if args.print_key {
                out.extend_from_slice(&r.key);
                out.push(b'\t');
            }
            out.extend_from_slice(&r.value);
        }
    }
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: ConsumeArgs,
    }

    fn rec() -> ConsumedRecord {
        ConsumedRecord {
            offset: 42,
            key: Bytes::from_static(b"k1"),
            value: Bytes::from_static(b"v\xff"),
            headers: vec![],
            timestamp_ms: 7,
        }
    }

    #[test]
    fn start_positions() {
        assert_eq!(parse_start("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_start("17"), Ok(StartAt::Offset(17)));
        assert!(parse_start("-1").unwrap_err().contains("'-1'"));
    }

    #[test]
    fn text_and_json_lines() {
        let args = T::try_parse_from(["t", "orders", "--print-key", "--print-offset"]).unwrap().c;
        let mut out = Vec::new();
        format_record(&mut out, 3, &rec(), &args, OutputFormat::Text).unwrap();
        assert_eq!(out, b"Partition:3\tOffset:42\tk1\tv\xff\n");
        out.clear();
        format_record(&mut out, 3, &rec(), &args, OutputFormat::Json).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["partition"], 3);
        assert_eq!(v["offset"], 42);
        assert_eq!(v["key"], "k1");
        assert_eq!(v["value"], "v\u{fffd}");
        assert_eq!(v["timestamp_ms"], 7);
    }

    #[test]
    fn offset_needs_partition() {
        assert!(T::try_parse_from(["t", "orders", "--offset", "5"]).is_err());
        assert!(T::try_parse_from(["t", "orders", "--offset", "5", "-p", "1", "--from-beginning"]).is_err());
        let a = T::try_parse_from(["t", "orders", "--offset", "5", "-p", "1"]).unwrap().c;
        assert_eq!(a.offset, Some(StartAt::Offset(5)));
    }
}
