//! The checks. Each `check_*` function judges one group of invariants and can be called on its own;
//! [`check`] runs them all over one shared analysis of the history.
//!
//! Order: the history's order (its slice order) is the real-time order. "A completed before B was
//! invoked" means A's completion entry comes before B's invoke entry; only such pairs are judged
//! against each other, so concurrent operations never produce false alarms. An operation whose
//! invoke is missing (a malformed history) is treated as invoked at the very start, which is the
//! most forgiving choice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::history::{Entry, Event};
use crate::report::{Report, Violation, ViolationKind as K};

/// (topic, partition).
type Tp<'a> = (&'a str, u32);

fn tp_name(tp: Tp<'_>) -> String {
    format!("{}/{}", tp.0, tp.1)
}

/// Judges `history` against every invariant the checker knows.
pub fn check(history: &[Entry]) -> Report {
    let a = Analysis::new(history);
    let checks: [fn(&Analysis<'_>) -> Vec<Violation>; 10] = [
        lost_writes,
        offset_conflicts,
        reorder,
        prefix_closure,
        phantoms,
        duplicates,
        polls,
        commits,
        epochs,
        liveness,
    ];
    let mut violations = a.malformed.clone();
    for check in checks {
        violations.extend(check(&a));
    }
    violations.sort_by_key(|v| v.invariant);
    Report { violations, stats: a.stats.clone() }
}

/// Inv 0 (not an invariant): the history breaks the recording contract — entry indexes not
/// strictly increasing, a completion without a matching invoke from the same process, an empty
/// batch, or a value produced twice other than by retrying the identical batch after a failure.
pub fn check_well_formed(history: &[Entry]) -> Vec<Violation> {
    Analysis::new(history).malformed
}

/// Inv 1 (`LostWrite`): every value of a `ProduceOk` is at offset `base_offset + i` in every
/// `FinalRead` of its partition recorded after the acknowledgement. Partitions without such a final
/// read are judged by [`check_liveness`] instead.
pub fn check_lost_writes(history: &[Entry]) -> Vec<Violation> {
    lost_writes(&Analysis::new(history))
}

/// Inv 2 (`OffsetConflict`): a (topic, partition, offset) maps to one value across all `FetchOk`
/// and `FinalRead` records and the offsets `ProduceOk` acknowledged.
pub fn check_offset_conflicts(history: &[Entry]) -> Vec<Violation> {
    offset_conflicts(&Analysis::new(history))
}

/// Inv 6 (`Duplicate`): a value read (`FetchOk`, `FinalRead`) at two different positions.
pub fn check_duplicates(history: &[Entry]) -> Vec<Violation> {
    duplicates(&Analysis::new(history))
}

/// Inv 3. `Reorder`: a process's `ProduceOk` on a partition has a base offset no greater than that
/// of one of its own `ProduceOk`s that completed before it was invoked. `HighWatermarkRegression`:
/// a process's `FetchOk` reports a lower high watermark than one of its own `FetchOk`s on that
/// partition that completed before it was invoked, or a `FinalRead` reports a lower one than any
/// read recorded before it.
pub fn check_reorder(history: &[Entry]) -> Vec<Violation> {
    reorder(&Analysis::new(history))
}

/// Inv 4. `PrefixClosure`: an acknowledged value missing from the final read although a read
/// invoked after the acknowledgement returned a higher offset. `PrefixNotReadable`: a `FetchOk`
/// returned no records from an offset below what was already known to be readable when it was
/// invoked (an acknowledgement, or a high watermark some read reported). `FinalReadGap`: a final
/// read is not dense from offset 0 to its high watermark (there is no retention yet).
pub fn check_prefix_closure(history: &[Entry]) -> Vec<Violation> {
    prefix_closure(&Analysis::new(history))
}

/// Inv 5. `Phantom`: a value read that no `ProduceInvoke` to that partition invoked before the
/// read completed, or whose every such attempt failed definitively. `ReadPastHighWatermark`: a
/// `FetchOk` or `FinalRead` record at or above the high watermark it reported.
pub fn check_phantoms(history: &[Entry]) -> Vec<Violation> {
    phantoms(&Analysis::new(history))
}

/// Inv 7. Every `FetchOk`'s records start exactly at the requested offset and are contiguous
/// (`Skip` for a gap, `NonMonotonicPoll` for an offset below the requested one or out of order).
/// A process is an `assign` consumer of a partition when one of its fetches asked for the offset
/// right after the last record its previous fetch returned; such a consumer must then ask for
/// exactly its position every time (`Skip` if ahead, `NonMonotonicPoll` if behind; there are no
/// seeks).
pub fn check_polls(history: &[Entry]) -> Vec<Violation> {
    polls(&Analysis::new(history))
}

/// Inv 8, per (group, topic, partition). `StaleGenerationAccepted`: a `CommitOk` with an older
/// generation than a `CommitOk` that completed before it was invoked. `CommitRegression`: a
/// `CommitOk` with a lower offset than such an earlier one. `CommittedOffsetRegression`: an
/// `OffsetFetchOk` returning less than (or nothing after) a `CommitOk` recorded before it.
/// `PhantomCommittedOffset`: an `OffsetFetchOk` returning an offset no commit tried to store.
pub fn check_commits(history: &[Entry]) -> Vec<Violation> {
    commits(&Analysis::new(history))
}

/// Inv 9. `EpochConflict`: two `ProduceOk`s on one partition with the same leader epoch from
/// different leader nodes. `EpochRegression`: a process's `ProduceOk` with a lower leader epoch
/// than one of its own on that partition that completed before it was invoked.
pub fn check_epochs(history: &[Entry]) -> Vec<Violation> {
    epochs(&Analysis::new(history))
}

/// Inv 12. `FinalReadFailed`: every such entry. `MissingFinalRead`: a partition with acknowledged
/// writes that no `FinalRead` (recorded after them) or `FinalReadFailed` covers. Acknowledged values
/// missing from a final read are reported once, as `LostWrite` (inv 1), not here.
pub fn check_liveness(history: &[Entry]) -> Vec<Violation> {
    liveness(&Analysis::new(history))
}

// ---------------------------------------------------------------------------------------------
// The analysis: invokes paired with completions, built once per history.

struct Produce<'a> {
    process: u64,
    tp: Tp<'a>,
    values: &'a [String],
    /// Position of the invoke in the history; `None` when the history lacks it.
    invoke: Option<usize>,
    outcome: ProduceOutcome,
}

