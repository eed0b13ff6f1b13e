//! TLS for every listener and every node-to-node connection (rustls on the `ring` provider).
//!
//! One listener serves clients and nodes alike. Every connection is TLS; a client certificate is
//! optional, but when one is presented it must chain to the cluster CA. The verified certificate
//! becomes the connection's [`PeerInfo`] (a node id for node certificates, a name for client
//! certificates), which node-to-node services check against who the call claims to be
//! (`runnel_proto::peer::NodeAuth`). Nodes dial each other with their own node certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use runnel_proto::dial::Dialer;
use runnel_proto::peer::{PeerIdentity, PeerInfo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};

use crate::certs::node_id_of_uri;
use crate::reload::ReloadingCert;

/// A TLS handshake not finished within this is dropped: a client that connects and sends nothing
/// (or trickles bytes) holds no resources for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once on a listener; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// Open connections from one IP address at most: one misbehaving host cannot take every file
/// descriptor. Nodes hold two connections to each peer; clients multiplex on HTTP/2.
pub const MAX_CONNECTIONS_PER_IP: u32 = 1000;

/// Open connections per IP address; a [`IpSlot`] gives its place back when its connection closes.
#[derive(Default)]
struct PerIp(parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>);

struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: u32) -> Option<IpSlot> {
        let mut m = self.0.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { per_ip: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.per_ip.0.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Where a node's (or a client's) TLS material is: the cluster CA, and optionally its own
/// certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// Every certificate in a PEM buffer (`what` names it in errors).
pub fn certs_from_pem(pem: &[u8], what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} is not valid PEM"))?;
    anyhow::ensure!(!certs.is_empty(), "the {what} holds no certificate");
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_from_pem(&read(&self.ca, "CA certificate")?, "CA certificate")? {
            roots.add(c).with_context(|| format!("the CA certificate {} is not usable", self.ca.display()))?;
        }
        Ok(roots)
    }

    fn own(&self) -> anyhow::Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => {
                let certs = certs_from_pem(&read(c, "certificate")?, &format!("certificate {}", c.display()))?;
                let key = PrivateKeyDer::from_pem_slice(&read(k, "private key")?)
                    .with_context(|| format!("the private key {} is not a PEM private key", k.display()))?;
                Ok(Some((certs, key)))
            }
            _ => anyhow::bail!("a certificate needs its key and a key its certificate: give both or neither"),
        }
    }

    /// A node's TLS: its listener's and its dialer's configurations, both presenting the node's
    /// certificate from `cert`, which reloads it from its files when they change (run
    /// [`ReloadingCert::run`]).
    pub fn node_tls(&self) -> anyhow::Result<NodeTls> {
        let (Some(c), Some(k)) = (&self.cert, &self.key) else {
            anyhow::bail!("a node needs its certificate and key (tls_cert_file, tls_key_file)");
        };
        let cert = ReloadingCert::new(c.clone(), k.clone())?;
        Ok(NodeTls {
            server: self.server_config_with(cert.clone())?,
            client: self.client_config_with(Some(cert.clone()))?,
            cert,
        })
    }

    /// The listener's configuration: the certificate `cert` serves; client certificates
    /// optional, verified against the CA when presented.
    pub fn server_config_with(&self, cert: Arc<ReloadingCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert);
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    fn client_config_with(&self, cert: Option<Arc<ReloadingCert>>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(self.roots()?);
        let mut cfg = match cert {
            Some(c) => builder.with_client_cert_resolver(c),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A dialing side's configuration: servers must chain to the CA; this side's certificate is
    /// presented when given.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(self.roots()?);
        let mut cfg = match self.own()? {
            Some((certs, key)) => {
                builder.with_client_auth_cert(certs, key).context("the client certificate and key")?
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// A node's TLS configurations and the certificate they present (see [`TlsFiles::node_tls`]).
pub struct NodeTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub cert: Arc<ReloadingCert>,
}

/// Who a verified certificate names: a node (`runnel://node/<id>` URI) or else its common name.
pub fn identity_of(cert: &CertificateDer<'_>) -> PeerIdentity {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return PeerIdentity::Anonymous;
    };
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = node_id_of_uri(uri) {
                    return PeerIdentity::Node(id);
                }
            }
        }
    }
    let cn = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    match cn {
        Some(cn) if !cn.is_empty() => PeerIdentity::Client(cn),
        _ => PeerIdentity::Anonymous,
    }
}

/// A server-side TLS connection, with what its handshake proved.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: IpSlot,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: IpSlot,
) -> Result<TlsConn, String> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(format!("TLS handshake failed (a plaintext client, or an untrusted certificate?): {e}"))
        }
        Err(_) => return Err(format!("TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}")),
    };
    let identity =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map_or(PeerIdentity::Anonymous, identity_of);
    Ok(TlsConn { stream, info: PeerInfo { remote_addr: Some(remote), identity }, _slot: slot })
}

