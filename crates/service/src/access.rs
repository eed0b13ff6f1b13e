//! The access check of the service layer: who a caller is (authentication), whether it may do
//! what it asks (ACLs), and how long it waits first (quotas). Every client request passes through
//! [`Gatekeeper`] once, on the node the client called, whatever its protocol; a change the
//! controller must make is then forwarded as a node-to-node call, and nodes pass every check.
//!
//! A front-end finds the credentials its protocol carries and asks the gatekeeper what they are
//! worth (the gRPC API looks at them in this order):
//! 1. a bearer token ([`Gatekeeper::principal_of_token`]) from a SCRAM login
//!    ([`Gatekeeper::authenticate`]) or `runnel token create`: checked against the token key in the
//!    metadata and the user's current credential generation (so a deleted user or a changed
//!    password revokes every earlier token at once);
//! 2. the TLS client certificate ([`Gatekeeper::principal_of_certificate`]): a node certificate
//!    is `Node:<id>`, a client certificate `User:<common name>`.
//!
//! Refusals are [`RunnelError`]s with `AUTHENTICATION_FAILED` or `AUTHORIZATION_FAILED`; each
//! front-end answers them in its protocol's terms (gRPC: UNAUTHENTICATED, PERMISSION_DENIED).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use parking_lot::Mutex;
use runnel_meta::security::TOKEN_KEY_BYTES;
use runnel_meta::MetaCommand;
use runnel_proto::peer::PeerIdentity;
use runnel_raft::meta_sm::MetaStateMachine;
use runnel_security::acl::{self, Decision, Operation, Principal, ResourceType};
use runnel_security::quota::{Quota, QuotaKind, Throttles};
use runnel_security::scram::{Credentials, Mechanism, ScramServer, MIN_ITERATIONS};
use runnel_security::token::{self, TokenClaims};
use runnel_types::{ErrorCode, RunnelError};

use crate::controller::Controller;

/// Longest lifetime of a bearer token (30 days).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3_600);

/// How long the second half of a SCRAM exchange may take.
const SESSION_TTL: Duration = Duration::from_secs(30);
/// Most SCRAM exchanges half done at once on one node (each holds a few hundred bytes).
const MAX_PENDING_SESSIONS: usize = 10_000;

/// Authentication and authorisation settings of a node (from its configuration).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub require: bool,
    pub superusers: Vec<String>,
    pub token_lifetime: Duration,
    /// `(name, password)` created by the controller if absent.
    pub bootstrap_user: Option<(String, String)>,
}

/// The answer to one step of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStep {
    /// The SCRAM server-first or server-final message.
    pub message: String,
    /// After the first step: the session the second step names.
    pub session: String,
    /// After the second step: the token.
    pub done: Option<Login>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    pub principal: Principal,
}

struct Pending {
    server: ScramServer,
    started: Instant,
}

pub struct Gatekeeper {
    settings: AuthSettings,
    meta: MetaStateMachine,
    sessions: Mutex<HashMap<String, Pending>>,
    throttles: Mutex<Throttles>,
    denied: AtomicU64,
    failed_logins: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unauthenticated(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::AuthenticationFailed, message)
}

fn denied(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::AuthorizationFailed, message)
}

/// What a caller without credentials is told, when the node requires them.
pub const NO_CREDENTIALS: &str = "this node requires authentication: log in with SCRAM (runnel --user/--password, \
     RUNNEL_USER and RUNNEL_PASSWORD), present a bearer token (--token, RUNNEL_TOKEN) or a client certificate";

