//! Certificates for a cluster: a CA, node certificates (server + client, naming the node id) and
//! client certificates (naming a principal). What `runnel certs` writes, and what tests use.
//!
//! A node certificate carries its node id as the URI `runnel://node/<id>` in its subject
//! alternative names; that — in a certificate the cluster CA signed — is what lets a peer speak
//! as node `<id>` to the node-to-node services (`runnel_proto::peer`). Its DNS names and IP
//! addresses are the ones other nodes and clients dial it by.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use runnel_types::NodeId;

/// The URI a node certificate names its node by.
pub fn node_uri(id: NodeId) -> String {
    format!("runnel://node/{id}")
}

/// The node id named by a `runnel://node/<id>` URI.
pub fn node_id_of_uri(uri: &str) -> Option<NodeId> {
    uri.strip_prefix("runnel://node/")?.parse().ok()
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A cluster node: serves TLS under `hosts` (DNS names or IP addresses) and speaks to other
    /// nodes as node `id`.
    Node { id: NodeId, hosts: Vec<String> },
    /// A client (a person or an application): authenticates as `name`.
    Client { name: String },
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 characters, no label starting
/// or ending with a hyphen (RFC 1123).
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A new cluster CA, valid for `days`.
pub fn new_ca(name: &str, days: u32) -> anyhow::Result<CertAndKey> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate for `subject`, signed by `ca`, valid for `days`.
pub fn issue(ca: &CertAndKey, subject: &Subject, days: u32) -> anyhow::Result<CertAndKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    match subject {
        Subject::Node { id, hosts } => {
            params.distinguished_name.push(DnType::CommonName, format!("runnel node {id}"));
            params.subject_alt_names.push(SanType::URI(node_uri(*id).try_into().context("node URI")?));
            for h in hosts {
                let san = match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) if is_dns_name(h) => {
                        SanType::DnsName(h.clone().try_into().with_context(|| format!("'{h}' is not a DNS name"))?)
                    }
                    Err(_) => anyhow::bail!("'{h}' is neither an IP address nor a DNS name"),
                };
                params.subject_alt_names.push(san);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
        Subject::Client { name } => {
            anyhow::ensure!(!name.is_empty(), "a client certificate needs a name");
            params.distinguished_name.push(DnType::CommonName, name.as_str());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uris_round_trip_and_nothing_else_parses() {
        assert_eq!(node_id_of_uri(&node_uri(42)), Some(42));
        assert_eq!(node_id_of_uri("runnel://node/"), None);
        assert_eq!(node_id_of_uri("runnel://node/x"), None);
        assert_eq!(node_id_of_uri("https://node/1"), None);
    }

    #[test]
    fn issued_certificates_name_what_they_are_for() {
        let ca = new_ca("test CA", 1).unwrap();
        let node =
            issue(&ca, &Subject::Node { id: 3, hosts: vec!["127.0.0.1".into(), "localhost".into()] }, 1).unwrap();
        let client = issue(&ca, &Subject::Client { name: "alice".into() }, 1).unwrap();
        let der = |pem: &str| crate::tls::certs_from_pem(pem.as_bytes(), "test").unwrap().remove(0);
        assert_eq!(crate::tls::identity_of(&der(&node.cert_pem)), runnel_proto::peer::PeerIdentity::Node(3));
        assert_eq!(
            crate::tls::identity_of(&der(&client.cert_pem)),
            runnel_proto::peer::PeerIdentity::Client("alice".into())
        );
        assert!(issue(&ca, &Subject::Node { id: 1, hosts: vec!["not a name!".into()] }, 1).is_err());
    }
}
