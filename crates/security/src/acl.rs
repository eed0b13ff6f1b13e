//! Access control lists: which principal may do what to which resource.
//!
//! The model is Kafka's, so that its users find what they know: a rule names a principal
//! (`User:alice`, or `User:*` for every authenticated user), allows or denies one operation, on
//! resources of one type whose names equal (literal) or start with (prefixed) a pattern; a literal
//! `*` matches every name. A request is allowed when a rule allows it and none denies it (deny
//! wins); nothing is allowed by default. Superusers (a configured list) and cluster nodes pass
//! every check. Read, write, delete and alter imply describe, as in Kafka: whoever may read a topic
//! may also see it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    /// Cluster administration: moving replicas and leaders, decommissioning nodes, managing
    /// users, ACLs and quotas.
    Admin,
    /// Every operation (in a rule only).
    All,
}

impl Operation {
    pub const NAMES: &'static str = "read, write, create, delete, alter, describe, admin, all";

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::Admin => "admin",
            Operation::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Some(match s.to_ascii_lowercase().as_str() {
            "read" => Operation::Read,
            "write" => Operation::Write,
            "create" => Operation::Create,
            "delete" => Operation::Delete,
            "alter" => Operation::Alter,
            "describe" => Operation::Describe,
            "admin" | "cluster-admin" | "cluster_admin" => Operation::Admin,
            "all" => Operation::All,
            _ => return None,
        })
    }

    /// Whether a rule for `self` covers a request for `requested`.
    fn covers(self, requested: Operation) -> bool {
        self == Operation::All || self == requested
    }

    /// Whether allowing `self` also allows `requested` (read/write/delete/alter imply describe).
    fn implies(self, requested: Operation) -> bool {
        self.covers(requested)
            || (requested == Operation::Describe
                && matches!(self, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter))
    }
}

/// The kind of thing a rule protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Queue,
    Exchange,
    /// The cluster as a whole (its name is always `cluster`).
    Cluster,
}

impl ResourceType {
    pub const NAMES: &'static str = "topic, group, queue, exchange, cluster";

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Queue => "queue",
            ResourceType::Exchange => "exchange",
            ResourceType::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<ResourceType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "topic" => ResourceType::Topic,
            "group" => ResourceType::Group,
            "queue" => ResourceType::Queue,
            "exchange" => ResourceType::Exchange,
            "cluster" => ResourceType::Cluster,
            _ => return None,
        })
    }
}

/// The name of the one cluster resource.
pub const CLUSTER: &str = "cluster";

/// How a rule's name matches resource names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name itself, or every name when the rule's name is `*`.
    Literal,
    /// Every name that starts with the rule's name.
    Prefixed,
}

impl PatternType {
    pub fn as_str(self) -> &'static str {
        match self {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        }
    }
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRule {
    /// `User:<name>`, or `User:*` for every authenticated user.
    pub principal: String,
    pub permission: Permission,
    pub operation: Operation,
    pub resource: ResourceType,
    pub pattern: PatternType,
    /// The resource name, name prefix, or `*`.
    pub name: String,
}

impl AclRule {
    /// Checks a rule before it is stored: a known principal form, a non-empty name, and a cluster
    /// rule naming the cluster.
    pub fn validate(&self) -> Result<(), String> {
        let Some(user) = self.principal.strip_prefix("User:") else {
            return Err(format!("principal '{}' must be 'User:<name>' or 'User:*'", self.principal));
        };
        if user.is_empty() {
            return Err(format!("principal '{}' names no user", self.principal));
        }
        if self.name.is_empty() {
            return Err("the resource name is empty (use '*' for every name)".into());
        }
        if self.resource == ResourceType::Cluster && self.name != CLUSTER && self.name != "*" {
            return Err(format!("a cluster rule's resource name is '{CLUSTER}', not '{}'", self.name));
        }
        if self.pattern == PatternType::Prefixed && self.name == "*" {
            return Err("a prefixed rule with the name '*' matches only names starting with '*'; \
                        use a literal '*' for every name"
                .into());
        }
        Ok(())
    }

    fn matches_principal(&self, principal: &str) -> bool {
        self.principal == principal || (self.principal == "User:*" && principal.starts_with("User:"))
    }

