//! bincode for everything Raft stores or sends between nodes (both ends run the same code).

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| CodecError(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError(format!("decode: {e}")))?;
    if used != bytes.len() {
        return Err(CodecError(format!("decode: {} trailing bytes", bytes.len() - used)));
    }
    Ok(v)
}

/// Decodes a `T` from the start of `bytes`; returns it and the bytes it took.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError(format!("decode: {e}")))
}

/// The number of bytes `encode(v)` would produce, without producing them (byte strings are
/// counted, not copied).
pub fn encoded_len<T: Serialize>(v: &T) -> Result<usize, CodecError> {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(v, &mut w, bincode::config::standard())
        .map_err(|e| CodecError(format!("encode: {e}")))?;
    Ok(w.bytes_written)
}
