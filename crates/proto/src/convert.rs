//! Conversions between wire types and `runnel-types`, and the record-batch codec.
//!
//! A batch's checksum is computed once by the producer over the encoded `Records` bytes and then
//! travels with those exact bytes: the leader checks it before appending, every read checks it
//! again, and the consumer checks it on receipt. Nobody re-encodes a batch in between.

use bytes::Bytes;
use prost::Message;
use runnel_types::{ErrorCode, RunnelError};

use crate::v1;

/// Builds a checksummed batch from records.
pub fn encode_batch(records: Vec<v1::Record>) -> v1::RecordBatch {
    let count = records.len() as u32;
    let bytes = Bytes::from(v1::Records { records }.encode_to_vec());
    v1::RecordBatch { crc32c: crc32c::crc32c(&bytes), record_count: count, records: bytes }
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

/// Verifies and decodes a batch, checking that the record count matches its header.
pub fn decode_batch(batch: &v1::RecordBatch) -> Result<Vec<v1::Record>, RunnelError> {
    verify_batch(batch)?;
    let records = v1::Records::decode(batch.records.clone())
        .map_err(|e| RunnelError::new(ErrorCode::CorruptBatch, format!("record batch does not decode: {e}")))?
        .records;
    if records.len() != batch.record_count as usize {
        return Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            format!("record batch header says {} records but holds {}", batch.record_count, records.len()),
        ));
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
        }
    }

    #[test]
    fn batch_round_trip_and_corruption_detected() {
        let b = encode_batch(vec![rec("a", "1"), rec("b", "2")]);
        let back = decode_batch(&b).unwrap();
        assert_eq!(back, vec![rec("a", "1"), rec("b", "2")]);

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
