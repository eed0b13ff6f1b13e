//! The election driver: starts elections in this node's quiescent partition groups
//! (docs/adr/0012-quiescent-partition-groups.md).
//!
//! Partition groups run with openraft's timers off, so no follower campaigns on its own. This
//! driver decides, per group where this node is a voter, when one must:
//! - the known leader's node is gone (the node-level detector has not heard from it for its
//!   timeout), or it is alive but its last two leader lists no longer name the group;
//! - or the group has no leader at all (just created, or an election that failed).
//!
//! Who campaigns first: the surviving voters in the partition's preference order (the metadata's
//! replica list, then any other voter) — the first right away, the next one election timeout
//! later if there is still no leader, and so on; each retries after all of them have had a turn.
//! So two followers rarely split the vote, and leadership tends to stay on preferred replicas.
//! Every campaign starts with a pre-vote: a false suspicion never raises a group's term while its
//! leader can still reach a majority.
//!
//! Cost: one look at every group on a full sweep (when a peer is lost or restarts, when replicas
//! start, and every `SWEEP_EVERY` as a backstop), and otherwise a loop over only the groups that
//! changed or need attention: those whose Raft state changed (`Broker::election_checks`, from the
//! leadership tracker), those a peer's leader list stopped claiming (from the failure detector),
//! those waiting for an election, and those whose leader no list has confirmed yet. An idle group
//! with a confirmed, live leader costs nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use runnel_raft::liveness::ListClaim;
use runnel_types::{GroupId, NodeId};
use tokio::time::Instant;

use crate::manager::Broker;
use crate::partition::Partition;

/// A full sweep over every group at least this often: a backstop. Every change that can make a
/// group need an election is reported as it happens (a peer lost or restarted, a state transition,
/// a group dropped from a leader list); sweeping every group each second instead was a fifth of a
/// node's idle CPU at 10,000 partitions (perf, docs/adr/0012).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Campaigns this node starts per pass at most. Each costs a few RPCs and a synced write on every
/// voter; when a node with thousands of leaderships dies, the rest wait for the next pass (a
/// few tens of milliseconds) rather than flooding the network and the peers' cores at once —
/// a flood whose timeouts would look like more dead peers and feed itself.
const MAX_CAMPAIGNS_PER_PASS: usize = 256;

/// Campaigns of this node at most in flight at once: started within `CAMPAIGN_IN_FLIGHT_FOR` and
/// their group still without a usable leader. The per-pass limit alone is not enough: when
/// elections complete more slowly than passes start them (thousands of new groups on two cores),
/// in-flight campaigns pile up, their RPCs time out, the timeouts look like failed campaigns and
/// are retried — a congestion collapse seen in `bench partitions` at 10,000 partitions (and with
/// it a metadata commit starved past its 10 s deadline). Bounding what is in flight makes the
/// driver go as fast as elections actually finish.
const MAX_CAMPAIGNS_IN_FLIGHT: usize = 512;

/// Groups waiting for an election that stretch the later voters' turns by one more turn (see
/// `drive`): about what the first voter gets elected per turn under a burst. It is not the
/// in-flight cap: with batched Raft messages more campaigns run at once, but they still finish at
/// this pace, and turns that stretched less let the second voter campaign beside the first and
/// split the vote (measured: p99 failover of 1,667 partitions 4.4 s with the stretch tied to a
/// 512 cap, docs/bench-partitions-2026-12-04.txt).
const BACKLOG_PER_TURN: usize = 128;

/// How long a started campaign counts as in flight (unless its group gets a leader sooner): the
/// partition RPC deadline, after which its requests have been answered or given up.
const CAMPAIGN_IN_FLIGHT_FOR: Duration = Duration::from_secs(3);

/// At most this many turns' worth of waiting per rank when a burst of elections stretches the
/// turns (see `drive`).
const MAX_TURN_STRETCH: u32 = 8;

