//! Users, access rules and quotas, replicated with the rest of the metadata so that every node
//! authenticates and authorises the same way (docs/SECURITY.md).

use std::collections::{BTreeMap, BTreeSet};

use runnel_security::acl::{validate_user_name, AclRule};
use runnel_security::quota::Quota;
use runnel_security::scram::{Credentials, MIN_ITERATIONS};
use runnel_types::{ErrorCode, RunnelError};
use serde::{Deserialize, Serialize};

/// Bytes in the key that signs bearer tokens.
pub const TOKEN_KEY_BYTES: usize = 32;

/// A user: what the server keeps of its password (salted SCRAM credentials, never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// One per SCRAM mechanism the user can authenticate with.
    pub credentials: Vec<Credentials>,
    /// Changes whenever the user's credentials do (and is never reused, even by a user created
    /// again under the same name): tokens carry it, so an old password's tokens stop working.
    pub generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    pub users: BTreeMap<String, UserRecord>,
    pub acls: BTreeSet<AclRule>,
    /// By principal (`User:<name>`, or `User:*` for users without their own).
    pub quotas: BTreeMap<String, Quota>,
    /// Signs bearer tokens; set with the first user (drawn at random by the controller).
    pub token_key: Vec<u8>,
    pub next_generation: u64,
}

fn invalid(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::InvalidRequest, message)
}

/// Checks a quota's principal: `User:<name>` or `User:*`.
pub fn validate_quota_principal(principal: &str) -> Result<(), RunnelError> {
    match principal.strip_prefix("User:") {
        Some("*") => Ok(()),
        Some(name) => validate_user_name(name).map_err(invalid),
        None => Err(invalid(format!("quota principal '{principal}' must be 'User:<name>' or 'User:*'"))),
    }
}

impl SecurityState {
    pub fn is_empty(&self) -> bool {
        *self == SecurityState::default()
    }

    /// The quota that applies to `principal`: its own, else the default for users (`User:*`).
    pub fn quota_of(&self, principal: &str) -> Quota {
        self.quotas
            .get(principal)
            .or_else(|| principal.starts_with("User:").then(|| self.quotas.get("User:*")).flatten())
            .copied()
            .unwrap_or_default()
    }

    pub fn put_user(&mut self, name: &str, credentials: &[Credentials], token_key: &[u8]) -> Result<u64, RunnelError> {
        validate_user_name(name).map_err(invalid)?;
        if credentials.is_empty() {
            return Err(invalid(format!("user '{name}' has no credentials")));
        }
        let mut mechanisms = BTreeSet::new();
        for c in credentials {
            if c.iterations < MIN_ITERATIONS {
                return Err(invalid(format!(
                    "{} credentials of user '{name}' use {} iterations; at least {MIN_ITERATIONS} are required",
                    c.mechanism.name(),
                    c.iterations
                )));
            }
            if c.salt.is_empty() || c.stored_key.is_empty() || c.server_key.is_empty() {
                return Err(invalid(format!("{} credentials of user '{name}' are incomplete", c.mechanism.name())));
            }
            if !mechanisms.insert(c.mechanism) {
                return Err(invalid(format!("user '{name}' has two sets of {} credentials", c.mechanism.name())));
            }
        }
        self.set_token_key(token_key)?;
        self.next_generation = self.next_generation.max(1);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.users.insert(
            name.to_string(),
            UserRecord { name: name.to_string(), credentials: credentials.to_vec(), generation },
        );
        Ok(generation)
    }

    /// Sets the token key unless one is set (then `key` is ignored).
    pub fn set_token_key(&mut self, key: &[u8]) -> Result<(), RunnelError> {
        if !self.token_key.is_empty() {
            return Ok(());
        }
        if key.len() != TOKEN_KEY_BYTES {
            return Err(RunnelError::internal(format!("a token key has {TOKEN_KEY_BYTES} bytes, not {}", key.len())));
        }
        self.token_key = key.to_vec();
        Ok(())
    }

    pub fn delete_user(&mut self, name: &str) -> Result<(), RunnelError> {
        match self.users.remove(name) {
            Some(_) => Ok(()),
            None => Err(RunnelError::new(ErrorCode::UnknownUser, format!("user '{name}' does not exist"))),
        }
    }

