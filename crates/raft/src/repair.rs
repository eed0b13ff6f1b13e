//! Replicas that may have lost writes they acknowledged, and their repair from the others
//! (docs/adr/0015).
//!
//! When a node's write-ahead log is found damaged at startup, it records that (a synced marker
//! file with a repair epoch) before RocksDB drops what follows the damage. From then on every Raft
//! group on the node is *repairing* until it has caught up with a live leader:
//! - it grants no vote and no pre-vote, and ignores leadership transfers: a voter that forgot an
//!   entry it acknowledged could otherwise elect a candidate that lacks a committed entry;
//! - it does not campaign (the election driver skips it; the metadata group's timer is off);
//! - it still takes appends: the first one from a leader names the leader's commit index, and once
//!   this replica has committed that far it holds every entry committed before it came back,
//!   including everything it had acknowledged that counted. It is then repaired for this epoch
//!   (recorded in its state, so a restart does not repeat it) and votes again.
//!
//! Leaders allow a follower's log to go backwards (`allow_log_reversion`): before, a leader whose
//! follower came back shorter panicked ("follower log reversion is not allowed"), taking a healthy
//! group down with the damaged replica.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use runnel_storage::keys::state_key;
use runnel_storage::{Engine, Keyspace, WriteBatch};
use runnel_types::{GroupId, NodeId};

/// The marker file in the data directory: present once writes may have been lost.
const MARKER: &str = "REPAIR";
/// State key (per group) holding the repair epoch the group has finished.
const REPAIRED_KEY: &str = "repaired";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Repaired,
    /// No leader has told this replica its commit index yet.
    Waiting,
    /// Repaired once the local commit index reaches this.
    CatchingUp(u64),
}

/// Which of this node's groups are repairing (see the module docs).
pub struct Repair {
    node_id: NodeId,
    /// `None`: this node never lost writes; nothing repairs.
    epoch: Option<u64>,
    engine: Arc<dyn Engine>,
    groups: Mutex<HashMap<GroupId, Progress>>,
    repaired: tokio::sync::Notify,
}

