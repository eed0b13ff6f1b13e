use super::*;
use crate::history::{read_jsonl, to_jsonl, Recorder};
use crate::report::{summary_line, ViolationKind};

const T: &str = "t";

/// Builds histories tersely: topic "t", time = one tick per entry.
#[derive(Default)]
struct H {
    r: Recorder,
    time_ms: u64,
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn recs(records: &[(u64, &str)]) -> Vec<(u64, String)> {
    records.iter().map(|(o, v)| (*o, v.to_string())).collect()
}

impl H {
    fn new() -> Self {
        Self::default()
    }

    fn ev(&mut self, process: u64, event: Event) -> &mut Self {
        self.time_ms += 1;
        self.r.record(process, self.time_ms, event);
        self
    }

    fn produce_invoke(&mut self, p: u64, part: u32, values: &[&str]) -> &mut Self {
        self.ev(p, Event::ProduceInvoke { topic: T.into(), partition: part, values: strings(values) })
    }

    fn produce_ok_by(
        &mut self,
        p: u64,
        part: u32,
        values: &[&str],
        base: u64,
        epoch: Option<u64>,
        leader: Option<u64>,
    ) -> &mut Self {
        self.ev(
            p,
            Event::ProduceOk {
                topic: T.into(),
                partition: part,
                values: strings(values),
                base_offset: base,
                leader_epoch: epoch,
                leader,
            },
        )
    }

    fn produce_ok(&mut self, p: u64, part: u32, values: &[&str], base: u64) -> &mut Self {
        self.produce_ok_by(p, part, values, base, None, None)
    }

    fn produce(&mut self, p: u64, part: u32, values: &[&str], base: u64) -> &mut Self {
        self.produce_invoke(p, part, values).produce_ok(p, part, values, base)
    }

    fn produce_fail(&mut self, p: u64, part: u32, values: &[&str], definite: bool) -> &mut Self {
        self.ev(
            p,
            Event::ProduceFail {
                topic: T.into(),
                partition: part,
                values: strings(values),
                definite,
                error: if definite { "NOT_LEADER".into() } else { "timeout".into() },
            },
        )
    }

    fn fetch_invoke(&mut self, p: u64, part: u32, offset: u64) -> &mut Self {
        self.ev(p, Event::FetchInvoke { topic: T.into(), partition: part, offset })
    }

    fn fetch_ok(&mut self, p: u64, part: u32, offset: u64, records: &[(u64, &str)], hw: u64) -> &mut Self {
        self.ev(
            p,
            Event::FetchOk { topic: T.into(), partition: part, offset, records: recs(records), high_watermark: hw },
        )
    }

    fn fetch(&mut self, p: u64, part: u32, offset: u64, records: &[(u64, &str)], hw: u64) -> &mut Self {
        self.fetch_invoke(p, part, offset).fetch_ok(p, part, offset, records, hw)
    }

    fn final_read(&mut self, part: u32, records: &[(u64, &str)], hw: u64) -> &mut Self {
        self.ev(0, Event::FinalRead { topic: T.into(), partition: part, records: recs(records), high_watermark: hw })
    }

    fn commit_invoke(&mut self, p: u64, offset: u64, generation: u64) -> &mut Self {
        self.ev(p, Event::CommitInvoke { group: "g".into(), topic: T.into(), partition: 0, offset, generation })
    }

    fn commit_ok(&mut self, p: u64, offset: u64, generation: u64) -> &mut Self {
        self.ev(p, Event::CommitOk { group: "g".into(), topic: T.into(), partition: 0, offset, generation })
    }

    fn commit(&mut self, p: u64, offset: u64, generation: u64) -> &mut Self {
        self.commit_invoke(p, offset, generation).commit_ok(p, offset, generation)
    }

    fn offset_fetch(&mut self, p: u64, offset: Option<u64>) -> &mut Self {
        self.ev(p, Event::OffsetFetchOk { group: "g".into(), topic: T.into(), partition: 0, offset })
    }

