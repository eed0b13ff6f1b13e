//! Topic names and per-topic configuration, validated with errors that name the field and value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::RunnelError;

/// Kafka's rule: 1..=249 characters from `[a-zA-Z0-9._-]`; `.` and `..` are reserved.
pub fn validate_topic_name(name: &str) -> Result<(), RunnelError> {
    let bad = |why: &str| Err(RunnelError::invalid_config("topic name", name, why));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("must be at most 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// What happens to old records (`cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Records older than `retention.ms`, or beyond `retention.bytes`, are deleted.
    Delete,
    /// Only the latest record per key is kept (tombstones expire after `delete.retention.ms`).
    Compact,
    /// Both: compacted, and old segments deleted by retention.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    fn parse(v: &str) -> Option<Self> {
        let mut parts: Vec<&str> = v.split(',').map(str::trim).collect();
        parts.sort_unstable();
        parts.dedup();
        match parts.as_slice() {
            ["delete"] => Some(CleanupPolicy::Delete),
            ["compact"] => Some(CleanupPolicy::Compact),
            ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
            _ => None,
        }
    }
}

/// A topic's configuration. Unknown keys are rejected, not ignored. Changed with
/// `AlterTopicConfig`; running replicas pick up a change when their node applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Largest single record (key + value + headers), bytes.
    pub max_record_bytes: u64,
    /// Records whose batch's running max timestamp is older than this are deleted, ms; -1 = never.
    pub retention_ms: i64,
    /// Per partition: the oldest whole batches are deleted while the partition holds more, bytes;
    /// -1 = unlimited.
    pub retention_bytes: i64,
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone (a record with an empty value) survives compaction, ms.
    pub delete_retention_ms: i64,
    /// acks=all produce is refused (NOT_ENOUGH_REPLICAS) while fewer replicas, the leader
    /// included, have everything committed.
    pub min_insync_replicas: u32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_insync_replicas: 1,
        }
    }
}

pub const KEY_MAX_RECORD_BYTES: &str = "max.record.bytes";
pub const KEY_RETENTION_MS: &str = "retention.ms";
pub const KEY_RETENTION_BYTES: &str = "retention.bytes";
pub const KEY_CLEANUP_POLICY: &str = "cleanup.policy";
pub const KEY_DELETE_RETENTION_MS: &str = "delete.retention.ms";
pub const KEY_MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Every key a topic understands.
pub const TOPIC_CONFIG_KEYS: [&str; 6] = [
    KEY_CLEANUP_POLICY,
    KEY_DELETE_RETENTION_MS,
    KEY_MAX_RECORD_BYTES,
    KEY_MIN_INSYNC_REPLICAS,
    KEY_RETENTION_BYTES,
    KEY_RETENTION_MS,
];

/// A duration or size where -1 means unlimited; otherwise at least `min`.
fn limit_or_unlimited(k: &str, v: &str, min: i64, unit: &str) -> Result<i64, RunnelError> {
    let n: i64 = v.trim().parse().map_err(|_| {
        RunnelError::invalid_config(k, v, &format!("expected a whole number of {unit}, or -1 for unlimited"))
    })?;
    if n != -1 && n < min {
        return Err(RunnelError::invalid_config(k, v, &format!("must be -1 (unlimited) or at least {min} {unit}")));
    }
    Ok(n)
}

