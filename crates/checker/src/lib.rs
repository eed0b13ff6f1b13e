//! Records histories of client operations against a Runnel cluster and judges them against the
//! invariants numbered in docs/INVARIANTS.md.
//!
//! The deterministic simulation records through a [`Recorder`]; chaos tests on real nodes write
//! the same [`Entry`] values as JSON Lines ([`write_jsonl`] / [`read_jsonl`]) and judge them later.
//! [`check`] runs every check; each `check_*` function runs one.
//!
//! The checker is deliberately conservative: two operations are compared only when one completed
//! before the other was invoked (their order in the history), so concurrency never causes a false
//! alarm, and an indeterminate produce (a timeout) may or may not show up.

//! # Recording contract
//!
//! - A completion pairs with the oldest open invoke by the same process with the same arguments
//!   (for a produce: the same partition and values).
//! - Every produced value is unique; the one exception is a retry, which resends the identical batch
//!   after its previous attempt ended in a `ProduceFail`.
//! - `FinalRead` is recorded only after the workload on its partition has stopped: everything
//!   recorded before it is treated as having happened before it.
//! - `OffsetFetchOk` has no invoke: it is compared with the commits acknowledged before it was
//!   recorded, so do not overlap it with commits of the same group and partition.
//! - Breaking the contract is reported as invariant 0 (`MalformedHistory`).

mod checks;
mod history;
mod report;

pub use checks::{
    check, check_commits, check_duplicates, check_epochs, check_liveness, check_lost_writes, check_offset_conflicts,
    check_phantoms, check_polls, check_prefix_closure, check_reorder, check_well_formed,
};
pub use history::{fingerprint, read_jsonl, to_jsonl, write_jsonl, Entry, Event, HistoryError, Recorder};
pub use report::{summary_line, Report, Stats, Violation, ViolationKind};
