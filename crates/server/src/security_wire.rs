//! Users, ACLs and quotas between their wire form (`runnel.v1`, strings for enums so that every
//! client can write them) and their stored form (`runnel_security`). Every bad value is named.

use runnel_proto::v1;
use runnel_security::acl::{AclRule, Operation, PatternType, Permission, ResourceType};
use runnel_security::quota::Quota;
use runnel_security::scram::{Credentials, Mechanism};
use runnel_types::{ErrorCode, RunnelError};

fn invalid(message: String) -> RunnelError {
    RunnelError::new(ErrorCode::InvalidRequest, message)
}

pub fn credentials_from_proto(list: &[v1::ScramCredential]) -> Result<Vec<Credentials>, RunnelError> {
    list.iter()
        .map(|c| {
            let mechanism = Mechanism::from_name(&c.mechanism).ok_or_else(|| {
                invalid(format!("unknown SCRAM mechanism '{}'; use SCRAM-SHA-256 or SCRAM-SHA-512", c.mechanism))
            })?;
            Ok(Credentials {
                mechanism,
                salt: c.salt.to_vec(),
                iterations: c.iterations,
                stored_key: c.stored_key.to_vec(),
                server_key: c.server_key.to_vec(),
            })
        })
        .collect()
}

pub fn acl_from_proto(r: &v1::AclRule) -> Result<AclRule, RunnelError> {
    let permission = match r.permission.to_ascii_lowercase().as_str() {
        "allow" => Permission::Allow,
        "deny" => Permission::Deny,
        other => return Err(invalid(format!("unknown ACL permission '{other}'; use allow or deny"))),
    };
    let operation = Operation::parse(&r.operation)
        .ok_or_else(|| invalid(format!("unknown ACL operation '{}'; use one of {}", r.operation, Operation::NAMES)))?;
    let resource = ResourceType::parse(&r.resource_type).ok_or_else(|| {
        invalid(format!("unknown ACL resource type '{}'; use one of {}", r.resource_type, ResourceType::NAMES))
    })?;
    let pattern = match r.pattern_type.to_ascii_lowercase().as_str() {
        "" | "literal" => PatternType::Literal,
        "prefixed" => PatternType::Prefixed,
        other => return Err(invalid(format!("unknown ACL pattern type '{other}'; use literal or prefixed"))),
    };
    let rule =
        AclRule { principal: r.principal.clone(), permission, operation, resource, pattern, name: r.name.clone() };
    rule.validate().map_err(|e| invalid(format!("ACL {rule}: {e}")))?;
    Ok(rule)
}

pub fn acl_to_proto(r: &AclRule) -> v1::AclRule {
    v1::AclRule {
        principal: r.principal.clone(),
        permission: r.permission.as_str().to_string(),
        operation: r.operation.as_str().to_string(),
        resource_type: r.resource.as_str().to_string(),
        pattern_type: r.pattern.as_str().to_string(),
        name: r.name.clone(),
    }
}

pub fn quota_from_proto(q: &v1::Quota) -> Quota {
    Quota {
        produce_bytes_per_sec: q.produce_bytes_per_sec,
        fetch_bytes_per_sec: q.fetch_bytes_per_sec,
        requests_per_sec: q.requests_per_sec,
    }
}

pub fn quota_to_proto(q: &Quota) -> v1::Quota {
    v1::Quota {
        produce_bytes_per_sec: q.produce_bytes_per_sec,
        fetch_bytes_per_sec: q.fetch_bytes_per_sec,
        requests_per_sec: q.requests_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_and_bad_values_are_named() {
        let wire = v1::AclRule {
            principal: "User:alice".into(),
            permission: "Deny".into(),
            operation: "write".into(),
            resource_type: "topic".into(),
            pattern_type: "prefixed".into(),
            name: "orders.".into(),
        };
        let rule = acl_from_proto(&wire).unwrap();
        assert_eq!(rule.permission, Permission::Deny);
        let back = acl_to_proto(&rule);
        assert_eq!(acl_from_proto(&back).unwrap(), rule);
        let e = acl_from_proto(&v1::AclRule { operation: "scribble".into(), ..wire.clone() }).unwrap_err();
        assert!(e.message.contains("'scribble'"), "{}", e.message);
        let e = acl_from_proto(&v1::AclRule { resource_type: "table".into(), ..wire.clone() }).unwrap_err();
        assert!(e.message.contains("'table'"), "{}", e.message);
        let e = acl_from_proto(&v1::AclRule { principal: "alice".into(), ..wire }).unwrap_err();
        assert!(e.message.contains("User:"), "{}", e.message);
    }
}
