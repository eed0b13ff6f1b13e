use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Options, ReadOptions, WriteOptions, DB,
};

use crate::{Engine, Keyspace, Result, StorageError, WriteBatch, WriteOp};

/// Log entries at least this large keep their value in a blob file (smaller ones, e.g. Raft
/// membership and blank entries, stay inline).
const LOG_BLOB_MIN_BYTES: u64 = 1024;

/// One RocksDB instance per node: every Raft group's log and state live here, in three column
/// families, behind one WAL (so one fsync makes every group's pending appends durable).
pub struct RocksEngine {
    db: DB,
}

fn io(e: rocksdb::Error) -> StorageError {
    StorageError::Io(e.into_string())
}

/// How to treat a write-ahead log that does not read back cleanly when the database opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecovery {
    /// Refuse to open when a record in the middle of the WAL is damaged
    /// ([`StorageError::WalCorrupt`]); a torn record at the very end (a write a crash cut short,
    /// never synced, so never acknowledged) is dropped as usual.
    Strict,
    /// Replay up to the first damaged record and drop the rest: for a node that has already
    /// recorded that it lost writes and will repair its replicas from the others
    /// (docs/adr/0015). RocksDB's default, and what silently shortened Raft logs before.
    DropAfterCorruption,
}

impl RocksEngine {
    /// Opens (or creates) the database, refusing a damaged WAL ([`WalRecovery::Strict`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, WalRecovery::Strict)
    }

    pub fn open_with(dir: &Path, wal: WalRecovery) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let mut opts = Options::default();
        // Found by hand (issue 12): with RocksDB's default (point-in-time recovery) 8 bytes
        // overwritten in the middle of a WAL made the node drop everything after them and come
        // back with a shorter Raft log than it had acknowledged, without noticing.
        opts.set_wal_recovery_mode(match wal {
            WalRecovery::Strict => DBRecoveryMode::TolerateCorruptedTailRecords,
            WalRecovery::DropAfterCorruption => DBRecoveryMode::PointInTime,
        });
        // Also fail the open when a WAL that was synced is missing or shorter than recorded.
        opts.set_track_and_verify_wals_in_manifest(true);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Keep the WAL: durability comes from fsyncing it (see GroupSyncer), not from flushes.
        opts.set_compression_type(DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        // Flushes and compactions write tens of megabytes; synced in 1 MiB steps (RocksDB's tuning
        // guide), their dirty pages do not pile up in front of the WAL fsync that acknowledged
        // writes wait for. (No effect measurable above this VM's noise; docs/bench-2026-11-21.txt.)
        opts.set_bytes_per_sync(1024 * 1024);
        let cfs = Keyspace::ALL.iter().map(|ks| {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::None);
            // Log entries are written once and read mostly sequentially.
            o.set_write_buffer_size(64 * 1024 * 1024);
            if *ks == Keyspace::Log {
                // Raft entries carry record batches (kilobytes to megabytes) and live until the
                // log start passes them: keep their values in blob files, written once at flush,
                // so compaction moves only keys instead of rewriting every batch at each level.
                // Measured: compaction's copying was the largest single CPU cost of a produce
                // benchmark (docs/bench-2026-11-21.txt).
                o.set_enable_blob_files(true);
                o.set_min_blob_size(LOG_BLOB_MIN_BYTES);
                o.set_blob_file_size(256 * 1024 * 1024);
                o.set_enable_blob_gc(true);
            }
            ColumnFamilyDescriptor::new(ks.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            let msg = e.into_string();
            if wal == WalRecovery::Strict && msg.contains("Corruption") {
                StorageError::WalCorrupt(format!("{}: {msg}", dir.display()))
            } else {
                StorageError::Io(msg)
            }
        })?;
        Ok(Self { db })
    }

    fn cf(&self, ks: Keyspace) -> Result<&ColumnFamily> {
        // Every keyspace's column family is created in `open` (create_missing_column_families).
        self.db.cf_handle(ks.name()).ok_or_else(|| StorageError::Io(format!("column family '{}' missing", ks.name())))
    }

    fn range_opts(from: &[u8], to: &[u8]) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        ro
    }
}

