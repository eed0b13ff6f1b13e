//! The client's view of the cluster: which brokers exist and where, which node is the controller,
//! and which node leads each partition. Filled from Metadata answers and corrected by the leader
//! hints that NOT_LEADER errors carry.

use std::collections::{BTreeMap, HashMap};

use runnel_proto::v1;
use runnel_types::NodeId;

#[derive(Debug, Clone)]
pub(crate) struct BrokerEntry {
    pub addr: String,
    pub alive: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TopicEntry {
    /// Partition number -> current leader (None while an election runs or after a failure made
    /// the client distrust what it knew).
    pub leaders: BTreeMap<u32, Option<NodeId>>,
}

/// What the cache knows about one partition's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    UnknownTopic,
    /// The topic exists with this many partitions, but not the one asked for.
    UnknownPartition(usize),
    NoLeader,
    /// A leader id with no known address (a broker list lagging behind partition state).
    LeaderWithoutAddr(NodeId),
    Leader(NodeId, String),
}

#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    pub brokers: BTreeMap<NodeId, BrokerEntry>,
    pub controller: Option<NodeId>,
    pub topics: HashMap<String, TopicEntry>,
}

impl MetadataCache {
    /// Merges a Metadata answer. `requested` is what was asked for: empty means every topic, so
    /// topics missing from the answer are forgotten; otherwise only the requested topics are
    /// replaced (and forgotten if absent).
    pub fn apply(&mut self, resp: &v1::MetadataResponse, requested: &[String]) {
        if !resp.brokers.is_empty() {
            self.brokers =
                resp.brokers.iter().map(|b| (b.id, BrokerEntry { addr: b.addr.clone(), alive: b.alive })).collect();
        }
        self.controller = resp.controller_id;
        if requested.is_empty() {
            self.topics.clear();
        } else {
            for t in requested {
                self.topics.remove(t);
            }
        }
        for t in &resp.topics {
            let leaders = t.partitions.iter().map(|p| (p.partition, p.leader)).collect();
            self.topics.insert(t.name.clone(), TopicEntry { leaders });
        }
    }

    pub fn insert_topic(&mut self, topic: &v1::TopicInfo) {
        let leaders = topic.partitions.iter().map(|p| (p.partition, p.leader)).collect();
        self.topics.insert(topic.name.clone(), TopicEntry { leaders });
    }

    pub fn lookup(&self, topic: &str, partition: u32) -> Lookup {
        let Some(t) = self.topics.get(topic) else {
            return Lookup::UnknownTopic;
        };
        match t.leaders.get(&partition) {
            None => Lookup::UnknownPartition(t.leaders.len()),
            Some(None) => Lookup::NoLeader,
            Some(Some(id)) => match self.brokers.get(id) {
                Some(b) if !b.addr.is_empty() => Lookup::Leader(*id, b.addr.clone()),
                _ => Lookup::LeaderWithoutAddr(*id),
            },
        }
    }

    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|t| t.leaders.len() as u32)
    }

    /// Follows a NOT_LEADER hint: `id` at `addr` now leads the partition.
    pub fn set_leader(&mut self, topic: &str, partition: u32, id: NodeId, addr: &str) {
        if !addr.is_empty() {
            let entry = self.brokers.entry(id).or_insert(BrokerEntry { addr: String::new(), alive: true });
            entry.addr = addr.to_string();
        }
        if let Some(t) = self.topics.get_mut(topic) {
            if let Some(l) = t.leaders.get_mut(&partition) {
                *l = Some(id);
            }
        }
    }

    /// Forgets a partition's leader so the next request refreshes metadata first.
    pub fn forget_leader(&mut self, topic: &str, partition: u32) {
        if let Some(l) = self.topics.get_mut(topic).and_then(|t| t.leaders.get_mut(&partition)) {
            *l = None;
        }
    }

    pub fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    pub fn controller_addr(&self) -> Option<String> {
        let id = self.controller?;
        self.brokers.get(&id).map(|b| b.addr.clone()).filter(|a| !a.is_empty())
    }

    /// Addresses to ask for metadata or to send admin requests to: the controller first (when
    /// `controller_first`), then live brokers, then the bootstrap list, then brokers believed
    /// dead; no duplicates.
    pub fn candidates(&self, bootstrap: &[String], controller_first: bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |a: &str| {
            if !a.is_empty() && !out.iter().any(|x| x == a) {
                out.push(a.to_string());
            }
        };
        if controller_first {
            if let Some(a) = self.controller_addr() {
                push(&a);
            }
        }
        for b in self.brokers.values().filter(|b| b.alive) {
            push(&b.addr);
        }
        for a in bootstrap {
            push(a);
        }
        for b in self.brokers.values().filter(|b| !b.alive) {
            push(&b.addr);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> v1::MetadataResponse {
        v1::MetadataResponse {
            brokers: vec![
                v1::BrokerInfo { id: 1, addr: "a:1".into(), alive: true, epoch: 1, ..Default::default() },
                v1::BrokerInfo { id: 2, addr: "b:2".into(), alive: false, epoch: 1, ..Default::default() },
                v1::BrokerInfo { id: 3, addr: "c:3".into(), alive: true, epoch: 1, ..Default::default() },
            ],
            controller_id: Some(3),
            topics: vec![v1::TopicInfo {
                name: "t".into(),
                partitions: vec![
                    v1::PartitionInfo { partition: 0, leader: Some(1), ..Default::default() },
                    v1::PartitionInfo { partition: 1, leader: None, ..Default::default() },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn lookups_and_hints() {
        let mut c = MetadataCache::default();
        c.apply(&resp(), &[]);
        assert_eq!(c.lookup("t", 0), Lookup::Leader(1, "a:1".into()));
        assert_eq!(c.lookup("t", 1), Lookup::NoLeader);
        assert_eq!(c.lookup("t", 2), Lookup::UnknownPartition(2));
        assert_eq!(c.lookup("u", 0), Lookup::UnknownTopic);
        c.set_leader("t", 1, 4, "d:4");
        assert_eq!(c.lookup("t", 1), Lookup::Leader(4, "d:4".into()));
        c.forget_leader("t", 0);
        assert_eq!(c.lookup("t", 0), Lookup::NoLeader);
        assert_eq!(c.partition_count("t"), Some(2));
        assert_eq!(c.candidates(&["z:9".into(), "a:1".into()], true), vec!["c:3", "a:1", "d:4", "z:9", "b:2"]);
    }

    #[test]
    fn partial_refresh_keeps_other_topics() {
        let mut c = MetadataCache::default();
        c.apply(&resp(), &[]);
        let mut other = resp();
        other.topics[0].name = "u".into();
        c.apply(&other, &["u".into()]);
        assert!(c.topics.contains_key("t") && c.topics.contains_key("u"));
        let mut none = resp();
        none.topics.clear();
        c.apply(&none, &["u".into()]);
        assert!(c.topics.contains_key("t") && !c.topics.contains_key("u"));
        c.apply(&none, &[]);
        assert!(c.topics.is_empty());
    }
}