    fn entries(&self) -> Vec<Entry> {
        self.r.entries()
    }
}

/// A named way to build a history.
type Case = (&'static str, fn(&mut H));

fn kinds(violations: &[Violation]) -> Vec<(u8, ViolationKind)> {
    violations.iter().map(|v| (v.invariant, v.kind)).collect()
}

/// A history with two producers, an assign consumer, a concurrent reader, retries, commits and final
/// reads of two partitions, all correct.
fn clean() -> H {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a0", "a1"])
        .produce_invoke(2, 0, &["b0"]) // concurrent with process 1's produce
        .produce_ok_by(2, 0, &["b0"], 0, Some(1), Some(7))
        .produce_ok_by(1, 0, &["a0", "a1"], 1, Some(1), Some(7))
        .fetch(3, 0, 0, &[(0, "b0"), (1, "a0")], 3)
        .produce_invoke(1, 0, &["a2"])
        .produce_fail(1, 0, &["a2"], true) // refused: never written
        .produce_invoke(1, 0, &["a2"]) // retried
        .produce_fail(1, 0, &["a2"], false) // timed out, but it did land
        .produce_invoke(1, 0, &["a3"])
        .produce_ok_by(1, 0, &["a3"], 4, Some(2), Some(8)) // new leader, new epoch
        .fetch(3, 0, 2, &[(2, "a1"), (3, "a2")], 5)
        .fetch(3, 0, 4, &[(4, "a3")], 5)
        .fetch(3, 0, 5, &[], 5) // long poll timed out
        .fetch(4, 0, 1, &[(1, "a0")], 5) // a reader re-reading from anywhere
        .fetch(4, 0, 0, &[(0, "b0")], 5)
        .produce_invoke(2, 0, &["b1"]) // never completes: indeterminate, never lands
        .produce(2, 1, &["c0", "c1"], 0)
        .fetch_invoke(3, 1, 0)
        .ev(3, Event::FetchFail { topic: T.into(), partition: 1, offset: 0, error: "NOT_LEADER".into() })
        .fetch(3, 1, 0, &[(0, "c0"), (1, "c1")], 2)
        .commit(3, 2, 1)
        .offset_fetch(5, Some(2))
        .commit(3, 5, 1)
        .commit_invoke(6, 6, 2) // a new generation, concurrent with a stale commit that is refused
        .commit_invoke(3, 4, 1)
        .ev(
            3,
            Event::CommitFail {
                group: "g".into(),
                topic: T.into(),
                partition: 0,
                offset: 4,
                generation: 1,
                error: "ILLEGAL_GENERATION".into(),
            },
        )
        .commit_ok(6, 6, 2)
        .offset_fetch(5, Some(6))
        .final_read(0, &[(0, "b0"), (1, "a0"), (2, "a1"), (3, "a2"), (4, "a3")], 5)
        .final_read(1, &[(0, "c0"), (1, "c1")], 2);
    h
}

#[test]
fn clean_history_passes_every_check() {
    let entries = clean().entries();
    let report = check(&entries);
    assert!(report.is_ok(), "{report}");
    for check in [
        check_well_formed,
        check_lost_writes,
        check_offset_conflicts,
        check_duplicates,
        check_reorder,
        check_prefix_closure,
        check_phantoms,
        check_polls,
        check_commits,
        check_epochs,
        check_liveness,
    ] {
        assert!(check(&entries).is_empty());
    }
    let s = &report.stats;
    assert_eq!((s.acked_values, s.reads, s.final_reads), (6, 7, 2));
    assert_eq!((s.produce_definite_failures, s.produce_indeterminate_failures, s.produce_unfinished), (1, 1, 1));
    assert_eq!((s.commits_ok, s.commit_failures, s.offset_fetches, s.fetch_failures), (3, 1, 2, 1));
    assert_eq!(summary_line(&report), "ok: 6 acked, 7 reads");
}

#[test]
fn an_empty_history_is_clean() {
    let report = check(&[]);
    assert!(report.is_ok());
    assert_eq!(summary_line(&report), "ok: 0 acked, 0 reads");
}

#[test]
fn jsonl_round_trip_preserves_the_verdict() {
    let mut h = clean();
    h.final_read(0, &[(0, "b0")], 1); // loses four acked values
    let entries = h.entries();
    let back = read_jsonl(to_jsonl(&entries).unwrap().as_bytes()).unwrap();
    assert_eq!(back, entries);
    let report = check(&back);
    assert!(!report.is_ok());
    assert_eq!(report, check(&entries));
}

// --- inv 1 / 12 -------------------------------------------------------------------------------

#[test]
fn lost_write_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b"], 0).produce(1, 0, &["c"], 2).final_read(0, &[(0, "a"), (1, "x")], 2);
    let v = check_lost_writes(&h.entries());
    assert_eq!(kinds(&v), [(1, K::LostWrite), (1, K::LostWrite)]);
    assert!(v[0].detail.contains(r#"acked value "b""#) && v[0].detail.contains(r#"offset 1 holds "x""#), "{}", v[0]);
    assert!(v[1].detail.contains(r#""c""#) && v[1].detail.contains("offset 2 is absent"), "{}", v[1]);
}

#[test]
fn acked_value_at_the_wrong_offset_is_a_lost_write() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 1).final_read(0, &[(0, "a")], 1);
    let v = check_lost_writes(&h.entries());
    assert_eq!(kinds(&v), [(1, K::LostWrite)]);
    assert!(v[0].detail.contains("the value is at offset 0"), "{}", v[0]);
}

#[test]
fn lost_write_is_reported_once_and_not_again_as_liveness() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).final_read(0, &[], 0);
    let report = check(&h.entries());
    assert_eq!(kinds(&report.violations), [(1, K::LostWrite)]);
    assert!(check_liveness(&h.entries()).is_empty());
}

#[test]
fn every_final_read_after_the_ack_must_hold_it() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).final_read(0, &[(0, "a")], 1).final_read(0, &[], 0);
    assert_eq!(kinds(&check_lost_writes(&h.entries())), [(1, K::LostWrite)]);
}

