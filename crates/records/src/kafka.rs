//! Kafka v2 record batches as the node receives and stores them: the header, the checks a produced
//! batch must pass, and the stored form.

use bytes::{Buf, Bytes};
use runnel_proto::v1;
use runnel_types::{ErrorCode, RunnelError};

use crate::codec;
use crate::KAFKA_BATCH;

/// Length of a v2 batch header; the records follow it.
pub(crate) const HEADER_LEN: usize = 61;
/// Where `batch_length` ends: it counts the bytes after this point.
pub(crate) const LENGTH_END: usize = 12;
/// Where the partition leader epoch starts (it and the base offset are outside the CRC).
pub(crate) const EPOCH_AT: usize = 12;
/// Where the magic byte is, in v2 batches and in the v0/v1 message sets before them alike.
const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
/// The CRC covers everything from the attributes on.
pub(crate) const CRC_START: usize = 21;
pub(crate) const LAST_OFFSET_DELTA_AT: usize = 23;

const CODEC_MASK: i16 = 0b111;
const LOG_APPEND_TIME: i16 = 1 << 3;
const TRANSACTIONAL: i16 = 1 << 4;
const CONTROL: i16 = 1 << 5;

/// The fixed fields of a Kafka v2 record batch header (61 bytes, big-endian):
/// base_offset i64 @0, batch_length i32 @8 (bytes after this field), partition_leader_epoch i32 @12,
/// magic i8 @16, crc u32 @17 (CRC32C of bytes 21..end), attributes i16 @21, last_offset_delta i32 @23,
/// base_timestamp i64 @27, max_timestamp i64 @35, producer_id i64 @43, producer_epoch i16 @51,
/// base_sequence i32 @53, record_count i32 @57.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaBatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl KafkaBatchHeader {
    /// The compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn codec(&self) -> i16 {
        self.attributes & CODEC_MASK
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    /// A batch of control records (transaction markers), written by brokers, never by producers.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }

    /// The broker's append time replaces the records' own timestamps (`max_timestamp` holds it).
    pub fn log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME != 0
    }

    /// The batch carries an idempotence stamp (producer id, epoch, base sequence).
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// Reads the header at the start of `b`, which the caller has checked holds `HEADER_LEN` bytes.
    fn read(mut b: &[u8]) -> Self {
        KafkaBatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            record_count: b.get_i32(),
        }
    }
}

fn corrupt(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::CorruptBatch, message)
}

/// Reads the batch at the start of `bytes` far enough to know where it ends: its magic, its header
/// and its length. Returns the header and the batch's total length in bytes.
pub(crate) fn frame(bytes: &[u8]) -> Result<(KafkaBatchHeader, usize), RunnelError> {
    // The magic first: a v0/v1 message set is framed differently, and its header may be shorter.
    if let Some(&magic) = bytes.get(MAGIC_AT) {
        let magic = magic as i8;
        if magic == 0 || magic == 1 {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "Kafka message set has magic {magic} (message format v{magic}); only magic 2 record batches \
                     (Kafka 0.11 and later clients) are supported"
                ),
            ));
        }
        if magic != 2 {
            return Err(corrupt(format!("Kafka record batch has magic {magic}; only magic 2 exists besides 0 and 1")));
        }
    }
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "Kafka record batch is cut short: {} bytes, fewer than its {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let header = KafkaBatchHeader::read(bytes);
    let min_length = (HEADER_LEN - LENGTH_END) as i32;
    if header.batch_length < min_length {
        return Err(corrupt(format!(
            "Kafka record batch says batch_length {}, less than the {min_length} header bytes it must count",
            header.batch_length
        )));
    }
    let len = LENGTH_END + header.batch_length as usize;
    if len > bytes.len() {
        return Err(corrupt(format!(
            "Kafka record batch says batch_length {} ({len} bytes in all) but only {} bytes are there",
            header.batch_length,
            bytes.len()
        )));
    }
    Ok((header, len))
}

