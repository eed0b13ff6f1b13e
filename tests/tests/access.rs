//! Authentication, ACLs and quotas (issue 13, docs/SECURITY.md) on a 3-node cluster that
//! requires authentication, with a bootstrap superuser `admin`.
//!
//! The negative matrix calls every RPC of the public service (the list is checked against
//! `runnel.proto`, so a new RPC cannot be left out) on a node that is not the controller, so
//! forwarded calls are covered too: without credentials, with a forged token, as a user without
//! the ACL, then with exactly the ACL it needs. Then: wrong passwords, revoked and expired
//! tokens, prefixed rules, deny winning over allow, and a producer throttled by its quota.

use std::collections::BTreeSet;
use std::time::Duration;

use ::runnel_client::{Client, ClientConfig, ClientError, Credentials, ErrorCode};
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::*;
use runnel_tests::{record, wait_for, Cluster};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const READY: Duration = Duration::from_secs(60);
/// How long an ACL change may take to reach the node a test calls.
const APPLIED: Duration = Duration::from_secs(10);
const ADMIN_PASSWORD: &str = "admin-secret-1";

fn secure_cluster() -> Cluster {
    Cluster::start_with(
        3,
        3,
        &[
            ("RUNNEL_REQUIRE_AUTH", "true"),
            ("RUNNEL_SUPERUSERS", "User:admin"),
            ("RUNNEL_BOOTSTRAP_USER", &format!("admin:{ADMIN_PASSWORD}")),
        ],
    )
}

fn config(user: &str, password: &str) -> ClientConfig {
    let mut c = runnel_tests::client_config();
    c.credentials = Some(Credentials::Password { user: user.into(), password: password.into() });
    c
}

async fn connect(cluster: &Cluster, user: &str, password: &str) -> Result<Client, ClientError> {
    Client::connect_with(&cluster.addrs(), config(user, password)).await
}

/// Logs in as `user` once the node the client asks has applied the user's creation (a new user or
/// password reaches each node's copy of the metadata a few milliseconds after the controller's).
async fn connect_applied(cluster: &Cluster, user: &str, password: &str) -> Client {
    wait_for(APPLIED, &format!("{user} can log in"), || async { connect(cluster, user, password).await.ok() }).await
}

/// Logs in as admin (once the bootstrap user exists) and waits for a healthy cluster.
async fn admin(cluster: &Cluster) -> Client {
    let admin =
        wait_for(READY, "admin can log in", || async { connect(cluster, "admin", ADMIN_PASSWORD).await.ok() }).await;
    wait_for(READY, "a healthy cluster with 3 brokers", || {
        let admin = admin.clone();
        async move { admin.cluster_health().await.ok().filter(|h| h.healthy && h.brokers.len() == 3).map(|_| ()) }
    })
    .await;
    admin
}

fn req<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// What a call needs beyond being authenticated.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// Nothing: open to everyone (the login itself).
    Open,
    /// Any authenticated user (answers only what the user may see).
    AnyUser,
    /// This rule (operation, resource type, name).
    Acl(&'static str, &'static str, &'static str),
}

