//! `runnel bench e2e`: producers at a paced rate and the members of one consumer group in the same
//! process; every record carries its send time, so the report is the latency from `send` to the
//! record coming out of a consumer's `poll` (produce, replicate, commit, fetch), as Kafka's
//! end-to-end latency tool measures it. Also checks that every record arrived (none missing) and
//! counts records delivered twice (a rebalance may redeliver: at least once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use runnel_client::{
    Client, Compression, Consumer, ConsumerConfig, OffsetReset, OffsetSpec, Producer, ProducerConfig, Record,
};
use serde::Serialize;

use crate::bench::{ensure_topic, new_histogram, percentiles_ms, progress_bar, wait_for_leaders};

/// Bytes at the front of every value: the record's sequence number and its send time.
const STAMP_BYTES: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct E2eBench {
    /// Topic to use (created with --partitions and --replication-factor if missing).
    #[arg(long, default_value = "bench-e2e")]
    pub topic: String,
    /// Records to send in total.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Value size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records per second across all producers (0: as fast as the cluster takes them).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Producer instances (each with its own batches and producer id).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Members of the consumer group reading the topic.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_bytes: usize,
    /// Producer linger in milliseconds.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Batches in flight per partition per producer.
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// How long a consumer's fetch waits at the end of the log for new records.
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_ms: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct E2eReport {
    pub topic: String,
    pub records: u64,
    pub record_size: usize,
    pub rate: u64,
    pub producers: usize,
    pub consumers: usize,
    pub partitions: u32,
    pub replication_factor: u32,
    pub seconds: f64,
    pub produced_per_sec: f64,
    pub consumed: u64,
    /// Acknowledged records no consumer received.
    pub missing: u64,
    pub duplicates: u64,
    pub produce_errors: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
}

fn stamp(seq: u64, micros: u64, size: usize) -> Bytes {
    let mut v = BytesMut::with_capacity(size);
    v.put_u64_le(seq);
    v.put_u64_le(micros);
    v.resize(size, b'x');
    v.freeze()
}

fn read_stamp(value: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
    let micros = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((seq, micros))
}

pub async fn run(client: &Client, b: &E2eBench) -> anyhow::Result<E2eReport> {
    anyhow::ensure!(
        b.records > 0 && b.producers > 0 && b.consumers > 0,
        "--records, --producers and --consumers must be positive"
    );
    anyhow::ensure!(
        b.record_size >= STAMP_BYTES,
        "--record-size must be at least {STAMP_BYTES} (sequence number and send time)"
    );
    let compression: Compression = match b.compression.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => anyhow::bail!("--compression must be none, lz4 or zstd, not '{other}'"),
    };
    let partitions = ensure_topic(client, &b.topic, b.partitions, b.replication_factor).await?;
    wait_for_leaders(client, &b.topic).await?;

    // A fresh group whose committed offsets are the current log ends: its members read exactly what
    // this run produces, whatever the topic already holds.
    let group = format!("bench-e2e-{}-{}", std::process::id(), unix_micros());
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        ends.insert((b.topic.clone(), p), client.list_offsets(&b.topic, p, OffsetSpec::Latest).await?);
    }
    client.commit_offsets(&group, "", -1, &ends).await.context("setting the bench group's start offsets")?;

    let start = Instant::now();
    let now_us = move || start.elapsed().as_micros() as u64;
    let seen: Arc<Vec<AtomicBool>> = Arc::new((0..b.records).map(|_| AtomicBool::new(false)).collect());
    let unique = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let assigned: Arc<Vec<AtomicUsize>> = Arc::new((0..b.consumers).map(|_| AtomicUsize::new(0)).collect());
    let pb = progress_bar(b.records, b.quiet, "records received");

    let mut consumers = Vec::new();
    for k in 0..b.consumers {
        let config = ConsumerConfig {
            client_id: format!("bench-e2e-{k}"),
            auto_offset_reset: OffsetReset::Earliest,
            fetch_max_wait: Duration::from_millis(b.fetch_wait_ms),
            session_timeout: Duration::from_secs(10),
            ..ConsumerConfig::group(&group)
        };
        let mut consumer = Consumer::subscribe(client.clone(), config, std::slice::from_ref(&b.topic)).await?;
        let (seen, unique, duplicates, done, assigned, pb) =
            (seen.clone(), unique.clone(), duplicates.clone(), done.clone(), assigned.clone(), pb.clone());
        consumers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            while !done.load(Ordering::Relaxed) {
                let records = consumer.poll(Duration::from_millis(100)).await?;
                let now = now_us();
                assigned[k].store(consumer.assignment().len(), Ordering::Relaxed);
                for r in records {
                    let Some((seq, sent)) = read_stamp(&r.value) else {
                        anyhow::bail!("{}/{}@{}: a record without the bench's stamp", r.topic, r.partition, r.offset);
                    };
                    let Some(flag) = seen.get(seq as usize) else {
                        anyhow::bail!("{}/{}@{}: sequence number {seq} out of range", r.topic, r.partition, r.offset);
                    };
                    if flag.swap(true, Ordering::Relaxed) {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = hist.record(now.saturating_sub(sent).max(1));
                    unique.fetch_add(1, Ordering::Relaxed);
                    pb.inc(1);
                }
            }
            consumer.close().await?;
            Ok::<Histogram<u64>, anyhow::Error>(hist)
        }));
    }

    // Measure only once the group is settled: the coordinator reports it stable with every member
    // and every partition assigned, and the members hold those partitions (a cooperative group
    // reaches that in two rebalances; records sent before would measure the rebalance).
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let held = assigned.iter().map(|a| a.load(Ordering::Relaxed)).sum::<usize>();
        let settled = held == partitions as usize
            && match client.describe_group(&group).await {
                Ok(d) => {
                    d.state == "stable"
                        && d.members.len() == b.consumers
                        && d.members.iter().map(|m| m.assignment.len()).sum::<usize>() == partitions as usize
                }
                Err(_) => false,
            };
        if settled {
            break;
        }
        if Instant::now() > settle || consumers.iter().any(|c| c.is_finished()) {
            done.store(true, Ordering::Relaxed);
            for c in consumers {
                c.await.context("consumer task")??;
            }
            anyhow::bail!(
                "the bench group's {} members did not take all {partitions} partitions within 60 s",
                b.consumers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = ProducerConfig {
        batch_size_bytes: b.batch_bytes,
        linger: Duration::from_millis(b.linger_ms),
        compression,
        max_in_flight_per_partition: b.in_flight,
        ..ProducerConfig::default()
    };
    let errors = Arc::new(AtomicU64::new(0));
    let send_start = Instant::now();
    let mut producers = Vec::new();
    let n = b.producers as u64;
    for k in 0..n {
        let producer = Producer::new(client.clone(), config.clone()).await.context("starting a producer")?;
        let (topic, errors, size, total) = (b.topic.clone(), errors.clone(), b.record_size, b.records);
        let rate = b.rate as f64 / n as f64;
        producers.push(tokio::spawn(async move {
            let mut deliveries = Vec::new();
            // Producer k sends sequence numbers k, k + n, k + 2n, ...
            for (i, seq) in (k..total).step_by(n as usize).enumerate() {
                if rate > 0.0 {
                    tokio::time::sleep_until((send_start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                }
                let record = Record { value: stamp(seq, now_us(), size), ..Default::default() };
                deliveries.push(producer.send(&topic, record).await?);
            }
            producer.flush().await?;
            for d in deliveries {
                if let Err(e) = d.await {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "produce failed");
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for p in producers {
        p.await.context("producer task")??;
    }
    let send_secs = send_start.elapsed().as_secs_f64().max(1e-9);
    let produce_errors = errors.load(Ordering::Relaxed);

    // Everything acknowledged must come out: wait (bounded) for the consumers to catch up.
    let expected = b.records - produce_errors;
    let drain = Instant::now() + Duration::from_secs(60);
    while unique.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        if consumers.iter().any(|c| c.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    let mut hist = new_histogram();
    for c in consumers {
        hist.add(c.await.context("consumer task")??).context("merging histograms")?;
    }
    pb.finish_and_clear();
    if let Err(e) = client.delete_group(&group).await {
        tracing::warn!(group, error = %e, "could not delete the bench's consumer group");
    }
    let consumed = unique.load(Ordering::Relaxed);
    let [p50, p99, p999, max] = percentiles_ms(&hist);
    Ok(E2eReport {
        topic: b.topic.clone(),
        records: b.records,
        record_size: b.record_size,
        rate: b.rate,
        producers: b.producers,
        consumers: b.consumers,
        partitions,
        replication_factor: b.replication_factor,
        seconds: send_secs,
        produced_per_sec: (b.records - produce_errors) as f64 / send_secs,
        consumed,
        missing: expected.saturating_sub(consumed),
        duplicates: duplicates.load(Ordering::Relaxed),
        produce_errors,
        latency_ms_p50: p50,
        latency_ms_p99: p99,
        latency_ms_p999: p999,
        latency_ms_max: max,
    })
}

/// Microseconds since the Unix epoch (names the bench's group uniquely across runs).
fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or_default()
}

pub fn print_text(r: &E2eReport) {
    println!(
        "end to end: {} records of {} B at {} in {:.2} s ({:.0} records/s produced; {} producer(s), {} consumer(s), {} partitions, RF {})",
        r.records,
        r.record_size,
        if r.rate == 0 { "full speed".to_string() } else { format!("{}/s", r.rate) },
        r.seconds,
        r.produced_per_sec,
        r.producers,
        r.consumers,
        r.partitions,
        r.replication_factor
    );
    println!(
        "received {} (missing {}, duplicates {}, produce errors {})",
        r.consumed, r.missing, r.duplicates, r.produce_errors
    );
    println!(
        "send-to-poll latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        r.latency_ms_p50, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max
    );
}
