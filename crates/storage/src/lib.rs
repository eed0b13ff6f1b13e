//! Durable state on a node, behind an [`Engine`] trait that does not know RocksDB exists.
//!
//! Two implementations pass the same conformance suite ([`conformance`]):
//! - [`RocksEngine`]: the real one, one RocksDB instance per node shared by every Raft group;
//! - [`MemEngine`]: for the deterministic simulator; it keeps synced and unsynced writes apart so
//!   a simulated crash loses exactly what a real one could.
//!
//! Writes are visible as soon as [`Engine::write`] returns but durable only after a later
//! [`Engine::sync`]. [`GroupSyncer`] turns many groups' "make my writes durable" requests into one
//! sync (one fsync of the shared WAL) and then answers all of them: group commit.

pub mod conformance;
mod engine;
pub mod keys;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;
mod space;
mod syncer;

pub use engine::{Engine, Keyspace, WriteBatch, WriteOp};
pub use memory::MemEngine;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksEngine, WalRecovery};
pub use space::{DiskSpace, SpaceLow};
pub use syncer::{GroupSyncer, SyncCallback, SyncStats};

/// Storage failures. I/O errors are treated as fatal by callers: the node stops serving the
/// affected groups rather than guess what reached the disk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("corrupt data in {keyspace:?} at key {key}: {why}")]
    Corrupt { keyspace: Keyspace, key: String, why: String },
    #[error("storage is shut down")]
    Closed,
    /// The write-ahead log is damaged before its end: writes that were synced (and so may have
    /// been acknowledged) cannot be read back.
    #[error("the write-ahead log is corrupt: {0}")]
    WalCorrupt(String),
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
