//! The consumer: `subscribe` (a consumer group, or an ephemeral subscription without one) or
//! `assign` (explicit partitions), then `poll`, `commit`, `seek`, `pause`/`resume`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_client::ClientError> {
//! use runnel_client::{Client, Consumer, ConsumerConfig, OffsetReset};
//! use std::time::Duration;
//!
//! let client = Client::connect(&["127.0.0.1:9292".to_string()]).await?;
//! let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::group("billing") };
//! let mut consumer = Consumer::subscribe(client, config, &["orders".to_string()]).await?;
//! loop {
//!     for record in consumer.poll(Duration::from_millis(500)).await? {
//!         println!("{}/{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
//!     }
//!     consumer.commit().await?; // after processing: at-least-once, nothing skipped
//! }
//! # }
//! ```
//!
//! # Groups
//! Members of a group share the partitions of the topics they subscribe to; the coordinator
//! assigns them (`cooperative-sticky` by default: a rebalance moves only the partitions that must
//! move, and members keep consuming the rest). A background task heartbeats; when the group
//! rebalances, the next `poll` rejoins. Positions start at the group's committed offsets, or,
//! where none is committed, per [`OffsetReset`]. With [`ConsumerConfig::enable_auto_commit`] the
//! positions of records already returned by `poll` are committed periodically, before partitions
//! are given up, and on [`Consumer::close`]; commits are refused once this member has been
//! replaced in a newer generation (it then rejoins).
//!
//! An ephemeral subscription (no group) reads every partition of the topics, from the latest
//! offset by default, and stores nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::groups::CommittedOffsets;
use crate::{v1, Client, ClientError, ErrorCode, Header, OffsetSpec, RunnelError};

/// Where to start reading a partition that has no committed offset (or whose committed offset
/// has been deleted by retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail with NO_COMMITTED_OFFSET.
    None,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            "none" => Ok(OffsetReset::None),
            other => Err(format!("unknown offset reset policy '{other}' (expected earliest, latest or none)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group; `None` for an ephemeral subscription or `assign`.
    pub group: Option<String>,
    pub client_id: String,
    pub auto_offset_reset: OffsetReset,
    pub enable_auto_commit: bool,
    pub auto_commit_interval: Duration,
    /// The coordinator removes a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// `range`, `roundrobin` or `cooperative-sticky`.
    pub assignor: String,
    /// Per partition per fetch.
    pub fetch_max_bytes: u32,
    /// How long a poll waits for records when there are none.
    pub fetch_max_wait: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group: None,
            client_id: "runnel-consumer".into(),
            auto_offset_reset: OffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            assignor: "cooperative-sticky".into(),
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
        }
    }
}

impl ConsumerConfig {
    /// Defaults, as a member of `group`.
    pub fn group(group: &str) -> Self {
        Self { group: Some(group.to_string()), ..Self::default() }
    }
}

/// A record as `poll` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
    pub timestamp_ms: i64,
}

type Tp = (String, u32);

#[derive(Debug, Clone, Default)]
struct Membership {
    member_id: String,
    generation: u64,
    /// Set by the heartbeat task: the group is rebalancing (or forgot us); rejoin.
    rejoin: bool,
}

enum Mode {
    Assigned,
    Ephemeral,
    Group { group: String, topics: Vec<String> },
}

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    mode: Mode,
    assignment: BTreeSet<Tp>,
    positions: BTreeMap<Tp, u64>,
    paused: BTreeSet<Tp>,
    membership: Arc<Mutex<Option<Membership>>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    last_commit: Instant,
    /// Positions as of the last successful commit (to skip commits that change nothing).
    committed: BTreeMap<Tp, u64>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// This member's generation is over: rejoin.
fn stale_membership(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::IllegalGeneration | ErrorCode::UnknownMember | ErrorCode::RebalanceInProgress)
}

fn no_group(op: &str) -> ClientError {
    ClientError::InvalidArgument(format!("{op} needs a consumer group (this consumer has none)"))
}