    fn matches_resource(&self, resource: ResourceType, name: &str) -> bool {
        self.resource == resource
            && match self.pattern {
                PatternType::Literal => self.name == "*" || self.name == name,
                PatternType::Prefixed => name.starts_with(&self.name),
            }
    }
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {} {} '{}'",
            self.principal,
            self.permission.as_str(),
            self.operation.as_str(),
            self.resource.as_str(),
            self.pattern.as_str(),
            self.name
        )
    }
}

/// Longest user name.
pub const MAX_USER_NAME: usize = 128;

/// Checks a user name: 1 to 128 letters, digits and `._@-` (so names are safe in principals,
/// tokens, logs and SCRAM messages).
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err(format!("user name '{name}' must be 1 to {MAX_USER_NAME} characters long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._@-".contains(*c))) {
        return Err(format!("user name '{name}' contains '{c}'; use letters, digits and . _ @ -"));
    }
    Ok(())
}

/// Who is making a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Authentication is not required on this node: every request is allowed.
    Anonymous,
    /// A cluster node (a node certificate): forwards requests it has already checked.
    Node(u64),
    /// A user: by password (SCRAM), a token issued to the user, or a client certificate.
    User(String),
}

impl Principal {
    /// Reads a principal's name (`User:<name>` or `Node:<id>`).
    pub fn parse(name: &str) -> Option<Principal> {
        if let Some(user) = name.strip_prefix("User:") {
            return validate_user_name(user).is_ok().then(|| Principal::User(user.to_string()));
        }
        name.strip_prefix("Node:").and_then(|id| id.parse().ok()).map(Principal::Node)
    }

