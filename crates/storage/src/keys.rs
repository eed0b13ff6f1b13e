//! Key layouts. Big-endian so byte order is numeric order; group id first so each group's keys
//! are contiguous and a group can be dropped with one range delete.

use runnel_types::GroupId;

pub fn group_key(group: GroupId, suffix: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&suffix.to_be_bytes());
    k
}

/// The first key of `group` (inclusive).
pub fn group_start(group: GroupId) -> Vec<u8> {
    group.to_be_bytes().to_vec()
}

/// The first key after `group` (exclusive end of its range).
pub fn group_end(group: GroupId) -> Vec<u8> {
    match group.checked_add(1) {
        Some(g) => g.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    }
}

/// The u64 after the 8-byte group prefix; `None` if the key is not a group key.
pub fn key_suffix(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// A named per-group state key, e.g. (group, "vote").
pub fn state_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}