#[derive(Clone, Copy)]
enum ProduceOutcome {
    Open,
    Ok { done: usize, base: u64, epoch: Option<u64>, leader: Option<u64> },
    Failed { done: usize, definite: bool },
}

struct Fetch<'a> {
    process: u64,
    tp: Tp<'a>,
    offset: u64,
    invoke: Option<usize>,
    outcome: FetchOutcome<'a>,
}

#[derive(Clone, Copy)]
enum FetchOutcome<'a> {
    Open,
    Ok { done: usize, records: &'a [(u64, String)], hw: u64 },
    Failed,
}

struct Commit<'a> {
    group: &'a str,
    tp: Tp<'a>,
    offset: u64,
    generation: u64,
    invoke: Option<usize>,
    /// Position of the `CommitOk`, if it succeeded.
    ok: Option<usize>,
}

struct OffsetFetch<'a> {
    pos: usize,
    group: &'a str,
    tp: Tp<'a>,
    offset: Option<u64>,
}

struct FinalRead<'a> {
    pos: usize,
    tp: Tp<'a>,
    records: &'a [(u64, String)],
    hw: u64,
    by_offset: HashMap<u64, &'a str>,
    by_value: HashMap<&'a str, u64>,
}

/// A successful read: a `FetchOk`, or a `FinalRead` (invoked, as far as the checker is concerned,
/// when it was recorded).
#[derive(Clone, Copy)]
struct Read<'a> {
    pos: usize,
    invoke: Option<usize>,
    tp: Tp<'a>,
    records: &'a [(u64, String)],
    hw: u64,
}

#[derive(Clone, Copy)]
enum Open {
    Produce(usize),
    Fetch(usize),
    Commit(usize),
}

struct Analysis<'a> {
    history: &'a [Entry],
    produces: Vec<Produce<'a>>,
    fetches: Vec<Fetch<'a>>,
    commits: Vec<Commit<'a>>,
    offset_fetches: Vec<OffsetFetch<'a>>,
    finals: Vec<FinalRead<'a>>,
    /// Partition → indexes into `finals`, in history order.
    finals_by_tp: HashMap<Tp<'a>, Vec<usize>>,
    final_failures: Vec<(usize, Tp<'a>)>,
    /// Value → the produce attempts (indexes into `produces`) that carried it.
    attempts: HashMap<&'a str, Vec<usize>>,
    /// Every successful read in history order.
    reads: Vec<Read<'a>>,
    malformed: Vec<Violation>,
    stats: crate::report::Stats,
}

impl<'a> Analysis<'a> {
    fn new(history: &'a [Entry]) -> Self {
        let mut a = Analysis {
            history,
            produces: Vec::new(),
            fetches: Vec::new(),
            commits: Vec::new(),
            offset_fetches: Vec::new(),
            finals: Vec::new(),
            finals_by_tp: HashMap::new(),
            final_failures: Vec::new(),
            attempts: HashMap::new(),
            reads: Vec::new(),
            malformed: Vec::new(),
            stats: crate::report::Stats::default(),
        };
        let mut open: HashMap<u64, Vec<Open>> = HashMap::new();
        let mut processes = HashSet::new();
        let mut partitions = HashSet::new();
        for (pos, entry) in history.iter().enumerate() {
            if pos > 0 && entry.index <= history[pos - 1].index {
                a.malformed(format!(
                    "entry #{} follows #{}: indexes must strictly increase",
                    entry.index,
                    history[pos - 1].index
                ));
            }
            processes.insert(entry.process);
            partitions.insert(entry.event.topic_partition());
            a.add(pos, entry, open.entry(entry.process).or_default());
        }
        for p in &a.produces {
            if matches!(p.outcome, ProduceOutcome::Open) {
                a.stats.produce_unfinished += 1;
            }
        }
        a.stats.entries = history.len() as u64;
        a.stats.processes = processes.len() as u64;
        a.stats.partitions = partitions.len() as u64;
        a.reads.sort_by_key(|r| r.pos);
        a
    }

    fn malformed(&mut self, detail: String) {
        self.malformed.push(Violation::new(K::MalformedHistory, detail));
    }

