//! The simulated clients: sequential producers of unique values and one assign-style consumer per
//! partition, all through the real client library, recording every invocation and completion.
//! After the safety phase they stop, wait for the heal, and read every partition in full.

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runnel_checker::{Event, Recorder};
use runnel_client::RetryPolicy;
use runnel_client::{Client, ClientConfig, ClientError, ErrorCode};
use runnel_proto::dial::DialerHandle;
use runnel_proto::v1::{Acks, Record};
use tokio::time::Instant;

use crate::TurmoilDialer;

const TOPIC: &str = "sim";
/// A topic of many partitions nobody writes to during the safety phase: their Raft groups are
/// quiescent (no heartbeats, no timers) and must still follow every fault, elect when their
/// leader's node is lost, and take a write once the faults heal.
const IDLE_TOPIC: &str = "sim-idle";
/// Bound on the liveness phase: after the heal, the cluster must serve a full read of every
/// partition within this much simulated time.
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

pub struct Workload {
    pub seed: u64,
    pub bootstrap: Vec<String>,
    pub partitions: u32,
    /// Partitions of `IDLE_TOPIC` (0: not created).
    pub idle_partitions: u32,
    pub producers: usize,
    pub safety: Duration,
    pub recorder: Recorder,
    /// Where the driver learns the current controller and partition 0's leader.
    pub view: std::sync::Arc<std::sync::Mutex<crate::ClusterView>>,
    /// The operator's actions, at their times (ms after the workload starts).
    pub operations: Vec<(u64, crate::Operation)>,
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        produce_timeout_ms: 2_000,
        // No retries inside the client: a retried produce could write its values twice, and the
        // history would not know. The workload sends every value exactly once.
        retry: RetryPolicy::none(),
        dialer: Some(DialerHandle(std::sync::Arc::new(TurmoilDialer))),
        ..ClientConfig::default()
    }
}

/// Errors after which the batch was certainly not appended.
fn definitely_not_written(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::NotLeader
                | ErrorCode::UnknownTopic
                | ErrorCode::UnknownPartition
                | ErrorCode::RecordTooLarge
                | ErrorCode::CorruptBatch
                | ErrorCode::InvalidRequest
                | ErrorCode::StaleEpoch
        )
    )
}

impl Workload {
    pub async fn run(self) -> Result<(), String> {
        let start = Instant::now();
        let client = loop {
            match Client::connect_with(&self.bootstrap, client_config()).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    tracing::debug!(error = %e, "connect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("cluster never answered: {e}")),
            }
        };
        create_topic(&client, TOPIC, self.partitions, start).await?;
        if self.idle_partitions > 0 {
            create_topic(&client, IDLE_TOPIC, self.idle_partitions, start).await?;
        }
        let safety_end = start + self.safety;
        let watcher = tokio::spawn(watch_cluster(client.clone(), self.view.clone(), safety_end));
        let operator = tokio::spawn(operate(client.clone(), self.operations.clone(), start, safety_end));

        let mut tasks = Vec::new();
        for p in 0..self.producers {
            let (client, rec) = (client.clone(), self.recorder.clone());
            let seed = self.seed ^ (p as u64 + 1).wrapping_mul(0x9e37_79b9);
            let partitions = self.partitions;
            tasks.push(tokio::spawn(produce_loop(client, rec, p as u64, seed, partitions, start, safety_end)));
        }
        for partition in 0..self.partitions {
            let (client, rec) = (client.clone(), self.recorder.clone());
            let process = 100 + partition as u64;
            tasks.push(tokio::spawn(consume_loop(client, rec, process, partition, start, safety_end)));
        }
        for t in tasks {
            t.await.map_err(|e| format!("workload task: {e}"))?;
        }
        watcher.await.map_err(|e| format!("watcher task: {e}"))?;
        operator.await.map_err(|e| format!("operator task: {e}"))?;

        // Liveness: the driver heals every fault at the end of the safety phase.
        let deadline = Instant::now() + LIVENESS_BOUND;
        for partition in 0..self.partitions {
            final_read(&client, &self.recorder, TOPIC, partition, start, deadline).await;
        }
        // Every idle group, quiescent through the faults, must elect and commit a write too.
        // Each attempt sends a new value, like every other producer here: an attempt that timed
        // out may still have been written, and resending its value would plant a duplicate the
        // checker rightly reports (seed 174445186).
        for partition in 0..self.idle_partitions {
            let process = 1_000 + partition as u64;
            let mut attempt = 0u32;
            while Instant::now() < deadline {
                let value = format!("idle-{partition}-{attempt}");
                attempt += 1;
                if produce_once(&client, &self.recorder, process, IDLE_TOPIC, partition, vec![value], start)
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            final_read(&client, &self.recorder, IDLE_TOPIC, partition, start, deadline).await;
        }
        Ok(())
    }
}

/// Creates `name` (RF 3), retrying while the cluster comes up (at most 30 s after `start`); a
/// topic that already exists was created by an earlier attempt whose answer was lost.
async fn create_topic(client: &Client, name: &str, partitions: u32, start: Instant) -> Result<(), String> {
    loop {
        match client.create_topic(name, partitions, 3, Default::default()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => return Ok(()),
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(topic = name, error = %e, "create topic");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("could not create the topic '{name}': {e}")),
        }
    }
}