impl Repair {
    /// Records, durably and before anything is dropped, that this node may have lost writes;
    /// returns the new repair epoch. `why` is kept in the marker for whoever looks.
    pub fn mark_lost_writes(data_dir: &Path, why: &str) -> std::io::Result<u64> {
        let epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let tmp = data_dir.join(format!("{MARKER}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("epoch {epoch}\n{why}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(MARKER))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(epoch)
    }

    /// The repair state of a node whose data lives in `data_dir` (marker or not).
    pub fn load(node_id: NodeId, data_dir: &Path, engine: Arc<dyn Engine>) -> std::io::Result<Arc<Self>> {
        let epoch = match std::fs::read_to_string(data_dir.join(MARKER)) {
            Ok(text) => Some(
                text.lines()
                    .next()
                    .and_then(|l| l.strip_prefix("epoch "))
                    .and_then(|e| e.trim().parse().ok())
                    .ok_or_else(|| {
                        std::io::Error::other(format!("{} names no repair epoch", data_dir.join(MARKER).display()))
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Arc::new(Self::new(node_id, epoch, engine)))
    }

    /// Nothing to repair (the simulator, nodes that never lost writes).
    pub fn none(node_id: NodeId, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self::new(node_id, None, engine))
    }

    fn new(node_id: NodeId, epoch: Option<u64>, engine: Arc<dyn Engine>) -> Self {
        Self { node_id, epoch, engine, groups: Mutex::new(HashMap::new()), repaired: tokio::sync::Notify::new() }
    }

    /// The repair epoch, when this node lost writes at some point.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    fn progress(&self, group: GroupId) -> Progress {
        let Some(epoch) = self.epoch else { return Progress::Repaired };
        let mut groups = self.groups.lock();
        *groups.entry(group).or_insert_with(|| {
            let done = self
                .engine
                .get(Keyspace::State, &state_key(group, REPAIRED_KEY))
                .ok()
                .flatten()
                .and_then(|v| v.try_into().ok().map(u64::from_be_bytes));
            if done == Some(epoch) {
                Progress::Repaired
            } else {
                Progress::Waiting
            }
        })
    }

    /// Whether `group`'s replica here must not vote, campaign or take a leadership transfer.
    pub fn is_repairing(&self, group: GroupId) -> bool {
        self.progress(group) != Progress::Repaired
    }

    /// Why a repairing replica refuses a vote (for the candidate's logs).
    pub fn refusal(&self, group: GroupId) -> String {
        format!(
            "node {} is repairing its replica of group {group} (its write-ahead log was damaged, it may have lost \
             writes it acknowledged): it votes again once it has caught up with a leader",
            self.node_id
        )
    }

    /// A leader's append reached the repairing replica, naming the leader's commit index: the
    /// replica is repaired once its own commit index reaches the first one it heard.
    pub fn heard_leader_commit(&self, group: GroupId, leader_commit: u64) {
        if self.progress(group) == Progress::Waiting {
            self.groups.lock().insert(group, Progress::CatchingUp(leader_commit));
        }
    }

    /// The replica's commit index moved: finishes its repair when it reached the target.
    pub fn committed(&self, group: GroupId, committed: Option<u64>) {
        let Some(epoch) = self.epoch else { return };
        let Progress::CatchingUp(target) = self.progress(group) else { return };
        if committed.is_none_or(|c| c < target) {
            return;
        }
        // Not synced on its own: if it is lost in a crash the group only repairs once more.
        let mut b = WriteBatch::new();
        b.put(Keyspace::State, state_key(group, REPAIRED_KEY), epoch.to_be_bytes().to_vec());
        if let Err(e) = self.engine.write(b) {
            tracing::warn!(group, error = %e, "could not record a finished repair; it repeats after a restart");
        }
        self.groups.lock().insert(group, Progress::Repaired);
        self.repaired.notify_waiters();
        tracing::info!(
            group,
            commit = target,
            "replica repaired: caught up with its leader's commit index, votes again"
        );
    }

    /// Waits until `group` is repaired.
    pub async fn wait_repaired(&self, group: GroupId) {
        loop {
            let notified = self.repaired.notified();
            if !self.is_repairing(group) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use runnel_storage::MemEngine;

    use super::*;

    #[test]
    fn a_group_repairs_once_it_commits_what_the_leader_had_committed() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        assert!(!Repair::load(1, dir.path(), engine.clone()).unwrap().is_repairing(5), "no marker: nothing repairs");

        Repair::mark_lost_writes(dir.path(), "test: WAL damaged").unwrap();
        let r = Repair::load(1, dir.path(), engine.clone()).unwrap();
        assert!(r.is_repairing(5) && r.is_repairing(6));
        assert!(r.refusal(5).contains("repairing"));
        r.committed(5, Some(100)); // no leader heard yet: still repairing
        assert!(r.is_repairing(5));
        r.heard_leader_commit(5, 40);
        r.heard_leader_commit(5, 90); // the first one counts
        r.committed(5, Some(39));
        assert!(r.is_repairing(5));
        r.committed(5, Some(40));
        assert!(!r.is_repairing(5));
        assert!(r.is_repairing(6), "groups repair one by one");

        // A restart keeps both: group 5 done for this epoch, group 6 not.
        let again = Repair::load(1, dir.path(), engine.clone()).unwrap();
        assert!(!again.is_repairing(5) && again.is_repairing(6));

        // A later loss starts a new epoch: every group repairs again.
        std::thread::sleep(std::time::Duration::from_millis(2));
        Repair::mark_lost_writes(dir.path(), "again").unwrap();
        let later = Repair::load(1, dir.path(), engine).unwrap();
        assert!(later.is_repairing(5));
    }
}
