//! A partition's state machine: assigns offsets to committed batches and indexes them.
//!
//! Records are not copied out of the Raft log: the log entry *is* the stored batch. Applying an
//! entry only writes a 12-byte index row `(group, base offset) -> (log index, record count)` and
//! the applied state, both unsynced (they are re-derived from the log if a crash loses them).

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use runnel_raft::{codec, PartitionCommand, PartitionResponse, PartitionTypes};
use runnel_storage::keys::{group_end, group_key, key_suffix, state_key};
use runnel_storage::{Engine, Keyspace, WriteBatch};
use runnel_types::GroupId;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

const APPLIED: &str = "applied";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogIdOf<PartitionTypes>>,
    membership: StoredMembershipOf<PartitionTypes>,
    /// The next offset to assign: the high watermark.
    next_offset: u64,
}

/// One index row: where the batch starting at some base offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: u64,
    pub log_index: u64,
    pub record_count: u32,
}

fn encode_index(log_index: u64, count: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&log_index.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v
}

fn decode_index(key: &[u8], v: &[u8]) -> io::Result<IndexEntry> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("index row {key:?} is malformed"));
    let base_offset = key_suffix(key).ok_or_else(bad)?;
    let log_index = u64::from_be_bytes(v.get(0..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let record_count = u32::from_be_bytes(v.get(8..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    Ok(IndexEntry { base_offset, log_index, record_count })
}

struct Inner {
    applied: AppliedState,
}

#[derive(Clone)]
pub struct PartitionStateMachine {
    group: GroupId,
    engine: Arc<dyn Engine>,
    inner: Arc<Mutex<Inner>>,
    hw_tx: Arc<watch::Sender<u64>>,
}

impl PartitionStateMachine {
    pub fn open(group: GroupId, engine: Arc<dyn Engine>) -> io::Result<Self> {
        let applied: AppliedState = match engine.get(Keyspace::State, &state_key(group, APPLIED))? {
            Some(b) => codec::decode(&b).map_err(|e| io::Error::other(e.to_string()))?,
            None => AppliedState::default(),
        };
        let (hw_tx, _) = watch::channel(applied.next_offset);
        Ok(Self { group, engine, inner: Arc::new(Mutex::new(Inner { applied })), hw_tx: Arc::new(hw_tx) })
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
        b.delete(Keyspace::State, state_key(self.group, APPLIED));
    }
}

impl RaftSnapshotBuilder<PartitionTypes> for PartitionStateMachine {
    type SnapshotData = Vec<u8>;

    /// Snapshots carry only the applied state: the records stay in the (never purged) log.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<PartitionTypes, Vec<u8>>, io::Error> {
        let inner = self.inner.lock().await;
        let data = codec::encode(&inner.applied).map_err(|e| io::Error::other(e.to_string()))?;
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
                EntryPayload::Normal(PartitionCommand::Append(batch)) => {
                    if batch.checksum_ok() {
                        let base = inner.applied.next_offset;
                        wb.put(
                            Keyspace::Index,
                            group_key(self.group, base),
                            encode_index(entry.log_id.index, batch.record_count),
                        );
                        inner.applied.next_offset = base + batch.record_count as u64;
                        Some(PartitionResponse::Appended { base_offset: base })
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
        wb.put(
            Keyspace::State,
            state_key(self.group, APPLIED),
            codec::encode(&inner.applied).map_err(|e| io::Error::other(e.to_string()))?,
        );
        self.engine.write(wb)?;
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
        let applied: AppliedState = codec::decode(&snapshot).map_err(|e| io::Error::other(e.to_string()))?;
        let mut inner = self.inner.lock().await;
        inner.applied = applied;
        inner.applied.last_applied = meta.last_log_id;
        inner.applied.membership = meta.last_membership.clone();
        let mut wb = WriteBatch::new();
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
