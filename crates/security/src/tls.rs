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

/// A TLS handshake not finished within this is dropped: a client that connects and sends nothing
/// (or trickles bytes) holds no resources for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once on a listener; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

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

    /// The listener's configuration: this node's certificate; client certificates optional,
    /// verified against the CA when presented.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (certs, key) = self.own()?.context("a TLS listener needs this node's certificate and key")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .context("this node's certificate and key do not match or are unusable")?;
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
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).context("the client certificate and key")?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
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
) -> Result<TlsConn, String> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("TLS handshake failed (a plaintext client, or an untrusted certificate?): {e}")),
        Err(_) => return Err(format!("TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}")),
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map_or(PeerIdentity::Anonymous, identity_of);
    Ok(TlsConn { stream, info: PeerInfo { remote_addr: Some(remote), identity } })
}

/// TLS connections accepted on `listener`: each handshake runs in its own task (a slow one holds
/// up nobody) and is dropped after [`HANDSHAKE_TIMEOUT`]; at most `MAX_HANDSHAKES` run at once.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
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
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let conn = handshake(acceptor, tcp, remote).await;
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
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("TLS connection to {host}:{port} timed out"))
                })??;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        Ok(ep.connect_with_connector_lazy(connector))
    }
}
