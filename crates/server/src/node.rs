//! One Runnel node: storage, the metadata group, the broker, and one gRPC server for all of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::BasicNode;
use runnel_broker::{Broker, BrokerDeps};
use runnel_proto::dial::Dialer;
use runnel_proto::internal::controller_client::ControllerClient;
use runnel_proto::internal::controller_server::ControllerServer;
use runnel_proto::internal::liveness_server::LivenessServer;
use runnel_proto::internal::raft_transport_server::RaftTransportServer;
use runnel_proto::internal::{BrokerHeartbeatRequest, LeaderReport};
use runnel_proto::v1::runnel_server::RunnelServer;
use runnel_raft::liveness::{LivenessConfig, LivenessService, NodeLiveness};
use runnel_raft::log_store::LogStore;
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_raft::network::{network_factory, Router};
use runnel_raft::repair::Repair;
use runnel_raft::transport::{follow_repair, GroupRegistry, RaftHandler, TransportService};
use runnel_raft::{group_config, group_seed, start_raft, MetaRaft, MetaTypes, Pacing, RaftTiming};
use runnel_storage::{DiskSpace, Engine, GroupSyncer};
#[cfg(feature = "rocksdb")]
use runnel_storage::{RocksEngine, StorageError, WalRecovery};
use runnel_types::limits::MAX_GRPC_MESSAGE_BYTES;
use runnel_types::{NodeId, META_GROUP_ID};

use runnel_proto::peer::NodeAuth;

use crate::api::Api;
use crate::NodeConfig;
use runnel_service::controller::{Controller, ControllerService};
use runnel_service::coordinator::Coordinator;

/// See the server builder in [`serve`].
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// A broker re-sends its whole leader list to the controller at least this often, even unchanged
/// (a report the controller accepted but failed to act on is then acted on again).
const FULL_REPORT_EVERY: Duration = Duration::from_secs(2);

/// A change in the partitions this broker leads is reported to the controller at once, but at most
/// one heartbeat per this gap: when thousands of groups elect, one report covers many of them.
const LEADER_REPORT_GAP: Duration = Duration::from_millis(100);

/// How long a stopping node waits for the controller to accept its "shutting down" heartbeat
/// before it hands its leaderships away regardless.
const SHUTDOWN_ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// How long a stopping node waits for its leaderships to move before it stops anyway.
const SHUTDOWN_HANDOFF: Duration = Duration::from_secs(10);

/// What a node runs on: its storage, how it reaches other nodes, and its Raft randomness. Production
/// uses RocksDB, TCP and a random seed ([`run_node`]); the simulator passes in-memory storage,
/// turmoil's network and a seed derived from the run's seed.
pub struct NodeEnv {
    pub engine: Arc<dyn Engine>,
    pub syncer: Arc<GroupSyncer>,
    /// Free space on the data directory ([`DiskSpace::unlimited`] in the simulator).
    pub space: Arc<DiskSpace>,
    /// Which replicas repair after this node lost writes (docs/adr/0015).
    pub repair: Arc<Repair>,
    pub dialer: Arc<dyn Dialer>,
    pub raft_seed: u64,
    /// Random per process start: a new one tells the controller this broker restarted.
    pub incarnation: u64,
    /// TEST ONLY: the simulator's planted bug (see `runnel_broker::BrokerDeps`); false otherwise.
    pub planted_ack_before_commit: bool,
    /// Wall-clock milliseconds (retention, compaction, batch timestamps): the system clock, or a
    /// simulated one.
    pub clock: runnel_broker::Clock,
    /// Whom node-to-node services believe: only the node a verified certificate names (TLS), or
    /// anyone (no TLS; see `NodeConfig::insecure`).
    pub node_auth: NodeAuth,
}

