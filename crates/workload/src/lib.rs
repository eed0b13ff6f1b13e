//! The recorded client workload, shared by the deterministic simulator and the chaos runner on real
//! containers: sequential producers of unique values and one assign-style consumer per partition,
//! all through the real client library, recording every invocation and completion in a
//! [`Recorder`] for `runnel-checker`. After the safety phase (while faults are injected) they stop,
//! wait for the heal, and read every partition in full.
//!
//! Time is tokio's: simulated under turmoil, real in the chaos runner.

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runnel_checker::{Event, Recorder};
use runnel_client::RetryPolicy;
use runnel_client::{Client, ClientConfig, ClientError, ErrorCode};
use runnel_proto::v1::{Acks, Record};
use tokio::time::Instant;

/// What an operator does to the running cluster (through the real client library's admin calls)
/// during the safety phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Hand partition 0's leadership to another replica (openraft leader transfer).
    TransferLeader,
    /// Move partition 0 to a new replica set of 3 nodes chosen by `pick`: with 5 nodes this
    /// changes the Raft membership (learner, catch-up, joint change); with 3 it reorders it.
    Reassign { pick: u64 },
}

/// The cluster as the client last saw it, so faults can target the current leader or controller
/// rather than a random node.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    pub controller: Option<u64>,
    pub partition0_leader: Option<u64>,
}

pub struct Workload {
    pub seed: u64,
    /// The topic written and read (created with `partitions` partitions, RF 3).
    pub topic: String,
    pub bootstrap: Vec<String>,
    pub partitions: u32,
    /// Partitions of a second topic, `<topic>-idle`, nobody writes to during the safety phase: their
    /// Raft groups are quiescent (no heartbeats, no timers) and must still follow every fault,
    /// elect when their leader's node is lost, and take a write once the faults heal (0: none).
    pub idle_partitions: u32,
    pub producers: usize,
    pub safety: Duration,
    /// After the heal, the cluster must serve a full read of every partition within this long.
    pub liveness_bound: Duration,
    pub recorder: Recorder,
    /// Where the driver learns the current controller and partition 0's leader.
    pub view: std::sync::Arc<std::sync::Mutex<ClusterView>>,
    /// The operator's actions, at their times (ms after the workload starts).
    pub operations: Vec<(u64, Operation)>,
    /// How the clients connect (timeouts, a simulated dialer); retries are always turned off.
    pub client: ClientConfig,
}

