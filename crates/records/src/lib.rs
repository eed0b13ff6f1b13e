//! The record batches a partition log holds, in either of its two formats, and one records view
//! over both (ADR 0020).
//!
//! - A **Runnel batch** (`runnel.v1.RecordBatch` tagged with a Runnel codec): a protobuf `Records`
//!   message, compressed or not, checksummed by the batch's `crc32c`.
//! - A **Kafka batch** (tagged [`KAFKA_BATCH`]): one Kafka magic-v2 record batch exactly as a
//!   Kafka client produced it, with its own codec and CRC; `crc32c` covers its bytes too.
//!
//! [`records`] reads the records of either, with Kafka's null keys and values kept as null
//! markers; compaction, the time index and produce validation read through it. [`to_kafka`] and
//! [`to_runnel`] give a batch of either format in the format a front-end serves: each front-end
//! serves its own format's batches as stored and transcodes only the other's. The Kafka front-end
//! checks what clients send with [`split_kafka_batches`] and stores it with [`kafka_to_stored`].
//!
//! Kafka's records are encoded and decoded by `kafka-protocol`; its codecs are this crate's own,
//! so that no batch expands past `runnel_proto::MAX_UNCOMPRESSED_BATCH_BYTES`.

mod codec;
mod kafka;
mod view;

use runnel_proto::v1;

pub use kafka::{kafka_to_stored, split_kafka_batches, KafkaBatchHeader};
pub use view::{encode_kafka_batch, is_tombstone, records, to_kafka, to_runnel};

/// `v1::Compression::KafkaBatch as i32`: the tag of a stored Kafka batch.
pub const KAFKA_BATCH: i32 = v1::Compression::KafkaBatch as i32;
