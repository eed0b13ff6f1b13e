//! What a coordinator stores in its partition of the offsets topic: one record per committed
//! offset and one per completed generation, keyed so that compaction keeps exactly the latest of
//! each. An empty value is a tombstone (the group or offset was deleted).
//!
//! Keys are binary (`\0`-separated, which neither group nor topic names may contain); values are
//! JSON so that `runnel consume __consumer_offsets` is readable.

use runnel_types::{ErrorCode, RunnelError};
use serde::{Deserialize, Serialize};

use crate::TopicPartition;

/// Longest group name, as for topics.
pub const MAX_GROUP_NAME_LEN: usize = 249;

/// 1..=249 characters, no control characters (`\0` separates the parts of a stored key).
pub fn validate_group_name(name: &str) -> Result<(), RunnelError> {
    let bad = |why: &str| Err(RunnelError::invalid_config("group name", name, why));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_GROUP_NAME_LEN {
        return bad("must be at most 249 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    Group(String),
    Offset(String, TopicPartition),
}

impl StoredKey {
    pub fn group(&self) -> &str {
        match self {
            StoredKey::Group(g) | StoredKey::Offset(g, _) => g,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            StoredKey::Group(g) => [b"g\0".as_slice(), g.as_bytes()].concat(),
            StoredKey::Offset(g, tp) => format!("o\0{g}\0{}\0{}", tp.topic, tp.partition).into_bytes(),
        }
    }

    pub fn decode(key: &[u8]) -> Result<Self, RunnelError> {
        let bad = || RunnelError::new(ErrorCode::CorruptBatch, format!("offsets-topic key {key:?} is malformed"));
        let s = std::str::from_utf8(key).map_err(|_| bad())?;
        let parts: Vec<&str> = s.split('\0').collect();
        match parts.as_slice() {
            ["g", g] => Ok(StoredKey::Group(g.to_string())),
            ["o", g, t, p] => {
                Ok(StoredKey::Offset(g.to_string(), TopicPartition::new(*t, p.parse().map_err(|_| bad())?)))
            }
            _ => Err(bad()),
        }
    }
}

/// A committed offset: the next offset the group will read from the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetValue {
    pub offset: u64,
    #[serde(default)]
    pub metadata: String,
    /// Wall-clock time of the commit, for humans.
    pub commit_timestamp_ms: i64,
    /// The generation the commit was made in (-1: outside any generation, e.g. an admin reset).
    pub generation: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    pub id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub assignment: Vec<TopicPartition>,
}

/// A group as of a completed generation (or its becoming empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupValue {
    pub generation: u64,
    pub assignor: Option<String>,
    pub members: Vec<MemberValue>,
}

pub fn encode_value<T: Serialize>(v: &T) -> Result<Vec<u8>, RunnelError> {
    serde_json::to_vec(v).map_err(|e| RunnelError::internal(format!("encoding a group record: {e}")))
}

pub fn decode_value<T: for<'de> Deserialize<'de>>(key: &StoredKey, v: &[u8]) -> Result<T, RunnelError> {
    serde_json::from_slice(v).map_err(|e| {
        RunnelError::new(ErrorCode::CorruptBatch, format!("offsets-topic record {key:?} does not decode: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [StoredKey::Group("g-1".into()), StoredKey::Offset("my group".into(), TopicPartition::new("t.x", 17))]
        {
            assert_eq!(StoredKey::decode(&k.encode()).unwrap(), k);
        }
        assert!(StoredKey::decode(b"o\0g\0t\0notanumber").is_err());
        assert!(StoredKey::decode(b"zzz").is_err());
    }

    #[test]
    fn group_names_are_validated() {
        assert!(validate_group_name("orders-app").is_ok());
        assert!(validate_group_name("").unwrap_err().message.contains("empty"));
        assert!(validate_group_name("a\0b").is_err());
        assert!(validate_group_name(&"g".repeat(250)).is_err());
    }
}