/// Keeps the driver's view of the controller and partition 0's leader fresh (not recorded in the
/// history: it is how faults find their targets).
async fn watch_cluster(client: Client, view: std::sync::Arc<std::sync::Mutex<crate::ClusterView>>, until: Instant) {
    while Instant::now() < until {
        if let Ok(m) = client.metadata(&[TOPIC.to_string()]).await {
            let leader =
                m.topics.iter().find(|t| t.name == TOPIC).and_then(|t| t.partitions.first()).and_then(|p| p.leader);
            if let Ok(mut v) = view.lock() {
                v.controller = m.controller_id.or(v.controller);
                v.partition0_leader = leader.or(v.partition0_leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulated operator: leader transfers and reassignments of partition 0 at their times.
/// Outcomes are only logged: the checker judges what the producers and consumers saw.
async fn operate(client: Client, operations: Vec<(u64, crate::Operation)>, start: Instant, until: Instant) {
    for (at, op) in operations {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        if Instant::now() >= until {
            return;
        }
        let Ok(m) = client.metadata(&[TOPIC.to_string()]).await else { continue };
        let Some(p) = m.topics.iter().find(|t| t.name == TOPIC).and_then(|t| t.partitions.first()).cloned() else {
            continue;
        };
        let result = match op {
            crate::Operation::TransferLeader => {
                let Some(to) = p.replicas.iter().find(|r| Some(**r) != p.leader).cloned() else { continue };
                client.transfer_leader(TOPIC, 0, to).await.map(|epoch| format!("leader {to} at epoch {epoch}"))
            }
            crate::Operation::Reassign { pick } => {
                let mut nodes: Vec<u64> = m.brokers.iter().map(|b| b.id).collect();
                let mut rng = SmallRng::seed_from_u64(pick);
                let mut chosen = Vec::new();
                while chosen.len() < 3 && !nodes.is_empty() {
                    chosen.push(nodes.remove(rng.random_range(0..nodes.len())));
                }
                client.reassign_partition(TOPIC, 0, chosen.clone()).await.map(|_| format!("to {chosen:?}"))
            }
        };
        tracing::info!(?op, ?result, "operator");
    }
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn produce_loop(
    client: Client,
    rec: Recorder,
    process: u64,
    seed: u64,
    partitions: u32,
    start: Instant,
    until: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut n = 0u64;
    while Instant::now() < until {
        let partition = rng.random_range(0..partitions);
        let count = rng.random_range(1..=3);
        let values: Vec<String> = (0..count).map(|i| format!("p{process}-{n}-{i}")).collect();
        n += 1;
        if produce_once(&client, &rec, process, TOPIC, partition, values, start).await.is_err() {
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
        }
    }
}

/// One acks=all produce of `values` (one record each), recorded: invocation, then success or failure.
async fn produce_once(
    client: &Client,
    rec: &Recorder,
    process: u64,
    topic: &str,
    partition: u32,
    values: Vec<String>,
    start: Instant,
) -> Result<(), ()> {
    let records = values
        .iter()
        .map(|v| Record {
            key: Bytes::new(),
            value: Bytes::from(v.clone()),
            headers: vec![],
            timestamp_ms: 0,
            offset_delta: None,
        })
        .collect();
    rec.record(process, ms(start), Event::ProduceInvoke { topic: topic.into(), partition, values: values.clone() });
    match client.produce_detailed(topic, partition, records, Acks::All).await {
        Ok(acked) => {
            rec.record(
                process,
                ms(start),
                Event::ProduceOk {
                    topic: topic.into(),
                    partition,
                    values,
                    base_offset: acked.base_offset,
                    leader_epoch: Some(acked.leader_epoch),
                    leader: Some(acked.leader),
                },
            );
            Ok(())
        }
        Err(e) => {
            rec.record(
                process,
                ms(start),
                Event::ProduceFail {
                    topic: topic.into(),
                    partition,
                    values,
                    definite: definitely_not_written(&e),
                    error: e.to_string(),
                },
            );
            Err(())
        }
    }
}

async fn consume_loop(client: Client, rec: Recorder, process: u64, partition: u32, start: Instant, until: Instant) {
    let mut offset = 0u64;
    while Instant::now() < until {
        rec.record(process, ms(start), Event::FetchInvoke { topic: TOPIC.into(), partition, offset });
        let requested = offset;
        match client.fetch(TOPIC, partition, offset, 64 * 1024, 200).await {
            Ok(r) => {
                let records: Vec<(u64, String)> =
                    r.records.iter().map(|c| (c.offset, String::from_utf8_lossy(&c.value).into_owned())).collect();
                if let Some((last, _)) = records.last() {
                    offset = last + 1;
                }
                rec.record(
                    process,
                    ms(start),
                    Event::FetchOk {
                        topic: TOPIC.into(),
                        partition,
                        offset: requested,
                        records,
                        high_watermark: r.high_watermark,
                    },
                );
            }
            Err(e) => {
                rec.record(
                    process,
                    ms(start),
                    Event::FetchFail { topic: TOPIC.into(), partition, offset, error: e.to_string() },
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the whole partition, retrying until `deadline` (the liveness bound).
async fn final_read(client: &Client, rec: &Recorder, topic: &str, partition: u32, start: Instant, deadline: Instant) {
    let mut last_error = String::from("no attempt");
    'attempt: while Instant::now() < deadline {
        let hw = match client.list_offsets(topic, partition, runnel_client::OffsetSpec::Latest).await {
            Ok(hw) => hw,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut records = Vec::new();
        let mut offset = 0;
        // Writes still in flight when the heal came (indeterminate produces) may commit while we
        // read: the last fetch's high watermark, not the first one's, bounds what we saw.
        let mut seen_hw = hw;
        while offset < hw {
            match client.fetch(topic, partition, offset, 1 << 20, 0).await {
                Ok(r) if !r.records.is_empty() => {
                    seen_hw = seen_hw.max(r.high_watermark);
                    offset = r.records.last().map(|c| c.offset + 1).unwrap_or(offset);
                    records
                        .extend(r.records.iter().map(|c| (c.offset, String::from_utf8_lossy(&c.value).into_owned())));
                }
                Ok(_) => {
                    last_error = format!("empty fetch at {offset} below the high watermark {hw}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'attempt;
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'attempt;
                }
            }
        }
        rec.record(0, ms(start), Event::FinalRead { topic: topic.into(), partition, records, high_watermark: seen_hw });
        return;
    }
    rec.record(0, ms(start), Event::FinalReadFailed { topic: topic.into(), partition, error: last_error });
}