/// Every RPC of the public service and what it needs. Names not yet existing (`doomed`, the
/// groups) are fine: the point is whether the gate lets the call through.
const CASES: &[(&str, Need)] = &[
    ("Produce", Need::Acl("write", "topic", "orders")),
    ("Fetch", Need::Acl("read", "topic", "orders")),
    ("ListOffsets", Need::Acl("describe", "topic", "orders")),
    ("Metadata", Need::AnyUser),
    ("CreateTopic", Need::Acl("create", "topic", "bobs-topic")),
    ("DeleteTopic", Need::Acl("delete", "topic", "doomed")),
    ("DescribeTopicConfig", Need::Acl("describe", "topic", "orders")),
    ("AlterTopicConfig", Need::Acl("alter", "topic", "orders")),
    ("DescribeReplicas", Need::Acl("describe", "cluster", "cluster")),
    ("DecommissionNode", Need::Acl("admin", "cluster", "cluster")),
    ("ReassignPartition", Need::Acl("admin", "cluster", "cluster")),
    ("Rebalance", Need::Acl("admin", "cluster", "cluster")),
    ("ReplaceVoter", Need::Acl("admin", "cluster", "cluster")),
    ("ClusterHealth", Need::Acl("describe", "cluster", "cluster")),
    ("TransferLeader", Need::Acl("admin", "cluster", "cluster")),
    ("FindCoordinator", Need::Acl("describe", "group", "bobs-group")),
    ("JoinGroup", Need::Acl("read", "group", "bobs-group")),
    ("Heartbeat", Need::Acl("read", "group", "bobs-group")),
    ("LeaveGroup", Need::Acl("read", "group", "bobs-group")),
    ("CommitOffsets", Need::Acl("read", "group", "bobs-group")),
    ("FetchOffsets", Need::Acl("describe", "group", "bobs-group")),
    ("ListGroups", Need::AnyUser),
    ("DescribeGroup", Need::Acl("describe", "group", "bobs-group")),
    ("DeleteGroup", Need::Acl("delete", "group", "bobs-group")),
    ("InitProducerId", Need::Acl("write", "topic", "orders")),
    ("Authenticate", Need::Open),
    ("CreateToken", Need::AnyUser),
    ("WhoAmI", Need::AnyUser),
    ("PutUser", Need::Acl("admin", "cluster", "cluster")),
    ("DeleteUser", Need::Acl("admin", "cluster", "cluster")),
    ("ListUsers", Need::Acl("describe", "cluster", "cluster")),
    ("AddAcls", Need::Acl("admin", "cluster", "cluster")),
    ("RemoveAcls", Need::Acl("admin", "cluster", "cluster")),
    ("ListAcls", Need::Acl("describe", "cluster", "cluster")),
    ("SetQuota", Need::Acl("admin", "cluster", "cluster")),
    ("ListQuotas", Need::Acl("describe", "cluster", "cluster")),
];

fn harmless_rule() -> AclRule {
    AclRule {
        principal: "User:nobody".into(),
        permission: "allow".into(),
        operation: "read".into(),
        resource_type: "topic".into(),
        pattern_type: "literal".into(),
        name: "nothing".into(),
    }
}

