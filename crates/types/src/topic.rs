//! Topic names and per-topic configuration, validated with errors that name the field and value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::RunnelError;

/// Kafka's rule: 1..=249 characters from `[a-zA-Z0-9._-]`; `.` and `..` are reserved.
pub fn validate_topic_name(name: &str) -> Result<(), RunnelError> {
    let bad = |why: &str| Err(RunnelError::invalid_config("topic name", name, why));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("must be at most 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// The configuration a topic was created with. Unknown keys are rejected, not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Largest single record (key + value + headers), bytes.
    pub max_record_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self { max_record_bytes: DEFAULT_MAX_RECORD_BYTES }
    }
}

pub const KEY_MAX_RECORD_BYTES: &str = "max.record.bytes";

impl TopicConfig {
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, RunnelError> {
        let mut cfg = TopicConfig::default();
        for (k, v) in map {
            match k.as_str() {
                KEY_MAX_RECORD_BYTES => {
                    let n: u64 =
                        v.parse().map_err(|_| RunnelError::invalid_config(k, v, "expected a whole number of bytes"))?;
                    if n == 0 || n > MAX_RECORD_BYTES_LIMIT {
                        return Err(RunnelError::invalid_config(
                            k,
                            v,
                            &format!("must be between 1 and {MAX_RECORD_BYTES_LIMIT}"),
                        ));
                    }
                    cfg.max_record_bytes = n;
                }
                other => {
                    return Err(RunnelError::invalid_config(
                        other,
                        v,
                        &format!("unknown topic config key (known: {KEY_MAX_RECORD_BYTES})"),
                    ))
                }
            }
        }
        Ok(cfg)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(KEY_MAX_RECORD_BYTES.to_string(), self.max_record_bytes.to_string())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        let e = validate_topic_name("bad name").unwrap_err();
        assert!(e.message.contains("'bad name'"), "{e}");
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn config_errors_name_field_and_value() {
        let m = BTreeMap::from([("max.record.bytes".to_string(), "lots".to_string())]);
        let e = TopicConfig::from_map(&m).unwrap_err();
        assert!(e.message.contains("max.record.bytes") && e.message.contains("lots"), "{e}");
        let m = BTreeMap::from([("retention".to_string(), "1".to_string())]);
        assert!(TopicConfig::from_map(&m).unwrap_err().message.contains("unknown"));
        let m = BTreeMap::from([("max.record.bytes".to_string(), "2048".to_string())]);
        assert_eq!(TopicConfig::from_map(&m).unwrap().max_record_bytes, 2048);
    }
}