/// Everything a produced batch must satisfy beyond its framing; `batch` is exactly the batch.
pub(crate) fn check(header: &KafkaBatchHeader, batch: &[u8]) -> Result<(), RunnelError> {
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if actual != header.crc {
        return Err(corrupt(format!(
            "Kafka record batch CRC mismatch: header says crc {:#010x}, bytes {CRC_START}..{} hash to {actual:#010x}",
            header.crc,
            batch.len()
        )));
    }
    if header.record_count <= 0 {
        return Err(corrupt(format!(
            "Kafka record batch says record_count {}; it must be positive",
            header.record_count
        )));
    }
    // Runnel's offsets are dense within a produced batch: one record per offset it spans.
    if i64::from(header.last_offset_delta) + 1 != i64::from(header.record_count) {
        return Err(corrupt(format!(
            "Kafka record batch says record_count {} but last_offset_delta {} (it spans {} offsets)",
            header.record_count,
            header.last_offset_delta,
            i64::from(header.last_offset_delta) + 1
        )));
    }
    if header.codec() > codec::ZSTD {
        return Err(corrupt(format!(
            "Kafka record batch names unknown compression codec {} (attributes {:#06x})",
            header.codec(),
            header.attributes
        )));
    }
    if header.is_control() {
        return Err(RunnelError::new(
            ErrorCode::InvalidRequest,
            "Kafka record batch is a control batch (transaction markers); only brokers write those, and \
             transactions are not supported",
        ));
    }
    if header.is_transactional() {
        return Err(RunnelError::new(
            ErrorCode::InvalidRequest,
            format!(
                "Kafka record batch is transactional (producer id {}): transactions are not supported",
                header.producer_id
            ),
        ));
    }
    Ok(())
}

/// Splits the `records` bytes of a Kafka produce request (one or more concatenated v2 batches) into
/// batches, each checked: enough bytes for the header and for batch_length; magic == 2 (v0/v1
/// message sets are refused, naming the magic); CRC32C matches (message names expected/actual);
/// record_count > 0 and == last_offset_delta + 1; codec 0..=4; not a control batch; not transactional
/// (message: transactions are not supported). Errors: ErrorCode::CorruptBatch (or InvalidRequest for
/// the unsupported features), message naming what was wrong. Never panics on any input.
pub fn split_kafka_batches(bytes: &Bytes) -> Result<Vec<(KafkaBatchHeader, Bytes)>, RunnelError> {
    let mut batches = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let checked = frame(&bytes[at..]).and_then(|(header, len)| {
            check(&header, &bytes[at..at + len])?;
            Ok((header, len))
        });
        let (header, len) = checked.map_err(|mut e| {
            e.message = format!("batch {} (at byte {at} of {}): {}", batches.len(), bytes.len(), e.message);
            e
        })?;
        batches.push((header, bytes.slice(at..at + len)));
        at += len;
    }
    Ok(batches)
}

/// A checked Kafka batch as the node stores it: tagged KAFKA_BATCH, crc32c over all its bytes,
/// record_count from the header, max_timestamp_ms = header max_timestamp (0 when negative).
pub fn kafka_to_stored(header: &KafkaBatchHeader, bytes: Bytes) -> v1::RecordBatch {
    v1::RecordBatch {
        crc32c: crc32c::crc32c(&bytes),
        // A negative count (never from split_kafka_batches) becomes 0, which produce refuses.
        record_count: u32::try_from(header.record_count).unwrap_or(0),
        records: bytes,
        compression: KAFKA_BATCH,
        max_timestamp_ms: header.max_timestamp.max(0),
    }
}

/// The header of a stored Kafka-tagged batch, checked to frame exactly the stored bytes and to
/// span the offsets the stored batch says. With `full`, also every produce-time check (the Kafka
/// CRC among them).
pub(crate) fn stored_header(batch: &v1::RecordBatch, full: bool) -> Result<KafkaBatchHeader, RunnelError> {
    let (header, len) = frame(&batch.records)?;
    if len != batch.records.len() {
        return Err(corrupt(format!(
            "stored Kafka record batch is {} bytes but its header frames {len}: a stored batch is exactly one",
            batch.records.len()
        )));
    }
    if full {
        check(&header, &batch.records)?;
    }
    if i64::from(header.last_offset_delta) + 1 != i64::from(batch.record_count) {
        return Err(corrupt(format!(
            "stored Kafka record batch spans {} offsets (last_offset_delta {}) but is stored as spanning {}",
            i64::from(header.last_offset_delta) + 1,
            header.last_offset_delta,
            batch.record_count
        )));
    }
    Ok(header)
}