/// Runs a node on RocksDB and real TCP until SIGINT or SIGTERM.
#[cfg(feature = "rocksdb")]
pub async fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    let db_dir = cfg.data_dir.join("db");
    if let crate::data_format::DataDir::StorageLost(why) = crate::data_format::check_or_mark(&cfg.data_dir, &db_dir)? {
        // Everything this node stored is gone, its votes included: starting as a new node could
        // vote twice in a term. Record the loss before the engine creates a new directory; every
        // replica then repairs from the others before it votes (docs/adr/0015).
        let epoch = Repair::mark_lost_writes(&cfg.data_dir, &why)
            .with_context(|| format!("recording in {} that writes were lost", cfg.data_dir.display()))?;
        tracing::error!(
            error = %why,
            repair_epoch = epoch,
            "this node's storage is gone: every write it acknowledged is lost here. Its replicas take no part \
             in elections until each has caught up with a leader."
        );
    }
    let engine: Arc<dyn Engine> = Arc::new(match RocksEngine::open(&db_dir) {
        Ok(e) => e,
        Err(StorageError::WalCorrupt(why)) => {
            // Writes this node synced (and may have acknowledged) are unreadable. Record that
            // durably first, then drop what follows the damage: every replica here repairs from
            // the others before it votes again (docs/adr/0015).
            let epoch = Repair::mark_lost_writes(&cfg.data_dir, &why)
                .with_context(|| format!("recording in {} that writes were lost", cfg.data_dir.display()))?;
            tracing::error!(
                error = %why,
                repair_epoch = epoch,
                "the write-ahead log is damaged: writes after the damage are lost on this node. Its replicas \
                 take no part in elections until each has caught up with a leader. (A replica with no other \
                 replica to repair from stays unavailable; to accept the loss instead, stop the node and \
                 delete the REPAIR file in its data directory.)"
            );
            RocksEngine::open_with(&db_dir, WalRecovery::DropAfterCorruption)
                .with_context(|| format!("opening {} after dropping the damaged WAL", db_dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("opening the data directory {}", db_dir.display())),
    });
    let repair = Repair::load(cfg.node_id, &cfg.data_dir, engine.clone())
        .with_context(|| format!("reading the repair state in {}", cfg.data_dir.display()))?;
    if let Some(epoch) = repair.epoch() {
        tracing::warn!(
            repair_epoch = epoch,
            "this node lost writes once; replicas not yet repaired wait for a leader before voting"
        );
    }
    let syncer = if cfg.unsafe_skip_fsync {
        tracing::error!(
            "unsafe_skip_fsync is set: writes are acknowledged WITHOUT being made durable; a power loss \
             loses acknowledged data. Only the chaos suite's planted-bug run sets this."
        );
        GroupSyncer::start_without_fsync()
    } else {
        GroupSyncer::start(engine.clone())
    };
    let tls = match cfg.tls() {
        Some(files) => Some(files.node_tls().context("TLS configuration (tls_* settings)")?),
        None => {
            if !cfg.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %cfg.listen,
                    "insecure: no TLS and no node authentication; anyone who can reach this port can speak as any node (docs/SECURITY.md)"
                );
            }
            None
        }
    };
    let mut env = NodeEnv {
        syncer: Arc::new(syncer),
        engine,
        space: Arc::new(DiskSpace::new(&cfg.data_dir, cfg.min_free_bytes)),
        repair,
        dialer: runnel_proto::dial::tcp(),
        raft_seed: rand::random(),
        incarnation: rand::random(),
        planted_ack_before_commit: false,
        clock: runnel_broker::system_clock(),
        node_auth: NodeAuth::Open,
    };
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    match tls {
        Some(tls) => {
            tracing::info!("TLS on; node-to-node services accept only the node a certificate names");
            // A rotated certificate is picked up without a restart.
            let reloader = tokio::spawn(tls.cert.clone().run(runnel_security::reload::RELOAD_EVERY));
            env.dialer = Arc::new(runnel_security::tls::TlsDialer {
                connect_timeout: Duration::from_millis(500),
                config: tls.client,
            });
            env.node_auth = NodeAuth::MutualTls;
            let max_per_ip = cfg.max_connections_per_ip;
            let served =
                serve(cfg, env, runnel_security::tls::incoming(listener, tls.server, max_per_ip), shutdown_signal())
                    .await;
            reloader.abort();
            served
        }
        None => serve(cfg, env, tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown_signal()).await,
    }
}

