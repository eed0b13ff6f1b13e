//! Consumer-group requests: finding a group's coordinator and talking to it. The [`crate::Consumer`]
//! builds on these; they are public for tools (`runnel group ...`) and for callers that manage
//! membership themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use runnel_types::ErrorCode;

use crate::{broker_result, error, exhausted, v1, with_timeout, Client, ClientError, NodeId};

/// A committed offset per partition of a group.
pub type CommittedOffsets = BTreeMap<(String, u32), u64>;

impl Client {
    /// Which node coordinates `group` (any node answers; the first call creates the internal
    /// offsets topic). Cached until the coordinator moves.
    pub async fn find_coordinator(&self, group: &str) -> Result<(NodeId, String), ClientError> {
        let target = format!("group '{group}'");
        let candidates = self.healthy_first(self.inner.meta.read().candidates(&self.inner.bootstrap, false));
        let policy = &self.inner.config.retry;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let addr = candidates[attempts as usize % candidates.len().max(1)].clone();
            attempts += 1;
            let req = v1::FindCoordinatorRequest { group: group.to_string() };
            let out = async {
                let resp = self
                    .call("find coordinator", &target, &addr, Duration::from_secs(5), move |mut c, t| async move {
                        c.find_coordinator(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("find coordinator", &target, &addr, resp.error.as_ref())?;
                Ok::<_, ClientError>((resp.node_id, resp.addr))
            }
            .await;
            let err = match out {
                Ok(found) => {
                    self.inner.coordinators.lock().insert(group.to_string(), found.1.clone());
                    return Ok(found);
                }
                Err(e) => e,
            };
            if !retriable(&err) {
                return Err(err);
            }
            let Some(delay) = policy.next_delay(attempts, started.elapsed(), rand::random::<f64>()) else {
                return Err(exhausted("find coordinator", target, attempts, started.elapsed(), err));
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs `attempt` against `group`'s coordinator, following NOT_COORDINATOR answers and
    /// retrying while the coordinator moves or loads.
    pub(crate) async fn with_coordinator<T, F, Fut>(
        &self,
        op: &'static str,
        group: &str,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let policy = &self.inner.config.retry;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let cached = self.inner.coordinators.lock().get(group).cloned();
            let addr = match cached {
                Some(a) => a,
                None => self.find_coordinator(group).await?.1,
            };
            let err = match attempt(addr.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !retriable(&err) {
                return Err(err);
            }
            // Follow the hint, or look the coordinator up again.
            let hint = match &err {
                ClientError::Broker { error, .. } => error.leader.as_ref().map(|(_, a)| a.clone()),
                _ => None,
            };
            match hint.filter(|a| !a.is_empty()) {
                Some(a) => {
                    self.inner.coordinators.lock().insert(group.to_string(), a);
                }
                None => {
                    self.inner.coordinators.lock().remove(group);
                }
            }
            if matches!(err, ClientError::Transport { .. } | ClientError::Timeout { .. }) {
                self.evict(&addr);
            }
            let Some(delay) = policy.next_delay(attempts, started.elapsed(), rand::random::<f64>()) else {
                return Err(exhausted(op, format!("group '{group}'"), attempts, started.elapsed(), err));
            };
            tracing::debug!(op, group, attempts, error = %err, "retrying against the coordinator");
            tokio::time::sleep(delay).await;
        }
    }

    /// Joins (or rejoins) `req.group`; returns when the group's rebalance completes, with this
    /// member's id, generation and partitions.
    pub async fn join_group(&self, req: v1::JoinGroupRequest) -> Result<v1::JoinGroupResponse, ClientError> {
        let wait = Duration::from_millis(u64::from(req.rebalance_timeout_ms)) + Duration::from_secs(2);
        let group = req.group.clone();
        self.with_coordinator("join group", &group, |addr| {
            let req = req.clone();
            let target = format!("group '{}'", req.group);
            async move {
                let resp = self
                    .call("join group", &target, &addr, wait, move |mut c, t| async move {
                        c.join_group(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("join group", &target, &addr, resp.error.as_ref())?;
                Ok(resp)
            }
        })
        .await
    }

    /// Tells the coordinator `member_id` is alive. REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION and
    /// UNKNOWN_MEMBER mean: rejoin.
    pub async fn heartbeat(&self, group: &str, member_id: &str, generation: u64) -> Result<(), ClientError> {
        self.with_coordinator("heartbeat", group, |addr| {
            let req = v1::HeartbeatRequest { group: group.to_string(), member_id: member_id.to_string(), generation };
            let target = format!("group '{group}'");
            async move {
                let resp = self
                    .call("heartbeat", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.heartbeat(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("heartbeat", &target, &addr, resp.error.as_ref())
            }
        })
        .await
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        self.with_coordinator("leave group", group, |addr| {
            let req = v1::LeaveGroupRequest { group: group.to_string(), member_id: member_id.to_string() };
            let target = format!("group '{group}'");
            async move {
                let resp = self
                    .call("leave group", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.leave_group(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("leave group", &target, &addr, resp.error.as_ref())
            }
        })
        .await
    }

    /// Commits `offsets` ((topic, partition) → next offset to read) for `group`, as `member_id` of
    /// `generation`; or, with an empty member id and generation -1, outside any generation (only
    /// accepted while the group has no members). Durable (replicated) when this returns.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: i64,
        offsets: &CommittedOffsets,
    ) -> Result<(), ClientError> {
        let commits: Vec<v1::OffsetCommit> = offsets
            .iter()
            .map(|((topic, partition), offset)| v1::OffsetCommit {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect();
        self.with_coordinator("commit offsets", group, |addr| {
            let req = v1::CommitOffsetsRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
                generation,
                offsets: commits.clone(),
            };
            let target = format!("group '{group}'");
            async move {
                let resp = self
                    .call("commit offsets", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.commit_offsets(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("commit offsets", &target, &addr, resp.error.as_ref())
            }
        })
        .await
    }

    /// The group's committed offsets for `partitions` (empty: all of them).
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<CommittedOffsets, ClientError> {
        let wanted: Vec<v1::TopicPartition> =
            partitions.iter().map(|(t, p)| v1::TopicPartition { topic: t.clone(), partition: *p }).collect();
        let resp = self
            .with_coordinator("fetch offsets", group, |addr| {
                let req = v1::FetchOffsetsRequest { group: group.to_string(), partitions: wanted.clone() };
                let target = format!("group '{group}'");
                async move {
                    let resp = self
                        .call("fetch offsets", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                            c.fetch_offsets(with_timeout(req, t)).await
                        })
                        .await?;
                    broker_result("fetch offsets", &target, &addr, resp.error.as_ref())?;
                    Ok(resp)
                }
            })
            .await?;
        Ok(resp.offsets.into_iter().map(|o| ((o.topic, o.partition), o.offset)).collect())
    }

    pub async fn describe_group(&self, group: &str) -> Result<v1::DescribeGroupResponse, ClientError> {
        self.with_coordinator("describe group", group, |addr| {
            let req = v1::DescribeGroupRequest { group: group.to_string() };
            let target = format!("group '{group}'");
            async move {
                let resp = self
                    .call("describe group", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.describe_group(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("describe group", &target, &addr, resp.error.as_ref())?;
                Ok(resp)
            }
        })
        .await
    }

    /// Deletes an empty group and its committed offsets (GROUP_NOT_EMPTY while it has members).
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.with_coordinator("delete group", group, |addr| {
            let req = v1::DeleteGroupRequest { group: group.to_string() };
            let target = format!("group '{group}'");
            async move {
                let resp = self
                    .call("delete group", &target, &addr, Duration::ZERO, move |mut c, t| async move {
                        c.delete_group(with_timeout(req, t)).await
                    })
                    .await?;
                broker_result("delete group", &target, &addr, resp.error.as_ref())
            }
        })
        .await
    }

    /// Every group in the cluster: each node lists those it coordinates.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupListing>, ClientError> {
        let meta = self.metadata(&[]).await?;
        let mut out: BTreeMap<String, v1::GroupListing> = BTreeMap::new();
        for b in meta.brokers.iter().filter(|b| b.alive) {
            let target = format!("node {}", b.id);
            let resp = self
                .call("list groups", &target, &b.addr, Duration::ZERO, move |mut c, t| async move {
                    c.list_groups(with_timeout(v1::ListGroupsRequest {}, t)).await
                })
                .await?;
            broker_result("list groups", &target, &b.addr, resp.error.as_ref())?;
            for g in resp.groups {
                out.insert(g.group.clone(), g);
            }
        }
        Ok(out.into_values().collect())
    }
}

/// Errors worth another try against a (possibly different) coordinator.
fn retriable(e: &ClientError) -> bool {
    match e {
        ClientError::Broker { error, .. } => {
            matches!(
                error.code,
                ErrorCode::NotCoordinator
                    | ErrorCode::CoordinatorLoading
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::Timeout
            )
        }
        ClientError::Transport { code, .. } => error::is_retriable_code(*code),
        ClientError::Timeout { .. } => true,
        _ => false,
    }
}
