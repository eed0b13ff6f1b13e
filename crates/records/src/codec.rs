//! Kafka's four record codecs, done here rather than by `kafka-protocol` (its codec features are
//! off) so that every decompressor stops at `MAX_UNCOMPRESSED_BATCH_BYTES`: a Kafka client
//! chooses the bytes, and a few hundred kilobytes of gzip can claim gigabytes of zeros.

use std::io::{Read, Write};

use bytes::Bytes;
use runnel_proto::MAX_UNCOMPRESSED_BATCH_BYTES as CAP;
use runnel_types::{ErrorCode, RunnelError};

pub(crate) const NONE: i16 = 0;
pub(crate) const GZIP: i16 = 1;
pub(crate) const SNAPPY: i16 = 2;
pub(crate) const LZ4: i16 = 3;
pub(crate) const ZSTD: i16 = 4;

/// snappy-java's stream framing, which Kafka's Java client writes: this magic, a 4-byte version
/// and a 4-byte compatible version, then chunks of [u32 big-endian length, raw snappy block].
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\0";
const XERIAL_HEADER_LEN: usize = 16;

/// Read granularity of the streaming decoders; the only allocation besides the output.
const READ_CHUNK: usize = 64 << 10;

/// Largest zstd window (2^26 = 64 MiB) a batch may ask the decoder to allocate: no batch may
/// expand past 64 MiB, so it never needs more, and libzstd's default limit (128 MiB) would let a
/// hostile frame header alone cost twice that.
const ZSTD_WINDOW_LOG_MAX: u32 = 26;

/// zstd level of batches this crate compresses (the Kafka client's default).
const ZSTD_LEVEL: i32 = 3;

pub(crate) fn codec_name(codec: i16) -> &'static str {
    match codec {
        NONE => "uncompressed",
        GZIP => "gzip",
        SNAPPY => "snappy",
        LZ4 => "lz4",
        ZSTD => "zstd",
        _ => "unknown-codec",
    }
}

fn bad(codec: i16, e: impl std::fmt::Display) -> RunnelError {
    RunnelError::new(
        ErrorCode::CorruptBatch,
        format!("{} Kafka record batch does not decompress: {e}", codec_name(codec)),
    )
}

fn too_big(codec: i16) -> RunnelError {
    RunnelError::new(
        ErrorCode::CorruptBatch,
        format!("{} Kafka record batch expands past the {CAP}-byte limit", codec_name(codec)),
    )
}

/// The records section of a Kafka batch (everything after its 61-byte header), decompressed with
/// the batch's codec. Refused, without allocating past the cap, when it would expand beyond it.
pub(crate) fn decompress(codec: i16, data: &Bytes) -> Result<Bytes, RunnelError> {
    match codec {
        // Already bounded by the size of the batch that carries it.
        NONE => Ok(data.clone()),
        // Multi-member: Java's GZIPInputStream reads concatenated members, so a client may send them.
        GZIP => read_capped(codec, flate2::read::MultiGzDecoder::new(&data[..]), data.len()),
        SNAPPY => snappy(data),
        LZ4 => read_capped(codec, lz4_flex::frame::FrameDecoder::new(&data[..]), data.len()),
        ZSTD => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(&data[..]).map_err(|e| bad(codec, e))?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| bad(codec, e))?;
            read_capped(codec, decoder, data.len())
        }
        other => Err(RunnelError::new(
            ErrorCode::CorruptBatch,
            format!("Kafka record batch names unknown compression codec {other}"),
        )),
    }
}

/// Reads a decompressing stream to its end, refusing it as soon as it passes the cap. The output
/// grows by doubling like `read_to_end`, but its capacity never goes past the cap: a batch that
/// expands to just under 64 MiB must not reserve 128.
fn read_capped(codec: i16, mut reader: impl Read, compressed_len: usize) -> Result<Bytes, RunnelError> {
    let mut out: Vec<u8> = Vec::with_capacity(compressed_len.saturating_mul(4).min(CAP));
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(codec, e)),
        };
        if out.len() + n > CAP {
            return Err(too_big(codec));
        }
        if out.capacity() - out.len() < n {
            let target = out.capacity().saturating_mul(2).max(out.len() + n).min(CAP);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(Bytes::from(out))
}

