//! Idempotent-producer state of one partition: for each producer id, its epoch and its last few
//! batches (first sequence, record count, base offset).
//!
//! The check runs when a committed entry is *applied*, never when it is proposed: every replica
//! applies the same entries in the same order, so every replica reaches the same verdict and the
//! same state, and a new leader after a failover already knows every batch the old one committed.
//! That is what makes retries safe across failover and restart (invariant 6): a retry of a batch
//! that did commit is recognised wherever and whenever it arrives, as long as it is one of the
//! producer's last [`RETAINED_BATCHES`] batches on this partition (the client never has more than
//! that many in flight to one partition).
//!
//! State is persisted next to the applied state, one row per producer, written in the same write
//! batch as the applied index (so the two never disagree after a crash), and it is bounded: past
//! [`MAX_PRODUCERS_PER_PARTITION`] producers, the one that wrote least recently (by Raft log index,
//! the same on every replica) is forgotten.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;

use runnel_raft::{codec, ProducerStamp};
use runnel_storage::keys::state_key;
use runnel_storage::{Engine, Keyspace, WriteBatch};
use runnel_types::{ErrorCode, GroupId};
use serde::{Deserialize, Serialize};

/// Batches remembered per producer: a retry of any of them is answered with the original offsets.
/// The client keeps at most this many batches in flight per partition.
pub const RETAINED_BATCHES: usize = 5;

/// Producers remembered per partition; the least recently writing one is forgotten past this. A
/// forgotten producer's next batch is refused with UNKNOWN_PRODUCER_ID unless it starts a new
/// sequence (0). About 150 bytes each, so at most ~150 KiB per partition.
pub const MAX_PRODUCERS_PER_PARTITION: usize = 1024;

/// Row name prefix in the State keyspace: `state_key(group, "producer/") ++ id (big-endian)`.
const ROW_PREFIX: &str = "producer/";
/// The first name after every producer row ('0' is the byte after '/').
const ROW_END: &str = "producer0";

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub first_sequence: u64,
    pub record_count: u32,
    pub base_offset: u64,
}

/// What the partition knows about one producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: u32,
    /// Raft log index of its last applied batch: the eviction order, identical on every replica.
    pub last_log_index: u64,
    /// Its last batches in this epoch, oldest first, at most [`RETAINED_BATCHES`].
    pub batches: VecDeque<BatchMeta>,
}

impl ProducerEntry {
    /// The sequence the producer's next batch must start at.
    fn next_sequence(&self) -> u64 {
        self.batches.back().map_or(0, |b| b.first_sequence + u64::from(b.record_count))
    }
}

/// The decision for one idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it and then call [`ProducerStates::record`].
    Append,
    /// A retry of a batch already appended at `base_offset`: append nothing.
    Duplicate { base_offset: u64 },
    /// Out of order, fenced or unknown: append nothing, tell the producer why.
    Refuse { code: ErrorCode, reason: String },
}

/// The producer state of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: BTreeMap<u64, ProducerEntry>,
    /// Rows changed or forgotten since the last [`flush_into`](Self::flush_into).
    dirty: BTreeSet<u64>,
}