impl Consumer {
    /// Subscribes to `topics`: as a member of `config.group`, or, without a group, ephemerally
    /// (every partition, nothing stored). Joins the group on the first `poll`.
    pub async fn subscribe(client: Client, config: ConsumerConfig, topics: &[String]) -> Result<Consumer, ClientError> {
        if topics.is_empty() {
            return Err(ClientError::InvalidArgument("subscribe needs at least one topic".into()));
        }
        let mut c = Self::new(client, config, Mode::Assigned);
        match c.config.group.clone() {
            Some(group) => {
                // Fail early, with a clear error, on a topic that does not exist.
                c.client.metadata(topics).await?;
                c.mode = Mode::Group { group, topics: topics.to_vec() };
            }
            None => {
                c.mode = Mode::Ephemeral;
                let mut tps = Vec::new();
                for t in topics {
                    for p in 0..c.client.partition_count(t).await? {
                        tps.push((t.clone(), p));
                    }
                }
                c.add_partitions(tps).await?;
            }
        }
        Ok(c)
    }

    /// Reads exactly `partitions`, no group membership. Positions start per
    /// `config.auto_offset_reset` (or the group's committed offsets when `config.group` is set,
    /// which then also allows `commit`).
    pub async fn assign(
        client: Client,
        config: ConsumerConfig,
        partitions: &[(String, u32)],
    ) -> Result<Consumer, ClientError> {
        let mut c = Self::new(client, config, Mode::Assigned);
        c.add_partitions(partitions.to_vec()).await?;
        Ok(c)
    }

    fn new(client: Client, config: ConsumerConfig, mode: Mode) -> Consumer {
        Consumer {
            client,
            config,
            mode,
            assignment: BTreeSet::new(),
            positions: BTreeMap::new(),
            paused: BTreeSet::new(),
            membership: Arc::new(Mutex::new(None)),
            heartbeat: None,
            last_commit: Instant::now(),
            committed: BTreeMap::new(),
        }
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.assignment.iter().cloned().collect()
    }

    /// The next offset `poll` returns for a partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// This member's id and generation, once it has joined its group.
    pub fn membership(&self) -> Option<(String, u64)> {
        self.membership.lock().as_ref().map(|m| (m.member_id.clone(), m.generation))
    }

