//! `runnel consume`: print records from one or all partitions of a topic.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use runnel_client::{
    Client, ClientError, ConsumedRecord, Consumer, ConsumerConfig, ErrorCode, OffsetReset, OffsetSpec,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
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
    /// The first record at or after this time (ms since the Unix epoch), per partition.
    Timestamp(i64),
}

/// `--from-timestamp`: milliseconds since the Unix epoch, or an RFC 3339 time such as
/// `2026-11-21T13:00:00Z` / `2026-11-21T14:00:00.250+01:00`.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("expected milliseconds since the Unix epoch or an RFC 3339 time like 2026-11-21T13:00:00Z, got '{s}'")
    })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let num =
        |t: &str| -> Option<i64> { (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())? };
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    // The zone: Z, or +HH:MM / -HH:MM after the time.
    let (time, offset_min) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = zone[1..].split_once(':')?;
        (t, sign * (num(zh)? * 60 + num(zm)?))
    };
    let (hms, frac) = match time.split_once('.') {
        Some((a, f)) => (a, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let ms = if frac.is_empty() { 0 } else { num(&format!("{frac:0<3}")[..3])? };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + ms)
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
    /// Start, in every partition read, at the first record whose timestamp is at or after this
    /// time: milliseconds since the Unix epoch or RFC 3339 (2026-11-21T13:00:00Z).
    #[arg(long, value_name = "MS|RFC3339", conflicts_with_all = ["offset", "from_beginning"], value_parser = parse_timestamp)]
    pub from_timestamp: Option<i64>,
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
    /// Consume as a member of this consumer group: share the topic's partitions with the group's
    /// other members and continue from the group's committed offsets. Offsets are committed after
    /// the records are printed (with --max-records, exactly the printed ones).
    #[arg(long, conflicts_with_all = ["partition", "offset"])]
    pub group: Option<String>,
    /// With --group: where a partition without a committed offset starts (earliest, latest or
    /// none). --from-beginning means earliest.
    #[arg(long, requires = "group", default_value = "latest")]
    pub reset: OffsetReset,
    /// With --group: range, roundrobin or cooperative-sticky.
    #[arg(long, requires = "group", default_value = "cooperative-sticky")]
    pub assignor: String,
    /// With --group: the coordinator removes this member after this long without a heartbeat.
    #[arg(long, requires = "group", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

type Batch = Result<(u32, Vec<ConsumedRecord>), ClientError>;

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = args.group.clone() {
        return run_group(args, &group).await;
    }
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
    let start = match (args.offset, args.from_beginning, args.from_timestamp) {
        (Some(s), _, _) => s,
        (None, _, Some(ts)) => StartAt::Timestamp(ts),
        (None, true, None) => StartAt::Earliest,
        (None, false, None) => StartAt::Latest,
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

/// `runnel consume --group`: a group member that prints, then commits what it printed.
async fn run_group(args: ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let session = Duration::from_millis(args.session_timeout_ms);
    let config = ConsumerConfig {
        group: Some(group.to_string()),
        client_id: "runnel-cli".into(),
        auto_offset_reset: if args.from_beginning { OffsetReset::Earliest } else { args.reset },
        // Commits are explicit: after printing, and only what was printed.
        enable_auto_commit: false,
        session_timeout: session,
        // Generous, as Kafka's: a live member slow to rejoin (a loaded machine) is waited for
        // instead of being dropped and rejoining as new, which would start yet another rebalance.
        // Dead members do not hold a rebalance up: they expire after the session timeout.
        rebalance_timeout: session.max(Duration::from_secs(30)),
        heartbeat_interval: (session / 4).max(Duration::from_millis(50)),
        assignor: args.assignor.clone(),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(client, config, std::slice::from_ref(&args.topic)).await?;
    let limit = args.max_records.unwrap_or(u64::MAX);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut ctrl_c = std::pin::pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut line = Vec::new();
    while printed < limit {
        let records = tokio::select! {
            biased;
            _ = &mut ctrl_c => break,
            r = consumer.poll(Duration::from_millis(500)) => r,
        };
        let records = match records {
            Ok(r) => r,
            // A member rides out coordinator moves, leader elections and slow answers (the consumer
            // rejoins or retries on its next poll); a definite error (unknown topic, reset policy
            // 'none', a protocol mismatch) ends it.
            Err(e) if e.code().is_none_or(|c| c.is_retriable()) => {
                eprintln!("warning: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            if idle.is_some_and(|d| last_record.elapsed() >= d) {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        let mut done: BTreeMap<(String, u32), u64> = BTreeMap::new();
        {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for r in &records {
                if printed >= limit {
                    break;
                }
                let rec = ConsumedRecord {
                    offset: r.offset,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                    timestamp_ms: r.timestamp_ms,
                };
                line.clear();
                format_record(&mut line, r.partition, &rec, &args, args.client.output)?;
                if let Err(e) = out.write_all(&line) {
                    return quiet_broken_pipe(e);
                }
                printed += 1;
                done.insert((r.topic.clone(), r.partition), r.offset + 1);
            }
            if let Err(e) = out.flush() {
                return quiet_broken_pipe(e);
            }
        }
        // Printed (and flushed) first, committed second: a crash in between repeats records, never
        // skips them.
        consumer.commit_offsets(&done).await?;
        if printed >= limit {
            // The positions of records fetched but not printed must not be committed: leave
            // without the consumer's own commit.
            break;
        }
    }
    consumer.close().await?;
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
        StartAt::Timestamp(ts) => match client.offset_for_timestamp(&topic, partition, ts).await {
            Ok((o, _)) => o,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        },
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
                // Batches emptied by compaction still move the position on.
                offset = r.next_offset;
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
    fn timestamps_parse_as_ms_or_rfc3339() {
        assert_eq!(parse_timestamp("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_timestamp("2026-11-21T13:00:00Z").unwrap(), 1_795_266_000_000);
        assert_eq!(parse_timestamp("2026-11-21T14:00:00.25+01:00").unwrap(), 1_795_266_000_250);
        assert_eq!(parse_timestamp("2000-02-29T00:00:00-00:30").unwrap(), 951_784_200_000);
        let e = parse_timestamp("yesterday").unwrap_err();
        assert!(e.contains("yesterday") && e.contains("RFC 3339"), "{e}");
        assert!(parse_timestamp("2026-13-01T00:00:00Z").is_err());
        let a = T::try_parse_from(["t", "orders", "--from-timestamp", "2026-11-21T13:00:00Z"]).unwrap().c;
        assert_eq!(a.from_timestamp, Some(1_795_266_000_000));
        assert!(T::try_parse_from(["t", "orders", "--from-timestamp", "5", "--from-beginning"]).is_err());
    }

    #[test]
    fn offset_needs_partition() {
        assert!(T::try_parse_from(["t", "orders", "--offset", "5"]).is_err());
        assert!(T::try_parse_from(["t", "orders", "--offset", "5", "-p", "1", "--from-beginning"]).is_err());
        let a = T::try_parse_from(["t", "orders", "--offset", "5", "-p", "1"]).unwrap().c;
        assert_eq!(a.offset, Some(StartAt::Offset(5)));
    }
}
