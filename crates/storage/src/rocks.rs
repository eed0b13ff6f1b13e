use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteOptions, DB};

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

impl RocksEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let mut opts = Options::default();
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
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io)?;
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
