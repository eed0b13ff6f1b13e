//! Node identity (issue 13, docs/SECURITY.md): a 3-node cluster with mutual TLS between nodes.
//! The hijack of the issue — one unauthenticated `Controller.BrokerHeartbeat` re-registering
//! node 1 under a foreign address — is replayed without a certificate, with a client certificate,
//! with another node's certificate and with a certificate from a foreign CA: each is refused and
//! the metadata keeps node 1's real address. Forged Raft messages and pings are refused the same
//! way; plaintext is refused; and the cluster still fails over under mTLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runnel_client::{Client, ClientConfig};
use runnel_proto::dial::{Dialer, DialerHandle};
use runnel_proto::internal::controller_client::ControllerClient;
use runnel_proto::internal::liveness_client::LivenessClient;
use runnel_proto::internal::raft_transport_client::RaftTransportClient;
use runnel_proto::internal::{BrokerHeartbeatRequest, PingRequest, RaftMessage, RaftRpcKind};
use runnel_proto::v1::runnel_client::RunnelClient;
use runnel_proto::v1::{Acks, MetadataRequest, MetadataResponse};
use runnel_security::certs::{issue, new_ca, CertAndKey, Subject};
use runnel_security::tls::{TlsDialer, TlsFiles};
use runnel_tests::{read_all, record, wait_for, Cluster};

const READY: Duration = Duration::from_secs(60);

fn save(dir: &Path, stem: &str, ck: &CertAndKey) {
    std::fs::write(dir.join(format!("{stem}.pem")), &ck.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), &ck.key_pem).unwrap();
}

/// The cluster CA with node certificates 1..=3 and a client certificate for "alice", and a
/// foreign CA with its own "node 1" certificate.
fn pki(dir: &Path) {
    let ca = new_ca("test cluster CA", 2).unwrap();
    save(dir, "ca", &ca);
    for id in 1..=3 {
        save(
            dir,
            &format!("node-{id}"),
            &issue(&ca, &Subject::Node { id, hosts: vec!["127.0.0.1".into()] }, 2).unwrap(),
        );
    }
    save(dir, "client-alice", &issue(&ca, &Subject::Client { name: "alice".into() }, 2).unwrap());
    let rogue = new_ca("someone else's CA", 2).unwrap();
    save(dir, "rogue-ca", &rogue);
    save(dir, "rogue-node-1", &issue(&rogue, &Subject::Node { id: 1, hosts: vec!["127.0.0.1".into()] }, 2).unwrap());
}

/// Dials with the cluster CA and, when given, the certificate `stem` (e.g. "node-2").
fn dialer(dir: &Path, stem: Option<&str>) -> TlsDialer {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: stem.map(|s| dir.join(format!("{s}.pem"))),
        key: stem.map(|s| dir.join(format!("{s}.key"))),
    };
    TlsDialer { connect_timeout: Duration::from_secs(2), config: files.client_config().unwrap() }
}

/// `n` nodes (all voters) with the node certificates in `dir`, and `extra` settings.
fn tls_cluster(dir: &Path, n: usize, extra: &[(&str, &str)]) -> Cluster {
    let path = |name: &str| -> String { dir.join(name).display().to_string() };
    let files = [
        ("RUNNEL_TLS_CA_FILE", path("ca.pem")),
        ("RUNNEL_TLS_CERT_FILE", path("node-{id}.pem")),
        ("RUNNEL_TLS_KEY_FILE", path("node-{id}.key")),
    ];
    let mut env: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    Cluster::start_with(n, n, &env)
}

async fn metadata(d: &TlsDialer, addr: &str) -> Option<MetadataResponse> {
    let mut c = RunnelClient::new(d.channel(addr).ok()?);
    c.metadata(MetadataRequest { topics: vec![] }).await.ok().map(|r| r.into_inner())
}