/// What this node's metadata replica runs on, kept to start it again.
struct MetaReplica {
    node_id: NodeId,
    timing: RaftTiming,
    raft_seed: u64,
    engine: Arc<dyn Engine>,
    syncer: Arc<GroupSyncer>,
    space: Arc<DiskSpace>,
    repair: Arc<Repair>,
    router: Router,
    registry: GroupRegistry,
    /// In memory, and shared by every instance: a restarted instance continues from what the
    /// previous one applied (the log it replays from is on disk).
    sm: MetaStateMachine,
}

/// How often a stopped metadata replica is looked for (and, once space is back, restarted).
const META_RESTART_EVERY: Duration = Duration::from_secs(2);

impl MetaReplica {
    /// Starts an instance on what is on disk and registers it with the transport.
    async fn start(&self) -> anyhow::Result<MetaRaft> {
        let log = LogStore::<MetaTypes>::new(META_GROUP_ID, self.engine.clone(), self.syncer.clone());
        let raft = start_raft(
            group_seed(self.raft_seed, META_GROUP_ID),
            self.node_id,
            group_config("metadata", self.timing, Pacing::Timers)?,
            network_factory(&self.router, META_GROUP_ID),
            log,
            self.sm.clone(),
        )
        .await?;
        self.registry.insert(
            META_GROUP_ID,
            Arc::new(RaftHandler {
                raft: raft.clone(),
                group: META_GROUP_ID,
                repair: self.repair.clone(),
                space: None,
            }),
        );
        follow_repair(&raft, META_GROUP_ID, &self.repair);
        if self.repair.is_repairing(META_GROUP_ID) {
            // Its own timer would make it campaign; it may not until it has caught up (ADR 0015).
            raft.runtime_config().elect(false);
            let (raft, repair) = (raft.clone(), self.repair.clone());
            tokio::spawn(async move {
                repair.wait_repaired(META_GROUP_ID).await;
                raft.runtime_config().elect(true);
            });
        }
        Ok(raft)
    }

    /// openraft stops an instance for good on a storage error (a disk filled past the watermark by
    /// something else, say). Partition replicas are restarted by the broker
    /// (`Broker::run_replica_restarter`); this does the same for the metadata replica: once space
    /// is back, a new instance starts on what is on disk and the controller uses it. Without it
    /// the node stopped following the metadata until its process restarted (found by the chaos
    /// runner: `disk-full-hard`, docs/adr/0016).
    async fn run_restarter(self, controller: Arc<Controller>) {
        let mut tick = tokio::time::interval(META_RESTART_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = controller.raft();
            use openraft::type_config::async_runtime::WatchReceiver;
            let why = current.metrics().borrow_watched().running_state.as_ref().err().map(|e| e.to_string());
            let Some(why) = why else { continue };
            if let Err(low) = self.space.check_replicated_data() {
                tracing::warn!(%low, error = %why, "the metadata replica stopped on an error; it restarts once there is disk space");
                continue;
            }
            tracing::warn!(error = %why, "the metadata replica's Raft stopped on an error; restarting it");
            match self.start().await {
                Ok(raft) => {
                    controller.replace_raft(raft);
                    let _ = current.shutdown().await;
                }
                Err(e) => tracing::error!(error = %e, "could not restart the metadata replica; retrying"),
            }
        }
    }
}

