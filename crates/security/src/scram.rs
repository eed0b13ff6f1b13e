//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677): password authentication in which the
//! server stores no password and neither side sends one — what Kafka clients use as
//! `SCRAM-SHA-256/512`. Built on RustCrypto's `sha2`, `hmac` and `pbkdf2`; proofs are compared in
//! constant time (`subtle`). No channel binding (`n,,` GS2 header only): run it over TLS.
//!
//! Server side: [`ScramServer::start`] takes the client-first message and the user's stored
//! [`Credentials`] and answers the server-first message; [`ScramServer::finish`] checks the
//! client-final message's nonce and proof and answers the server-final message.
//! Client side (for the CLI, the SDK and tests): [`ScramClient`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Iterations below this are refused (RFC 7677 asks for at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Mechanism {
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length (longer ones are hashed): `new_from_slice` cannot fail,
        // so its error is an invariant violation, not an input error.
        #[allow(clippy::expect_used)]
        match self {
            Mechanism::ScramSha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::ScramSha512 => {
                let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
            Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations).to_vec()
            }
            Mechanism::ScramSha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password.as_bytes(), salt, iterations).to_vec()
            }
        }
    }
}

/// What the server keeps of a user's password (RFC 5802 §3): never the password itself.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Keys left out: they allow an offline guess at the password, so they stay out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Derives the stored credentials for `password` with `salt` and `iterations`.
    pub fn new(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Credentials {
        let salted = mechanism.salted_password(password, salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        Credentials {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(&salted, b"Server Key"),
        }
    }
}

/// Why an exchange failed. The messages never say whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    #[error("SCRAM channel binding is not supported (use the 'n,,' GS2 header over TLS)")]
    ChannelBinding,
    #[error("authentication failed: unknown user or wrong password")]
    Failed,
    #[error("the server's nonce does not extend the client's")]
    NonceMismatch,
    #[error("the server's signature is wrong: it does not know this password")]
    ServerSignature,
    #[error("too few iterations: {0} (at least {MIN_ITERATIONS})")]
    Iterations(u32),
}

fn malformed(what: &str) -> ScramError {
    ScramError::Malformed(what.to_string())
}

/// The attribute `key=` of a comma-separated SCRAM message, in order.
fn attrs(msg: &str) -> Vec<(char, &str)> {
    msg.split(',')
        .filter_map(|part| {
            let mut c = part.chars();
            let k = c.next()?;
            (c.next() == Some('=')).then(|| (k, &part[2..]))
        })
        .collect()
}

fn attr<'a>(attrs: &[(char, &'a str)], key: char, what: &str) -> Result<&'a str, ScramError> {
    attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).ok_or_else(|| malformed(&format!("no {what} ('{key}=')")))
}

/// RFC 5802 saslname: ',' and '=' are written =2C and =3D.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(malformed("bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A server half-way through an exchange (after the server-first message).
#[derive(Debug)]
pub struct ScramServer {
    user: String,
    credentials: Credentials,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Reads the client-first message and answers the server-first one. `lookup` gives the
    /// user's stored credentials; an unknown user gets made-up ones (so the answer does not tell
    /// whether the user exists) and fails at `finish`.
    pub fn start(
        mechanism: Mechanism,
        client_first: &str,
        server_nonce: &str,
        lookup: impl FnOnce(&str) -> Option<Credentials>,
    ) -> Result<(ScramServer, String), ScramError> {
        let bare = match client_first.strip_prefix("n,,") {
            Some(b) => b,
            None if client_first.starts_with("y,") || client_first.starts_with("p=") => {
                return Err(ScramError::ChannelBinding)
            }
            // "n,a=authzid," — an authorization identity other than the user is not supported.
            None => return Err(malformed("expected the GS2 header 'n,,'")),
        };
        let a = attrs(bare);
        if bare.starts_with("m=") {
            return Err(malformed("mandatory extensions are not supported"));
        }
        let user = decode_saslname(attr(&a, 'n', "user name")?)?;
        let client_nonce = attr(&a, 'r', "nonce")?;
        if client_nonce.is_empty() || user.is_empty() {
            return Err(malformed("empty user name or nonce"));
        }
        let credentials = match lookup(&user).filter(|c| c.mechanism == mechanism) {
            Some(c) => c,
            None => {
                // Same shape as a real user's, never matching any proof (its stored key is no hash).
                let salt = mechanism.hash(user.as_bytes())[..16].to_vec();
                let len = mechanism.hash(b"").len();
                Credentials {
                    mechanism,
                    salt,
                    iterations: MIN_ITERATIONS,
                    stored_key: vec![0; len],
                    server_key: vec![0; len],
                }
            }
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&credentials.salt), credentials.iterations);
        let s = ScramServer {
            user,
            credentials,
            nonce,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok((s, server_first))
    }

