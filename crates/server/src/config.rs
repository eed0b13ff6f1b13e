//! Node configuration: defaults, then a TOML file, then `RUNNEL_*` environment variables, then
//! command-line flags (later wins). Every bad value is reported with its field and value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use runnel_types::{NodeId, DEFAULT_KAFKA_PORT, DEFAULT_PORT};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
}

/// Longest lifetime of a bearer token, seconds (30 days).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = runnel_service::access::MAX_TOKEN_LIFETIME.as_secs();

fn invalid(field: &str, value: impl std::fmt::Display, why: &str) -> ConfigError {
    ConfigError::Invalid(format!("field '{field}' has value '{value}': {why}"))
}

/// Everything a node needs to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; unique in the cluster, never reused for another machine.
    pub node_id: NodeId,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// Where RocksDB keeps this node's data.
    pub data_dir: PathBuf,
    /// The metadata Raft group's voters as `id=host:port` (1, 3 or 5 of them).
    pub voters: Vec<String>,
    /// Raft heartbeat interval of the metadata group, milliseconds. Partition groups send no
    /// heartbeats (they are quiescent; see `node_liveness_*`).
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout lower bound, milliseconds (the upper bound is 1.5 times this). For
    /// partition groups it is also the step between the campaigns of successive replicas.
    pub raft_election_timeout_ms: u64,
    /// How often a node pings each other node (the failure detector that replaces per-partition
    /// heartbeats), milliseconds.
    pub node_liveness_interval_ms: u64,
    /// A node not heard from for this long is unreachable: the partitions it led elect new
    /// leaders, and a leader that cannot reach a majority of its replicas stops serving,
    /// milliseconds.
    pub node_liveness_timeout_ms: u64,
    /// How often an idle broker reports to the controller, milliseconds. A change in the
    /// partitions it leads is reported at once (at most one report per 100 ms).
    pub broker_heartbeat_ms: u64,
    /// A broker the controller has not heard from for this long counts as not live, milliseconds.
    /// A broker that has not reached the controller for this long fences itself.
    pub broker_session_timeout_ms: u64,
    /// A broker unavailable for this long has its replicas moved to live brokers, milliseconds.
    pub broker_replacement_timeout_ms: u64,
    /// Partitions of the internal `__consumer_offsets` topic (created on the first group
    /// request): each partition's leader coordinates the groups that hash to it.
    pub offsets_topic_partitions: u32,
    /// Its replication factor (lowered to the number of live brokers when there are fewer).
    pub offsets_topic_replication_factor: u32,
    /// How often each partition leader checks retention.ms / retention.bytes, milliseconds.
    pub retention_check_interval_ms: u64,
    /// How often the cleaner compacts the replicas of compacted topics on this node, milliseconds.
    pub cleaner_interval_ms: u64,
    /// Free space the data directory's filesystem must keep, bytes: below it produce requests are
    /// refused (with an error naming this), below half of it replicas stop storing replicated
    /// entries; both resume by themselves when space returns. 0: 5 % of the filesystem, at most
    /// 5 GiB.
    pub min_free_bytes: u64,
    /// NEVER in production. Acknowledges writes without making them durable (the group commit
    /// skips its fsync), so a power loss loses acknowledged writes. It exists so that the chaos
    /// suite can show its power-loss fault catches exactly this bug (scripts/chaos.sh --plant).
    pub unsafe_skip_fsync: bool,
    /// Take the node id from the host name's ordinal suffix plus one (`runnel-0` is node 1): a
    /// Kubernetes StatefulSet's pods differ only in their names. Overrides `node_id`.
    pub node_id_from_hostname: bool,
    /// The cluster CA certificate (PEM). With `tls_cert_file` and `tls_key_file`: every
    /// connection to and between nodes is TLS, and node-to-node services accept only the node a
    /// CA-signed node certificate names (docs/SECURITY.md; `runnel certs` makes them).
    pub tls_ca_file: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA, naming `runnel://node/<node_id>`.
    pub tls_cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Accept node-to-node calls from anyone who can reach the port, without TLS, on a listener
    /// that is not loopback-only. Without it such a node refuses to start unless TLS is set up.
    pub insecure: bool,
    /// Every client call needs credentials — a bearer token (from a SCRAM login or
    /// `runnel token create`) or a client certificate — and an ACL that allows it; only
    /// `Authenticate` is open. Off, every caller may do everything (`runnel dev`).
    pub require_auth: bool,
    /// Principals (`User:<name>`) that pass every ACL check: the bootstrap administrators.
    pub superusers: Vec<String>,
    /// `name:password` of a user the controller creates when no user of that name exists, so a
    /// new cluster has someone to log in as (list it in `superusers` to make it an admin). A
    /// password changed later with `runnel user create` is not overwritten.
    pub bootstrap_user: Option<String>,
    /// How long a bearer token issued at login stays valid, seconds.
    pub token_lifetime_secs: u64,
    /// Most open connections from one IP address (TLS listeners; further ones are closed at once).
    pub max_connections_per_ip: u32,
    /// Address the Kafka-protocol listener binds (unset: no Kafka listener; `runnel dev` binds
    /// 127.0.0.1:9092). Existing Kafka clients and tools connect here.
    pub kafka_listen: Option<SocketAddr>,
    /// `host:port` Kafka clients are told to use for this node (default: `kafka_listen`).
    pub kafka_advertise: Option<String>,
    /// A Kafka client's Metadata request for a topic that does not exist creates it (as Kafka's
    /// `auto.create.topics.enable`), with `kafka_default_partitions` partitions.
    pub kafka_auto_create_topics: bool,
    /// Partitions of a topic created by a Kafka client without saying how many (Kafka's
    /// `num.partitions`).
    pub kafka_default_partitions: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            advertise: None,
            data_dir: PathBuf::from("./runnel-data"),
            voters: vec![],
            raft_heartbeat_ms: 50,
            raft_election_timeout_ms: 150,
            node_liveness_interval_ms: 100,
            node_liveness_timeout_ms: 500,
            broker_heartbeat_ms: 1_000,
            broker_session_timeout_ms: 6_000,
            broker_replacement_timeout_ms: 300_000,
            offsets_topic_partitions: 8,
            offsets_topic_replication_factor: 3,
            retention_check_interval_ms: 5_000,
            cleaner_interval_ms: 30_000,
            min_free_bytes: 0,
            unsafe_skip_fsync: false,
            node_id_from_hostname: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            insecure: false,
            require_auth: false,
            superusers: vec![],
            bootstrap_user: None,
            token_lifetime_secs: 3_600,
            max_connections_per_ip: 1_000,
            kafka_listen: None,
            kafka_advertise: None,
            kafka_auto_create_topics: true,
            kafka_default_partitions: 1,
        }
    }
}

