//! Users, ACLs, quotas and tokens (docs/SECURITY.md). Changes go through the controller like
//! topic administration. Lists are asked of the controller first: any node answers from its own
//! committed metadata, and the controller's has every change it acknowledged.

use std::time::Duration;

use runnel_proto::v1;
use runnel_security::scram::{Credentials as Stored, Mechanism, MIN_ITERATIONS};

use crate::{broker_result, with_timeout, Client, ClientError};

/// SCRAM credentials of `password` for every mechanism, each with its own random salt: what the
/// cluster stores instead of the password, which never leaves this process.
pub fn scram_credentials(password: &str) -> Vec<v1::ScramCredential> {
    Mechanism::ALL
        .iter()
        .map(|m| {
            let salt: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
            let c = Stored::new(*m, password, &salt, MIN_ITERATIONS);
            v1::ScramCredential {
                mechanism: c.mechanism.name().to_string(),
                salt: c.salt.into(),
                iterations: c.iterations,
                stored_key: c.stored_key.into(),
                server_key: c.server_key.into(),
            }
        })
        .collect()
}

impl Client {
    /// Who the cluster takes this client to be.
    pub async fn who_am_i(&self) -> Result<v1::WhoAmIResponse, ClientError> {
        routed_call!(self, with_any_node, "ask", "who am I".to_string(), who_am_i, v1::WhoAmIRequest {})
    }

    /// A bearer token for this client's user (`user` `None`), or for another user (which needs
    /// the admin operation on the cluster), valid for `lifetime` (`None`: the node's default).
    /// Returns the token and when it expires (ms since the Unix epoch).
    pub async fn create_token(
        &self,
        user: Option<&str>,
        lifetime: Option<Duration>,
    ) -> Result<(String, u64), ClientError> {
        let req = v1::CreateTokenRequest {
            user: user.unwrap_or_default().to_string(),
            lifetime_secs: lifetime.map(|l| l.as_secs().max(1)).unwrap_or(0),
        };
        let target = match user {
            Some(u) => format!("for user '{u}'"),
            None => "for this user".to_string(),
        };
        let resp = routed_call!(self, with_any_node, "create a token", target, create_token, req.clone())?;
        Ok((resp.token, resp.expires_at_ms))
    }

    /// Creates user `name`, or sets a new password (which revokes the user's tokens). Only
    /// salted SCRAM credentials derived here are sent, never the password.
    pub async fn put_user(&self, name: &str, password: &str) -> Result<(), ClientError> {
        if password.is_empty() {
            return Err(ClientError::InvalidArgument("the password is empty".into()));
        }
        let credentials = scram_credentials(password);
        let req = v1::PutUserRequest { name: name.to_string(), credentials };
        routed_call!(self, with_controller, "create user", format!("'{name}'"), put_user, req.clone()).map(|_| ())
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let req = v1::DeleteUserRequest { name: name.to_string() };
        routed_call!(self, with_controller, "delete user", format!("'{name}'"), delete_user, req.clone()).map(|_| ())
    }

    pub async fn list_users(&self) -> Result<Vec<v1::UserInfo>, ClientError> {
        Ok(routed_call!(self, with_controller, "list", "users".to_string(), list_users, v1::ListUsersRequest {})?.users)
    }

    /// Adds access rules (all or nothing; each is checked and a bad one named).
    pub async fn add_acls(&self, rules: Vec<v1::AclRule>) -> Result<(), ClientError> {
        let req = v1::AddAclsRequest { rules };
        routed_call!(self, with_controller, "add", "ACLs".to_string(), add_acls, req.clone()).map(|_| ())
    }

    /// Removes these exact rules; returns how many existed.
    pub async fn remove_acls(&self, rules: Vec<v1::AclRule>) -> Result<u64, ClientError> {
        let req = v1::RemoveAclsRequest { rules };
        Ok(routed_call!(self, with_controller, "remove", "ACLs".to_string(), remove_acls, req.clone())?.removed)
    }

    /// The rules matching `filter` (empty fields match everything).
    pub async fn list_acls(&self, filter: v1::ListAclsRequest) -> Result<Vec<v1::AclRule>, ClientError> {
        Ok(routed_call!(self, with_controller, "list", "ACLs".to_string(), list_acls, filter.clone())?.rules)
    }

    /// Sets `principal`'s quota (`None`, or every limit unset: removes it).
    pub async fn set_quota(&self, principal: &str, quota: Option<v1::Quota>) -> Result<(), ClientError> {
        let req = v1::SetQuotaRequest { principal: principal.to_string(), quota };
        routed_call!(self, with_controller, "set the quota of", format!("'{principal}'"), set_quota, req.clone())
            .map(|_| ())
    }

    pub async fn list_quotas(&self) -> Result<Vec<v1::PrincipalQuota>, ClientError> {
        Ok(routed_call!(self, with_controller, "list", "quotas".to_string(), list_quotas, v1::ListQuotasRequest {})?
            .quotas)
    }
}
