//! Partition assignors. Each is a pure function of the members (sorted by id), what each
//! subscribes to, what each owns now, and the partition count of every topic; so every
//! coordinator computes the same assignment from the same inputs.

use std::collections::{BTreeMap, BTreeSet};

use runnel_types::{ErrorCode, RunnelError};

use crate::TopicPartition;

/// How a group's partitions are spread over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Assignor {
    /// Kafka's `range`: per topic, contiguous ranges of partitions, the first members one extra.
    Range,
    /// Kafka's `roundrobin`: all partitions in order, dealt to the members in turn.
    RoundRobin,
    /// Kafka's `cooperative-sticky`: balanced, keeps each member's partitions where it can, and
    /// rebalances incrementally — a member keeps consuming what it keeps; a partition moving
    /// between members is first revoked (one generation), then assigned (the next).
    CooperativeSticky,
}

impl Assignor {
    pub const NAMES: [&'static str; 3] = ["range", "roundrobin", "cooperative-sticky"];

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    pub fn parse(s: &str) -> Result<Self, RunnelError> {
        match s {
            "range" => Ok(Assignor::Range),
            "roundrobin" | "round-robin" => Ok(Assignor::RoundRobin),
            "cooperative-sticky" | "sticky" => Ok(Assignor::CooperativeSticky),
            other => Err(RunnelError::new(
                ErrorCode::InvalidRequest,
                format!("unknown assignor '{other}' (known: {})", Self::NAMES.join(", ")),
            )),
        }
    }

    /// Cooperative assignors never take a partition from a member and give it to another in the
    /// same generation; eager ones revoke everything at every rebalance.
    pub fn is_cooperative(self) -> bool {
        matches!(self, Assignor::CooperativeSticky)
    }

    /// The target assignment. `members`: id → (subscribed topics, currently owned partitions).
    /// `partitions`: topic → partition count (topics missing here are not assigned).
    pub fn assign(
        self,
        members: &BTreeMap<String, (BTreeSet<String>, BTreeSet<TopicPartition>)>,
        partitions: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        match self {
            Assignor::Range => range(members, partitions),
            Assignor::RoundRobin => round_robin(members, partitions),
            Assignor::CooperativeSticky => sticky(members, partitions),
        }
    }
}

type Members = BTreeMap<String, (BTreeSet<String>, BTreeSet<TopicPartition>)>;

fn empty(members: &Members) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    members.keys().map(|m| (m.clone(), BTreeSet::new())).collect()
}

fn range(members: &Members, partitions: &BTreeMap<String, u32>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out = empty(members);
    for (topic, &count) in partitions {
        let subs: Vec<&String> = members.iter().filter(|(_, (t, _))| t.contains(topic)).map(|(m, _)| m).collect();
        if subs.is_empty() {
            continue;
        }
        let per = count / subs.len() as u32;
        let extra = count % subs.len() as u32;
        let mut next = 0u32;
        for (i, m) in subs.iter().enumerate() {
            let n = per + u32::from((i as u32) < extra);
            let set = out.entry((*m).clone()).or_default();
            for p in next..next + n {
                set.insert(TopicPartition::new(topic.clone(), p));
            }
            next += n;
        }
    }
    out
}