/// The keys a node reads from `RUNNEL_<KEY>` environment variables.
const ENV_KEYS: [&str; 32] = [
    "node_id",
    "listen",
    "advertise",
    "data_dir",
    "voters",
    "raft_heartbeat_ms",
    "raft_election_timeout_ms",
    "node_liveness_interval_ms",
    "node_liveness_timeout_ms",
    "broker_heartbeat_ms",
    "broker_session_timeout_ms",
    "broker_replacement_timeout_ms",
    "offsets_topic_partitions",
    "offsets_topic_replication_factor",
    "retention_check_interval_ms",
    "cleaner_interval_ms",
    "min_free_bytes",
    "unsafe_skip_fsync",
    "node_id_from_hostname",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "insecure",
    "require_auth",
    "superusers",
    "bootstrap_user",
    "token_lifetime_secs",
    "max_connections_per_ip",
    "kafka_listen",
    "kafka_advertise",
    "kafka_auto_create_topics",
    "kafka_default_partitions",
];

/// Reads the comma-separated lists among the `RUNNEL_*` variables (figment takes each as one
/// string): `RUNNEL_VOTERS` and `RUNNEL_SUPERUSERS`.
fn merge_env_lists(mut fig: Figment, keys: &[&str]) -> Figment {
    for key in keys {
        if let Ok(v) = std::env::var(format!("RUNNEL_{}", key.to_ascii_uppercase())) {
            let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            fig = fig.merge(Serialized::default(key, list));
        }
    }
    fig
}