/// Raw snappy, or snappy-java's framing when the bytes start with its magic (Kafka's Java client
/// writes the framing, librdkafka and others may write either; Java reads both the same way).
fn snappy(data: &[u8]) -> Result<Bytes, RunnelError> {
    let framed = data.len() >= XERIAL_HEADER_LEN && data.starts_with(XERIAL_MAGIC);
    if !framed {
        // The raw format states its length up front: check it before allocating anything.
        let len = snap::raw::decompress_len(data).map_err(|e| bad(SNAPPY, e))?;
        if len > CAP {
            return Err(too_big(SNAPPY));
        }
        let mut out = vec![0u8; len];
        let written = snap::raw::Decoder::new().decompress(data, &mut out).map_err(|e| bad(SNAPPY, e))?;
        out.truncate(written);
        return Ok(Bytes::from(out));
    }
    let chunks = &data[XERIAL_HEADER_LEN..];
    // Two passes: the first adds up the lengths the chunks state, so the output is refused or
    // allocated once, at its exact size.
    let mut total = 0usize;
    xerial_chunks(chunks, |chunk| {
        let len = snap::raw::decompress_len(chunk).map_err(|e| bad(SNAPPY, e))?;
        total = total.saturating_add(len);
        if total > CAP {
            return Err(too_big(SNAPPY));
        }
        Ok(())
    })?;
    let mut out = vec![0u8; total];
    let mut at = 0usize;
    let mut decoder = snap::raw::Decoder::new();
    xerial_chunks(chunks, |chunk| {
        let written = decoder.decompress(chunk, &mut out[at..]).map_err(|e| bad(SNAPPY, e))?;
        at += written;
        Ok(())
    })?;
    out.truncate(at);
    Ok(Bytes::from(out))
}

/// Calls `f` with each raw snappy block of snappy-java's framing (after its 16-byte header).
fn xerial_chunks(mut rest: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), RunnelError>) -> Result<(), RunnelError> {
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(bad(SNAPPY, format!("a chunk length is cut short ({} bytes left)", rest.len())));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad(SNAPPY, format!("a chunk says {len} bytes follow, only {} do", tail.len())));
        }
        let (chunk, tail) = tail.split_at(len);
        f(chunk)?;
        rest = tail;
    }
    Ok(())
}

/// `raw` compressed with a Kafka codec, in the form Kafka clients read: gzip, raw snappy (which
/// Java's snappy reader accepts as well as its own framing), an lz4 frame of independent 64 KiB
/// blocks (Kafka's Java lz4 reader does not take linked blocks), a zstd frame.
pub(crate) fn compress(codec: i16, raw: &[u8]) -> Result<Vec<u8>, RunnelError> {
    let failed = |e: &dyn std::fmt::Display| {
        RunnelError::new(ErrorCode::Internal, format!("{} compression of a Kafka batch failed: {e}", codec_name(codec)))
    };
    match codec {
        NONE => Ok(raw.to_vec()),
        GZIP => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(raw).map_err(|e| failed(&e))?;
            enc.finish().map_err(|e| failed(&e))
        }
        SNAPPY => snap::raw::Encoder::new().compress_vec(raw).map_err(|e| failed(&e)),
        LZ4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_mode(lz4_flex::frame::BlockMode::Independent)
                .block_size(lz4_flex::frame::BlockSize::Max64KB);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            enc.write_all(raw).map_err(|e| failed(&e))?;
            enc.finish().map_err(|e| failed(&e))
        }
        ZSTD => zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(|e| failed(&e)),
        other => Err(RunnelError::new(
            ErrorCode::InvalidRequest,
            format!("unknown Kafka compression codec {other}: Kafka knows 0 (none) to 4 (zstd)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let raw: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = Bytes::from(compress(codec, &raw).unwrap());
            if codec != NONE {
                assert!(packed.len() < raw.len() / 2, "{}: {} bytes", codec_name(codec), packed.len());
            }
            assert_eq!(&decompress(codec, &packed).unwrap()[..], &raw[..], "{}", codec_name(codec));
        }
        assert_eq!(decompress(7, &Bytes::new()).unwrap_err().code, ErrorCode::CorruptBatch);
        assert_eq!(compress(5, b"x").unwrap_err().code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn snappy_java_framing_decodes() {
        let parts: [&[u8]; 3] = [b"hello, ", b"xerial ", b"snappy"];
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1u32.to_be_bytes());
        framed.extend_from_slice(&1u32.to_be_bytes());
        for p in parts {
            let block = snap::raw::Encoder::new().compress_vec(p).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(&decompress(SNAPPY, &Bytes::from(framed.clone())).unwrap()[..], b"hello, xerial snappy");
        // A chunk cut short is refused, not read past.
        framed.truncate(framed.len() - 2);
        let e = decompress(SNAPPY, &Bytes::from(framed)).unwrap_err();
        assert!(e.message.contains("only"), "{e}");
        // Raw snappy shorter than the framing's header still decodes as raw.
        let raw = snap::raw::Encoder::new().compress_vec(b"tiny").unwrap();
        assert_eq!(&decompress(SNAPPY, &Bytes::from(raw)).unwrap()[..], b"tiny");
    }

    #[test]
    fn output_capacity_never_passes_the_cap() {
        // Exactly the cap expands; one byte more is refused.
        let zeros = |n: usize| compress(LZ4, &vec![0u8; n]).unwrap();
        let ok = decompress(LZ4, &Bytes::from(zeros(CAP))).unwrap();
        assert_eq!(ok.len(), CAP);
        let e = decompress(LZ4, &Bytes::from(zeros(CAP + 1))).unwrap_err();
        assert!(e.message.contains("expands past"), "{e}");
    }
}