fn row_key(group: GroupId, producer_id: u64) -> Vec<u8> {
    let mut k = state_key(group, ROW_PREFIX);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl ProducerStates {
    /// Loads `group`'s producer rows.
    pub fn load(engine: &dyn Engine, group: GroupId) -> io::Result<Self> {
        let prefix_len = state_key(group, ROW_PREFIX).len();
        let rows = engine.scan(
            Keyspace::State,
            &state_key(group, ROW_PREFIX),
            &state_key(group, ROW_END),
            MAX_PRODUCERS_PER_PARTITION * 2,
        )?;
        let mut producers = BTreeMap::new();
        for (k, v) in rows {
            let id: [u8; 8] = k
                .get(prefix_len..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt(format!("group {group}: producer row key {k:?} is malformed")))?;
            let entry: ProducerEntry = codec::decode(&v)
                .map_err(|e| corrupt(format!("group {group}: producer row {k:?} does not decode: {e}")))?;
            producers.insert(u64::from_be_bytes(id), entry);
        }
        Ok(Self { producers, dirty: BTreeSet::new() })
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: u64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Decides what to do with a batch of `record_count` records stamped `stamp`.
    pub fn check(&self, stamp: &ProducerStamp, record_count: u32) -> Verdict {
        let ProducerStamp { producer_id: id, epoch, base_sequence: seq } = *stamp;
        let Some(p) = self.producers.get(&id) else {
            if seq == 0 {
                return Verdict::Append;
            }
            return Verdict::Refuse {
                code: ErrorCode::UnknownProducerId,
                reason: format!(
                    "producer {id} (epoch {epoch}) has no state on this partition (never seen, or forgotten \
                     after {MAX_PRODUCERS_PER_PARTITION} other producers wrote since), so its batch must start at \
                     sequence 0, not {seq}"
                ),
            };
        };
        if epoch < p.epoch {
            return Verdict::Refuse {
                code: ErrorCode::InvalidProducerEpoch,
                reason: format!(
                    "producer {id} epoch {epoch} is fenced: the partition has seen epoch {} for this producer",
                    p.epoch
                ),
            };
        }
        if epoch > p.epoch {
            if seq == 0 {
                return Verdict::Append;
            }
            return Verdict::Refuse {
                code: ErrorCode::OutOfOrderSequence,
                reason: format!(
                    "producer {id} starts epoch {epoch} (after {}) at sequence {seq}; a new epoch starts at 0",
                    p.epoch
                ),
            };
        }
        if let Some(b) = p.batches.iter().find(|b| b.first_sequence == seq) {
            if b.record_count == record_count {
                return Verdict::Duplicate { base_offset: b.base_offset };
            }
            return Verdict::Refuse {
                code: ErrorCode::OutOfOrderSequence,
                reason: format!(
                    "producer {id} epoch {epoch}: sequence {seq} was already used by a batch of {} records; this one \
                     has {record_count}",
                    b.record_count
                ),
            };
        }
        let next = p.next_sequence();
        if seq == next {
            return Verdict::Append;
        }
        let reason = if seq < next {
            format!(
                "producer {id} epoch {epoch}: sequence {seq} is below the next expected {next} but is not one of the \
                 last {RETAINED_BATCHES} batches (a duplicate too old to recognise)"
            )
        } else {
            format!("producer {id} epoch {epoch}: sequence {seq} leaves a gap (the next expected is {next})")
        };
        Verdict::Refuse { code: ErrorCode::OutOfOrderSequence, reason }
    }

    /// Remembers an appended batch (after [`check`](Self::check) said [`Verdict::Append`]).
    pub fn record(&mut self, stamp: &ProducerStamp, record_count: u32, base_offset: u64, log_index: u64) {
        let id = stamp.producer_id;
        let entry = self.producers.entry(id).or_insert_with(|| ProducerEntry {
            epoch: stamp.epoch,
            last_log_index: log_index,
            batches: VecDeque::with_capacity(RETAINED_BATCHES),
        });
        if stamp.epoch != entry.epoch {
            // A new epoch restarts the sequence: the old epoch's batches can never be retried.
            entry.epoch = stamp.epoch;
            entry.batches.clear();
        }
        entry.last_log_index = log_index;
        entry.batches.push_back(BatchMeta { first_sequence: stamp.base_sequence, record_count, base_offset });
        while entry.batches.len() > RETAINED_BATCHES {
            entry.batches.pop_front();
        }
        self.dirty.insert(id);
        while self.producers.len() > MAX_PRODUCERS_PER_PARTITION {
            // Deterministic: the smallest last log index, ties (impossible: one batch per index)
            // broken by id. O(n), but only when a new producer arrives at a full partition.
            let oldest = self
                .producers
                .iter()
                .filter(|(pid, _)| **pid != id)
                .min_by_key(|(pid, e)| (e.last_log_index, **pid))
                .map(|(pid, _)| *pid);
            let Some(oldest) = oldest else { break };
            self.producers.remove(&oldest);
            self.dirty.insert(oldest);
        }
    }

    /// Adds the rows changed since the last call to `wb` (puts, and deletes for forgotten
    /// producers). The caller writes `wb` together with the applied state.
    pub fn flush_into(&mut self, group: GroupId, wb: &mut WriteBatch) -> io::Result<()> {
        for id in std::mem::take(&mut self.dirty) {
            match self.producers.get(&id) {
                Some(e) => {
                    let v = codec::encode(e).map_err(|e| io::Error::other(e.to_string()))?;
                    wb.put(Keyspace::State, row_key(group, id), v);
                }
                None => wb.delete(Keyspace::State, row_key(group, id)),
            }
        }
        Ok(())
    }

    /// Adds the deletion of every producer row of `group` to `wb`.
    pub fn destroy_into(group: GroupId, wb: &mut WriteBatch) {
        wb.delete_range(Keyspace::State, state_key(group, ROW_PREFIX), state_key(group, ROW_END));
    }

    /// Every producer, for a snapshot.
    pub fn to_snapshot(&self) -> Vec<(u64, ProducerEntry)> {
        self.producers.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Replaces the whole state with a snapshot's, adding to `wb` the deletion of every old row and
    /// the rows of the new state.
    pub fn install(
        &mut self,
        group: GroupId,
        snapshot: Vec<(u64, ProducerEntry)>,
        wb: &mut WriteBatch,
    ) -> io::Result<()> {
        Self::destroy_into(group, wb);
        self.producers = snapshot.into_iter().collect();
        self.dirty = self.producers.keys().copied().collect();
        self.flush_into(group, wb)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use runnel_storage::MemEngine as MemoryEngine;

    use super::*;

    fn stamp(id: u64, epoch: u32, seq: u64) -> ProducerStamp {
        ProducerStamp { producer_id: id, epoch, base_sequence: seq }
    }

    /// Applies like the state machine does: check, then record on Append. Returns the verdict.
    fn apply(s: &mut ProducerStates, st: ProducerStamp, count: u32, next_offset: &mut u64, index: &mut u64) -> Verdict {
        *index += 1;
        let v = s.check(&st, count);
        if v == Verdict::Append {
            s.record(&st, count, *next_offset, *index);
            *next_offset += u64::from(count);
        }
        v
    }

    #[test]
    fn in_order_batches_append_and_retries_get_the_original_offsets() {
        let (mut s, mut off, mut idx) = (ProducerStates::default(), 0, 0);
        assert_eq!(apply(&mut s, stamp(7, 0, 0), 3, &mut off, &mut idx), Verdict::Append);
        assert_eq!(apply(&mut s, stamp(7, 0, 3), 2, &mut off, &mut idx), Verdict::Append);
        // Retries of both: the original base offsets, nothing appended.
        assert_eq!(apply(&mut s, stamp(7, 0, 0), 3, &mut off, &mut idx), Verdict::Duplicate { base_offset: 0 });
        assert_eq!(apply(&mut s, stamp(7, 0, 3), 2, &mut off, &mut idx), Verdict::Duplicate { base_offset: 3 });
        assert_eq!(off, 5);
        // Another producer is independent.
        assert_eq!(apply(&mut s, stamp(8, 0, 0), 1, &mut off, &mut idx), Verdict::Append);
        assert_eq!(apply(&mut s, stamp(7, 0, 5), 1, &mut off, &mut idx), Verdict::Append);
    }

    #[test]
    fn gaps_and_old_duplicates_are_refused() {
        let (mut s, mut off, mut idx) = (ProducerStates::default(), 0, 0);
        // A new producer must start at 0.
        let v = apply(&mut s, stamp(1, 0, 4), 1, &mut off, &mut idx);
        assert!(matches!(v, Verdict::Refuse { code: ErrorCode::UnknownProducerId, .. }), "{v:?}");
        for seq in 0..10 {
            assert_eq!(apply(&mut s, stamp(1, 0, seq), 1, &mut off, &mut idx), Verdict::Append);
        }
        // A gap.
        match apply(&mut s, stamp(1, 0, 11), 1, &mut off, &mut idx) {
            Verdict::Refuse { code: ErrorCode::OutOfOrderSequence, reason } => {
                assert!(reason.contains("gap") && reason.contains("next expected is 10"), "{reason}")
            }
            v => panic!("{v:?}"),
        }
        // Only the last 5 batches are recognised; an older one is refused, not re-appended.
        assert_eq!(apply(&mut s, stamp(1, 0, 5), 1, &mut off, &mut idx), Verdict::Duplicate { base_offset: 5 });
        match apply(&mut s, stamp(1, 0, 4), 1, &mut off, &mut idx) {
            Verdict::Refuse { code: ErrorCode::OutOfOrderSequence, reason } => {
                assert!(reason.contains("too old"), "{reason}")
            }
            v => panic!("{v:?}"),
        }
        // Same first sequence, different size: not a retry of that batch.
        let v = apply(&mut s, stamp(1, 0, 9), 2, &mut off, &mut idx);
        assert!(matches!(v, Verdict::Refuse { code: ErrorCode::OutOfOrderSequence, .. }), "{v:?}");
        assert_eq!(off, 10);
    }

    #[test]
    fn epochs_fence_older_ones_and_restart_sequences() {
        let (mut s, mut off, mut idx) = (ProducerStates::default(), 0, 0);
        assert_eq!(apply(&mut s, stamp(3, 0, 0), 2, &mut off, &mut idx), Verdict::Append);
        // A new epoch must start at 0.
        let v = apply(&mut s, stamp(3, 1, 2), 1, &mut off, &mut idx);
        assert!(matches!(v, Verdict::Refuse { code: ErrorCode::OutOfOrderSequence, .. }), "{v:?}");
        assert_eq!(apply(&mut s, stamp(3, 1, 0), 1, &mut off, &mut idx), Verdict::Append);
        // The old epoch is fenced, even its retries.
        for seq in [0, 2] {
            match apply(&mut s, stamp(3, 0, seq), 2, &mut off, &mut idx) {
                Verdict::Refuse { code: ErrorCode::InvalidProducerEpoch, reason } => {
                    assert!(reason.contains("epoch 0 is fenced"), "{reason}")
                }
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(s.get(3).map(|e| e.epoch), Some(1));
        assert_eq!(off, 3);
    }

    #[test]
    fn state_persists_and_reloads_identically() {
        let engine = Arc::new(MemoryEngine::new());
        let (mut s, mut off, mut idx) = (ProducerStates::default(), 0, 0);
        for id in 1..=3 {
            for seq in 0..7 {
                apply(&mut s, stamp(id, 2, seq * 2), 2, &mut off, &mut idx);
            }
        }
        let mut wb = WriteBatch::new();
        s.flush_into(9, &mut wb).unwrap();
        engine.write(wb).unwrap();
        let loaded = ProducerStates::load(engine.as_ref(), 9).unwrap();
        assert_eq!(loaded.to_snapshot(), s.to_snapshot());
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded.get(2).unwrap().batches.len(), RETAINED_BATCHES);
        // Another group's rows are separate.
        assert!(ProducerStates::load(engine.as_ref(), 8).unwrap().is_empty());
        // A reloaded state still recognises retries.
        assert_eq!(loaded.check(&stamp(1, 2, 12), 2), Verdict::Duplicate { base_offset: 12 });
        // Destroying the group removes them.
        let mut wb = WriteBatch::new();
        ProducerStates::destroy_into(9, &mut wb);
        engine.write(wb).unwrap();
        assert!(ProducerStates::load(engine.as_ref(), 9).unwrap().is_empty());
    }

    #[test]
    fn the_least_recently_writing_producer_is_forgotten_past_the_limit() {
        let engine = Arc::new(MemoryEngine::new());
        let (mut s, mut off, mut idx) = (ProducerStates::default(), 0, 0);
        for id in 0..MAX_PRODUCERS_PER_PARTITION as u64 {
            apply(&mut s, stamp(id, 0, 0), 1, &mut off, &mut idx);
        }
        // Producer 0 writes again, so 1 is now the least recent.
        apply(&mut s, stamp(0, 0, 1), 1, &mut off, &mut idx);
        apply(&mut s, stamp(u64::MAX, 0, 0), 1, &mut off, &mut idx);
        assert_eq!(s.len(), MAX_PRODUCERS_PER_PARTITION);
        assert!(s.get(1).is_none() && s.get(0).is_some() && s.get(u64::MAX).is_some());
        let mut wb = WriteBatch::new();
        s.flush_into(4, &mut wb).unwrap();
        engine.write(wb).unwrap();
        let loaded = ProducerStates::load(engine.as_ref(), 4).unwrap();
        assert_eq!(loaded.to_snapshot(), s.to_snapshot());
        // The forgotten producer must restart its sequence.
        let v = loaded.check(&stamp(1, 0, 1), 1);
        assert!(matches!(v, Verdict::Refuse { code: ErrorCode::UnknownProducerId, .. }), "{v:?}");
    }
}