    /// Checks the client-final message; returns the server-final message and the authenticated user.
    pub fn finish(self, client_final: &str) -> Result<(String, String), ScramError> {
        let a = attrs(client_final);
        let channel = attr(&a, 'c', "channel binding")?;
        if channel != "biws" {
            // base64("n,,"): anything else is a channel binding we did not offer.
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attr(&a, 'r', "nonce")?;
        if nonce.as_bytes().ct_eq(self.nonce.as_bytes()).unwrap_u8() != 1 {
            return Err(ScramError::Failed);
        }
        let proof = B64.decode(attr(&a, 'p', "proof")?).map_err(|_| malformed("the proof is not base64"))?;
        let without_proof = client_final.rsplit_once(",p=").map(|(w, _)| w).ok_or_else(|| malformed("no proof"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let m = self.credentials.mechanism;
        let client_signature = m.hmac(&self.credentials.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::Failed);
        }
        let client_key = xor(&proof, &client_signature);
        if m.hash(&client_key).ct_eq(&self.credentials.stored_key).unwrap_u8() != 1 {
            return Err(ScramError::Failed);
        }
        let server_signature = m.hmac(&self.credentials.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), self.user))
    }
}

/// A client's side of an exchange.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    client_nonce: String,
    client_first_bare: String,
}

/// A client after its final message, waiting to check the server's signature.
#[derive(Debug)]
pub struct ScramClientFinal {
    mechanism: Mechanism,
    server_key: Vec<u8>,
    auth_message: String,
}

impl ScramClient {
    /// Starts an exchange; returns the client and its client-first message.
    pub fn start(mechanism: Mechanism, user: &str, password: &str, client_nonce: &str) -> (ScramClient, String) {
        let bare = format!("n={},r={client_nonce}", encode_saslname(user));
        let msg = format!("n,,{bare}");
        let c = ScramClient {
            mechanism,
            password: password.to_string(),
            client_nonce: client_nonce.to_string(),
            client_first_bare: bare,
        };
        (c, msg)
    }