    fn add(&mut self, pos: usize, entry: &'a Entry, open: &mut Vec<Open>) {
        let here = format!("{} #{} (process {})", entry.event.name(), entry.index, entry.process);
        match &entry.event {
            Event::ProduceInvoke { topic, partition, values } => {
                self.stats.produce_invokes += 1;
                let tp = (topic.as_str(), *partition);
                self.check_values_unused(&here, tp, values);
                let id = self.produces.len();
                for v in values {
                    self.attempts.entry(v.as_str()).or_default().push(id);
                }
                self.produces.push(Produce {
                    process: entry.process,
                    tp,
                    values,
                    invoke: Some(pos),
                    outcome: ProduceOutcome::Open,
                });
                open.push(Open::Produce(id));
            }
            Event::ProduceOk { topic, partition, values, base_offset, leader_epoch, leader } => {
                self.stats.acked_batches += 1;
                self.stats.acked_values += values.len() as u64;
                let outcome =
                    ProduceOutcome::Ok { done: pos, base: *base_offset, epoch: *leader_epoch, leader: *leader };
                self.complete_produce(&here, entry.process, (topic, *partition), values, outcome, open);
            }
            Event::ProduceFail { topic, partition, values, definite, .. } => {
                if *definite {
                    self.stats.produce_definite_failures += 1;
                } else {
                    self.stats.produce_indeterminate_failures += 1;
                }
                let outcome = ProduceOutcome::Failed { done: pos, definite: *definite };
                self.complete_produce(&here, entry.process, (topic, *partition), values, outcome, open);
            }
            Event::FetchInvoke { topic, partition, offset } => {
                open.push(Open::Fetch(self.fetches.len()));
                self.fetches.push(Fetch {
                    process: entry.process,
                    tp: (topic, *partition),
                    offset: *offset,
                    invoke: Some(pos),
                    outcome: FetchOutcome::Open,
                });
            }
            Event::FetchOk { topic, partition, offset, records, high_watermark } => {
                self.stats.reads += 1;
                self.stats.records_read += records.len() as u64;
                let tp = (topic.as_str(), *partition);
                let outcome = FetchOutcome::Ok { done: pos, records, hw: *high_watermark };
                let invoke = self.complete_fetch(&here, entry.process, tp, *offset, outcome, open);
                self.reads.push(Read { pos, invoke, tp, records, hw: *high_watermark });
            }
            Event::FetchFail { topic, partition, offset, .. } => {
                self.stats.fetch_failures += 1;
                self.complete_fetch(&here, entry.process, (topic, *partition), *offset, FetchOutcome::Failed, open);
            }
            Event::CommitInvoke { group, topic, partition, offset, generation } => {
                open.push(Open::Commit(self.commits.len()));
                self.commits.push(Commit {
                    group,
                    tp: (topic, *partition),
                    offset: *offset,
                    generation: *generation,
                    invoke: Some(pos),
                    ok: None,
                });
            }
            Event::CommitOk { group, topic, partition, offset, generation } => {
                self.stats.commits_ok += 1;
                let tp = (topic.as_str(), *partition);
                self.complete_commit(&here, group, tp, *offset, *generation, Some(pos), open);
            }
            Event::CommitFail { group, topic, partition, offset, generation, .. } => {
                self.stats.commit_failures += 1;
                let tp = (topic.as_str(), *partition);
                self.complete_commit(&here, group, tp, *offset, *generation, None, open);
            }
            Event::OffsetFetchOk { group, topic, partition, offset } => {
                self.stats.offset_fetches += 1;
                self.offset_fetches.push(OffsetFetch { pos, group, tp: (topic, *partition), offset: *offset });
            }
            Event::FinalRead { topic, partition, records, high_watermark } => {
                self.stats.final_reads += 1;
                let tp = (topic.as_str(), *partition);
                let mut by_offset = HashMap::new();
                let mut by_value = HashMap::new();
                for (o, v) in records {
                    by_offset.entry(*o).or_insert(v.as_str());
                    by_value.entry(v.as_str()).or_insert(*o);
                }
                self.finals_by_tp.entry(tp).or_default().push(self.finals.len());
                self.finals.push(FinalRead { pos, tp, records, hw: *high_watermark, by_offset, by_value });
                self.reads.push(Read { pos, invoke: Some(pos), tp, records, hw: *high_watermark });
            }
            Event::FinalReadFailed { topic, partition, .. } => {
                self.stats.final_read_failures += 1;
                self.final_failures.push((pos, (topic, *partition)));
            }
        }
    }

    /// A value may be produced again only as a retry: the identical batch, after every earlier
    /// attempt of it failed.
    fn check_values_unused(&mut self, here: &str, tp: Tp<'a>, values: &'a [String]) {
        if values.is_empty() {
            self.malformed(format!("{here} on {}: empty batch", tp_name(tp)));
        }
        if let Some(problem) = self.reuse_problem(tp, values) {
            self.malformed(format!("{here} on {}: {problem}", tp_name(tp)));
        }
    }

    fn reuse_problem(&self, tp: Tp<'a>, values: &'a [String]) -> Option<String> {
        let mut seen = HashSet::new();
        for v in values {
            if !seen.insert(v.as_str()) {
                return Some(format!("value {v:?} appears twice in one batch"));
            }
            for &id in self.attempts.get(v.as_str()).map(Vec::as_slice).unwrap_or_default() {
                let prior = &self.produces[id];
                let retry =
                    prior.tp == tp && prior.values == values && matches!(prior.outcome, ProduceOutcome::Failed { .. });
                if !retry {
                    let first = prior.invoke.map_or_else(|| "an earlier produce".to_string(), |p| self.at(p));
                    return Some(format!(
                        "value {v:?} was already produced by {first}; values must be unique (a retry must resend \
                         the identical batch after its previous attempt failed)"
                    ));
                }
            }
        }
        None
    }