fn random_string(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// SCRAM credentials of `password` for every mechanism, each with its own random salt.
pub fn credentials_for(password: &str) -> Vec<Credentials> {
    Mechanism::ALL
        .iter()
        .map(|m| {
            let salt: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
            Credentials::new(*m, password, &salt, MIN_ITERATIONS)
        })
        .collect()
}

/// A fresh random token key.
pub fn new_token_key() -> Vec<u8> {
    (0..TOKEN_KEY_BYTES).map(|_| rand::random::<u8>()).collect()
}

impl Gatekeeper {
    pub fn new(settings: AuthSettings, meta: MetaStateMachine) -> Gatekeeper {
        Gatekeeper {
            settings,
            meta,
            sessions: Mutex::new(HashMap::new()),
            throttles: Mutex::new(Throttles::default()),
            denied: AtomicU64::new(0),
            failed_logins: AtomicU64::new(0),
        }
    }

    pub fn required(&self) -> bool {
        self.settings.require
    }

    /// Requests refused by an ACL on this node since it started.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Failed logins and refused credentials on this node since it started.
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
    }

    /// Refuses credentials: logged and counted.
    pub fn refuse(&self, message: String) -> RunnelError {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %message, "request refused: no valid credentials");
        unauthenticated(message)
    }

    /// The caller of a request that carries no credentials: everyone when authentication is not
    /// required ([`Principal::Anonymous`], allowed everything), else no one.
    pub fn principal_without_credentials(&self) -> Result<Principal, RunnelError> {
        if self.settings.require {
            Err(self.refuse(NO_CREDENTIALS.into()))
        } else {
            Ok(Principal::Anonymous)
        }
    }

    /// The caller a verified TLS certificate names.
    pub fn principal_of_certificate(&self, identity: &PeerIdentity) -> Result<Principal, RunnelError> {
        if !self.settings.require {
            return Ok(Principal::Anonymous);
        }
        match identity {
            PeerIdentity::Node(id) => Ok(Principal::Node(*id)),
            PeerIdentity::Client(cn) => match acl::validate_user_name(cn) {
                Ok(()) => Ok(Principal::User(cn.clone())),
                Err(e) => Err(self.refuse(format!("the client certificate's common name is no user name: {e}"))),
            },
            PeerIdentity::Anonymous => self.principal_without_credentials(),
        }
    }

    /// The caller a bearer token names (always a user: tokens never name nodes).
    pub fn principal_of_token(&self, token: &str) -> Result<Principal, RunnelError> {
        if !self.settings.require {
            return Ok(Principal::Anonymous);
        }
        let view = self.meta.current();
        let security = &view.state.security;
        if security.token_key.is_empty() {
            return Err(self.refuse("this cluster has not issued any token yet".into()));
        }
        let claims = token::verify(&security.token_key, token, now_ms()).map_err(|e| self.refuse(e.to_string()))?;
        match Principal::parse(&claims.principal) {
            Some(Principal::User(name)) => match security.users.get(&name) {
                Some(u) if u.generation == claims.generation => Ok(Principal::User(name)),
                Some(_) => Err(self.refuse(format!(
                    "the token of user '{name}' was revoked (its password changed since it was issued); log in again"
                ))),
                None => Err(self.refuse(format!("the token names user '{name}', who no longer exists"))),
            },
            _ => Err(self.refuse(format!("the token names '{}', which is no principal", claims.principal))),
        }
    }

    fn decide(&self, who: &Principal, op: Operation, resource: ResourceType, name: &str) -> Decision {
        // Every call comes here, most from callers who pass every check (no authentication
        // required, nodes, superusers): answer those without reading the metadata.
        if self.is_superuser(who) {
            return Decision::Allowed;
        }
        let view = self.meta.current();
        acl::authorize(&view.state.security.acls, &self.settings.superusers, who, op, resource, name)
    }

    /// Whether `who` may do `op` to `resource` `name`; a refusal is logged, counted and answered
    /// AUTHORIZATION_FAILED with what was refused and why.
    pub fn check(&self, who: &Principal, op: Operation, resource: ResourceType, name: &str) -> Result<(), RunnelError> {
        let why = match self.decide(who, op, resource, name) {
            Decision::Allowed => return Ok(()),
            Decision::Denied(rule) => format!("denied by the ACL '{rule}'"),
            Decision::NoRule => "no ACL allows it".to_string(),
        };
        self.denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(principal = %who, operation = op.as_str(), resource = resource.as_str(), name, reason = %why, "request denied");
        Err(denied(format!("{who} may not {} {} '{name}': {why}", op.as_str(), resource.as_str())))
    }

    /// Like [`check`](Self::check) without the log line: for leaving out what a list may not show.
    pub fn may(&self, who: &Principal, op: Operation, resource: ResourceType, name: &str) -> bool {
        self.decide(who, op, resource, name) == Decision::Allowed
    }

    /// Whether `who` may do `op` to at least one resource of type `resource`.
    pub fn check_any(&self, who: &Principal, op: Operation, resource: ResourceType) -> Result<(), RunnelError> {
        if self.is_superuser(who) {
            return Ok(());
        }
        let view = self.meta.current();
        if acl::allows_any(&view.state.security.acls, &self.settings.superusers, who, op, resource) {
            return Ok(());
        }
        self.denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(principal = %who, operation = op.as_str(), resource = resource.as_str(), "request denied");
        Err(denied(format!("{who} may not {} any {}: no ACL allows it", op.as_str(), resource.as_str())))
    }

    pub fn is_superuser(&self, who: &Principal) -> bool {
        match who {
            Principal::Anonymous | Principal::Node(_) => true,
            Principal::User(name) => {
                self.settings.superusers.iter().any(|s| s.strip_prefix("User:") == Some(name.as_str()))
            }
        }
    }

    fn quota(&self, who: &Principal) -> Option<(String, Quota)> {
        let Principal::User(_) = who else { return None };
        let name = who.name();
        let quota = self.meta.current().state.security.quota_of(&name);
        (quota != Quota::default()).then_some((name, quota))
    }

    /// Waits out what `who` owes under its request-rate quota and, with `kind`, its byte-rate
    /// quota, then charges this request. Called before a request is carried out.
    pub async fn throttle(&self, who: &Principal, kind: Option<QuotaKind>) {
        let Some((name, quota)) = self.quota(who) else { return };
        let wait = {
            let mut t = self.throttles.lock();
            let now = Instant::now();
            let mut wait = t.wait(&name, QuotaKind::Requests, &quota, now);
            if let Some(k) = kind {
                wait = wait.max(t.wait(&name, k, &quota, now));
            }
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.throttles.lock().charge(&name, QuotaKind::Requests, &quota, 1, Instant::now());
    }

    /// Charges `bytes` to `who`'s byte-rate quota of `kind`; returns the throttle time to report.
    pub fn charge(&self, who: &Principal, kind: QuotaKind, bytes: u64) -> u32 {
        let Some((name, quota)) = self.quota(who) else { return 0 };
        let wait = self.throttles.lock().charge(&name, kind, &quota, bytes, Instant::now());
        wait.as_millis().min(u32::MAX as u128) as u32
    }

    /// A bearer token for `principal` (`User:<name>` of an existing user, with its current
    /// generation), valid for `lifetime`.
    pub fn issue_token(&self, user: &str, lifetime: Duration) -> Result<(String, u64), RunnelError> {
        let view = self.meta.current();
        let security = &view.state.security;
        let rec = security
            .users
            .get(user)
            .ok_or_else(|| RunnelError::new(ErrorCode::UnknownUser, format!("user '{user}' does not exist")))?;
        if security.token_key.is_empty() {
            return Err(RunnelError::new(ErrorCode::NotController, "the cluster has no token key yet; retry shortly"));
        }
        let expires_at_ms = now_ms() + lifetime.as_millis() as u64;
        let claims = TokenClaims { principal: format!("User:{user}"), generation: rec.generation, expires_at_ms };
        Ok((token::issue(&security.token_key, &claims), expires_at_ms))
    }

    pub fn token_lifetime(&self) -> Duration {
        self.settings.token_lifetime
    }

    /// One step of a SCRAM login (any front-end: the gRPC `Authenticate` call; SASL later). The
    /// first step (`session` empty) reads the client-first message and answers the server-first
    /// one with a session id; the second checks the client's proof and answers the server-final
    /// message with a bearer token.
    pub fn authenticate(&self, mechanism: &str, message: &str, session: &str) -> Result<LoginStep, RunnelError> {
        let failed = |message: String| {
            self.failed_logins.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %message, "login failed");
            RunnelError::new(ErrorCode::AuthenticationFailed, message)
        };
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return Err(failed(format!("unknown mechanism '{mechanism}'; use SCRAM-SHA-256 or SCRAM-SHA-512")));
        };
        if session.is_empty() {
            let view = self.meta.current();
            let lookup = |user: &str| {
                view.state.security.users.get(user)?.credentials.iter().find(|c| c.mechanism == mechanism).cloned()
            };
            let (server, server_first) = ScramServer::start(mechanism, message, &random_string(18), lookup)
                .map_err(|e| failed(e.to_string()))?;
            let session = random_string(16);
            let mut sessions = self.sessions.lock();
            sessions.retain(|_, p| p.started.elapsed() < SESSION_TTL);
            if sessions.len() >= MAX_PENDING_SESSIONS {
                return Err(RunnelError::new(
                    ErrorCode::Timeout,
                    format!("{MAX_PENDING_SESSIONS} logins are in progress on this node; retry shortly"),
                ));
            }
            sessions.insert(session.clone(), Pending { server, started: Instant::now() });
            return Ok(LoginStep { message: server_first, session, done: None });
        }
        let Some(pending) = self.sessions.lock().remove(session) else {
            return Err(failed("unknown login session (it expired after 30 s, or was started on another node)".into()));
        };
        if pending.started.elapsed() >= SESSION_TTL {
            return Err(failed("the login session expired (30 s); start again".into()));
        }
        let (server_final, user) = pending.server.finish(message).map_err(|e| failed(e.to_string()))?;
        let (token, expires_at_ms) = self.issue_token(&user, self.settings.token_lifetime)?;
        tracing::info!(user = %user, mechanism = mechanism.name(), "login");
        Ok(LoginStep {
            message: server_final,
            session: String::new(),
            done: Some(Login { token, expires_at_ms, principal: Principal::User(user) }),
        })
    }
}

/// While this node is controller and authentication is required: gives the cluster a token key
/// and creates the configured bootstrap user if absent. Stops once both exist.
pub async fn run_bootstrap(controller: Arc<Controller>, settings: AuthSettings) {
    if !settings.require && settings.bootstrap_user.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = controller.sm.current();
        let security = &view.state.security;
        let need_key = security.token_key.is_empty();
        let need_user = settings.bootstrap_user.as_ref().is_some_and(|(name, _)| !security.users.contains_key(name));
        if !need_key && !need_user {
            return;
        }
        if !controller.is_controller() {
            continue;
        }
        let cmd = match &settings.bootstrap_user {
            Some((name, password)) if need_user => MetaCommand::PutUser {
                name: name.clone(),
                credentials: credentials_for(password),
                token_key: new_token_key(),
                if_absent: true,
            },
            _ => MetaCommand::SetTokenKey { key: new_token_key() },
        };
        match controller.propose(cmd).await {
            Ok(_) => tracing::info!(bootstrap_user = need_user, "security bootstrap written to the metadata"),
            Err(e) => tracing::debug!(error = %e, "security bootstrap not written yet; retrying"),
        }
    }
}
