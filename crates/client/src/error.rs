//! The client's error type. Every message names the operation, what it was aimed at
//! (`topic/partition`, a topic, "cluster metadata") and the node address involved.

use std::time::Duration;

use runnel_types::{ErrorCode, RunnelError};

/// What went wrong in a client call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A broker answered with an error (`RunnelError` carries the stable code and any leader or
    /// offset-range hint).
    #[error("{op} {target} via {addr}: {error}")]
    Broker {
        /// The operation, e.g. `produce`, `fetch`, `create topic`.
        op: &'static str,
        /// What the operation was aimed at, e.g. `orders/3`.
        target: String,
        /// The node that answered (or `local` for errors the client found itself, such as a
        /// batch failing its checksum on receipt).
        addr: String,
        /// The broker's error (boxed: it is large and errors should be cheap to move).
        error: Box<RunnelError>,
    },
    /// The gRPC call failed without a broker answer: connection refused or reset, DNS failure,
    /// HTTP/2 error, or a gRPC status the broker produced outside the Runnel error model.
    #[error("{op} {target}: request to {addr} failed: {detail}")]
    Transport {
        op: &'static str,
        target: String,
        addr: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message and its underlying causes.
        detail: String,
    },
    /// No answer within the request deadline.
    #[error("{op} {target}: no answer from {addr} within {} ms", .timeout.as_millis())]
    Timeout { op: &'static str, target: String, addr: String, timeout: Duration },
    /// A bootstrap or broker address that is not a valid `host:port`.
    #[error("invalid broker address '{addr}': {reason}")]
    InvalidAddress { addr: String, reason: String },
    /// None of the bootstrap addresses answered a metadata request.
    #[error("could not reach any bootstrap address ({addrs}); last error: {last}")]
    Bootstrap { addrs: String, last: Box<ClientError> },
    /// Retriable errors kept happening until the retry policy's limits ran out.
    #[error("{op} {target}: gave up after {attempts} attempts over {} ms; last error: {last}", .elapsed.as_millis())]
    RetriesExhausted { op: &'static str, target: String, attempts: u32, elapsed: Duration, last: Box<ClientError> },
    /// The caller passed something the client rejects before sending anything.
    #[error("{0}")]
    InvalidArgument(String),
    /// A [`crate::Producer`] cannot send the record: it is closed, or an earlier batch to the
    /// partition failed for good (the message says which).
    #[error("producer: {0}")]
    Producer(String),
}

impl ClientError {
    /// The broker error underneath, looking through [`ClientError::RetriesExhausted`] and
    /// [`ClientError::Bootstrap`].
    pub fn runnel_error(&self) -> Option<&RunnelError> {
        match self {
            ClientError::Broker { error, .. } => Some(&**error),
            ClientError::RetriesExhausted { last, .. } | ClientError::Bootstrap { last, .. } => last.runnel_error(),
            _ => None,
        }
    }

    /// The broker error code underneath, if the failure was a broker answer.
    pub fn code(&self) -> Option<ErrorCode> {
        self.runnel_error().map(|e| e.code)
    }

    /// For `OFFSET_OUT_OF_RANGE`: the partition's valid range `[log_start_offset,
    /// high_watermark]`.
    pub fn valid_range(&self) -> Option<(u64, u64)> {
        self.runnel_error().and_then(|e| e.valid_range)
    }

    /// Whether the failure came from the network rather than a broker's answer (so a write may
    /// or may not have been applied).
    pub fn is_transport(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::RetriesExhausted { last, .. } | ClientError::Bootstrap { last, .. } => last.is_transport(),
            _ => false,
        }
    }
}

/// gRPC codes that mean "the request may not have reached a working broker": retry elsewhere.
pub(crate) fn is_retriable_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Unknown
    )
}

/// A readable one-line description of a gRPC status: code, message and the chain of causes
/// (tonic's `Display` dumps metadata and details, which helps nobody).
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("{:?}", status.code());
    if !status.message().is_empty() {
        out.push_str(": ");
        out.push_str(status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_target_and_address() {
        let e = ClientError::Broker {
            op: "produce",
            target: "orders/3".into(),
            addr: "127.0.0.1:9293".into(),
            error: Box::new(RunnelError::not_leader("orders", 3, None)),
        };
        let text = e.to_string();
        assert!(text.contains("produce orders/3 via 127.0.0.1:9293: NOT_LEADER"), "{text}");
        let wrapped = ClientError::RetriesExhausted {
            op: "produce",
            target: "orders/3".into(),
            attempts: 30,
            elapsed: Duration::from_millis(12_345),
            last: Box::new(e),
        };
        assert_eq!(wrapped.code(), Some(ErrorCode::NotLeader));
        let text = wrapped.to_string();
        assert!(text.contains("gave up after 30 attempts over 12345 ms"), "{text}");
        assert!(text.contains("NOT_LEADER"), "{text}");
    }

    #[test]
    fn offset_range_is_exposed() {
        let e = ClientError::Broker {
            op: "fetch",
            target: "t/0".into(),
            addr: "a:1".into(),
            error: Box::new(RunnelError::offset_out_of_range("t", 0, 99, 5, 10)),
        };
        assert_eq!(e.valid_range(), Some((5, 10)));
        assert!(!e.is_transport());
    }
}
