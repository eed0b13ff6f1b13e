//! Free space on the data directory's filesystem, and the watermarks below which writes stop
//! *before* the disk is actually full (docs/adr/0014).
//!
//! A write that hits ENOSPC inside RocksDB is an I/O error in the middle of a Raft append: the
//! group's Raft instance stops and the RocksDB instance turns read-only. Refusing new data while
//! some space is left keeps every group running, so writes resume by themselves when space
//! returns (as Redpanda's `storage_min_free_bytes` does):
//! - below `min_free` a leader refuses produce requests, with an error naming the node, the free
//!   space and the watermark;
//! - below half of it a follower also refuses replicated entries (the leader retries them), so
//!   what was already accepted cannot push the disk the rest of the way; votes and other small
//!   Raft state still fit in what is left.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A measurement this recent is reused instead of asking the filesystem again.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The default watermark: this share of the filesystem…
const DEFAULT_MIN_FREE_PERCENT: u64 = 5;
/// …but never more than this (on a big disk 5 % is more than needed).
const DEFAULT_MIN_FREE_CAP: u64 = 5 << 30;

/// Why a write is refused for lack of space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "only {} free on the filesystem of {dir}, below the {} {what} watermark (min_free_bytes): \
     writes are refused until space is freed",
    mib(*free),
    mib(*watermark)
)]
pub struct SpaceLow {
    pub dir: String,
    pub free: u64,
    pub watermark: u64,
    pub what: &'static str,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Where the numbers come from: the real filesystem, or a fixed answer (simulator, tests).
enum Source {
    Filesystem(PathBuf),
    Unlimited,
}

/// Free space of one directory's filesystem, measured at most every `REFRESH_EVERY`.
pub struct DiskSpace {
    source: Source,
    /// 0: the default share of the filesystem's size.
    configured_min_free: u64,
    free: AtomicU64,
    min_free: AtomicU64,
    measured: Mutex<Option<Instant>>,
}

impl DiskSpace {
    /// Watches `dir`'s filesystem; `min_free_bytes` 0 means 5 % of its size, at most 5 GiB.
    pub fn new(dir: &Path, min_free_bytes: u64) -> Self {
        let s = Self {
            source: Source::Filesystem(dir.to_path_buf()),
            configured_min_free: min_free_bytes,
            free: AtomicU64::new(u64::MAX),
            min_free: AtomicU64::new(min_free_bytes),
            measured: Mutex::new(None),
        };
        s.refresh();
        s
    }

    /// Never low: for the simulator's in-memory engine.
    pub fn unlimited() -> Self {
        Self {
            source: Source::Unlimited,
            configured_min_free: 0,
            free: AtomicU64::new(u64::MAX),
            min_free: AtomicU64::new(0),
            measured: Mutex::new(None),
        }
    }

    fn refresh(&self) {
        let Source::Filesystem(dir) = &self.source else { return };
        {
            let mut at = self.measured.lock();
            if at.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        match rustix::fs::statvfs(dir) {
            Ok(st) => {
                let block = st.f_frsize.max(1);
                self.free.store(st.f_bavail.saturating_mul(block), Ordering::Relaxed);
                let min = if self.configured_min_free > 0 {
                    self.configured_min_free
                } else {
                    (st.f_blocks.saturating_mul(block) / 100 * DEFAULT_MIN_FREE_PERCENT).min(DEFAULT_MIN_FREE_CAP)
                };
                self.min_free.store(min, Ordering::Relaxed);
            }
            // Not knowing is not a reason to refuse writes; RocksDB reports real failures.
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data directory's free space"),
        }
    }

    /// Free bytes as last measured (refreshed first when stale).
    pub fn free_bytes(&self) -> u64 {
        self.refresh();
        self.free.load(Ordering::Relaxed)
    }

    /// The watermark below which produce requests are refused.
    pub fn min_free_bytes(&self) -> u64 {
        self.refresh();
        self.min_free.load(Ordering::Relaxed)
    }

    /// Refreshes (when stale) once, then compares against `watermark(min_free)`.
    fn check(&self, watermark: impl Fn(u64) -> u64, what: &'static str) -> Result<(), SpaceLow> {
        self.refresh();
        let (free, watermark) = (self.free.load(Ordering::Relaxed), watermark(self.min_free.load(Ordering::Relaxed)));
        if free >= watermark {
            return Ok(());
        }
        let dir = match &self.source {
            Source::Filesystem(d) => d.display().to_string(),
            Source::Unlimited => String::new(),
        };
        Err(SpaceLow { dir, free, watermark, what })
    }

    /// May a leader accept new data?
    pub fn check_new_data(&self) -> Result<(), SpaceLow> {
        self.check(|min| min, "produce")
    }

    /// May a follower store replicated entries? (Half the produce watermark: what leaders already
    /// accepted still replicates for a while after they stop taking more.)
    pub fn check_replicated_data(&self) -> Result<(), SpaceLow> {
        self.check(|min| min / 2, "replication")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermarks_follow_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let fs = rustix::fs::statvfs(dir.path()).unwrap();
        let free = fs.f_bavail * fs.f_frsize;

        // Nothing near the watermark: both kinds of write pass.
        let roomy = DiskSpace::new(dir.path(), 1);
        assert!(roomy.free_bytes() > 0);
        assert_eq!(roomy.check_new_data(), Ok(()));
        assert_eq!(roomy.check_replicated_data(), Ok(()));

        // A watermark above the free space refuses new data, naming the directory and numbers.
        let tight = DiskSpace::new(dir.path(), free.saturating_mul(4));
        let e = tight.check_new_data().unwrap_err();
        assert_eq!(e.what, "produce");
        assert!(e.free < e.watermark);
        let msg = e.to_string();
        assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("min_free_bytes"), "{msg}");
        // Replication stops only below half of it.
        assert!(tight.check_replicated_data().is_err());
        let between = DiskSpace::new(dir.path(), free + free / 2);
        assert!(between.check_new_data().is_err());
        assert_eq!(between.check_replicated_data(), Ok(()));

        // The default is 5 % of the filesystem, capped at 5 GiB.
        let default = DiskSpace::new(dir.path(), 0);
        let total = fs.f_blocks * fs.f_frsize;
        assert_eq!(default.min_free_bytes(), (total / 100 * 5).min(5 << 30));

        assert_eq!(DiskSpace::unlimited().check_new_data(), Ok(()));
    }
}