#[test]
fn acks_after_the_final_read_are_not_lost_but_unverified() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).final_read(0, &[(0, "a")], 1).produce(1, 0, &["b"], 1);
    assert!(check_lost_writes(&h.entries()).is_empty());
    let v = check_liveness(&h.entries());
    assert_eq!(kinds(&v), [(12, K::MissingFinalRead)]);
    assert!(v[0].detail.contains("after the last FinalRead"), "{}", v[0]);
}

#[test]
fn missing_final_read_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).produce(1, 1, &["b"], 0).final_read(1, &[(0, "b")], 1);
    let v = check_liveness(&h.entries());
    assert_eq!(kinds(&v), [(12, K::MissingFinalRead)]);
    assert!(v[0].detail.starts_with("t/0: 1 acked values"), "{}", v[0]);
    // Partitions nobody acknowledged a write to need no final read.
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_fail(1, 0, &["a"], false);
    assert!(check_liveness(&h.entries()).is_empty());
}

#[test]
fn failed_final_read_is_a_liveness_violation_reported_once() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0)
        .ev(0, Event::FinalReadFailed { topic: T.into(), partition: 0, error: "no leader within 30s".into() });
    let report = check(&h.entries());
    assert_eq!(kinds(&report.violations), [(12, K::FinalReadFailed)]);
    assert!(report.violations[0].detail.contains("no leader within 30s"));
}

// --- inv 2 / 6 --------------------------------------------------------------------------------

#[test]
fn offset_conflict_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).fetch(2, 0, 0, &[(0, "z")], 1).fetch(3, 0, 0, &[(0, "z")], 1);
    let v = check_offset_conflicts(&h.entries());
    assert_eq!(kinds(&v), [(2, K::OffsetConflict)]); // once per (offset, value)
    assert!(v[0].detail.contains(r#"t/0 offset 0 holds "a" per ProduceOk #1"#), "{}", v[0]);
    assert!(v[0].detail.contains(r#""z" per FetchOk #3 (process 2)"#), "{}", v[0]);

    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_invoke(2, 0, &["b"]);
    h.fetch(3, 0, 0, &[(0, "a")], 1).final_read(0, &[(0, "b")], 1);
    assert_eq!(kinds(&check_offset_conflicts(&h.entries())), [(2, K::OffsetConflict)]);

    // Two acks for one offset.
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).produce(2, 0, &["b"], 0);
    assert_eq!(kinds(&check_offset_conflicts(&h.entries())), [(2, K::OffsetConflict)]);
}

#[test]
fn same_offset_in_different_partitions_is_no_conflict() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).produce(1, 1, &["b"], 0).fetch(2, 0, 0, &[(0, "a")], 1).fetch(2, 1, 0, &[(0, "b")], 1);
    assert!(check_offset_conflicts(&h.entries()).is_empty());
}