    /// The name rules and quotas use: `User:<name>`, `Node:<id>` or `Anonymous`.
    pub fn name(&self) -> String {
        match self {
            Principal::Anonymous => "Anonymous".into(),
            Principal::Node(id) => format!("Node:{id}"),
            Principal::User(u) => format!("User:{u}"),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The outcome of a check, with the reason for a log line or an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// A rule denies it (the rule is named).
    Denied(AclRule),
    /// No rule allows it.
    NoRule,
}

/// Whether `principal` may do `operation` to the `resource` named `name`.
pub fn authorize<'a>(
    rules: impl IntoIterator<Item = &'a AclRule>,
    superusers: &[String],
    principal: &Principal,
    operation: Operation,
    resource: ResourceType,
    name: &str,
) -> Decision {
    let who = match principal {
        Principal::Anonymous | Principal::Node(_) => return Decision::Allowed,
        Principal::User(_) => principal.name(),
    };
    if superusers.contains(&who) {
        return Decision::Allowed;
    }
    let relevant = rules.into_iter().filter(|r| r.matches_principal(&who) && r.matches_resource(resource, name));
    let mut allowed = false;
    for rule in relevant {
        match rule.permission {
            // Deny wins: a deny of the operation itself (or of all operations) settles it.
            Permission::Deny if rule.operation.covers(operation) => return Decision::Denied(rule.clone()),
            Permission::Deny => {}
            Permission::Allow => allowed |= rule.operation.implies(operation),
        }
    }
    if allowed {
        Decision::Allowed
    } else {
        Decision::NoRule
    }
}

/// Whether any rule lets `principal` do `operation` to some resource of type `resource` (used
/// where Kafka asks the same: an idempotent producer needs write access to at least one topic).
pub fn allows_any<'a>(
    rules: impl IntoIterator<Item = &'a AclRule>,
    superusers: &[String],
    principal: &Principal,
    operation: Operation,
    resource: ResourceType,
) -> bool {
    let who = match principal {
        Principal::Anonymous | Principal::Node(_) => return true,
        Principal::User(_) => principal.name(),
    };
    superusers.contains(&who)
        || rules.into_iter().any(|r| {
            r.permission == Permission::Allow
                && r.resource == resource
                && r.matches_principal(&who)
                && r.operation.implies(operation)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, permission: Permission, op: Operation, pattern: PatternType, name: &str) -> AclRule {
        AclRule {
            principal: principal.into(),
            permission,
            operation: op,
            resource: ResourceType::Topic,
            pattern,
            name: name.into(),
        }
    }

    fn alice() -> Principal {
        Principal::User("alice".into())
    }

    fn check(rules: &[AclRule], op: Operation, name: &str) -> Decision {
        authorize(rules, &[], &alice(), op, ResourceType::Topic, name)
    }

    #[test]
    fn nothing_is_allowed_without_a_rule() {
        assert_eq!(check(&[], Operation::Read, "orders"), Decision::NoRule);
        let bob = [rule("User:bob", Permission::Allow, Operation::Read, PatternType::Literal, "orders")];
        assert_eq!(check(&bob, Operation::Read, "orders"), Decision::NoRule);
    }

    #[test]
    fn a_literal_rule_matches_only_its_name() {
        let r = [rule("User:alice", Permission::Allow, Operation::Read, PatternType::Literal, "orders")];
        assert_eq!(check(&r, Operation::Read, "orders"), Decision::Allowed);
        assert_eq!(check(&r, Operation::Read, "orders2"), Decision::NoRule);
        assert_eq!(check(&r, Operation::Write, "orders"), Decision::NoRule);
    }

    #[test]
    fn a_prefixed_rule_matches_only_its_prefix() {
        let r = [rule("User:alice", Permission::Allow, Operation::Write, PatternType::Prefixed, "team-a.")];
        assert_eq!(check(&r, Operation::Write, "team-a.orders"), Decision::Allowed);
        assert_eq!(check(&r, Operation::Write, "team-a."), Decision::Allowed);
        assert_eq!(check(&r, Operation::Write, "team-b.orders"), Decision::NoRule);
        assert_eq!(check(&r, Operation::Write, "team-a"), Decision::NoRule);
    }

    #[test]
    fn deny_wins_over_allow() {
        let deny = rule("User:alice", Permission::Deny, Operation::Read, PatternType::Literal, "secret");
        let r = [rule("User:*", Permission::Allow, Operation::All, PatternType::Literal, "*"), deny.clone()];
        assert_eq!(check(&r, Operation::Read, "secret"), Decision::Denied(deny));
        assert_eq!(check(&r, Operation::Write, "secret"), Decision::Allowed);
        assert_eq!(check(&r, Operation::Read, "public"), Decision::Allowed);
    }

    #[test]
    fn read_implies_describe_but_not_the_reverse() {
        let r = [rule("User:alice", Permission::Allow, Operation::Read, PatternType::Literal, "orders")];
        assert_eq!(check(&r, Operation::Describe, "orders"), Decision::Allowed);
        let d = [rule("User:alice", Permission::Allow, Operation::Describe, PatternType::Literal, "orders")];
        assert_eq!(check(&d, Operation::Read, "orders"), Decision::NoRule);
    }

    #[test]
    fn superusers_and_nodes_pass_and_the_wildcard_user_means_every_user() {
        assert_eq!(
            authorize(&[], &["User:alice".into()], &alice(), Operation::Admin, ResourceType::Cluster, CLUSTER),
            Decision::Allowed
        );
        assert_eq!(
            authorize(&[], &[], &Principal::Node(2), Operation::Admin, ResourceType::Cluster, CLUSTER),
            Decision::Allowed
        );
        let everyone = [rule("User:*", Permission::Allow, Operation::Describe, PatternType::Literal, "*")];
        assert_eq!(check(&everyone, Operation::Describe, "x"), Decision::Allowed);
        assert!(allows_any(&everyone, &[], &alice(), Operation::Describe, ResourceType::Topic));
        assert!(!allows_any(&everyone, &[], &alice(), Operation::Write, ResourceType::Topic));
    }

    #[test]
    fn rules_are_validated() {
        let mut r = rule("alice", Permission::Allow, Operation::Read, PatternType::Literal, "t");
        assert!(r.validate().unwrap_err().contains("User:"));
        r.principal = "User:alice".into();
        assert!(r.validate().is_ok());
        r.name.clear();
        assert!(r.validate().is_err());
        r.resource = ResourceType::Cluster;
        r.name = "orders".into();
        assert!(r.validate().unwrap_err().contains("cluster"));
    }
}
