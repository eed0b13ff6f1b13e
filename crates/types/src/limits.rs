//! Every limit in one place, with units in the names.

/// Default largest record (key + value + headers) a topic accepts; per-topic `max.record.bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 1024 * 1024;
/// Upper bound for `max.record.bytes`.
pub const MAX_RECORD_BYTES_LIMIT: u64 = 8 * 1024 * 1024;
/// Largest batch a single Produce may carry.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Largest gRPC message either side accepts (a full batch plus framing).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Fetch responses stop adding batches past this many bytes, whatever the client asked.
pub const MAX_FETCH_BYTES: u32 = 16 * 1024 * 1024;
/// Fetch `max_bytes` when the client sends 0.
pub const DEFAULT_FETCH_BYTES: u32 = 1024 * 1024;
/// Longest long-poll a Fetch may ask for.
pub const MAX_FETCH_WAIT_MS: u32 = 30_000;
/// Produce waits at most this long for a commit when the request gives no timeout.
pub const DEFAULT_PRODUCE_TIMEOUT_MS: u32 = 10_000;
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;
pub const MAX_REPLICATION_FACTOR: u32 = 7;
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Default `retention.ms`: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Default `delete.retention.ms` (how long a tombstone survives compaction): 1 day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