#[test]
fn duplicate_is_caught() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"])
        .produce_fail(1, 0, &["a"], false)
        .produce(1, 0, &["a"], 1) // the retry landed again
        .final_read(0, &[(0, "a"), (1, "a")], 2);
    let v = check_duplicates(&h.entries());
    assert_eq!(kinds(&v), [(6, K::Duplicate)]);
    assert!(v[0].detail.contains("t/0 offset 0") && v[0].detail.contains("t/0 offset 1"), "{}", v[0]);

    // Across reads, too.
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).fetch(2, 0, 0, &[(0, "a")], 1).fetch(2, 0, 1, &[(1, "a")], 2);
    assert_eq!(kinds(&check_duplicates(&h.entries())), [(6, K::Duplicate)]);

    // Reading one record many times is fine.
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).fetch(2, 0, 0, &[(0, "a")], 1).fetch(3, 0, 0, &[(0, "a")], 1).final_read(
        0,
        &[(0, "a")],
        1,
    );
    assert!(check_duplicates(&h.entries()).is_empty());
}

// --- inv 3 ------------------------------------------------------------------------------------

#[test]
fn reorder_of_sequential_produces_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 5).produce(1, 0, &["b"], 4);
    let v = check_reorder(&h.entries());
    assert_eq!(kinds(&v), [(3, K::Reorder)]);
    assert!(v[0].detail.contains("process 1 on t/0: ProduceOk #3 (process 1) got base offset 4"), "{}", v[0]);

    let mut h = H::new();
    h.produce(1, 0, &["a"], 5).produce(1, 0, &["b"], 5);
    assert_eq!(kinds(&check_reorder(&h.entries())), [(3, K::Reorder)]);
}

#[test]
fn concurrent_or_other_process_produces_may_complete_in_any_order() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_invoke(1, 0, &["b"]).produce_ok(1, 0, &["b"], 4).produce_ok(1, 0, &["a"], 5);
    h.produce(2, 0, &["c"], 3); // another process
    h.produce(1, 1, &["d"], 0); // another partition
    assert!(check_reorder(&h.entries()).is_empty());
}

#[test]
fn high_watermark_regression_is_caught() {
    let mut h = H::new();
    h.fetch(1, 0, 0, &[], 5).fetch(1, 0, 0, &[], 4);
    let v = check_reorder(&h.entries());
    assert_eq!(kinds(&v), [(3, K::HighWatermarkRegression)]);
    assert!(v[0].detail.contains("reported high watermark 4 after FetchOk #1 (process 1) reported 5"), "{}", v[0]);

    // A final read below a watermark any reader saw earlier.
    let mut h = H::new();
    h.fetch(1, 0, 0, &[], 5).final_read(0, &[], 3);
    assert_eq!(kinds(&check_reorder(&h.entries())), [(3, K::HighWatermarkRegression)]);
}

#[test]
fn high_watermarks_of_overlapping_or_other_readers_are_not_compared() {
    let mut h = H::new();
    h.fetch_invoke(1, 0, 0).fetch_invoke(1, 0, 0).fetch_ok(1, 0, 0, &[], 5).fetch_ok(1, 0, 0, &[], 4);
    h.fetch(2, 0, 0, &[], 3).fetch(1, 1, 0, &[], 0);
    assert!(check_reorder(&h.entries()).is_empty());
}

// --- inv 4 ------------------------------------------------------------------------------------

#[test]
fn prefix_closure_violation_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0)
        .produce_invoke(1, 0, &["b"])
        .produce_fail(1, 0, &["b"], false)
        .fetch(2, 0, 1, &[(1, "b")], 2)
        .final_read(0, &[(1, "b")], 2);
    let v = check_prefix_closure(&h.entries());
    assert!(kinds(&v).contains(&(4, K::PrefixClosure)), "{v:?}");
    let closure = v.iter().find(|v| v.kind == K::PrefixClosure).unwrap();
    assert!(closure.detail.contains(r#"acked value "a""#), "{closure}");
    assert!(closure.detail.contains("FetchOk #5 (process 2), invoked after the ack, returned offset 1"), "{closure}");
    // The final read has a hole at 0, too.
    assert!(kinds(&v).contains(&(4, K::FinalReadGap)), "{v:?}");
}

#[test]
fn reads_invoked_before_the_ack_completed_do_not_count_for_prefix_closure() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"])
        .produce_invoke(1, 0, &["b"])
        .fetch_invoke(2, 0, 1)
        .produce_ok(1, 0, &["a"], 0)
        .produce_fail(1, 0, &["b"], false)
        .fetch_ok(2, 0, 1, &[(1, "b")], 2)
        .final_read(0, &[(0, "a"), (1, "b")], 2);
    assert!(check_prefix_closure(&h.entries()).is_empty());
}

