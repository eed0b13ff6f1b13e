//! The history: what clients invoked and what they were told, in the order the recorder saw it.
//!
//! A history is plain data so that it can leave the process that recorded it: the simulator keeps
//! it in memory, chaos tests write it as JSON Lines (one [`Entry`] per line) and judge it later.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::checks::check;
use crate::report::Report;

/// One thing a client did or learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the history, assigned by the recorder; strictly increasing.
    pub index: u64,
    /// The client (process) that did it. A process's operations on one partition are judged for
    /// ordering; different processes are concurrent.
    pub process: u64,
    /// Simulated (or wall-clock) time when it was recorded. Informational: the checker orders
    /// entries by their position in the history, never by time.
    pub time_ms: u64,
    pub event: Event,
}

/// What happened. Every operation is an invoke followed (maybe) by a completion from the same
/// process with the same arguments; an invoke that never completes is indeterminate.
///
/// Contract with whoever records: every value produced in a history is unique. The same batch may
/// be invoked again (a retry) only after its previous attempt ended in a `ProduceFail`.
/// `FinalRead`, `FinalReadFailed` and `OffsetFetchOk` have no invoke: they are treated as having
/// happened at the moment they were recorded, so record a `FinalRead` only after the workload on
/// its partition has stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// Produce of a batch of unique values to one partition.
    ProduceInvoke {
        topic: String,
        partition: u32,
        values: Vec<String>,
    },
    /// The batch was acknowledged: `values[i]` is at offset `base_offset + i`.
    ProduceOk {
        topic: String,
        partition: u32,
        values: Vec<String>,
        base_offset: u64,
        /// Term (leader epoch) of the leader that acknowledged, when known.
        leader_epoch: Option<u64>,
        /// Node id of the leader that acknowledged, when known.
        leader: Option<u64>,
    },
    /// `definite`: the write certainly did not happen (refused before append). Otherwise the
    /// outcome is unknown (timeout, connection lost) and the values may appear later.
    ProduceFail {
        topic: String,
        partition: u32,
        values: Vec<String>,
        definite: bool,
        error: String,
    },
    FetchInvoke {
        topic: String,
        partition: u32,
        offset: u64,
    },
    /// `records` are `(offset, value)` in the order the client returned them.
    FetchOk {
        topic: String,
        partition: u32,
        offset: u64,
        records: Vec<(u64, String)>,
        high_watermark: u64,
    },
    FetchFail {
        topic: String,
        partition: u32,
        offset: u64,
        error: String,
    },
    /// Consumer-group offset commits.
    CommitInvoke {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
        generation: u64,
    },
    CommitOk {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
        generation: u64,
    },
    CommitFail {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
        generation: u64,
        error: String,
    },
    /// A read of a group's committed offset (`None`: nothing committed).
    OffsetFetchOk {
        group: String,
        topic: String,
        partition: u32,
        offset: Option<u64>,
    },
    /// After faults heal: a complete read of the partition from its log start to its high
    /// watermark.
    FinalRead {
        topic: String,
        partition: u32,
        records: Vec<(u64, String)>,
        high_watermark: u64,
    },
    /// The liveness phase could not complete a final read of this partition within its bound.
    FinalReadFailed {
        topic: String,
        partition: u32,
        error: String,
    },
}

impl Event {
    /// The variant's name, e.g. `"FetchOk"`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::ProduceInvoke { .. } => "ProduceInvoke",
            Event::ProduceOk { .. } => "ProduceOk",
            Event::ProduceFail { .. } => "ProduceFail",
            Event::FetchInvoke { .. } => "FetchInvoke",
            Event::FetchOk { .. } => "FetchOk",
            Event::FetchFail { .. } => "FetchFail",
            Event::CommitInvoke { .. } => "CommitInvoke",
            Event::CommitOk { .. } => "CommitOk",
            Event::CommitFail { .. } => "CommitFail",
            Event::OffsetFetchOk { .. } => "OffsetFetchOk",
            Event::FinalRead { .. } => "FinalRead",
            Event::FinalReadFailed { .. } => "FinalReadFailed",
        }
    }

    /// The topic and partition the event is about.
    pub fn topic_partition(&self) -> (&str, u32) {
        match self {
            Event::ProduceInvoke { topic, partition, .. }
            | Event::ProduceOk { topic, partition, .. }
            | Event::ProduceFail { topic, partition, .. }
            | Event::FetchInvoke { topic, partition, .. }
            | Event::FetchOk { topic, partition, .. }
            | Event::FetchFail { topic, partition, .. }
            | Event::CommitInvoke { topic, partition, .. }
            | Event::CommitOk { topic, partition, .. }
            | Event::CommitFail { topic, partition, .. }
            | Event::OffsetFetchOk { topic, partition, .. }
            | Event::FinalRead { topic, partition, .. }
            | Event::FinalReadFailed { topic, partition, .. } => (topic, *partition),
        }
    }
}

