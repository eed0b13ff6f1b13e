//! Replica moves the controller proposes: replacing replicas on brokers that are gone or being
//! decommissioned, and rebalancing replicas and preferred leaders across the eligible brokers.
//! Pure and deterministic (BTreeMaps, ties broken by the lowest broker id), so a plan is the same
//! whichever node computes it.

use std::collections::{BTreeMap, BTreeSet};

use runnel_types::{GroupId, NodeId};

use crate::ClusterState;

/// Replica counts (over every partition's final replica set) for the brokers in `eligible`.
fn replica_load(state: &ClusterState, eligible: &BTreeSet<NodeId>) -> BTreeMap<NodeId, u64> {
    let mut load: BTreeMap<NodeId, u64> = eligible.iter().map(|b| (*b, 0)).collect();
    for p in state.topics.values().flat_map(|t| t.partitions.iter()) {
        for r in p.final_replicas() {
            if let Some(l) = load.get_mut(r) {
                *l += 1;
            }
        }
    }
    load
}

/// For every partition with a replica on a broker in `evict`, a new replica set with each such
/// replica replaced (in place, so the preferred order is kept) by the least loaded eligible broker
/// not already in the set. A replica with no possible replacement stays where it is.
pub fn plan_replacements(state: &ClusterState, evict: &BTreeSet<NodeId>) -> Vec<(GroupId, Vec<NodeId>)> {
    let eligible: BTreeSet<NodeId> = state.eligible_brokers().into_iter().filter(|b| !evict.contains(b)).collect();
    let mut load = replica_load(state, &eligible);
    let mut moves = Vec::new();
    for p in state.topics.values().flat_map(|t| t.partitions.iter()) {
        let current = p.final_replicas();
        if !current.iter().any(|r| evict.contains(r)) {
            continue;
        }
        let mut target = current.to_vec();
        for slot in 0..target.len() {
            if !evict.contains(&target[slot]) {
                continue;
            }
            let pick =
                load.iter().filter(|(b, _)| !target.contains(b)).min_by_key(|(b, l)| (**l, **b)).map(|(b, _)| *b);
            if let Some(b) = pick {
                target[slot] = b;
                *load.entry(b).or_default() += 1;
            }
        }
        if target != current {
            moves.push((p.group_id, target));
        }
    }
    moves
}