#[test]
fn empty_fetch_below_what_is_known_readable_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b"], 0).fetch(2, 0, 1, &[], 2);
    let v = check_prefix_closure(&h.entries());
    assert_eq!(kinds(&v), [(4, K::PrefixNotReadable)]);
    assert!(v[0].detail.contains("from offset 1 returned no records, but offsets below 2"), "{}", v[0]);

    // Known from another reader's high watermark.
    let mut h = H::new();
    h.fetch(2, 0, 0, &[], 3).fetch(3, 0, 2, &[], 2);
    assert_eq!(kinds(&check_prefix_closure(&h.entries())), [(4, K::PrefixNotReadable)]);
}

#[test]
fn empty_fetch_is_fine_at_the_end_of_the_log_or_when_concurrent() {
    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).fetch(2, 0, 1, &[], 1); // caught up
    h.fetch_invoke(3, 0, 1).produce(1, 0, &["b"], 1).fetch_ok(3, 0, 1, &[], 2); // long poll raced the ack
    h.final_read(0, &[(0, "a"), (1, "b")], 2);
    assert!(check_prefix_closure(&h.entries()).is_empty());
}

#[test]
fn final_read_gap_is_caught() {
    for (records, hw, problem) in [
        (&[(0, "a"), (2, "c")][..], 3, "offsets 1..1 are missing"),
        (&[(1, "b"), (2, "c")][..], 3, "offsets 0..0 are missing"),
        (&[(0, "a")][..], 3, "offsets 1..2 are missing"),
        (&[(0, "a"), (1, "b"), (1, "b")][..], 2, "offset 1 comes after offset 1"),
    ] {
        let mut h = H::new();
        h.final_read(0, records, hw);
        let v = check_prefix_closure(&h.entries());
        assert_eq!(kinds(&v), [(4, K::FinalReadGap)], "{records:?}");
        assert!(v[0].detail.contains(problem), "{}", v[0]);
    }
}

// --- inv 5 ------------------------------------------------------------------------------------

#[test]
fn phantoms_are_caught() {
    let cases: [Case; 4] = [
        ("was never produced", |h| {
            h.fetch(2, 0, 0, &[(0, "ghost")], 1);
        }),
        ("was produced only to t/1", |h| {
            h.produce(1, 1, &["a"], 0).fetch(2, 0, 0, &[(0, "a")], 1);
        }),
        ("produce failed definitively (ProduceFail #1 (process 1): \"NOT_LEADER\")", |h| {
            h.produce_invoke(1, 0, &["a"]).produce_fail(1, 0, &["a"], true).fetch(2, 0, 0, &[(0, "a")], 1);
        }),
        ("was read before its produce was invoked (ProduceInvoke #2 (process 1))", |h| {
            h.fetch(2, 0, 0, &[(0, "a")], 1).produce_invoke(1, 0, &["a"]);
        }),
    ];
    for (why, build) in cases {
        let mut h = H::new();
        build(&mut h);
        let v = check_phantoms(&h.entries());
        assert_eq!(kinds(&v), [(5, K::Phantom)], "{why}");
        assert!(v[0].detail.contains(why), "{}", v[0]);
    }
}

#[test]
fn indeterminate_or_retried_produces_may_be_read() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_fail(1, 0, &["a"], false); // timed out
    h.produce_invoke(1, 0, &["b"]).produce_fail(1, 0, &["b"], true).produce_invoke(1, 0, &["b"]); // retry pending
    h.produce_invoke(1, 0, &["c"]); // concurrent with the read
    h.fetch(2, 0, 0, &[(0, "a"), (1, "b"), (2, "c")], 3);
    assert!(check_phantoms(&h.entries()).is_empty());
    assert!(check_well_formed(&h.entries()).is_empty());
}

