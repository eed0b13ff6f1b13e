//! Which partition groups this node leads, kept current by events instead of polling.
//!
//! Several duties need "the groups this node leads": the report to the controller (every broker
//! heartbeat), the leader lists in liveness pings, leader duties, retention. Asking every group's
//! Raft for its state each time costs O(replicas) per duty per tick — with thousands of replicas
//! on a node that polling was the largest idle cost (measured with perf, ADR 0012). Instead one
//! task waits on every group's server-metrics channel (which changes only on state transitions:
//! elections, step-downs, membership changes) and keeps the set, with a version number that moves
//! whenever it changes, so an unchanged set costs nothing to report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use parking_lot::RwLock;
use runnel_raft::liveness::GroupHooks;
use runnel_types::{GroupId, NodeId};
use tokio::sync::watch;

use crate::dirty::DirtyGroups;
use crate::manager::Broker;
use crate::partition::Partition;

#[derive(Default)]
struct Led {
    /// Every group this node leads, with its term.
    terms: BTreeMap<GroupId, u64>,
    /// Led groups left out of the leader lists sent to peers: stuck in a leadership transfer (see
    /// [`Leaderships::withhold`]). Cleared when the group's leadership changes.
    withheld: BTreeSet<GroupId>,
}

/// The groups this node leads, with their terms.
pub struct Leaderships {
    led: RwLock<Led>,
    /// Moves (under `led`'s write lock) whenever `led` changes; subscribers wake on it.
    version: watch::Sender<u64>,
}

impl Default for Leaderships {
    fn default() -> Self {
        Self { led: RwLock::new(Led::default()), version: watch::channel(0).0 }
    }
}

impl Leaderships {
    /// A number that changes whenever the set (or a term in it) changes.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Changes whenever [`Leaderships::version`] does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// (group, term) of every group this node leads, by group.
    pub fn snapshot(&self) -> Vec<(GroupId, u64)> {
        self.led.read().terms.iter().map(|(g, t)| (*g, *t)).collect()
    }

    /// What this node claims to lead in its leader lists — every led group but the withheld ones —
    /// with the version it is (read together).
    pub fn claimed(&self) -> (u64, Vec<(GroupId, u64)>) {
        let led = self.led.read();
        let list = led.terms.iter().filter(|(g, _)| !led.withheld.contains(g)).map(|(g, t)| (*g, *t)).collect();
        (self.version(), list)
    }

    /// Leaves `group` out of the leader lists while this node still leads it at `term`: its
    /// leadership transfer is stuck (openraft's leader then refuses writes and cannot cancel the
    /// transfer), so its followers must see it unled and elect.
    pub fn withhold(&self, group: GroupId, term: u64) {
        let mut led = self.led.write();
        if led.terms.get(&group) == Some(&term) && led.withheld.insert(group) {
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn set(&self, group: GroupId, led_at: Option<u64>) {
        let mut led = self.led.write();
        let changed = match led_at {
            Some(term) => led.terms.insert(group, term) != Some(term),
            None => led.terms.remove(&group).is_some(),
        };
        if changed {
            led.withheld.remove(&group);
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

/// What the node-level failure detector asks of the broker (`runnel_raft::liveness`): the leader
/// list its pings carry, and where groups a peer stopped claiming go (the election driver).
struct LivenessHooks {
    leaderships: Arc<Leaderships>,
    elections: Arc<DirtyGroups>,
}

impl GroupHooks for LivenessHooks {
    fn leader_list_version(&self) -> u64 {
        self.leaderships.version()
    }

    fn leader_list(&self) -> (u64, Vec<(GroupId, u64)>) {
        self.leaderships.claimed()
    }

    fn peer_stopped_claiming(&self, peer: NodeId, groups: Vec<GroupId>) {
        tracing::debug!(peer, groups = groups.len(), "a peer stopped claiming groups in its leader list");
        for g in groups {
            self.elections.mark(g);
        }
    }
}

type Watcher = std::pin::Pin<Box<dyn std::future::Future<Output = Arc<Partition>> + Send>>;

/// Who hears of a group's state transitions besides [`Leaderships`].
#[derive(Clone)]
pub(crate) struct TransitionListeners {
    /// The election driver (a follower's leader changed, a group lost its leader).
    pub elections: Arc<DirtyGroups>,
    /// Leader duties (this node became leader: is it the preferred replica?).
    pub duties: Arc<DirtyGroups>,
}

/// Follows one group's server metrics until its Raft instance stops, recording every change.
fn watch(p: Arc<Partition>, leaderships: Arc<Leaderships>, listeners: TransitionListeners) -> Watcher {
    Box::pin(async move {
        let mut rx = p.raft.server_metrics();
        loop {
            let led_at = {
                let m = rx.borrow_watched();
                (m.state == ServerState::Leader).then(|| m.vote.leader_id().term)
            };
            leaderships.set(p.group, led_at);
            listeners.elections.mark(p.group);
            listeners.duties.mark(p.group);
            // A change after the read above wakes this; none is lost in between.
            if rx.changed().await.is_err() {
                return p;
            }
        }
    })
}

impl Broker {
    /// The hooks this node's failure detector needs (`NodeLiveness::set_hooks`).
    pub fn liveness_hooks(&self) -> Arc<dyn GroupHooks> {
        Arc::new(LivenessHooks { leaderships: self.leaderships.clone(), elections: self.election_checks.clone() })
    }

    /// Keeps [`Broker::leaderships`] current until the task is dropped.
    pub async fn run_leadership_tracker(self: Arc<Self>) {
        // The instance each group is watched through: a group stopped and started again is a new
        // Raft instance, whose channel needs a new watcher.
        let mut watching: BTreeMap<GroupId, Arc<Partition>> = BTreeMap::new();
        let mut watchers: FuturesUnordered<Watcher> = FuturesUnordered::new();
        let mut rescan = true;
        loop {
            if std::mem::take(&mut rescan) {
                self.watch_new_replicas(&mut watching, &mut watchers);
            }
            tokio::select! {
                _ = self.replicas_changed.notified() => rescan = true,
                Some(p) = watchers.next() => {
                    // Its Raft instance stopped; a restarted one is picked up on the next rescan.
                    if watching.get(&p.group).is_some_and(|w| Arc::ptr_eq(w, &p)) {
                        watching.remove(&p.group);
                        self.leaderships.set(p.group, None);
                    }
                }
            }
        }
    }

    /// Starts watching replicas not watched yet (or restarted), and forgets stopped ones. Runs
    /// only when the reconciler started or stopped replicas: O(replicas).
    fn watch_new_replicas(
        &self,
        watching: &mut BTreeMap<GroupId, Arc<Partition>>,
        watchers: &mut FuturesUnordered<Watcher>,
    ) {
        {
            let running = self.partitions();
            let running_ids: BTreeSet<GroupId> = running.iter().map(|p| p.group).collect();
            for p in running {
                if watching.get(&p.group).is_some_and(|w| Arc::ptr_eq(w, &p)) {
                    continue;
                }
                watching.insert(p.group, p.clone());
                watchers.push(watch(p, self.leaderships.clone(), self.transition_listeners()));
            }
            watching.retain(|g, _| {
                let keep = running_ids.contains(g);
                if !keep {
                    self.leaderships.set(*g, None);
                }
                keep
            });
        }
    }
}
