//! The cross-replica check after healing: every replica of a partition holds a byte-identical
//! committed prefix. Each node is asked directly (DescribeReplicas with a digest) for the crc32c
//! of its own replica's records up to the lowest high watermark all replicas of the partition
//! reached; the digests and the ranges they cover must agree.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{DescribeReplicasRequest, ReplicaStatus};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's view of its replicas of `topic` (None: it did not answer).
async fn describe(addr: &str, topic: &str, digest_up_to: Option<u64>) -> Option<Vec<ReplicaStatus>> {
    let connect = RunnelClient::connect(format!("http://{addr}"));
    let mut client = tokio::time::timeout(RPC_TIMEOUT, connect).await.ok()?.ok()?;
    let req = DescribeReplicasRequest { topic: Some(topic.to_string()), digest_up_to };
    let resp = tokio::time::timeout(RPC_TIMEOUT, client.describe_replicas(req)).await.ok()?.ok()?;
    Some(resp.into_inner().replicas)
}

/// Compares the replicas of every partition of `topic` on `nodes` (id, address). Followers learn
/// the last commit from the leader's next message, so the high watermarks are given `settle` to
/// agree first. Returns one line per divergence (empty: all agree) and how many partitions were
/// compared.
pub async fn compare(nodes: &[(u64, String)], topic: &str, settle: Duration) -> (Vec<String>, usize) {
    let deadline = tokio::time::Instant::now() + settle;
    // partition -> node -> high watermark
    let mut hws: BTreeMap<u32, BTreeMap<u64, u64>>;
    loop {
        hws = BTreeMap::new();
        let mut everyone_answered = true;
        for (id, addr) in nodes {
            match describe(addr, topic, None).await {
                Some(rs) => {
                    for r in rs {
                        hws.entry(r.partition).or_default().insert(*id, r.high_watermark);
                    }
                }
                None => everyone_answered = false,
            }
        }
        let agreed = hws.values().all(|m| m.values().min() == m.values().max());
        if (everyone_answered && agreed) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut problems = Vec::new();
    if hws.is_empty() {
        problems.push(format!("no node reported a replica of {topic}"));
        return (problems, 0);
    }
    for (partition, by_node) in &hws {
        let Some(up_to) = by_node.values().min().copied() else { continue };
        let mut digests: BTreeMap<u64, (Option<u32>, u64, String)> = BTreeMap::new();
        for (id, addr) in nodes.iter().filter(|(id, _)| by_node.contains_key(id)) {
            match describe(addr, topic, Some(up_to)).await {
                Some(rs) => {
                    if let Some(r) = rs.into_iter().find(|r| r.partition == *partition) {
                        digests.insert(*id, (r.digest, r.digest_end, r.digest_error));
                    }
                }
                None => problems.push(format!("{topic}/{partition}: node {id} did not answer for its digest")),
            }
        }
        for (id, (digest, end, error)) in &digests {
            if !error.is_empty() || digest.is_none() {
                problems.push(format!("{topic}/{partition}: node {id} could not compute its digest: {error}"));
            } else if *end != up_to {
                problems.push(format!(
                    "{topic}/{partition}: node {id} holds records only up to {end}, below the common high watermark {up_to}"
                ));
            }
        }
        let distinct: BTreeMap<Option<u32>, Vec<u64>> =
            digests.iter().fold(BTreeMap::new(), |mut m, (id, (d, _, _))| {
                m.entry(*d).or_insert_with(Vec::new).push(*id);
                m
            });
        if distinct.len() > 1 {
            let parts: Vec<String> = distinct
                .iter()
                .map(|(d, ids)| format!("nodes {ids:?}: {}", d.map_or("-".into(), |d| format!("{d:08x}"))))
                .collect();
            problems
                .push(format!("{topic}/{partition}: replicas differ in [log start, {up_to}): {}", parts.join("; ")));
        }
        let lagging: Vec<String> =
            by_node.iter().filter(|(_, hw)| **hw != up_to).map(|(id, hw)| format!("node {id} at {hw}")).collect();
        if !lagging.is_empty() {
            // Not a divergence by itself (only the common prefix is compared), but worth a line.
            tracing::info!(topic, partition, up_to, "high watermarks still differ: {}", lagging.join(", "));
        }
    }
    (problems, hws.len())
}

/// After healing, the metadata group must still work on every node — also on one whose disk
/// filled up completely (its metadata replica must have recovered by itself): a topic created
/// now must appear in every node's own metadata within `within`. Returns one line per node that
/// did not follow.
pub async fn metadata_follows(
    nodes: &[(u64, String)],
    client: &runnel_client::Client,
    within: Duration,
) -> Vec<String> {
    const PROBE: &str = "chaos-probe";
    let deadline = tokio::time::Instant::now() + within;
    let mut created = Err(String::from("no attempt"));
    while tokio::time::Instant::now() < deadline {
        created = match client.create_topic(PROBE, 1, 3, Default::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(runnel_client::ErrorCode::TopicAlreadyExists) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Err(e) = created {
        return vec![format!("could not create the probe topic after healing: {e}")];
    }
    let mut lagging: Vec<(u64, String)> = nodes.to_vec();
    while !lagging.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for (id, addr) in lagging {
            let seen = async {
                let mut c = RunnelClient::connect(format!("http://{addr}")).await.ok()?;
                let req = runnel_proto::v1::MetadataRequest { topics: vec![] };
                let m = tokio::time::timeout(RPC_TIMEOUT, c.metadata(req)).await.ok()?.ok()?.into_inner();
                Some(m.topics.iter().any(|t| t.name == PROBE))
            }
            .await;
            if seen != Some(true) {
                still.push((id, addr));
            }
        }
        lagging = still;
        if !lagging.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    lagging
        .into_iter()
        .map(|(id, _)| format!("node {id}'s metadata did not show a topic created after the heal within {within:?}"))
        .collect()
}
