//! Log maintenance (ADR 0008): retention, proposed by a partition's leader and applied by every
//! replica at the same log position, and compaction, run by every replica on its own copy.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use runnel_proto::v1;
use runnel_raft::{PartitionCommand, PartitionResponse, StoredBatch};
use runnel_types::{ErrorCode, RunnelError};

use crate::partition::Partition;
use crate::partition_sm::{IndexEntry, RewriteSkipped};

/// How long a leader waits for a TrimLog to commit before trying again at its next check.
const TRIM_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Index rows read per step of a compaction pass.
const ROWS_PER_STEP: usize = 1024;
/// A compaction pass tracks at most this many distinct keys; past it, the pass stops early (the
/// keys seen so far are still compacted correctly: only offsets up to where it stopped are
/// judged). Bounds the cleaner's memory.
const MAX_KEYS_PER_PASS: usize = 1_000_000;

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    pub batches_rewritten: u64,
    pub records_removed: u64,
}

/// Whether compaction keeps a record: it must be the latest record of its key (offsets compared
/// against `latest`, built over the same range), and if it is a tombstone (see
/// `runnel_records::is_tombstone`) it must be younger than `delete_retention_ms`. Keyless records
/// are kept (a topic switched to compaction may hold some; producing new ones is refused).
pub fn keeps(
    key: &[u8],
    tombstone: bool,
    offset: u64,
    timestamp_ms: i64,
    latest: &HashMap<Bytes, u64>,
    now_ms: i64,
    delete_retention_ms: i64,
) -> bool {
    if key.is_empty() {
        return true;
    }
    if latest.get(key).is_some_and(|&l| l != offset) {
        return false;
    }
    !(tombstone && timestamp_ms < now_ms.saturating_sub(delete_retention_ms))
}

/// The records of a batch at `base` that compaction keeps, each carrying its offset delta, or
/// None when it keeps them all (nothing to rewrite). Records without a timestamp (<= 0) count
/// as `batch_timestamp_ms` (the time the leader stamped on their batch). `batch_format` is the
/// batch's `compression` tag: it decides whether an empty value is a tombstone.
pub fn compact_records(
    records: Vec<v1::Record>,
    batch_format: i32,
    base: u64,
    batch_timestamp_ms: i64,
    latest: &HashMap<Bytes, u64>,
    now_ms: i64,
    delete_retention_ms: i64,
) -> Option<Vec<v1::Record>> {
    let before = records.len();
    let kept: Vec<v1::Record> = records
        .into_iter()
        .filter(|r| {
            let offset = base + u64::from(r.offset_delta.unwrap_or(0));
            let ts = if r.timestamp_ms <= 0 { batch_timestamp_ms } else { r.timestamp_ms };
            let tombstone = runnel_records::is_tombstone(r, batch_format);
            keeps(&r.key, tombstone, offset, ts, latest, now_ms, delete_retention_ms)
        })
        .collect();
    (kept.len() < before).then_some(kept)
}

fn to_wire(b: &StoredBatch) -> v1::RecordBatch {
    v1::RecordBatch {
        crc32c: b.crc32c,
        record_count: b.record_count,
        records: b.records.clone(),
        compression: b.compression,
        max_timestamp_ms: b.max_timestamp_ms,
    }
}

fn storage(e: std::io::Error) -> RunnelError {
    RunnelError::new(ErrorCode::Storage, e.to_string())
}

/// The rows of `[from, to)` in steps, calling `f` with each row and its records (either format).
async fn for_each_batch<F>(p: &Partition, from: u64, to: u64, mut f: F) -> Result<(), RunnelError>
where
    F: FnMut(&IndexEntry, &StoredBatch, Vec<v1::Record>) -> std::ops::ControlFlow<()>,
{
    let mut next = from;
    while next < to {
        let rows = p.sm.index_from(next, to, ROWS_PER_STEP).map_err(storage)?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            next = row.end_offset();
            if row.end_offset() <= from {
                continue;
            }
            let Some(b) = p.sm.read_batch(&row).map_err(storage)? else { continue };
            if b.is_hollow() {
                continue;
            }
            let records = runnel_records::records(&to_wire(&b))?;
            if f(&row, &b, records).is_break() {
                return Ok(());
            }
        }
        // Lets appends and fetches run between steps.
        tokio::task::yield_now().await;
    }
    Ok(())
}