    /// Adds `rules` (all validated first; rules already present are kept once).
    pub fn add_acls(&mut self, rules: &[AclRule]) -> Result<(), RunnelError> {
        for r in rules {
            r.validate().map_err(|e| invalid(format!("ACL {r}: {e}")))?;
        }
        self.acls.extend(rules.iter().cloned());
        Ok(())
    }

    /// Removes `rules`; returns how many were present.
    pub fn remove_acls(&mut self, rules: &[AclRule]) -> u64 {
        rules.iter().filter(|r| self.acls.remove(r)).count() as u64
    }

    pub fn set_quota(&mut self, principal: &str, quota: Option<Quota>) -> Result<(), RunnelError> {
        validate_quota_principal(principal)?;
        match quota {
            Some(q) if q != Quota::default() => {
                self.quotas.insert(principal.to_string(), q);
            }
            _ => {
                self.quotas.remove(principal);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_security::acl::{Operation, PatternType, Permission, ResourceType};
    use runnel_security::scram::Mechanism;

    fn creds() -> Vec<Credentials> {
        vec![Credentials::new(Mechanism::ScramSha256, "pw", b"salt-salt-salt-1", MIN_ITERATIONS)]
    }

    #[test]
    fn a_user_gets_a_new_generation_each_time_its_credentials_change() {
        let mut s = SecurityState::default();
        let key = [7u8; TOKEN_KEY_BYTES];
        let g1 = s.put_user("alice", &creds(), &key).unwrap();
        let g2 = s.put_user("alice", &creds(), &[1u8; TOKEN_KEY_BYTES]).unwrap();
        assert!(g2 > g1);
        // The token key is set once and kept.
        assert_eq!(s.token_key, key.to_vec());
        s.delete_user("alice").unwrap();
        assert_eq!(s.delete_user("alice").unwrap_err().code, ErrorCode::UnknownUser);
        // Created again, the name does not get an old generation back.
        assert!(s.put_user("alice", &creds(), &key).unwrap() > g2);
    }

    #[test]
    fn bad_users_are_refused() {
        let mut s = SecurityState::default();
        let key = [7u8; TOKEN_KEY_BYTES];
        assert!(s.put_user("a b", &creds(), &key).is_err());
        assert!(s.put_user("alice", &[], &key).is_err());
        let weak = vec![Credentials::new(Mechanism::ScramSha256, "pw", b"salt", 100)];
        assert!(s.put_user("alice", &weak, &key).unwrap_err().message.contains("iterations"));
        let twice = [creds(), creds()].concat();
        assert!(s.put_user("alice", &twice, &key).is_err());
        assert!(s.put_user("alice", &creds(), &[1, 2]).is_err());
        assert!(s.is_empty());
    }

    #[test]
    fn acls_are_validated_and_removed_exactly() {
        let mut s = SecurityState::default();
        let rule = AclRule {
            principal: "User:alice".into(),
            permission: Permission::Allow,
            operation: Operation::Read,
            resource: ResourceType::Topic,
            pattern: PatternType::Prefixed,
            name: "orders.".into(),
        };
        let bad = AclRule { principal: "alice".into(), ..rule.clone() };
        assert!(s.add_acls(&[rule.clone(), bad]).is_err());
        assert!(s.acls.is_empty(), "all or nothing");
        s.add_acls(&[rule.clone(), rule.clone()]).unwrap();
        assert_eq!(s.acls.len(), 1);
        let other = AclRule { pattern: PatternType::Literal, ..rule.clone() };
        assert_eq!(s.remove_acls(&[other]), 0);
        assert_eq!(s.remove_acls(&[rule]), 1);
    }

    #[test]
    fn a_users_own_quota_comes_before_the_default() {
        let mut s = SecurityState::default();
        let default = Quota { produce_bytes_per_sec: Some(100), ..Default::default() };
        let own = Quota { fetch_bytes_per_sec: Some(5), ..Default::default() };
        s.set_quota("User:*", Some(default)).unwrap();
        s.set_quota("User:alice", Some(own)).unwrap();
        assert_eq!(s.quota_of("User:alice"), own);
        assert_eq!(s.quota_of("User:bob"), default);
        assert_eq!(s.quota_of("Node:1"), Quota::default());
        s.set_quota("User:alice", None).unwrap();
        assert_eq!(s.quota_of("User:alice"), default);
        assert!(s.set_quota("alice", Some(own)).is_err());
    }
}
