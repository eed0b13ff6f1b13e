//! Security: who is at the other end of a connection (docs/SECURITY.md).
//!
//! - [`certs`]: a cluster CA and the node and client certificates it signs (`runnel certs`);
//! - [`reload`]: a node's certificate reloaded from its files without a restart;
//! - [`scram`]: SCRAM-SHA-256/512 password authentication (RFC 5802/7677), both sides;
//! - [`tls`]: TLS listeners that attach the verified peer identity to every request, and a TLS
//!   dialer for node-to-node and client connections.
//!
//! The check itself — a node-to-node call must come from the node it claims to come from — sits
//! with the identity types in `runnel_proto::peer`, where every service can reach it.

pub mod certs;
pub mod reload;
pub mod scram;
pub mod tls;