/// The issue's hijack: broker 1 "re-registers" at 127.0.0.1:6666 with a new incarnation.
fn hijack() -> BrokerHeartbeatRequest {
    BrokerHeartbeatRequest { broker_id: 1, addr: "127.0.0.1:6666".into(), incarnation: 0x6666, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_node_a_certificate_names_may_speak_as_that_node() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let mut cluster = tls_cluster(certs.path(), 3, &[]);
    let addrs = cluster.addrs();
    let anonymous = dialer(certs.path(), None);

    // Healthy over TLS: every node knows a controller and three brokers.
    for addr in &addrs {
        wait_for(READY, &format!("{addr} ready over TLS"), || async {
            let m = metadata(&anonymous, addr).await?;
            (m.controller_id.is_some() && m.brokers.len() == 3).then_some(())
        })
        .await;
    }

    // Plaintext is refused.
    let plain = runnel_proto::dial::tcp().channel(&addrs[0]).unwrap();
    let e = RunnelClient::new(plain).metadata(MetadataRequest { topics: vec![] }).await;
    assert!(e.is_err(), "a plaintext client must not be served by a TLS node");

    // The hijack, against every node (one of them is the controller).
    let node2 = dialer(certs.path(), Some("node-2"));
    let alice = dialer(certs.path(), Some("client-alice"));
    for addr in &addrs {
        let e = ControllerClient::new(anonymous.channel(addr).unwrap()).broker_heartbeat(hijack()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "no certificate: {e}");
        let e = ControllerClient::new(alice.channel(addr).unwrap()).broker_heartbeat(hijack()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "a client certificate: {e}");
        assert!(e.message().contains("'alice'"), "{e}");
        let e = ControllerClient::new(node2.channel(addr).unwrap()).broker_heartbeat(hijack()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "node 2 speaking as node 1: {e}");
        assert!(e.message().contains("node 2's") && e.message().contains("from node 1"), "{e}");
        // A made-up broker, as the issue's second call did.
        let e = ControllerClient::new(node2.channel(addr).unwrap())
            .broker_heartbeat(BrokerHeartbeatRequest { broker_id: 77, ..hijack() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    }
    // A certificate from another CA does not even get a connection.
    let rogue = TlsDialer {
        connect_timeout: Duration::from_secs(2),
        config: TlsFiles {
            ca: certs.path().join("ca.pem"),
            cert: Some(certs.path().join("rogue-node-1.pem")),
            key: Some(certs.path().join("rogue-node-1.key")),
        }
        .client_config()
        .unwrap(),
    };
    assert!(
        ControllerClient::new(rogue.channel(&addrs[0]).unwrap()).broker_heartbeat(hijack()).await.is_err(),
        "a node certificate from a foreign CA must be refused"
    );

    // Forged Raft messages and pings: a Vote for the metadata group "from node 1".
    let vote = RaftMessage { group_id: 0, kind: RaftRpcKind::Vote as i32, payload: vec![1, 2, 3].into(), from_node: 1 };
    for (d, code) in [(&anonymous, tonic::Code::Unauthenticated), (&node2, tonic::Code::PermissionDenied)] {
        let e = RaftTransportClient::new(d.channel(&addrs[2]).unwrap()).call(vote.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        let ping = PingRequest { from_node: 1, incarnation: 1, ..Default::default() };
        let e = LivenessClient::new(d.channel(&addrs[2]).unwrap()).ping(ping).await.unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    }
    // ... while node 2 speaking as itself passes the check (the ping is answered).
    let ping = PingRequest { from_node: 2, incarnation: 1, ..Default::default() };
    LivenessClient::new(node2.channel(&addrs[2]).unwrap()).ping(ping).await.expect("node 2 may ping as node 2");

    // Nothing changed: node 1 is still at its own address, and there is no broker 77.
    let m = metadata(&anonymous, &addrs[1]).await.expect("metadata");
    let b1 = m.brokers.iter().find(|b| b.id == 1).expect("broker 1");
    assert_eq!(b1.addr, addrs[0], "node 1's address must not have moved");
    assert!(m.brokers.iter().all(|b| b.id != 77), "no made-up broker: {:?}", m.brokers);

    // And the cluster works and fails over under mTLS: write, kill -9 the leader, write, read all.
    let config = ClientConfig { dialer: Some(DialerHandle(Arc::new(anonymous.clone()))), ..ClientConfig::default() };
    let client = Client::connect_with(&addrs, config).await.expect("client over TLS");
    client.create_topic("secure", 1, 3, Default::default()).await.expect("create topic");
    let leaders: Vec<u64> = wait_for(READY, "a leader for secure/0", || async {
        let m = metadata(&anonymous, &addrs[1]).await?;
        m.topics.iter().find(|t| t.name == "secure")?.partitions.iter().map(|p| p.leader).collect::<Option<Vec<u64>>>()
    })
    .await;
    for i in 0..20 {
        client.produce("secure", 0, vec![record("k", format!("before-{i}"))], Acks::All).await.expect("produce");
    }
    cluster.kill9(leaders[0]);
    for i in 0..20 {
        client
            .produce("secure", 0, vec![record("k", format!("after-{i}"))], Acks::All)
            .await
            .expect("produce after failover");
    }
    let values: Vec<String> =
        read_all(&client, "secure", 0).await.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    let want: Vec<String> =
        (0..20).map(|i| format!("before-{i}")).chain((0..20).map(|i| format!("after-{i}"))).collect();
    assert_eq!(values, want, "every acknowledged record, once, in order");
}

/// With authentication required over TLS, a certificate is a credential: a client certificate
/// is `User:<common name>` (subject to ACLs, a superuser when listed), a node certificate is
/// `Node:<id>`, and no certificate and no token is no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_a_principal_when_authentication_is_required() {
    use runnel_proto::v1::{CreateTopicRequest, WhoAmIRequest};
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let cluster = tls_cluster(certs.path(), 1, &[("RUNNEL_REQUIRE_AUTH", "true"), ("RUNNEL_SUPERUSERS", "User:alice")]);
    let addr = cluster.addrs()[0].clone();
    let whoami = |d: TlsDialer| {
        let addr = addr.clone();
        async move { RunnelClient::new(d.channel(&addr).ok()?).who_am_i(WhoAmIRequest {}).await.ok() }
    };
    let alice =
        wait_for(READY, "the node answers alice over TLS", || whoami(dialer(certs.path(), Some("client-alice"))))
            .await
            .into_inner();
    assert_eq!((alice.principal.as_str(), alice.superuser), ("User:alice", true));
    let node = whoami(dialer(certs.path(), Some("node-2"))).await.unwrap().into_inner();
    assert_eq!((node.principal.as_str(), node.superuser), ("Node:2", true));

    let anonymous = dialer(certs.path(), None);
    let e = RunnelClient::new(anonymous.channel(&addr).unwrap()).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // Alice, a superuser by her certificate alone, administers the cluster.
    let mut c = RunnelClient::new(dialer(certs.path(), Some("client-alice")).channel(&addr).unwrap());
    let created = wait_for(READY, "alice creates a topic", || {
        let mut c = c.clone();
        async move {
            let r = c
                .create_topic(CreateTopicRequest {
                    name: "alices".into(),
                    partitions: 1,
                    replication_factor: 1,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            r.error.is_none().then_some(r)
        }
    })
    .await;
    assert_eq!(created.topic.map(|t| t.name).as_deref(), Some("alices"));
    c.who_am_i(WhoAmIRequest {}).await.unwrap();
}