fn all_partitions(members: &Members, partitions: &BTreeMap<String, u32>) -> Vec<TopicPartition> {
    let wanted: BTreeSet<&String> = members.values().flat_map(|(t, _)| t.iter()).collect();
    partitions
        .iter()
        .filter(|(t, _)| wanted.contains(t))
        .flat_map(|(t, &n)| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect()
}

fn round_robin(members: &Members, partitions: &BTreeMap<String, u32>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out = empty(members);
    let ids: Vec<&String> = members.keys().collect();
    if ids.is_empty() {
        return out;
    }
    let mut turn = 0usize;
    for tp in all_partitions(members, partitions) {
        // The next member in cyclic order that subscribes to the topic.
        for k in 0..ids.len() {
            let m = ids[(turn + k) % ids.len()];
            if members[m].0.contains(&tp.topic) {
                out.entry(m.clone()).or_default().insert(tp);
                turn = (turn + k + 1) % ids.len();
                break;
            }
        }
    }
    out
}

fn sticky(members: &Members, partitions: &BTreeMap<String, u32>) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out = empty(members);
    let all = all_partitions(members, partitions);
    let all_set: BTreeSet<&TopicPartition> = all.iter().collect();
    // How many partitions each member may hold: the total spread evenly over the members (members
    // with different subscriptions are balanced by the moves below).
    let quota_hi = if members.is_empty() { 0 } else { all.len().div_ceil(members.len()) };
    // 1. Keep what each member owns, as long as it still exists, is still subscribed, nobody
    //    earlier claimed it, and the member stays within its quota.
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for (m, (topics, owned)) in members {
        let set = out.entry(m.clone()).or_default();
        for tp in owned {
            if set.len() < quota_hi && all_set.contains(tp) && topics.contains(&tp.topic) && !taken.contains(tp) {
                taken.insert(tp.clone());
                set.insert(tp.clone());
            }
        }
    }
    // 2. Hand out the rest, each to the subscribed member holding the fewest.
    for tp in &all {
        if taken.contains(tp) {
            continue;
        }
        let best = out
            .iter()
            .filter(|(m, _)| members[*m].0.contains(&tp.topic))
            .min_by_key(|(m, s)| (s.len(), (*m).clone()))
            .map(|(m, _)| m.clone());
        if let Some(m) = best {
            out.entry(m).or_default().insert(tp.clone());
            taken.insert(tp.clone());
        }
    }
    // 3. Even out: move one partition at a time from the fullest member to the emptiest one that
    //    subscribes to its topic, while that narrows the gap. Bounded: each move lowers the sum of
    //    squares of the counts.
    for _ in 0..all.len() * members.len().max(1) {
        let Some((from, from_len)) = out
            .iter()
            .max_by_key(|(m, s)| (s.len(), std::cmp::Reverse((*m).clone())))
            .map(|(m, s)| (m.clone(), s.len()))
        else {
            break;
        };
        let candidate = out[&from].iter().rev().find_map(|tp| {
            out.iter()
                .filter(|(m, s)| **m != from && s.len() + 1 < from_len && members[*m].0.contains(&tp.topic))
                .min_by_key(|(m, s)| (s.len(), (*m).clone()))
                .map(|(m, _)| (tp.clone(), m.clone()))
        });
        let Some((tp, to)) = candidate else { break };
        if let Some(s) = out.get_mut(&from) {
            s.remove(&tp);
        }
        out.entry(to).or_default().insert(tp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str], &[(&str, u32)])]) -> Members {
        spec.iter()
            .map(|(m, topics, owned)| {
                (
                    m.to_string(),
                    (
                        topics.iter().map(|t| t.to_string()).collect(),
                        owned.iter().map(|(t, p)| TopicPartition::new(*t, *p)).collect(),
                    ),
                )
            })
            .collect()
    }

    fn parts(a: &BTreeMap<String, BTreeSet<TopicPartition>>, m: &str) -> Vec<String> {
        a[m].iter().map(|tp| tp.to_string()).collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let ms = members(&[("a", &["t"], &[]), ("b", &["t"], &[]), ("c", &["t"], &[])]);
        let a = Assignor::Range.assign(&ms, &BTreeMap::from([("t".to_string(), 7)]));
        assert_eq!(parts(&a, "a"), ["t/0", "t/1", "t/2"]);
        assert_eq!(parts(&a, "b"), ["t/3", "t/4"]);
        assert_eq!(parts(&a, "c"), ["t/5", "t/6"]);
    }

    #[test]
    fn round_robin_deals_in_turn_and_respects_subscriptions() {
        let ms = members(&[("a", &["t", "u"], &[]), ("b", &["t"], &[])]);
        let a = Assignor::RoundRobin.assign(&ms, &BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]));
        assert_eq!(parts(&a, "a"), ["t/0", "t/2", "u/0", "u/1"]);
        assert_eq!(parts(&a, "b"), ["t/1"]);
    }

    #[test]
    fn six_partitions_three_members_two_each_under_every_assignor() {
        let ms = members(&[("a", &["t"], &[]), ("b", &["t"], &[]), ("c", &["t"], &[])]);
        for asg in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
            let a = asg.assign(&ms, &BTreeMap::from([("t".to_string(), 6)]));
            let mut seen = BTreeSet::new();
            for (m, s) in &a {
                assert_eq!(s.len(), 2, "{asg:?}: member {m} got {s:?}");
                for tp in s {
                    assert!(seen.insert(tp.clone()), "{asg:?}: {tp} assigned twice");
                }
            }
            assert_eq!(seen.len(), 6);
        }
    }

    #[test]
    fn sticky_keeps_owned_partitions_and_balances() {
        // a owned everything; b joins: a keeps 3 of its own, b gets the other 3.
        let owned: Vec<(&str, u32)> = (0..6).map(|p| ("t", p)).collect();
        let ms = members(&[("a", &["t"], &owned), ("b", &["t"], &[])]);
        let a = Assignor::CooperativeSticky.assign(&ms, &BTreeMap::from([("t".to_string(), 6)]));
        assert_eq!(a["a"].len(), 3);
        assert_eq!(a["b"].len(), 3);
        assert!(a["a"].iter().all(|tp| tp.partition < 6));
        // c leaves a 3-member group: a and b keep theirs and split c's.
        let ms = members(&[("a", &["t"], &[("t", 0), ("t", 1)]), ("b", &["t"], &[("t", 2), ("t", 3)])]);
        let a = Assignor::CooperativeSticky.assign(&ms, &BTreeMap::from([("t".to_string(), 6)]));
        assert!(a["a"].contains(&TopicPartition::new("t", 0)) && a["a"].contains(&TopicPartition::new("t", 1)));
        assert!(a["b"].contains(&TopicPartition::new("t", 2)) && a["b"].contains(&TopicPartition::new("t", 3)));
        assert_eq!(a["a"].len() + a["b"].len(), 6);
        assert_eq!(a["a"].len(), 3);
    }

    #[test]
    fn sticky_ignores_claims_on_partitions_that_no_longer_exist_or_are_double_owned() {
        let ms = members(&[("a", &["t"], &[("t", 0), ("t", 9)]), ("b", &["t"], &[("t", 0)])]);
        let a = Assignor::CooperativeSticky.assign(&ms, &BTreeMap::from([("t".to_string(), 2)]));
        assert_eq!(parts(&a, "a"), ["t/0"]);
        assert_eq!(parts(&a, "b"), ["t/1"]);
    }

    #[test]
    fn unknown_assignor_is_named() {
        let e = Assignor::parse("fancy").unwrap_err();
        assert!(e.message.contains("'fancy'") && e.message.contains("range"), "{e}");
    }
}
