//! [`AssignConsumer`]: reads partitions the caller assigns itself (no consumer group), with poll,
//! seek, pause and resume. Group membership, `subscribe` and committed offsets live elsewhere.
//!
//! Positions only move forward, by exactly the records [`AssignConsumer::poll`] returned, unless
//! the caller seeks (invariant 7): an OFFSET_OUT_OF_RANGE answer is returned as an error rather
//! than silently reset, so nothing is skipped behind the caller's back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use runnel_types::limits::MAX_FETCH_WAIT_MS;

use crate::{Client, ClientError, ConsumedRecord, OffsetSpec};

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first offset still in the log.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// This exact offset.
    Offset(u64),
}

/// How an [`AssignConsumer`] fetches.
#[derive(Debug, Clone)]
pub struct AssignConsumerConfig {
    /// Bytes asked for per partition per poll (0 = the broker's default, 1 MiB).
    pub max_bytes_per_partition: u32,
}

impl Default for AssignConsumerConfig {
    fn default() -> Self {
        Self { max_bytes_per_partition: 1024 * 1024 }
    }
}

/// A record and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledRecord {
    pub topic: String,
    pub partition: u32,
    pub record: ConsumedRecord,
}

/// Reads explicitly assigned partitions. Not shared between tasks: each reader owns its positions.
#[derive(Debug)]
pub struct AssignConsumer {
    client: Client,
    config: AssignConsumerConfig,
    /// Next offset to read, per (topic, partition).
    positions: BTreeMap<(String, u32), u64>,
    paused: BTreeSet<(String, u32)>,
}

impl AssignConsumer {
    pub fn new(client: Client, config: AssignConsumerConfig) -> Self {
        Self { client, config, positions: BTreeMap::new(), paused: BTreeSet::new() }
    }

    /// Adds `topic`/`partition` to the assignment, starting at `start` (already assigned
    /// partitions keep their position unless `start` is an explicit offset).
    pub async fn assign(&mut self, topic: &str, partition: u32, start: StartFrom) -> Result<(), ClientError> {
        let n = self.client.partition_count(topic).await?;
        if partition >= n {
            return Err(ClientError::InvalidArgument(format!(
                "assign {topic}/{partition}: topic '{topic}' has {n} partitions (0..{n})"
            )));
        }
        let key = (topic.to_string(), partition);
        let offset = match start {
            StartFrom::Offset(o) => o,
            _ if self.positions.contains_key(&key) => return Ok(()),
            StartFrom::Earliest => self.client.list_offsets(topic, partition, OffsetSpec::Earliest).await?,
            StartFrom::Latest => self.client.list_offsets(topic, partition, OffsetSpec::Latest).await?,
        };
        self.positions.insert(key, offset);
        Ok(())
    }

    /// Assigns every partition of `topic`.
    pub async fn assign_all(&mut self, topic: &str, start: StartFrom) -> Result<(), ClientError> {
        for p in 0..self.client.partition_count(topic).await? {
            self.assign(topic, p, start).await?;
        }
        Ok(())
    }

    /// Removes a partition from the assignment.
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        let key = (topic.to_string(), partition);
        self.positions.remove(&key);
        self.paused.remove(&key);
    }

    /// The assigned partitions and their next offsets.
    pub fn assignment(&self) -> Vec<(String, u32, u64)> {
        self.positions.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect()
    }

    /// The next offset `poll` reads from `topic`/`partition`.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// Moves an assigned partition's position: the next poll reads from `offset`.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        match self.positions.get_mut(&(topic.to_string(), partition)) {
            Some(pos) => {
                *pos = offset;
                Ok(())
            }
            None => Err(ClientError::InvalidArgument(format!("seek {topic}/{partition}: partition is not assigned"))),
        }
    }

    /// Stops fetching from a partition (its position is kept) until [`resume`](Self::resume).
    pub fn pause(&mut self, topic: &str, partition: u32) {
        self.paused.insert((topic.to_string(), partition));
    }

    pub fn resume(&mut self, topic: &str, partition: u32) {
        self.paused.remove(&(topic.to_string(), partition));
    }

    pub fn paused(&self) -> Vec<(String, u32)> {
        self.paused.iter().cloned().collect()
    }

    /// Fetches from every assigned, unpaused partition at once, waiting up to `timeout` (capped at
    /// 30 s) for records when there are none, and advances each position past what it returns.
    /// Records are grouped by partition, in offset order within each. On an error no position
    /// moves.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<PolledRecord>, ClientError> {
        let wait_ms = timeout.as_millis().min(u128::from(MAX_FETCH_WAIT_MS)) as u32;
        let active: Vec<((String, u32), u64)> =
            self.positions.iter().filter(|(k, _)| !self.paused.contains(*k)).map(|(k, o)| (k.clone(), *o)).collect();
        if active.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(Vec::new());
        }
        let max_bytes = self.config.max_bytes_per_partition;
        let fetches = active.iter().map(|((topic, partition), offset)| {
            let client = &self.client;
            async move { client.fetch(topic, *partition, *offset, max_bytes, wait_ms).await }
        });
        let results = futures::future::join_all(fetches).await;
        let mut out = Vec::new();
        let mut moves = Vec::with_capacity(active.len());
        for (((topic, partition), _), r) in active.into_iter().zip(results) {
            let r = r?;
            moves.push(((topic.clone(), partition), r.next_offset));
            out.extend(r.records.into_iter().map(|record| PolledRecord { topic: topic.clone(), partition, record }));
        }
        for (k, next) in moves {
            if let Some(pos) = self.positions.get_mut(&k) {
                *pos = next;
            }
        }
        Ok(out)
    }
}
