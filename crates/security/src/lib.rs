//! Security: who is at the other end of a connection (docs/SECURITY.md).
//!
//! - [`acl`]: access rules (principal × operation × resource) and the check that applies them;
//! - [`certs`]: a cluster CA and the node and client certificates it signs (`runnel certs`);
//! - [`reload`]: a node's certificate reloaded from its files without a restart;
//! - [`quota`]: per-principal rate limits, enforced by delaying requests;
//! - [`scram`]: SCRAM-SHA-256/512 password authentication (RFC 5802/7677), both sides;
//! - [`tls`]: TLS listeners that attach the verified peer identity to every request, and a TLS
//!   dialer for node-to-node and client connections;
//! - [`token`]: signed bearer tokens a client presents after authenticating once.
//!
//! The check itself — a node-to-node call must come from the node it claims to come from — sits
//! with the identity types in `runnel_proto::peer`, where every service can reach it.

pub mod acl;
pub mod certs;
pub mod quota;
pub mod reload;
pub mod scram;
pub mod tls;
pub mod token;