/// The client settings every workload client uses: `base` with the client's own retries off. A
/// retried produce could write its values twice, and the history would not know; the workload
/// sends every value exactly once (a failed attempt's values are never sent again).
fn client_config(base: &ClientConfig) -> ClientConfig {
    ClientConfig { retry: RetryPolicy::none(), ..base.clone() }
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
            match Client::connect_with(&self.bootstrap, client_config(&self.client)).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    tracing::debug!(error = %e, "connect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("cluster never answered: {e}")),
            }
        };
        let topic = self.topic.clone();
        let idle_topic = format!("{topic}-idle");
        create_topic(&client, &topic, self.partitions, start).await?;
        if self.idle_partitions > 0 {
            create_topic(&client, &idle_topic, self.idle_partitions, start).await?;
        }
        let safety_end = start + self.safety;
        let watcher = tokio::spawn(watch_cluster(client.clone(), topic.clone(), self.view.clone(), safety_end));
        let operator = tokio::spawn(operate(client.clone(), topic.clone(), self.operations.clone(), start, safety_end));

        let mut tasks = Vec::new();
        for p in 0..self.producers {
            let (client, rec) = (client.clone(), self.recorder.clone());
            let seed = self.seed ^ (p as u64 + 1).wrapping_mul(0x9e37_79b9);
            let (topic, partitions) = (topic.clone(), self.partitions);
            tasks.push(tokio::spawn(produce_loop(client, rec, topic, p as u64, seed, partitions, start, safety_end)));
        }
        for partition in 0..self.partitions {
            let (client, rec) = (client.clone(), self.recorder.clone());
            let process = 100 + partition as u64;
            let topic = topic.clone();
            tasks.push(tokio::spawn(consume_loop(client, rec, topic, process, partition, start, safety_end)));
        }
        for t in tasks {
            t.await.map_err(|e| format!("workload task: {e}"))?;
        }
        watcher.await.map_err(|e| format!("watcher task: {e}"))?;
        operator.await.map_err(|e| format!("operator task: {e}"))?;

        // Liveness: the driver heals every fault at the end of the safety phase.
        let deadline = Instant::now() + self.liveness_bound;
        for partition in 0..self.partitions {
            final_read(&client, &self.recorder, &topic, partition, start, deadline).await;
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
                if produce_once(&client, &self.recorder, process, &idle_topic, partition, vec![value], start)
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            final_read(&client, &self.recorder, &idle_topic, partition, start, deadline).await;
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
async fn watch_cluster(
    client: Client,
    topic: String,
    view: std::sync::Arc<std::sync::Mutex<ClusterView>>,
    until: Instant,
) {
    while Instant::now() < until {
        if let Ok(m) = client.metadata(std::slice::from_ref(&topic)).await {
            let leader =
                m.topics.iter().find(|t| t.name == topic).and_then(|t| t.partitions.first()).and_then(|p| p.leader);
            if let Ok(mut v) = view.lock() {
                v.controller = m.controller_id.or(v.controller);
                v.partition0_leader = leader.or(v.partition0_leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator: leader transfers and reassignments of partition 0 at their times. Outcomes are
/// only logged: the checker judges what the producers and consumers saw.
async fn operate(client: Client, topic: String, operations: Vec<(u64, Operation)>, start: Instant, until: Instant) {
    for (at, op) in operations {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        if Instant::now() >= until {
            return;
        }
        let Ok(m) = client.metadata(std::slice::from_ref(&topic)).await else { continue };
        let Some(p) = m.topics.iter().find(|t| t.name == topic).and_then(|t| t.partitions.first()).cloned() else {
            continue;
        };
        let result = match op {
            Operation::TransferLeader => {
                let Some(to) = p.replicas.iter().find(|r| Some(**r) != p.leader).cloned() else { continue };
                client.transfer_leader(&topic, 0, to).await.map(|epoch| format!("leader {to} at epoch {epoch}"))
            }
            Operation::Reassign { pick } => {
                let mut nodes: Vec<u64> = m.brokers.iter().map(|b| b.id).collect();
                let mut rng = SmallRng::seed_from_u64(pick);
                let mut chosen = Vec::new();
                while chosen.len() < 3 && !nodes.is_empty() {
                    chosen.push(nodes.remove(rng.random_range(0..nodes.len())));
                }
                client.reassign_partition(&topic, 0, chosen.clone()).await.map(|_| format!("to {chosen:?}"))
            }
        };
        tracing::info!(?op, ?result, "operator");
    }
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[allow(clippy::too_many_arguments)]
async fn produce_loop(
    client: Client,
    rec: Recorder,
    topic: String,
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
        if produce_once(&client, &rec, process, &topic, partition, values, start).await.is_err() {
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
            ..Default::default()
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

async fn consume_loop(
    client: Client,
    rec: Recorder,
    topic: String,
    process: u64,
    partition: u32,
    start: Instant,
    until: Instant,
) {
    let mut offset = 0u64;
    while Instant::now() < until {
        rec.record(process, ms(start), Event::FetchInvoke { topic: topic.clone(), partition, offset });
        let requested = offset;
        match client.fetch(&topic, partition, offset, 64 * 1024, 200).await {
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
                        topic: topic.clone(),
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
                    Event::FetchFail { topic: topic.clone(), partition, offset, error: e.to_string() },
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
