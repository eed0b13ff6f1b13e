//! Both batch formats through the records view and transcoding: a round trip through the other
//! format changes no key, value, null marker, header, timestamp or offset (ADR 0020).

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use rand::{Rng, RngCore, SeedableRng};
use runnel_proto::v1;
use runnel_records::*;
use runnel_types::ErrorCode;

const CODECS: [i16; 5] = [0, 1, 2, 3, 4];

fn header(key: &str, value: Option<&str>) -> v1::Header {
    v1::Header {
        key: key.to_string(),
        value: Bytes::from(value.unwrap_or_default().to_string()),
        value_null: value.is_none(),
    }
}

fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> v1::Record {
    v1::Record {
        key: Bytes::from(key.unwrap_or_default().to_string()),
        key_null: key.is_none(),
        value: Bytes::from(value.unwrap_or_default().to_string()),
        value_null: value.is_none(),
        timestamp_ms: ts,
        ..Default::default()
    }
}

/// Records with every kind of key, value and header: present, empty, null.
fn sample() -> Vec<v1::Record> {
    let mut records = vec![
        rec(Some("k0"), Some("v0"), 1_700_000_000_000),
        rec(None, Some("null key"), 1_700_000_000_005),
        rec(Some("k2"), None, 1_700_000_000_001),
        rec(Some(""), Some(""), 1_700_000_000_009),
        rec(None, None, 1_699_999_999_000),
    ];
    records[0].headers = vec![header("trace", Some("abc")), header("empty", Some("")), header("nil", None)];
    records[3].headers = vec![header("only", None)];
    // Something worth compressing.
    for i in 0..50 {
        records.push(rec(Some(&format!("key-{i}")), Some(&"payload ".repeat(20)), 1_700_000_000_100 + i));
    }
    records
}

fn with_deltas(records: &[v1::Record]) -> Vec<v1::Record> {
    records.iter().enumerate().map(|(i, r)| v1::Record { offset_delta: Some(i as u32), ..r.clone() }).collect()
}

/// A produce payload of one batch, split and stored as the Kafka front-end does.
fn stored_kafka(records: &[v1::Record], codec: i16) -> v1::RecordBatch {
    let bytes = encode_kafka_batch(records, codec, None).unwrap();
    let mut split = split_kafka_batches(&bytes).unwrap();
    assert_eq!(split.len(), 1);
    let (header, bytes) = split.remove(0);
    assert_eq!(header.codec(), codec);
    kafka_to_stored(&header, bytes)
}

fn fix_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn kafka_batches_of_every_codec_read_the_same() {
    let input = sample();
    let expected = with_deltas(&input);
    for codec in CODECS {
        let stored = stored_kafka(&input, codec);
        assert_eq!(stored.compression, KAFKA_BATCH);
        assert_eq!(stored.record_count, input.len() as u32);
        assert_eq!(stored.max_timestamp_ms, 1_700_000_000_149);
        assert_eq!(stored.crc32c, crc32c::crc32c(&stored.records));
        assert_eq!(records(&stored).unwrap(), expected, "codec {codec}");

        // As a gRPC reader gets it: a Runnel batch spanning the same offsets.
        let runnel = to_runnel(&stored).unwrap();
        let want = if codec == 0 { v1::Compression::None } else { v1::Compression::Lz4 };
        assert_eq!(runnel.compression, want as i32, "codec {codec}");
        assert_eq!(runnel.record_count, stored.record_count);
        assert_eq!(runnel.max_timestamp_ms, stored.max_timestamp_ms);
        assert_eq!(runnel_proto::decode_batch(&runnel).unwrap(), expected, "codec {codec}");
        assert_eq!(records(&runnel).unwrap(), expected);
    }
}