/// Moves that even out replicas, then preferred leaders (first replicas), across the eligible
/// brokers: after it, no two eligible brokers differ by more than one in either count where a
/// single move can fix it. Partitions with a reassignment in progress are planned from its target.
pub fn plan_rebalance(state: &ClusterState) -> Vec<(GroupId, Vec<NodeId>)> {
    let eligible: BTreeSet<NodeId> = state.eligible_brokers().into_iter().collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let mut plan: BTreeMap<GroupId, Vec<NodeId>> = state
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.group_id, p.final_replicas().to_vec()))
        .collect();
    let original = plan.clone();

    let count = |plan: &BTreeMap<GroupId, Vec<NodeId>>, first_only: bool| -> BTreeMap<NodeId, u64> {
        let mut c: BTreeMap<NodeId, u64> = eligible.iter().map(|b| (*b, 0)).collect();
        for set in plan.values() {
            let members = if first_only { &set[..set.len().min(1)] } else { &set[..] };
            for r in members {
                if let Some(n) = c.get_mut(r) {
                    *n += 1;
                }
            }
        }
        c
    };
    let extremes = |c: &BTreeMap<NodeId, u64>| -> Option<((NodeId, u64), (NodeId, u64))> {
        let max = c.iter().max_by_key(|(b, n)| (**n, std::cmp::Reverse(**b)))?;
        let min = c.iter().min_by_key(|(b, n)| (**n, **b))?;
        Some(((*max.0, *max.1), (*min.0, *min.1)))
    };

    // Replicas: move one replica at a time from the most to the least loaded broker.
    for _ in 0..10_000 {
        let c = count(&plan, false);
        let Some(((max_b, max_n), (min_b, min_n))) = extremes(&c) else { break };
        if max_n <= min_n + 1 {
            break;
        }
        let candidate = plan.iter_mut().find(|(_, set)| set.contains(&max_b) && !set.contains(&min_b));
        let Some((_, set)) = candidate else { break };
        for r in set.iter_mut() {
            if *r == max_b {
                *r = min_b;
            }
        }
    }
    // Preferred leaders: swap a replica to the front where that evens the first-replica counts.
    for _ in 0..10_000 {
        let c = count(&plan, true);
        let Some(((max_b, max_n), (min_b, min_n))) = extremes(&c) else { break };
        if max_n <= min_n + 1 {
            break;
        }
        let candidate = plan.iter_mut().find(|(_, set)| set.first() == Some(&max_b) && set.contains(&min_b));
        let Some((_, set)) = candidate else { break };
        if let Some(i) = set.iter().position(|r| *r == min_b) {
            set.swap(0, i);
        }
    }
    plan.into_iter().filter(|(g, set)| original.get(g) != Some(set)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BrokerStatus, MetaCommand};
    use runnel_types::topic::TopicConfig;

    fn cluster(brokers: u64, assignments: Vec<Vec<NodeId>>) -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=brokers {
            s.apply(&MetaCommand::RegisterBroker { id, addr: format!("h:{id}"), incarnation: 1 });
        }
        s.apply(&MetaCommand::CreateTopic { name: "t".into(), config: TopicConfig::default(), assignments });
        s
    }

    fn apply(s: &mut ClusterState, moves: Vec<(GroupId, Vec<NodeId>)>) {
        s.apply(&MetaCommand::ReassignPartitions { moves });
        let pending: Vec<(GroupId, u64)> = s
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.target_replicas.is_some())
            .map(|p| (p.group_id, p.partition_epoch))
            .collect();
        for (group, partition_epoch) in pending {
            s.apply(&MetaCommand::FinishReassignment { group, partition_epoch });
        }
    }

    fn counts(s: &ClusterState, first_only: bool) -> BTreeMap<NodeId, usize> {
        let mut c = BTreeMap::new();
        for p in s.topics.values().flat_map(|t| t.partitions.iter()) {
            for r in if first_only { &p.replicas[..1] } else { &p.replicas[..] } {
                *c.entry(*r).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn replacements_restore_the_replication_factor_on_live_brokers() {
        let mut s = cluster(4, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        s.apply(&MetaCommand::MarkBrokerUnavailable { id: 3, epoch: 1, shutting_down: false });
        let moves = plan_replacements(&s, &BTreeSet::from([3]));
        assert_eq!(moves, vec![(1, vec![1, 2, 4]), (2, vec![2, 4, 1]), (3, vec![4, 1, 2])]);
        apply(&mut s, moves);
        assert!(s.partitions_on(3).is_empty());
        assert!(plan_replacements(&s, &BTreeSet::from([3])).is_empty(), "nothing left to move");
    }

    #[test]
    fn a_replica_with_nowhere_to_go_stays() {
        let s = cluster(3, vec![vec![1, 2, 3]]);
        assert!(plan_replacements(&s, &BTreeSet::from([3])).is_empty());
    }

    #[test]
    fn rebalance_gives_a_new_broker_replicas_and_leaders() {
        let mut s = cluster(3, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2], vec![1, 3, 2]]);
        s.apply(&MetaCommand::RegisterBroker { id: 4, addr: "h:4".into(), incarnation: 1 });
        let moves = plan_rebalance(&s);
        assert!(!moves.is_empty());
        apply(&mut s, moves);
        assert_eq!(counts(&s, false).values().cloned().collect::<Vec<_>>(), vec![3, 3, 3, 3]);
        assert_eq!(counts(&s, true).values().cloned().collect::<Vec<_>>(), vec![1, 1, 1, 1]);
        assert!(plan_rebalance(&s).is_empty(), "a balanced cluster plans nothing");
    }

    #[test]
    fn rebalance_skips_brokers_that_are_not_eligible() {
        let mut s = cluster(4, vec![vec![1, 2, 3], vec![2, 3, 1]]);
        s.apply(&MetaCommand::SetDecommissioning { id: 4, on: true });
        assert!(plan_rebalance(&s).is_empty());
        s.apply(&MetaCommand::SetDecommissioning { id: 4, on: false });
        s.apply(&MetaCommand::MarkBrokerUnavailable { id: 4, epoch: 1, shutting_down: false });
        assert_eq!(s.brokers[&4].status, BrokerStatus::Unavailable);
        assert!(plan_rebalance(&s).is_empty());
    }
}