/// Command-line overrides; every field is optional so unset flags do not mask the file or env.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct NodeFlags {
    /// TOML configuration file (keys as in the README's configuration reference).
    #[arg(long, env = "RUNNEL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// Address to bind, e.g. 127.0.0.1:9292.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address others reach this node at (default: --listen).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Metadata voters, comma separated: 1=127.0.0.1:9292,2=127.0.0.1:9293,3=127.0.0.1:9294
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voters: Option<Vec<String>>,
    /// Serve without TLS and node authentication on a non-loopback address: anyone who can reach
    /// the port can speak as any node (see docs/SECURITY.md).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// `name-<ordinal>` -> ordinal + 1 (node ids start at 1, StatefulSet ordinals at 0).
fn node_id_from_hostname(host: &str) -> Result<NodeId, ConfigError> {
    host.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<NodeId>().ok())
        .and_then(|o| o.checked_add(1))
        .ok_or_else(|| {
            invalid("node_id_from_hostname", host, "the host name does not end in -<number> (like runnel-0)")
        })
}

impl NodeConfig {
    /// Loads defaults < `flags.config` TOML file < `RUNNEL_*` env < flags, then validates.
    pub fn load(flags: &NodeFlags) -> Result<NodeConfig, ConfigError> {
        // Only this struct's keys: other RUNNEL_* variables (RUNNEL_BOOTSTRAP, RUNNEL_LOG, ...) belong
        // to the client or the scripts.
        Self::load_from(flags, Env::prefixed("RUNNEL_").only(&ENV_KEYS))
    }

    /// The single-node embedded default (`runnel dev`): defaults < `RUNNEL_*` env < the given
    /// listen address and data directory; the node is always its own only voter.
    pub fn load_dev(listen: Option<SocketAddr>, data_dir: Option<PathBuf>) -> Result<NodeConfig, ConfigError> {
        Self::load_dev_from(listen, data_dir, Env::prefixed("RUNNEL_").only(&ENV_KEYS))
    }

