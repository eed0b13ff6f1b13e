//! One records view over both batch formats, and transcoding between them.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use runnel_proto::v1;
use runnel_types::{ErrorCode, RunnelError};

use crate::codec;
use crate::kafka::{
    frame, stored_header, KafkaBatchHeader, CRC_AT, CRC_START, EPOCH_AT, HEADER_LEN, LAST_OFFSET_DELTA_AT, LENGTH_END,
};
use crate::KAFKA_BATCH;

/// The fewest bytes a v2 record takes: its length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each at their smallest.
const MIN_RECORD_BYTES: usize = 7;

/// Kafka's "no producer" values for a batch without an idempotence stamp.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;
const NO_SEQUENCE: i32 = -1;

fn corrupt(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::CorruptBatch, message)
}

/// The records of a batch of either format, verified (runnel crc32c, then for Kafka the Kafka CRC and
/// record decode), each with `offset_delta` set (Some) and the null markers set. For a Runnel batch
/// this is `runnel_proto::decode_batch` (null markers as stored). For a Kafka batch: key/value None ->
/// empty + key_null/value_null = true; header value None -> value_null; offset_delta = record offset -
/// header base_offset; timestamp as in the record (for log-append-time batches: the header's
/// max_timestamp).
///
/// Kafka header keys are strings and must be UTF-8. A record that repeats a header key keeps one
/// header for that key (in the first one's place, with the last one's value): `kafka-protocol`
/// decodes a record's headers into a map.
pub fn records(batch: &v1::RecordBatch) -> Result<Vec<v1::Record>, RunnelError> {
    if batch.compression != KAFKA_BATCH {
        return runnel_proto::decode_batch(batch);
    }
    Ok(kafka_records(batch)?.1)
}

/// A Kafka-tagged batch's header and records, verified.
fn kafka_records(batch: &v1::RecordBatch) -> Result<(KafkaBatchHeader, Vec<v1::Record>), RunnelError> {
    runnel_proto::verify_batch(batch)?;
    let header = stored_header(batch, true)?;
    let payload = codec::decompress(header.codec(), &batch.records.slice(HEADER_LEN..))?;
    let count = header.record_count as usize;
    // The decoder reserves room for record_count records before reading any: a count the bytes
    // cannot hold must not become a huge allocation.
    if count > payload.len() / MIN_RECORD_BYTES {
        return Err(corrupt(format!(
            "Kafka record batch says {count} records but its {} record bytes (decompressed) hold at most {}",
            payload.len(),
            payload.len() / MIN_RECORD_BYTES
        )));
    }
    // The decoder adds each record's deltas to the header's base offset and timestamp without
    // overflow checks, and the client chooses all of them. So it decodes against a header with both
    // zeroed, which frames no records: the payload, decompressed above, is handed to it as what
    // "decompressing" that empty section yields. The real base timestamp is added back, checked.
    let mut zeroed = zeroed_header(&header);
    let decoded = RecordBatchDecoder::decode_with_custom_compression(
        &mut zeroed,
        Some(|_: &mut Bytes, _: Compression| Ok::<Bytes, anyhow::Error>(payload.clone())),
    )
    .map_err(|e| corrupt(format!("Kafka record batch's records do not decode: {e}")))?;
    let span = i64::from(batch.record_count);
    let mut next = 0i64;
    let mut out = Vec::with_capacity(decoded.records.len());
    for (i, r) in decoded.records.into_iter().enumerate() {
        // The offset relative to the zeroed base: the record's offset delta.
        let delta = r.offset;
        if delta < next || delta >= span {
            return Err(corrupt(format!(
                "Kafka record {i} has offset delta {delta}; expected at least {next} and below the batch's span of {span}"
            )));
        }
        next = delta + 1;
        let timestamp_ms = if header.log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.checked_add(r.timestamp).ok_or_else(|| {
                corrupt(format!(
                    "Kafka record {i} has timestamp delta {} from base timestamp {}: past the range of a timestamp",
                    r.timestamp, header.base_timestamp
                ))
            })?
        };
        out.push(v1::Record {
            key_null: r.key.is_none(),
            key: r.key.unwrap_or_default(),
            value_null: r.value.is_none(),
            value: r.value.unwrap_or_default(),
            headers: r
                .headers
                .into_iter()
                .map(|(key, value)| v1::Header {
                    key: key.as_str().to_string(),
                    value_null: value.is_none(),
                    value: value.unwrap_or_default(),
                })
                .collect(),
            timestamp_ms,
            // Below the span, which is a u32.
            offset_delta: Some(delta as u32),
        });
    }
    Ok((header, out))
}

