//! Conversions between wire types and `runnel-types`, and the record-batch codec.
//!
//! A batch's checksum is computed once by the producer over the encoded `Records` bytes and then
//! travels with those exact bytes: the leader checks it before appending, every read checks it
//! again, and the consumer checks it on receipt. Nobody re-encodes a batch in between.

use bytes::Bytes;
use prost::Message;
use runnel_types::{ErrorCode, RunnelError};

use crate::v1;

/// Largest `Records` message a compressed batch may expand to: a batch that claims more is refused
/// before it is decompressed (a decompression bomb must not exhaust a broker's memory). Twice the
/// largest record a topic can allow plus room for framing.
pub const MAX_UNCOMPRESSED_BATCH_BYTES: usize = 64 << 20;

/// zstd level for produced batches: level 1 compresses 100-byte-ish records well at a few hundred
/// MB/s per core; higher levels cost more CPU than the network they save on a LAN.
const ZSTD_LEVEL: i32 = 1;

/// Builds a checksummed, uncompressed batch from records (offset deltas left unset: each record's
/// position is its delta).
pub fn encode_batch(records: Vec<v1::Record>) -> v1::RecordBatch {
    encode_batch_with(records, v1::Compression::None)
}

/// Builds a checksummed batch from records, compressed with `compression`. The CRC32C covers the
/// compressed bytes, so the broker and every reader check it without decompressing. lz4 uses the
/// lz4 frame format, zstd a zstd frame (both self-describing, with their own content checks).
pub fn encode_batch_with(records: Vec<v1::Record>, compression: v1::Compression) -> v1::RecordBatch {
    let count = records.len() as u32;
    let max_timestamp_ms = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let raw = v1::Records { records }.encode_to_vec();
    let (bytes, compression) = match compress(&raw, compression) {
        Some(c) => (Bytes::from(c), compression),
        // Compression failing (it does not for in-memory buffers) is no reason to drop records.
        None => (Bytes::from(raw), v1::Compression::None),
    };
    v1::RecordBatch {
        crc32c: crc32c::crc32c(&bytes),
        record_count: count,
        records: bytes,
        compression: compression as i32,
        max_timestamp_ms,
    }
}

fn compress(raw: &[u8], compression: v1::Compression) -> Option<Vec<u8>> {
    use std::io::Write;
    match compression {
        // A Kafka batch is not something records are compressed into: the records go uncompressed.
        v1::Compression::None | v1::Compression::KafkaBatch => None,
        v1::Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(raw.len() / 2 + 64));
            enc.write_all(raw).ok()?;
            enc.finish().ok()
        }
        v1::Compression::Zstd => zstd::bulk::compress(raw, ZSTD_LEVEL).ok(),
    }
}

/// Checks a batch's CRC32C; the error names what was expected and found.
pub fn verify_batch(batch: &v1::RecordBatch) -> Result<(), RunnelError> {
    let actual = crc32c::crc32c(&batch.records);
    if actual != batch.crc32c {
        return Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            format!(
                "record batch checksum mismatch: header says crc32c {:#010x}, {} payload bytes hash to {:#010x}",
                batch.crc32c,
                batch.records.len(),
                actual
            ),
        ));
    }
    Ok(())
}

/// The batch's `Records` bytes, decompressed.
fn uncompressed(batch: &v1::RecordBatch) -> Result<Bytes, RunnelError> {
    use std::io::Read;
    let bad = |codec: &str, e: &dyn std::fmt::Display| {
        RunnelError::new(ErrorCode::CorruptBatch, format!("{codec} record batch does not decompress: {e}"))
    };
    let too_big = |codec: &str| {
        RunnelError::new(
            ErrorCode::CorruptBatch,
            format!("{codec} record batch expands past the {MAX_UNCOMPRESSED_BATCH_BYTES}-byte limit"),
        )
    };
    match v1::Compression::try_from(batch.compression) {
        Ok(v1::Compression::None) => Ok(batch.records.clone()),
        Ok(v1::Compression::Lz4) => {
            let mut out = Vec::with_capacity(batch.records.len() * 3);
            let limit = MAX_UNCOMPRESSED_BATCH_BYTES as u64 + 1;
            lz4_flex::frame::FrameDecoder::new(&batch.records[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad("lz4", &e))?;
            if out.len() > MAX_UNCOMPRESSED_BATCH_BYTES {
                return Err(too_big("lz4"));
            }
            Ok(Bytes::from(out))
        }
        Ok(v1::Compression::Zstd) => {
            // `decompress` refuses to write past the capacity it is given.
            let out = zstd::bulk::decompress(&batch.records, MAX_UNCOMPRESSED_BATCH_BYTES).map_err(|e| {
                if e.to_string().contains("Destination buffer is too small") {
                    too_big("zstd")
                } else {
                    bad("zstd", &e)
                }
            })?;
            Ok(Bytes::from(out))
        }
        // Stored Kafka batches are transcoded by the node (runnel-records) before anyone decodes
        // them as Runnel batches; meeting one here means a path skipped that step.
        Ok(v1::Compression::KafkaBatch) => Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            "record batch is a Kafka record batch (compression KAFKA_BATCH), not a Runnel one: the node \
             should have transcoded it before it was decoded as Runnel records",
        )),
        Err(_) => Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            format!("record batch names unknown compression codec {}", batch.compression),
        )),
    }
}

