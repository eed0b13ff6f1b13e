//! A partition's state machine: assigns offsets to committed batches and indexes them.
//!
//! Records are not copied out of the Raft log: the log entry *is* the stored batch. Applying an
//! entry only writes a 16-byte index row `(group, base offset) -> (log index, record count, batch
//! bytes)`, a time-index row when the batch raises the running max timestamp, and the applied
//! state, all unsynced (they are re-derived from the log if a crash loses them).
//!
//! Log maintenance (ADR 0008) rewrites Raft entries *in place*, keeping each entry's log id and
//! offset span so the log stays contiguous and every replica assigns the same offsets:
//! - `TrimLog` (retention, replicated) deletes the index rows of batches wholly below the new log
//!   start and rewrites their entries as hollow batches (no records), in the same write batch as
//!   the applied state;
//! - compaction (per replica, [`PartitionStateMachine::rewrite_batch`]) replaces an applied batch
//!   by one holding fewer records, under the state machine's lock.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use runnel_raft::{codec, PartitionCommand, PartitionResponse, PartitionTypes, StoredBatch};
use runnel_storage::keys::{group_end, group_key, key_suffix, state_key};
use runnel_storage::{Engine, Keyspace, WriteBatch};
use runnel_types::GroupId;
use serde::{Deserialize, Serialize};

use crate::producer_state::{ProducerEntry, ProducerStates, Verdict};
use tokio::sync::{watch, Mutex};

const APPLIED: &str = "applied";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogIdOf<PartitionTypes>>,
    membership: StoredMembershipOf<PartitionTypes>,
    /// The next offset to assign: the high watermark.
    next_offset: u64,
    /// The first offset still stored: retention deleted every batch wholly below it.
    log_start: u64,
    /// Bytes of the batches in the index (what `retention.bytes` limits).
    retained_bytes: u64,
    /// The greatest batch max timestamp applied so far (the time index's last key).
    max_timestamp_ms: Option<i64>,
}

/// One index row: where the batch starting at some base offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: u64,
    pub log_index: u64,
    pub record_count: u32,
    /// Size of the stored batch's records, bytes.
    pub bytes: u32,
}

impl IndexEntry {
    /// One past the batch's last offset.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn encode_index(log_index: u64, count: u32, bytes: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&log_index.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(&bytes.to_be_bytes());
    v
}