/// A header for the decoder: `header`'s record count, attributes and producer fields, with base
/// offset and timestamps zeroed, uncompressed, and a batch length that frames no record bytes.
fn zeroed_header(header: &KafkaBatchHeader) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN);
    b.put_i64(0);
    b.put_i32((HEADER_LEN - LENGTH_END) as i32);
    b.put_i32(0);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(header.attributes & !0b111);
    b.put_i32(header.last_offset_delta);
    b.put_i64(0);
    b.put_i64(0);
    b.put_i64(header.producer_id);
    b.put_i16(header.producer_epoch);
    b.put_i32(header.base_sequence);
    b.put_i32(header.record_count);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// Whether a record from `records()` deletes its key in a compacted topic: a null value, or (Runnel
/// rule, kept for Runnel-produced batches) an empty value in a batch that is not a Kafka batch.
pub fn is_tombstone(record: &v1::Record, batch_format: i32) -> bool {
    record.value_null || (batch_format != KAFKA_BATCH && record.value.is_empty())
}

/// A stored batch of either format as one Kafka v2 batch whose first offset is `base_offset` (the
/// offset the partition assigned the batch) and partition leader epoch `leader_epoch`.
/// Kafka-tagged: the stored bytes with base_offset (bytes 0..8) and partition_leader_epoch (12..16)
/// overwritten (the Kafka CRC does not cover them; copy into a BytesMut). Runnel-tagged: transcoded
/// with RecordBatchEncoder (uncompressed; producer id -1, epoch -1, sequence -1; each record's offset
/// = base_offset + offset_delta; timestamps as stored; null markers honoured; key/value empty&!null ->
/// Some(empty)). A batch with no records (hollow after retention/compaction) -> Ok(None).
///
/// A compacted Runnel batch whose first records were removed starts at its first remaining record
/// (the encoder numbers a batch from its first record); its last offset delta still reaches the
/// stored batch's last offset, as Kafka's own compaction keeps it, so a consumer's next fetch
/// starts after the whole stored batch.
pub fn to_kafka(batch: &v1::RecordBatch, base_offset: u64, leader_epoch: i32) -> Result<Option<Bytes>, RunnelError> {
    // Every offset the batch spans must be a Kafka offset (an i64); then no record's overflows.
    let base = i64::try_from(base_offset)
        .ok()
        .filter(|b| b.checked_add(i64::from(batch.record_count)).is_some())
        .ok_or_else(|| {
            RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("batch at offset {base_offset} spans offsets past Kafka's offset range"),
            )
        })?;
    if batch.compression == KAFKA_BATCH {
        // The crc32c covers every stored byte, so bytes that pass it are the ones whose Kafka CRC
        // was checked on produce: the Kafka CRC is left for the consumer, as Kafka does.
        runnel_proto::verify_batch(batch)?;
        let (_, len) = frame(&batch.records)?;
        if len != batch.records.len() {
            return Err(corrupt(format!(
                "stored Kafka record batch is {} bytes but its header frames {len}",
                batch.records.len()
            )));
        }
        let mut out = BytesMut::from(&batch.records[..]);
        out[..8].copy_from_slice(&base.to_be_bytes());
        out[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
        return Ok(Some(out.freeze()));
    }
    let records = runnel_proto::decode_batch(batch)?;
    let Some(first) = records.first() else { return Ok(None) };
    // decode_batch sets every record's delta.
    let first_delta = first.offset_delta.unwrap_or(0);
    let offset = |r: &v1::Record| base + i64::from(r.offset_delta.unwrap_or(0));
    let kafka: Vec<Record> = records
        .iter()
        .map(|r| {
            // Sequences step with offsets so the encoder keeps every record in one batch.
            let step = r.offset_delta.unwrap_or(0).wrapping_sub(first_delta) as i32;
            kafka_record(r, offset(r), NO_SEQUENCE.wrapping_add(step), leader_epoch, None)
        })
        .collect();
    let mut out = encode(&kafka, codec::NONE)?;
    // Stretch the last offset delta to the stored batch's last offset (see above); the CRC covers it.
    let last_delta = i64::from(batch.record_count) - 1 - i64::from(first_delta);
    let last_delta = i32::try_from(last_delta).map_err(|_| {
        corrupt(format!("Runnel batch spans {} offsets, more than a Kafka batch can", batch.record_count))
    })?;
    let at = LAST_OFFSET_DELTA_AT;
    if out[at..at + 4] != last_delta.to_be_bytes() {
        out[at..at + 4].copy_from_slice(&last_delta.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(Some(out.freeze()))
}

/// A stored batch of either format as a Runnel batch (what the gRPC front-end serves).
/// Runnel-tagged: returned as is. Kafka-tagged: its records re-encoded as a Runnel batch, every
/// record carrying its offset delta and null markers, spanning the same offsets with the same max
/// timestamp; lz4-compressed when the Kafka batch was compressed, uncompressed when it was not.
pub fn to_runnel(batch: &v1::RecordBatch) -> Result<v1::RecordBatch, RunnelError> {
    if batch.compression != KAFKA_BATCH {
        return Ok(batch.clone());
    }
    let (header, records) = kafka_records(batch)?;
    let compression = if header.codec() == codec::NONE { v1::Compression::None } else { v1::Compression::Lz4 };
    let mut out = runnel_proto::encode_batch_with(records, compression);
    // encode_batch_with counts records and takes their max timestamp; the stored batch's span and
    // max timestamp (the one the time index holds) are the ones to keep. Neither is in the crc32c.
    out.record_count = batch.record_count;
    out.max_timestamp_ms = batch.max_timestamp_ms;
    Ok(out)
}

/// Builds a valid Kafka v2 batch (base offset 0, partition leader epoch -1) from `records`, as a
/// Kafka client would produce it: record `i` at offset delta `i` (any `offset_delta` is ignored),
/// timestamps and null markers as given, compressed with `codec` (0 none, 1 gzip, 2 snappy, 3 lz4,
/// 4 zstd), stamped with `producer` = (producer id, epoch, base sequence) when given. For tests and
/// benchmarks: produce payloads without a Kafka client.
pub fn encode_kafka_batch(
    records: &[v1::Record],
    codec: i16,
    producer: Option<(i64, i16, i32)>,
) -> Result<Bytes, RunnelError> {
    if records.is_empty() {
        return Err(RunnelError::new(ErrorCode::InvalidRequest, "a Kafka record batch needs at least one record"));
    }
    let (producer_id, epoch, base_sequence) = producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE));
    let kafka: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sequence = base_sequence.wrapping_add(i as i32);
            kafka_record(r, i as i64, sequence, -1, Some((producer_id, epoch)))
        })
        .collect();
    Ok(encode(&kafka, codec)?.freeze())
}

