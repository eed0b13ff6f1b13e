//! `runnel bench produce`: drives a cluster with concurrent acks=all producers and reports
//! throughput and latency (hdrhistogram). Speed is measured here, never asserted in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use runnel_client::{Client, Compression, DeliveryFuture, ErrorCode, Producer, ProducerConfig};
use runnel_proto::v1::{Acks, Record};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceBench {
    /// Topic to write to; created if missing.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Records to send in total.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// `producer`: the SDK's batching [`runnel_client::Producer`] (records are sent one by one;
    /// latency is per record, from send to acknowledgement). `requests`: hand-made batches of
    /// `--batch` records, `--in-flight` requests at once (latency is per request).
    #[arg(long, default_value = "producer")]
    pub mode: String,
    /// Records per produce request (`--mode requests`).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// `--mode requests`: produce requests in flight at once (spread over partitions).
    /// `--mode producer`: batches in flight per partition per producer (at most 5 when idempotent).
    /// Default 32 requests, 5 batches.
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// `--mode producer`: a batch is sent once it holds this many bytes ...
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_bytes: usize,
    /// ... or once its first record waited this long (milliseconds).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// `--mode producer`: none | lz4 | zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// `--mode producer`: independent producers (each with its own id and buffers), each sending
    /// an equal share of the records from its own task.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// `--mode producer`: turn idempotence off.
    #[arg(long)]
    pub no_idempotence: bool,
    /// `--mode producer`: keyed records (key = record number), spread by murmur2; default keyless
    /// (sticky partitioning).
    #[arg(long)]
    pub keyed: bool,
    /// `--mode producer`: pace the senders to this many records/s in total (0 = as fast as
    /// possible). Latency at a fixed fraction of the maximum rate is what matters to users.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Replication factor when the topic is created.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// all | none
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub records: u64,
    pub record_size: usize,
    pub batch: usize,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    pub compression: String,
    pub producers: usize,
    pub rate: u64,
    pub in_flight: usize,
    pub partitions: u32,
    pub replication_factor: u32,
    pub acks: String,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub errors: u64,
}

/// Latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5): construction cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// p50, p99, p99.9 and max of a microsecond histogram, in milliseconds.
pub(crate) fn percentiles_ms(hist: &Histogram<u64>) -> [f64; 4] {
    let ms = |v: u64| Duration::from_micros(v).as_secs_f64() * 1000.0;
    [hist.value_at_quantile(0.50), hist.value_at_quantile(0.99), hist.value_at_quantile(0.999), hist.max()].map(ms)
}

/// The benchmarks' progress bar over `len` units (hidden with --quiet).
pub(crate) fn progress_bar(len: u64, quiet: bool, unit: &str) -> ProgressBar {
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(len) };
    pb.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Elections after topic creation are not part of the measurement: wait (up to 30 s) until every
/// partition has a leader.
pub(crate) async fn wait_for_leaders(client: &Client, topic: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A node that has not applied the topic's creation yet answers UNKNOWN_TOPIC: not ready.
        let ready = match client.metadata(&[topic.to_string()]).await {
            Ok(m) => m.topics.iter().any(|t| t.name == topic && t.partitions.iter().all(|p| p.leader.is_some())),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the topic's leaders");
                false
            }
            Err(e) => return Err(e.into()),
        };
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "partitions of '{topic}' have no leader after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topic's partition count, creating it (`partitions`, `rf`) when it does not exist.
pub(crate) async fn ensure_topic(client: &Client, topic: &str, partitions: u32, rf: u32) -> anyhow::Result<u32> {
    match client.partition_count(topic).await {
        Ok(n) => Ok(n),
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            client
                .create_topic(topic, partitions, rf, Default::default())
                .await
                .with_context(|| format!("creating topic '{topic}'"))?;
            Ok(partitions)
        }
        Err(e) => Err(e).with_context(|| format!("looking up topic '{topic}'")),
    }
}