    fn complete_produce(
        &mut self,
        here: &str,
        process: u64,
        tp: Tp<'a>,
        values: &'a [String],
        outcome: ProduceOutcome,
        open: &mut Vec<Open>,
    ) {
        let found = open.iter().position(|o| match *o {
            Open::Produce(id) => self.produces[id].tp == tp && self.produces[id].values == values,
            _ => false,
        });
        if let Some(i) = found {
            if let Open::Produce(id) = open.remove(i) {
                self.produces[id].outcome = outcome;
            }
            return;
        }
        self.malformed(format!("{here} on {}: no open ProduceInvoke of this batch by this process", tp_name(tp)));
        // Keep it, so its values still count as produced (and, if acknowledged, are still checked).
        let id = self.produces.len();
        for v in values {
            self.attempts.entry(v.as_str()).or_default().push(id);
        }
        self.produces.push(Produce { process, tp, values, invoke: None, outcome });
    }

    fn complete_fetch(
        &mut self,
        here: &str,
        process: u64,
        tp: Tp<'a>,
        offset: u64,
        outcome: FetchOutcome<'a>,
        open: &mut Vec<Open>,
    ) -> Option<usize> {
        let found = open.iter().position(|o| match *o {
            Open::Fetch(id) => self.fetches[id].tp == tp && self.fetches[id].offset == offset,
            _ => false,
        });
        if let Some(i) = found {
            if let Open::Fetch(id) = open.remove(i) {
                self.fetches[id].outcome = outcome;
                return self.fetches[id].invoke;
            }
        }
        self.malformed(format!("{here} on {} offset {offset}: no open FetchInvoke of it by this process", tp_name(tp)));
        self.fetches.push(Fetch { process, tp, offset, invoke: None, outcome });
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn complete_commit(
        &mut self,
        here: &str,
        group: &'a str,
        tp: Tp<'a>,
        offset: u64,
        generation: u64,
        ok: Option<usize>,
        open: &mut Vec<Open>,
    ) {
        let found = open.iter().position(|o| match *o {
            Open::Commit(id) => {
                let c = &self.commits[id];
                c.group == group && c.tp == tp && c.offset == offset && c.generation == generation
            }
            _ => false,
        });
        if let Some(i) = found {
            if let Open::Commit(id) = open.remove(i) {
                self.commits[id].ok = ok;
            }
            return;
        }
        self.malformed(format!(
            "{here} for group {group:?} on {} offset {offset} generation {generation}: no open CommitInvoke of it \
             by this process",
            tp_name(tp)
        ));
        self.commits.push(Commit { group, tp, offset, generation, invoke: None, ok });
    }

    /// Names the entry at `pos`: `FetchOk #12 (process 3)`.
    fn at(&self, pos: usize) -> String {
        match self.history.get(pos) {
            Some(e) => format!("{} #{} (process {})", e.event.name(), e.index, e.process),
            None => format!("entry at position {pos}"),
        }
    }

    fn error_of(&self, pos: usize) -> &'a str {
        match self.history.get(pos).map(|e| &e.event) {
            Some(Event::ProduceFail { error, .. }) => error,
            _ => "",
        }
    }

    /// Every acknowledged value, with its offset and the position of its acknowledgement.
    fn acked(&self) -> impl Iterator<Item = Acked<'a>> + '_ {
        self.produces
            .iter()
            .filter_map(|p| match p.outcome {
                ProduceOutcome::Ok { done, base, .. } => Some((p, done, base)),
                _ => None,
            })
            .flat_map(|(p, done, base)| {
                p.values.iter().enumerate().map(move |(i, v)| Acked {
                    tp: p.tp,
                    value: v,
                    offset: base.saturating_add(i as u64),
                    done,
                })
            })
    }

    /// Acknowledged values not at their offset in a final read recorded after the
    /// acknowledgement: at most one per value, against the earliest such final read.
    fn missing_acked(&self) -> Vec<(Acked<'a>, &FinalRead<'a>)> {
        let mut missing = Vec::new();
        for ack in self.acked() {
            let lacking = self
                .finals
                .iter()
                .find(|f| f.tp == ack.tp && f.pos > ack.done && f.by_offset.get(&ack.offset) != Some(&ack.value));
            if let Some(f) = lacking {
                missing.push((ack, f));
            }
        }
        missing
    }
}

#[derive(Clone, Copy)]
struct Acked<'a> {
    tp: Tp<'a>,
    value: &'a str,
    offset: u64,
    done: usize,
}

