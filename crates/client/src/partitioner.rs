//! Kafka's default partitioner, bit for bit, so that keyed records land on the same partition
//! number a Java, librdkafka-with-`murmur2` or Sarama producer would pick for the same key and
//! partition count.

/// Kafka's `org.apache.kafka.common.utils.Utils.murmur2`: 32-bit MurmurHash2 with seed
/// `0x9747b28c`, returning the same signed value the Java code returns.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's `int` arithmetic wraps; `u32` wrapping arithmetic gives the same bits.
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // The Java `switch` falls through from case 3 to 2 to 1.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (it is not `abs`, which would overflow on
/// `i32::MIN` and map `h` and `-h` to the same partition).
pub fn to_positive(h: i32) -> u32 {
    (h as u32) & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for a non-empty key:
/// `toPositive(murmur2(key)) % num_partitions`.
///
/// Returns 0 when `num_partitions` is 0 rather than dividing by zero; callers should not ask.
/// Runnel has no null keys: an empty key means "no key", and callers spread keyless records
/// themselves (round-robin or sticky) instead of hashing them.
pub fn partition_for_key(key: &[u8], num_partitions: u32) -> u32 {
    if num_partitions == 0 {
        return 0;
    }
    to_positive(murmur2(key)) % num_partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's `UtilsTest.testMurmur2` vectors (clients/src/test/java/org/apache/kafka/
    /// common/utils/UtilsTest.java), re-checked against that file on 2026-11-21.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "murmur2({:?})", String::from_utf8_lossy(data));
        }
    }

    /// Every tail length (0..=3 leftover bytes) and the empty input, from the Python port.
    #[test]
    fn murmur2_tail_lengths() {
        let cases: [(&[u8], i32); 5] = [
            (b"", 275_646_681),
            (b"a", -1_563_381_124),
            (b"ab", 316_155_434),
            (b"abcd", -1_323_649_548),
            (b"abcde", 461_995_741),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "murmur2({:?})", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn partitions_match_kafka_default_partitioner() {
        // toPositive(-973932308) = 1173551340
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 3), 1_173_551_340 % 3);
        assert_eq!(partition_for_key(b"21", 16), 1_173_551_340 % 16);
        assert_eq!(partition_for_key(b"foobar", 10), 6);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(partition_for_key(b"anything", 1), 0);
        assert_eq!(partition_for_key(b"anything", 0), 0);
        for n in 1..50 {
            assert!(partition_for_key(b"order-42", n) < n);
        }
    }
}