/// TLS connections accepted on `listener`: each handshake runs in its own task (a slow one holds
/// up nobody) and is dropped after [`HANDSHAKE_TIMEOUT`]; at most `MAX_HANDSHAKES` run at once,
/// and at most `max_per_ip` connections from one IP address are open at once (more are closed
/// as soon as they are accepted).
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_per_ip: u32,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_ip = Arc::new(PerIp::default());
    tokio::spawn(async move {
        loop {
            // The permit is taken before accepting: under a flood of handshakes, connections wait
            // in the kernel's backlog instead of as tasks here.
            let Ok(permit) = limit.clone().acquire_owned().await else { return };
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Some(slot) = per_ip.take(remote.ip(), max_per_ip) else {
                tracing::warn!(peer = %remote, max_per_ip, "connection refused: too many open connections from this address");
                drop(tcp);
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let conn = handshake(acceptor, tcp, remote, slot).await;
                drop(permit);
                match conn {
                    Ok(c) => {
                        let _ = tx.send(Ok(c)).await;
                    }
                    Err(e) => tracing::info!(peer = %remote, error = %e, "connection refused"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Opens channels over TLS: the [`Dialer`] of nodes (with their node certificate) and of clients
/// of a cluster that requires TLS.
#[derive(Clone)]
pub struct TlsDialer {
    pub connect_timeout: Duration,
    pub config: Arc<rustls::ClientConfig>,
}

impl Dialer for TlsDialer {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        // The scheme stays http: the connector below does TLS itself, with this cluster's CA.
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address '{addr}': {e}"))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let (config, timeout) = (self.config.clone(), self.connect_timeout);
        let connector = tower::service_fn(move |uri: tonic::codegen::http::Uri| {
            let config = config.clone();
            async move {
                let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
                let port = uri.port_u16().unwrap_or(80);
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("'{host}': {e}")))?;
                let connect = async {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    let _ = tcp.set_nodelay(true);
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
                };
                let tls = tokio::time::timeout(timeout + HANDSHAKE_TIMEOUT, connect).await.map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("TLS connection to {host}:{port} timed out"),
                    )
                })??;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        Ok(ep.connect_with_connector_lazy(connector))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::certs::{issue, new_ca, Subject};

    struct Pki {
        _dir: tempfile::TempDir,
        node: TlsFiles,
        client_as_node5: TlsFiles,
        anonymous: TlsFiles,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("ca", 1).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        for id in [1, 5] {
            let ck = issue(&ca, &Subject::Node { id, hosts: vec!["127.0.0.1".into()] }, 1).unwrap();
            std::fs::write(dir.path().join(format!("n{id}.pem")), &ck.cert_pem).unwrap();
            std::fs::write(dir.path().join(format!("n{id}.key")), &ck.key_pem).unwrap();
        }
        let files = |stem: Option<&str>| TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: stem.map(|s| dir.path().join(format!("{s}.pem"))),
            key: stem.map(|s| dir.path().join(format!("{s}.key"))),
        };
        Pki { node: files(Some("n1")), client_as_node5: files(Some("n5")), anonymous: files(None), _dir: dir }
    }

    /// A TLS connection to `addr` that has finished its handshake and exchanged a byte (TLS 1.3
    /// servers can refuse a client certificate only after the client's handshake completes).
    async fn connect(
        files: &TlsFiles,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(files.client_config().unwrap()).connect(name, tcp).await?;
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok(tls)
    }

    /// Accepts connections and echoes one byte on each, reporting the identity each proved.
    fn echo_server(
        pki: &Pki,
        listener: TcpListener,
        max_per_ip: u32,
    ) -> tokio::sync::mpsc::UnboundedReceiver<PeerIdentity> {
        let server = pki.node.node_tls().unwrap().server;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conns = Box::pin(incoming(listener, server, max_per_ip));
            while let Some(Ok(c)) = conns.next().await {
                let _ = tx.send(c.info.identity.clone());
                tokio::spawn(async move {
                    // The whole connection, not just the stream field the block uses: its per-IP
                    // slot must live as long as it does.
                    let mut c = c;
                    let mut b = [0u8; 1];
                    if c.stream.read_exact(&mut b).await.is_ok() {
                        let _ = c.stream.write_all(&b).await;
                        // Keep the connection (and its per-IP slot) until the client closes it.
                        let _ = c.stream.read(&mut b).await;
                    }
                });
            }
        });
        rx
    }

    #[tokio::test]
    async fn the_listener_proves_identities_and_caps_connections_per_address() {
        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut seen = echo_server(&pki, listener, 2);
        let timeout = Duration::from_secs(10);

        let a = tokio::time::timeout(timeout, connect(&pki.client_as_node5, addr)).await.unwrap().unwrap();
        assert_eq!(seen.recv().await, Some(PeerIdentity::Node(5)), "a node certificate names its node");
        let b = tokio::time::timeout(timeout, connect(&pki.anonymous, addr)).await.unwrap().unwrap();
        assert_eq!(seen.recv().await, Some(PeerIdentity::Anonymous));
        // A third connection from the same address is closed at once.
        let third = tokio::time::timeout(timeout, connect(&pki.anonymous, addr)).await.unwrap();
        assert!(third.is_err(), "over the per-address cap");
        // Closing one frees its place.
        drop(a);
        let again = tokio::time::timeout(timeout, async {
            loop {
                if let Ok(c) = connect(&pki.anonymous, addr).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a closed connection's place is given back");
        drop((b, again));

        // Plaintext gets no service.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(timeout, tcp.read_to_end(&mut buf)).await.unwrap();
        assert!(buf.is_empty() || buf[0] == 0x15, "a plaintext client gets a TLS alert or nothing, got {buf:?}");
    }
}