#[test]
fn runnel_batches_read_the_same_through_kafka() {
    let input = sample();
    for compression in [v1::Compression::None, v1::Compression::Lz4, v1::Compression::Zstd] {
        let batch = runnel_proto::encode_batch_with(input.clone(), compression);
        let kafka = to_kafka(&batch, 5_000, 7).unwrap().unwrap();
        let split = split_kafka_batches(&kafka).unwrap();
        assert_eq!(split.len(), 1);
        let (h, bytes) = &split[0];
        assert_eq!((h.base_offset, h.partition_leader_epoch, h.magic), (5_000, 7, 2));
        assert_eq!((h.record_count, h.last_offset_delta), (input.len() as i32, input.len() as i32 - 1));
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (-1, -1, -1));
        assert!(!h.is_idempotent() && !h.is_transactional() && !h.is_control() && !h.log_append_time());
        assert_eq!(h.max_timestamp, 1_700_000_000_149);
        assert_eq!(h.base_timestamp, 1_699_999_999_000);
        let stored = kafka_to_stored(h, bytes.clone());
        assert_eq!(records(&stored).unwrap(), with_deltas(&input), "{compression:?}");

        // What a Kafka client decodes: nulls as None, empties as Some(empty), absolute offsets.
        let set = RecordBatchDecoder::decode(&mut kafka.clone()).unwrap();
        assert_eq!(set.records[0].offset, 5_000);
        assert_eq!(set.records[1].key, None);
        assert_eq!(set.records[2].value, None);
        assert_eq!(set.records[3].key, Some(Bytes::new()));
        assert_eq!(set.records[3].value, Some(Bytes::new()));
        assert_eq!(set.records[0].headers.get("nil".as_bytes()), Some(&None));
        assert_eq!(set.records[0].headers.get("empty".as_bytes()), Some(&Some(Bytes::new())));
        assert_eq!(set.records[54].offset, 5_054);
    }
}

#[test]
fn nulls_survive_kafka_to_runnel_to_kafka() {
    let input = sample();
    for codec in CODECS {
        let runnel = to_runnel(&stored_kafka(&input, codec)).unwrap();
        let back = to_kafka(&runnel, 42, 3).unwrap().unwrap();
        let (h, bytes) = split_kafka_batches(&back).unwrap().remove(0);
        assert_eq!(h.base_offset, 42);
        let again = records(&kafka_to_stored(&h, bytes)).unwrap();
        assert_eq!(again, with_deltas(&input), "codec {codec}");
        assert!(again[1].key_null && !again[1].value_null);
        assert!(again[2].value_null && !again[2].key_null);
        assert!(!again[3].key_null && !again[3].value_null && again[3].value.is_empty());
        assert!(again[0].headers[2].value_null && !again[0].headers[1].value_null);
    }
}

#[test]
fn a_compacted_runnel_batch_keeps_its_offsets_in_kafka() {
    // Spans 8 offsets; compaction kept deltas 2 and 5 (the head and the tail went).
    let mut kept = vec![rec(Some("a"), Some("1"), 10), rec(Some("b"), None, 20)];
    kept[0].offset_delta = Some(2);
    kept[1].offset_delta = Some(5);
    let mut batch = runnel_proto::encode_batch(kept.clone());
    batch.record_count = 8;
    assert_eq!(records(&batch).unwrap(), kept);

    let kafka = to_kafka(&batch, 100, 4).unwrap().unwrap();
    // The Kafka CRC still holds after the last offset delta was stretched.
    assert_eq!(u32::from_be_bytes(kafka[17..21].try_into().unwrap()), crc32c::crc32c(&kafka[21..]));
    let set = RecordBatchDecoder::decode(&mut kafka.clone()).unwrap();
    let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![102, 105]);
    assert_eq!(set.records[1].value, None);
    // Starts at the first record kept and ends where the stored batch ends (offset 107), so a
    // consumer's next fetch starts at 108.
    let base = i64::from_be_bytes(kafka[0..8].try_into().unwrap());
    let last_delta = i32::from_be_bytes(kafka[23..27].try_into().unwrap());
    let count = i32::from_be_bytes(kafka[57..61].try_into().unwrap());
    assert_eq!((base, base + i64::from(last_delta), count), (102, 107, 2));
    // Epoch from the caller.
    assert_eq!(i32::from_be_bytes(kafka[12..16].try_into().unwrap()), 4);

    // Emptied by compaction or hollowed by retention: nothing to send.
    let mut hollow = runnel_proto::encode_batch(vec![]);
    hollow.record_count = 8;
    assert_eq!(to_kafka(&hollow, 100, 4).unwrap(), None);
}