impl Engine for RocksEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(ks)?, key).map_err(io)
    }

    fn scan(&self, ks: Keyspace, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(vec![]);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(ks)?, Self::range_opts(from, to));
        it.seek(from);
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                out.push((k.to_vec(), v.to_vec()));
            }
            it.next();
        }
        it.status().map_err(io)?;
        Ok(out)
    }

    fn last_in_range(&self, ks: Keyspace, from: &[u8], to: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(None);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(ks)?, Self::range_opts(from, to));
        it.seek_to_last();
        let out = match (it.valid(), it.key(), it.value()) {
            (true, Some(k), Some(v)) => Some((k.to_vec(), v.to_vec())),
            _ => None,
        };
        it.status().map_err(io)?;
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put { ks, key, value } => wb.put_cf(self.cf(*ks)?, key, value),
                WriteOp::Delete { ks, key } => wb.delete_cf(self.cf(*ks)?, key),
                WriteOp::DeleteRange { ks, from, to } => wb.delete_range_cf(self.cf(*ks)?, from, to),
            }
        }
        // Not synced here: the WAL write makes it visible and ordered; GroupSyncer fsyncs once for
        // everyone waiting.
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(wb, &wo).map_err(io)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::path::PathBuf;

    use super::*;
    use crate::keys::group_key;

    const ENTRIES: u64 = 2_000;

    /// Writes `ENTRIES` log entries of ~1 KiB (synced every 100) and closes the database.
    fn fill(dir: &Path) {
        let e = RocksEngine::open(dir).unwrap();
        for i in 0..ENTRIES {
            let mut b = WriteBatch::new();
            b.put(Keyspace::State, group_key(7, i), vec![(i % 251) as u8; 1000]);
            e.write(b).unwrap();
            if i % 100 == 99 {
                e.sync().unwrap();
            }
        }
    }

    fn count(e: &RocksEngine) -> usize {
        e.scan(Keyspace::State, &group_key(7, 0), &group_key(8, 0), usize::MAX).unwrap().len()
    }

    fn largest_wal(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("a WAL file")
    }

    /// Found by hand (issue 12): 8 bytes overwritten in the middle of the WAL made RocksDB's
    /// default recovery drop everything after them, silently.
    #[test]
    fn a_damaged_wal_is_refused_not_silently_shortened() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let wal = largest_wal(dir.path());
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(len > 1 << 20, "the WAL holds the entries: {len} bytes");
        let mut f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]).unwrap();
        drop(f);

        let err = RocksEngine::open(dir.path()).err().expect("a damaged WAL must not open");
        assert!(matches!(err, StorageError::WalCorrupt(_)), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");

        // What the default recovery would have done: fewer entries than were synced.
        let e = RocksEngine::open_with(dir.path(), WalRecovery::DropAfterCorruption).unwrap();
        let left = count(&e);
        assert!(left < ENTRIES as usize, "{left} entries left");
    }

    /// A record the crash cut short at the very end of the WAL was never synced: dropping it is
    /// what recovery is for, and everything synced is still there.
    #[test]
    fn a_torn_unsynced_tail_is_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let e = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(count(&e), ENTRIES as usize);
        let mut b = WriteBatch::new();
        b.put(Keyspace::State, group_key(7, ENTRIES), vec![1; 1000]);
        e.write(b).unwrap();
        drop(e);
        // The crash came while the last (unsynced) record was half written.
        let wal = largest_wal(dir.path());
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 500).unwrap();
        let e = RocksEngine::open(dir.path()).expect("a torn unsynced tail opens");
        assert_eq!(count(&e), ENTRIES as usize);
    }
}