    /// Moves a partition's position; the next `poll` reads from `offset`.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        let tp = (topic.to_string(), partition);
        if !self.assignment.contains(&tp) {
            return Err(ClientError::InvalidArgument(format!("{topic}/{partition} is not assigned to this consumer")));
        }
        self.positions.insert(tp, offset);
        Ok(())
    }

    /// Moves a partition's position to the first record at or after `timestamp_ms` (the end of
    /// the log when there is none), using the partition's time index. Returns the new position.
    pub async fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        let (offset, _) = self.client.offset_for_timestamp(topic, partition, timestamp_ms).await?;
        self.seek(topic, partition, offset)?;
        Ok(offset)
    }

    /// Stops fetching from these partitions until [`Consumer::resume`] (they stay assigned).
    pub fn pause(&mut self, partitions: &[(String, u32)]) {
        self.paused.extend(partitions.iter().cloned());
    }

    pub fn resume(&mut self, partitions: &[(String, u32)]) {
        for tp in partitions {
            self.paused.remove(tp);
        }
    }

    async fn add_partitions(&mut self, tps: Vec<Tp>) -> Result<(), ClientError> {
        let committed = match &self.config.group {
            Some(g) if !tps.is_empty() => self.client.committed_offsets(g, &tps).await?,
            _ => CommittedOffsets::new(),
        };
        for tp in tps {
            let start = match committed.get(&tp) {
                Some(o) => *o,
                None => self.reset_position(&tp).await?,
            };
            self.positions.insert(tp.clone(), start);
            self.committed.remove(&tp);
            self.assignment.insert(tp);
        }
        Ok(())
    }

    async fn reset_position(&self, tp: &Tp) -> Result<u64, ClientError> {
        let spec = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OffsetSpec::Earliest,
            OffsetReset::Latest => OffsetSpec::Latest,
            OffsetReset::None => {
                return Err(ClientError::Broker {
                    op: "poll",
                    target: format!("{}/{}", tp.0, tp.1),
                    addr: String::new(),
                    error: Box::new(RunnelError::new(
                        ErrorCode::NoCommittedOffset,
                        format!("no committed offset for {}/{} and the reset policy is 'none'", tp.0, tp.1),
                    )),
                })
            }
        };
        self.client.list_offsets(&tp.0, tp.1, spec).await
    }

    fn is_cooperative(&self) -> bool {
        self.config.assignor == "cooperative-sticky" || self.config.assignor == "sticky"
    }

    /// Joins (or rejoins) the group and applies the assignment it answers with.
    async fn rejoin(&mut self, group: &str, topics: &[String]) -> Result<(), ClientError> {
        let cooperative = self.is_cooperative();
        if !cooperative && !self.assignment.is_empty() {
            // Eager: give everything up, committing first so the next owner continues from here.
            if self.config.enable_auto_commit {
                self.commit_quietly().await;
            }
            self.assignment.clear();
            self.positions.clear();
        }
        let prior = self.membership.lock().clone().unwrap_or_default();
        let mut member_id = prior.member_id.clone();
        let mut tries = 0;
        let resp = loop {
            tries += 1;
            let req = v1::JoinGroupRequest {
                group: group.to_string(),
                member_id: member_id.clone(),
                client_id: self.config.client_id.clone(),
                topics: topics.to_vec(),
                session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
                assignor: self.config.assignor.clone(),
                owned: self
                    .assignment
                    .iter()
                    .map(|(t, p)| v1::TopicPartition { topic: t.clone(), partition: *p })
                    .collect(),
            };
            tracing::debug!(group, member = %member_id, tries, "joining");
            let joined = self.client.join_group(req).await;
            if let Err(e) = &joined {
                tracing::debug!(group, member = %member_id, tries, error = %e, "join failed");
            }
            match joined {
                Ok(r) => break r,
                Err(e) if tries < 5 && matches!(e.code(), Some(ErrorCode::UnknownMember)) => {
                    // Our session expired: we are a new member now, and own nothing.
                    member_id.clear();
                    self.assignment.clear();
                    self.positions.clear();
                }
                Err(e)
                    if tries < 5
                        && matches!(e.code(), Some(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration)) => {}
                Err(e) => return Err(e),
            }
        };
        *self.membership.lock() =
            Some(Membership { member_id: resp.member_id.clone(), generation: resp.generation, rejoin: false });
        let new: BTreeSet<Tp> = resp.assignment.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect();
        let revoked: Vec<Tp> = self.assignment.difference(&new).cloned().collect();
        if !revoked.is_empty() {
            if self.config.enable_auto_commit {
                // Still a member of the (new) generation: this commit is accepted, and the next
                // owner starts where we stopped.
                let offsets = self.positions_of(&revoked);
                if let Err(e) = self.try_commit(&offsets).await {
                    tracing::warn!(error = %e, "committing the partitions given up failed");
                }
            }
            for tp in &revoked {
                self.assignment.remove(tp);
                self.positions.remove(tp);
                self.paused.remove(tp);
            }
        }
        let added: Vec<Tp> = new.difference(&self.assignment).cloned().collect();
        self.add_partitions(added).await?;
        tracing::info!(group, generation = resp.generation, member = %resp.member_id, assignment = ?self.assignment, "joined group");
        self.start_heartbeats(group);
        Ok(())
    }

    fn start_heartbeats(&mut self, group: &str) {
        if self.heartbeat.is_some() {
            return;
        }
        let (client, membership, group, every) =
            (self.client.clone(), self.membership.clone(), group.to_string(), self.config.heartbeat_interval);
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = membership.lock().clone() else { continue };
                if m.rejoin {
                    continue;
                }
                let beat = client.heartbeat(&group, &m.member_id, m.generation).await;
                tracing::trace!(group, member = %m.member_id, generation = m.generation, ok = beat.is_ok(), "heartbeat");
                if let Err(e) = beat {
                    tracing::debug!(group, member = %m.member_id, generation = m.generation, error = %e, "heartbeat answered with an error");
                    match e.code() {
                        Some(
                            ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration | ErrorCode::UnknownMember,
                        ) => {
                            if let Some(cur) = membership.lock().as_mut().filter(|c| c.generation == m.generation) {
                                cur.rejoin = true;
                                if e.code() == Some(ErrorCode::UnknownMember) {
                                    cur.member_id.clear();
                                }
                            }
                        }
                        _ => tracing::warn!(group, error = %e, "heartbeat failed"),
                    }
                }
            }
        }));
    }

    /// Records from the assigned, unpaused partitions, waiting up to `timeout` when there are
    /// none. Rejoins the group first when it is rebalancing, and auto-commits when due.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if let Mode::Group { group, topics } = &self.mode {
            let (group, topics) = (group.clone(), topics.clone());
            let needs_join = self.membership.lock().as_ref().is_none_or(|m| m.rejoin);
            if needs_join {
                self.rejoin(&group, &topics).await?;
            }
        }
        if self.config.enable_auto_commit
            && self.config.group.is_some()
            && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            self.commit_quietly().await;
        }
        let wait_ms = timeout.min(self.config.fetch_max_wait).as_millis() as u32;
        let targets: Vec<(Tp, u64)> = self
            .positions
            .iter()
            .filter(|(tp, _)| !self.paused.contains(*tp) && self.assignment.contains(*tp))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if targets.is_empty() {
            tokio::time::sleep(timeout.min(Duration::from_millis(100))).await;
            return Ok(vec![]);
        }
        let max_bytes = self.config.fetch_max_bytes;
        // One long-polling fetch per partition; return as soon as any brings records (or fails),
        // with whatever else has already arrived, rather than waiting for the partitions that
        // have nothing: a quiet partition must not delay a busy one by the fetch wait. The fetches
        // still waiting are dropped (reads, so nothing is lost: their positions do not move).
        let mut pending: futures::stream::FuturesUnordered<_> = targets
            .iter()
            .map(|((t, p), o)| {
                let client = self.client.clone();
                let (t, p, o) = (t.clone(), *p, *o);
                async move {
                    let res = client.fetch(&t, p, o, max_bytes, wait_ms).await;
                    (((t, p), o), res)
                }
            })
            .collect();
        let mut results = Vec::new();
        while let Some(done) = pending.next().await {
            let ready = match &done.1 {
                Ok(f) => !f.records.is_empty(),
                Err(_) => true,
            };
            results.push(done);
            if ready {
                while let Some(Some(done)) = pending.next().now_or_never() {
                    results.push(done);
                }
                break;
            }
        }
        drop(pending);
        let mut out = Vec::new();
        for (((topic, partition), from), res) in results {
            match res {
                Ok(f) => {
                    for r in f.records {
                        out.push(ConsumerRecord {
                            topic: topic.clone(),
                            partition,
                            offset: r.offset,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                            timestamp_ms: r.timestamp_ms,
                        });
                    }
                    if f.next_offset > from {
                        self.positions.insert((topic, partition), f.next_offset);
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    // Retention removed what we were about to read (or the position is past the
                    // end): restart per the reset policy.
                    let tp = (topic, partition);
                    let to = self.reset_position(&tp).await?;
                    tracing::warn!(topic = %tp.0, partition = tp.1, from, to, "position out of range; reset");
                    self.positions.insert(tp, to);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn positions_of(&self, tps: &[Tp]) -> CommittedOffsets {
        tps.iter().filter_map(|tp| self.positions.get(tp).map(|o| (tp.clone(), *o))).collect()
    }

    /// Commits the position of every assigned partition (one past the last record `poll`
    /// returned): call after processing them.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let tps: Vec<Tp> = self.assignment.iter().cloned().collect();
        let offsets = self.positions_of(&tps);
        self.commit_offsets(&offsets).await
    }

    /// Commits explicit offsets (the next offset to read per partition). If the group moved to a
    /// newer generation meanwhile, rejoins and commits those of the partitions this member still
    /// owns (the cooperative assignor keeps them; the others' new owners re-read the records, so
    /// nothing is skipped).
    pub async fn commit_offsets(&mut self, offsets: &CommittedOffsets) -> Result<(), ClientError> {
        match self.try_commit(offsets).await {
            Err(e) if e.code().is_some_and(stale_membership) => {
                let Mode::Group { group, topics } = &self.mode else { return Err(e) };
                let (group, topics) = (group.clone(), topics.clone());
                self.rejoin(&group, &topics).await?;
                let kept: CommittedOffsets = offsets
                    .iter()
                    .filter(|(tp, _)| self.assignment.contains(*tp))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                self.try_commit(&kept).await
            }
            other => other,
        }
    }

    async fn try_commit(&mut self, offsets: &CommittedOffsets) -> Result<(), ClientError> {
        let group = self.config.group.clone().ok_or_else(|| no_group("commit"))?;
        let changed: CommittedOffsets = offsets
            .iter()
            .filter(|(tp, o)| self.committed.get(*tp) != Some(*o))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let (member, generation) = match (&self.mode, self.membership.lock().clone()) {
            (Mode::Group { .. }, Some(m)) => (m.member_id, m.generation as i64),
            (Mode::Group { .. }, None) => {
                return Err(ClientError::InvalidArgument("commit before this consumer joined its group".into()))
            }
            _ => (String::new(), -1),
        };
        match self.client.commit_offsets(&group, &member, generation, &changed).await {
            Ok(()) => {
                self.committed.extend(changed);
                self.last_commit = Instant::now();
                Ok(())
            }
            Err(e) => {
                if e.code().is_some_and(stale_membership) {
                    if let Some(m) = self.membership.lock().as_mut() {
                        m.rejoin = true;
                    }
                }
                Err(e)
            }
        }
    }

    /// Starts committing the current positions in the background.
    pub fn commit_async(&self) -> tokio::task::JoinHandle<Result<(), ClientError>> {
        let group = self.config.group.clone();
        let tps: Vec<Tp> = self.assignment.iter().cloned().collect();
        let offsets = self.positions_of(&tps);
        let membership = self.membership.lock().clone();
        let client = self.client.clone();
        let in_group = matches!(self.mode, Mode::Group { .. });
        tokio::spawn(async move {
            let group = group.ok_or_else(|| no_group("commit"))?;
            let (member, generation) = match (in_group, membership) {
                (true, Some(m)) => (m.member_id, m.generation as i64),
                (true, None) => return Err(ClientError::InvalidArgument("commit before joining".into())),
                (false, _) => (String::new(), -1),
            };
            client.commit_offsets(&group, &member, generation, &offsets).await
        })
    }

    async fn commit_quietly(&mut self) {
        let tps: Vec<Tp> = self.assignment.iter().cloned().collect();
        let offsets = self.positions_of(&tps);
        if let Err(e) = self.try_commit(&offsets).await {
            tracing::warn!(error = %e, "auto-commit failed");
        }
        self.last_commit = Instant::now();
    }

    /// Commits (with auto-commit on) and leaves the group, so the others take over at once
    /// instead of after the session timeout.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if self.config.enable_auto_commit && self.config.group.is_some() {
            self.commit_quietly().await;
        }
        // Bound first: the lock's guard must not live across the await below (it would make the
        // future !Send).
        let membership = self.membership.lock().clone();
        if let (Mode::Group { group, .. }, Some(m)) = (&self.mode, membership) {
            if !m.member_id.is_empty() {
                self.client.leave_group(group, &m.member_id).await?;
            }
        }
        Ok(())
    }
}
