//! Starts and stops this node's partition replicas as the committed metadata says.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use parking_lot::RwLock;
use runnel_meta::{PartitionRecord, TopicRecord};
use runnel_raft::log_store::LogStore;
use runnel_raft::meta_sm::MetaView;
use runnel_raft::network::{network_factory, Router};
use runnel_raft::transport::{GroupRegistry, RaftHandler};
use runnel_raft::{group_config, group_seed, start_raft, PartitionTypes, RaftTiming};
use runnel_storage::{Engine, GroupSyncer};
use runnel_types::{GroupId, NodeId, RunnelError};
use tokio::sync::watch;

use crate::partition::Partition;
use crate::partition_sm::PartitionStateMachine;

/// What the broker shares with the rest of the node.
#[derive(Clone)]
pub struct BrokerDeps {
    pub node_id: NodeId,
    pub engine: Arc<dyn Engine>,
    pub syncer: Arc<GroupSyncer>,
    pub router: Router,
    pub registry: GroupRegistry,
    pub timing: RaftTiming,
    /// Seeds every group's Raft randomness (see `runnel_raft::RaftRuntime`).
    pub raft_seed: u64,
    /// TEST ONLY — a planted bug for the simulator's proof that its checker can fail: acks=all
    /// produces are answered before the batch is committed, with a guessed offset. Always false
    /// outside that test.
    pub planted_ack_before_commit: bool,
}

pub struct Broker {
    deps: BrokerDeps,
    by_group: RwLock<BTreeMap<GroupId, Arc<Partition>>>,
    by_name: RwLock<BTreeMap<(String, u32), Arc<Partition>>>,
}

impl Broker {
    pub fn new(deps: BrokerDeps) -> Arc<Self> {
        Arc::new(Self { deps, by_group: RwLock::new(BTreeMap::new()), by_name: RwLock::new(BTreeMap::new()) })
    }

    pub fn node_id(&self) -> NodeId {
        self.deps.node_id
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.by_name.read().get(&(topic.to_string(), partition)).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.by_group.read().values().cloned().collect()
    }

    /// (group, this node, term) for every partition this node currently leads.
    pub fn leader_reports(&self) -> Vec<(GroupId, NodeId, u64)> {
        self.partitions()
            .iter()
            .filter_map(|p| {
                let (leader, term, _) = p.leadership();
                leader.then_some((p.group, self.deps.node_id, term))
            })
            .collect()
    }

    /// Follows the committed metadata until the channel closes.
    pub async fn run_reconciler(self: Arc<Self>, mut meta: watch::Receiver<Arc<MetaView>>) {
        loop {
            let view = meta.borrow_and_update().clone();
            self.reconcile(&view).await;
            if meta.changed().await.is_err() {
                return;
            }
        }
    }

    async fn reconcile(&self, view: &MetaView) {
        for b in view.state.brokers.values() {
            if b.id != self.deps.node_id {
                self.deps.router.set_addr(b.id, &b.addr);
            }
        }
        let wanted: BTreeMap<GroupId, (&TopicRecord, &PartitionRecord)> =
            view.state.partitions_on(self.deps.node_id).into_iter().map(|(t, p)| (p.group_id, (t, p))).collect();
        let running: Vec<GroupId> = self.by_group.read().keys().cloned().collect();
        for g in running {
            if !wanted.contains_key(&g) {
                self.stop_partition(g, true).await;
            }
        }
        for (g, (t, p)) in wanted {
            if self.by_group.read().contains_key(&g) {
                continue;
            }
            if let Err(e) = self.start_partition(t, p).await {
                tracing::error!(topic = %t.name, partition = p.partition, group = g, error = %e, "could not start partition replica");
            }
        }
    }