#[test]
fn a_stored_kafka_batch_is_served_patched_not_reencoded() {
    let input = sample();
    for codec in CODECS {
        let stored = stored_kafka(&input, codec);
        let served = to_kafka(&stored, 123_456_789, 9).unwrap().unwrap();
        assert_eq!(served.len(), stored.records.len());
        assert_eq!(&served[16..], &stored.records[16..], "only the base offset and epoch change");
        // Still a valid batch: the CRC does not cover what was patched.
        let (h, _) = split_kafka_batches(&served).unwrap().remove(0);
        assert_eq!((h.base_offset, h.partition_leader_epoch), (123_456_789, 9));
        // (Only the uncompressed one decodes without a codec: it proves the absolute offsets.)
        if codec == 0 {
            let set = RecordBatchDecoder::decode(&mut served.clone()).unwrap();
            assert_eq!(set.records[54].offset, 123_456_789 + 54);
        }
        // Stored bytes that fail their crc32c are not served.
        let mut bad = stored.clone();
        let mut raw = bad.records.to_vec();
        raw[70] ^= 1;
        bad.records = Bytes::from(raw);
        assert!(to_kafka(&bad, 0, 0).unwrap_err().message.contains("checksum"));
    }
    assert!(to_kafka(&stored_kafka(&input, 0), u64::MAX, 0).is_err());
    let runnel = runnel_proto::encode_batch(input.clone());
    assert!(to_kafka(&runnel, i64::MAX as u64 - 3, 0).unwrap_err().message.contains("past Kafka's offset range"));
}

#[test]
fn idempotence_stamp_and_tombstone_rule() {
    let input = sample();
    let bytes = encode_kafka_batch(&input, 3, Some((77, 2, 1_000))).unwrap();
    let (h, _) = split_kafka_batches(&bytes).unwrap().remove(0);
    assert!(h.is_idempotent());
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (77, 2, 1_000));

    let kafka = records(&stored_kafka(&input, 0)).unwrap();
    // Kafka: only a null value deletes; an empty one is a value.
    assert!(is_tombstone(&kafka[2], KAFKA_BATCH));
    assert!(!is_tombstone(&kafka[3], KAFKA_BATCH));
    assert!(!is_tombstone(&kafka[0], KAFKA_BATCH));
    // Runnel: an empty value deletes, as it always did; so does a null one.
    let runnel = records(&runnel_proto::encode_batch(input.clone())).unwrap();
    assert!(is_tombstone(&runnel[3], v1::Compression::None as i32));
    assert!(is_tombstone(&runnel[2], v1::Compression::Lz4 as i32));
    assert!(!is_tombstone(&runnel[0], v1::Compression::None as i32));
}

#[test]
fn several_batches_in_one_produce_request() {
    let a = encode_kafka_batch(&sample()[..3], 1, Some((5, 0, 0))).unwrap();
    let b = encode_kafka_batch(&sample()[3..], 4, Some((5, 0, 3))).unwrap();
    let both = Bytes::from([&a[..], &b[..]].concat());
    let split = split_kafka_batches(&both).unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!((split[0].0.record_count, split[1].0.record_count), (3, 52));
    assert_eq!(split[1].0.base_sequence, 3);
    assert_eq!(split[1].1, b);
    assert!(split_kafka_batches(&Bytes::new()).unwrap().is_empty());
    // A broken second batch is named as such.
    let cut = both.slice(..both.len() - 1);
    let e = split_kafka_batches(&cut).unwrap_err();
    assert!(e.message.starts_with(&format!("batch 1 (at byte {}", a.len())), "{e}");
}

