//! Who is at the other end of a connection, as the transport proved it (mutual TLS), and the
//! check every node-to-node service makes with it (docs/SECURITY.md).
//!
//! The listener (`runnel-security`) puts a [`PeerInfo`] into every request's extensions when it
//! terminates TLS. Node-to-node services then accept a call only from the node it claims to come
//! from: a heartbeat for broker 1 only over a connection whose certificate is node 1's, a Raft
//! message "from node 2" only from node 2. Without TLS (`runnel dev`, or `insecure`) there is no
//! [`PeerInfo`] and nothing is proved; services then accept what they are told, as before.

use std::net::SocketAddr;

use runnel_types::NodeId;

/// What a verified client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No client certificate (TLS without one).
    Anonymous,
    /// A cluster node's certificate: signed by the cluster CA, naming `runnel://node/<id>`.
    Node(NodeId),
    /// A client certificate signed by the cluster CA: its subject's common name.
    Client(String),
}

/// Connection facts attached to every request served over TLS.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    pub identity: PeerIdentity,
}

/// How node-to-node services treat their callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAuth {
    /// Accept every caller (no TLS: `runnel dev` on loopback, or `insecure` set explicitly).
    Open,
    /// Only a node certificate whose node id is the one the call claims.
    MutualTls,
}

impl NodeAuth {
    /// Whether `ext` (a request's extensions) proves the caller is node `claimed`.
    pub fn check(self, ext: &tonic::Extensions, claimed: NodeId, what: &str) -> Result<(), tonic::Status> {
        if self == NodeAuth::Open {
            return Ok(());
        }
        match ext.get::<PeerInfo>().map(|p| &p.identity) {
            Some(PeerIdentity::Node(id)) if *id == claimed => Ok(()),
            Some(PeerIdentity::Node(id)) => Err(tonic::Status::permission_denied(format!(
                "{what}: the caller's certificate is node {id}'s, but the call claims to come from node {claimed}"
            ))),
            Some(PeerIdentity::Client(name)) => Err(tonic::Status::permission_denied(format!(
                "{what}: '{name}' holds a client certificate; node-to-node services need a node certificate"
            ))),
            Some(PeerIdentity::Anonymous) | None => Err(tonic::Status::unauthenticated(format!(
                "{what}: node-to-node services need a node certificate signed by the cluster CA (mutual TLS)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(identity: Option<PeerIdentity>) -> tonic::Extensions {
        let mut e = tonic::Extensions::new();
        if let Some(identity) = identity {
            e.insert(PeerInfo { remote_addr: None, identity });
        }
        e
    }

    #[test]
    fn only_the_node_named_by_the_certificate_may_speak_as_itself() {
        let auth = NodeAuth::MutualTls;
        assert!(auth.check(&ext(Some(PeerIdentity::Node(1))), 1, "heartbeat").is_ok());
        let e = auth.check(&ext(Some(PeerIdentity::Node(2))), 1, "heartbeat").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("node 2's") && e.message().contains("from node 1"), "{e}");
        let e = auth.check(&ext(Some(PeerIdentity::Client("alice".into()))), 1, "heartbeat").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("'alice'"), "{e}");
        for none in [None, Some(PeerIdentity::Anonymous)] {
            let e = auth.check(&ext(none), 1, "heartbeat").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        assert!(NodeAuth::Open.check(&ext(None), 1, "heartbeat").is_ok(), "open: nothing to prove");
    }
}