fn decode_index(key: &[u8], v: &[u8]) -> io::Result<IndexEntry> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("index row {key:?} is malformed"));
    let base_offset = key_suffix(key).ok_or_else(bad)?;
    let log_index = u64::from_be_bytes(v.get(0..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let record_count = u32::from_be_bytes(v.get(8..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    // Rows written before batch sizes were indexed are 12 bytes: they count as 0 bytes.
    let bytes = match v.get(12..16) {
        Some(b) => u32::from_be_bytes(b.try_into().map_err(|_| bad())?),
        None => 0,
    };
    Ok(IndexEntry { base_offset, log_index, record_count, bytes })
}

/// Time-index keys: the timestamp with its sign bit flipped, so byte order is numeric order for
/// negative timestamps too.
fn time_key(group: GroupId, ts: i64) -> Vec<u8> {
    group_key(group, (ts as u64) ^ (1 << 63))
}

fn decode_time_row(key: &[u8], v: &[u8]) -> io::Result<(i64, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("time index row {key:?} is malformed"));
    let ts = (key_suffix(key).ok_or_else(bad)? ^ (1 << 63)) as i64;
    let offset = u64::from_be_bytes(v.get(0..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    Ok((ts, offset))
}

type Entry = <PartitionTypes as openraft::RaftTypeConfig>::Entry;

struct Inner {
    applied: AppliedState,
    /// Set when the replica's data is deleted: nothing may write for this group afterwards.
    closed: bool,
    /// Idempotent producers' recent batches (see `producer_state`).
    producers: ProducerStates,
}

/// Log figures readable without the state machine's lock.
#[derive(Debug, Default)]
struct Figures {
    log_start: AtomicU64,
    retained_bytes: AtomicU64,
    compactions: AtomicU64,
}

/// What a snapshot carries: the applied state and the producer state.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: AppliedState,
    producers: Vec<(u64, ProducerEntry)>,
}

#[derive(Clone)]
pub struct PartitionStateMachine {
    group: GroupId,
    engine: Arc<dyn Engine>,
    inner: Arc<Mutex<Inner>>,
    hw_tx: Arc<watch::Sender<u64>>,
    figures: Arc<Figures>,
}

/// Why a compaction rewrite was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum RewriteSkipped {
    /// The replica was deleted.
    Closed,
    /// Retention deleted the batch, or the row no longer points at that entry.
    Gone,
    /// The entry is not applied yet (only applied entries are committed, hence never truncated).
    NotApplied,
}

fn storage_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl PartitionStateMachine {
    pub fn open(group: GroupId, engine: Arc<dyn Engine>) -> io::Result<Self> {
        let applied: AppliedState = match engine.get(Keyspace::State, &state_key(group, APPLIED))? {
            Some(b) => codec::decode(&b).map_err(|e| io::Error::other(e.to_string()))?,
            None => AppliedState::default(),
        };
        let producers = ProducerStates::load(engine.as_ref(), group)?;
        let (hw_tx, _) = watch::channel(applied.next_offset);
        let figures = Figures::default();
        figures.log_start.store(applied.log_start, Ordering::SeqCst);
        figures.retained_bytes.store(applied.retained_bytes, Ordering::SeqCst);
        Ok(Self {
            group,
            engine,
            inner: Arc::new(Mutex::new(Inner { applied, closed: false, producers })),
            hw_tx: Arc::new(hw_tx),
            figures: Arc::new(figures),
        })
    }

    /// The first offset still stored (retention deleted everything below it).
    pub fn log_start(&self) -> u64 {
        self.figures.log_start.load(Ordering::SeqCst)
    }

    /// Bytes of record batches held in `[log_start, hw)`.
    pub fn retained_bytes(&self) -> u64 {
        self.figures.retained_bytes.load(Ordering::SeqCst)
    }

    /// Compaction passes completed on this replica since it started.
    pub fn compactions(&self) -> u64 {
        self.figures.compactions.load(Ordering::SeqCst)
    }

    pub fn count_compaction(&self) {
        self.figures.compactions.fetch_add(1, Ordering::SeqCst);
    }

    /// The log start retention wants, judged on this replica's state: every batch before the
    /// first whose running max timestamp is at or after `now_ms - retention_ms` (-1: no limit),
    /// and the oldest whole batches while more than `retention_bytes` (-1: no limit) are held.
    /// `None` when nothing needs deleting.
    pub fn retention_target(&self, now_ms: i64, retention_ms: i64, retention_bytes: i64) -> io::Result<Option<u64>> {
        let (log_start, hw) = (self.log_start(), self.high_watermark());
        let mut target = log_start;
        if retention_ms >= 0 {
            let cutoff = now_ms.saturating_sub(retention_ms);
            let first_young =
                self.engine.scan(Keyspace::TimeIndex, &time_key(self.group, cutoff), &group_end(self.group), 1)?;
            let by_time = match first_young.first() {
                Some((k, v)) => decode_time_row(k, v)?.1,
                None => hw,
            };
            target = target.max(by_time.min(hw));
        }
        if retention_bytes >= 0 {
            let mut excess = self.retained_bytes().saturating_sub(retention_bytes as u64);
            let mut from = target;
            // Bytes below `target` (already going) count towards the excess.
            if excess > 0 && target > log_start {
                for row in self.index_from(log_start, target, usize::MAX)? {
                    if row.end_offset() <= target {
                        excess = excess.saturating_sub(u64::from(row.bytes));
                    }
                }
            }
            while excess > 0 && from < hw {
                let rows = self.index_from(from, hw, 1024)?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    if excess == 0 {
                        break;
                    }
                    excess = excess.saturating_sub(u64::from(row.bytes));
                    from = row.end_offset();
                }
            }
            target = target.max(from);
        }
        Ok((target > log_start).then_some(target))
    }

    /// The base offset of the first batch whose running max timestamp is at or after `ts`
    /// (no record at or after `ts` lies below it), or None when no batch reaches `ts`.
    pub fn first_batch_reaching(&self, ts: i64) -> io::Result<Option<u64>> {
        let rows = self.engine.scan(Keyspace::TimeIndex, &time_key(self.group, ts), &group_end(self.group), 1)?;
        match rows.first() {
            Some((k, v)) => Ok(Some(decode_time_row(k, v)?.1.max(self.log_start()))),
            None => Ok(None),
        }
    }

    /// Reads the stored batch an index row points at.
    pub fn read_batch(&self, row: &IndexEntry) -> io::Result<Option<StoredBatch>> {
        let Some(raw) = self.engine.get(Keyspace::Log, &group_key(self.group, row.log_index))? else {
            return Ok(None);
        };
        let entry: Entry = codec::decode(&raw).map_err(storage_err)?;
        match entry.payload {
            EntryPayload::Normal(cmd) => Ok(cmd.into_batch()),
            _ => Ok(None),
        }
    }

    /// Compaction: replaces the applied batch `row` points at by `batch` (same span, fewer
    /// records), under the state machine's lock so it cannot race apply, retention or deletion.
    /// The row must still exist and point at the same entry, and the entry must be applied.
    pub async fn rewrite_batch(&self, row: &IndexEntry, batch: StoredBatch) -> io::Result<Result<(), RewriteSkipped>> {
        // Paired with the apply side: a rewrite never changes the span.
        if batch.record_count != row.record_count || !batch.checksum_ok() {
            return Err(io::Error::other(format!(
                "group {}: refusing a rewrite of the batch at offset {} that changes its span or fails its checksum",
                self.group, row.base_offset
            )));
        }
        let mut inner = self.inner.lock().await;
        if inner.closed {
            return Ok(Err(RewriteSkipped::Closed));
        }
        if inner.applied.last_applied.map(|l| l.index) < Some(row.log_index) {
            return Ok(Err(RewriteSkipped::NotApplied));
        }
        let current = match self.engine.get(Keyspace::Index, &group_key(self.group, row.base_offset))? {
            Some(v) => decode_index(&group_key(self.group, row.base_offset), &v)?,
            None => return Ok(Err(RewriteSkipped::Gone)),
        };
        if current.log_index != row.log_index || current.record_count != row.record_count {
            return Ok(Err(RewriteSkipped::Gone));
        }
        let Some(raw) = self.engine.get(Keyspace::Log, &group_key(self.group, row.log_index))? else {
            return Ok(Err(RewriteSkipped::Gone));
        };
        let mut entry: Entry = codec::decode(&raw).map_err(storage_err)?;
        let EntryPayload::Normal(cmd) = entry.payload else {
            return Ok(Err(RewriteSkipped::Gone));
        };
        entry.payload = EntryPayload::Normal(cmd.with_batch(batch.clone()));
        let new_bytes = batch.records.len() as u32;
        let mut wb = WriteBatch::new();
        wb.put(Keyspace::Log, group_key(self.group, row.log_index), codec::encode(&entry).map_err(storage_err)?);
        wb.put(
            Keyspace::Index,
            group_key(self.group, row.base_offset),
            encode_index(row.log_index, row.record_count, new_bytes),
        );
        inner.applied.retained_bytes =
            inner.applied.retained_bytes.saturating_sub(u64::from(current.bytes)) + u64::from(new_bytes);
        wb.put(Keyspace::State, state_key(self.group, APPLIED), codec::encode(&inner.applied).map_err(storage_err)?);
        self.engine.write(wb)?;
        self.figures.retained_bytes.store(inner.applied.retained_bytes, Ordering::SeqCst);
        Ok(Ok(()))
    }

    /// Stops every later write for this group (compaction); taken by the delete path before it
    /// deletes the replica's data.
    pub async fn close(&self) {
        self.inner.lock().await.closed = true;
    }

    /// Adds retention of every batch wholly below `new_start` to `wb`: index and time-index rows
    /// go, Raft entries become hollow batches. Returns the bytes released.
    fn trim_into(&self, wb: &mut WriteBatch, applied: &mut AppliedState, new_start: u64) -> io::Result<()> {
        let old_start = applied.log_start;
        let rows = self.index_from(old_start, new_start, usize::MAX)?;
        let mut released = 0u64;
        for row in rows {
            if row.end_offset() > new_start {
                // Straddles the new start (not proposed by our leaders, which trim whole batches):
                // kept whole; readers skip the records below the start.
                break;
            }
            wb.delete(Keyspace::Index, group_key(self.group, row.base_offset));
            released += u64::from(row.bytes);
            if let Some(raw) = self.engine.get(Keyspace::Log, &group_key(self.group, row.log_index))? {
                let mut entry: Entry = codec::decode(&raw).map_err(storage_err)?;
                if let EntryPayload::Normal(cmd) = &entry.payload {
                    if let Some(b) = cmd.batch().filter(|b| !b.is_hollow()) {
                        entry.payload = EntryPayload::Normal(cmd.clone().with_batch(b.hollow()));
                        wb.put(
                            Keyspace::Log,
                            group_key(self.group, row.log_index),
                            codec::encode(&entry).map_err(storage_err)?,
                        );
                    }
                }
            }
        }
        // Time index: rows pointing below the new start go; the last of them is kept, pointing at
        // the new start, so a seek to a time it covered still starts no later than the first
        // record at or after that time.
        let time_rows =
            self.engine.scan(Keyspace::TimeIndex, &group_key(self.group, 0), &group_end(self.group), usize::MAX)?;
        let mut last_trimmed = None;
        for (k, v) in time_rows {
            let (_, offset) = decode_time_row(&k, &v)?;
            if offset >= new_start {
                break;
            }
            last_trimmed = Some(k.clone());
            wb.delete(Keyspace::TimeIndex, k);
        }
        if let Some(k) = last_trimmed {
            wb.put(Keyspace::TimeIndex, k, new_start.to_be_bytes().to_vec());
        }
        applied.retained_bytes = applied.retained_bytes.saturating_sub(released);
        applied.log_start = new_start;
        Ok(())
    }

    /// The high watermark: one past the last committed and applied offset.
    pub fn high_watermark(&self) -> u64 {
        *self.hw_tx.borrow()
    }

    pub fn watch_hw(&self) -> watch::Receiver<u64> {
        self.hw_tx.subscribe()
    }

    /// Index rows for batches holding offsets in `[from, hw)`, starting with the batch that
    /// contains `from`, at most `limit` rows.
    pub fn index_from(&self, from: u64, hw: u64, limit: usize) -> io::Result<Vec<IndexEntry>> {
        let first = self.engine.last_in_range(
            Keyspace::Index,
            &group_key(self.group, 0),
            &group_key(self.group, from.saturating_add(1)),
        )?;
        let start = match first {
            Some((k, v)) => decode_index(&k, &v)?.base_offset,
            None => from,
        };
        let rows =
            self.engine.scan(Keyspace::Index, &group_key(self.group, start), &group_key(self.group, hw), limit)?;
        rows.iter().map(|(k, v)| decode_index(k, v)).collect()
    }

    /// Deletes the group's applied state and index (the partition was deleted).
    /// Adds the deletion of this group's index and applied state to `b` (see
    /// `LogStore::destroy_into`: both go in one batch).
    pub fn destroy_into(&self, b: &mut WriteBatch) {
        b.delete_range(Keyspace::Index, group_key(self.group, 0), group_end(self.group));
        b.delete_range(Keyspace::TimeIndex, group_key(self.group, 0), group_end(self.group));
        b.delete(Keyspace::State, state_key(self.group, APPLIED));
        ProducerStates::destroy_into(self.group, b);
    }
}

impl RaftSnapshotBuilder<PartitionTypes> for PartitionStateMachine {
    type SnapshotData = Vec<u8>;

    /// Snapshots carry only the applied state: the records stay in the (never purged) log.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<PartitionTypes, Vec<u8>>, io::Error> {
        let inner = self.inner.lock().await;
        let data = SnapshotData { applied: inner.applied.clone(), producers: inner.producers.to_snapshot() };
        let data = codec::encode(&data).map_err(|e| io::Error::other(e.to_string()))?;
        let meta = SnapshotMetaOf::<PartitionTypes> {
            last_log_id: inner.applied.last_applied,
            last_membership: inner.applied.membership.clone(),
        };
        Ok(SnapshotOf::<PartitionTypes, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<PartitionTypes> for PartitionStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<PartitionTypes>>, StoredMembershipOf<PartitionTypes>), io::Error> {
        let inner = self.inner.lock().await;
        Ok((inner.applied.last_applied, inner.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<PartitionTypes>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut wb = WriteBatch::new();
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let resp = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    inner.applied.membership = StoredMembershipOf::<PartitionTypes>::new(Some(entry.log_id), m.clone());
                    None
                }
                EntryPayload::Normal(PartitionCommand::TrimLog { log_start }) => {
                    // Never past what is applied, never backwards.
                    let new_start = (*log_start).min(inner.applied.next_offset);
                    if new_start > inner.applied.log_start {
                        // Rows written earlier in this same apply call are not in the engine yet.
                        self.engine.write(std::mem::take(&mut wb))?;
                        let mut applied = inner.applied.clone();
                        self.trim_into(&mut wb, &mut applied, new_start)?;
                        inner.applied = applied;
                    }
                    Some(PartitionResponse::Trimmed { log_start: inner.applied.log_start })
                }
                EntryPayload::Normal(
                    cmd @ (PartitionCommand::Append(batch) | PartitionCommand::AppendIdempotent { batch, .. }),
                ) => {
                    if batch.checksum_ok() {
                        // Idempotent batches go past the producer state first (on every replica).
                        let verdict = match cmd {
                            PartitionCommand::AppendIdempotent { producer, .. } => {
                                inner.producers.check(producer, batch.record_count)
                            }
                            _ => Verdict::Append,
                        };
                        match verdict {
                            Verdict::Append => {
                                let base = inner.applied.next_offset;
                                let bytes = batch.records.len() as u32;
                                wb.put(
                                    Keyspace::Index,
                                    group_key(self.group, base),
                                    encode_index(entry.log_id.index, batch.record_count, bytes),
                                );
                                if inner.applied.max_timestamp_ms.is_none_or(|m| batch.max_timestamp_ms > m) {
                                    wb.put(
                                        Keyspace::TimeIndex,
                                        time_key(self.group, batch.max_timestamp_ms),
                                        base.to_be_bytes().to_vec(),
                                    );
                                    inner.applied.max_timestamp_ms = Some(batch.max_timestamp_ms);
                                }
                                inner.applied.retained_bytes += u64::from(bytes);
                                inner.applied.next_offset = base + batch.record_count as u64;
                                if let PartitionCommand::AppendIdempotent { producer, .. } = cmd {
                                    inner.producers.record(producer, batch.record_count, base, entry.log_id.index);
                                }
                                Some(PartitionResponse::Appended { base_offset: base })
                            }
                            Verdict::Duplicate { base_offset } => Some(PartitionResponse::Duplicate { base_offset }),
                            Verdict::Refuse { code, reason } => {
                                Some(PartitionResponse::Refused { code: code as u32, reason })
                            }
                        }
                    } else {
                        // The leader checked it before appending, so this is corruption in between;
                        // the batch gets no offsets and the producer hears why.
                        tracing::error!(
                            group = self.group,
                            index = entry.log_id.index,
                            "committed batch fails its checksum; not applied"
                        );
                        Some(PartitionResponse::Rejected {
                            reason: "batch failed its CRC32C check when applied".into(),
                        })
                    }
                }
            };
            inner.applied.last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                responses
                    .push((r, resp.unwrap_or(PartitionResponse::Appended { base_offset: inner.applied.next_offset })));
            }
        }
        inner.producers.flush_into(self.group, &mut wb)?;
        wb.put(
            Keyspace::State,
            state_key(self.group, APPLIED),
            codec::encode(&inner.applied).map_err(|e| io::Error::other(e.to_string()))?,
        );
        self.engine.write(wb)?;
        self.figures.log_start.store(inner.applied.log_start, Ordering::SeqCst);
        self.figures.retained_bytes.store(inner.applied.retained_bytes, Ordering::SeqCst);
        self.hw_tx.send_replace(inner.applied.next_offset);
        for (r, resp) in responses {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<PartitionTypes>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        // Only reachable once logs are purged (retention, a later issue); the log below the
        // snapshot is then gone everywhere, so the applied state is all there is to install.
        let data: SnapshotData = codec::decode(&snapshot).map_err(|e| io::Error::other(e.to_string()))?;
        let mut inner = self.inner.lock().await;
        inner.applied = data.applied;
        inner.applied.last_applied = meta.last_log_id;
        inner.applied.membership = meta.last_membership.clone();
        let mut wb = WriteBatch::new();
        inner.producers.install(self.group, data.producers, &mut wb)?;
        wb.put(
            Keyspace::State,
            state_key(self.group, APPLIED),
            codec::encode(&inner.applied).map_err(|e| io::Error::other(e.to_string()))?,
        );
        self.engine.write(wb)?;
        self.hw_tx.send_replace(inner.applied.next_offset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<PartitionTypes, Vec<u8>>>, io::Error> {
        Ok(None)
    }
}
