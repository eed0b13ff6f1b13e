//! Decompression bombs: a Kafka batch whose records expand to 200 MiB is refused, and reading it
//! allocates no more than the 64 MiB cap. Its own test binary with one test, so the allocator's
//! peak is this test's alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use runnel_proto::MAX_UNCOMPRESSED_BATCH_BYTES as CAP;
use runnel_records::{kafka_to_stored, records, split_kafka_batches};
use runnel_types::ErrorCode;

/// Counts live heap bytes, their peak and the largest block. A `realloc` counts as resizing its
/// block, as allocation profilers count it (the system allocator grows large blocks by remapping
/// them, not by holding old and new copies).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize, block: usize) {
    let live = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(live, Ordering::SeqCst);
    LARGEST.fetch_max(block, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size(), layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size(), new_size);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BOMB: u64 = 200 << 20;

fn zeros() -> impl Read {
    std::io::repeat(0).take(BOMB)
}

/// A v2 batch of one record (as its header says) whose records section is `payload`.
fn batch(codec: i16, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i64(0);
    b.put_i32((49 + payload.len()) as i32);
    b.put_i32(-1);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(codec);
    b.put_i32(0); // last offset delta
    b.put_i64(1);
    b.put_i64(1);
    b.put_i64(-1);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i32(1); // record count
    b.put_slice(payload);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// Reads the bomb; returns the error, the most memory the read held at once beyond what was live
/// before it, and its largest allocation.
fn read_bomb(codec: i16, payload: Vec<u8>) -> (runnel_types::RunnelError, usize, usize) {
    let bytes = batch(codec, &payload);
    drop(payload);
    let (header, bytes) = split_kafka_batches(&bytes).unwrap().remove(0);
    let stored = kafka_to_stored(&header, bytes);
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    let e = records(&stored).unwrap_err();
    (e, PEAK.load(Ordering::SeqCst) - before, LARGEST.load(Ordering::SeqCst))
}

#[test]
fn decompression_bombs_are_refused_within_the_cap() {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::copy(&mut zeros(), &mut gzip).unwrap();
    let gzip = gzip.finish().unwrap();

    let mut zstd = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    std::io::copy(&mut zeros(), &mut zstd).unwrap();
    let zstd = zstd.finish().unwrap();

    let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
    std::io::copy(&mut zeros(), &mut lz4).unwrap();
    let lz4 = lz4.finish().unwrap();

    // snappy-java framing: one 1 MiB block of zeros, 200 times.
    let block = snap::raw::Encoder::new().compress_vec(&vec![0u8; 1 << 20]).unwrap();
    let mut xerial = b"\x82SNAPPY\0\0\0\0\x01\0\0\0\x01".to_vec();
    for _ in 0..200 {
        xerial.put_u32(block.len() as u32);
        xerial.put_slice(&block);
    }
    // Raw snappy states its length first: 200 MiB, then a little of what would follow.
    let mut raw_snappy = Vec::new();
    let mut len = BOMB;
    while len >= 0x80 {
        raw_snappy.push((len as u8) | 0x80);
        len >>= 7;
    }
    raw_snappy.push(len as u8);
    raw_snappy.extend_from_slice(&block[..64]);

    for (name, codec, payload, limit) in [
        // Streams: read up to the cap, then refused.
        ("gzip", 1, gzip, CAP + (8 << 20)),
        ("zstd", 4, zstd, CAP + (8 << 20)),
        ("lz4", 3, lz4, CAP + (8 << 20)),
        // Sizes stated up front: refused before anything is allocated for the output.
        ("snappy-java framing", 2, xerial, 1 << 20),
        ("raw snappy", 2, raw_snappy, 1 << 20),
    ] {
        assert!(payload.len() < 16 << 20, "{name}: {} bytes", payload.len());
        let (e, peak, largest) = read_bomb(codec, payload);
        assert_eq!(e.code, ErrorCode::CorruptBatch, "{name}: {e}");
        assert!(e.message.contains("expands past"), "{name}: {e}");
        assert!(peak <= limit, "{name}: reading the bomb held {peak} bytes at once (limit {limit})");
        assert!(largest <= CAP, "{name}: reading the bomb allocated a block of {largest} bytes");
        println!("{name}: refused holding at most {peak} bytes, largest block {largest}");
    }
}