pub async fn produce(client: &Client, b: &ProduceBench) -> anyhow::Result<BenchReport> {
    let acks = match b.acks.as_str() {
        "all" => Acks::All,
        "none" => Acks::None,
        other => anyhow::bail!("--acks must be 'all' or 'none', not '{other}'"),
    };
    match b.mode.as_str() {
        "producer" => return produce_sdk(client, b, acks).await,
        "requests" => {}
        other => anyhow::bail!("--mode must be 'producer' or 'requests', not '{other}'"),
    }
    let in_flight = b.in_flight.unwrap_or(32);
    anyhow::ensure!(
        b.batch > 0 && in_flight > 0 && b.records > 0,
        "--batch, --in-flight and --records must be positive"
    );
    let partitions = ensure_topic(client, &b.topic, b.partitions, b.replication_factor).await?;
    wait_for_leaders(client, &b.topic).await?;
    let value = Bytes::from(vec![b'x'; b.record_size]);
    let batches_total = b.records.div_ceil(b.batch as u64);
    let next_batch = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pb = progress_bar(b.records, b.quiet, "records");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let (client, topic, value, next_batch, errors, pb) =
            (client.clone(), b.topic.clone(), value.clone(), next_batch.clone(), errors.clone(), pb.clone());
        let batch = b.batch;
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut p = (w as u32) % partitions;
            loop {
                let i = next_batch.fetch_add(1, Ordering::Relaxed);
                if i >= batches_total {
                    break;
                }
                let records: Vec<Record> = (0..batch)
                    .map(|_| Record {
                        key: Bytes::new(),
                        value: value.clone(),
                        headers: vec![],
                        timestamp_ms: 0,
                        offset_delta: None,
                        ..Default::default()
                    })
                    .collect();
                let t = Instant::now();
                match client.produce(&topic, p, records, acks).await {
                    Ok(_) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        pb.inc(batch as u64);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "produce failed");
                    }
                }
                p = (p + 1) % partitions;
            }
            hist
        }));
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(t.await.context("bench task")?).context("merging histograms")?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    pb.finish_and_clear();
    let sent = hist.len() * b.batch as u64;
    let [p50, p99, p999, max] = percentiles_ms(&hist);
    Ok(BenchReport {
        mode: b.mode.clone(),
        records: sent,
        record_size: b.record_size,
        batch: b.batch,
        batch_bytes: 0,
        linger_ms: 0,
        compression: "none".into(),
        producers: in_flight,
        rate: 0,
        in_flight,
        partitions,
        replication_factor: b.replication_factor,
        acks: b.acks.clone(),
        seconds: secs,
        records_per_sec: sent as f64 / secs,
        mb_per_sec: (sent as f64 * b.record_size as f64) / secs / 1e6,
        latency_ms_p50: p50,
        latency_ms_p99: p99,
        latency_ms_p999: p999,
        latency_ms_max: max,
        errors: errors.load(Ordering::Relaxed),
    })
}

pub fn print_text(r: &BenchReport) {
    if r.mode == "producer" {
        println!(
            "produced {} records of {} B in {:.2} s: {:.0} records/s, {:.1} MB/s ({} producer(s), batch {} B, linger {} ms, \
             in-flight {}/partition, {}, {} partitions, RF {}, acks={}, rate {})",
            r.records,
            r.record_size,
            r.seconds,
            r.records_per_sec,
            r.mb_per_sec,
            r.producers,
            r.batch_bytes,
            r.linger_ms,
            r.in_flight,
            r.compression,
            r.partitions,
            r.replication_factor,
            r.acks,
            if r.rate == 0 { "unlimited".to_string() } else { format!("{}/s", r.rate) }
        );
    } else {
        println!(
            "produced {} records of {} B in {:.2} s: {:.0} records/s, {:.1} MB/s (batch {}, in-flight {}, {} partitions, acks={})",
            r.records, r.record_size, r.seconds, r.records_per_sec, r.mb_per_sec, r.batch, r.in_flight, r.partitions, r.acks
        );
    }
    let what = if r.mode == "producer" { "record (send to ack)" } else { "request" };
    println!(
        "{what} latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}   errors: {}",
        r.latency_ms_p50, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max, r.errors
    );
}

