//! Starts and stops this node's partition replicas as the committed metadata says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::BasicNode;
use parking_lot::{Mutex, RwLock};
use runnel_meta::{PartitionRecord, TopicRecord};
use runnel_raft::log_store::LogStore;
use runnel_raft::meta_sm::MetaView;
use runnel_raft::network::{network_factory, Router};
use runnel_raft::repair::Repair;
use runnel_raft::transport::{follow_repair, GroupRegistry, RaftHandler};
use runnel_raft::{group_config, group_seed, start_raft, Pacing, PartitionTypes, RaftTiming};
use runnel_storage::{DiskSpace, Engine, GroupSyncer, WriteBatch};
use runnel_types::{GroupId, NodeId, RunnelError};
use tokio::sync::watch;

use crate::dirty::DirtyGroups;
use crate::leadership::{Leaderships, TransitionListeners};
use crate::partition::{Clock, Fence, Partition};
use crate::partition_sm::PartitionStateMachine;

/// What the broker shares with the rest of the node.
#[derive(Clone)]
pub struct BrokerDeps {
    pub node_id: NodeId,
    pub engine: Arc<dyn Engine>,
    pub syncer: Arc<GroupSyncer>,
    /// Free space on the data directory (docs/adr/0014).
    pub space: Arc<DiskSpace>,
    /// Which replicas repair after this node lost writes (docs/adr/0015).
    pub repair: Arc<Repair>,
    pub router: Router,
    pub registry: GroupRegistry,
    pub timing: RaftTiming,
    /// Seeds every group's Raft randomness (see `runnel_raft::RaftRuntime`).
    pub raft_seed: u64,
    /// Wall-clock time for retention, compaction and batch timestamps (a seam for the simulator).
    pub clock: Clock,
    /// TEST ONLY — a planted bug for the simulator's proof that its checker can fail: acks=all
    /// produces are answered before the batch is committed, with a guessed offset. Always false
    /// outside that test.
    pub planted_ack_before_commit: bool,
}

pub struct Broker {
    pub(crate) deps: BrokerDeps,
    by_group: RwLock<BTreeMap<GroupId, Arc<Partition>>>,
    by_name: RwLock<BTreeMap<(String, u32), Arc<Partition>>>,
    /// The latest committed metadata this broker has acted on.
    view: RwLock<Option<Arc<MetaView>>>,
    /// Groups whose reassignment this node is driving right now (one driver per group).
    moving: Mutex<BTreeSet<GroupId>>,
    pub fence: Arc<Fence>,
    /// Wakes the election driver for a sweep (replicas were just started).
    pub(crate) sweep_now: tokio::sync::Notify,
    /// Wakes the leadership tracker (replicas were started or stopped).
    pub(crate) replicas_changed: tokio::sync::Notify,
    /// The groups this node leads (see `leadership.rs`).
    pub leaderships: Arc<Leaderships>,
    /// Groups the election driver should look at (their Raft state changed): see `dirty.rs`.
    pub(crate) election_checks: Arc<DirtyGroups>,
    /// Groups leader duties should look at (leadership gained, record changed, transfer started).
    pub(crate) duty_checks: Arc<DirtyGroups>,
    /// Groups whose Raft instance has not yet accepted this node's last election command (see
    /// `elections.rs`): at most one outstanding per group.
    pub(crate) elections_requested: Arc<Mutex<BTreeSet<GroupId>>>,
    /// Held while replicas are started or stopped (the reconciler, the restarter): one Raft
    /// instance per group, never two.
    lifecycle: tokio::sync::Mutex<()>,
    /// Wakes the reconciler for a pass without a metadata change (a replica failed to restart).
    reconcile_now: tokio::sync::Notify,
    /// The metadata channel the reconciler follows; partitions read their topic's configuration
    /// from it (see `Partition::current_config`).
    meta: RwLock<Option<watch::Receiver<Arc<MetaView>>>>,
}