/// How long each surviving voter, in preference order, has to win before the next one campaigns
/// too. The first campaigns at once; the others are only a fallback (the first one's log was
/// behind, or it failed meanwhile). Two candidates at once split the vote and both start over —
/// under a burst of thousands of elections an election can take far longer than one election
/// timeout, so the turns are generous.
const RANK_TURN: Duration = Duration::from_secs(1);

/// The same for a group that never had a leader (just created): replicas of a new topic start at
/// different moments on different nodes, and a non-preferred winner would only be moved back.
const NEW_GROUP_TURN: Duration = Duration::from_secs(2);

/// A group's Raft instance that has not taken an election command after this long is reported
/// by name (see [`Broker::request_election`]).
const ELECT_ACCEPT_WARN: Duration = Duration::from_secs(5);

/// A group still without a usable leader after this long is reported (with why this node does not
/// campaign for it), once per `STUCK_AFTER`: an operator sees which partitions are stuck and why.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// What the driver remembers about one group that needed an election.
struct Seen {
    leader: Option<NodeId>,
    term: u64,
    /// When this node first saw `(leader, term)`: leader lists older than that say nothing.
    since: Instant,
    /// When this node first found the group without a usable leader.
    leaderless_since: Option<Instant>,
    last_campaign: Option<Instant>,
    /// When this node itself last started a campaign for the group (`last_campaign` also moves
    /// when another voter is seen campaigning): what counts as in flight here.
    own_campaign: Option<Instant>,
    /// Campaigns since the group last had a usable leader: each doubles the wait before the next.
    attempts: u32,
    /// When the group was last found without a usable leader after having one (or at first
    /// sight), and when that was last reported: see `STUCK_AFTER`.
    unled_since: Option<Instant>,
    reported: Option<Instant>,
}

impl Seen {
    /// Warns when the group has been without a usable leader for `STUCK_AFTER`, at most once per
    /// `STUCK_AFTER`, saying why this node is not campaigning.
    fn report_stuck(&mut self, p: &Partition, now: Instant, why: &str) {
        let Some(since) = self.unled_since else { return };
        if now.saturating_duration_since(since) < STUCK_AFTER
            || self.reported.is_some_and(|t| now.saturating_duration_since(t) < STUCK_AFTER)
        {
            return;
        }
        self.reported = Some(now);
        tracing::warn!(
            topic = %p.topic,
            partition = p.partition,
            leader = ?self.leader,
            term = self.term,
            attempts = self.attempts,
            unled_ms = now.saturating_duration_since(since).as_millis() as u64,
            why,
            "partition still has no usable leader"
        );
    }
}

