//! What a partition's Raft log carries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A record batch exactly as the producer encoded it: the checksum travels with the bytes it
/// covers, so every replica and every reader can verify what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub crc32c: u32,
    /// Offsets the batch spans (see `runnel.v1.RecordBatch.record_count`).
    pub record_count: u32,
    pub records: Bytes,
    /// `runnel.v1.Compression` of `records`.
    pub compression: i32,
    /// The greatest record timestamp in the batch, computed by the leader on produce.
    pub max_timestamp_ms: i64,
}

impl StoredBatch {
    pub fn checksum_ok(&self) -> bool {
        crc32c::crc32c(&self.records) == self.crc32c
    }

    /// The batch with its records replaced by `records` (an encoded `Records` message in
    /// `compression`), keeping its span and max timestamp: what compaction and retention write
    /// back in place of the original, so the Raft entry keeps its log id and every replica, even
    /// one that receives the rewritten entry later, assigns the same offsets.
    pub fn rewritten(&self, records: Bytes, compression: i32) -> StoredBatch {
        StoredBatch {
            crc32c: crc32c::crc32c(&records),
            record_count: self.record_count,
            records,
            compression,
            max_timestamp_ms: self.max_timestamp_ms,
        }
    }

    /// A hollow batch: the same span, no records (an empty `Records` message encodes to zero
    /// bytes). What remains in the Raft log of a batch retention deleted.
    pub fn hollow(&self) -> StoredBatch {
        self.rewritten(Bytes::new(), 0)
    }

    pub fn is_hollow(&self) -> bool {
        self.records.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Appends one batch; offsets are assigned when it is applied (after commit), so every
    /// replica assigns the same ones.
    Append(StoredBatch),
    /// Retention: every batch wholly below `log_start` is deleted on every replica, at this
    /// position in the log (the index rows go, the Raft entries become hollow batches). Proposed
    /// by the leader; a value at or below the current log start changes nothing.
    TrimLog { log_start: u64 },
    /// Appends one batch from an idempotent producer. When applied, the partition's producer state
    /// decides whether it is new (appended), a retry of a recent batch (the original's offsets are
    /// answered, nothing is appended) or out of order (refused). A separate variant, not a field of
    /// `StoredBatch`, so entries written before idempotence existed still decode.
    AppendIdempotent { batch: StoredBatch, producer: ProducerStamp },
}

impl PartitionCommand {
    /// The batch this command appends.
    pub fn batch(&self) -> Option<&StoredBatch> {
        match self {
            PartitionCommand::Append(b) | PartitionCommand::AppendIdempotent { batch: b, .. } => Some(b),
            PartitionCommand::TrimLog { .. } => None,
        }
    }

    /// The same command carrying `batch` instead (compaction and retention rewrite stored batches
    /// in place; an idempotent batch keeps its producer stamp, so a replica applying the
    /// rewritten entry reaches the same producer-state verdict).
    pub fn with_batch(self, batch: StoredBatch) -> PartitionCommand {
        match self {
            PartitionCommand::AppendIdempotent { producer, .. } => {
                PartitionCommand::AppendIdempotent { batch, producer }
            }
            _ => PartitionCommand::Append(batch),
        }
    }

    pub fn into_batch(self) -> Option<StoredBatch> {
        match self {
            PartitionCommand::Append(b) | PartitionCommand::AppendIdempotent { batch: b, .. } => Some(b),
            PartitionCommand::TrimLog { .. } => None,
        }
    }
}

/// Who produced an idempotent batch, and the sequence number of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStamp {
    pub producer_id: u64,
    pub epoch: u32,
    pub base_sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionResponse {
    Appended {
        base_offset: u64,
    },
    /// The batch failed its checksum when applied; it holds no offsets.
    Rejected {
        reason: String,
    },
    /// The log start after a `TrimLog`.
    Trimmed {
        log_start: u64,
    },
    /// An idempotent batch already in the partition (a retry): where the original went. Nothing
    /// was appended.
    Duplicate {
        base_offset: u64,
    },
    /// An idempotent batch refused by the producer-state check (`code` is a `runnel_types::
    /// ErrorCode`: OUT_OF_ORDER_SEQUENCE, INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID).
    Refused {
        code: u32,
        reason: String,
    },
}

impl std::fmt::Display for PartitionCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionCommand::Append(b) => {
                write!(f, "Append({} records, {} bytes, crc32c {:#010x})", b.record_count, b.records.len(), b.crc32c)
            }
            PartitionCommand::TrimLog { log_start } => write!(f, "TrimLog(log_start={log_start})"),
            PartitionCommand::AppendIdempotent { batch: b, producer: p } => write!(
                f,
                "AppendIdempotent({} records, {} bytes, crc32c {:#010x}, producer {} epoch {} seq {})",
                b.record_count,
                b.records.len(),
                b.crc32c,
                p.producer_id,
                p.epoch,
                p.base_sequence
            ),
        }
    }
}
