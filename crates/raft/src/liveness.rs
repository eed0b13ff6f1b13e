//! Node-level failure detection (docs/adr/0012-quiescent-partition-groups.md).
//!
//! Partition groups run without Raft heartbeats or election timers: an idle group sends nothing
//! and wakes no timer. What decides that a group's leader is gone is this detector, one per node:
//! every `interval` it pings each peer (one small RPC per node pair, on the priority connection it
//! shares with the metadata group), and any successful Raft call to a peer — and any request
//! arriving from it (ping or Raft message; over TCP that needs both directions working) — counts
//! as hearing from it too, so data traffic keeps a busy peer alive even when a ping is slow. A peer not heard from
//! for `timeout` is *unreachable*. Every few pings the ping also carries the partition groups the
//! sender leads, so that a follower notices a leader whose node is alive but which no longer leads
//! its group (it stepped down, stopped the replica, or restarted within the timeout).
//!
//! Consumers:
//! - the election driver (`runnel_broker`) elects in the groups whose leader is unreachable or has
//!   stopped leading, and in groups without a leader;
//! - a partition leader serves reads and writes only while a quorum of its voters is reachable:
//!   a leader partitioned away from its followers stops answering instead of serving stale data.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use runnel_proto::internal::liveness_server::Liveness;
use runnel_proto::internal::{PingReply, PingRequest};
use runnel_types::{GroupId, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the detector is tuned. Units in the names; see `NodeConfig` for the defaults.
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// A ping to every peer this often.
    pub interval: Duration,
    /// A peer not heard from for this long is unreachable (its groups elect new leaders).
    pub timeout: Duration,
    /// Every this many pings, the ping carries the groups the sender leads.
    pub leaders_every_pings: u32,
}

impl LivenessConfig {
    pub fn new(interval_ms: u64, timeout_ms: u64) -> Self {
        let interval = Duration::from_millis(interval_ms.max(1));
        // About once a second, at least every 5th ping.
        let leaders_every_pings = (1000 / interval_ms.max(1)).clamp(1, 5) as u32;
        Self { interval, timeout: Duration::from_millis(timeout_ms.max(1)), leaders_every_pings }
    }
}

/// The groups one peer said it leads, with their terms, and when the list arrived (a list sent
/// as "unchanged" shares the groups of the one it repeats).
struct LeaderList {
    received: Instant,
    version: u64,
    groups: Arc<HashMap<GroupId, u64>>,
}

struct Peer {
    /// When this node started watching the peer: an unknown peer gets one `timeout` of grace
    /// before it counts as gone, so a node that just started does not elect over healthy leaders.
    watched_since: Instant,
    last_heard: Option<Instant>,
    incarnation: Option<u64>,
    /// The two latest leader lists (oldest first).
    lists: VecDeque<LeaderList>,
    /// Whether the last check found it unreachable (to announce each transition once).
    down: bool,
    /// The version of this node's leader list the peer said it holds (0: none).
    holds_version: u64,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            watched_since: now,
            last_heard: None,
            incarnation: None,
            lists: VecDeque::new(),
            down: false,
            holds_version: 0,
        }
    }
}

/// What a peer's leader list says about one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListClaim {
    /// No list from it yet.
    NoList,
    Leads(u64),
    DoesNotLead,
}

/// What the broker gives the detector.
pub trait GroupHooks: Send + Sync {
    /// A number that changes whenever [`GroupHooks::leader_list`] would.
    fn leader_list_version(&self) -> u64;
    /// The groups this node claims to lead, with their terms, and the version they are.
    fn leader_list(&self) -> (u64, Vec<(GroupId, u64)>);
    /// `peer`'s new leader list no longer claims `groups`, which its previous list did: their
    /// followers here should look at them (see `NodeLiveness::stopped_leading`).
    fn peer_stopped_claiming(&self, peer: NodeId, groups: Vec<GroupId>);
}

pub struct NodeLiveness {
    self_id: NodeId,
    incarnation: u64,
    cfg: LivenessConfig,
    peers: RwLock<BTreeMap<NodeId, Peer>>,
    /// Bumped whenever a peer becomes unreachable, restarts, or sends a leader list: the election
    /// driver then looks at every group at once instead of waiting for its next sweep.
    changes: watch::Sender<u64>,
    hooks: RwLock<Option<Arc<dyn GroupHooks>>>,
}