fn refused(bytes: Vec<u8>, code: ErrorCode, needle: &str) {
    let e = split_kafka_batches(&Bytes::from(bytes)).unwrap_err();
    assert_eq!(e.code, code, "{e}");
    assert!(e.message.contains(needle), "{needle:?} not in: {e}");
}

#[test]
fn malformed_produce_batches_are_refused_clearly() {
    let good = encode_kafka_batch(&sample()[..4], 0, None).unwrap().to_vec();

    let mut bad_crc = good.clone();
    bad_crc[70] ^= 0x10;
    refused(bad_crc, ErrorCode::CorruptBatch, "CRC mismatch: header says crc");

    refused(good[..40].to_vec(), ErrorCode::CorruptBatch, "fewer than its 61-byte header");
    refused(good[..10].to_vec(), ErrorCode::CorruptBatch, "fewer than its 61-byte header");
    refused(good[..good.len() - 1].to_vec(), ErrorCode::CorruptBatch, "only");

    let mut short_length = good.clone();
    short_length[8..12].copy_from_slice(&20i32.to_be_bytes());
    refused(short_length, ErrorCode::CorruptBatch, "batch_length 20");
    let mut negative_length = good.clone();
    negative_length[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    refused(negative_length, ErrorCode::CorruptBatch, "batch_length -5");

    for magic in [0u8, 1] {
        let mut old = good.clone();
        old[16] = magic;
        refused(old, ErrorCode::InvalidRequest, &format!("magic {magic}"));
    }
    // A v1 message set shorter than a v2 header is still named by its magic.
    let mut tiny_v1 = good[..30].to_vec();
    tiny_v1[16] = 1;
    refused(tiny_v1, ErrorCode::InvalidRequest, "magic 1");
    let mut magic9 = good.clone();
    magic9[16] = 9;
    refused(magic9, ErrorCode::CorruptBatch, "magic 9");

    let with_attributes = |set: i16| {
        let mut b = good.clone();
        let attributes = i16::from_be_bytes([b[21], b[22]]) | set;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        fix_crc(&mut b);
        b
    };
    refused(with_attributes(1 << 5), ErrorCode::InvalidRequest, "control batch");
    refused(with_attributes(1 << 4), ErrorCode::InvalidRequest, "transactions are not supported");
    refused(with_attributes(6), ErrorCode::CorruptBatch, "unknown compression codec 6");

    let mut count = good.clone();
    count[57..61].copy_from_slice(&3i32.to_be_bytes());
    fix_crc(&mut count);
    refused(count, ErrorCode::CorruptBatch, "record_count 3 but last_offset_delta 3");
    let mut zero = good.clone();
    zero[57..61].copy_from_slice(&0i32.to_be_bytes());
    zero[23..27].copy_from_slice(&(-1i32).to_be_bytes());
    fix_crc(&mut zero);
    refused(zero, ErrorCode::CorruptBatch, "record_count 0");
}

/// A batch that passes every header check (its CRC fixed up after tampering) but whose records
/// do not match it: refused when read, never a panic or a huge allocation.
#[test]
fn hostile_but_well_framed_batches_are_refused_when_read() {
    let stored = |b: Vec<u8>| {
        let b = Bytes::from(b);
        let (h, bytes) = split_kafka_batches(&b).unwrap().remove(0);
        kafka_to_stored(&h, bytes)
    };
    let good = encode_kafka_batch(&sample()[..4], 0, None).unwrap().to_vec();

    // Base timestamp at the end of the range: record timestamps would overflow.
    let mut late = good.clone();
    late[27..35].copy_from_slice(&i64::MAX.to_be_bytes());
    fix_crc(&mut late);
    let e = records(&stored(late)).unwrap_err();
    assert!(e.message.contains("past the range of a timestamp"), "{e}");

    // A record count the bytes cannot hold (the decoder would reserve room for all of them).
    let mut many = good.clone();
    many[57..61].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    many[23..27].copy_from_slice(&(i32::MAX - 2).to_be_bytes());
    fix_crc(&mut many);
    let e = records(&stored(many)).unwrap_err();
    assert!(e.message.contains("hold at most"), "{e}");

    // More records claimed than there are.
    let mut five = good.clone();
    five[57..61].copy_from_slice(&5i32.to_be_bytes());
    five[23..27].copy_from_slice(&4i32.to_be_bytes());
    fix_crc(&mut five);
    let e = records(&stored(five)).unwrap_err();
    assert!(e.message.contains("do not decode"), "{e}");

    // Stored with a span its header does not have.
    let mut wrong_span = stored(good.clone());
    wrong_span.record_count = 9;
    assert!(records(&wrong_span).unwrap_err().message.contains("stored as spanning 9"));
    // Two batches stored as one.
    let mut two = stored(good.clone());
    two.records = Bytes::from([&good[..], &good[..]].concat());
    two.crc32c = crc32c::crc32c(&two.records);
    assert!(records(&two).unwrap_err().message.contains("exactly one"));
    // The runnel crc32c is checked first.
    let mut bad = stored(good);
    bad.crc32c ^= 1;
    assert!(records(&bad).unwrap_err().message.contains("checksum"));
}

#[test]
fn random_and_mangled_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0020);
    let valid: Vec<Vec<u8>> =
        CODECS.iter().map(|&c| encode_kafka_batch(&sample(), c, Some((1, 0, 0))).unwrap().to_vec()).collect();
    // How far the mangled batches got: some must still read, some must fail past the CRC check
    // (in a decompressor or the record decoder), or the loop tests less than it claims.
    let (mut read_ok, mut failed_past_crc) = (0, 0);
    let mut read = |bytes: Vec<u8>, span: u32| {
        let bytes = Bytes::from(bytes);
        let _ = split_kafka_batches(&bytes);
        let batch = v1::RecordBatch {
            crc32c: crc32c::crc32c(&bytes),
            record_count: span,
            records: bytes,
            compression: KAFKA_BATCH,
            max_timestamp_ms: 0,
        };
        match records(&batch) {
            Ok(_) => read_ok += 1,
            Err(e) if e.message.contains("decompress") || e.message.contains("decode") => failed_past_crc += 1,
            Err(_) => {}
        }
        let _ = to_runnel(&batch);
        let _ = to_kafka(&batch, 0, 0);
    };
    for i in 0..4000 {
        match i % 4 {
            // Noise, sometimes with a plausible v2 prefix.
            0 => {
                let mut b = vec![0u8; rng.random_range(0..300)];
                rng.fill_bytes(&mut b);
                if b.len() > 16 && rng.random_bool(0.5) {
                    b[16] = 2;
                }
                read(b, rng.random_range(0..100));
            }
            // A valid batch cut anywhere.
            1 => {
                let v = &valid[i % valid.len()];
                let at = rng.random_range(0..v.len());
                read(v[..at].to_vec(), 55);
            }
            // Bit flips, the CRC left stale.
            2 => {
                let mut b = valid[i % valid.len()].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= 1 << rng.random_range(0..8);
                }
                read(b, 55);
            }
            // Bit flips and byte overwrites behind the header, the CRC fixed up: these reach the
            // decompressors and the record decoder.
            _ => {
                let mut b = valid[i % valid.len()].clone();
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(21..b.len());
                    if rng.random_bool(0.5) {
                        b[at] ^= 1 << rng.random_range(0..8);
                    } else {
                        b[at] = rng.random();
                    }
                }
                fix_crc(&mut b);
                read(b, 55);
            }
        }
    }
    assert!(read_ok > 100 && failed_past_crc > 100, "{read_ok} read, {failed_past_crc} failed past the CRC");
}