/// Reading or writing a serialized history failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line}: not a valid entry: {source}")]
    Parse { line: usize, source: serde_json::Error },
    #[error("could not serialize history entry {index}: {source}")]
    Serialize { index: u64, source: serde_json::Error },
}

/// Writes `entries` as JSON Lines: one entry per line, each line ending in `\n`.
pub fn write_jsonl<W: Write>(mut writer: W, entries: &[Entry]) -> Result<(), HistoryError> {
    for entry in entries {
        write_entry(&mut writer, entry)?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads a history written by [`write_jsonl`]. Blank lines are skipped; a malformed line is an
/// error naming its (1-based) line number.
pub fn read_jsonl<R: BufRead>(reader: R) -> Result<Vec<Entry>, HistoryError> {
    let mut entries = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|source| HistoryError::Parse { line: i + 1, source })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// The JSON Lines text of `entries`, as [`write_jsonl`] writes it.
pub fn to_jsonl(entries: &[Entry]) -> Result<String, HistoryError> {
    let mut out = Vec::new();
    write_jsonl(&mut out, entries)?;
    // serde_json only writes UTF-8.
    String::from_utf8(out).map_err(|e| HistoryError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn write_entry<W: Write>(writer: &mut W, entry: &Entry) -> Result<(), HistoryError> {
    serde_json::to_writer(&mut *writer, entry).map_err(|source| {
        if source.is_io() {
            HistoryError::Io(source.into())
        } else {
            HistoryError::Serialize { index: entry.index, source }
        }
    })?;
    writer.write_all(b"\n")?;
    Ok(())
}

/// A stable 64-bit fingerprint of a history: FNV-1a over its JSON Lines text. Identical histories
/// get identical fingerprints in every process, run and platform (no randomly seeded hashers), so
/// two runs of one simulation seed can be compared by fingerprint alone.
pub fn fingerprint(entries: &[Entry]) -> u64 {
    let mut hasher = Fnv1a::new();
    for entry in entries {
        // Serializing these types cannot fail and the hasher never returns an error; should that
        // ever change, fold the error into the hash rather than panic, so it stays deterministic.
        if let Err(e) = write_entry(&mut hasher, entry) {
            hasher.update(e.to_string().as_bytes());
        }
    }
    hasher.0
}

/// FNV-1a, 64-bit.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

impl Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records a history. Cheap to clone: every clone appends to the same history, so each simulated
/// client can hold its own handle.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event` and returns its history index (0, 1, 2, ... in recording order).
    pub fn record(&self, process: u64, time_ms: u64, event: Event) -> u64 {
        let mut entries = self.lock();
        let index = entries.len() as u64;
        entries.push(Entry { index, process, time_ms, event });
        index
    }

    /// A copy of the history so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// [`fingerprint`] of the history so far.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.lock())
    }

    /// Writes the history so far as JSON Lines ([`write_jsonl`]).
    pub fn write_jsonl<W: Write>(&self, writer: W) -> Result<(), HistoryError> {
        write_jsonl(writer, &self.lock())
    }

    /// Judges the history so far ([`check`]).
    pub fn check(&self) -> Report {
        check(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock cannot leave the history half-written (a push either
        // happened or not), so a poisoned lock is still a valid history.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(recorder: &Recorder) {
        recorder.record(
            1,
            0,
            Event::ProduceInvoke { topic: "t".into(), partition: 0, values: vec!["a".into(), "b \"quoted\"\n".into()] },
        );
        recorder.record(
            1,
            5,
            Event::ProduceOk {
                topic: "t".into(),
                partition: 0,
                values: vec!["a".into(), "b \"quoted\"\n".into()],
                base_offset: 0,
                leader_epoch: Some(3),
                leader: None,
            },
        );
        recorder.record(2, 6, Event::FetchInvoke { topic: "t".into(), partition: 0, offset: 0 });
        recorder.record(
            2,
            9,
            Event::FetchOk {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                records: vec![(0, "a".into()), (1, "b \"quoted\"\n".into())],
                high_watermark: 2,
            },
        );
        recorder.record(
            3,
            10,
            Event::CommitOk { group: "g".into(), topic: "t".into(), partition: 0, offset: 2, generation: 1 },
        );
        recorder.record(
            3,
            11,
            Event::OffsetFetchOk { group: "g".into(), topic: "t".into(), partition: 0, offset: None },
        );
        recorder.record(0, 20, Event::FinalReadFailed { topic: "t".into(), partition: 1, error: "timeout".into() });
    }

    #[test]
    fn recorder_assigns_consecutive_indexes_across_clones() {
        let recorder = Recorder::new();
        let other = recorder.clone();
        assert!(recorder.is_empty());
        assert_eq!(recorder.record(1, 0, Event::FetchInvoke { topic: "t".into(), partition: 0, offset: 0 }), 0);
        assert_eq!(other.record(2, 0, Event::FetchInvoke { topic: "t".into(), partition: 0, offset: 0 }), 1);
        let entries = recorder.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(recorder.len(), 2);
        assert_eq!(entries[1].index, 1);
        assert_eq!(entries[1].process, 2);
    }

    #[test]
    fn jsonl_round_trips() {
        let recorder = Recorder::new();
        sample(&recorder);
        let entries = recorder.entries();
        let text = to_jsonl(&entries).unwrap();
        assert_eq!(text.lines().count(), entries.len());
        assert!(text.ends_with('\n'));
        assert!(text.lines().next().unwrap().contains(r#""type":"ProduceInvoke""#), "{text}");
        let back = read_jsonl(text.as_bytes()).unwrap();
        assert_eq!(back, entries);

        let mut via_recorder = Vec::new();
        recorder.write_jsonl(&mut via_recorder).unwrap();
        assert_eq!(via_recorder, text.as_bytes());
    }

    #[test]
    fn read_jsonl_skips_blank_lines_and_names_the_bad_line() {
        let text = "\n{\"index\":0,\"process\":1,\"time_ms\":0,\"event\":{\"type\":\"FetchInvoke\",\"topic\":\"t\",\
                    \"partition\":0,\"offset\":7}}\n\n{\"index\":1,\"nonsense\":true}\n";
        match read_jsonl(text.as_bytes()) {
            Err(HistoryError::Parse { line, .. }) => assert_eq!(line, 4),
            other => panic!("expected a parse error, got {other:?}"),
        }
        let good = text.lines().take(3).collect::<Vec<_>>().join("\n");
        let entries = read_jsonl(good.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].event, Event::FetchInvoke { topic: "t".into(), partition: 0, offset: 7 });
    }

    #[test]
    fn fingerprint_is_stable_across_identical_recordings() {
        let first = Recorder::new();
        let second = Recorder::new();
        sample(&first);
        sample(&second);
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(
            first.fingerprint(),
            fingerprint(&read_jsonl(to_jsonl(&first.entries()).unwrap().as_bytes()).unwrap())
        );
        // A fixed value: the fingerprint must not depend on the process, run or platform. If the
        // serialized form changes on purpose, update it (and expect old fingerprints to differ).
        assert_eq!(fingerprint(&[]), Fnv1a::OFFSET_BASIS);
        assert_eq!(first.fingerprint(), 0x6231_5d97_639d_92de, "golden fingerprint of the sample history");
        let mut h = Fnv1a::new();
        h.update(to_jsonl(&first.entries()).unwrap().as_bytes());
        assert_eq!(first.fingerprint(), h.0);

        second.record(9, 30, Event::FinalReadFailed { topic: "t".into(), partition: 1, error: "again".into() });
        assert_ne!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let mut h = Fnv1a::new();
        h.update(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv1a::new();
        h.update(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }
}
