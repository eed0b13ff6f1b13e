use crate::Result;

/// Separate key spaces (RocksDB column families). Keys inside are prefixed by group id
/// (see [`crate::keys`]) so one instance serves every Raft group on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyspace {
    /// Raft log entries: (group, index) -> encoded entry. For partitions this is also the
    /// partition's data: records are stored once, in the Raft log.
    Log,
    /// Small per-group state: vote, committed log id, purge point, applied state.
    State,
    /// Partition offset index: (group, base offset) -> (log index, record count, batch bytes).
    Index,
    /// Partition time index: (group, running max timestamp) -> base offset of the first batch
    /// that reached it. Written only when the running max grows, so it is small and ordered both
    /// ways (timestamps and offsets increase together).
    TimeIndex,
}

impl Keyspace {
    pub const ALL: [Keyspace; 4] = [Keyspace::Log, Keyspace::State, Keyspace::Index, Keyspace::TimeIndex];

    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Log => "log",
            Keyspace::State => "state",
            Keyspace::Index => "index",
            Keyspace::TimeIndex => "time_index",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        ks: Keyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        ks: Keyspace,
        key: Vec<u8>,
    },
    /// Deletes keys in `[from, to)`.
    DeleteRange {
        ks: Keyspace,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// Applied atomically by [`Engine::write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
    pub bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { ks, key, value });
    }
    pub fn delete(&mut self, ks: Keyspace, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push(WriteOp::Delete { ks, key });
    }
    pub fn delete_range(&mut self, ks: Keyspace, from: Vec<u8>, to: Vec<u8>) {
        self.bytes += from.len() + to.len();
        self.ops.push(WriteOp::DeleteRange { ks, from, to });
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered key-value store with explicit durability.
///
/// Contract (checked by [`crate::conformance`]):
/// - `write` is atomic and its effects are visible to reads as soon as it returns;
/// - writes become durable in the order they were made, all of them at the latest when a
///   `sync` that started after them returns;
/// - a crash may lose any suffix of the writes made since the last completed `sync`, never
///   a write a completed `sync` covered.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Entries with `from <= key < to`, in key order, at most `limit` of them.
    fn scan(&self, ks: Keyspace, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The entry with the greatest key in `[from, to)`.
    fn last_in_range(&self, ks: Keyspace, from: &[u8], to: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    fn write(&self, batch: WriteBatch) -> Result<()>;
    /// Makes every write that returned before this call durable (one fsync of the WAL).
    fn sync(&self) -> Result<()>;
}
