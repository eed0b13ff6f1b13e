//! tonic over turmoil's simulated TCP: the simulator's side of the network seam.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use runnel_proto::dial::Dialer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens channels with `turmoil::net::TcpStream`.
pub struct TurmoilDialer;

impl Dialer for TurmoilDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        // HTTP/2 pings find connections whose bytes were lost (turmoil's TCP does not
        // retransmit), so they are replaced instead of hanging every later call.
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address '{addr}': {e}"))?
            .http2_keep_alive_interval(std::time::Duration::from_millis(500))
            .keep_alive_timeout(std::time::Duration::from_millis(1000))
            .keep_alive_while_idle(true);
        Ok(ep.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let s = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, std::io::Error>(TokioIo::new(s))
        })))
    }
}

/// An accepted simulated connection, as tonic's server wants it.
pub struct SimConn(pub turmoil::net::TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of a simulated listener, as a stream for `tonic`'s `serve_with_incoming`.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl futures::Stream<Item = Result<SimConn, std::io::Error>> + Send + 'static {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| SimConn(s));
        Some((next, l))
    })
}
