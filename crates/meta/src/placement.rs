//! Replica placement: RF replicas on distinct brokers; replicas and preferred leaders spread as
//! evenly as the existing load allows.

use std::collections::BTreeMap;

use runnel_types::{ErrorCode, NodeId, RunnelError};

use crate::ClusterState;

/// Chooses replica sets for `partitions` new partitions over the `live` brokers, taking the
/// replicas and preferred leaderships already in `state` into account. Deterministic.
pub fn place_partitions(
    state: &ClusterState,
    live: &[NodeId],
    partitions: u32,
    replication_factor: u32,
) -> Result<Vec<Vec<NodeId>>, RunnelError> {
    if replication_factor == 0 {
        return Err(RunnelError::invalid_config("replication_factor", 0, "must be at least 1"));
    }
    if partitions == 0 {
        return Err(RunnelError::invalid_config("partitions", 0, "must be at least 1"));
    }
    if replication_factor as usize > live.len() {
        return Err(RunnelError::new(
            ErrorCode::NotEnoughBrokers,
            format!(
                "replication factor {replication_factor} is larger than the number of live brokers ({}: {:?})",
                live.len(),
                live
            ),
        ));
    }
    // (preferred leaderships, replicas) per live broker.
    let mut load: BTreeMap<NodeId, (u64, u64)> = live.iter().map(|b| (*b, (0, 0))).collect();
    for t in state.topics.values() {
        for p in &t.partitions {
            for (i, r) in p.replicas.iter().enumerate() {
                if let Some(l) = load.get_mut(r) {
                    l.1 += 1;
                    if i == 0 {
                        l.0 += 1;
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let mut chosen: Vec<NodeId> = Vec::with_capacity(replication_factor as usize);
        // Leader: fewest leaderships, then fewest replicas, then lowest id.
        let leader = load
            .iter()
            .min_by_key(|(id, (leaders, replicas))| (*leaders, *replicas, **id))
            .map(|(id, _)| *id)
            .ok_or_else(|| RunnelError::internal("no live brokers"))?;
        chosen.push(leader);
        while chosen.len() < replication_factor as usize {
            let next = load
                .iter()
                .filter(|(id, _)| !chosen.contains(id))
                .min_by_key(|(id, (_, replicas))| (*replicas, **id))
                .map(|(id, _)| *id)
                .ok_or_else(|| RunnelError::internal("ran out of brokers while placing replicas"))?;
            chosen.push(next);
        }
        for (i, b) in chosen.iter().enumerate() {
            if let Some(l) = load.get_mut(b) {
                l.1 += 1;
                if i == 0 {
                    l.0 += 1;
                }
            }
        }
        out.push(chosen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_replicas_and_leaders_evenly() {
        let s = ClusterState::default();
        let a = place_partitions(&s, &[1, 2, 3], 6, 3).unwrap();
        for r in &a {
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "replicas must be distinct: {r:?}");
        }
        let mut leaders = BTreeMap::new();
        for r in &a {
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().cloned().collect::<Vec<_>>(), vec![2, 2, 2]);

        let a = place_partitions(&s, &[1, 2, 3, 4], 4, 2).unwrap();
        let mut count = BTreeMap::new();
        for r in &a {
            for b in r {
                *count.entry(*b).or_insert(0) += 1;
            }
        }
        assert_eq!(count.values().cloned().collect::<Vec<_>>(), vec![2, 2, 2, 2]);
    }

    #[test]
    fn rf_above_live_brokers_is_a_clear_error() {
        let e = place_partitions(&ClusterState::default(), &[1, 2], 1, 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotEnoughBrokers);
        assert!(e.message.contains("replication factor 3") && e.message.contains("(2"), "{e}");
    }
}
