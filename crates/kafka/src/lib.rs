//! The Kafka wire-protocol front-end. Existing Kafka clients and tools (librdkafka and
//! everything built on it, kafka-python, the Java client) connect to a node's Kafka listener and
//! work unchanged, on the same Raft-replicated partitions and through the same [`Service`] as the
//! gRPC API: this crate only decodes Kafka requests, calls the service, and encodes the answers.
//!
//! - Framing ([`connection`]): 4-byte size-prefixed frames, capped; requests on one connection are
//!   handled one at a time and answered in order, as a Kafka broker does (pipelined requests wait
//!   in the socket); `acks=0` produces get no answer. A malformed frame closes that connection
//!   with a logged reason.
//! - Versions ([`versions`]): the APIs and version ranges this front-end answers; ApiVersions lists
//!   exactly them, and a request for anything else closes the connection (ApiVersions itself is
//!   answered in v0 framing with UNSUPPORTED_VERSION, as Kafka does, so the client can retry).
//! - Records: Kafka magic-v2 batches are stored as the client sent them (ADR 0020,
//!   `runnel-records`); batches produced through gRPC are transcoded on fetch.
//! - Errors ([`errors`]): every `RunnelError` maps to the Kafka error code clients act on.
//!
//! The message codecs come from the `kafka-protocol` crate; nothing here hand-encodes a message.

pub mod connection;
pub mod errors;
pub mod handlers;

pub use handlers::KAFKA_LISTENER;
pub mod versions;

use std::sync::Arc;

use runnel_service::{RequestContext, Service};
use runnel_types::RunnelError;

pub use connection::serve;

/// Largest request frame a node reads (Kafka's `socket.request.max.bytes` is 100 MiB). A frame
/// announcing more closes the connection before anything is allocated for it.
pub const MAX_FRAME_BYTES: usize = 100 << 20;

/// How a node's Kafka listener behaves.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port` this node tells Kafka clients to use for itself.
    pub advertised: String,
    /// A Metadata request naming a topic that does not exist creates it.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a partition count.
    pub default_partitions: u32,
    pub max_frame_bytes: usize,
}

/// One node's Kafka front-end: the service it calls and how it answers.
pub struct KafkaFrontEnd {
    pub service: Arc<Service>,
    pub settings: KafkaSettings,
}

impl KafkaFrontEnd {
    /// Who a new connection is before any SASL exchange: anonymous, which is allowed only when
    /// the node does not require authentication.
    fn context(&self) -> Result<RequestContext, RunnelError> {
        Ok(RequestContext { principal: self.service.gate.principal_without_credentials()? })
    }
}

/// Splits `host:port` (a bracketed IPv6 host too) into Kafka's separate host and port fields.
pub fn host_and_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_splits_names_v4_and_v6() {
        assert_eq!(host_and_port("n1:9092"), Some(("n1".into(), 9092)));
        assert_eq!(host_and_port("127.0.0.1:19092"), Some(("127.0.0.1".into(), 19092)));
        assert_eq!(host_and_port("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(host_and_port("n1"), None);
        assert_eq!(host_and_port(":9092"), None);
        assert_eq!(host_and_port("n1:99999"), None);
    }
}