/// `--mode producer`: records go one by one through [`Producer::send`]; a collector per producer
/// awaits the delivery futures and records each record's send-to-acknowledgement latency.
async fn produce_sdk(client: &Client, b: &ProduceBench, acks: Acks) -> anyhow::Result<BenchReport> {
    use futures::StreamExt;

    anyhow::ensure!(b.records > 0 && b.producers > 0, "--records and --producers must be positive");
    let compression = match b.compression.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => anyhow::bail!("--compression must be none, lz4 or zstd, not '{other}'"),
    };
    let idempotent = !b.no_idempotence && acks == Acks::All;
    let config = ProducerConfig {
        acks,
        idempotent,
        batch_size_bytes: b.batch_bytes,
        linger: Duration::from_millis(b.linger_ms),
        compression,
        max_in_flight_per_partition: b.in_flight.unwrap_or(5),
        ..ProducerConfig::default()
    };
    let partitions = ensure_topic(client, &b.topic, b.partitions, b.replication_factor).await?;
    wait_for_leaders(client, &b.topic).await?;
    let mut producers = Vec::new();
    for _ in 0..b.producers {
        producers.push(Producer::new(client.clone(), config.clone()).await.context("starting a producer")?);
    }
    let value = Bytes::from(vec![b'x'; b.record_size]);
    let errors = Arc::new(AtomicU64::new(0));
    let pb = progress_bar(b.records, b.quiet, "records");
    let start = Instant::now();
    let mut tasks = Vec::new();
    let n = b.producers as u64;
    for (k, producer) in producers.into_iter().enumerate() {
        let share = b.records / n + u64::from((k as u64) < b.records % n);
        let per_producer_rate = b.rate as f64 / n as f64;
        let (topic, value, errors, pb, keyed) = (b.topic.clone(), value.clone(), errors.clone(), pb.clone(), b.keyed);
        tasks.push(tokio::spawn(async move {
            // Bounded hand-off from the sender to the collector (the producer's buffer memory
            // bounds it too).
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, DeliveryFuture)>(65_536);
            let sender = tokio::spawn(async move {
                for i in 0..share {
                    if per_producer_rate > 0.0 {
                        let due = start + Duration::from_secs_f64(i as f64 / per_producer_rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let key = if keyed { Bytes::from(format!("{k}-{i}")) } else { Bytes::new() };
                    let record = Record { key, value: value.clone(), ..Default::default() };
                    let t = Instant::now();
                    let f = producer.send(&topic, record).await?;
                    if tx.send((t, f)).await.is_err() {
                        break;
                    }
                }
                producer.flush().await?;
                Ok::<_, anyhow::Error>(())
            });
            let mut hist = new_histogram();
            let mut pending = futures::stream::FuturesUnordered::new();
            let mut open = true;
            while open || !pending.is_empty() {
                tokio::select! {
                    m = rx.recv(), if open => match m {
                        Some((t, f)) => pending.push(async move { (t, f.await) }),
                        None => open = false,
                    },
                    Some((t, r)) = pending.next(), if !pending.is_empty() => match r {
                        Ok(_) => {
                            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                            pb.inc(1);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::warn!(error = %e, "produce failed");
                            }
                        }
                    },
                }
            }
            sender.await.context("sender task")??;
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(t.await.context("bench task")??).context("merging histograms")?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    pb.finish_and_clear();
    let sent = hist.len();
    let [p50, p99, p999, max] = percentiles_ms(&hist);
    Ok(BenchReport {
        mode: b.mode.clone(),
        records: sent,
        record_size: b.record_size,
        batch: 0,
        batch_bytes: b.batch_bytes,
        linger_ms: b.linger_ms,
        compression: b.compression.clone(),
        producers: b.producers,
        rate: b.rate,
        in_flight: b.in_flight.unwrap_or(5),
        partitions,
        replication_factor: b.replication_factor,
        acks: b.acks.clone(),
        seconds: secs,
        records_per_sec: sent as f64 / secs,
        mb_per_sec: (sent as f64 * b.record_size as f64) / secs / 1e6,
        latency_ms_p50: p50,
        latency_ms_p99: p99,
        latency_ms_p999: p999,
        latency_ms_max: max,
        errors: errors.load(Ordering::Relaxed),
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeBench {
    /// Topic to read (e.g. one filled by `runnel bench produce`).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions to read, comma separated (default: all). Each is read by its own task.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Option<Vec<u32>>,
    /// Bytes asked for per fetch.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub fetch_bytes: u32,
    /// Stop once at least this many records were read in total (whole fetches are counted; default:
    /// everything up to the high watermarks as they were at the start: a catch-up read).
    #[arg(long)]
    pub records: Option<u64>,
    /// Concurrent consumers; the partitions are dealt among them (default: one per partition).
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct ConsumeReport {
    pub topic: String,
    pub partitions: Vec<u32>,
    pub consumers: usize,
    pub records: u64,
    pub bytes: u64,
    pub fetches: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub fetch_ms_p50: f64,
    pub fetch_ms_p99: f64,
    pub fetch_ms_p999: f64,
    pub fetch_ms_max: f64,
}

/// Catch-up read: every chosen partition from offset 0 to its high watermark at the start, one
/// task per partition, through the client library (which checks every batch's CRC and decodes
/// every record, as a consumer does).
pub async fn consume(client: &Client, b: &ConsumeBench) -> anyhow::Result<ConsumeReport> {
    anyhow::ensure!(b.fetch_bytes > 0, "--fetch-bytes must be positive");
    let count = client.partition_count(&b.topic).await.with_context(|| format!("topic '{}'", b.topic))?;
    let partitions = b.partitions.clone().unwrap_or_else(|| (0..count).collect());
    if let Some(bad) = partitions.iter().find(|p| **p >= count) {
        anyhow::bail!("topic '{}' has {count} partitions; there is no partition {bad}", b.topic);
    }
    wait_for_leaders(client, &b.topic).await?;
    let mut ends = Vec::new();
    for p in &partitions {
        let end = client.list_offsets(&b.topic, *p, runnel_proto::v1::OffsetSpec::Latest).await?;
        ends.push((*p, end));
    }
    let available: u64 = ends.iter().map(|(_, e)| e).sum();
    let wanted = b.records.unwrap_or(available).min(available);
    anyhow::ensure!(wanted > 0, "topic '{}' has no records to read in partitions {partitions:?}", b.topic);
    let remaining = Arc::new(AtomicU64::new(wanted));
    let pb = progress_bar(wanted, b.quiet, "records");
    // Deal the partitions to the consumers (default: one consumer per partition).
    let consumers = b.consumers.unwrap_or(ends.len()).clamp(1, ends.len());
    let mut shares: Vec<Vec<(u32, u64)>> = vec![Vec::new(); consumers];
    for (i, pe) in ends.into_iter().enumerate() {
        shares[i % consumers].push(pe);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for share in shares {
        let (client, topic, remaining, pb, fetch_bytes) =
            (client.clone(), b.topic.clone(), remaining.clone(), pb.clone(), b.fetch_bytes);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let (mut records, mut bytes) = (0u64, 0u64);
            // (partition, next offset, end), fetched in turn until each reaches its end.
            let mut cursors: Vec<(u32, u64, u64)> = share.into_iter().map(|(p, end)| (p, 0, end)).collect();
            while remaining.load(Ordering::Relaxed) > 0 {
                cursors.retain(|(_, offset, end)| offset < end);
                if cursors.is_empty() {
                    break;
                }
                for (p, offset, end) in cursors.iter_mut() {
                    if *offset >= *end {
                        continue;
                    }
                    let t = Instant::now();
                    let r = client
                        .fetch(&topic, *p, *offset, fetch_bytes, 0)
                        .await
                        .with_context(|| format!("fetching {topic}/{p} at offset {offset}"))?;
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    let n = r.records.len() as u64;
                    anyhow::ensure!(n > 0 || r.next_offset > *offset, "{topic}/{p}: no progress at offset {offset}");
                    bytes += r.records.iter().map(|x| (x.key.len() + x.value.len()) as u64).sum::<u64>();
                    records += n;
                    *offset = r.next_offset;
                    let _ = remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(n)));
                    pb.inc(n);
                }
            }
            Ok::<_, anyhow::Error>((hist, records, bytes))
        }));
    }
    let (mut hist, mut records, mut bytes) = (new_histogram(), 0u64, 0u64);
    for t in tasks {
        let (h, r, by) = t.await.context("bench task")??;
        hist.add(h).context("merging histograms")?;
        records += r;
        bytes += by;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    pb.finish_and_clear();
    let [p50, p99, p999, max] = percentiles_ms(&hist);
    Ok(ConsumeReport {
        topic: b.topic.clone(),
        partitions,
        consumers,
        records,
        bytes,
        fetches: hist.len(),
        seconds: secs,
        records_per_sec: records as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        fetch_ms_p50: p50,
        fetch_ms_p99: p99,
        fetch_ms_p999: p999,
        fetch_ms_max: max,
    })
}

pub fn print_consume_text(r: &ConsumeReport) {
    println!(
        "consumed {} records ({:.1} MB) from {}/{:?} by {} consumer(s) in {:.2} s: {:.0} records/s, {:.1} MB/s, {} fetches",
        r.records,
        r.bytes as f64 / 1e6,
        r.topic,
        r.partitions,
        r.consumers,
        r.seconds,
        r.records_per_sec,
        r.mb_per_sec,
        r.fetches
    );
    println!(
        "fetch latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        r.fetch_ms_p50, r.fetch_ms_p99, r.fetch_ms_p999, r.fetch_ms_max
    );
}
