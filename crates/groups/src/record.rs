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

/// A member as of a completed generation. The Kafka-protocol fields were added later: they default
/// when absent, so records written before them still decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    pub id: String,
    pub client_id: String,
    /// Runnel protocol: what the member subscribes to (empty for a Kafka member, whose
    /// subscription is inside its opaque protocol metadata).
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Runnel protocol: the partitions the coordinator assigned.
    pub assignment: Vec<TopicPartition>,
    /// Kafka: the static member id the client gave (`group.instance.id`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_instance_id: Option<String>,
    /// Kafka: the address the member connected from, for DescribeGroups.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_host: String,
    /// Kafka: the member's metadata for the generation's chosen protocol (base64 in the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64")]
    pub protocol_metadata: Option<Vec<u8>>,
    /// Kafka: what the leader's SyncGroup assigned this member (base64 in the JSON). `None` in a
    /// generation stored before the leader's SyncGroup: the members never got their assignment.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64")]
    pub assignment_bytes: Option<Vec<u8>>,
}

/// The Kafka classic-protocol part of a group record (absent for a Runnel-protocol group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaGroupValue {
    /// The members' `protocol_type`, e.g. `consumer`.
    pub protocol_type: String,
    /// The protocol chosen for the generation (`None` once the group is empty).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub leader: Option<String>,
}

/// A group as of a completed generation (or its becoming empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupValue {
    pub generation: u64,
    pub assignor: Option<String>,
    pub members: Vec<MemberValue>,
    /// Present for a group of Kafka consumers (classic protocol, client-side assignment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaGroupValue>,
}

/// Opaque Kafka bytes as base64 strings: a third of the size of a JSON array of numbers, and the
/// values stay printable.
mod opt_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => STANDARD.decode(s.as_bytes()).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
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
    fn records_written_before_the_kafka_fields_still_decode() {
        let key = StoredKey::Group("g".into());
        let old = br#"{"generation":4,"assignor":"range","members":[{"id":"m-1","client_id":"c",
            "topics":["t"],"session_timeout_ms":10000,"rebalance_timeout_ms":30000,
            "assignment":[{"topic":"t","partition":0}]}]}"#;
        let v: GroupValue = decode_value(&key, old).unwrap();
        assert_eq!((v.generation, v.kafka.as_ref()), (4, None));
        let m = &v.members[0];
        assert_eq!(m.assignment, vec![TopicPartition::new("t", 0)]);
        assert_eq!((&m.group_instance_id, m.client_host.as_str()), (&None, ""));
        assert_eq!((&m.protocol_metadata, &m.assignment_bytes), (&None, &None));
        // And a Runnel group is stored exactly as before (no new keys).
        assert!(!String::from_utf8(encode_value(&v).unwrap()).unwrap().contains("kafka"));
    }

    #[test]
    fn kafka_fields_round_trip_with_bytes_as_base64() {
        let v = GroupValue {
            generation: 2,
            assignor: None,
            members: vec![MemberValue {
                id: "m".into(),
                client_id: "c".into(),
                topics: vec![],
                session_timeout_ms: 1,
                rebalance_timeout_ms: 2,
                assignment: vec![],
                group_instance_id: Some("i".into()),
                client_host: "/10.0.0.1".into(),
                protocol_metadata: Some(vec![0, 1, 255]),
                assignment_bytes: Some(vec![]),
            }],
            kafka: Some(KafkaGroupValue {
                protocol_type: "consumer".into(),
                protocol: Some("range".into()),
                leader: Some("m".into()),
            }),
        };
        let json = encode_value(&v).unwrap();
        assert!(String::from_utf8(json.clone()).unwrap().contains(r#""protocol_metadata":"AAH/""#));
        assert_eq!(decode_value::<GroupValue>(&StoredKey::Group("g".into()), &json).unwrap(), v);
    }

    #[test]
    fn group_names_are_validated() {
        assert!(validate_group_name("orders-app").is_ok());
        assert!(validate_group_name("").unwrap_err().message.contains("empty"));
        assert!(validate_group_name("a\0b").is_err());
        assert!(validate_group_name(&"g".repeat(250)).is_err());
    }
}
