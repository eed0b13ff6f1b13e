//! Group membership: joins, heartbeats, leaves, session expiry and rebalances, as a pure state
//! machine driven by the coordinator (time is `now_ms`, from a monotonic clock the caller owns).
//!
//! The protocol is Kafka's, with the assignment computed here:
//! - A rebalance starts when a member joins, leaves, changes its subscription or misses its
//!   session. Members learn of it from their heartbeat (`REBALANCE_IN_PROGRESS`) and rejoin.
//! - It completes when every member has rejoined, or at the rebalance deadline (the longest
//!   `rebalance_timeout_ms` of the members) without those that did not: the generation goes up,
//!   the assignor runs, and every waiting JoinGroup is answered with the member's partitions.
//! - Eager assignors (`range`, `roundrobin`): members give up all partitions before rejoining.
//!   The cooperative one keeps them: a member reports what it owns when it rejoins, and a
//!   partition another member still owns is withheld for one generation, after which a follow-up
//!   rebalance hands it over once its old owner has let it go. Nobody stops consuming what it
//!   keeps.
//! - Commits are accepted from members of the current generation only (invariant 8); a group with
//!   no members accepts commits from outside any generation (admin resets, `assign` consumers).

use std::collections::{BTreeMap, BTreeSet};

use runnel_types::{ErrorCode, RunnelError};

use crate::record::{GroupValue, MemberValue, OffsetValue};
use crate::{Assignor, TopicPartition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may still be stored).
    Empty,
    /// Waiting for the members to rejoin.
    PreparingRebalance,
    /// Every member has its partitions for the current generation.
    Stable,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::PreparingRebalance => "preparing-rebalance",
            GroupState::Stable => "stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub last_seen_ms: u64,
    /// Has (re)joined during the rebalance in progress.
    pub joined: bool,
    /// What the member said it owns when it last joined (cooperative protocol).
    pub owned: BTreeSet<TopicPartition>,
    pub assignment: BTreeSet<TopicPartition>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub state: GroupState,
    pub generation: u64,
    pub assignor: Option<Assignor>,
    pub members: BTreeMap<String, Member>,
    /// Committed offsets, each with the offsets-topic position of the record that set it, so that
    /// commits answered out of order still leave the latest written value.
    pub offsets: BTreeMap<TopicPartition, (OffsetValue, u64)>,
    rebalance_deadline_ms: u64,
    /// Offsets-topic position of the latest group record applied.
    record_position: u64,
}

impl Group {
    fn new(name: &str) -> Self {
        Group {
            name: name.to_string(),
            state: GroupState::Empty,
            generation: 0,
            assignor: None,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            record_position: 0,
        }
    }

    fn start_rebalance(&mut self, now_ms: u64, except: Option<&str>) {
        self.state = GroupState::PreparingRebalance;
        for m in self.members.values_mut() {
            m.joined = except == Some(m.id.as_str());
        }
        let longest = self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + longest;
    }