impl TopicConfig {
    /// The defaults with `map` applied.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, RunnelError> {
        TopicConfig::default().with_changes(map, &[])
    }

    /// This configuration with `set` applied and the keys in `delete` back at their defaults.
    /// Every key and value is checked; the error names the first bad one.
    pub fn with_changes(&self, set: &BTreeMap<String, String>, delete: &[String]) -> Result<Self, RunnelError> {
        let mut cfg = self.clone();
        let defaults = TopicConfig::default();
        for k in delete {
            match k.as_str() {
                KEY_MAX_RECORD_BYTES => cfg.max_record_bytes = defaults.max_record_bytes,
                KEY_RETENTION_MS => cfg.retention_ms = defaults.retention_ms,
                KEY_RETENTION_BYTES => cfg.retention_bytes = defaults.retention_bytes,
                KEY_CLEANUP_POLICY => cfg.cleanup_policy = defaults.cleanup_policy,
                KEY_DELETE_RETENTION_MS => cfg.delete_retention_ms = defaults.delete_retention_ms,
                KEY_MIN_INSYNC_REPLICAS => cfg.min_insync_replicas = defaults.min_insync_replicas,
                other => return Err(unknown_key(other, "(delete)")),
            }
            if set.contains_key(k) {
                return Err(RunnelError::invalid_config(
                    k,
                    "(set and delete)",
                    "a key may be set or deleted, not both",
                ));
            }
        }
        for (k, v) in set {
            match k.as_str() {
                KEY_MAX_RECORD_BYTES => {
                    let n: u64 = v
                        .trim()
                        .parse()
                        .map_err(|_| RunnelError::invalid_config(k, v, "expected a whole number of bytes"))?;
                    if n == 0 || n > MAX_RECORD_BYTES_LIMIT {
                        return Err(RunnelError::invalid_config(
                            k,
                            v,
                            &format!("must be between 1 and {MAX_RECORD_BYTES_LIMIT}"),
                        ));
                    }
                    cfg.max_record_bytes = n;
                }
                KEY_RETENTION_MS => cfg.retention_ms = limit_or_unlimited(k, v, 1, "milliseconds")?,
                KEY_RETENTION_BYTES => cfg.retention_bytes = limit_or_unlimited(k, v, 0, "bytes")?,
                KEY_DELETE_RETENTION_MS => {
                    let n: i64 = v
                        .trim()
                        .parse()
                        .map_err(|_| RunnelError::invalid_config(k, v, "expected a whole number of milliseconds"))?;
                    if n < 0 {
                        return Err(RunnelError::invalid_config(k, v, "must be at least 0 milliseconds"));
                    }
                    cfg.delete_retention_ms = n;
                }
                KEY_CLEANUP_POLICY => {
                    cfg.cleanup_policy = CleanupPolicy::parse(v).ok_or_else(|| {
                        RunnelError::invalid_config(k, v, "expected 'delete', 'compact' or 'compact,delete'")
                    })?;
                }
                KEY_MIN_INSYNC_REPLICAS => {
                    let n: u32 =
                        v.trim().parse().map_err(|_| RunnelError::invalid_config(k, v, "expected a whole number"))?;
                    if n == 0 || n > MAX_REPLICATION_FACTOR {
                        return Err(RunnelError::invalid_config(
                            k,
                            v,
                            &format!("must be between 1 and {MAX_REPLICATION_FACTOR}"),
                        ));
                    }
                    cfg.min_insync_replicas = n;
                }
                other => return Err(unknown_key(other, v)),
            }
        }
        Ok(cfg)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY_MAX_RECORD_BYTES.to_string(), self.max_record_bytes.to_string()),
            (KEY_RETENTION_MS.to_string(), self.retention_ms.to_string()),
            (KEY_RETENTION_BYTES.to_string(), self.retention_bytes.to_string()),
            (KEY_CLEANUP_POLICY.to_string(), self.cleanup_policy.as_str().to_string()),
            (KEY_DELETE_RETENTION_MS.to_string(), self.delete_retention_ms.to_string()),
            (KEY_MIN_INSYNC_REPLICAS.to_string(), self.min_insync_replicas.to_string()),
        ])
    }
}

fn unknown_key(k: &str, v: &str) -> RunnelError {
    RunnelError::invalid_config(k, v, &format!("unknown topic config key (known: {})", TOPIC_CONFIG_KEYS.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        let e = validate_topic_name("bad name").unwrap_err();
        assert!(e.message.contains("'bad name'"), "{e}");
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn config_errors_name_field_and_value() {
        let e = TopicConfig::from_map(&map(&[("max.record.bytes", "lots")])).unwrap_err();
        assert!(e.message.contains("max.record.bytes") && e.message.contains("lots"), "{e}");
        assert!(TopicConfig::from_map(&map(&[("retention", "1")])).unwrap_err().message.contains("unknown"));
        assert_eq!(TopicConfig::from_map(&map(&[("max.record.bytes", "2048")])).unwrap().max_record_bytes, 2048);
        for (k, v) in [
            ("retention.ms", "0"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("retention.bytes", "-5"),
            ("cleanup.policy", "shred"),
            ("cleanup.policy", "compact,shred"),
            ("delete.retention.ms", "-1"),
            ("min.insync.replicas", "0"),
            ("min.insync.replicas", "99"),
        ] {
            let e = TopicConfig::from_map(&map(&[(k, v)])).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidConfig);
            assert!(e.message.contains(k) && e.message.contains(v), "{e}");
        }
    }

    #[test]
    fn defaults_and_every_key_round_trip() {
        let d = TopicConfig::default();
        assert_eq!(d.retention_ms, 604_800_000);
        assert_eq!(d.retention_bytes, -1);
        assert_eq!(d.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(d.delete_retention_ms, 86_400_000);
        assert_eq!(d.min_insync_replicas, 1);
        let c = TopicConfig::from_map(&map(&[
            ("retention.ms", "-1"),
            ("retention.bytes", "1000"),
            ("cleanup.policy", "delete, compact"),
            ("delete.retention.ms", "0"),
            ("min.insync.replicas", "2"),
        ]))
        .unwrap();
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert!(c.cleanup_policy.compacts() && c.cleanup_policy.deletes());
        assert_eq!(TopicConfig::from_map(&c.to_map()).unwrap(), c);
        assert_eq!(c.to_map().len(), TOPIC_CONFIG_KEYS.len());
    }

    #[test]
    fn changes_set_and_delete_keys() {
        let c = TopicConfig::from_map(&map(&[("retention.ms", "1000"), ("min.insync.replicas", "2")])).unwrap();
        let c2 = c.with_changes(&map(&[("retention.bytes", "10")]), &["retention.ms".to_string()]).unwrap();
        assert_eq!(c2.retention_ms, DEFAULT_RETENTION_MS);
        assert_eq!(c2.retention_bytes, 10);
        assert_eq!(c2.min_insync_replicas, 2);
        let e = c.with_changes(&BTreeMap::new(), &["nope".to_string()]).unwrap_err();
        assert!(e.message.contains("nope") && e.message.contains("unknown"), "{e}");
        let e = c.with_changes(&map(&[("retention.ms", "5")]), &["retention.ms".to_string()]).unwrap_err();
        assert!(e.message.contains("retention.ms"), "{e}");
    }
}
