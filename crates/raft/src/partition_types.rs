//! What a partition's Raft log carries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A record batch exactly as the producer encoded it: the checksum travels with the bytes it
/// covers, so every replica and every reader can verify what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub crc32c: u32,
    pub record_count: u32,
    pub records: Bytes,
}

impl StoredBatch {
    pub fn checksum_ok(&self) -> bool {
        crc32c::crc32c(&self.records) == self.crc32c
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Appends one batch; offsets are assigned when it is applied (after commit), so every
    /// replica assigns the same ones.
    Append(StoredBatch),
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
}

impl std::fmt::Display for PartitionCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionCommand::Append(b) => {
                write!(f, "Append({} records, {} bytes, crc32c {:#010x})", b.record_count, b.records.len(), b.crc32c)
            }
        }
    }
}
