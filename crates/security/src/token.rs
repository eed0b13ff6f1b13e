//! Bearer tokens: what a client presents on every call after authenticating once.
//!
//! A token names a principal (`User:<name>`, or `Node:<id>` for a node calling another node's
//! public API), the user's credential generation and an expiry, signed with HMAC-SHA256
//! under a key every metadata replica holds (`runnel_meta::SecurityState::token_key`), so any
//! node checks it without asking another. Changing a user's password or deleting the user changes
//! the generation, which revokes every token issued before. Tokens travel in the gRPC
//! `authorization: Bearer <token>` header; on a non-loopback listener that is only over TLS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "rnt1.";

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// `User:<name>` or `Node:<id>`.
    pub principal: String,
    /// The user's credential generation when the token was issued.
    pub generation: u64,
    /// Milliseconds since the Unix epoch after which the token is refused.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is malformed (expected 'rnt1.<claims>.<signature>')")]
    Malformed,
    #[error("the bearer token's signature is wrong: it was not issued by this cluster")]
    BadSignature,
    #[error("the bearer token expired; authenticate again")]
    Expired,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of every length: this cannot fail.
    #[allow(clippy::expect_used)]
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// Signs `claims` with `key`.
pub fn issue(key: &[u8], claims: &TokenClaims) -> String {
    let payload = format!("{}:{}:{}", claims.generation, claims.expires_at_ms, claims.principal);
    let body = B64.encode(payload.as_bytes());
    let mut m = mac(key);
    m.update(body.as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{PREFIX}{body}.{sig}")
}

/// Checks `token`'s signature (in constant time) and expiry against `now_ms`.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Result<TokenClaims, TokenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(body.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload = B64.decode(body).map_err(|_| TokenError::Malformed)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let mut parts = payload.splitn(3, ':');
    let generation = parts.next().and_then(|g| g.parse().ok()).ok_or(TokenError::Malformed)?;
    let expires_at_ms: u64 = parts.next().and_then(|e| e.parse().ok()).ok_or(TokenError::Malformed)?;
    let principal = parts.next().filter(|u| !u.is_empty()).ok_or(TokenError::Malformed)?.to_string();
    if now_ms >= expires_at_ms {
        return Err(TokenError::Expired);
    }
    Ok(TokenClaims { principal, generation, expires_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims { principal: "User:alice:ops".into(), generation: 7, expires_at_ms: 2_000 }
    }

    #[test]
    fn a_token_verifies_under_its_key_until_it_expires() {
        let t = issue(b"key-1", &claims());
        assert_eq!(verify(b"key-1", &t, 1_999), Ok(claims()));
        assert_eq!(verify(b"key-1", &t, 2_000), Err(TokenError::Expired));
        assert_eq!(verify(b"key-2", &t, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_changed_claim_breaks_the_signature() {
        let t = issue(b"k", &claims());
        let (body, sig) = t.strip_prefix(PREFIX).and_then(|r| r.split_once('.')).unwrap();
        let forged = B64.encode(b"7:99999999:User:admin");
        assert_ne!(forged, body);
        assert_eq!(verify(b"k", &format!("{PREFIX}{forged}.{sig}"), 0), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", "Bearer x", 0), Err(TokenError::Malformed));
        assert_eq!(verify(b"k", &format!("{PREFIX}{body}"), 0), Err(TokenError::Malformed));
    }
}
