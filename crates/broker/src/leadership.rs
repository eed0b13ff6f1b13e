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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use parking_lot::RwLock;
use runnel_types::GroupId;

use crate::manager::Broker;
use crate::partition::Partition;

/// The groups this node leads, with their terms.
#[derive(Default)]
pub struct Leaderships {
    led: RwLock<BTreeMap<GroupId, u64>>,
    version: AtomicU64,
}

impl Leaderships {
    /// A number that changes whenever the set (or a term in it) changes.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// (group, term) of every group this node leads, by group.
    pub fn snapshot(&self) -> Vec<(GroupId, u64)> {
        self.led.read().iter().map(|(g, t)| (*g, *t)).collect()
    }

    fn set(&self, group: GroupId, led_at: Option<u64>) {
        let mut led = self.led.write();
        let changed = match led_at {
            Some(term) => led.insert(group, term) != Some(term),
            None => led.remove(&group).is_some(),
        };
        if changed {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }
}

type Watcher = std::pin::Pin<Box<dyn std::future::Future<Output = Arc<Partition>> + Send>>;

/// Follows one group's server metrics until its Raft instance stops, recording every change.
fn watch(p: Arc<Partition>, leaderships: Arc<Leaderships>) -> Watcher {
    Box::pin(async move {
        let mut rx = p.raft.server_metrics();
        loop {
            let led_at = {
                let m = rx.borrow_watched();
                (m.state == ServerState::Leader).then(|| m.vote.leader_id().term)
            };
            leaderships.set(p.group, led_at);
            // A change after the read above wakes this; none is lost in between.
            if rx.changed().await.is_err() {
                return p;
            }
        }
    })
}

impl Broker {
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
                watchers.push(watch(p, self.leaderships.clone()));
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
