//! Groups some duty should look at again, collected by whoever saw them change.
//!
//! Periodic duties that look at every group (the election driver, leader duties) cost O(groups)
//! per pass whether or not anything happened — at 10,000 idle partitions those sweeps were most of
//! a node's idle CPU (perf, docs/adr/0012). Instead the places where something changes mark the
//! group here (a Raft state transition, a metadata record change, a transfer started), and the
//! duty looks at only the marked groups plus the few it is still working on.

use std::collections::BTreeSet;

use parking_lot::Mutex;
use runnel_types::GroupId;
use tokio::sync::Notify;

#[derive(Default)]
pub struct DirtyGroups {
    groups: Mutex<BTreeSet<GroupId>>,
    notify: Notify,
}

impl DirtyGroups {
    /// Marks `group` and wakes the duty (at once if it waits in [`DirtyGroups::wait`]).
    pub fn mark(&self, group: GroupId) {
        if self.groups.lock().insert(group) {
            // A stored permit if nobody waits: a mark between `take` and the next `wait` is not lost.
            self.notify.notify_one();
        }
    }

    /// The groups marked since the last call.
    pub fn take(&self) -> BTreeSet<GroupId> {
        std::mem::take(&mut *self.groups.lock())
    }

    /// Returns when a group was marked since the last `take` (or a mark's wake-up is pending).
    pub async fn wait(&self) {
        if !self.groups.lock().is_empty() {
            return;
        }
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mark_made_before_waiting_is_not_lost() {
        let d = DirtyGroups::default();
        d.mark(7);
        d.mark(7);
        d.mark(3);
        tokio::time::timeout(std::time::Duration::from_secs(5), d.wait()).await.expect("marked groups wake the waiter");
        assert_eq!(d.take(), BTreeSet::from([3, 7]));
        assert!(d.take().is_empty(), "taken once");
        // The permit stored by the first mark may still wake one wait with nothing marked: the
        // caller then takes an empty set, which is harmless. A fresh mark after that wakes again.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), d.wait()).await;
        d.mark(9);
        tokio::time::timeout(std::time::Duration::from_secs(5), d.wait()).await.expect("a new mark wakes the waiter");
        assert_eq!(d.take(), BTreeSet::from([9]));
    }
}