#[test]
fn read_past_high_watermark_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b"], 0).fetch(2, 0, 0, &[(0, "a"), (1, "b")], 1);
    let v = check_phantoms(&h.entries());
    assert_eq!(kinds(&v), [(5, K::ReadPastHighWatermark)]);
    assert!(v[0].detail.contains("returned offset 1 at or above its high watermark 1 (1 of 2 records"), "{}", v[0]);

    let mut h = H::new();
    h.produce(1, 0, &["a"], 0).final_read(0, &[(0, "a")], 0);
    assert_eq!(kinds(&check_phantoms(&h.entries())), [(5, K::ReadPastHighWatermark)]);
}

// --- inv 7 ------------------------------------------------------------------------------------

#[test]
fn gaps_and_disorder_inside_a_fetch_are_caught() {
    for (offset, records, kind, what) in [
        (0, &[(1, "b")][..], K::Skip, "first record is offset 1: offsets 0..0 skipped"),
        (0, &[(0, "a"), (2, "c")][..], K::Skip, "next record is offset 2: offsets 1..1 skipped"),
        (1, &[(0, "a"), (1, "b")][..], K::NonMonotonicPoll, "first record is offset 0, expected 1"),
        (0, &[(0, "a"), (1, "b"), (0, "a")][..], K::NonMonotonicPoll, "next record is offset 0, expected 2"),
    ] {
        let mut h = H::new();
        h.produce(1, 0, &["a", "b", "c"], 0).fetch(2, 0, offset, records, 3);
        let v = check_polls(&h.entries());
        assert_eq!(kinds(&v), [(7, kind)], "{records:?}");
        assert!(v[0].detail.contains(what), "{}", v[0]);
    }
}

#[test]
fn assign_consumer_skipping_or_going_back_is_caught() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b", "c", "d"], 0);
    h.fetch(2, 0, 0, &[(0, "a")], 4).fetch(2, 0, 1, &[(1, "b")], 4).fetch(2, 0, 3, &[(3, "d")], 4);
    let v = check_polls(&h.entries());
    assert_eq!(kinds(&v), [(7, K::Skip)]);
    assert!(v[0].detail.contains("asked for offset 3 although its position was 2"), "{}", v[0]);
    assert!(v[0].detail.contains("skipping offsets 2..2"), "{}", v[0]);

    let mut h = H::new();
    h.produce(1, 0, &["a", "b", "c", "d"], 0);
    h.fetch(2, 0, 0, &[(0, "a"), (1, "b")], 4).fetch(2, 0, 2, &[], 2).fetch(2, 0, 1, &[(1, "b")], 4);
    let v = check_polls(&h.entries());
    assert_eq!(kinds(&v), [(7, K::NonMonotonicPoll)]);
    assert!(v[0].detail.contains("going back"), "{}", v[0]);
}

#[test]
fn assign_consumer_may_retry_after_failures_and_empty_polls() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b"], 0);
    h.fetch(2, 0, 0, &[(0, "a")], 1)
        .fetch(2, 0, 1, &[], 1)
        .fetch_invoke(2, 0, 1)
        .ev(2, Event::FetchFail { topic: T.into(), partition: 0, offset: 1, error: "NOT_LEADER".into() })
        .fetch(2, 0, 1, &[(1, "b")], 2)
        .fetch(2, 0, 2, &[], 2)
        .fetch_invoke(2, 0, 2); // never answered: the run ended
    assert!(check_polls(&h.entries()).is_empty());
}

#[test]
fn readers_that_never_chain_are_not_assign_consumers() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b", "c"], 0);
    h.fetch(2, 0, 2, &[(2, "c")], 3).fetch(2, 0, 0, &[(0, "a")], 3).fetch(2, 0, 2, &[(2, "c")], 3);
    assert!(check_polls(&h.entries()).is_empty());
}

// --- inv 8 ------------------------------------------------------------------------------------