    async fn start_partition(&self, t: &TopicRecord, p: &PartitionRecord) -> Result<(), RunnelError> {
        let d = &self.deps;
        let err = |e: &dyn std::fmt::Display| RunnelError::internal(format!("{}/{}: {e}", t.name, p.partition));
        let log = LogStore::<PartitionTypes>::new(p.group_id, d.engine.clone(), d.syncer.clone());
        let sm = PartitionStateMachine::open(p.group_id, d.engine.clone()).map_err(|e| err(&e))?;
        let cfg = group_config(&format!("{}-{}", t.name, p.partition), d.timing).map_err(|e| err(&e))?;
        let seed = group_seed(d.raft_seed, p.group_id);
        let raft = start_raft(seed, d.node_id, cfg, network_factory(&d.router, p.group_id), log.clone(), sm.clone())
            .await
            .map_err(|e| err(&e))?;
        d.registry.insert(p.group_id, Arc::new(RaftHandler { raft: raft.clone() }));
        let fresh = !raft.is_initialized().await.map_err(|e| err(&e))?;
        if fresh {
            // Every replica initializes with the same committed membership; openraft accepts
            // identical initial configs from several nodes.
            let router = d.router.clone();
            let self_addr = |n: NodeId| router.addr(n);
            let members = Partition::membership_nodes(&p.replicas, &self_addr);
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(group = p.group_id, error = %e, "initialize skipped");
            }
            // The preferred leader campaigns at once instead of waiting out an election timeout.
            if p.replicas.first() == Some(&d.node_id) {
                let _ = raft.trigger().elect(true).await;
            }
        }
        let part = Arc::new(Partition {
            topic: t.name.clone(),
            partition: p.partition,
            group: p.group_id,
            replicas: p.replicas.clone(),
            config: t.config.clone(),
            raft,
            sm,
            log,
            engine: d.engine.clone(),
            node_id: d.node_id,
            router: d.router.clone(),
            planted_ack_before_commit: d.planted_ack_before_commit,
        });
        self.by_group.write().insert(p.group_id, part.clone());
        self.by_name.write().insert((t.name.clone(), p.partition), part);
        tracing::info!(topic = %t.name, partition = p.partition, group = p.group_id, replicas = ?p.replicas, "partition replica started");
        Ok(())
    }

    async fn stop_partition(&self, group: GroupId, delete_data: bool) {
        let Some(p) = self.by_group.write().remove(&group) else { return };
        self.by_name.write().remove(&(p.topic.clone(), p.partition));
        self.deps.registry.remove(group);
        if let Err(e) = p.raft.shutdown().await {
            tracing::warn!(group, error = %e, "raft shutdown failed");
        }
        if delete_data {
            if let Err(e) = p.log.destroy().and_then(|_| p.sm.destroy()) {
                tracing::error!(group, error = %e, "could not delete data of a deleted partition");
            }
        }
        tracing::info!(topic = %p.topic, partition = p.partition, group, "partition replica stopped");
    }

    /// Preferred-leader balancing: a partition led by a node other than its preferred replica (the
    /// first in its replica list) hands leadership to the preferred one once that replica has every
    /// entry the leader has. Placement spreads preferred leaders evenly, so this spreads leadership
    /// (and the work that goes with it) after startup races and restarts.
    pub async fn run_leader_balancer(self: Arc<Self>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for p in self.partitions() {
                let Some(&preferred) = p.replicas.first() else { continue };
                if preferred == self.deps.node_id {
                    continue;
                }
                let caught_up = {
                    let m = p.raft.metrics();
                    let m = m.borrow_watched();
                    let leader = m.state == openraft::ServerState::Leader;
                    let last = m.last_log_index;
                    let matched =
                        m.replication.as_ref().and_then(|r| r.get(&preferred).cloned().flatten()).map(|l| l.index);
                    leader && last.is_some() && matched == last
                };
                if caught_up {
                    tracing::info!(topic = %p.topic, partition = p.partition, to = preferred, "moving leadership to the preferred replica");
                    if let Err(e) = p.raft.trigger().transfer_leader(preferred).await {
                        tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "leader transfer failed");
                    }
                }
            }
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
