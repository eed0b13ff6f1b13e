//! The unsynced ("page cache") state of one regular file, on top of its durable backing file.
//!
//! Only what changed since the last fsync is held in memory: written byte ranges (extents) and
//! the logical size. A read merges them with the backing file; an fsync writes just the extents,
//! so a write-ahead log that is fsynced after every append costs O(appended bytes), not O(file).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Dirty data of one file. Exists only while the file has unsynced changes.
#[derive(Debug)]
pub struct Overlay {
    /// Length of the backing file, which holds exactly the durable content.
    base_len: u64,
    /// How much of the backing content is still visible. A truncation below `base_len` hides the
    /// rest for good: growing the file again must show zeros there, not the old bytes.
    base_valid: u64,
    /// Logical size the application sees. Invariant: `base_valid <= size` and every extent ends
    /// at or before `size`.
    size: u64,
    /// Written ranges, keyed by offset; never overlapping (adjacent ones are merged).
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// A clean overlay over a backing file of `base_len` bytes.
    pub fn new(base_len: u64) -> Self {
        Overlay { base_len, base_valid: base_len, size: base_len, extents: BTreeMap::new() }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the file grew beyond its durable length: the space an fsync will need.
    pub fn growth(&self) -> u64 {
        self.size.saturating_sub(self.base_len)
    }

    /// Length of the durable content.
    pub fn base_len(&self) -> u64 {
        self.base_len
    }

    /// Bytes written since the last sync that are not durable (what a power loss throws away).
    pub fn dirty_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    /// Record a write. The caller has checked that `offset + data.len()` does not overflow.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.size = self.size.max(end);

        // Start from the extent that touches `offset` from the left (overlapping or adjacent),
        // reusing its buffer: sequential appends then grow one Vec in place.
        let mut start = offset;
        let mut buf = Vec::new();
        let pred = self.extents.range(..=offset).next_back().map(|(&s, v)| (s, s + v.len() as u64));
        if let Some((s, e)) = pred {
            if e >= offset {
                if let Some(v) = self.extents.remove(&s) {
                    start = s;
                    buf = v;
                }
            }
        }
        let rel = to_usize(offset - start);
        let needed = rel + data.len();
        if buf.len() < needed {
            buf.resize(needed, 0);
        }
        buf[rel..needed].copy_from_slice(data);

        // Absorb extents starting inside or right after the written range; keep their tails.
        let followers: Vec<u64> = self.extents.range(offset..=end).map(|(&s, _)| s).collect();
        for s in followers {
            if let Some(v) = self.extents.remove(&s) {
                let e = s + v.len() as u64;
                let buf_end = start + buf.len() as u64;
                if e > buf_end {
                    buf.extend_from_slice(&v[to_usize(buf_end - s)..]);
                }
            }
        }
        self.extents.insert(start, buf);
    }

    /// Change the logical size (ftruncate, O_TRUNC, fallocate growing the file).
    pub fn truncate(&mut self, new_size: u64) {
        if new_size < self.size {
            let beyond: Vec<u64> = self.extents.range(new_size..).map(|(&s, _)| s).collect();
            for s in beyond {
                self.extents.remove(&s);
            }
            if let Some((&s, v)) = self.extents.range_mut(..new_size).next_back() {
                if s + v.len() as u64 > new_size {
                    v.truncate(to_usize(new_size - s));
                }
            }
            self.base_valid = self.base_valid.min(new_size);
        }
        self.size = new_size;
    }

    /// Read `len` bytes at `offset` as the application sees them. `read_base(buf, offset)` fills
    /// `buf` from the backing file (leaving zeros past its end).
    pub fn read(
        &self,
        offset: u64,
        len: u64,
        mut read_base: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len));
        let mut buf = vec![0u8; to_usize(end - offset)];
        let base_end = end.min(self.base_valid);
        if offset < base_end {
            read_base(&mut buf[..to_usize(base_end - offset)], offset)?;
        }
        let first = self.extents.range(..=offset).next_back().map_or(offset, |(&s, _)| s);
        for (&s, v) in self.extents.range(first..end) {
            let e = s + v.len() as u64;
            if e <= offset {
                continue;
            }
            let from = s.max(offset);
            let to = e.min(end);
            buf[to_usize(from - offset)..to_usize(to - offset)]
                .copy_from_slice(&v[to_usize(from - s)..to_usize(to - s)]);
        }
        Ok(buf)
    }

    /// Make the overlay durable: write it into `file` and fsync (`datasync`: fdatasync). Returns
    /// the bytes written. On success the caller discards the overlay; on failure the backing file
    /// may hold part of it (like a real fsync that failed half-way) and the overlay stays.
    pub fn sync_to(&self, file: &File, datasync: bool) -> io::Result<u64> {
        if self.base_valid < self.base_len {
            file.set_len(self.base_valid)?;
        }
        let mut written = 0;
        for (&s, v) in &self.extents {
            file.write_all_at(v, s)?;
            written += v.len() as u64;
        }
        file.set_len(self.size)?;
        if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        Ok(written)
    }
}

