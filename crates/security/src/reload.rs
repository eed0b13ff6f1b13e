//! A node's own certificate and key, reloaded from their files without a restart.
//!
//! Certificates expire and get rotated; a cluster should not need a rolling restart for that.
//! [`ReloadingCert`] serves the current certificate to every new TLS handshake — as the server's
//! certificate and as the node's client certificate towards its peers — and [`ReloadingCert::run`]
//! looks at the files every few seconds: when they changed and the new pair is valid (the key
//! matches the certificate), new handshakes use it; an invalid pair is reported and the old one
//! stays. Connections already open keep the certificate they were made with. The CA is read at
//! start only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use parking_lot::RwLock;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::tls::certs_from_pem;

/// How often the certificate and key files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn modified(paths: [&PathBuf; 2]) -> Option<SystemTime> {
    paths.iter().filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).max()
}

fn load(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Arc<CertifiedKey>> {
    let pem = std::fs::read(cert).with_context(|| format!("reading the certificate {}", cert.display()))?;
    let chain = certs_from_pem(&pem, &format!("certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading the private key {}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("the private key {} is not a PEM private key", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key_der, &provider)
        .with_context(|| format!("the key {} does not match the certificate {}", key.display(), cert.display()))?;
    Ok(Arc::new(ck))
}

impl ReloadingCert {
    /// Loads the pair now (an error here stops the node from starting).
    pub fn new(cert: PathBuf, key: PathBuf) -> anyhow::Result<Arc<ReloadingCert>> {
        let stamp = modified([&cert, &key]);
        let ck = load(&cert, &key)?;
        Ok(Arc::new(ReloadingCert { cert, key, current: RwLock::new((ck, stamp)) }))
    }

    /// The certificate new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().0.clone()
    }

    /// Reloads when the files changed since the last load; true when a new pair is now in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = modified([&self.cert, &self.key]);
        if stamp == self.current.read().1 {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write() = (ck, stamp);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded: new connections use it");
                true
            }
            Err(e) => {
                // Remember the stamp: one report per change, not one per look (a half-written
                // pair is normally followed by the other half, which changes the stamp again).
                self.current.write().1 = stamp;
                tracing::error!(error = %format!("{e:#}"), "TLS certificate changed but cannot be used; keeping the previous one");
                false
            }
        }
    }

    /// Looks at the files every `every` until the task is dropped.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            // File reads and a key parse: off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{issue, new_ca, Subject};

    #[test]
    fn a_new_valid_pair_is_picked_up_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        let ca = new_ca("ca", 1).unwrap();
        let write = |id: u64| {
            let ck = issue(&ca, &Subject::Node { id, hosts: vec!["127.0.0.1".into()] }, 1).unwrap();
            std::fs::write(&cert, &ck.cert_pem).unwrap();
            std::fs::write(&key, &ck.key_pem).unwrap();
        };
        let id_now = |r: &ReloadingCert| crate::tls::identity_of(&r.current().cert[0]);
        write(1);
        let r = ReloadingCert::new(cert.clone(), key.clone()).unwrap();
        assert_eq!(id_now(&r), runnel_proto::peer::PeerIdentity::Node(1));
        assert!(!r.reload_if_changed(), "nothing changed");
        // Rotated: a certificate for the same host, newer (here: another node id, to tell them apart).
        let later = SystemTime::now() + Duration::from_secs(5);
        write(2);
        for p in [&cert, &key] {
            std::fs::File::options().write(true).open(p).unwrap().set_modified(later).unwrap();
        }
        assert!(r.reload_if_changed());
        assert_eq!(id_now(&r), runnel_proto::peer::PeerIdentity::Node(2));
        // A key that does not match its certificate: reported, the previous pair stays.
        let other = issue(&ca, &Subject::Node { id: 3, hosts: vec!["127.0.0.1".into()] }, 1).unwrap();
        std::fs::write(&key, &other.key_pem).unwrap();
        std::fs::File::options().write(true).open(&key).unwrap().set_modified(later + Duration::from_secs(5)).unwrap();
        assert!(!r.reload_if_changed());
        assert_eq!(id_now(&r), runnel_proto::peer::PeerIdentity::Node(2));
        assert!(ReloadingCert::new(cert, key).is_err(), "a mismatched pair is refused at start");
    }
}