#[test]
fn commit_regression_is_caught() {
    let mut h = H::new();
    h.commit(1, 5, 1).commit(1, 3, 1);
    let v = check_commits(&h.entries());
    assert_eq!(kinds(&v), [(8, K::CommitRegression)]);
    assert!(v[0].detail.contains(r#"group "g" on t/0: CommitOk #3 (process 1) committed offset 3"#), "{}", v[0]);

    // A newer generation may not go back either.
    let mut h = H::new();
    h.commit(1, 5, 1).commit(2, 3, 2);
    assert_eq!(kinds(&check_commits(&h.entries())), [(8, K::CommitRegression)]);
}

#[test]
fn stale_generation_accepted_is_caught() {
    let mut h = H::new();
    h.commit(1, 5, 2).commit(2, 6, 1);
    let v = check_commits(&h.entries());
    assert_eq!(kinds(&v), [(8, K::StaleGenerationAccepted)]);
    assert!(
        v[0].detail.contains("in generation 1 succeeded after CommitOk #1 (process 1) in generation 2"),
        "{}",
        v[0]
    );
}

#[test]
fn concurrent_commits_and_other_groups_are_not_compared() {
    let mut h = H::new();
    h.commit_invoke(1, 5, 1).commit_invoke(2, 3, 1).commit_ok(1, 5, 1).commit_ok(2, 3, 1);
    h.commit_invoke(3, 9, 1).ev(
        3,
        Event::CommitFail {
            group: "g".into(),
            topic: T.into(),
            partition: 0,
            offset: 9,
            generation: 1,
            error: "COORDINATOR_NOT_AVAILABLE".into(),
        },
    );
    h.commit_invoke(4, 1, 1)
        .ev(4, Event::CommitInvoke { group: "other".into(), topic: T.into(), partition: 0, offset: 1, generation: 1 });
    h.ev(4, Event::CommitOk { group: "other".into(), topic: T.into(), partition: 0, offset: 1, generation: 1 });
    assert!(check_commits(&h.entries()).is_empty());
}

#[test]
fn offset_fetch_regression_is_caught() {
    let mut h = H::new();
    h.commit(1, 5, 1).commit(1, 7, 1).offset_fetch(2, Some(5));
    let v = check_commits(&h.entries());
    assert_eq!(kinds(&v), [(8, K::CommittedOffsetRegression)]);
    assert!(v[0].detail.contains("returned offset 5 after CommitOk #3 (process 1) committed offset 7"), "{}", v[0]);

    let mut h = H::new();
    h.commit(1, 5, 1).offset_fetch(2, None);
    let v = check_commits(&h.entries());
    assert_eq!(kinds(&v), [(8, K::CommittedOffsetRegression)]);
    assert!(v[0].detail.contains("returned nothing"), "{}", v[0]);
}

#[test]
fn phantom_committed_offset_is_caught() {
    let mut h = H::new();
    h.offset_fetch(2, Some(3));
    assert_eq!(kinds(&check_commits(&h.entries())), [(8, K::PhantomCommittedOffset)]);
    // An in-flight commit may already be visible.
    let mut h = H::new();
    h.offset_fetch(2, None).commit_invoke(1, 3, 1).offset_fetch(2, Some(3));
    assert!(check_commits(&h.entries()).is_empty());
}

// --- inv 9 ------------------------------------------------------------------------------------

#[test]
fn two_leaders_in_one_epoch_are_caught() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_ok_by(1, 0, &["a"], 0, Some(3), Some(1));
    h.produce_invoke(2, 0, &["b"]).produce_ok_by(2, 0, &["b"], 1, Some(3), Some(2));
    h.produce_invoke(2, 0, &["c"]).produce_ok_by(2, 0, &["c"], 2, Some(3), Some(2));
    let v = check_epochs(&h.entries());
    assert_eq!(kinds(&v), [(9, K::EpochConflict)]);
    assert!(v[0].detail.contains("t/0 leader epoch 3: node 1 acked ProduceOk #1 (process 1) and node 2"), "{}", v[0]);
}

#[test]
fn epoch_regression_is_caught() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_ok_by(1, 0, &["a"], 0, Some(4), Some(1));
    h.produce_invoke(1, 0, &["b"]).produce_ok_by(1, 0, &["b"], 1, Some(3), Some(2));
    let v = check_epochs(&h.entries());
    assert_eq!(kinds(&v), [(9, K::EpochRegression)]);
    assert!(v[0].detail.contains("was acked in leader epoch 3 after ProduceOk #1 (process 1) was acked in epoch 4"));
}