impl NodeLiveness {
    pub fn new(self_id: NodeId, incarnation: u64, cfg: LivenessConfig) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            incarnation,
            cfg,
            peers: RwLock::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            hooks: RwLock::new(None),
        })
    }

    /// Where the leader lists this node sends come from, and who hears of groups peers stopped
    /// claiming (the broker).
    pub fn set_hooks(&self, hooks: Arc<dyn GroupHooks>) {
        *self.hooks.write() = Some(hooks);
    }

    /// A receiver that changes when the driver should look at every group now.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn announce(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Starts watching `peer` (a member of the cluster).
    pub fn watch(&self, peer: NodeId) {
        if peer == self.self_id {
            return;
        }
        let now = Instant::now();
        self.peers.write().entry(peer).or_insert_with(|| Peer::new(now));
    }

    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.read().keys().cloned().collect()
    }

    /// Something from `peer` just arrived (a ping reply, or the answer to a Raft call).
    pub fn heard(&self, peer: NodeId) {
        if peer == self.self_id {
            return;
        }
        let now = Instant::now();
        // Most calls find the peer present: a read lock keeps concurrent Raft replies from
        // contending on a write lock just to move a timestamp.
        {
            let peers = self.peers.read();
            if let Some(p) = peers.get(&peer) {
                if p.last_heard.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.interval / 4) {
                    return;
                }
            }
        }
        let mut peers = self.peers.write();
        let p = peers.entry(peer).or_insert_with(|| Peer::new(now));
        p.last_heard = Some(now);
        p.down = false;
    }

    /// Whether `peer` was heard from within the timeout (this node always is).
    pub fn is_reachable(&self, peer: NodeId) -> bool {
        if peer == self.self_id {
            return true;
        }
        let now = Instant::now();
        self.peers
            .read()
            .get(&peer)
            .and_then(|p| p.last_heard)
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout)
    }

    /// Whether `peer` is gone as far as elections go: unreachable for the timeout, counting an
    /// unknown or newly watched peer as alive for its first timeout.
    pub fn is_gone(&self, peer: NodeId) -> bool {
        if peer == self.self_id {
            return false;
        }
        let now = Instant::now();
        match self.peers.read().get(&peer) {
            None => false,
            Some(p) => {
                let since = p.last_heard.map_or(p.watched_since, |h| h.max(p.watched_since));
                now.saturating_duration_since(since) >= self.cfg.timeout
            }
        }
    }

    /// Whether at least a majority of `voters` is reachable (this node counts if it is one).
    pub fn quorum_reachable(&self, voters: impl IntoIterator<Item = NodeId>) -> bool {
        let (mut total, mut up) = (0usize, 0usize);
        for v in voters {
            total += 1;
            if self.is_reachable(v) {
                up += 1;
            }
        }
        up * 2 > total
    }

    /// Whether `peer`'s two latest leader lists, both received after `since`, say it does not
    /// lead `group` at `term` (or later). Two lists, so a list sent just before the peer became
    /// leader and delivered just after this node saw it lead is not mistaken for a step-down.
    pub fn stopped_leading(&self, peer: NodeId, group: GroupId, term: u64, since: Instant) -> bool {
        let peers = self.peers.read();
        let Some(p) = peers.get(&peer) else { return false };
        p.lists.len() == 2
            && p.lists.iter().all(|l| l.received > since && l.groups.get(&group).is_none_or(|t| *t < term))
    }

    /// Whether `peer`'s latest leader list, received after `since`, names `group` at `term` (or
    /// later): the belief that it leads is confirmed, and only a later list that drops the group
    /// (reported through [`GroupHooks::peer_stopped_claiming`]) or the peer's loss can change that.
    pub fn confirms_leading(&self, peer: NodeId, group: GroupId, term: u64, since: Instant) -> bool {
        let peers = self.peers.read();
        let Some(p) = peers.get(&peer) else { return false };
        p.lists.back().is_some_and(|l| l.received > since && l.groups.get(&group).is_some_and(|t| *t >= term))
    }

    /// What `peer`'s latest leader list, received since this node started watching it, says
    /// about `group`.
    pub fn list_claim(&self, peer: NodeId, group: GroupId) -> ListClaim {
        let peers = self.peers.read();
        let Some(p) = peers.get(&peer) else { return ListClaim::NoList };
        match p.lists.back() {
            Some(l) if l.received >= p.watched_since => match l.groups.get(&group) {
                Some(t) => ListClaim::Leads(*t),
                None => ListClaim::DoesNotLead,
            },
            _ => ListClaim::NoList,
        }
    }

    /// One round of the detector's bookkeeping: announces peers that just became unreachable.
    fn check_transitions(&self) {
        let now = Instant::now();
        let mut changed = false;
        for (id, p) in self.peers.write().iter_mut() {
            let since = p.last_heard.map_or(p.watched_since, |h| h.max(p.watched_since));
            let down = now.saturating_duration_since(since) >= self.cfg.timeout;
            if down && !p.down {
                tracing::warn!(peer = id, timeout_ms = self.cfg.timeout.as_millis() as u64, "peer node unreachable");
                changed = true;
            } else if !down && p.down {
                tracing::info!(peer = id, "peer node reachable again");
            }
            p.down = down;
        }
        if changed {
            self.announce();
        }
    }

    fn record_incarnation(&self, peer: NodeId, incarnation: u64) {
        let restarted = {
            let mut peers = self.peers.write();
            let now = Instant::now();
            let p = peers.entry(peer).or_insert_with(|| Peer::new(now));
            let restarted = p.incarnation.is_some_and(|i| i != incarnation);
            p.incarnation = Some(incarnation);
            if restarted {
                // Its old lists describe a process that no longer exists, and it holds none of ours.
                p.lists.clear();
                p.holds_version = 0;
            }
            restarted
        };
        if restarted {
            tracing::info!(peer, "peer node restarted");
            self.announce();
        }
    }

    /// Records a leader list from `peer`: `groups` in full, or `None` for "unchanged since the
    /// list of `version`" (ignored unless that is the list held). Returns the version now held.
    fn record_leaders(&self, peer: NodeId, version: u64, groups: Option<HashMap<GroupId, u64>>) -> u64 {
        let (first, dropped, held) = {
            let mut peers = self.peers.write();
            let now = Instant::now();
            let p = peers.entry(peer).or_insert_with(|| Peer::new(now));
            let first = p.lists.is_empty();
            let latest = p.lists.back();
            let (groups, dropped) = match groups {
                Some(groups) => {
                    // Groups the previous list claimed and this one does not: their followers here
                    // look at them now instead of on a sweep of every group.
                    let dropped: Vec<GroupId> = latest
                        .filter(|l| l.version != version)
                        .map(|l| {
                            l.groups
                                .iter()
                                .filter(|(g, t)| groups.get(g).is_none_or(|nt| nt < t))
                                .map(|(g, _)| *g)
                                .collect()
                        })
                        .unwrap_or_default();
                    (Arc::new(groups), dropped)
                }
                None => match latest {
                    Some(l) if l.version == version => (l.groups.clone(), vec![]),
                    _ => return latest.map_or(0, |l| l.version),
                },
            };
            p.lists.push_back(LeaderList { received: now, version, groups });
            while p.lists.len() > 2 {
                p.lists.pop_front();
            }
            (first, dropped, version)
        };
        if !dropped.is_empty() {
            if let Some(h) = self.hooks.read().clone() {
                h.peer_stopped_claiming(peer, dropped);
            }
        }
        // Only a peer's first list (since it was watched or restarted) wakes the election driver
        // for every group: groups waiting for every voter's list can then elect. A later list
        // reports only the groups it dropped (above); announcing each list made the driver sweep
        // every group several times a second (a fifth of a node's CPU at 10,000 partitions, perf).
        if first {
            self.announce();
        }
        held
    }

    /// The version of this node's leader list as sent on the wire (never 0, which means none).
    fn wire_version(source_version: u64) -> u64 {
        source_version.wrapping_add(1).max(1)
    }

    /// The ping to `peer` this round: with this node's leader list when `with_leaders` — in full,
    /// or as "unchanged" when the peer said it holds the current version (`full` is built once
    /// per round, only when some peer needs it).
    fn ping_request(&self, peer: NodeId, with_leaders: bool, full: &mut Option<Arc<PingRequest>>) -> Arc<PingRequest> {
        let bare = |has_leaders, leaders_version, leaders_unchanged| PingRequest {
            from_node: self.self_id,
            incarnation: self.incarnation,
            has_leaders,
            leader_groups: vec![],
            leader_terms: vec![],
            leaders_version,
            leaders_unchanged,
        };
        let hooks = self.hooks.read().clone();
        let (true, Some(hooks)) = (with_leaders, hooks) else {
            return Arc::new(bare(false, 0, false));
        };
        let current = Self::wire_version(hooks.leader_list_version());
        let holds = self.peers.read().get(&peer).map_or(0, |p| p.holds_version);
        if holds == current {
            return Arc::new(bare(true, current, true));
        }
        full.get_or_insert_with(|| {
            let (version, list) = hooks.leader_list();
            let (groups, terms) = list.into_iter().unzip();
            Arc::new(PingRequest {
                leader_groups: groups,
                leader_terms: terms,
                ..bare(true, Self::wire_version(version), false)
            })
        })
        .clone()
    }

    /// Pings every watched peer every `interval` until the task is dropped. `router` supplies the
    /// priority channel to each peer.
    pub async fn run(self: Arc<Self>, router: crate::network::Router) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u32 = 0;
        let mut inflight: BTreeSet<NodeId> = BTreeSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<NodeId>();
        loop {
            tick.tick().await;
            while let Ok(n) = done_rx.try_recv() {
                inflight.remove(&n);
            }
            self.check_transitions();
            // The first ping after start carries the list too, so a quick restart is noticed.
            let with_leaders = round.is_multiple_of(self.cfg.leaders_every_pings);
            round = round.wrapping_add(1);
            let mut full = None;
            for peer in self.peers() {
                // One ping in flight per peer: a peer that does not answer gets no pile of calls.
                if !inflight.insert(peer) {
                    continue;
                }
                let req = self.ping_request(peer, with_leaders, &mut full);
                let (me, router, done) = (self.clone(), router.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let ttl = me.cfg.timeout;
                    match router.ping(peer, (*req).clone(), ttl).await {
                        Ok(reply) => {
                            me.heard(peer);
                            me.record_incarnation(peer, reply.incarnation);
                            if req.has_leaders {
                                if let Some(p) = me.peers.write().get_mut(&peer) {
                                    p.holds_version = reply.leaders_version_held;
                                }
                            }
                        }
                        Err(e) => tracing::trace!(peer, error = %e, "ping failed"),
                    }
                    let _ = done.send(peer);
                });
            }
        }
    }

    /// The receiving side of a ping.
    fn on_ping(&self, req: PingRequest) -> PingReply {
        let peer = req.from_node;
        let mut held = 0;
        if peer != self.self_id {
            self.heard(peer);
            self.record_incarnation(peer, req.incarnation);
            if req.has_leaders {
                let groups =
                    (!req.leaders_unchanged).then(|| req.leader_groups.into_iter().zip(req.leader_terms).collect());
                held = self.record_leaders(peer, req.leaders_version, groups);
            }
        }
        PingReply { node_id: self.self_id, incarnation: self.incarnation, leaders_version_held: held }
    }
}

