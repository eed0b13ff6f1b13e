//! How a node or client opens gRPC channels to other nodes: the network seam.
//!
//! Production uses [`TcpDialer`]; the deterministic simulator supplies a dialer over turmoil's
//! simulated TCP. Everything that talks to another node (Raft transport, broker heartbeats,
//! controller forwarding, the client library) gets its channels from a `Dialer`.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub trait Dialer: Send + Sync + 'static {
    /// A lazily connecting channel to `addr` (`host:port`); connection errors surface on first use.
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// Real TCP.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    pub connect_timeout: Duration,
}

impl Default for TcpDialer {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_millis(500) }
    }
}

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address '{addr}': {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ep.connect_lazy())
    }
}

pub fn tcp() -> Arc<dyn Dialer> {
    Arc::new(TcpDialer::default())
}

/// A shareable dialer that can sit in `Debug` configuration structs.
#[derive(Clone)]
pub struct DialerHandle(pub Arc<dyn Dialer>);

impl std::fmt::Debug for DialerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialerHandle(..)")
    }
}