/// Calls `rpc` with `token`; Ok when the node let it through (whatever the answer's own error).
/// Every call is harmless: no records written, nothing decommissioned or moved.
async fn call(c: &mut RunnelClient<Channel>, rpc: &str, token: Option<&str>) -> Result<(), Status> {
    let g = || "bobs-group".to_string();
    match rpc {
        "Produce" => {
            c.produce(req(ProduceRequest { topic: "orders".into(), ..Default::default() }, token)).await.map(drop)
        }
        "Fetch" => c
            .fetch(req(FetchRequest { topic: "orders".into(), max_bytes: 1024, ..Default::default() }, token))
            .await
            .map(drop),
        "ListOffsets" => c
            .list_offsets(req(ListOffsetsRequest { topic: "orders".into(), ..Default::default() }, token))
            .await
            .map(drop),
        "Metadata" => c.metadata(req(MetadataRequest { topics: vec![] }, token)).await.map(drop),
        "CreateTopic" => c
            .create_topic(req(
                CreateTopicRequest {
                    name: "bobs-topic".into(),
                    partitions: 1,
                    replication_factor: 1,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "DeleteTopic" => c.delete_topic(req(DeleteTopicRequest { name: "doomed".into() }, token)).await.map(drop),
        "DescribeTopicConfig" => {
            c.describe_topic_config(req(DescribeTopicConfigRequest { topic: "orders".into() }, token)).await.map(drop)
        }
        "AlterTopicConfig" => c
            .alter_topic_config(req(AlterTopicConfigRequest { topic: "orders".into(), ..Default::default() }, token))
            .await
            .map(drop),
        "DescribeReplicas" => c.describe_replicas(req(DescribeReplicasRequest::default(), token)).await.map(drop),
        // Cancelling a decommission that never started changes nothing.
        "DecommissionNode" => {
            c.decommission_node(req(DecommissionNodeRequest { node_id: 3, cancel: true }, token)).await.map(drop)
        }
        // An unknown topic: refused by the controller after the gate.
        "ReassignPartition" => c
            .reassign_partition(req(
                ReassignPartitionRequest { topic: "no-such-topic".into(), partition: 0, replicas: vec![1] },
                token,
            ))
            .await
            .map(drop),
        "Rebalance" => c.rebalance(req(RebalanceRequest { dry_run: true }, token)).await.map(drop),
        "ReplaceVoter" => c.replace_voter(req(ReplaceVoterRequest { remove: 98, add: 99 }, token)).await.map(drop),
        "ClusterHealth" => c.cluster_health(req(ClusterHealthRequest {}, token)).await.map(drop),
        "TransferLeader" => c
            .transfer_leader(req(TransferLeaderRequest { topic: "no-such-topic".into(), partition: 0, to: 1 }, token))
            .await
            .map(drop),
        "FindCoordinator" => c.find_coordinator(req(FindCoordinatorRequest { group: g() }, token)).await.map(drop),
        // No topics: refused as invalid after the gate, without waiting for a rebalance.
        "JoinGroup" => c.join_group(req(JoinGroupRequest { group: g(), ..Default::default() }, token)).await.map(drop),
        "Heartbeat" => c.heartbeat(req(HeartbeatRequest { group: g(), ..Default::default() }, token)).await.map(drop),
        "LeaveGroup" => {
            c.leave_group(req(LeaveGroupRequest { group: g(), ..Default::default() }, token)).await.map(drop)
        }
        "CommitOffsets" => {
            c.commit_offsets(req(CommitOffsetsRequest { group: g(), ..Default::default() }, token)).await.map(drop)
        }
        "FetchOffsets" => {
            c.fetch_offsets(req(FetchOffsetsRequest { group: g(), ..Default::default() }, token)).await.map(drop)
        }
        "ListGroups" => c.list_groups(req(ListGroupsRequest {}, token)).await.map(drop),
        "DescribeGroup" => c.describe_group(req(DescribeGroupRequest { group: g() }, token)).await.map(drop),
        "DeleteGroup" => c.delete_group(req(DeleteGroupRequest { group: g() }, token)).await.map(drop),
        "InitProducerId" => c.init_producer_id(req(InitProducerIdRequest::default(), token)).await.map(drop),
        "Authenticate" => c
            .authenticate(req(
                AuthenticateRequest {
                    mechanism: "SCRAM-SHA-256".into(),
                    message: "n,,n=x,r=abc".into(),
                    session: String::new(),
                },
                token,
            ))
            .await
            .map(drop),
        "CreateToken" => c.create_token(req(CreateTokenRequest::default(), token)).await.map(drop),
        "WhoAmI" => c.who_am_i(req(WhoAmIRequest {}, token)).await.map(drop),
        "PutUser" => {
            c.put_user(req(PutUserRequest { name: "mallory".into(), credentials: vec![] }, token)).await.map(drop)
        }
        "DeleteUser" => c.delete_user(req(DeleteUserRequest { name: "no-such-user".into() }, token)).await.map(drop),
        "ListUsers" => c.list_users(req(ListUsersRequest {}, token)).await.map(drop),
        "AddAcls" => c.add_acls(req(AddAclsRequest { rules: vec![harmless_rule()] }, token)).await.map(drop),
        "RemoveAcls" => c.remove_acls(req(RemoveAclsRequest { rules: vec![harmless_rule()] }, token)).await.map(drop),
        "ListAcls" => c.list_acls(req(ListAclsRequest::default(), token)).await.map(drop),
        "SetQuota" => {
            c.set_quota(req(SetQuotaRequest { principal: "User:nobody".into(), quota: None }, token)).await.map(drop)
        }
        "ListQuotas" => c.list_quotas(req(ListQuotasRequest {}, token)).await.map(drop),
        other => panic!("the matrix has no call for {other}"),
    }
}

fn rule(principal: &str, permission: &str, op: &str, resource: &str, pattern: &str, name: &str) -> AclRule {
    AclRule {
        principal: principal.into(),
        permission: permission.into(),
        operation: op.into(),
        resource_type: resource.into(),
        pattern_type: pattern.into(),
        name: name.into(),
    }
}

/// A node that is not the controller (so calls that go to the controller are forwarded).
async fn follower(admin: &Client, cluster: &Cluster) -> String {
    let md = admin.metadata(&[]).await.unwrap();
    let controller = md.controller_id.unwrap();
    cluster.nodes.iter().find(|n| n.id != controller).unwrap().addr.clone()
}

async fn stub(addr: &str) -> RunnelClient<Channel> {
    wait_for(READY, "a connection", || Cluster::client_for(addr)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_public_rpc_needs_credentials_and_the_right_acl() {
    // The matrix covers the service exactly.
    let proto = include_str!("../../proto/runnel/v1/runnel.proto");
    let service = &proto[proto.find("service Runnel {").unwrap()..];
    let service = &service[..service.find("\n}").unwrap()];
    let rpcs: BTreeSet<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim())
        .collect();
    let covered: BTreeSet<&str> = CASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(rpcs, covered, "every RPC of runnel.v1.Runnel is in the matrix, and only those");

    let cluster = secure_cluster();
    let admin = admin(&cluster).await;
    admin.create_topic("orders", 1, 3, Default::default()).await.unwrap();
    admin.put_user("bob", "bob-password-1").await.unwrap();
    let bob = connect_applied(&cluster, "bob", "bob-password-1").await;
    let (token, _) = bob.create_token(None, None).await.unwrap();
    let addr = follower(&admin, &cluster).await;
    let mut c = stub(&addr).await;
    let t = Some(token.as_str());
    // That node knows bob once it has applied his creation.
    wait_for(APPLIED, "the follower knows bob", || {
        let mut c = c.clone();
        async move { c.who_am_i(req(WhoAmIRequest {}, t)).await.ok() }
    })
    .await;

    for (rpc, need) in CASES {
        // 1. No credentials.
        let anonymous = call(&mut c, rpc, None).await;
        match need {
            Need::Open => assert!(anonymous.is_ok(), "{rpc} is open to everyone: {anonymous:?}"),
            _ => {
                let e = anonymous.expect_err(&format!("{rpc} without credentials"));
                assert_eq!(e.code(), Code::Unauthenticated, "{rpc}: {e:?}");
                assert!(e.message().contains("requires authentication"), "{rpc}: {}", e.message());
            }
        }
        // 2. A forged token.
        let forged = call(&mut c, rpc, Some("rnt1.eyJ1c2VyIjoiYWRtaW4ifQ.c2lnbmF0dXJl")).await;
        if !matches!(need, Need::Open) {
            let e = forged.expect_err(&format!("{rpc} with a forged token"));
            assert_eq!(e.code(), Code::Unauthenticated, "{rpc}: {e:?}");
        }
        // 3. Bob, without any rule.
        let plain = call(&mut c, rpc, t).await;
        let Need::Acl(op, resource, name) = *need else {
            assert!(plain.is_ok(), "{rpc} is open to any user: {plain:?}");
            continue;
        };
        let e = plain.expect_err(&format!("{rpc} as bob without an ACL"));
        assert_eq!(e.code(), Code::PermissionDenied, "{rpc}: {e:?}");
        assert!(
            e.message().contains("User:bob") && e.message().contains(op) && e.message().contains("no ACL allows it"),
            "{rpc}: the refusal names who, what and why: {}",
            e.message()
        );
        // 4. With exactly the rule it needs (once the node has applied it), then without again.
        let needed = rule("User:bob", "allow", op, resource, "literal", name);
        admin.add_acls(vec![needed.clone()]).await.unwrap();
        wait_for(APPLIED, &format!("{rpc} allowed with {op} on {resource} '{name}'"), || {
            let mut c = c.clone();
            async move { call(&mut c, rpc, t).await.ok() }
        })
        .await;
        assert_eq!(admin.remove_acls(vec![needed]).await.unwrap(), 1);
        wait_for(APPLIED, &format!("{rpc} denied again"), || {
            let mut c = c.clone();
            async move { call(&mut c, rpc, t).await.err().filter(|e| e.code() == Code::PermissionDenied) }
        })
        .await;
    }

    // What any user may call shows only what the user may see.
    let md = c.metadata(req(MetadataRequest { topics: vec![] }, t)).await.unwrap().into_inner();
    assert!(md.topics.is_empty(), "bob may describe no topic: {:?}", md.topics);
    let named = c.metadata(req(MetadataRequest { topics: vec!["orders".into()] }, t)).await.unwrap_err();
    assert_eq!(named.code(), Code::PermissionDenied);
    let me = c.who_am_i(req(WhoAmIRequest {}, t)).await.unwrap().into_inner();
    assert_eq!((me.principal.as_str(), me.superuser, me.authentication_required), ("User:bob", false, true));
    // Bob may not make tokens for others.
    let other = c.create_token(req(CreateTokenRequest { user: "admin".into(), lifetime_secs: 0 }, t)).await;
    assert_eq!(other.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_passwords_and_revoked_or_expired_tokens_are_refused() {
    let cluster = secure_cluster();
    let admin = admin(&cluster).await;
    admin.put_user("carol", "carol-password-1").await.unwrap();

    // Wrong password and unknown user: the same answer, which does not tell them apart.
    let wrong = connect(&cluster, "carol", "not-her-password").await.unwrap_err().to_string();
    let unknown = connect(&cluster, "nobody-here", "whatever-1").await.unwrap_err().to_string();
    for e in [&wrong, &unknown] {
        assert!(e.contains("AUTHENTICATION_FAILED") && e.contains("unknown user or wrong password"), "{e}");
    }
    // A client without credentials learns how to authenticate.
    let none = Client::connect_with(&cluster.addrs(), runnel_tests::client_config()).await.unwrap_err().to_string();
    assert!(none.contains("requires authentication") && none.contains("--user"), "{none}");

    let carol = connect_applied(&cluster, "carol", "carol-password-1").await;
    let who = carol.who_am_i().await.unwrap();
    assert_eq!(who.principal, "User:carol");
    let addr = cluster.addrs()[0].clone();
    let mut c = stub(&addr).await;
    let whoami = |c: &mut RunnelClient<Channel>, token: String| {
        let mut c = c.clone();
        async move { c.who_am_i(req(WhoAmIRequest {}, Some(&token))).await }
    };

    // A new password revokes the tokens issued before it.
    let (old, _) = carol.create_token(None, None).await.unwrap();
    wait_for(APPLIED, "the token works on the first node", || {
        let fut = whoami(&mut c, old.clone());
        async move { fut.await.ok() }
    })
    .await;
    admin.put_user("carol", "carol-password-2").await.unwrap();
    let e = wait_for(APPLIED, "the old token refused", || {
        let fut = whoami(&mut c, old.clone());
        async move { fut.await.err() }
    })
    .await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{}", e.message());

    // Deleting the user revokes its tokens too.
    let carol = connect_applied(&cluster, "carol", "carol-password-2").await;
    let (token, _) = carol.create_token(None, None).await.unwrap();
    admin.delete_user("carol").await.unwrap();
    let e = wait_for(APPLIED, "a deleted user's token refused", || {
        let fut = whoami(&mut c, token.clone());
        async move { fut.await.err() }
    })
    .await;
    assert!(e.message().contains("no longer exists"), "{}", e.message());

    // A token expires (a one-second token; the node checks the expiry on every call).
    let (short, expires_at_ms) = admin.create_token(None, Some(Duration::from_secs(1))).await.unwrap();
    assert!(expires_at_ms > 0);
    let e = wait_for(Duration::from_secs(10), "the one-second token expired", || {
        let fut = whoami(&mut c, short.clone());
        async move { fut.await.err() }
    })
    .await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefixed_rules_match_only_their_prefix_and_deny_wins() {
    let cluster = secure_cluster();
    let admin = admin(&cluster).await;
    for t in ["team-a.orders", "team-a.", "team-b.orders", "team-a"] {
        admin.create_topic(t, 1, 1, Default::default()).await.unwrap();
    }
    admin.put_user("dan", "dan-password-1").await.unwrap();
    admin
        .add_acls(vec![
            rule("User:dan", "allow", "write", "topic", "prefixed", "team-a."),
            rule("User:dan", "deny", "write", "topic", "literal", "team-a."),
        ])
        .await
        .unwrap();
    let dan = connect_applied(&cluster, "dan", "dan-password-1").await;

    // Allowed by the prefix; the SDK waits until the node it asks has applied the rules.
    wait_for(APPLIED, "dan may write to team-a.orders", || {
        let dan = dan.clone();
        async move { dan.produce("team-a.orders", 0, vec![record("k", "v".into())], Acks::All).await.ok() }
    })
    .await;
    for (topic, why) in [("team-a", "no rule"), ("team-b.orders", "no rule"), ("team-a.", "denied by the ACL")] {
        let e = dan.produce(topic, 0, vec![record("k", "v".into())], Acks::All).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::AuthorizationFailed), "{topic}: {e}");
        let text = e.to_string();
        assert!(text.contains(why) || (why == "no rule" && text.contains("no ACL allows it")), "{topic}: {text}");
    }
    // Write implies describe: dan sees exactly the topics he may write to.
    let md = dan.metadata(&[]).await.unwrap();
    let seen: Vec<&str> = md.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(seen, vec!["team-a.", "team-a.orders"]);
}

/// One acks=all produce of `batch` to metered/0 with `token`; `None` if the call failed.
async fn produce_metered(c: &mut RunnelClient<Channel>, batch: RecordBatch, token: &str) -> Option<ProduceResponse> {
    let r = ProduceRequest {
        topic: "metered".into(),
        partition: 0,
        batch: Some(batch),
        acks: Acks::All as i32,
        ..Default::default()
    };
    c.produce(req(r, Some(token))).await.ok().map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_over_its_quota_is_throttled_and_told_so() {
    let cluster = secure_cluster();
    let admin = admin(&cluster).await;
    admin.create_topic("metered", 1, 1, Default::default()).await.unwrap();
    admin.put_user("erin", "erin-password-1").await.unwrap();
    admin.add_acls(vec![rule("User:erin", "allow", "write", "topic", "literal", "metered")]).await.unwrap();
    admin
        .set_quota("User:erin", Some(Quota { produce_bytes_per_sec: Some(20_000), ..Default::default() }))
        .await
        .unwrap();
    // Lists are answered from the answering node's copy of the metadata (the controller's, when
    // the client knows it), which has the change once that node applied it.
    let quotas = wait_for(APPLIED, "the quota listed", || {
        let admin = admin.clone();
        async move { admin.list_quotas().await.ok().filter(|q| !q.is_empty()) }
    })
    .await;
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].principal, "User:erin");
    assert_eq!(quotas[0].quota.as_ref().and_then(|q| q.produce_bytes_per_sec), Some(20_000));

    let erin = connect_applied(&cluster, "erin", "erin-password-1").await;
    let (token, _) = erin.create_token(None, None).await.unwrap();
    let leader = wait_for(READY, "a leader for metered/0", || {
        let admin = admin.clone();
        async move { admin.metadata(&["metered".to_string()]).await.ok()?.topics.first()?.partitions.first()?.leader }
    })
    .await;
    let addr = cluster.nodes[cluster.index_of(leader)].addr.clone();
    let c = stub(&addr).await;
    // 7 KB batches: the third is over the one-second burst of 20 KB.
    let batch = runnel_proto::encode_batch(vec![record("k", "x".repeat(7_000))]);
    let throttled = wait_for(APPLIED, "a produce answer with a throttle time", || {
        let mut c = c.clone();
        let batch = batch.clone();
        let token = token.clone();
        async move {
            let r = produce_metered(&mut c, batch, &token).await?;
            assert!(r.error.is_none(), "{:?}", r.error);
            (r.throttle_time_ms > 0).then_some(r.throttle_time_ms)
        }
    })
    .await;
    // At most one batch over the burst: 7 KB at 20 KB/s is at most 350 ms of debt.
    assert!(throttled <= 400, "throttle time {throttled} ms");
    // Nothing was dropped: every acknowledged batch is in the log.
    let hw = admin.list_offsets("metered", 0, OffsetSpec::Latest).await.unwrap();
    assert!(hw >= 3, "at least the burst and one throttled batch were written, high watermark {hw}");

    // Without the quota, nobody waits.
    admin.set_quota("User:erin", None).await.unwrap();
    wait_for(APPLIED, "no throttle time once the quota is gone", || {
        let mut c = c.clone();
        let batch = batch.clone();
        let token = token.clone();
        async move { (produce_metered(&mut c, batch, &token).await?.throttle_time_ms == 0).then_some(()) }
    })
    .await;
}
