//! What the checker found.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of a violation. Each kind belongs to exactly one invariant of docs/INVARIANTS.md
/// ([`ViolationKind::invariant`]); 0 means the history itself is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViolationKind {
    /// Not an invariant: the history breaks the recording contract (a completion without its
    /// invoke, a reused value, indexes out of order). Other checks may be unreliable.
    MalformedHistory,
    /// Inv 1: an acknowledged value is not at its acknowledged offset in the final read.
    LostWrite,
    /// Inv 2: one (topic, partition, offset) was seen with two different values.
    OffsetConflict,
    /// Inv 3: a process's sequential acknowledged produces got non-increasing base offsets.
    Reorder,
    /// Inv 3: a high watermark went backwards.
    HighWatermarkRegression,
    /// Inv 4: an acknowledged value below an offset some read returned is missing from the final
    /// read.
    PrefixClosure,
    /// Inv 4: a fetch returned nothing at an offset already known to be readable.
    PrefixNotReadable,
    /// Inv 4: the final read is not dense from offset 0 up to its high watermark.
    FinalReadGap,
    /// Inv 5: a value was read that nobody produced (to that partition, before the read), or
    /// whose produce failed definitively.
    Phantom,
    /// Inv 5: a read returned a record at or above the high watermark it reported.
    ReadPastHighWatermark,
    /// Inv 6: one value was read at two different positions.
    Duplicate,
    /// Inv 7: a fetch returned offsets out of order or below the requested one, or an `assign`
    /// consumer went back.
    NonMonotonicPoll,
    /// Inv 7: a fetch returned a gap, or an `assign` consumer skipped offsets.
    Skip,
    /// Inv 8: a committed group offset went backwards.
    CommitRegression,
    /// Inv 8: a commit from an older generation succeeded after a newer generation's commit.
    StaleGenerationAccepted,
    /// Inv 8: an offset fetch returned less than (or nothing after) an acknowledged commit.
    CommittedOffsetRegression,
    /// Inv 8: an offset fetch returned an offset nobody tried to commit.
    PhantomCommittedOffset,
    /// Inv 9: two different leaders acknowledged writes in the same leader epoch.
    EpochConflict,
    /// Inv 9: a process's sequential acknowledgements came from a lower leader epoch.
    EpochRegression,
    /// Inv 12: the final read of a partition failed.
    FinalReadFailed,
    /// Inv 12: acknowledged writes to a partition were never covered by a final read.
    MissingFinalRead,
}

impl ViolationKind {
    /// The docs/INVARIANTS.md invariant this kind violates (0: malformed history).
    pub fn invariant(self) -> u8 {
        use ViolationKind::*;
        match self {
            MalformedHistory => 0,
            LostWrite => 1,
            OffsetConflict => 2,
            Reorder | HighWatermarkRegression => 3,
            PrefixClosure | PrefixNotReadable | FinalReadGap => 4,
            Phantom | ReadPastHighWatermark => 5,
            Duplicate => 6,
            NonMonotonicPoll | Skip => 7,
            CommitRegression | StaleGenerationAccepted | CommittedOffsetRegression | PhantomCommittedOffset => 8,
            EpochConflict | EpochRegression => 9,
            FinalReadFailed | MissingFinalRead => 12,
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One broken invariant, with enough detail to find it in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The docs/INVARIANTS.md invariant number (0: malformed history).
    pub invariant: u8,
    pub kind: ViolationKind,
    /// Names the topic/partition, offset, value, process and history indexes (`#n`) involved.
    pub detail: String,
}

impl Violation {
    pub fn new(kind: ViolationKind, detail: impl Into<String>) -> Self {
        Violation { invariant: kind.invariant(), kind, detail: detail.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[inv {} {}] {}", self.invariant, self.kind, self.detail)
    }
}

/// Counts of what the history contained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub entries: u64,
    pub processes: u64,
    /// Distinct (topic, partition) pairs mentioned.
    pub partitions: u64,
    pub produce_invokes: u64,
    pub acked_batches: u64,
    /// Values in acknowledged batches.
    pub acked_values: u64,
    pub produce_definite_failures: u64,
    pub produce_indeterminate_failures: u64,
    /// Produce invokes that never completed (indeterminate).
    pub produce_unfinished: u64,
    /// Successful fetches (`FetchOk`).
    pub reads: u64,
    /// Records returned by successful fetches.
    pub records_read: u64,
    pub fetch_failures: u64,
    pub final_reads: u64,
    pub final_read_failures: u64,
    pub commits_ok: u64,
    pub commit_failures: u64,
    pub offset_fetches: u64,
}

/// The verdict on a history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Ordered by invariant number, then by the check's own order (history order, mostly).
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of each (invariant, kind).
    pub fn counts(&self) -> BTreeMap<(u8, ViolationKind), usize> {
        let mut counts = BTreeMap::new();
        for v in &self.violations {
            *counts.entry((v.invariant, v.kind)).or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", summary_line(self))?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        let s = &self.stats;
        write!(
            f,
            "  history: {} entries, {} processes, {} partitions; produce: {} invoked, {} acked batches ({} values), \
             {} definite / {} indeterminate failures, {} unfinished; fetch: {} ok ({} records), {} failed; \
             final reads: {} ok, {} failed; commits: {} ok, {} failed; offset fetches: {}",
            s.entries,
            s.processes,
            s.partitions,
            s.produce_invokes,
            s.acked_batches,
            s.acked_values,
            s.produce_definite_failures,
            s.produce_indeterminate_failures,
            s.produce_unfinished,
            s.reads,
            s.records_read,
            s.fetch_failures,
            s.final_reads,
            s.final_read_failures,
            s.commits_ok,
            s.commit_failures,
            s.offset_fetches,
        )
    }
}

/// One line: `ok: N acked, M reads` or
/// `VIOLATIONS: k (inv 1: 2 LostWrite, inv 5: 1 Phantom + 1 ReadPastHighWatermark)`.
pub fn summary_line(report: &Report) -> String {
    if report.is_ok() {
        return format!("ok: {} acked, {} reads", report.stats.acked_values, report.stats.reads);
    }
    let mut by_invariant: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for ((invariant, kind), n) in report.counts() {
        by_invariant.entry(invariant).or_default().push(format!("{n} {kind}"));
    }
    let parts: Vec<String> =
        by_invariant.into_iter().map(|(inv, kinds)| format!("inv {inv}: {}", kinds.join(" + "))).collect();
    format!("VIOLATIONS: {} ({})", report.violations.len(), parts.join(", "))
}