/// For each query `(key, at)`, the largest value among the items `(key, done, value)` with
/// `done < at` (completed before the query was invoked). A query with no `at` (its invoke is
/// missing) could have been invoked first: it gets `None`.
fn max_completed_before<K: Ord + Clone, V: Ord + Copy>(
    items: &[(K, usize, V)],
    queries: &[(K, Option<usize>)],
) -> Vec<Option<V>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].1);
    let mut query_order: Vec<usize> = (0..queries.len()).filter(|&q| queries[q].1.is_some()).collect();
    query_order.sort_by_key(|&q| queries[q].1);
    let mut best: BTreeMap<K, V> = BTreeMap::new();
    let mut out = vec![None; queries.len()];
    let mut next = 0;
    for q in query_order {
        let (key, at) = &queries[q];
        let Some(at) = *at else { continue };
        while next < order.len() && items[order[next]].1 < at {
            let (k, _, v) = &items[order[next]];
            best.entry(k.clone()).and_modify(|b| *b = (*b).max(*v)).or_insert(*v);
            next += 1;
        }
        out[q] = best.get(key).copied();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The checks proper.

fn lost_writes(a: &Analysis<'_>) -> Vec<Violation> {
    a.missing_acked()
        .into_iter()
        .map(|(ack, f)| {
            Violation::new(
                K::LostWrite,
                format!(
                    "acked value {:?} ({}) at {} offset {} is missing from {} (high watermark {}): {}",
                    ack.value,
                    a.at(ack.done),
                    tp_name(ack.tp),
                    ack.offset,
                    a.at(f.pos),
                    f.hw,
                    what_is_there(f, ack.offset, ack.value)
                ),
            )
        })
        .collect()
}

fn what_is_there(f: &FinalRead<'_>, offset: u64, value: &str) -> String {
    let at_offset = match f.by_offset.get(&offset) {
        Some(other) => format!("offset {offset} holds {other:?}"),
        None => format!("offset {offset} is absent"),
    };
    match f.by_value.get(value) {
        Some(o) => format!("{at_offset}; the value is at offset {o}"),
        None => format!("{at_offset}; the value is nowhere in it"),
    }
}

fn offset_conflicts<'a>(a: &Analysis<'a>) -> Vec<Violation> {
    // (partition, offset, value, position) in history order.
    let mut seen: Vec<(Tp<'a>, u64, &'a str, usize)> = Vec::new();
    for (pos, entry) in a.history.iter().enumerate() {
        match &entry.event {
            Event::ProduceOk { topic, partition, values, base_offset, .. } => {
                for (i, v) in values.iter().enumerate() {
                    seen.push(((topic, *partition), base_offset.saturating_add(i as u64), v, pos));
                }
            }
            Event::FetchOk { topic, partition, records, .. } | Event::FinalRead { topic, partition, records, .. } => {
                for (o, v) in records {
                    seen.push(((topic, *partition), *o, v, pos));
                }
            }
            _ => {}
        }
    }
    let mut first: HashMap<(Tp<'a>, u64), (&'a str, usize)> = HashMap::new();
    let mut reported: HashSet<(Tp<'a>, u64, &'a str)> = HashSet::new();
    let mut out = Vec::new();
    for (tp, offset, value, pos) in seen {
        let (v0, pos0) = *first.entry((tp, offset)).or_insert((value, pos));
        if v0 != value && reported.insert((tp, offset, value)) {
            out.push(Violation::new(
                K::OffsetConflict,
                format!(
                    "{} offset {offset} holds {v0:?} per {} but {value:?} per {}",
                    tp_name(tp),
                    a.at(pos0),
                    a.at(pos)
                ),
            ));
        }
    }
    out
}