/// How often replicas whose Raft instance stopped on an error are looked for and restarted (see
/// [`Broker::run_replica_restarter`]).
const RESTART_FAILED_EVERY: Duration = Duration::from_secs(2);

/// Reconciler passes are at least this far apart (see [`Broker::run_reconciler`]).
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// How long a leader waits for a new replica to catch up before it retries the reassignment.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Partition replicas started at once when the metadata adds many (a topic of thousands).
const START_PARALLELISM: usize = 32;

/// Leadership transfers one pass of leader duties starts at most (balancing, fencing, retries):
/// each costs an election; after a restart thousands may want to move back, a few at a time.
const MAX_TRANSFERS_PER_PASS: usize = 32;

/// A leader still transferring after this long stops claiming the group in its leader lists, so
/// its followers elect (see `Leaderships::withhold`).
const TRANSFER_GIVE_UP_AFTER: Duration = Duration::from_secs(3);

/// Leaderships a stopping node hands away per round (every 100 ms).
const HANDOFF_BATCH: usize = 128;

/// Leader duties look at every led group at least this often (see [`Broker::run_leader_duties`]):
/// a backstop — every change that matters to a settled group is marked as it happens.
const FULL_DUTIES_EVERY: Duration = Duration::from_secs(10);

/// A leadership transfer not completed after this long is retried (see
/// `Partition::transfer_age`).
const TRANSFER_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Broker {
    pub fn new(deps: BrokerDeps) -> Arc<Self> {
        Arc::new(Self {
            deps,
            by_group: RwLock::new(BTreeMap::new()),
            by_name: RwLock::new(BTreeMap::new()),
            view: RwLock::new(None),
            moving: Mutex::new(BTreeSet::new()),
            fence: Arc::new(Fence::default()),
            sweep_now: tokio::sync::Notify::new(),
            replicas_changed: tokio::sync::Notify::new(),
            leaderships: Arc::new(Leaderships::default()),
            election_checks: Arc::new(DirtyGroups::default()),
            duty_checks: Arc::new(DirtyGroups::default()),
            elections_requested: Arc::new(Mutex::new(BTreeSet::new())),
            lifecycle: tokio::sync::Mutex::new(()),
            reconcile_now: tokio::sync::Notify::new(),
            meta: RwLock::new(None),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.deps.node_id
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.by_name.read().get(&(topic.to_string(), partition)).cloned()
    }

    pub fn by_group(&self, group: GroupId) -> Option<Arc<Partition>> {
        self.by_group.read().get(&group).cloned()
    }

    /// Every running replica by group, read-locked (for lookups of many groups at once).
    pub(crate) fn by_group_map(&self) -> parking_lot::RwLockReadGuard<'_, BTreeMap<GroupId, Arc<Partition>>> {
        self.by_group.read()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.by_group.read().values().cloned().collect()
    }

    /// For every partition this node currently leads: (group, term, committed voters when not in
    /// a joint configuration). The voters are read only where the controller needs them, for
    /// partitions being reassigned; elsewhere they are reported as `Some(empty)`.
    pub fn leader_reports(&self) -> Vec<(GroupId, u64, Option<BTreeSet<NodeId>>)> {
        let by_group = self.by_group.read();
        self.leaderships
            .snapshot()
            .into_iter()
            .map(|(g, term)| {
                let moving = by_group.get(&g).filter(|p| p.record.read().target_replicas.is_some());
                (g, term, moving.map_or(Some(BTreeSet::new()), |p| p.committed_voters()))
            })
            .collect()
    }

    pub(crate) fn transition_listeners(&self) -> TransitionListeners {
        TransitionListeners { elections: self.election_checks.clone(), duties: self.duty_checks.clone() }
    }

    /// The partitions this node leads (as the leadership tracker last saw).
    pub fn led_partitions(&self) -> Vec<Arc<Partition>> {
        let led = self.leaderships.snapshot();
        let by_group = self.by_group.read();
        led.iter().filter_map(|(g, _)| by_group.get(g).cloned()).collect()
    }

    /// Whether `node` is alive in the committed metadata (unknown nodes are not).
    fn is_alive(&self, node: NodeId) -> bool {
        self.view.read().as_ref().and_then(|v| v.state.brokers.get(&node).map(|b| b.is_alive())).unwrap_or(false)
    }

    /// Follows the committed metadata until the channel closes.
    ///
    /// A pass looks at every partition (O(partitions)); while leaders move, the metadata changes
    /// many times a second, so passes are at least `RECONCILE_EVERY` apart and each takes the
    /// latest view (profiled at 10,000 partitions: back-to-back passes took a quarter of a node's
    /// CPU while leaders settled).
    pub async fn run_reconciler(self: Arc<Self>, mut meta: watch::Receiver<Arc<MetaView>>) {
        *self.meta.write() = Some(meta.clone());
        loop {
            let view = meta.borrow_and_update().clone();
            let all_running = self.reconcile(&view).await;
            let next = tokio::time::Instant::now() + RECONCILE_EVERY;
            tokio::select! {
                r = meta.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = self.reconcile_now.notified() => {}
                // A replica did not start (its storage failing, e.g. a full disk RocksDB has not
                // recovered from yet): try again soon, metadata change or not.
                _ = tokio::time::sleep(RESTART_FAILED_EVERY), if !all_running => {}
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// One pass; false when a replica that should run could not be started.
    async fn reconcile(&self, view: &Arc<MetaView>) -> bool {
        let _lifecycle = self.lifecycle.lock().await;
        *self.view.write() = Some(view.clone());
        for b in view.state.brokers.values() {
            if b.id != self.deps.node_id {
                self.deps.router.set_addr(b.id, &b.addr);
            }
        }
        let wanted: BTreeMap<GroupId, (&TopicRecord, &PartitionRecord)> =
            view.state.partitions_on(self.deps.node_id).into_iter().map(|(t, p)| (p.group_id, (t, p))).collect();
        let running: Vec<GroupId> = self.by_group.read().keys().cloned().collect();
        let mut stopped = 0usize;
        for g in running {
            if !wanted.contains_key(&g) {
                stopped += 1;
                // Data is deleted only when the partition itself is gone (its topic deleted; group
                // ids are never reused). A replica moved off this node only stops: this node's
                // copy of the metadata can lag the partition's own Raft group, and by the time it
                // reads "not a replica here" the partition may already have added this node back
                // as a voter that acknowledged writes. Deleting then would lose them (found by the
                // simulator, seed 774838544). The kept log is a valid Raft log if it is re-added.
                let topic_deleted = view.state.partition_by_group(g).is_none();
                self.stop_partition(g, topic_deleted).await;
            }
        }
        let mut to_start = Vec::new();
        for (g, (t, p)) in wanted {
            let running = self.by_group.read().get(&g).cloned();
            if let Some(part) = running {
                if *part.record.read() != *p {
                    *part.record.write() = p.clone();
                    // Its preferred leader or its reassignment target may have changed.
                    self.duty_checks.mark(g);
                }
                if *part.config.read() != t.config {
                    tracing::info!(topic = %t.name, partition = p.partition, "topic configuration changed");
                    *part.config.write() = t.config.clone();
                }
                continue;
            }
            to_start.push((t, p));
        }
        // A topic of thousands of partitions starts in bounded parallel batches: each start reads
        // the replica's state and (first time) writes its initial membership, and running many at
        // once lets one WAL sync cover many of them instead of one sync each.
        let started = std::sync::atomic::AtomicUsize::new(0);
        let wanted_starts = to_start.len();
        futures::stream::iter(to_start)
            .for_each_concurrent(START_PARALLELISM, |(t, p)| {
                let started = &started;
                async move {
                    match self.start_partition(t, p).await {
                        Ok(()) => {
                            started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::error!(topic = %t.name, partition = p.partition, group = p.group_id, error = %e, "could not start partition replica")
                        }
                    }
                }
            })
            .await;
        let started = started.into_inner();
        if started > 0 {
            tracing::info!(started, running = self.by_group.read().len(), "partition replicas started");
            self.sweep_now.notify_one();
        }
        if started + stopped > 0 {
            self.replicas_changed.notify_one();
        }
        started == wanted_starts
    }

    async fn start_partition(&self, t: &TopicRecord, p: &PartitionRecord) -> Result<(), RunnelError> {
        let d = &self.deps;
        let err = |e: &dyn std::fmt::Display| RunnelError::internal(format!("{}/{}: {e}", t.name, p.partition));
        let log = LogStore::<PartitionTypes>::new(p.group_id, d.engine.clone(), d.syncer.clone());
        let sm = PartitionStateMachine::open(p.group_id, d.engine.clone()).map_err(|e| err(&e))?;
        let cfg =
            group_config(&format!("{}-{}", t.name, p.partition), d.timing, Pacing::Quiescent).map_err(|e| err(&e))?;
        let seed = group_seed(d.raft_seed, p.group_id);
        let raft = start_raft(seed, d.node_id, cfg, network_factory(&d.router, p.group_id), log.clone(), sm.clone())
            .await
            .map_err(|e| err(&e))?;
        d.registry.insert(
            p.group_id,
            Arc::new(RaftHandler {
                raft: raft.clone(),
                group: p.group_id,
                repair: d.repair.clone(),
                space: Some(d.space.clone()),
            }),
        );
        follow_repair(&raft, p.group_id, &d.repair);
        let fresh = !raft.is_initialized().await.map_err(|e| err(&e))?;
        // Only the replicas the partition was created with initialize its group. A replica added by
        // a reassignment (partition epoch above 1) starts empty and waits to be added as a learner
        // by the leader: initializing it would invent a second, conflicting first membership.
        // Nor does a replica that is repairing: if it looks new, it may have lost everything, and
        // its leader sends it the group's log and membership.
        if fresh && p.partition_epoch == 1 && p.replicas.contains(&d.node_id) && !d.repair.is_repairing(p.group_id) {
            // Every replica initializes with the same committed membership; openraft accepts
            // identical initial configs from several nodes.
            let router = d.router.clone();
            let self_addr = |n: NodeId| router.addr(n);
            let members = Partition::membership_nodes(&p.replicas, &self_addr);
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(group = p.group_id, error = %e, "initialize skipped");
            }
            // The first election is the election driver's (elections.rs): the preferred replica
            // campaigns on its next sweep, which the reconciler triggers once this batch started.
        }
        let metrics_rx = raft.metrics();
        let part = Arc::new(Partition {
            topic: t.name.clone(),
            partition: p.partition,
            group: p.group_id,
            record: RwLock::new(p.clone()),
            config: RwLock::new(t.config.clone()),
            clock: d.clock.clone(),
            raft,
            sm,
            log,
            engine: d.engine.clone(),
            node_id: d.node_id,
            router: d.router.clone(),
            fence: self.fence.clone(),
            space: d.space.clone(),
            planted_ack_before_commit: d.planted_ack_before_commit,
            meta: self.meta.read().clone(),
            transfer: parking_lot::Mutex::new(None),
            duty_checks: self.duty_checks.clone(),
            metrics_rx,
        });
        self.by_group.write().insert(p.group_id, part.clone());
        self.by_name.write().insert((t.name.clone(), p.partition), part);
        tracing::debug!(topic = %t.name, partition = p.partition, group = p.group_id, replicas = ?p.replicas, "partition replica started");
        Ok(())
    }

    /// Restarts replicas whose Raft instance stopped on an error, until the task is dropped.
    ///
    /// openraft stops a group for good on a storage error — a write that hit a full disk before
    /// the watermarks (docs/adr/0014) could refuse it, e.g. because something else filled the disk
    /// between two measurements. RocksDB clears such an error by itself once space returns; a new
    /// instance then reads the group's state back from disk, exactly as after a process restart
    /// (nothing a crash could not lose is lost). Found by hand: the partition otherwise stayed
    /// leaderless until the process was restarted.
    pub async fn run_replica_restarter(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RESTART_FAILED_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let failed: Vec<(Arc<Partition>, String)> = self
                .partitions()
                .into_iter()
                .filter_map(|p| {
                    let why = p.metrics_rx.borrow_watched().running_state.as_ref().err().map(|e| e.to_string());
                    why.map(|w| (p, w))
                })
                .collect();
            if failed.is_empty() {
                continue;
            }
            if let Err(low) = self.deps.space.check_replicated_data() {
                tracing::warn!(replicas = failed.len(), %low, "replicas stopped on an error wait for disk space before they restart");
                continue;
            }
            let _lifecycle = self.lifecycle.lock().await;
            let Some(view) = self.view.read().clone() else { continue };
            for (p, why) in failed {
                if !self.by_group(p.group).is_some_and(|running| Arc::ptr_eq(&running, &p)) {
                    continue; // stopped or replaced meanwhile
                }
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %why, "partition replica's Raft stopped on an error; restarting it");
                self.stop_partition(p.group, false).await;
                let Some((t, rec)) =
                    view.state.partitions_on(self.deps.node_id).into_iter().find(|(_, r)| r.group_id == p.group)
                else {
                    continue;
                };
                if let Err(e) = self.start_partition(t, rec).await {
                    // The reconciler notices the missing replica and retries (see run_reconciler).
                    tracing::error!(topic = %t.name, partition = rec.partition, error = %e, "could not restart partition replica; retrying");
                    self.reconcile_now.notify_one();
                }
            }
            self.replicas_changed.notify_one();
            self.sweep_now.notify_one();
        }
    }

    async fn stop_partition(&self, group: GroupId, delete_data: bool) {
        let Some(p) = self.by_group.write().remove(&group) else { return };
        self.by_name.write().remove(&(p.topic.clone(), p.partition));
        self.deps.registry.remove(group);
        if let Err(e) = p.raft.shutdown().await {
            tracing::warn!(group, error = %e, "raft shutdown failed");
        }
        if delete_data {
            // No compaction rewrite may land after (or inside) the deletion.
            p.sm.close().await;
            // One batch, made durable before anything else happens: after a crash the replica is
            // either entirely there (and consistent) or entirely gone.
            let mut b = WriteBatch::new();
            p.log.destroy_into(&mut b);
            p.sm.destroy_into(&mut b);
            let deleted = match self.deps.engine.write(b) {
                Ok(()) => self.deps.syncer.sync().await,
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                tracing::error!(group, error = %e, "could not delete data of a removed replica");
            }
        }
        tracing::debug!(topic = %p.topic, partition = p.partition, group, "partition replica stopped");
    }

    /// The leader's periodic duties for each partition it leads, every `every`:
    /// - while fenced, hand leadership to a caught-up replica (a fenced leader takes no writes);
    /// - drive a reassignment the metadata asks for (see [`Self::drive_reassignment`]);
    /// - preferred-leader balancing: hand leadership to the preferred replica (the first in the
    ///   replica list) once it is alive and has every entry the leader has. Placement spreads
    ///   preferred leaders evenly, so this spreads leadership after startup races and restarts;
    /// - retry a stalled leadership transfer, and after `TRANSFER_GIVE_UP_AFTER` leave the group
    ///   out of the leader lists so its followers elect.
    ///
    /// Cost: a pass looks only at the led groups that changed since the last one (leadership
    /// gained, record changed, transfer started: `duty_checks`) and those still needing something
    /// (led away from their preferred replica, transferring, being reassigned). Every led group is
    /// looked at only while fenced and every `FULL_DUTIES_EVERY` as a backstop. A settled group —
    /// led by its preferred replica, nothing in progress — costs nothing: looking at every led
    /// group every pass was a quarter of a node's idle CPU at 10,000 partitions (perf, ADR 0012).
    pub async fn run_leader_duties(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unsettled: BTreeSet<GroupId> = BTreeSet::new();
        let mut next_full = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let fenced = self.fence.is_fenced();
            let mut look_at = self.duty_checks.take();
            let parts: Vec<Arc<Partition>> = if fenced || now >= next_full {
                next_full = now + FULL_DUTIES_EVERY;
                unsettled.clear();
                self.led_partitions()
            } else {
                look_at.extend(unsettled.iter().cloned());
                let by_group = self.by_group.read();
                // Groups no longer running drop out.
                unsettled.retain(|g| by_group.contains_key(g));
                look_at.iter().filter_map(|g| by_group.get(g).cloned()).collect()
            };
            let mut transfers = MAX_TRANSFERS_PER_PASS;
            for p in parts {
                if self.leader_duty(&p, fenced, &mut transfers).await {
                    unsettled.remove(&p.group);
                } else {
                    unsettled.insert(p.group);
                }
            }
        }
    }

    /// One leader duty pass over `p`; true when the group needs nothing more from this node until
    /// something changes (it is not led here, or it is led by its preferred replica — this one —
    /// with no transfer or reassignment in progress).
    async fn leader_duty(self: &Arc<Self>, p: &Arc<Partition>, fenced: bool, transfers: &mut usize) -> bool {
        let (is_leader, term, _) = p.leadership();
        if !is_leader {
            return true;
        }
        let (preferred, moving) = {
            let record = p.record.read();
            (record.replicas.first().cloned(), record.target_replicas.is_some())
        };
        if *transfers == 0 && !moving {
            return false;
        }
        let live = self.deps.router.liveness().clone();
        if let Some((first, last)) = p.transfer_age() {
            if first >= TRANSFER_GIVE_UP_AFTER {
                self.leaderships.withhold(p.group, term);
            }
            if last >= TRANSFER_RETRY_AFTER {
                *transfers = transfers.saturating_sub(1);
                // The target did not take over; this leader takes no writes meanwhile. Ask a
                // reachable, caught-up voter again (preferring the preferred replica).
                let voters = p.caught_up_voters();
                let replicas = p.record.read().replicas.clone();
                let to = replicas
                    .iter()
                    .chain(voters.iter())
                    .find(|v| **v != self.deps.node_id && voters.contains(v) && live.is_reachable(**v))
                    .cloned();
                if let Some(to) = to {
                    tracing::info!(topic = %p.topic, partition = p.partition, to, "leadership transfer stalled: retrying");
                    let _ = p.transfer_leadership(to).await;
                }
            }
            return false;
        }
        if fenced {
            *transfers = transfers.saturating_sub(1);
            if let Some(to) = p.caught_up_voters().into_iter().find(|v| *v != self.deps.node_id) {
                tracing::info!(topic = %p.topic, partition = p.partition, to, "fenced: handing leadership away");
                let _ = p.transfer_leadership(to).await;
            }
            return false;
        }
        if moving {
            let target = p.record.read().target_replicas.clone();
            if let Some(target) = target {
                let newly = self.moving.lock().insert(p.group);
                if newly {
                    let (me, p) = (self.clone(), p.clone());
                    tokio::spawn(async move {
                        me.drive_reassignment(&p, &target).await;
                        me.moving.lock().remove(&p.group);
                    });
                }
            }
            return false;
        }
        let Some(preferred) = preferred else { return true };
        if preferred == self.deps.node_id {
            return true;
        }
        if !self.is_alive(preferred) || !live.is_reachable(preferred) {
            return false;
        }
        if p.caught_up_voters().contains(&preferred) {
            *transfers = transfers.saturating_sub(1);
            tracing::info!(topic = %p.topic, partition = p.partition, to = preferred, "moving leadership to the preferred replica");
            if let Err(e) = p.transfer_leadership(preferred).await {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "leader transfer failed");
            }
        }
        false
    }

    /// Moves the partition's Raft group to the `target` voters without ever losing quorum safety:
    /// each new replica joins as a learner and catches up first, then one membership change
    /// replaces the voters (openraft goes through the joint configuration of old and new). The
    /// leader reports the committed voters in its heartbeat; the controller then finishes the
    /// reassignment in the metadata, and replicas no longer in it stop and delete their data.
    async fn drive_reassignment(&self, p: &Partition, target: &[NodeId]) {
        let want: BTreeSet<NodeId> = target.iter().cloned().collect();
        if p.committed_voters().as_ref() == Some(&want) {
            return;
        }
        let members: BTreeSet<NodeId> = {
            let m = p.metrics_rx.borrow_watched();
            m.membership_config.membership().nodes().map(|(id, _)| *id).collect()
        };
        for &node in target {
            if members.contains(&node) {
                continue;
            }
            let Some(addr) = self.deps.router.addr(node) else {
                tracing::warn!(topic = %p.topic, partition = p.partition, node, "no address for the new replica yet");
                return;
            };
            tracing::info!(topic = %p.topic, partition = p.partition, node, "adding replica as learner");
            p.renew_lease().await;
            match tokio::time::timeout(CATCH_UP_TIMEOUT, p.raft.add_learner(node, BasicNode { addr }, true)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(topic = %p.topic, partition = p.partition, node, error = %e, "could not add learner");
                    return;
                }
                Err(_) => {
                    tracing::warn!(topic = %p.topic, partition = p.partition, node, "learner did not catch up in time; will retry");
                    return;
                }
            }
        }
        tracing::info!(topic = %p.topic, partition = p.partition, voters = ?want, "replacing voters");
        p.renew_lease().await;
        if let Err(e) = p.raft.change_membership(want, false).await {
            tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "membership change failed; will retry");
        }
    }

    /// Retention, every `every`: each partition this node leads proposes a `TrimLog` when its
    /// topic's `retention.ms` / `retention.bytes` want the log start to advance; every replica
    /// applies it at the same log position.
    pub async fn run_retention(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Only leaders propose trims.
            for p in self.led_partitions() {
                if let Err(e) = p.enforce_retention().await {
                    tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "retention check failed");
                }
            }
        }
    }

    /// The cleaner, every `every`: compacts every replica on this node whose topic's
    /// `cleanup.policy` includes `compact` (each replica compacts its own copy).
    pub async fn run_cleaner(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for p in self.partitions() {
                if let Err(e) = p.compact().await {
                    tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "compaction failed");
                }
            }
        }
    }

    /// Graceful shutdown, first half: hands every leadership this node holds to a caught-up replica
    /// and waits (up to `within`) until it leads nothing, so clients fail over before it stops.
    pub async fn hand_off_leaderships(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let led: Vec<Arc<Partition>> = self.led_partitions().into_iter().filter(|p| p.leadership().0).collect();
            if led.is_empty() || tokio::time::Instant::now() >= deadline {
                if !led.is_empty() {
                    tracing::warn!(partitions = led.len(), "still leading partitions at shutdown");
                }
                return;
            }
            // A bounded batch per round: thousands of simultaneous elections would time out on
            // each other (see MAX_TRANSFERS_PER_PASS). Partitions already handed off drop out.
            let live = self.deps.router.liveness().clone();
            for p in led
                .into_iter()
                .filter(|p| p.transfer_age().is_none_or(|(_, last)| last >= TRANSFER_RETRY_AFTER))
                .take(HANDOFF_BATCH)
            {
                let to = p
                    .caught_up_voters()
                    .into_iter()
                    .find(|v| *v != self.deps.node_id && self.is_alive(*v) && live.is_reachable(*v));
                if let Some(to) = to {
                    let _ = p.transfer_leadership(to).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every partition (node shutdown), keeping their data.
    pub async fn shutdown(&self) {
        let groups: Vec<GroupId> = self.by_group.read().keys().cloned().collect();
        for g in groups {
            self.stop_partition(g, false).await;
        }
    }
}
