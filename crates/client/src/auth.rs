//! Credentials: how a client proves who it is to a cluster that requires authentication.
//!
//! With a user and password the client logs in once with SCRAM-SHA-512 (the password never
//! leaves the client; the server proves it knows the password too) and presents the bearer token
//! it gets on every call, logging in again before the token expires. A token from
//! `runnel token create` is presented as it is. A client certificate needs no credentials here:
//! it goes in the TLS configuration (the dialer).

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;

/// What a client authenticates with.
#[derive(Clone)]
pub enum Credentials {
    /// Log in with SCRAM-SHA-512 and use the token it yields.
    Password { user: String, password: String },
    /// A bearer token issued by the cluster.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Credentials::Token(_) => write!(f, "Token(..)"),
        }
    }
}

/// Adds the `authorization` header to every request of one stub.
#[derive(Clone, Default)]
pub struct AuthHeader(pub(crate) Option<AsciiMetadataValue>);

impl Interceptor for AuthHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// `Bearer <token>` as a header value.
pub(crate) fn bearer(token: &str) -> Result<AsciiMetadataValue, String> {
    AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
        .map_err(|_| "the token holds characters a header cannot carry".to_string())
}