impl Broker {
    /// Runs the election driver until the task is dropped.
    pub async fn run_election_driver(self: Arc<Self>) {
        let live = self.deps.router.liveness().clone();
        let mut changes = live.subscribe();
        let step = Duration::from_millis((self.deps.timing.election_timeout_ms / 3).max(10));
        let mut seen: HashMap<GroupId, Seen> = HashMap::new();
        // Groups that need an election (or this node's part in one).
        let mut pending: BTreeSet<GroupId> = BTreeSet::new();
        // Groups that need no election now but are looked at again each step: a live leader that
        // no leader list received since has confirmed yet (until one does, or shows it stopped),
        // and replicas repairing lost writes (until the repair ends).
        let mut recheck: BTreeSet<GroupId> = BTreeSet::new();
        let mut next_sweep = Instant::now();
        loop {
            let full = tokio::select! {
                _ = tokio::time::sleep_until(next_sweep) => true,
                _ = self.sweep_now.notified() => true,
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    true
                }
                // While groups are pending or rechecked the step below runs anyway (and takes
                // the changed groups then): during a burst of thousands of state transitions a
                // pass per transition would only burn the cores the elections need.
                _ = self.election_checks.wait(), if pending.is_empty() && recheck.is_empty() => false,
                _ = tokio::time::sleep(step), if !pending.is_empty() || !recheck.is_empty() => false,
            };
            let now = Instant::now();
            let in_flight = pending
                .iter()
                .filter(|g| {
                    seen.get(g)
                        .and_then(|s| s.own_campaign)
                        .is_some_and(|t| now.saturating_duration_since(t) < CAMPAIGN_IN_FLIGHT_FOR)
                })
                .count();
            let mut budget = MAX_CAMPAIGNS_PER_PASS.min(MAX_CAMPAIGNS_IN_FLIGHT.saturating_sub(in_flight));
            let changed = self.election_checks.take();
            if full {
                next_sweep = now + SWEEP_EVERY;
                let parts = self.partitions();
                {
                    let by_group = self.by_group_map();
                    seen.retain(|g, _| by_group.contains_key(g));
                    pending.retain(|g| by_group.contains_key(g));
                    recheck.retain(|g| by_group.contains_key(g));
                }
                for p in parts {
                    self.drive(&p, now, &mut seen, &mut pending, &mut recheck, &mut budget).await;
                }
            } else {
                let mut look_at = changed;
                look_at.extend(pending.iter().cloned());
                look_at.extend(recheck.iter().cloned());
                for g in look_at {
                    match self.by_group(g) {
                        Some(p) => self.drive(&p, now, &mut seen, &mut pending, &mut recheck, &mut budget).await,
                        None => {
                            pending.remove(&g);
                            recheck.remove(&g);
                            seen.remove(&g);
                        }
                    }
                }
            }
        }
    }

    async fn drive(
        &self,
        p: &Arc<Partition>,
        now: Instant,
        seen: &mut HashMap<GroupId, Seen>,
        pending: &mut BTreeSet<GroupId>,
        recheck: &mut BTreeSet<GroupId>,
        budget: &mut usize,
    ) {
        let me = self.deps.node_id;
        let live = self.deps.router.liveness();
        recheck.remove(&p.group);
        // The common case — a known leader on a node that answers — costs one metrics read; the
        // voter set is looked at only for the groups that may need an election.
        let (state, term, leader, never_led) = {
            let m = p.metrics_rx.borrow_watched();
            if m.state == ServerState::Leader {
                drop(m);
                seen.remove(&p.group);
                pending.remove(&p.group);
                return;
            }
            // A new group's log holds only its initial membership (index 0) until a first
            // leader commits its blank entry.
            (m.state, m.current_term, m.current_leader, m.last_log_index.unwrap_or(0) == 0)
        };
        let s = seen.entry(p.group).or_insert(Seen {
            leader,
            term,
            since: now,
            leaderless_since: None,
            last_campaign: None,
            own_campaign: None,
            attempts: 0,
            unled_since: None,
            reported: None,
        });
        if (s.leader, s.term) != (leader, term) {
            // A higher term without a leader means some voter is campaigning (possibly this one):
            // give it a full turn before campaigning here, as Raft resets its election timer on
            // granting a vote — otherwise voters that noticed the loss at different moments keep
            // splitting the vote.
            if term > s.term && leader.is_none() {
                s.last_campaign = Some(now);
            }
            s.leader = leader;
            s.term = term;
            s.since = now;
        }
        let healthy = match leader {
            // Leaders returned above: this node named as leader while not leading (a stale view
            // after stepping down) is no leader at all. The liveness checks below never apply to
            // this node itself, so without this such a group would count as led forever.
            Some(l) if l == me => false,
            Some(l) => !live.is_gone(l) && !live.stopped_leading(l, p.group, term, s.since),
            None => false,
        };
        if healthy {
            s.leaderless_since = None;
            s.unled_since = None;
            s.reported = None;
            s.attempts = 0;
            pending.remove(&p.group);
            // Healthy as far as is known now; until a leader list received after this node saw
            // it lead names the group, a list that does not (it stepped down before its first
            // list) would be reported by nothing but the next sweep: look again each step.
            if let Some(l) = leader {
                if !live.confirms_leading(l, p.group, term, s.since) {
                    recheck.insert(p.group);
                }
            }
            return;
        }
        s.unled_since.get_or_insert(now);
        // Only groups that need an election get this far, and they are few.
        let voters: Vec<NodeId> = {
            let m = p.metrics_rx.borrow_watched();
            m.membership_config.membership().voter_ids().collect()
        };
        if self.deps.repair.is_repairing(p.group) {
            // It may have lost entries it acknowledged: it waits for a leader (docs/adr/0015).
            // Nothing reports the end of a repair here: look again each step.
            s.report_stuck(p, now, "this replica is repairing after its node lost writes; it does not campaign");
            pending.remove(&p.group);
            recheck.insert(p.group);
            return;
        }
        if !voters.contains(&me) {
            // A learner (or a replica being removed) never campaigns.
            s.leaderless_since = None;
            s.unled_since = None;
            pending.remove(&p.group);
            return;
        }
        pending.insert(p.group);
        if leader.is_none() {
            // This node does not know a leader — it just started, or the group is new. An idle
            // leader sends nothing, so the peers' leader lists tell: campaign only once every
            // reachable voter has sent a list since this node started watching it and none of
            // them leads the group (else this node would take leadership from a healthy leader).
            let mut known = true;
            for v in voters.iter().filter(|v| **v != me && live.is_reachable(**v)) {
                match live.list_claim(*v, p.group) {
                    ListClaim::Leads(t) if t >= term => {
                        tracing::debug!(topic = %p.topic, partition = p.partition, claimed_by = v, term = t, "no leader known here, but a peer leads it");
                        s.report_stuck(p, now, "no leader known here, but a peer's leader list claims it");
                        s.leaderless_since = None;
                        pending.remove(&p.group);
                        return;
                    }
                    ListClaim::NoList => known = false,
                    _ => {}
                }
            }
            if !known {
                tracing::debug!(topic = %p.topic, partition = p.partition, "no leader known; waiting for every reachable voter's leader list");
                s.report_stuck(p, now, "no leader known; waiting for a reachable voter's leader list");
                return;
            }
        }
        let leaderless_since = *s.leaderless_since.get_or_insert(now);
        // Surviving voters in preference order; this node's place in it decides when it campaigns.
        let preferred = p.record.read().replicas.clone();
        let mut order: Vec<NodeId> = preferred.iter().filter(|v| voters.contains(v)).cloned().collect();
        let mut rest: Vec<NodeId> = voters.iter().filter(|v| !order.contains(v)).cloned().collect();
        rest.sort_unstable();
        order.extend(rest);
        order.retain(|v| *v == me || (Some(*v) != leader && !live.is_gone(*v)));
        let Some(rank) = order.iter().position(|v| *v == me) else {
            s.report_stuck(p, now, "this node is not in the campaign order");
            return;
        };
        let election_ms = self.deps.timing.election_timeout_ms;
        let step = if never_led { NEW_GROUP_TURN } else { RANK_TURN };
        // A new group is the preferred replica's to lead while it is up (a winner elsewhere would
        // only be moved back: a transfer each, thousands for a big topic): the others wait three
        // turns each — long enough for the preferred one's retries under a burst of new groups,
        // and still a way out if it cannot win (a voter holding an entry it lacks).
        let preferred_up = order.first().is_some_and(|first| live.is_reachable(*first));
        let step = if never_led && preferred_up { step * 3 } else { step };
        // Under a burst (a node that led thousands of groups died) the first voter works through
        // its campaigns a few at a time (MAX_CAMPAIGNS_*): the others' turns stretch with the
        // backlog, or they would campaign for the same groups at the same moment and split the
        // vote — one leader per term, so both lose (docs/adr/0013; measured: p99 failover of
        // 1,667 partitions went from ~2 s to 17 s before the turns stretched).
        let backlog = 1 + (pending.len() / BACKLOG_PER_TURN) as u32;
        let turn = step * rank as u32 * backlog.min(MAX_TURN_STRETCH);
        // After a failed campaign every voter has had its turn before this one retries, and each
        // further failure doubles the wait (up to 8x).
        let base = if never_led {
            // Only the preferred replica campaigns (above): it retries on its own, soon.
            Duration::from_secs(1) * (1u32 << s.attempts.min(2))
        } else {
            step * order.len() as u32 * (1u32 << s.attempts.saturating_sub(1).min(3))
        };
        // An election of this node's may still be running (a candidate hears back slowly when
        // thousands of groups elect at once): starting another before its requests are over
        // would only abort it.
        let base = if state == ServerState::Candidate { base.max(CAMPAIGN_IN_FLIGHT_FOR) } else { base };
        // Retries keep the preference order, a turn apart, spread by group: two voters whose
        // campaigns split the vote do not split it again.
        let retry = base
            + step * rank as u32
            + Duration::from_millis((p.group.wrapping_mul(31) ^ me.wrapping_mul(1009)) % (election_ms.max(1) * 2));
        let due = now.saturating_duration_since(leaderless_since) >= turn
            && s.last_campaign.is_none_or(|t| now.saturating_duration_since(t) >= retry);
        if due && *budget == 0 {
            s.report_stuck(p, now, "too many of this node's campaigns in flight");
            return;
        }
        if !due || !live.quorum_reachable(voters.iter().cloned()) {
            tracing::trace!(topic = %p.topic, partition = p.partition, ?leader, term, rank, due, ?order, "no usable leader; not campaigning now");
            s.report_stuck(p, now, if due { "no quorum of voters reachable" } else { "not this node's turn yet" });
            return;
        }
        s.last_campaign = Some(now);
        s.own_campaign = Some(now);
        s.attempts = s.attempts.saturating_add(1);
        if s.attempts >= 4 {
            let m = p.metrics_rx.borrow_watched();
            tracing::warn!(
                topic = %p.topic,
                partition = p.partition,
                attempts = s.attempts,
                vote = %m.vote,
                last_log = ?m.last_log_index,
                committed = ?m.local_committed,
                "campaigning again: the previous campaigns did not produce a leader"
            );
        }
        *budget -= 1;
        tracing::info!(
            topic = %p.topic,
            partition = p.partition,
            term,
            ?leader,
            ?state,
            rank,
            "partition has no usable leader: campaigning"
        );
        // A pre-vote first, so neither a false suspicion (a leader list that lags) nor a voter
        // whose log is behind (it cannot win) raises the group's term and so disrupts the
        // elections of those that can: found by `bench partitions` — a new group's preferred
        // replica had missed the first leader's entry and, campaigning without pre-votes, kept
        // out-bidding the two voters that could win, for minutes. Skipped only when the known
        // leader's node is unreachable, where it would only slow failover down.
        let leader_gone = leader.is_some_and(|l| live.is_gone(l));
        self.request_election(p, !leader_gone);
    }

    /// Hands the election command to the group's Raft instance without waiting on it here: one
    /// group whose instance does not take commands must not hold up every other group's failover
    /// (found by `bench partitions` at 10,000 partitions: both survivors' drivers stopped on the
    /// same group, and five partitions the killed node led were never re-led). A group whose
    /// instance has not accepted the previous command gets no second one; one that takes longer
    /// than `ELECT_ACCEPT_WARN` is reported by name.
    fn request_election(&self, p: &Arc<Partition>, pre_vote: bool) {
        if !self.elections_requested.lock().insert(p.group) {
            tracing::warn!(topic = %p.topic, partition = p.partition, "the previous election command is still not accepted by this group's Raft instance");
            return;
        }
        let (p, requested) = (p.clone(), self.elections_requested.clone());
        tokio::spawn(async move {
            let trigger = p.raft.trigger();
            let elect = trigger.elect(pre_vote);
            tokio::pin!(elect);
            let result = match tokio::time::timeout(ELECT_ACCEPT_WARN, &mut elect).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(topic = %p.topic, partition = p.partition, group = p.group, waited_ms = ELECT_ACCEPT_WARN.as_millis() as u64, "this group's Raft instance is not accepting commands; still waiting");
                    elect.await
                }
            };
            requested.lock().remove(&p.group);
            if let Err(e) = result {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "could not start an election");
            }
        });
    }
}