/// Fill `buf` from `file` at `offset`; bytes past the end of the file stay as they are (zeros).
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn to_usize(n: u64) -> usize {
    // Every value passed here is the length of (part of) an in-memory buffer or of a single
    // read request, so it fits in usize on the 64-bit targets FUSE runs on.
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference model: the whole file as one Vec, plus the durable copy.
    struct Model {
        durable: Vec<u8>,
        current: Vec<u8>,
    }

    fn read_model(ov: &Overlay, base: &[u8], offset: u64, len: u64) -> Vec<u8> {
        ov.read(offset, len, |buf, off| {
            let off = off as usize;
            let avail = base.len().saturating_sub(off).min(buf.len());
            buf[..avail].copy_from_slice(&base[off..off + avail]);
            Ok(())
        })
        .unwrap()
    }

    /// xorshift64*: deterministic without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn appends_merge_into_one_extent() {
        let mut ov = Overlay::new(0);
        for i in 0..100u8 {
            ov.write(u64::from(i) * 3, &[i, i, i]);
        }
        assert_eq!(ov.extents.len(), 1);
        assert_eq!(ov.size(), 300);
        assert_eq!(ov.dirty_bytes(), 300);
        let data = read_model(&ov, &[], 0, 1000);
        assert_eq!(data.len(), 300);
        assert_eq!(&data[297..], &[99, 99, 99]);
    }

    #[test]
    fn truncate_hides_base_for_good() {
        let base = vec![7u8; 100];
        let mut ov = Overlay::new(100);
        ov.truncate(10);
        ov.truncate(50);
        let data = read_model(&ov, &base, 0, 100);
        assert_eq!(data.len(), 50);
        assert!(data[..10].iter().all(|&b| b == 7));
        assert!(data[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn random_operations_match_a_full_copy() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let base_len = rng.below(300) as usize;
            let base: Vec<u8> = (0..base_len).map(|_| rng.next() as u8).collect();
            let mut model = Model { durable: base.clone(), current: base.clone() };
            let mut ov = Overlay::new(base_len as u64);
            for _ in 0..60 {
                match rng.below(10) {
                    0..=5 => {
                        let off = rng.below(400) as usize;
                        let len = 1 + rng.below(80) as usize;
                        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        ov.write(off as u64, &data);
                        if model.current.len() < off + len {
                            model.current.resize(off + len, 0);
                        }
                        model.current[off..off + len].copy_from_slice(&data);
                    }
                    6 | 7 => {
                        let new = rng.below(450) as usize;
                        ov.truncate(new as u64);
                        model.current.resize(new, 0);
                    }
                    _ => {
                        let off = rng.below(500);
                        let len = rng.below(200);
                        let got = read_model(&ov, &model.durable, off, len);
                        let from = (off as usize).min(model.current.len());
                        let to = ((off + len) as usize).min(model.current.len());
                        assert_eq!(got, model.current[from..to], "seed {seed}");
                    }
                }
                // Invariant: extents are disjoint, non-adjacent-overlapping, inside the size.
                let mut prev_end = None;
                for (&s, v) in &ov.extents {
                    assert!(!v.is_empty());
                    if let Some(pe) = prev_end {
                        assert!(s > pe, "seed {seed}: extents overlap or touch");
                    }
                    prev_end = Some(s + v.len() as u64);
                }
                assert!(prev_end.unwrap_or(0) <= ov.size());
                assert_eq!(ov.size() as usize, model.current.len());
            }
            let all = read_model(&ov, &model.durable, 0, u64::MAX);
            assert_eq!(all, model.current, "seed {seed}");
        }
    }

    #[test]
    fn sync_writes_exactly_the_visible_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 1000]).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut ov = Overlay::new(1000);
        ov.truncate(100);
        ov.write(200, b"hello");
        ov.write(50, b"xy");
        ov.truncate(300);
        let expected = ov.read(0, u64::MAX, |buf, off| read_full_at(&file, buf, off).map(|_| ())).unwrap();
        assert_eq!(ov.sync_to(&file, false).unwrap(), 7);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(expected.len(), 300);
        assert_eq!(&expected[200..205], b"hello");
        assert!(expected[100..200].iter().all(|&b| b == 0));
    }
}