    /// Reads the server-first message; returns the client-final message.
    pub fn respond(self, server_first: &str) -> Result<(ScramClientFinal, String), ScramError> {
        let a = attrs(server_first);
        let nonce = attr(&a, 'r', "nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = B64.decode(attr(&a, 's', "salt")?).map_err(|_| malformed("the salt is not base64"))?;
        let iterations: u32 =
            attr(&a, 'i', "iteration count")?.parse().map_err(|_| malformed("bad iteration count"))?;
        if iterations < MIN_ITERATIONS {
            return Err(ScramError::Iterations(iterations));
        }
        let m = self.mechanism;
        let salted = m.salted_password(&self.password, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let proof = xor(&client_key, &m.hmac(&stored_key, auth_message.as_bytes()));
        let msg = format!("{without_proof},p={}", B64.encode(proof));
        Ok((ScramClientFinal { mechanism: m, server_key: m.hmac(&salted, b"Server Key"), auth_message }, msg))
    }
}

impl ScramClientFinal {
    /// Checks the server-final message: the server knew the password's server key.
    pub fn verify(self, server_final: &str) -> Result<(), ScramError> {
        let a = attrs(server_final);
        if let Ok(e) = attr(&a, 'e', "error") {
            return Err(ScramError::Malformed(format!("the server refused: {e}")));
        }
        let v = B64.decode(attr(&a, 'v', "server signature")?).map_err(|_| malformed("the signature is not base64"))?;
        let want = self.mechanism.hmac(&self.server_key, self.auth_message.as_bytes());
        if v.ct_eq(&want).unwrap_u8() != 1 {
            return Err(ScramError::ServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credentials() -> Credentials {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Credentials::new(Mechanism::ScramSha256, "pencil", &salt, 4096)
    }

    #[test]
    fn the_client_side_reproduces_rfc_7677() {
        let (c, first) = ScramClient::start(Mechanism::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, CLIENT_FIRST);
        let (c, fin) = c.respond(SERVER_FIRST).unwrap();
        assert_eq!(fin, CLIENT_FINAL);
        c.verify(SERVER_FINAL).unwrap();
        let (c, _) = ScramClient::start(Mechanism::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO")
            .0
            .respond(SERVER_FIRST)
            .unwrap();
        assert_eq!(c.verify("v=AAAA6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Err(ScramError::ServerSignature));
    }

    #[test]
    fn the_server_side_reproduces_rfc_7677() {
        let (s, first) =
            ScramServer::start(Mechanism::ScramSha256, CLIENT_FIRST, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", |u| {
                (u == "user").then(rfc_credentials)
            })
            .unwrap();
        assert_eq!(first, SERVER_FIRST);
        let (fin, user) = s.finish(CLIENT_FINAL).unwrap();
        assert_eq!((fin.as_str(), user.as_str()), (SERVER_FINAL, "user"));
    }

    fn server(mech: Mechanism, client_first: &str, creds: Credentials) -> Result<(ScramServer, String), ScramError> {
        ScramServer::start(mech, client_first, "SERVERNONCE", move |u| (u == "alice,=x").then_some(creds))
    }

    #[test]
    fn wrong_passwords_unknown_users_and_tampering_fail_for_both_mechanisms() {
        for mech in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let creds = Credentials::new(mech, "s3cret", b"0123456789abcdef", 4096);
            // The right password, a user name that needs escaping.
            let (c, first) = ScramClient::start(mech, "alice,=x", "s3cret", "CNONCE");
            assert!(first.contains("n=alice=2C=3Dx"), "{first}");
            let (s, sf) = server(mech, &first, creds.clone()).unwrap();
            let (c, cf) = c.respond(&sf).unwrap();
            let (fin, user) = s.finish(&cf).unwrap();
            assert_eq!(user, "alice,=x");
            c.verify(&fin).unwrap();
            // A wrong password.
            let (c, first) = ScramClient::start(mech, "alice,=x", "guess", "CNONCE");
            let (s, sf) = server(mech, &first, creds.clone()).unwrap();
            assert_eq!(s.finish(&c.respond(&sf).unwrap().1).unwrap_err(), ScramError::Failed);
            // An unknown user: the server-first looks like a real one's, then it fails the same way.
            let (c, first) = ScramClient::start(mech, "mallory", "s3cret", "CNONCE");
            let (s, sf) = server(mech, &first, creds.clone()).unwrap();
            assert!(sf.starts_with("r=CNONCESERVERNONCE,s=") && sf.ends_with(",i=4096"), "{sf}");
            assert_eq!(s.finish(&c.respond(&sf).unwrap().1).unwrap_err(), ScramError::Failed);
            // A replayed or altered nonce.
            let (c, first) = ScramClient::start(mech, "alice,=x", "s3cret", "CNONCE");
            let (s, sf) = server(mech, &first, creds.clone()).unwrap();
            let cf = c.respond(&sf).unwrap().1.replace("SERVERNONCE", "SERVERNONCF");
            assert_eq!(s.finish(&cf).unwrap_err(), ScramError::Failed);
        }
    }

    #[test]
    fn malformed_messages_and_channel_binding_are_refused_by_name() {
        let creds = rfc_credentials();
        let m = Mechanism::ScramSha256;
        assert_eq!(server(m, "y,,n=user,r=abc", creds.clone()).unwrap_err(), ScramError::ChannelBinding);
        assert_eq!(server(m, "p=tls-unique,,n=user,r=abc", creds.clone()).unwrap_err(), ScramError::ChannelBinding);
        assert!(
            matches!(server(m, "n,,r=abc", creds.clone()), Err(ScramError::Malformed(e)) if e.contains("user name"))
        );
        assert!(matches!(server(m, "n,,n=user", creds.clone()), Err(ScramError::Malformed(e)) if e.contains("nonce")));
        assert!(matches!(server(m, "n,,n=us=ZZer,r=a", creds), Err(ScramError::Malformed(e)) if e.contains("escape")));
        let (c, _) = ScramClient::start(m, "user", "pencil", "abc");
        assert_eq!(c.respond("r=xyz,s=AAAA,i=4096").unwrap_err(), ScramError::NonceMismatch);
        let (c, _) = ScramClient::start(m, "user", "pencil", "abc");
        assert_eq!(c.respond("r=abcdef,s=AAAA,i=100").unwrap_err(), ScramError::Iterations(100));
    }
}
