//! Consumer groups, as a pure state machine (no I/O, no clock: time is passed in).
//!
//! A group's coordinator is the leader of one partition of the internal, compacted
//! [`OFFSETS_TOPIC`]: [`coordinator_partition`] picks which. The coordinator keeps membership in
//! memory ([`Groups`]) and writes what must survive a failover — each completed generation and
//! every offset commit — as records of that partition ([`record`]), so they are replicated by the
//! partition's Raft group like any other record. A new coordinator rebuilds [`Groups`] by replaying
//! the partition.
//!
//! Assignment is computed by the coordinator ([`assignor`]), not by a client "leader" as in Kafka's
//! classic protocol: every member gets its partitions in the JoinGroup answer (see ADR 0010).
//! Groups of Kafka consumers use the classic protocol instead (client-side assignment through
//! JoinGroup and SyncGroup, [`group::Groups::kafka_join`]), on the same stored offsets.

pub mod assignor;
pub mod group;
pub mod record;

pub use assignor::Assignor;
pub use group::{
    Completed, GroupState, Groups, JoinOutcome, KafkaJoinAnswer, KafkaJoinOutcome, KafkaJoinRequest,
    KafkaMemberMetadata, Member, SyncOutcome,
};

/// The internal topic holding committed offsets and group generations.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A topic partition, ordered by topic then partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Which partition of [`OFFSETS_TOPIC`] coordinates `group`: CRC32C of the name modulo the
/// partition count. Stable across versions: changing it would orphan every stored group.
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    crc32c::crc32c(group.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_partition_is_stable_and_in_range() {
        // Fixed values: a change here would move every existing group to another coordinator.
        assert_eq!(coordinator_partition("orders", 8), 2);
        assert_eq!(coordinator_partition("orders", 50), 46);
        assert_eq!(coordinator_partition("payments-service", 50), 14);
        for g in ["a", "b", "payments-service", ""] {
            assert!(coordinator_partition(g, 8) < 8);
        }
        assert_eq!(coordinator_partition("x", 0), 0);
    }
}