    fn load_dev_from(
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        env: Env,
    ) -> Result<NodeConfig, ConfigError> {
        let fig = Figment::from(Serialized::defaults(NodeConfig::default()))
            .merge(env.map(|k| k.as_str().to_ascii_lowercase().into()).filter(|k| k != "voters" && k != "superusers"));
        let fig = merge_env_lists(fig, &["superusers"]);
        let mut cfg: NodeConfig = fig.extract().map_err(|e| ConfigError::Figment(Box::new(e)))?;
        if let Some(l) = listen {
            cfg.listen = l;
        }
        if let Some(d) = data_dir {
            cfg.data_dir = d;
        }
        if cfg.kafka_listen.is_none() {
            cfg.kafka_listen = Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_KAFKA_PORT)));
        }
        cfg.voters = vec![format!("{}={}", cfg.node_id, cfg.advertise_addr())];
        cfg.validate()?;
        Ok(cfg)
    }

    fn load_from(flags: &NodeFlags, env: Env) -> Result<NodeConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(path) = &flags.config {
            if !path.exists() {
                return Err(invalid("config", path.display(), "file does not exist"));
            }
            fig = fig.merge(Toml::file(path));
        }
        // RUNNEL_VOTERS="1=a:1,2=b:2" is a list; figment reads it as one string, so split it here.
        fig = fig
            .merge(env.map(|k| k.as_str().to_ascii_lowercase().into()).filter(|k| k != "voters" && k != "superusers"));
        fig = merge_env_lists(fig, &["voters", "superusers"]);
        fig = fig.merge(Serialized::defaults(flags));
        let mut cfg: NodeConfig = fig.extract().map_err(|e| ConfigError::Figment(Box::new(e)))?;
        if cfg.node_id_from_hostname {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| invalid("node_id_from_hostname", "true", &format!("cannot read the host name: {e}")))?;
            cfg.node_id = node_id_from_hostname(host.trim())?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// Parsed voters, ordered by id.
    pub fn voter_map(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for v in &self.voters {
            let (id, addr) = v.split_once('=').ok_or_else(|| invalid("voters", v, "expected id=host:port"))?;
            let id: NodeId = id.trim().parse().map_err(|_| invalid("voters", v, "the id is not a number"))?;
            let addr = addr.trim();
            if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(invalid("voters", v, "expected host:port after '='"));
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(invalid("voters", v, "node id listed twice"));
            }
        }
        Ok(out)
    }

    /// This node's TLS files, when TLS is configured.
    pub fn tls(&self) -> Option<runnel_security::tls::TlsFiles> {
        Some(runnel_security::tls::TlsFiles {
            ca: self.tls_ca_file.clone()?,
            cert: Some(self.tls_cert_file.clone()?),
            key: Some(self.tls_key_file.clone()?),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", 0, "node ids start at 1"));
        }
        let tls_set =
            [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file].iter().filter(|f| f.is_some()).count();
        if tls_set != 0 && tls_set != 3 {
            let (field, value) = [
                ("tls_ca_file", &self.tls_ca_file),
                ("tls_cert_file", &self.tls_cert_file),
                ("tls_key_file", &self.tls_key_file),
            ]
            .into_iter()
            .find(|(_, v)| v.is_none())
            .map(|(f, _)| (f, "(unset)"))
            .unwrap_or(("tls_ca_file", ""));
            return Err(invalid(field, value, "TLS needs tls_ca_file, tls_cert_file and tls_key_file together"));
        }
        if tls_set == 0 && !self.insecure && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "listen",
                self.listen,
                "a node listening beyond loopback needs node authentication: set tls_ca_file, tls_cert_file and \
                 tls_key_file (docs/SECURITY.md; `runnel certs` makes them), or set insecure (--insecure, \
                 RUNNEL_INSECURE=true) to let anyone who can reach this port speak as any node",
            ));
        }
        for s in &self.superusers {
            match s.strip_prefix("User:") {
                Some(name) => {
                    runnel_security::acl::validate_user_name(name).map_err(|e| invalid("superusers", s, &e))?
                }
                None => return Err(invalid("superusers", s, "a superuser is a principal like User:admin")),
            }
        }
        if let Some(b) = &self.bootstrap_user {
            let Some((name, password)) = b.split_once(':') else {
                return Err(invalid("bootstrap_user", "(hidden)", "expected name:password"));
            };
            runnel_security::acl::validate_user_name(name).map_err(|e| invalid("bootstrap_user", name, &e))?;
            if password.len() < 8 {
                return Err(invalid("bootstrap_user", name, "the password must have at least 8 characters"));
            }
        }
        if self.token_lifetime_secs == 0 || self.token_lifetime_secs > MAX_TOKEN_LIFETIME_SECS {
            return Err(invalid(
                "token_lifetime_secs",
                self.token_lifetime_secs,
                &format!("must be between 1 and {MAX_TOKEN_LIFETIME_SECS} (30 days)"),
            ));
        }
        if self.kafka_default_partitions == 0 {
            return Err(invalid("kafka_default_partitions", 0, "a topic has at least 1 partition"));
        }
        if let Some(k) = self.kafka_listen {
            if k == self.listen && k.port() != 0 {
                return Err(invalid("kafka_listen", k, "the gRPC listener (listen) already binds this address"));
            }
            if self.kafka_advertise.is_none() && k.ip().is_unspecified() {
                return Err(invalid(
                    "kafka_listen",
                    k,
                    "binds every interface: set kafka_advertise to the host:port Kafka clients should use",
                ));
            }
        }
        if let Some(a) = &self.kafka_advertise {
            let port = a.rsplit_once(':').and_then(|(h, p)| p.parse::<u16>().ok().filter(|_| !h.is_empty()));
            if port.is_none() {
                return Err(invalid("kafka_advertise", a, "expected host:port"));
            }
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid("max_connections_per_ip", 0, "at least 1"));
        }
        let voters = self.voter_map()?;
        if voters.is_empty() {
            return Err(invalid("voters", "", "at least one metadata voter is required (id=host:port)"));
        }
        if ![1, 3, 5].contains(&voters.len()) {
            return Err(invalid(
                "voters",
                self.voters.join(","),
                "use 1, 3 or 5 metadata voters (an even count adds no fault tolerance)",
            ));
        }
        if let Some(addr) = voters.get(&self.node_id) {
            if *addr != self.advertise_addr() {
                return Err(invalid(
                    "voters",
                    self.voters.join(","),
                    &format!(
                        "lists node {} at {addr}, but this node advertises {}",
                        self.node_id,
                        self.advertise_addr()
                    ),
                ));
            }
        }
        if self.raft_heartbeat_ms == 0 || self.raft_heartbeat_ms * 3 > self.raft_election_timeout_ms {
            return Err(invalid(
                "raft_heartbeat_ms",
                self.raft_heartbeat_ms,
                &format!(
                    "must be positive and at most a third of raft_election_timeout_ms ({})",
                    self.raft_election_timeout_ms
                ),
            ));
        }
        if self.node_liveness_interval_ms == 0 || self.node_liveness_interval_ms * 2 > self.node_liveness_timeout_ms {
            return Err(invalid(
                "node_liveness_interval_ms",
                self.node_liveness_interval_ms,
                &format!(
                    "must be positive and at most half of node_liveness_timeout_ms ({})",
                    self.node_liveness_timeout_ms
                ),
            ));
        }
        // A follower refuses to vote while its leader's lease (1.5x the election timeout since
        // the leader's last message) runs: declaring the leader gone any sooner would only buy
        // refused elections.
        if self.node_liveness_timeout_ms < self.raft_election_timeout_ms * 3 / 2 {
            return Err(invalid(
                "node_liveness_timeout_ms",
                self.node_liveness_timeout_ms,
                &format!(
                    "must be at least 1.5 times raft_election_timeout_ms ({}), the leader lease",
                    self.raft_election_timeout_ms
                ),
            ));
        }
        if self.broker_heartbeat_ms == 0 || self.broker_heartbeat_ms * 2 > self.broker_session_timeout_ms {
            return Err(invalid(
                "broker_heartbeat_ms",
                self.broker_heartbeat_ms,
                "must be positive and at most half of broker_session_timeout_ms",
            ));
        }
        if self.broker_replacement_timeout_ms < self.broker_session_timeout_ms {
            return Err(invalid(
                "broker_replacement_timeout_ms",
                self.broker_replacement_timeout_ms,
                &format!(
                    "must be at least broker_session_timeout_ms ({}): a broker is replaced only after it is declared unavailable",
                    self.broker_session_timeout_ms
                ),
            ));
        }
        if self.offsets_topic_partitions == 0 || self.offsets_topic_partitions > 1024 {
            return Err(invalid(
                "offsets_topic_partitions",
                self.offsets_topic_partitions,
                "must be between 1 and 1024",
            ));
        }
        if self.offsets_topic_replication_factor == 0 || self.offsets_topic_replication_factor > 7 {
            return Err(invalid(
                "offsets_topic_replication_factor",
                self.offsets_topic_replication_factor,
                "must be between 1 and 7",
            ));
        }
        for (field, v) in [
            ("retention_check_interval_ms", self.retention_check_interval_ms),
            ("cleaner_interval_ms", self.cleaner_interval_ms),
        ] {
            if !(MIN_MAINTENANCE_INTERVAL_MS..=MAX_MAINTENANCE_INTERVAL_MS).contains(&v) {
                return Err(invalid(
                    field,
                    v,
                    &format!("must be between {MIN_MAINTENANCE_INTERVAL_MS} and {MAX_MAINTENANCE_INTERVAL_MS} ms"),
                ));
            }
        }
        Ok(())
    }
}