fn duplicates(a: &Analysis<'_>) -> Vec<Violation> {
    let mut first: HashMap<&str, (Tp<'_>, u64, usize)> = HashMap::new();
    let mut reported = HashSet::new();
    let mut out = Vec::new();
    for r in &a.reads {
        for (o, v) in r.records {
            let (tp0, o0, pos0) = *first.entry(v.as_str()).or_insert((r.tp, *o, r.pos));
            if (tp0, o0) != (r.tp, *o) && reported.insert(v.as_str()) {
                out.push(Violation::new(
                    K::Duplicate,
                    format!(
                        "value {v:?} read at {} offset {o0} ({}) and at {} offset {o} ({})",
                        tp_name(tp0),
                        a.at(pos0),
                        tp_name(r.tp),
                        a.at(r.pos)
                    ),
                ));
            }
        }
    }
    out
}

fn reorder(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();

    // A process's sequential acknowledged produces to one partition get increasing offsets.
    let oks: Vec<(&Produce<'_>, usize, u64)> = a
        .produces
        .iter()
        .filter_map(|p| match p.outcome {
            ProduceOutcome::Ok { done, base, .. } => Some((p, done, base)),
            _ => None,
        })
        .collect();
    let items: Vec<_> = oks.iter().map(|(p, done, base)| ((p.process, p.tp), *done, (*base, *done))).collect();
    let queries: Vec<_> = oks.iter().map(|(p, _, _)| ((p.process, p.tp), p.invoke)).collect();
    for ((p, done, base), prior) in oks.iter().zip(max_completed_before(&items, &queries)) {
        if let Some((prior_base, prior_done)) = prior {
            if prior_base >= *base {
                out.push(Violation::new(
                    K::Reorder,
                    format!(
                        "process {} on {}: {} got base offset {base}, but {} completed before it was invoked \
                         with base offset {prior_base}",
                        p.process,
                        tp_name(p.tp),
                        a.at(*done),
                        a.at(prior_done)
                    ),
                ));
            }
        }
    }

    // A process's sequential fetches never see the high watermark go back.
    let fetch_oks: Vec<(&Fetch<'_>, usize, u64)> = a
        .fetches
        .iter()
        .filter_map(|f| match f.outcome {
            FetchOutcome::Ok { done, hw, .. } => Some((f, done, hw)),
            _ => None,
        })
        .collect();
    let items: Vec<_> = fetch_oks.iter().map(|(f, done, hw)| ((f.process, f.tp), *done, (*hw, *done))).collect();
    let queries: Vec<_> = fetch_oks.iter().map(|(f, _, _)| ((f.process, f.tp), f.invoke)).collect();
    for ((f, done, hw), prior) in fetch_oks.iter().zip(max_completed_before(&items, &queries)) {
        if let Some((prior_hw, prior_done)) = prior {
            if prior_hw > *hw {
                out.push(Violation::new(
                    K::HighWatermarkRegression,
                    format!(
                        "process {} on {}: {} reported high watermark {hw} after {} reported {prior_hw}",
                        f.process,
                        tp_name(f.tp),
                        a.at(*done),
                        a.at(prior_done)
                    ),
                ));
            }
        }
    }

    // A final read's high watermark is at least every one reported before it.
    let items: Vec<_> = a.reads.iter().map(|r| (r.tp, r.pos, (r.hw, r.pos))).collect();
    let queries: Vec<_> = a.finals.iter().map(|f| (f.tp, Some(f.pos))).collect();
    for (f, prior) in a.finals.iter().zip(max_completed_before(&items, &queries)) {
        if let Some((prior_hw, prior_pos)) = prior {
            if prior_hw > f.hw {
                out.push(Violation::new(
                    K::HighWatermarkRegression,
                    format!(
                        "{}: {} reported high watermark {} after {} reported {prior_hw}",
                        tp_name(f.tp),
                        a.at(f.pos),
                        f.hw,
                        a.at(prior_pos)
                    ),
                ));
            }
        }
    }
    out
}

fn prefix_closure(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();

    // An acknowledged value missing from the final read although a later read went past it.
    for (ack, f) in a.missing_acked() {
        let beyond = a.reads.iter().find(|r| {
            r.tp == ack.tp && r.invoke.is_some_and(|i| i > ack.done) && r.records.iter().any(|(o, _)| *o > ack.offset)
        });
        if let Some(r) = beyond {
            let o = r.records.iter().map(|(o, _)| *o).max().unwrap_or_default();
            out.push(Violation::new(
                K::PrefixClosure,
                format!(
                    "acked value {:?} ({}) at {} offset {} is missing from {}, yet {}, invoked after the ack, \
                     returned offset {o}",
                    ack.value,
                    a.at(ack.done),
                    tp_name(ack.tp),
                    ack.offset,
                    a.at(f.pos),
                    a.at(r.pos)
                ),
            ));
        }
    }

    // A fetch from below the known-readable frontier must return something. (Its own high watermark
    // does not count: a long poll may time out just as records arrive.)
    let mut items: Vec<(Tp<'_>, usize, (u64, usize))> = a.reads.iter().map(|r| (r.tp, r.pos, (r.hw, r.pos))).collect();
    for ack in a.acked() {
        items.push((ack.tp, ack.done, (ack.offset.saturating_add(1), ack.done)));
    }
    let empty: Vec<(&Fetch<'_>, usize)> = a
        .fetches
        .iter()
        .filter_map(|f| match f.outcome {
            FetchOutcome::Ok { done, records: [], .. } => Some((f, done)),
            _ => None,
        })
        .collect();
    let queries: Vec<_> = empty.iter().map(|(f, _)| (f.tp, f.invoke)).collect();
    for ((f, done), prior) in empty.iter().zip(max_completed_before(&items, &queries)) {
        if let Some((frontier, source)) = prior {
            if f.offset < frontier {
                out.push(Violation::new(
                    K::PrefixNotReadable,
                    format!(
                        "{} on {} from offset {} returned no records, but offsets below {frontier} were already \
                         readable per {}",
                        a.at(*done),
                        tp_name(f.tp),
                        f.offset,
                        a.at(source)
                    ),
                ));
            }
        }
    }

    // A final read covers the whole log: offsets 0, 1, ... up to its high watermark.
    for f in &a.finals {
        let mut expected = 0u64;
        let mut problem = None;
        for (o, _) in f.records.iter().filter(|(o, _)| *o < f.hw) {
            if *o != expected {
                problem = Some(if *o > expected {
                    format!("offsets {expected}..{} are missing", o - 1)
                } else {
                    format!("offset {o} comes after offset {}", expected.saturating_sub(1))
                });
                break;
            }
            expected += 1;
        }
        if problem.is_none() && expected < f.hw {
            problem = Some(format!("offsets {expected}..{} are missing", f.hw - 1));
        }
        if let Some(problem) = problem {
            out.push(Violation::new(
                K::FinalReadGap,
                format!("{} of {} (high watermark {}): {problem}", a.at(f.pos), tp_name(f.tp), f.hw),
            ));
        }
    }
    out
}

fn phantoms(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut reported: HashSet<(Tp<'_>, &str)> = HashSet::new();
    for r in &a.reads {
        for (o, v) in r.records {
            if reported.contains(&(r.tp, v.as_str())) {
                continue;
            }
            let why = phantom_reason(a, r, v);
            if let Some(why) = why {
                reported.insert((r.tp, v.as_str()));
                out.push(Violation::new(
                    K::Phantom,
                    format!("value {v:?} at {} offset {o}, read by {}, {why}", tp_name(r.tp), a.at(r.pos)),
                ));
            }
        }
        let past: Vec<u64> = r.records.iter().map(|(o, _)| *o).filter(|o| *o >= r.hw).collect();
        if let Some(first) = past.first() {
            out.push(Violation::new(
                K::ReadPastHighWatermark,
                format!(
                    "{} on {} returned offset {first} at or above its high watermark {} ({} of {} records past it)",
                    a.at(r.pos),
                    tp_name(r.tp),
                    r.hw,
                    past.len(),
                    r.records.len()
                ),
            ));
        }
    }
    out
}

/// Why reading `value` in `read` is a phantom, or `None` if it is not.
fn phantom_reason(a: &Analysis<'_>, read: &Read<'_>, value: &str) -> Option<String> {
    let Some(ids) = a.attempts.get(value) else {
        return Some("was never produced".to_string());
    };
    let here: Vec<&Produce<'_>> = ids.iter().map(|&id| &a.produces[id]).filter(|p| p.tp == read.tp).collect();
    if here.is_empty() {
        let elsewhere: BTreeSet<String> = ids.iter().map(|&id| tp_name(a.produces[id].tp)).collect();
        return Some(format!("was produced only to {}", elsewhere.into_iter().collect::<Vec<_>>().join(", ")));
    }
    let before: Vec<&Produce<'_>> = here.iter().copied().filter(|p| p.invoke.unwrap_or(0) < read.pos).collect();
    if before.is_empty() {
        let first = here.iter().filter_map(|p| p.invoke).min().map(|p| a.at(p)).unwrap_or_default();
        return Some(format!("was read before its produce was invoked ({first})"));
    }
    let definite = |p: &Produce<'_>| match p.outcome {
        ProduceOutcome::Failed { done, definite: true } => Some(done),
        _ => None,
    };
    if before.iter().all(|p| definite(p).is_some()) {
        let fails: Vec<String> = before
            .iter()
            .filter_map(|p| definite(p))
            .map(|done| format!("{}: {:?}", a.at(done), a.error_of(done)))
            .collect();
        return Some(format!("but its produce failed definitively ({})", fails.join("; ")));
    }
    None
}

fn polls(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();

    // Every fetch: records start at the requested offset and are contiguous.
    for f in &a.fetches {
        let FetchOutcome::Ok { done, records, .. } = f.outcome else { continue };
        let mut expected = f.offset;
        for (i, (o, _)) in records.iter().enumerate() {
            let what = if i == 0 { "first record" } else { "next record" };
            if *o != expected {
                let (kind, why) = if *o > expected {
                    (K::Skip, format!("{what} is offset {o}: offsets {expected}..{} skipped", o - 1))
                } else {
                    (K::NonMonotonicPoll, format!("{what} is offset {o}, expected {expected}"))
                };
                out.push(Violation::new(
                    kind,
                    format!("{} on {} from offset {}: {why}", a.at(done), tp_name(f.tp), f.offset),
                ));
                break;
            }
            expected = expected.saturating_add(1);
        }
    }

    // `assign` consumers: each fetch asks for exactly the consumer's position.
    let mut by_consumer: BTreeMap<(u64, Tp<'_>), Vec<&Fetch<'_>>> = BTreeMap::new();
    for f in a.fetches.iter().filter(|f| f.invoke.is_some()) {
        by_consumer.entry((f.process, f.tp)).or_default().push(f);
    }
    for ((process, tp), mut fetches) in by_consumer {
        fetches.sort_by_key(|f| f.invoke);
        let next_after = |f: &Fetch<'_>| match f.outcome {
            FetchOutcome::Ok { records: [.., (last, _)], .. } => Some(last.saturating_add(1)),
            _ => None,
        };
        let chained = fetches.windows(2).any(|w| next_after(w[0]) == Some(w[1].offset));
        if !chained {
            continue;
        }
        // (position, where it came from)
        let mut position: Option<(u64, usize)> = None;
        for f in fetches {
            let invoke = f.invoke.unwrap_or_default();
            if let Some((at, source)) = position {
                if f.offset != at {
                    let (kind, how) = if f.offset > at {
                        (K::Skip, format!("skipping offsets {at}..{}", f.offset - 1))
                    } else {
                        (K::NonMonotonicPoll, "going back".to_string())
                    };
                    out.push(Violation::new(
                        kind,
                        format!(
                            "assign consumer (process {process}) on {}: {} asked for offset {} although its \
                             position was {at} after {}, {how}",
                            tp_name(tp),
                            a.at(invoke),
                            f.offset,
                            a.at(source)
                        ),
                    ));
                }
            }
            position = Some(match (next_after(f), f.outcome) {
                (Some(next), FetchOutcome::Ok { done, .. }) => (next, done),
                _ => (f.offset, invoke),
            });
        }
    }
    out
}

fn commits(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let oks: Vec<(&Commit<'_>, usize)> = a.commits.iter().filter_map(|c| c.ok.map(|done| (c, done))).collect();
    let gens: Vec<_> = oks.iter().map(|(c, done)| ((c.group, c.tp), *done, (c.generation, *done))).collect();
    let offsets: Vec<_> = oks.iter().map(|(c, done)| ((c.group, c.tp), *done, (c.offset, *done))).collect();
    let queries: Vec<_> = oks.iter().map(|(c, _)| ((c.group, c.tp), c.invoke)).collect();
    let prior_gen = max_completed_before(&gens, &queries);
    let prior_offset = max_completed_before(&offsets, &queries);
    for (((c, done), prior_gen), prior_offset) in oks.iter().zip(prior_gen).zip(prior_offset) {
        let name = format!("group {:?} on {}", c.group, tp_name(c.tp));
        if let Some((g, g_done)) = prior_gen {
            if c.generation < g {
                out.push(Violation::new(
                    K::StaleGenerationAccepted,
                    format!(
                        "{name}: {} of offset {} in generation {} succeeded after {} in generation {g}",
                        a.at(*done),
                        c.offset,
                        c.generation,
                        a.at(g_done)
                    ),
                ));
                continue;
            }
        }
        if let Some((o, o_done)) = prior_offset {
            if c.offset < o {
                out.push(Violation::new(
                    K::CommitRegression,
                    format!(
                        "{name}: {} committed offset {} (generation {}) after {} committed offset {o}",
                        a.at(*done),
                        c.offset,
                        c.generation,
                        a.at(o_done)
                    ),
                ));
            }
        }
    }

    // (group, partition, offset) → the earliest invoke of a commit of it (0 when the invoke is missing).
    let mut first_try: HashMap<(&str, Tp<'_>, u64), usize> = HashMap::new();
    for c in &a.commits {
        let at = c.invoke.unwrap_or(0);
        first_try.entry((c.group, c.tp, c.offset)).and_modify(|p| *p = (*p).min(at)).or_insert(at);
    }
    let queries: Vec<_> = a.offset_fetches.iter().map(|f| ((f.group, f.tp), Some(f.pos))).collect();
    for (f, prior) in a.offset_fetches.iter().zip(max_completed_before(&offsets, &queries)) {
        let name = format!("group {:?} on {}", f.group, tp_name(f.tp));
        let shown = f.offset.map_or_else(|| "nothing".to_string(), |o| format!("offset {o}"));
        if let Some((o, o_done)) = prior {
            if f.offset.is_none_or(|got| got < o) {
                out.push(Violation::new(
                    K::CommittedOffsetRegression,
                    format!("{name}: {} returned {shown} after {} committed offset {o}", a.at(f.pos), a.at(o_done)),
                ));
                continue;
            }
        }
        if let Some(got) = f.offset {
            let tried = a
                .commits
                .iter()
                .any(|c| c.group == f.group && c.tp == f.tp && c.offset == got && c.invoke.unwrap_or(0) < f.pos);
            if !tried {
                out.push(Violation::new(
                    K::PhantomCommittedOffset,
                    format!("{name}: {} returned offset {got}, which no commit before it tried to store", a.at(f.pos)),
                ));
            }
        }
    }
    out
}

fn epochs(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut oks: Vec<(&Produce<'_>, usize, Option<u64>, Option<u64>)> = a
        .produces
        .iter()
        .filter_map(|p| match p.outcome {
            ProduceOutcome::Ok { done, epoch, leader, .. } => Some((p, done, epoch, leader)),
            _ => None,
        })
        .collect();
    oks.sort_by_key(|(_, done, _, _)| *done);

    // One leader per epoch.
    let mut leaders: HashMap<(Tp<'_>, u64), (u64, usize)> = HashMap::new();
    let mut reported = HashSet::new();
    for (p, done, epoch, leader) in &oks {
        let (Some(epoch), Some(leader)) = (*epoch, *leader) else { continue };
        let (first_leader, first_done) = *leaders.entry((p.tp, epoch)).or_insert((leader, *done));
        if first_leader != leader && reported.insert((p.tp, epoch, first_leader.min(leader), first_leader.max(leader)))
        {
            out.push(Violation::new(
                K::EpochConflict,
                format!(
                    "{} leader epoch {epoch}: node {first_leader} acked {} and node {leader} acked {}",
                    tp_name(p.tp),
                    a.at(first_done),
                    a.at(*done)
                ),
            ));
        }
    }

    // A process's sequential acknowledgements never come from an older epoch.
    let with_epoch: Vec<_> = oks.iter().filter_map(|(p, done, e, _)| e.map(|e| (*p, *done, e))).collect();
    let items: Vec<_> = with_epoch.iter().map(|(p, done, e)| ((p.process, p.tp), *done, (*e, *done))).collect();
    let queries: Vec<_> = with_epoch.iter().map(|(p, _, _)| ((p.process, p.tp), p.invoke)).collect();
    for ((p, done, e), prior) in with_epoch.iter().zip(max_completed_before(&items, &queries)) {
        if let Some((prior_e, prior_done)) = prior {
            if prior_e > *e {
                out.push(Violation::new(
                    K::EpochRegression,
                    format!(
                        "process {} on {}: {} was acked in leader epoch {e} after {} was acked in epoch {prior_e}",
                        p.process,
                        tp_name(p.tp),
                        a.at(*done),
                        a.at(prior_done)
                    ),
                ));
            }
        }
    }
    out
}

fn liveness(a: &Analysis<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (pos, tp) in &a.final_failures {
        let error = match a.history.get(*pos).map(|e| &e.event) {
            Some(Event::FinalReadFailed { error, .. }) => error.as_str(),
            _ => "",
        };
        out.push(Violation::new(
            K::FinalReadFailed,
            format!("{}: {} — the cluster did not converge: {error:?}", tp_name(*tp), a.at(*pos)),
        ));
    }

    let failed: HashSet<Tp<'_>> = a.final_failures.iter().map(|(_, tp)| *tp).collect();
    let mut last_final: HashMap<Tp<'_>, usize> = HashMap::new();
    for f in &a.finals {
        last_final.entry(f.tp).and_modify(|p| *p = (*p).max(f.pos)).or_insert(f.pos);
    }
    // Per partition: (count, first) of acked values no final read came after.
    let mut uncovered: BTreeMap<Tp<'_>, (usize, Acked<'_>)> = BTreeMap::new();
    for ack in a.acked() {
        if failed.contains(&ack.tp) || last_final.get(&ack.tp).is_some_and(|&p| p > ack.done) {
            continue;
        }
        uncovered.entry(ack.tp).and_modify(|(n, _)| *n += 1).or_insert((1, ack));
    }
    for (tp, (n, first)) in uncovered {
        let why = match last_final.get(&tp) {
            Some(&p) => format!("they were acked after the last FinalRead ({})", a.at(p)),
            None => "no FinalRead or FinalReadFailed was recorded for it".to_string(),
        };
        out.push(Violation::new(
            K::MissingFinalRead,
            format!(
                "{}: {n} acked values (first {:?}, {}) were never checked by a final read: {why}",
                tp_name(tp),
                first.value,
                a.at(first.done)
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