    /// Whether every partition of every topic a member subscribes to is assigned to some member.
    fn covers_subscription(&self, partitions: &BTreeMap<String, u32>) -> bool {
        let assigned: BTreeSet<&TopicPartition> = self.members.values().flat_map(|m| m.assignment.iter()).collect();
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| m.topics.iter()).collect();
        topics.into_iter().all(|t| {
            (0..partitions.get(t).copied().unwrap_or(0)).all(|p| assigned.contains(&TopicPartition::new(t.clone(), p)))
        })
    }

    /// The record that makes this generation survive a coordinator failover.
    pub fn to_value(&self) -> GroupValue {
        GroupValue {
            generation: self.generation,
            assignor: self.assignor.map(|a| a.name().to_string()),
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    assignment: m.assignment.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

/// A JoinGroup.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// The id a new member gets (the caller makes it unique).
    pub fresh_member_id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub assignor: Assignor,
    pub owned: BTreeSet<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The member is already in the stable generation with an unchanged subscription.
    Ready { member_id: String, generation: u64, assignment: BTreeSet<TopicPartition> },
    /// Answer once the rebalance completes ([`Groups::complete_if_ready`]).
    Wait { member_id: String },
}

/// A rebalance that completed (or a group that became empty): store `value`, then answer the
/// waiting members.
#[derive(Debug, Clone)]
pub struct Completed {
    pub group: String,
    pub generation: u64,
    pub assignments: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Members removed because they did not rejoin in time.
    pub removed: Vec<String>,
    pub value: GroupValue,
}

/// All groups one coordinator (one offsets-topic partition) is responsible for.
#[derive(Debug, Default)]
pub struct Groups {
    pub groups: BTreeMap<String, Group>,
}

fn error(code: ErrorCode, msg: String) -> RunnelError {
    RunnelError::new(code, msg)
}

impl Groups {
    pub fn get(&self, group: &str) -> Option<&Group> {
        self.groups.get(group)
    }

    pub fn join(&mut self, req: JoinRequest, now_ms: u64) -> Result<JoinOutcome, RunnelError> {
        let g = self.groups.entry(req.group.clone()).or_insert_with(|| Group::new(&req.group));
        if !req.member_id.is_empty() && !g.members.contains_key(&req.member_id) {
            return Err(error(
                ErrorCode::UnknownMember,
                format!(
                    "member '{}' is not in group '{}' (its session may have expired); rejoin as a new member",
                    req.member_id, req.group
                ),
            ));
        }
        if let Some(a) = g.assignor.filter(|_| !g.members.is_empty()) {
            if a != req.assignor {
                return Err(error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group '{}' uses the {} assignor; this member asked for {}",
                        req.group,
                        a.name(),
                        req.assignor.name()
                    ),
                ));
            }
        }
        g.assignor = Some(req.assignor);
        if req.member_id.is_empty() {
            let id = req.fresh_member_id.clone();
            g.members.insert(
                id.clone(),
                Member {
                    id: id.clone(),
                    client_id: req.client_id,
                    topics: req.topics,
                    session_timeout_ms: req.session_timeout_ms,
                    rebalance_timeout_ms: req.rebalance_timeout_ms,
                    last_seen_ms: now_ms,
                    joined: true,
                    owned: req.owned,
                    assignment: BTreeSet::new(),
                },
            );
            if g.state != GroupState::PreparingRebalance {
                g.start_rebalance(now_ms, Some(&id));
            }
            return Ok(JoinOutcome::Wait { member_id: id });
        }
        let id = req.member_id.clone();
        let stable = g.state == GroupState::Stable;
        let Some(m) = g.members.get_mut(&id) else {
            return Err(error(ErrorCode::UnknownMember, format!("member '{id}' is not in group '{}'", req.group)));
        };
        let same_subscription = m.topics == req.topics;
        m.last_seen_ms = now_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.owned = req.owned;
        if stable && same_subscription {
            // A rejoin that changes nothing (e.g. a retried JoinGroup whose answer was lost).
            return Ok(JoinOutcome::Ready {
                member_id: id,
                generation: g.generation,
                assignment: m.assignment.clone(),
            });
        }
        m.topics = req.topics;
        m.joined = true;
        if g.state != GroupState::PreparingRebalance {
            g.start_rebalance(now_ms, Some(&id));
        }
        Ok(JoinOutcome::Wait { member_id: id })
    }

    /// Completes `group`'s rebalance if every member has rejoined or its deadline has passed.
    /// `partitions`: partition count per topic (from the cluster metadata).
    pub fn complete_if_ready(
        &mut self,
        group: &str,
        now_ms: u64,
        partitions: &BTreeMap<String, u32>,
    ) -> Option<Completed> {
        let g = self.groups.get_mut(group)?;
        if g.state != GroupState::PreparingRebalance {
            return None;
        }
        let all_joined = g.members.values().all(|m| m.joined);
        if !all_joined && now_ms < g.rebalance_deadline_ms {
            return None;
        }
        let removed: Vec<String> = g.members.values().filter(|m| !m.joined).map(|m| m.id.clone()).collect();
        for id in &removed {
            g.members.remove(id);
        }
        g.generation += 1;
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.assignor = None;
            return Some(Completed {
                group: group.to_string(),
                generation: g.generation,
                assignments: BTreeMap::new(),
                removed,
                value: g.to_value(),
            });
        }
        let assignor = g.assignor.unwrap_or(Assignor::Range);
        let inputs = g.members.iter().map(|(id, m)| (id.clone(), (m.topics.clone(), m.owned.clone()))).collect();
        let target = assignor.assign(&inputs, partitions);
        let mut withheld = false;
        let mut assignments = BTreeMap::new();
        for (id, m) in g.members.iter_mut() {
            let mut mine = target.get(id).cloned().unwrap_or_default();
            if assignor.is_cooperative() {
                // Not yet: another member still owns it and has not been told to let it go.
                let before = mine.len();
                mine.retain(|tp| !inputs.iter().any(|(other, (_, owned))| other != id && owned.contains(tp)));
                withheld |= mine.len() != before;
            }
            m.assignment = mine.clone();
            m.joined = false;
            m.last_seen_ms = now_ms;
            assignments.insert(id.clone(), mine);
        }
        g.state = GroupState::Stable;
        let done =
            Completed { group: group.to_string(), generation: g.generation, assignments, removed, value: g.to_value() };
        if withheld {
            // The members giving partitions up learn of this rebalance from their next heartbeat,
            // let those partitions go, and rejoin; then they are handed over.
            g.start_rebalance(now_ms, None);
        }
        Some(done)
    }

    pub fn heartbeat(&mut self, group: &str, member_id: &str, generation: u64, now_ms: u64) -> Result<(), RunnelError> {
        let g = self.member_group(group, member_id)?;
        let state = g.state;
        let current = g.generation;
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen_ms = now_ms;
        }
        if state == GroupState::PreparingRebalance {
            return Err(error(
                ErrorCode::RebalanceInProgress,
                format!("group '{group}' is rebalancing; rejoin to get this member's partitions"),
            ));
        }
        if generation != current {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!("group '{group}' is at generation {current}, not {generation}; rejoin"),
            ));
        }
        Ok(())
    }

    fn member_group(&mut self, group: &str, member_id: &str) -> Result<&mut Group, RunnelError> {
        let g = self.groups.get_mut(group).filter(|g| g.members.contains_key(member_id)).ok_or_else(|| {
            error(
                ErrorCode::UnknownMember,
                format!("member '{member_id}' is not in group '{group}' (its session may have expired); rejoin"),
            )
        })?;
        Ok(g)
    }

    /// Removes a member; the others rebalance (or the group becomes empty: the caller then calls
    /// [`Groups::complete_if_ready`], which reports it).
    pub fn leave(&mut self, group: &str, member_id: &str, now_ms: u64) -> Result<(), RunnelError> {
        let g = self.member_group(group, member_id)?;
        g.members.remove(member_id);
        if g.state == GroupState::Stable || g.members.is_empty() {
            g.start_rebalance(now_ms, None);
        }
        Ok(())
    }

    /// Removes members whose session expired (members waiting in a JoinGroup do not expire) and
    /// starts the rebalances that causes. Returns the groups that are rebalancing, for
    /// [`Groups::complete_if_ready`].
    ///
    /// A stable group whose assignment no longer covers every partition of its members' topics
    /// (`partitions`: partition count per topic, from the cluster metadata) also rebalances: a
    /// topic grew, or the coordinator moved between a cooperative generation that withheld
    /// partitions and the follow-up rebalance that hands them over (that follow-up lived only in
    /// the old coordinator's memory; the stored generation shows the gap).
    pub fn tick(&mut self, now_ms: u64, partitions: &BTreeMap<String, u32>) -> Vec<String> {
        let mut rebalancing = Vec::new();
        for g in self.groups.values_mut() {
            if g.state == GroupState::Stable && !g.covers_subscription(partitions) {
                g.start_rebalance(now_ms, None);
            }
            let waiting = g.state == GroupState::PreparingRebalance;
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| !(waiting && m.joined) && now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                g.members.remove(id);
            }
            if !expired.is_empty() && g.state == GroupState::Stable {
                g.start_rebalance(now_ms, None);
            }
            if g.state == GroupState::PreparingRebalance {
                rebalancing.push(g.name.clone());
            }
        }
        rebalancing
    }

    /// Checks that a commit may be made: by a member of the current generation, or, when the
    /// group has no members, from outside any generation (`member_id` empty: an admin reset, the
    /// only way an offset moves backwards). A member never moves a committed offset backwards
    /// (invariant 8).
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        generation: i64,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), RunnelError> {
        let g = self.groups.get(group);
        let members = g.map_or(0, |g| g.members.len());
        if member_id.is_empty() {
            if members > 0 {
                return Err(error(
                    ErrorCode::RebalanceInProgress,
                    format!("group '{group}' has {members} active member(s); only they may commit (stop them first)"),
                ));
            }
            return Ok(());
        }
        let Some(g) = g.filter(|g| g.members.contains_key(member_id)) else {
            return Err(error(
                ErrorCode::UnknownMember,
                format!("member '{member_id}' is not in group '{group}'; its commit is refused (rejoin)"),
            ));
        };
        if generation != g.generation as i64 {
            return Err(error(
                ErrorCode::IllegalGeneration,
                format!(
                    "commit from generation {generation} refused: group '{group}' is at generation {}",
                    g.generation
                ),
            ));
        }
        for (tp, o) in offsets {
            if let Some((stored, _)) = g.offsets.get(tp).filter(|(v, _)| v.offset > *o) {
                return Err(error(
                    ErrorCode::CommitRegression,
                    format!(
                        "group '{group}' has committed offset {} for {tp}; a member may not move it back to {o} \
                         (use `runnel group reset-offsets` with the group stopped)",
                        stored.offset
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies a stored offset (or its deletion) written at `position` in the offsets topic.
    pub fn apply_offset(&mut self, group: &str, tp: TopicPartition, value: Option<OffsetValue>, position: u64) {
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group::new(group));
        if g.offsets.get(&tp).is_some_and(|(_, at)| *at > position) {
            return;
        }
        match value {
            Some(v) => {
                g.offsets.insert(tp, (v, position));
            }
            None => {
                g.offsets.remove(&tp);
            }
        }
    }

    /// Applies a stored group record while loading. Members come back with a fresh session: those
    /// that are gone expire and the group rebalances.
    pub fn apply_group(&mut self, group: &str, value: Option<GroupValue>, position: u64, now_ms: u64) {
        let Some(v) = value else {
            self.groups.remove(group);
            return;
        };
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group::new(group));
        if g.record_position > position {
            return;
        }
        g.record_position = position;
        g.generation = v.generation;
        g.assignor = v.assignor.as_deref().and_then(|a| Assignor::parse(a).ok());
        g.members = v
            .members
            .into_iter()
            .map(|m| {
                let assignment: BTreeSet<TopicPartition> = m.assignment.into_iter().collect();
                (
                    m.id.clone(),
                    Member {
                        id: m.id,
                        client_id: m.client_id,
                        topics: m.topics.into_iter().collect(),
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        last_seen_ms: now_ms,
                        joined: false,
                        owned: assignment.clone(),
                        assignment,
                    },
                )
            })
            .collect();
        g.state = if g.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
    }

    /// Removes an empty group and its offsets; returns the offsets it had (to store tombstones).
    pub fn delete(&mut self, group: &str) -> Result<Vec<TopicPartition>, RunnelError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| error(ErrorCode::UnknownGroup, format!("group '{group}' does not exist")))?;
        if !g.members.is_empty() {
            return Err(error(
                ErrorCode::GroupNotEmpty,
                format!("group '{group}' has {} active member(s); stop them before deleting it", g.members.len()),
            ));
        }
        let tps = g.offsets.keys().cloned().collect();
        self.groups.remove(group);
        Ok(tps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(gs: &mut Groups, member: &str, fresh: &str, owned: &[u32], assignor: Assignor, now: u64) -> JoinOutcome {
        gs.join(
            JoinRequest {
                group: "g".into(),
                member_id: member.into(),
                fresh_member_id: fresh.into(),
                client_id: "c".into(),
                topics: BTreeSet::from(["t".to_string()]),
                session_timeout_ms: 1000,
                rebalance_timeout_ms: 5000,
                assignor,
                owned: owned.iter().map(|p| TopicPartition::new("t", *p)).collect(),
            },
            now,
        )
        .unwrap()
    }

    fn parts() -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_string(), 6)])
    }

    fn nums(s: &BTreeSet<TopicPartition>) -> Vec<u32> {
        s.iter().map(|tp| tp.partition).collect()
    }

    /// Three members join a 6-partition topic and get 2 each in generation 1.
    fn three_members(assignor: Assignor) -> Groups {
        let mut gs = Groups::default();
        assert_eq!(join(&mut gs, "", "a", &[], assignor, 0), JoinOutcome::Wait { member_id: "a".into() });
        join(&mut gs, "", "b", &[], assignor, 1);
        join(&mut gs, "", "c", &[], assignor, 2);
        let done = gs.complete_if_ready("g", 3, &parts()).expect("everyone joined");
        assert_eq!(done.generation, 1);
        assert!(done.assignments.values().all(|s| s.len() == 2), "{:?}", done.assignments);
        gs
    }

    #[test]
    fn a_dead_member_expires_and_the_others_take_its_partitions() {
        let mut gs = three_members(Assignor::Range);
        // a and b heartbeat; c goes silent.
        for now in [500, 1000, 1500] {
            gs.heartbeat("g", "a", 1, now).unwrap();
            gs.heartbeat("g", "b", 1, now).unwrap();
            assert!(gs.tick(now, &BTreeMap::new()).is_empty() || now > 1000);
        }
        assert_eq!(gs.tick(1500, &BTreeMap::new()), vec!["g".to_string()]);
        assert_eq!(gs.heartbeat("g", "a", 1, 1510).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert!(matches!(join(&mut gs, "a", "x", &[], Assignor::Range, 1520), JoinOutcome::Wait { .. }));
        assert!(gs.complete_if_ready("g", 1521, &parts()).is_none(), "b has not rejoined yet");
        join(&mut gs, "b", "x", &[], Assignor::Range, 1530);
        let done = gs.complete_if_ready("g", 1531, &parts()).unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2]);
        assert_eq!(nums(&done.assignments["b"]), [3, 4, 5]);
        // c's commits are refused from now on; a's only with the new generation.
        assert_eq!(gs.check_commit("g", "c", 1, &[]).unwrap_err().code, ErrorCode::UnknownMember);
        assert_eq!(gs.check_commit("g", "a", 1, &[]).unwrap_err().code, ErrorCode::IllegalGeneration);
        gs.check_commit("g", "a", 2, &[]).unwrap();
        let t0 = TopicPartition::new("t", 0);
        let v = OffsetValue { offset: 50, metadata: String::new(), commit_timestamp_ms: 0, generation: 2 };
        gs.apply_offset("g", t0.clone(), Some(v), 1);
        gs.check_commit("g", "a", 2, &[(t0.clone(), 50), (t0.clone(), 60)]).unwrap();
        let e = gs.check_commit("g", "a", 2, &[(t0, 49)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::CommitRegression);
        assert!(e.message.contains("offset 50") && e.message.contains("49"), "{e}");
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_deadline() {
        let mut gs = three_members(Assignor::RoundRobin);
        gs.leave("g", "c", 100).unwrap();
        join(&mut gs, "a", "x", &[], Assignor::RoundRobin, 110);
        // b keeps heartbeating (so it does not expire) but never rejoins.
        assert!(gs.complete_if_ready("g", 4000, &parts()).is_none());
        let done = gs.complete_if_ready("g", 100 + 5000, &parts()).unwrap();
        assert_eq!(done.removed, vec!["b".to_string()]);
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn cooperative_rebalance_revokes_first_then_assigns() {
        let mut gs = Groups::default();
        join(&mut gs, "", "a", &[], Assignor::CooperativeSticky, 0);
        let done = gs.complete_if_ready("g", 1, &parts()).unwrap();
        assert_eq!(nums(&done.assignments["a"]), [0, 1, 2, 3, 4, 5]);
        // b joins; a rejoins still owning everything and keeps consuming.
        join(&mut gs, "", "b", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "a", "x", &[0, 1, 2, 3, 4, 5], Assignor::CooperativeSticky, 11);
        let done = gs.complete_if_ready("g", 12, &parts()).unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(done.assignments["a"].len(), 3, "a gives up three");
        assert!(done.assignments["b"].is_empty(), "b gets nothing a still owns");
        // A follow-up rebalance started; a rejoins owning only its three, b gets the rest.
        assert_eq!(gs.get("g").unwrap().state, GroupState::PreparingRebalance);
        let a_keeps: Vec<u32> = nums(&done.assignments["a"]);
        join(&mut gs, "a", "x", &a_keeps, Assignor::CooperativeSticky, 20);
        join(&mut gs, "b", "x", &[], Assignor::CooperativeSticky, 21);
        let done = gs.complete_if_ready("g", 22, &parts()).unwrap();
        assert_eq!(done.generation, 3);
        assert_eq!(nums(&done.assignments["a"]), a_keeps);
        assert_eq!(done.assignments["b"].len(), 3);
        assert!(done.assignments["b"].is_disjoint(&done.assignments["a"]));
        assert_eq!(gs.get("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn mixed_assignors_are_refused_and_unknown_members_told_to_rejoin() {
        let mut gs = three_members(Assignor::Range);
        let e = gs
            .join(
                JoinRequest {
                    group: "g".into(),
                    member_id: String::new(),
                    fresh_member_id: "d".into(),
                    client_id: "c".into(),
                    topics: BTreeSet::from(["t".to_string()]),
                    session_timeout_ms: 1000,
                    rebalance_timeout_ms: 1000,
                    assignor: Assignor::RoundRobin,
                    owned: BTreeSet::new(),
                },
                10,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert_eq!(gs.heartbeat("g", "nobody", 1, 10).unwrap_err().code, ErrorCode::UnknownMember);
        // An unchanged rejoin of a stable member is answered at once (a retried JoinGroup).
        let again = join(&mut gs, "a", "x", &[], Assignor::Range, 11);
        assert!(matches!(again, JoinOutcome::Ready { generation: 1, .. }));
    }

    #[test]
    fn commits_outside_a_generation_only_for_empty_groups_and_delete_needs_empty() {
        let mut gs = three_members(Assignor::Range);
        assert_eq!(gs.check_commit("g", "", -1, &[]).unwrap_err().code, ErrorCode::RebalanceInProgress);
        assert_eq!(gs.delete("g").unwrap_err().code, ErrorCode::GroupNotEmpty);
        for m in ["a", "b", "c"] {
            gs.leave("g", m, 5).unwrap();
        }
        let done = gs.complete_if_ready("g", 6, &parts()).unwrap();
        assert!(done.assignments.is_empty());
        assert_eq!(gs.get("g").unwrap().state, GroupState::Empty);
        gs.check_commit("g", "", -1, &[]).unwrap();
        gs.check_commit("other", "", -1, &[]).unwrap();
        let v = OffsetValue { offset: 5, metadata: String::new(), commit_timestamp_ms: 0, generation: -1 };
        gs.apply_offset("g", TopicPartition::new("t", 0), Some(v.clone()), 10);
        // An older record (answered late) never overwrites a newer one.
        gs.apply_offset("g", TopicPartition::new("t", 0), Some(OffsetValue { offset: 3, ..v }), 9);
        assert_eq!(gs.get("g").unwrap().offsets[&TopicPartition::new("t", 0)].0.offset, 5);
        assert_eq!(gs.delete("g").unwrap(), vec![TopicPartition::new("t", 0)]);
        assert_eq!(gs.delete("g").unwrap_err().code, ErrorCode::UnknownGroup);
    }

    #[test]
    fn a_loaded_group_keeps_its_generation_and_expires_absent_members() {
        let gs0 = three_members(Assignor::Range);
        let value = gs0.get("g").unwrap().to_value();
        let mut gs = Groups::default();
        gs.apply_group("g", Some(value), 7, 100);
        let g = gs.get("g").unwrap();
        assert_eq!((g.generation, g.state, g.members.len()), (1, GroupState::Stable, 3));
        gs.heartbeat("g", "a", 1, 600).unwrap();
        assert!(gs.tick(900, &BTreeMap::new()).is_empty());
        assert_eq!(gs.tick(1200, &BTreeMap::new()), vec!["g".to_string()], "b and c never came back");
        join(&mut gs, "a", "x", &[], Assignor::Range, 1300);
        let done = gs.complete_if_ready("g", 1300, &parts()).unwrap();
        assert_eq!(done.generation, 2, "generations keep increasing across a coordinator failover");
    }

    #[test]
    fn a_coordinator_failover_between_a_withholding_generation_and_its_follow_up_still_hands_over() {
        // Found by tests/tests/groups.rs: generation 2 withheld partitions from b and c, the
        // offsets partition's leadership moved, and the new coordinator loaded a "stable" group in
        // which b and c owned nothing, forever.
        let mut gs = Groups::default();
        join(&mut gs, "", "a", &[], Assignor::CooperativeSticky, 0);
        gs.complete_if_ready("g", 1, &parts()).unwrap();
        join(&mut gs, "", "b", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "", "c", &[], Assignor::CooperativeSticky, 10);
        join(&mut gs, "a", "x", &[0, 1, 2, 3, 4, 5], Assignor::CooperativeSticky, 11);
        gs.complete_if_ready("g", 12, &parts()).unwrap();
        let stored = gs.get("g").unwrap().to_value();

        let mut next = Groups::default();
        next.apply_group("g", Some(stored), 3, 100);
        assert_eq!(next.get("g").unwrap().state, GroupState::Stable);
        // Unchanged rejoins are answered at once, but the next tick sees the gap and rebalances.
        assert!(matches!(join(&mut next, "b", "x", &[], Assignor::CooperativeSticky, 101), JoinOutcome::Ready { .. }));
        assert_eq!(next.tick(102, &parts()), vec!["g".to_string()]);
        assert_eq!(next.heartbeat("g", "a", 2, 103).unwrap_err().code, ErrorCode::RebalanceInProgress);
        let a_owns = nums(&next.get("g").unwrap().members["a"].assignment);
        for m in ["a", "b", "c"] {
            let owned = if m == "a" { a_owns.clone() } else { vec![] };
            join(&mut next, m, "x", &owned, Assignor::CooperativeSticky, 104);
        }
        let done = next.complete_if_ready("g", 105, &parts()).unwrap();
        assert_eq!(done.generation, 3);
        assert!(done.assignments.values().all(|p| p.len() == 2), "{:?}", done.assignments);
        assert_eq!(next.get("g").unwrap().state, GroupState::Stable);
        assert!(next.tick(106, &parts()).is_empty(), "a complete assignment does not rebalance again");
    }
}