/// Runs a node on `env`, accepting connections from `incoming`, until `shutdown` completes.
pub async fn serve<I, IO, IE, F>(cfg: NodeConfig, env: NodeEnv, incoming: I, shutdown: F) -> anyhow::Result<()>
where
    I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: std::future::Future<Output = ()> + Send,
{
    cfg.validate()?;
    let voters = cfg.voter_map()?;
    let node_id = cfg.node_id;
    let advertise = cfg.advertise_addr();
    let timing = RaftTiming { heartbeat_ms: cfg.raft_heartbeat_ms, election_timeout_ms: cfg.raft_election_timeout_ms };
    // Bound first, so the address it advertises is known to the heartbeats that record it.
    let kafka = match cfg.kafka_listen {
        Some(addr) => {
            let l =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding kafka_listen {addr}"))?;
            let advertised = match &cfg.kafka_advertise {
                Some(a) => a.clone(),
                None => l.local_addr().with_context(|| format!("the address kafka_listen {addr} bound"))?.to_string(),
            };
            Some((l, advertised))
        }
        None => None,
    };
    let listeners: HashMap<String, String> =
        kafka.iter().map(|(_, a)| (runnel_kafka::KAFKA_LISTENER.to_string(), a.clone())).collect();
    let NodeEnv {
        engine,
        syncer,
        space,
        repair,
        dialer,
        raft_seed,
        incarnation,
        planted_ack_before_commit,
        clock,
        node_auth,
    } = env;

    // The node-level failure detector that stands in for per-partition heartbeats (ADR 0012).
    let liveness = NodeLiveness::new(
        node_id,
        incarnation,
        LivenessConfig::new(cfg.node_liveness_interval_ms, cfg.node_liveness_timeout_ms),
    );
    let router = Router::new(node_id, dialer, liveness.clone());
    for (id, addr) in &voters {
        router.set_addr(*id, addr);
    }
    router.set_addr(node_id, &advertise);
    let registry = GroupRegistry::default();

    // The metadata group: voters from the configuration; every other broker joins as a learner.
    let meta = MetaReplica {
        node_id,
        timing,
        raft_seed,
        engine: engine.clone(),
        syncer: syncer.clone(),
        space: space.clone(),
        repair: repair.clone(),
        router: router.clone(),
        registry: registry.clone(),
        sm: MetaStateMachine::new(),
    };
    let meta_sm = meta.sm.clone();
    let meta_raft = meta.start().await?;
    if voters.contains_key(&node_id) && !meta_raft.is_initialized().await? {
        let members: BTreeMap<NodeId, BasicNode> =
            voters.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        // Every voter initializes with the same member list; openraft accepts that.
        if let Err(e) = meta_raft.initialize(members).await {
            tracing::debug!(error = %e, "metadata group already initialized");
        }
    }

    let broker = Broker::new(BrokerDeps {
        node_id,
        engine: engine.clone(),
        syncer: syncer.clone(),
        space,
        repair,
        router: router.clone(),
        registry: registry.clone(),
        timing,
        raft_seed,
        clock,
        planted_ack_before_commit,
    });
    let controller = Controller::new(
        node_id,
        meta_raft.clone(),
        meta_sm.clone(),
        router.clone(),
        Duration::from_millis(cfg.broker_session_timeout_ms),
        Duration::from_millis(cfg.broker_replacement_timeout_ms),
    );

    liveness.set_hooks(broker.liveness_hooks());
    let pinger = tokio::spawn(liveness.clone().run(router.clone()));
    let elections = tokio::spawn(broker.clone().run_election_driver());
    let leadership_tracker = tokio::spawn(broker.clone().run_leadership_tracker());
    let reconciler = tokio::spawn(broker.clone().run_reconciler(meta_sm.subscribe()));
    let restarter = tokio::spawn(broker.clone().run_replica_restarter());
    let leader_duties = tokio::spawn(broker.clone().run_leader_duties(Duration::from_millis(500)));
    let controller_duties = tokio::spawn(controller.clone().run_duties(Duration::from_millis(500)));
    let meta_restarter = tokio::spawn(meta.run_restarter(controller.clone()));
    let retention = tokio::spawn(broker.clone().run_retention(Duration::from_millis(cfg.retention_check_interval_ms)));
    let cleaner = tokio::spawn(broker.clone().run_cleaner(Duration::from_millis(cfg.cleaner_interval_ms)));
    let shutting_down = Arc::new(AtomicBool::new(false));
    let heartbeat_now = Arc::new(tokio::sync::Notify::new());
    let (shutdown_announced_tx, shutdown_announced) = tokio::sync::watch::channel(false);
    let heartbeats = tokio::spawn(heartbeat_loop(
        Heartbeat {
            node_id,
            advertise: advertise.clone(),
            listeners,
            incarnation,
            every: Duration::from_millis(cfg.broker_heartbeat_ms),
            session: Duration::from_millis(cfg.broker_session_timeout_ms),
            voters: voters.keys().cloned().collect(),
            shutting_down: shutting_down.clone(),
            now: heartbeat_now.clone(),
            shutdown_announced: shutdown_announced_tx,
        },
        broker.clone(),
        controller.clone(),
    ));
    // Graceful shutdown keeps serving while it hands leaderships away, so clients fail over to the
    // new leaders (NOT_LEADER with a hint) before this node stops answering.
    let drain = {
        let (broker, controller, flag) = (broker.clone(), controller.clone(), shutting_down.clone());
        let mut announced = shutdown_announced;
        async move {
            shutdown.await;
            tracing::info!(node_id, "shutdown requested: handing leaderships to other replicas");
            flag.store(true, Ordering::SeqCst);
            // A heartbeat announces the shutdown at once, so balancers stop moving leadership back.
            heartbeat_now.notify_one();
            if tokio::time::timeout(SHUTDOWN_ANNOUNCE_WAIT, announced.wait_for(|a| *a)).await.is_err() {
                tracing::warn!(
                    node_id,
                    "the controller has not acknowledged the shutdown; handing leaderships away anyway"
                );
            }
            broker.hand_off_leaderships(SHUTDOWN_HANDOFF).await;
            if controller.is_controller() {
                if let Some(to) = controller.voters().into_iter().find(|v| *v != node_id && controller.is_live(*v)) {
                    let _ = controller.raft().trigger().transfer_leader(to).await;
                }
            }
        }
    };

    let coordinator = Coordinator::new(
        broker.clone(),
        meta_sm.clone(),
        controller.clone(),
        cfg.offsets_topic_partitions,
        cfg.offsets_topic_replication_factor,
    );
    let coordinator_duties = tokio::spawn(coordinator.clone().run());
    let auth = runnel_service::access::AuthSettings {
        require: cfg.require_auth,
        superusers: cfg.superusers.clone(),
        token_lifetime: Duration::from_secs(cfg.token_lifetime_secs),
        bootstrap_user: cfg
            .bootstrap_user
            .as_ref()
            .and_then(|b| b.split_once(':'))
            .map(|(n, p)| (n.to_string(), p.to_string())),
    };
    if cfg.require_auth {
        tracing::info!(superusers = ?cfg.superusers, "authentication required on the client API");
    }
    let security_bootstrap = tokio::spawn(runnel_service::access::run_bootstrap(controller.clone(), auth.clone()));
    let gate = Arc::new(runnel_service::access::Gatekeeper::new(auth, meta_sm.clone()));
    let service = Arc::new(runnel_service::Service {
        broker: broker.clone(),
        controller: controller.clone(),
        meta: meta_sm.clone(),
        coordinator,
        gate,
    });
    let kafka_listener = kafka.map(|(listener, advertised)| {
        tracing::info!(node_id, kafka_listen = ?cfg.kafka_listen, kafka_advertise = %advertised, "Kafka listener ready");
        let front = runnel_kafka::KafkaFrontEnd {
            service: service.clone(),
            settings: runnel_kafka::KafkaSettings {
                advertised,
                auto_create_topics: cfg.kafka_auto_create_topics,
                default_partitions: cfg.kafka_default_partitions,
                max_frame_bytes: runnel_kafka::MAX_FRAME_BYTES,
            },
        };
        tokio::spawn(runnel_kafka::serve(listener, Arc::new(front)))
    });
    let api = Api { service };
    tracing::info!(node_id, listen = %cfg.listen, advertise = %advertise, data_dir = %cfg.data_dir.display(), "runnel node ready");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // h2 closes a whole connection once more than this many streams were reset by the peer
        // before the server got to them (its guard against "rapid reset" floods; default 20).
        // Between nodes, one connection carries every partition group's Raft traffic: when a
        // burst of elections keeps the server busy and callers give up on some requests, the
        // default turned a few late answers into every group on that connection failing at once
        // (seen as "remotely-reset pending-accept streams reached limit" in `bench partitions`).
        // Still bounded, so a flood of resets cannot grow memory without limit.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .add_service(
            RunnelServer::new(api)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(
            RaftTransportServer::new(TransportService {
                registry: registry.clone(),
                liveness: liveness.clone(),
                stats: Default::default(),
                auth: node_auth,
            })
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(ControllerServer::new(ControllerService(controller.clone(), node_auth)))
        .add_service(LivenessServer::new(LivenessService(liveness.clone(), node_auth)))
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;

    tracing::info!(node_id, "shutting down");
    if let Some(k) = kafka_listener {
        k.abort();
    }
    heartbeats.abort();
    pinger.abort();
    elections.abort();
    leadership_tracker.abort();
    coordinator_duties.abort();
    security_bootstrap.abort();
    leader_duties.abort();
    retention.abort();
    cleaner.abort();
    controller_duties.abort();
    meta_restarter.abort();
    restarter.abort();
    reconciler.abort();
    broker.shutdown().await;
    let _ = controller.raft().shutdown().await;
    // Whatever was written is made durable before the process exits.
    syncer.sync().await?;
    let stats = syncer.stats();
    let (syncs, requests) = (
        stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
        stats.requests.load(std::sync::atomic::Ordering::Relaxed),
    );
    tracing::info!(
        syncs,
        requests,
        per_sync = requests as f64 / syncs.max(1) as f64,
        "group commit: WAL fsyncs and the appends they covered"
    );
    Ok(())
}

#[cfg(feature = "rocksdb")]
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// What the heartbeat loop needs to know about this broker.
struct Heartbeat {
    node_id: NodeId,
    advertise: String,
    /// This node's other listeners by protocol (`kafka`), recorded in the metadata.
    listeners: HashMap<String, String>,
    incarnation: u64,
    every: Duration,
    /// Without an accepted heartbeat for this long the broker fences itself.
    session: Duration,
    voters: Vec<NodeId>,
    shutting_down: Arc<AtomicBool>,
    /// Wakes the loop for a heartbeat now (shutdown).
    now: Arc<tokio::sync::Notify>,
    /// Set once the controller accepted a heartbeat saying this broker is shutting down.
    shutdown_announced: tokio::sync::watch::Sender<bool>,
}

/// Reports this broker (and the partitions it leads) to the controller every `every` — and at
/// once when those partitions change (at most one report per `LEADER_REPORT_GAP`) — and fences
/// the broker while no heartbeat has been accepted within its session. Between changes an idle
/// broker sends one small heartbeat per interval (Kafka's brokers: one every 2 s by default).
async fn heartbeat_loop(hb: Heartbeat, broker: Arc<Broker>, controller: Arc<Controller>) {
    let mut next_voter = 0usize;
    // One channel per controller address, reused across heartbeats.
    let mut client: Option<(String, ControllerClient<tonic::transport::Channel>)> = None;
    let mut last_accepted = tokio::time::Instant::now();
    // Whom the last full leader list went to, the leadership version it described, and when it
    // was accepted: an unchanged list is not sent again until FULL_REPORT_EVERY has passed.
    let mut last_report: Option<(String, u64, tokio::time::Instant)> = None;
    let mut leadership = broker.leaderships.subscribe();
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        if let Some(last) = last_sent {
            // A change that the last accepted report did not cover is reported after the gap.
            let unreported = last_report.as_ref().is_none_or(|(_, v, _)| *v != broker.leaderships.version());
            tokio::select! {
                _ = tokio::time::sleep_until(last + hb.every) => {}
                _ = hb.now.notified() => {}
                r = leadership.changed(), if !unreported => {
                    if r.is_err() {
                        return;
                    }
                    tokio::time::sleep_until(last + LEADER_REPORT_GAP).await;
                }
                _ = tokio::time::sleep_until(last + LEADER_REPORT_GAP), if unreported => {}
            }
        }
        leadership.borrow_and_update();
        last_sent = Some(tokio::time::Instant::now());
        let fenced = last_accepted.elapsed() > hb.session;
        if broker.fence.set(fenced) {
            if fenced {
                tracing::warn!(
                    node_id = hb.node_id,
                    session_ms = hb.session.as_millis() as u64,
                    "no heartbeat accepted within the session: fencing this broker (no writes as leader)"
                );
            } else {
                tracing::info!(node_id = hb.node_id, "controller reached again: unfenced");
            }
        }
        let target = match controller.controller() {
            Some((_, addr)) => addr,
            None => {
                if hb.voters.is_empty() {
                    continue;
                }
                next_voter = (next_voter + 1) % hb.voters.len();
                match controller.router.addr(hb.voters[next_voter]) {
                    Some(a) => a,
                    None => continue,
                }
            }
        };
        // The leader list is built (O(leaderships)) only when the tracker's version moved, the
        // controller changed, or the last full list is older than FULL_REPORT_EVERY; otherwise the
        // heartbeat says "unchanged".
        let version = broker.leaderships.version();
        let unchanged = last_report
            .as_ref()
            .is_some_and(|(to, v, at)| *to == target && *v == version && at.elapsed() < FULL_REPORT_EVERY);
        let leaders: Vec<LeaderReport> = if unchanged {
            vec![]
        } else {
            broker
                .leader_reports()
                .into_iter()
                .map(|(g, term, voters)| LeaderReport {
                    group_id: g,
                    term,
                    joint: voters.is_none(),
                    voters: voters.map(|v| v.into_iter().collect()).unwrap_or_default(),
                })
                .collect()
        };
        let shutting_down = hb.shutting_down.load(Ordering::SeqCst);
        let req = BrokerHeartbeatRequest {
            broker_id: hb.node_id,
            addr: hb.advertise.clone(),
            leaders,
            incarnation: hb.incarnation,
            shutting_down,
            leaders_unchanged: unchanged,
            listeners: hb.listeners.clone(),
        };
        let mut c = match &client {
            Some((a, c)) if *a == target => c.clone(),
            _ => match controller.router.dialer().channel(&target) {
                Ok(ch) => {
                    let c = ControllerClient::new(ch);
                    client = Some((target.clone(), c.clone()));
                    c
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, "bad controller address");
                    continue;
                }
            },
        };
        let call = async { c.broker_heartbeat(req).await.map_err(|e| e.to_string()) };
        // A third of the session: a controller slowed by load still gets to accept heartbeats
        // before the broker would fence itself.
        match tokio::time::timeout((hb.every * 4).max(hb.session / 3), call).await {
            Ok(Ok(r)) if !r.get_ref().accepted => {
                tracing::debug!(error = %r.get_ref().error, "heartbeat not accepted");
                last_report = None;
            }
            Ok(Ok(_)) => {
                last_accepted = tokio::time::Instant::now();
                if !unchanged {
                    last_report = Some((target.clone(), version, last_accepted));
                }
                if shutting_down {
                    hb.shutdown_announced.send_replace(true);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "heartbeat failed");
                client = None;
                last_report = None;
            }
            Err(_) => {
                tracing::debug!(%target, "heartbeat timed out");
                client = None;
                last_report = None;
            }
        }
    }
}