/// A Runnel record as the encoder's record: a key or value is None only when marked null.
fn kafka_record(r: &v1::Record, offset: i64, sequence: i32, leader_epoch: i32, producer: Option<(i64, i16)>) -> Record {
    let (producer_id, producer_epoch) = producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH));
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: leader_epoch,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence,
        timestamp: r.timestamp_ms,
        key: (!r.key_null).then(|| r.key.clone()),
        value: (!r.value_null).then(|| r.value.clone()),
        headers: r
            .headers
            .iter()
            .map(|h| (StrBytes::from_string(h.key.clone()), (!h.value_null).then(|| h.value.clone())))
            .collect(),
    }
}

/// Encodes `records` (all for one batch) as one v2 batch compressed with `codec`.
fn encode(records: &[Record], codec: i16) -> Result<BytesMut, RunnelError> {
    let compression = match codec {
        codec::NONE => Compression::None,
        codec::GZIP => Compression::Gzip,
        codec::SNAPPY => Compression::Snappy,
        codec::LZ4 => Compression::Lz4,
        codec::ZSTD => Compression::Zstd,
        other => {
            return Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("unknown Kafka compression codec {other}: Kafka knows 0 (none) to 4 (zstd)"),
            ))
        }
    };
    // The encoder subtracts the smallest timestamp from each without overflow checks.
    let min = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    if max.checked_sub(min).is_none() {
        return Err(RunnelError::new(
            ErrorCode::InvalidRequest,
            format!("record timestamps {min} and {max} are too far apart for one Kafka batch"),
        ));
    }
    let failed = |e: anyhow::Error| {
        RunnelError::new(ErrorCode::Internal, format!("records do not encode as a Kafka record batch: {e}"))
    };
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode_with_custom_compression(
        &mut out,
        records,
        &RecordEncodeOptions { version: 2, compression },
        Some(|raw: &mut BytesMut, out: &mut BytesMut, c: Compression| -> anyhow::Result<()> {
            match c {
                Compression::None => out.put_slice(raw),
                c => out.put_slice(&codec::compress(c as i16, raw)?),
            }
            Ok(())
        }),
    )
    .map_err(failed)?;
    // One batch: every record shares the batch-level fields and sequences step with offsets.
    let (_, len) = frame(&out)?;
    if len != out.len() {
        return Err(RunnelError::internal(format!(
            "records encoded as more than one Kafka batch ({} bytes, the first batch {len})",
            out.len()
        )));
    }
    Ok(out)
}
