//! The beacon's optional snapshot file: the registered nodes as JSON, written atomically
//! (a temporary file of its own, fsync, rename, fsync of the folder) so that a crash mid-write leaves the previous snapshot whole.
//!
//! Functions here block on the file system; the actor calls them through
//! `tokio::task::spawn_blocking`, never on its arbiter.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::{Node, NodeView};

/// Format version written in the file.
pub const FORMAT: u32 = 1;

/// Largest snapshot file read back, in bytes.
pub const MAX_SNAPSHOT_BYTES: u64 = 512 << 20;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    epoch: &'a str,
    rev: u64,
    nodes: &'a [Node],
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    nodes: Vec<NodeView>,
}

/// The snapshot of `nodes`, taken at revision `rev` of beacon run `epoch`, as bytes.
pub fn encode(epoch: &str, rev: u64, nodes: &[Node]) -> Vec<u8> {
    let out = SnapshotOut {
        format: FORMAT,
        epoch,
        rev,
        nodes,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// The nodes of a snapshot file's contents; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Vec<NodeView>, String> {
    let snapshot: SnapshotIn =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
            .map_err(|err| format!("at `{}`: {}", err.path(), err.inner()))?;
    if snapshot.format != FORMAT {
        return Err(format!(
            "format {} is not supported (expected {FORMAT})",
            snapshot.format
        ));
    }
    Ok(snapshot.nodes)
}

/// Why a snapshot could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be used at all (its directory is missing, it cannot be read): the
    /// beacon refuses to start rather than run without the persistence it was asked for.
    #[error("{0}")]
    Unusable(String),
    /// The file is there but its contents are not a snapshot: the beacon starts empty and
    /// overwrites it.
    #[error("{0}")]
    Damaged(String),
}

/// Checks that the directory the snapshot goes into exists.
pub fn check_directory(path: &Path) -> Result<(), ReadError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(ReadError::Unusable(
            format!("the directory {} does not exist", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Vec<NodeView>>, ReadError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ReadError::Unusable(err.to_string())),
    };
    if metadata.len() > MAX_SNAPSHOT_BYTES {
        return Err(ReadError::Damaged(format!(
            "{} bytes, larger than the {MAX_SNAPSHOT_BYTES} bytes a snapshot may be",
            metadata.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|err| ReadError::Unusable(err.to_string()))?;
    decode(&bytes).map(Some).map_err(ReadError::Damaged)
}

/// Replaces the file at `path` with `bytes`, atomically, through a temporary file of its own
/// (see [`troupe_core::atomic_file::write_atomically`]): a periodic save and the final save at
/// shutdown may run at the same time without sharing one.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    troupe_core::atomic_file::write_atomically(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Status;

    #[test]
    fn snapshots_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacon.json");
        assert_eq!(read(&path), Ok(None));
        let node = Node::new(NodeView {
            name: "a".into(),
            resource: "broker".into(),
            requires: vec!["ipc".into()],
            endpoints: [("frontend".to_string(), "tcp://h:1".to_string())].into(),
            offers: [
                (
                    "broker".to_string(),
                    [("frontend".to_string(), "tcp://h:1".to_string())].into(),
                ),
                ("ipc".to_string(), Default::default()),
            ]
            .into(),
            metadata: Default::default(),
            status: Status::Online,
            heartbeat_ms: 1000,
            last_seen_ms: None,
        });
        write(&path, &encode("e", 3, std::slice::from_ref(&node))).unwrap();
        assert_eq!(read(&path).unwrap().unwrap(), vec![(*node).clone()]);
        // Rewriting replaces the file.
        write(&path, &encode("e", 4, &[])).unwrap();
        assert_eq!(read(&path).unwrap().unwrap(), vec![]);
    }

    #[test]
    fn a_missing_directory_is_unusable() {
        let err = check_directory(Path::new("/nonexistent/dir/beacon.json")).unwrap_err();
        assert!(matches!(err, ReadError::Unusable(m) if m.contains("/nonexistent/dir")));
        assert!(check_directory(Path::new("beacon.json")).is_ok());
    }

    #[test]
    fn a_damaged_snapshot_is_reported_not_loaded() {
        let err = decode(br#"{"format":1,"nodes":[{"name":5}]}"#).unwrap_err();
        assert!(err.contains("nodes[0].name"), "{err}");
        let err = decode(br#"{"format":9,"nodes":[]}"#).unwrap_err();
        assert!(err.contains("format 9"), "{err}");
        assert!(decode(b"{trunc").is_err());
    }
}