/// Verifies and decodes a batch. Every returned record has `offset_delta` set (its position when
/// the producer left it unset); deltas must increase strictly and stay below the batch's
/// `record_count`, and an uncompacted batch must hold exactly `record_count` records.
pub fn decode_batch(batch: &v1::RecordBatch) -> Result<Vec<v1::Record>, RunnelError> {
    verify_batch(batch)?;
    let mut records = v1::Records::decode(uncompressed(batch)?)
        .map_err(|e| RunnelError::new(ErrorCode::CorruptBatch, format!("record batch does not decode: {e}")))?
        .records;
    // An empty batch is one compaction or retention emptied: it still spans its offsets.
    let compacted = records.is_empty() || records.iter().any(|r| r.offset_delta.is_some());
    if !compacted && records.len() != batch.record_count as usize {
        return Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            format!("record batch header says {} records but holds {}", batch.record_count, records.len()),
        ));
    }
    let mut next = 0u32;
    for (i, r) in records.iter_mut().enumerate() {
        let delta = match r.offset_delta {
            Some(d) => d,
            None if !compacted => i as u32,
            None => {
                return Err(RunnelError::new(
                    ErrorCode::CorruptBatch,
                    format!("record {i} of a compacted batch has no offset delta"),
                ))
            }
        };
        if delta < next || delta >= batch.record_count {
            return Err(RunnelError::new(
                ErrorCode::CorruptBatch,
                format!(
                    "record {i} has offset delta {delta}; expected at least {next} and below the batch's span of {}",
                    batch.record_count
                ),
            ));
        }
        next = delta + 1;
        r.offset_delta = Some(delta);
    }
    Ok(records)
}

/// Size of one record as counted against `max.record.bytes`.
pub fn record_size(r: &v1::Record) -> u64 {
    (r.key.len() + r.value.len() + r.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>()) as u64
}

impl From<&RunnelError> for v1::Error {
    fn from(e: &RunnelError) -> Self {
        v1::Error {
            code: e.code as i32,
            message: e.message.clone(),
            leader_id: e.leader.as_ref().map(|(id, _)| *id),
            leader_addr: e.leader.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
            log_start_offset: e.valid_range.map(|(s, _)| s),
            high_watermark: e.valid_range.map(|(_, h)| h),
        }
    }
}

impl From<RunnelError> for v1::Error {
    fn from(e: RunnelError) -> Self {
        (&e).into()
    }
}