#[test]
fn epochs_may_rise_and_unknown_epochs_are_skipped() {
    let mut h = H::new();
    h.produce_invoke(1, 0, &["a"]).produce_ok_by(1, 0, &["a"], 0, Some(3), Some(1));
    h.produce_invoke(1, 0, &["b"]).produce_ok_by(1, 0, &["b"], 1, None, Some(2));
    h.produce_invoke(1, 0, &["c"]).produce_ok_by(1, 0, &["c"], 2, Some(4), Some(2));
    h.produce_invoke(1, 1, &["d"]).produce_ok_by(1, 1, &["d"], 0, Some(3), Some(2)); // other partition
                                                                                     // Overlapping produces may complete in either epoch order.
    h.produce_invoke(2, 0, &["e"]).produce_invoke(2, 0, &["f"]);
    h.produce_ok_by(2, 0, &["f"], 4, Some(4), Some(2)).produce_ok_by(2, 0, &["e"], 3, Some(3), Some(1));
    assert!(check_epochs(&h.entries()).is_empty());
}

// --- inv 0 ------------------------------------------------------------------------------------

#[test]
fn malformed_histories_are_reported() {
    let cases: [Case; 6] = [
        ("no open ProduceInvoke", |h| {
            h.produce_ok(1, 0, &["a"], 0);
        }),
        ("no open FetchInvoke", |h| {
            h.fetch_invoke(2, 0, 0).fetch_ok(2, 0, 1, &[], 0);
        }),
        ("no open CommitInvoke", |h| {
            h.commit_invoke(1, 1, 1).commit_ok(2, 1, 1); // another process's invoke
        }),
        ("already produced", |h| {
            h.produce(1, 0, &["a"], 0).produce_invoke(2, 0, &["a"]);
        }),
        ("already produced", |h| {
            h.produce_invoke(1, 0, &["a", "b"]).produce_fail(1, 0, &["a", "b"], true).produce_invoke(1, 0, &["a"]);
        }),
        ("empty batch", |h| {
            h.produce_invoke(1, 0, &[]);
        }),
    ];
    for (what, build) in cases {
        let mut h = H::new();
        build(&mut h);
        let v = check_well_formed(&h.entries());
        assert_eq!(kinds(&v), [(0, K::MalformedHistory)], "{what}");
        assert!(v[0].detail.contains(what), "{}", v[0]);
    }

    let mut entries = H::new().fetch_invoke(1, 0, 0).fetch_invoke(1, 0, 1).entries();
    entries[1].index = 0;
    let v = check_well_formed(&entries);
    assert_eq!(kinds(&v), [(0, K::MalformedHistory)]);
    assert!(v[0].detail.contains("indexes must strictly increase"), "{}", v[0]);
}

#[test]
fn orphan_acks_are_still_checked() {
    let mut h = H::new();
    h.produce_ok(1, 0, &["a"], 0).final_read(0, &[], 0);
    assert_eq!(kinds(&check(&h.entries()).violations), [(0, K::MalformedHistory), (1, K::LostWrite)]);
}

// --- the report -------------------------------------------------------------------------------

#[test]
fn report_lists_violations_by_invariant() {
    let mut h = H::new();
    h.produce(1, 0, &["a", "b"], 0)
        .fetch(2, 0, 0, &[(0, "a"), (1, "ghost")], 1)
        .ev(0, Event::FinalReadFailed { topic: T.into(), partition: 0, error: "timeout".into() });
    let report = check(&h.entries());
    assert_eq!(
        kinds(&report.violations),
        [(2, K::OffsetConflict), (5, K::Phantom), (5, K::ReadPastHighWatermark), (12, K::FinalReadFailed)]
    );
    assert_eq!(
        summary_line(&report),
        "VIOLATIONS: 4 (inv 2: 1 OffsetConflict, inv 5: 1 Phantom + 1 ReadPastHighWatermark, inv 12: 1 FinalReadFailed)"
    );
    let text = report.to_string();
    assert!(text.starts_with("VIOLATIONS: 4"), "{text}");
    assert!(text.contains("\n  [inv 5 Phantom] value \"ghost\" at t/0 offset 1"), "{text}");
    assert!(text.contains("history: 5 entries"), "{text}");
    assert_eq!(text.lines().count(), 6, "{text}");
}

#[test]
fn max_completed_before_only_sees_earlier_completions() {
    let items = [("x", 1, 10), ("x", 3, 30), ("x", 5, 20), ("y", 0, 99)];
    let queries = [("x", Some(0)), ("x", Some(2)), ("x", Some(4)), ("x", Some(9)), ("x", None), ("z", Some(9))];
    assert_eq!(max_completed_before(&items, &queries), [None, Some(10), Some(30), Some(30), None, None]);
}