impl Partition {
    /// Leader only: proposes a `TrimLog` when retention wants the log start to advance. Returns
    /// the new log start when one was committed.
    pub async fn enforce_retention(&self) -> Result<Option<u64>, RunnelError> {
        if !self.leadership().0 || self.fence.is_fenced() {
            return Ok(None);
        }
        let config = self.current_config();
        if !config.cleanup_policy.deletes() || (config.retention_ms < 0 && config.retention_bytes < 0) {
            return Ok(None);
        }
        let now = (self.clock)();
        let Some(target) =
            self.sm.retention_target(now, config.retention_ms, config.retention_bytes).map_err(storage)?
        else {
            return Ok(None);
        };
        self.renew_lease().await;
        let write = self.raft.client_write(PartitionCommand::TrimLog { log_start: target });
        match tokio::time::timeout(TRIM_COMMIT_TIMEOUT, write).await {
            Ok(Ok(r)) => match r.data {
                PartitionResponse::Trimmed { log_start } => {
                    tracing::info!(topic = %self.topic, partition = self.partition, log_start, "retention moved the log start");
                    Ok(Some(log_start))
                }
                other => Err(RunnelError::internal(format!("TrimLog answered {other:?}"))),
            },
            Ok(Err(e)) => {
                Err(RunnelError::new(ErrorCode::LeaderNotAvailable, format!("{}/{}: {e}", self.topic, self.partition)))
            }
            Err(_) => Err(RunnelError::new(
                ErrorCode::Timeout,
                format!("{}/{}: TrimLog not committed in time", self.topic, self.partition),
            )),
        }
    }