/// Bounds for the retention and cleaner intervals (tests use a few hundred milliseconds).
const MIN_MAINTENANCE_INTERVAL_MS: u64 = 10;
const MAX_MAINTENANCE_INTERVAL_MS: u64 = 24 * 60 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("RUNNEL_TEST_UNUSED_PREFIX_")
    }

    #[test]
    fn a_statefulset_pod_name_gives_its_ordinal_plus_one() {
        assert_eq!(node_id_from_hostname("runnel-0").ok(), Some(1));
        assert_eq!(node_id_from_hostname("my-runnel-12").ok(), Some(13));
        for bad in ["runnel", "runnel-", "runnel-x", "runnel-18446744073709551615"] {
            let e = node_id_from_hostname(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad) && e.contains("-<number>"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "node_id = 2\nlisten = \"127.0.0.1:9293\"\nvoters = [\"1=127.0.0.1:9292\", \"2=127.0.0.1:9293\", \"3=127.0.0.1:9294\"]\n",
        )
        .unwrap();
        let flags = NodeFlags { config: Some(file.clone()), ..Default::default() };
        let cfg = NodeConfig::load_from(&flags, no_env()).unwrap();
        assert_eq!(cfg.node_id, 2);
        assert_eq!(cfg.voter_map().unwrap().len(), 3);

        let flags = NodeFlags { config: Some(file), data_dir: Some("/tmp/x".into()), ..Default::default() };
        assert_eq!(NodeConfig::load_from(&flags, no_env()).unwrap().data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_named() {
        let flags = NodeFlags { voters: Some(vec!["1=127.0.0.1:9292".into(), "2=nope".into()]), ..Default::default() };
        let e = NodeConfig::load_from(&flags, no_env()).unwrap_err().to_string();
        assert!(e.contains("voters") && e.contains("2=nope"), "{e}");

        let flags = NodeFlags {
            voters: Some(vec!["1=127.0.0.1:9292".into(), "2=127.0.0.1:9293".into()]),
            ..Default::default()
        };
        let e = NodeConfig::load_from(&flags, no_env()).unwrap_err().to_string();
        assert!(e.contains("1, 3 or 5"), "{e}");

        let flags = NodeFlags {
            listen: Some("not-an-addr".into()),
            voters: Some(vec!["1=127.0.0.1:9292".into()]),
            ..Default::default()
        };
        let e = NodeConfig::load_from(&flags, no_env()).unwrap_err().to_string();
        assert!(e.contains("listen") || e.contains("not-an-addr"), "{e}");
    }

    #[test]
    fn maintenance_intervals_are_checked() {
        let mut cfg = NodeConfig::load_dev_from(None, None, no_env()).unwrap();
        cfg.retention_check_interval_ms = 200;
        cfg.cleaner_interval_ms = 300;
        cfg.validate().unwrap();
        cfg.cleaner_interval_ms = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("cleaner_interval_ms") && e.contains("'0'"), "{e}");
    }

    #[test]
    fn a_node_beyond_loopback_needs_tls_or_an_explicit_insecure() {
        let mut cfg = NodeConfig::default();
        cfg.voters = vec![format!("1={}", cfg.listen)];
        assert!(cfg.validate().is_ok(), "loopback may stay open");
        cfg.listen = "0.0.0.0:9292".parse().unwrap();
        cfg.advertise = Some("127.0.0.1:9292".into());
        cfg.voters = vec!["1=127.0.0.1:9292".into()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("'listen'") && e.contains("0.0.0.0:9292") && e.contains("insecure"), "{e}");
        cfg.insecure = true;
        assert!(cfg.validate().is_ok());
        cfg.insecure = false;
        cfg.tls_ca_file = Some("ca.pem".into());
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("'tls_cert_file'") && e.contains("together"), "{e}");
        cfg.tls_cert_file = Some("node-1.pem".into());
        cfg.tls_key_file = Some("node-1.key".into());
        assert!(cfg.validate().is_ok(), "TLS configured");
        assert!(cfg.tls().is_some());
    }

    #[test]
    fn liveness_timing_is_checked() {
        let mut cfg = NodeConfig::load_dev_from(None, None, no_env()).unwrap();
        cfg.node_liveness_interval_ms = 300;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("node_liveness_interval_ms") && e.contains("'300'"), "{e}");
        cfg.node_liveness_interval_ms = 50;
        cfg.node_liveness_timeout_ms = 200;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("node_liveness_timeout_ms") && e.contains("leader lease"), "{e}");
        cfg.node_liveness_timeout_ms = 225;
        cfg.validate().unwrap();
    }

    #[test]
    fn dev_listens_for_kafka_clients_on_9092_and_start_only_when_asked() {
        let dev = NodeConfig::load_dev_from(None, None, no_env()).unwrap();
        assert_eq!(dev.kafka_listen, Some("127.0.0.1:9092".parse().unwrap()));
        assert_eq!(NodeConfig::default().kafka_listen, None);
        let mut cfg = NodeConfig { kafka_listen: Some("0.0.0.0:9092".parse().unwrap()), ..dev.clone() };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("kafka_listen") && e.contains("kafka_advertise"), "{e}");
        cfg.kafka_advertise = Some("broker-1.example:9092".into());
        cfg.validate().unwrap();
        cfg.kafka_advertise = Some("no-port".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("kafka_advertise"));
        let same = NodeConfig { kafka_listen: Some(dev.listen), ..dev };
        assert!(same.validate().unwrap_err().to_string().contains("already binds"));
    }

    #[test]
    fn dev_is_its_own_voter() {
        let cfg = NodeConfig::load_dev_from(None, None, no_env()).unwrap();
        assert_eq!(cfg.voter_map().unwrap().get(&1).map(String::as_str), Some("127.0.0.1:9292"));
    }

    /// `runnel dev` reads RUNNEL_* settings like `runnel start` (it used to ignore them), its
    /// flags win, and it stays its own only voter.
    #[test]
    fn dev_reads_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RUNNEL_MIN_FREE_BYTES", "12345");
            jail.set_env("RUNNEL_DATA_DIR", "/tmp/from-env");
            jail.set_env("RUNNEL_VOTERS", "7=10.0.0.7:1");
            let env = Env::prefixed("RUNNEL_").only(&ENV_KEYS);
            let cfg = NodeConfig::load_dev_from(Some("127.0.0.1:9400".parse().unwrap()), None, env.clone()).unwrap();
            assert_eq!(cfg.min_free_bytes, 12345);
            assert_eq!(cfg.data_dir, PathBuf::from("/tmp/from-env"));
            assert_eq!(cfg.voters, vec!["1=127.0.0.1:9400".to_string()]);
            let flagged = NodeConfig::load_dev_from(None, Some("/tmp/flag".into()), env.clone()).unwrap();
            assert_eq!(flagged.data_dir, PathBuf::from("/tmp/flag"));
            jail.set_env("RUNNEL_MIN_FREE_BYTES", "lots");
            let e = NodeConfig::load_dev_from(None, None, env).unwrap_err().to_string();
            assert!(e.contains("min_free_bytes") || e.contains("lots"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn security_settings_are_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RUNNEL_REQUIRE_AUTH", "true");
            jail.set_env("RUNNEL_SUPERUSERS", "User:admin, User:ops");
            jail.set_env("RUNNEL_BOOTSTRAP_USER", "admin:correct-horse");
            let env = Env::prefixed("RUNNEL_").only(&ENV_KEYS);
            let cfg = NodeConfig::load_dev_from(None, None, env.clone()).unwrap();
            assert!(cfg.require_auth);
            assert_eq!(cfg.superusers, vec!["User:admin".to_string(), "User:ops".to_string()]);
            assert_eq!(cfg.bootstrap_user.as_deref(), Some("admin:correct-horse"));
            jail.set_env("RUNNEL_SUPERUSERS", "admin");
            let e = NodeConfig::load_dev_from(None, None, env.clone()).unwrap_err().to_string();
            assert!(e.contains("superusers") && e.contains("User:admin"), "{e}");
            jail.set_env("RUNNEL_SUPERUSERS", "User:admin");
            jail.set_env("RUNNEL_BOOTSTRAP_USER", "admin:short");
            let e = NodeConfig::load_dev_from(None, None, env.clone()).unwrap_err().to_string();
            assert!(e.contains("bootstrap_user") && e.contains("8 characters") && !e.contains("short"), "{e}");
            jail.set_env("RUNNEL_BOOTSTRAP_USER", "admin:correct-horse");
            jail.set_env("RUNNEL_TOKEN_LIFETIME_SECS", "0");
            let e = NodeConfig::load_dev_from(None, None, env).unwrap_err().to_string();
            assert!(e.contains("token_lifetime_secs"), "{e}");
            Ok(())
        });
    }
}