/// The `Liveness` gRPC service. With mutual TLS a ping is accepted only from the node it names.
pub struct LivenessService(pub Arc<NodeLiveness>, pub runnel_proto::peer::NodeAuth);

#[tonic::async_trait]
impl Liveness for LivenessService {
    async fn ping(&self, req: tonic::Request<PingRequest>) -> Result<tonic::Response<PingReply>, tonic::Status> {
        self.1.check(req.extensions(), req.get_ref().from_node, "liveness ping")?;
        Ok(tonic::Response::new(self.0.on_ping(req.into_inner())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LivenessConfig {
        LivenessConfig::new(100, 500)
    }

    fn bare(from_node: NodeId, incarnation: u64) -> PingRequest {
        PingRequest { from_node, incarnation, ..Default::default() }
    }

    /// A full leader list of `version`.
    fn list(from_node: NodeId, incarnation: u64, version: u64, led: &[(GroupId, u64)]) -> PingRequest {
        PingRequest {
            has_leaders: true,
            leader_groups: led.iter().map(|(g, _)| *g).collect(),
            leader_terms: led.iter().map(|(_, t)| *t).collect(),
            leaders_version: version,
            ..bare(from_node, incarnation)
        }
    }

    /// "My list is still the one of `version`".
    fn unchanged(from_node: NodeId, incarnation: u64, version: u64) -> PingRequest {
        PingRequest {
            has_leaders: true,
            leaders_version: version,
            leaders_unchanged: true,
            ..bare(from_node, incarnation)
        }
    }

    /// Hooks that serve a fixed list and record what peers stopped claiming.
    #[derive(Default)]
    struct Hooks {
        list: parking_lot::Mutex<(u64, Vec<(GroupId, u64)>)>,
        stopped: parking_lot::Mutex<Vec<(NodeId, Vec<GroupId>)>>,
    }

    impl GroupHooks for Hooks {
        fn leader_list_version(&self) -> u64 {
            self.list.lock().0
        }
        fn leader_list(&self) -> (u64, Vec<(GroupId, u64)>) {
            self.list.lock().clone()
        }
        fn peer_stopped_claiming(&self, peer: NodeId, groups: Vec<GroupId>) {
            self.stopped.lock().push((peer, groups));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_peer_gets_one_timeout_of_grace_then_counts_as_gone() {
        let l = NodeLiveness::new(1, 7, cfg());
        l.watch(2);
        assert!(!l.is_gone(2), "a peer just watched is given the benefit of the doubt");
        assert!(!l.is_reachable(2), "but nothing has been heard from it");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!l.is_gone(2));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(l.is_gone(2));
        l.heard(2);
        assert!(!l.is_gone(2) && l.is_reachable(2));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.is_gone(2) && !l.is_reachable(2));
        assert!(!l.is_gone(1) && l.is_reachable(1), "a node never counts itself gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quorum_needs_a_strict_majority_of_voters_reachable() {
        let l = NodeLiveness::new(1, 7, cfg());
        for p in [2, 3, 4, 5] {
            l.watch(p);
        }
        assert!(!l.quorum_reachable([1, 2, 3]));
        l.heard(2);
        assert!(l.quorum_reachable([1, 2, 3]));
        assert!(!l.quorum_reachable([1, 2, 3, 4]), "two of four is not a majority");
        assert!(l.quorum_reachable([1]), "a single-replica group is its own quorum");
        assert!(!l.quorum_reachable([2, 3, 4]), "one of three, when this node is not a voter there");
    }

    #[tokio::test(start_paused = true)]
    async fn stopped_leading_needs_two_lists_received_after_the_belief() {
        let l = NodeLiveness::new(1, 7, cfg());
        l.watch(2);
        let belief = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        l.on_ping(list(2, 9, 1, &[(5, 3)]));
        assert!(!l.stopped_leading(2, 6, 1, belief), "one list is not enough");
        tokio::time::advance(Duration::from_millis(10)).await;
        l.on_ping(list(2, 9, 1, &[(5, 3)]));
        assert!(l.stopped_leading(2, 6, 1, belief), "group 6 is in neither list");
        assert!(!l.stopped_leading(2, 5, 3, belief), "group 5 is led at term 3");
        assert!(l.stopped_leading(2, 5, 4, belief), "a list at term 3 does not cover a belief at term 4");
        assert!(!l.stopped_leading(2, 6, 1, Instant::now()), "lists older than the belief do not count");
        // A restart clears what the old process said.
        l.on_ping(bare(2, 10));
        assert!(!l.stopped_leading(2, 6, 1, belief));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_restart_and_a_peer_loss_are_announced() {
        let l = NodeLiveness::new(1, 7, cfg());
        let mut rx = l.subscribe();
        l.watch(2);
        l.on_ping(bare(2, 9));
        assert!(!rx.has_changed().unwrap(), "the first incarnation seen is not a restart");
        l.on_ping(bare(2, 10));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        l.heard(2);
        l.check_transitions();
        assert!(!rx.has_changed().unwrap());
        tokio::time::advance(Duration::from_millis(600)).await;
        l.check_transitions();
        assert!(rx.has_changed().unwrap(), "losing a peer wakes the election driver");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_list_counts_as_a_new_list_only_when_its_version_is_held() {
        let l = NodeLiveness::new(1, 7, cfg());
        l.watch(2);
        let belief = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(l.on_ping(unchanged(2, 9, 4)).leaders_version_held, 0, "nothing held: ignored");
        assert_eq!(l.list_claim(2, 5), ListClaim::NoList);
        assert_eq!(l.on_ping(list(2, 9, 4, &[(5, 3)])).leaders_version_held, 4);
        assert!(l.confirms_leading(2, 5, 3, belief));
        assert!(!l.confirms_leading(2, 6, 1, belief));
        assert!(!l.stopped_leading(2, 6, 1, belief), "one list is not enough");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(l.on_ping(unchanged(2, 9, 3)).leaders_version_held, 4, "another version: ignored");
        assert!(!l.stopped_leading(2, 6, 1, belief), "an ignored list does not count");
        assert_eq!(l.on_ping(unchanged(2, 9, 4)).leaders_version_held, 4);
        assert!(l.stopped_leading(2, 6, 1, belief), "the repeated list counts as the second");
        assert!(!l.stopped_leading(2, 5, 3, belief));
        assert_eq!(l.list_claim(2, 5), ListClaim::Leads(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_a_peer_stops_claiming_is_reported_once() {
        let l = NodeLiveness::new(1, 7, cfg());
        let hooks = Arc::new(Hooks::default());
        l.set_hooks(hooks.clone());
        l.watch(2);
        l.on_ping(list(2, 9, 1, &[(5, 3), (6, 2), (8, 1)]));
        assert!(hooks.stopped.lock().is_empty(), "a first list drops nothing");
        l.on_ping(unchanged(2, 9, 1));
        l.on_ping(list(2, 9, 2, &[(5, 3), (8, 4), (9, 1)]));
        assert_eq!(*hooks.stopped.lock(), vec![(2, vec![6])], "6 is gone; 8 moved to a later term; 9 is new");
        l.on_ping(list(2, 9, 2, &[(5, 3), (8, 4), (9, 1)]));
        l.on_ping(unchanged(2, 9, 2));
        assert_eq!(hooks.stopped.lock().len(), 1, "the same version again reports nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_carry_the_full_list_until_the_peer_holds_it() {
        let l = NodeLiveness::new(1, 7, cfg());
        let hooks = Arc::new(Hooks::default());
        *hooks.list.lock() = (5, vec![(3, 2), (4, 2)]);
        l.set_hooks(hooks.clone());
        l.watch(2);
        let mut full = None;
        let req = l.ping_request(2, true, &mut full);
        assert!(req.has_leaders && !req.leaders_unchanged && req.leader_groups == vec![3, 4]);
        assert_eq!(req.leaders_version, 6, "wire versions start at 1 (0 means none)");
        assert!(!l.ping_request(2, false, &mut full).has_leaders);
        // The peer answers that it holds version 6.
        l.peers.write().get_mut(&2).expect("watched").holds_version = 6;
        let req = l.ping_request(2, true, &mut None);
        assert!(req.has_leaders && req.leaders_unchanged && req.leader_groups.is_empty());
        *hooks.list.lock() = (6, vec![(3, 2)]);
        let req = l.ping_request(2, true, &mut None);
        assert!(!req.leaders_unchanged && req.leader_groups == vec![3] && req.leaders_version == 7);
        // A restart of the peer means it holds nothing of ours.
        l.on_ping(bare(2, 1));
        l.peers.write().get_mut(&2).expect("watched").holds_version = 7;
        l.on_ping(bare(2, 2));
        assert!(!l.ping_request(2, true, &mut None).leaders_unchanged);
    }
}