/// Turns an optional wire error into a result. Unknown codes become INTERNAL with the number kept.
pub fn check_error(err: Option<&v1::Error>) -> Result<(), RunnelError> {
    let Some(err) = err else { return Ok(()) };
    if err.code == 0 {
        return Ok(());
    }
    let code = ErrorCode::from_u32(err.code as u32).unwrap_or(ErrorCode::Internal);
    let mut message = err.message.clone();
    if code == ErrorCode::Internal && ErrorCode::from_u32(err.code as u32).is_none() {
        message = format!("unknown error code {}: {message}", err.code);
    }
    Err(RunnelError {
        code,
        message,
        leader: err.leader_id.map(|id| (id, err.leader_addr.clone())),
        valid_range: match (err.log_start_offset, err.high_watermark) {
            (Some(s), Some(h)) => Some((s, h)),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str) -> v1::Record {
        v1::Record {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(v.to_string()),
            headers: vec![],
            timestamp_ms: 7,
            offset_delta: None,
            ..Default::default()
        }
    }

    #[test]
    fn batch_round_trip_and_corruption_detected() {
        let b = encode_batch(vec![rec("a", "1"), rec("b", "2")]);
        let back = decode_batch(&b).unwrap();
        let with_delta = |mut r: v1::Record, d| {
            r.offset_delta = Some(d);
            r
        };
        assert_eq!(back, vec![with_delta(rec("a", "1"), 0), with_delta(rec("b", "2"), 1)]);
        assert_eq!(b.max_timestamp_ms, 7);

        let mut bad = b.clone();
        let mut raw = bad.records.to_vec();
        raw[3] ^= 0x40;
        bad.records = Bytes::from(raw);
        let e = decode_batch(&bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::CorruptBatch);
        assert!(e.message.contains("checksum"), "{e}");

        let mut wrong_count = b;
        wrong_count.record_count = 3;
        assert_eq!(decode_batch(&wrong_count).unwrap_err().code, ErrorCode::CorruptBatch);
    }

    #[test]
    fn a_compacted_batch_keeps_its_offsets() {
        let mut kept = rec("k", "latest");
        kept.offset_delta = Some(4);
        let mut b = encode_batch(vec![kept.clone()]);
        b.record_count = 5;
        assert_eq!(decode_batch(&b).unwrap(), vec![kept]);

        // A delta at or past the span, or going backwards, is corruption.
        let mut past = rec("k", "v");
        past.offset_delta = Some(5);
        let mut b = encode_batch(vec![past]);
        b.record_count = 5;
        assert!(decode_batch(&b).unwrap_err().message.contains("offset delta 5"));
        let (mut r1, mut r2) = (rec("a", "1"), rec("b", "2"));
        r1.offset_delta = Some(3);
        r2.offset_delta = Some(3);
        let mut b = encode_batch(vec![r1, r2]);
        b.record_count = 5;
        assert_eq!(decode_batch(&b).unwrap_err().code, ErrorCode::CorruptBatch);

        // Emptied by compaction (or hollowed by retention): no records, the span stays.
        let mut empty = encode_batch(vec![]);
        empty.record_count = 5;
        assert_eq!(decode_batch(&empty).unwrap(), vec![]);
    }

    #[test]
    fn compressed_batches_round_trip_and_are_checked() {
        let records: Vec<v1::Record> = (0..200).map(|i| rec(&format!("k{i}"), &"x".repeat(100))).collect();
        let plain = encode_batch(records.clone());
        for codec in [v1::Compression::Lz4, v1::Compression::Zstd] {
            let b = encode_batch_with(records.clone(), codec);
            assert_eq!(b.compression, codec as i32);
            assert_eq!(b.record_count, 200);
            assert!(b.records.len() < plain.records.len() / 4, "{codec:?}: {} bytes", b.records.len());
            let back = decode_batch(&b).unwrap();
            assert_eq!(back.len(), 200);
            assert_eq!(back[199].key, Bytes::from("k199"));
            assert_eq!(back[199].offset_delta, Some(199));
            // The CRC covers the compressed bytes.
            let mut bad = b.clone();
            let mut raw = bad.records.to_vec();
            let mid = raw.len() / 2;
            raw[mid] ^= 1;
            bad.records = Bytes::from(raw);
            assert!(decode_batch(&bad).unwrap_err().message.contains("checksum"));
            // Garbage with a valid CRC is refused by the codec, not trusted.
            bad.crc32c = crc32c::crc32c(&bad.records);
            assert_eq!(decode_batch(&bad).unwrap_err().code, ErrorCode::CorruptBatch);
        }
        let mut unknown = plain.clone();
        unknown.compression = 9;
        assert!(decode_batch(&unknown).unwrap_err().message.contains("unknown compression codec 9"));
        // A Kafka batch has its own refusal: it should have been transcoded first.
        let mut kafka = plain;
        kafka.compression = v1::Compression::KafkaBatch as i32;
        let e = decode_batch(&kafka).unwrap_err();
        assert_eq!(e.code, ErrorCode::CorruptBatch);
        assert!(e.message.contains("Kafka record batch") && e.message.contains("transcoded"), "{e}");
    }

    #[test]
    fn errors_survive_the_wire() {
        let e = RunnelError::offset_out_of_range("t", 1, 99, 0, 10);
        let wire: v1::Error = (&e).into();
        assert_eq!(check_error(Some(&wire)).unwrap_err(), e);
        let e = RunnelError::not_leader("t", 0, Some((2, "127.0.0.1:9293".into())));
        let wire: v1::Error = (&e).into();
        assert_eq!(check_error(Some(&wire)).unwrap_err(), e);
        assert!(check_error(None).is_ok());
    }
}