    /// Every replica, on its own copy: keeps only the latest record per key in
    /// `[log_start, high watermark)` and drops tombstones older than `delete.retention.ms`.
    /// Offsets never change: rewritten batches keep their span and their records' offset deltas.
    pub async fn compact(&self) -> Result<Option<CompactionStats>, RunnelError> {
        let config = self.current_config();
        if !config.cleanup_policy.compacts() {
            return Ok(None);
        }
        let (from, mut to) = (self.sm.log_start(), self.sm.high_watermark());
        let mut latest: HashMap<Bytes, u64> = HashMap::new();
        for_each_batch(self, from, to, |row, _, records| {
            for r in records {
                if !r.key.is_empty() {
                    latest.insert(
                        Bytes::copy_from_slice(&r.key),
                        row.base_offset + u64::from(r.offset_delta.unwrap_or(0)),
                    );
                }
            }
            if latest.len() >= MAX_KEYS_PER_PASS {
                to = row.end_offset();
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        let now = (self.clock)();
        let mut plans: Vec<(IndexEntry, StoredBatch, usize)> = Vec::new();
        for_each_batch(self, from, to, |row, b, records| {
            let before = records.len();
            if let Some(kept) = compact_records(
                records,
                b.compression,
                row.base_offset,
                b.max_timestamp_ms,
                &latest,
                now,
                config.delete_retention_ms,
            ) {
                let removed = before - kept.len();
                // Written as a Runnel batch whatever the original's format (a Kafka batch cannot
                // lose records and keep its producer's CRC): every kept record carries its offset
                // delta and null markers, so every replica computes the same bytes and a Kafka
                // fetch transcodes them back. Uncompressed: the batch names its compression, so
                // readers cope.
                let bytes = Bytes::from(v1::Records { records: kept }.encode_to_vec());
                plans.push((*row, b.rewritten(bytes, v1::Compression::None as i32), removed));
            }
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        let mut stats = CompactionStats::default();
        for (row, batch, removed) in plans {
            match self.sm.rewrite_batch(&row, batch).await.map_err(storage)? {
                Ok(()) => {
                    stats.batches_rewritten += 1;
                    stats.records_removed += removed as u64;
                }
                Err(RewriteSkipped::Closed) => return Ok(None),
                Err(RewriteSkipped::Gone | RewriteSkipped::NotApplied) => {}
            }
        }
        self.sm.count_compaction();
        if stats.batches_rewritten > 0 {
            tracing::info!(topic = %self.topic, partition = self.partition, ?stats, "compacted");
        }
        Ok(Some(stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str, ts: i64, delta: u32) -> v1::Record {
        v1::Record {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(v.to_string()),
            headers: vec![],
            timestamp_ms: ts,
            offset_delta: Some(delta),
            ..Default::default()
        }
    }

    fn latest(pairs: &[(&str, u64)]) -> HashMap<Bytes, u64> {
        pairs.iter().map(|(k, o)| (Bytes::from(k.to_string()), *o)).collect()
    }

    #[test]
    fn only_the_latest_record_per_key_survives() {
        // Batch at base 10: a@10, b@11, a@12, c@13; later a@20 and b@11 is the latest b.
        let recs = vec![rec("a", "1", 100, 0), rec("b", "1", 100, 1), rec("a", "2", 100, 2), rec("c", "1", 100, 3)];
        let l = latest(&[("a", 20), ("b", 11), ("c", 13)]);
        let kept = compact_records(recs, 0, 10, 100, &l, 1000, 10_000).unwrap();
        let kept: Vec<(String, u32)> =
            kept.iter().map(|r| (String::from_utf8_lossy(&r.key).to_string(), r.offset_delta.unwrap())).collect();
        assert_eq!(kept, vec![("b".to_string(), 1), ("c".to_string(), 3)]);
    }

    #[test]
    fn nothing_to_rewrite_when_everything_is_latest() {
        let recs = vec![rec("a", "1", 100, 0), rec("b", "1", 100, 1)];
        assert_eq!(compact_records(recs, 0, 0, 100, &latest(&[("a", 0), ("b", 1)]), 1000, 10_000), None);
    }

    #[test]
    fn tombstones_live_for_delete_retention_then_go() {
        let l = latest(&[("a", 5)]);
        // Young tombstone: kept.
        assert!(keeps(b"a", true, 5, 900, &l, 1000, 500));
        // Old tombstone: removed, even though it is the latest for its key.
        assert!(!keeps(b"a", true, 5, 100, &l, 1000, 500));
        // An old live value that is the latest stays forever.
        assert!(keeps(b"a", false, 5, 100, &l, 1000, 500));
        // Superseded: removed.
        assert!(!keeps(b"a", false, 4, 100, &l, 1000, 500));
        // Keyless: kept.
        assert!(keeps(b"", false, 3, 100, &l, 1000, 500));
        // Unstamped records take their batch's timestamp.
        let recs = vec![rec("a", "", 0, 0)];
        assert_eq!(compact_records(recs.clone(), 0, 5, 900, &l, 1000, 500), None);
        assert_eq!(compact_records(recs, 0, 5, 100, &l, 1000, 500), Some(vec![]));
    }

    #[test]
    fn in_a_kafka_batch_only_a_null_value_is_a_tombstone() {
        let l = latest(&[("a", 5), ("b", 6)]);
        let null = v1::Record { value_null: true, ..rec("a", "", 100, 0) };
        let empty = rec("b", "", 100, 1);
        let old = |format| compact_records(vec![null.clone(), empty.clone()], format, 5, 100, &l, 1000, 500);
        // Both old enough to expire as tombstones: Kafka drops the null one and keeps the empty one.
        assert_eq!(old(runnel_records::KAFKA_BATCH), Some(vec![empty.clone()]));
        // A Runnel batch drops both: an empty value is its tombstone, and so is a null one.
        assert_eq!(old(v1::Compression::None as i32), Some(vec![]));
    }

    #[test]
    fn a_compacted_batch_decodes_with_its_offsets() {
        let recs = vec![rec("a", "1", 1, 0), rec("b", "1", 1, 1), rec("a", "2", 1, 2)];
        let kept = compact_records(recs, 0, 0, 1, &latest(&[("a", 2), ("b", 1)]), 10, 10).unwrap();
        let bytes = Bytes::from(v1::Records { records: kept }.encode_to_vec());
        let original =
            StoredBatch { crc32c: 0, record_count: 3, records: Bytes::new(), compression: 0, max_timestamp_ms: 1 };
        let b = original.rewritten(bytes, 0);
        let decoded = runnel_proto::decode_batch(&to_wire(&b)).unwrap();
        let offsets: Vec<u32> = decoded.iter().map(|r| r.offset_delta.unwrap()).collect();
        assert_eq!(offsets, vec![1, 2]);
        let hollow = b.hollow();
        assert!(hollow.is_hollow() && hollow.checksum_ok() && hollow.record_count == 3);
        assert!(runnel_proto::decode_batch(&to_wire(&hollow)).unwrap().is_empty());
    }
}
