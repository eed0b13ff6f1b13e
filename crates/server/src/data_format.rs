//! The version of what a node writes to its data directory, checked before anything is opened.
//!
//! Log entries and votes are stored in a binary encoding of openraft's types: a build whose types
//! differ would not fail to read an older directory, it would misread it. So every data directory
//! carries a `FORMAT` file, and a node refuses a directory of another format with an error naming
//! both, instead of starting on data it cannot interpret.
//!
//! Formats:
//! 1. Before the marker existed: leader ids ordered by (term, node id), several leaders per term.
//! 2. Standard Raft leader ids, one leader per term (docs/adr/0013).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// The format this build reads and writes.
pub const DATA_FORMAT: u32 = 2;

const FORMAT_FILE: &str = "FORMAT";
const PREFIX: &str = "runnel-data-format ";

/// What [`check_or_mark`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// A new directory, marked now (with an empty, durable `db_dir`).
    New,
    /// A directory of this format with its storage directory in place.
    Existing,
    /// Marked earlier, but the storage directory is gone (lost in a power failure, deleted by
    /// hand): whatever this node acknowledged is lost with it. The caller must not start as if
    /// the node were new — it could vote twice in a term — but repair first (docs/adr/0015).
    StorageLost(String),
}

/// Checks that `data_dir` holds data of [`DATA_FORMAT`], or marks a new (empty) one with it.
/// `db_dir` is where the storage engine keeps its files: present without a marker, it is format 1.
pub fn check_or_mark(data_dir: &Path, db_dir: &Path) -> anyhow::Result<DataDir> {
    let file = data_dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let found: u32 = text
                .trim()
                .strip_prefix(PREFIX)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{} does not name a data format: {:?}", file.display(), text.trim()))?;
            if found != DATA_FORMAT {
                bail!(
                    "the data directory {} holds data format {found}; this build reads only format {DATA_FORMAT}. \
                     Start this node on an empty data directory (its replicas are copied back from the other nodes) \
                     or run a build of format {found}",
                    data_dir.display()
                );
            }
            if !db_dir.exists() {
                return Ok(DataDir::StorageLost(format!(
                    "{} is marked as a data directory but its storage directory {} is missing",
                    data_dir.display(),
                    db_dir.display()
                )));
            }
            Ok(DataDir::Existing)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if db_dir.join("CURRENT").exists() {
                bail!(
                    "the data directory {} was written by an older build (data format 1, before format markers: \
                     several Raft leaders per term); this build reads only format {DATA_FORMAT}. \
                     Start this node on an empty data directory (its replicas are copied back from the other nodes)",
                    data_dir.display()
                );
            }
            std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            // Written whole and synced before the first byte of data: a crash leaves either no
            // marker on an empty directory, or the complete marker.
            let tmp = data_dir.join(format!("{FORMAT_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(format!("{PREFIX}{DATA_FORMAT}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &file)
                .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
            // The storage directory's own entry must be as durable as the marker: the engine syncs
            // what it creates inside it, not the directory's name in its parent. Without this a
            // power loss right after the first start could take the whole storage directory with
            // it (found by the chaos runner's power-loss filesystem).
            std::fs::create_dir_all(db_dir).with_context(|| format!("creating {}", db_dir.display()))?;
            std::fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", data_dir.display()))?;
            Ok(DataDir::New)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_marked_and_accepted_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(check_or_mark(&data, &data.join("db")).unwrap(), DataDir::New);
        assert_eq!(std::fs::read_to_string(data.join(FORMAT_FILE)).unwrap(), format!("{PREFIX}{DATA_FORMAT}\n"));
        assert!(data.join("db").is_dir(), "the storage directory is created with the marker");
        assert_eq!(check_or_mark(&data, &data.join("db")).unwrap(), DataDir::Existing);
    }

    #[test]
    fn a_marked_directory_whose_storage_vanished_is_reported_as_lost_not_new() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        check_or_mark(&data, &data.join("db")).unwrap();
        std::fs::remove_dir_all(data.join("db")).unwrap();
        match check_or_mark(&data, &data.join("db")).unwrap() {
            DataDir::StorageLost(why) => assert!(why.contains("db") && why.contains("missing"), "{why}"),
            other => panic!("expected StorageLost, got {other:?}"),
        }
    }

    #[test]
    fn data_without_a_marker_is_refused_naming_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("CURRENT"), "MANIFEST-000005\n").unwrap();
        let e = check_or_mark(dir.path(), &db).unwrap_err().to_string();
        assert!(e.contains("data format 1") && e.contains("format 2"), "{e}");
        assert!(!dir.path().join(FORMAT_FILE).exists(), "an old directory must not be re-marked");
    }

    #[test]
    fn another_format_or_a_garbled_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "runnel-data-format 7\n").unwrap();
        let e = check_or_mark(dir.path(), &dir.path().join("db")).unwrap_err().to_string();
        assert!(e.contains("format 7") && e.contains(&format!("only format {DATA_FORMAT}")), "{e}");
        std::fs::write(dir.path().join(FORMAT_FILE), "hello").unwrap();
        let e = format!("{:#}", check_or_mark(dir.path(), &dir.path().join("db")).unwrap_err());
        assert!(e.contains("does not name a data format"), "{e}");
    }
}
