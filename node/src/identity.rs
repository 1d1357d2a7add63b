//! The node's identity: a random [`NodeId`] drawn the first time a data directory is used and
//! kept in it (`node-id`, 32 hex digits), so that the node is the same node wherever it listens.
//! The engine records where copies live by this ID.

use dfs_proto::NodeId;
use std::io::{self, Write};
use std::path::Path;

/// The file under the data directory that holds the ID.
pub const FILE_NAME: &str = "node-id";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: String, source: io::Error },
    #[error(
        "{path} does not hold a node ID ({why}): restore it from a backup, or remove it to make this node a new \
         one (the engine then re-makes the copies it held elsewhere)"
    )]
    Malformed { path: String, why: String },
}

/// Reads the node's ID from `root`, or draws one and stores it durably if the directory has
/// none yet. Returns the ID and whether it is new.
pub fn load_or_create(root: &Path) -> Result<(NodeId, bool), IdentityError> {
    let path = root.join(FILE_NAME);
    let io_err = |what, p: &Path| {
        let path = p.display().to_string();
        move |source| IdentityError::Io { what, path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text
                .trim_end_matches('\n')
                .parse::<NodeId>()
                .map_err(|e| IdentityError::Malformed { path: path.display().to_string(), why: e.to_string() })?;
            Ok((id, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = NodeId::random().map_err(io_err("draw a node ID for", &path))?;
            // Written whole beside it, synced, then renamed into place and the directory synced:
            // a crash leaves either no ID or the whole ID, never a torn one.
            let tmp = root.join(format!(".{FILE_NAME}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(format!("{id}\n").as_bytes()).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
            std::fs::File::open(root).and_then(|d| d.sync_all()).map_err(io_err("sync", root))?;
            Ok((id, true))
        }
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_drawn_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (id, new) = load_or_create(dir.path()).unwrap();
        assert!(new);
        assert_eq!(load_or_create(dir.path()).unwrap(), (id, false));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap().0, id, "each directory draws its own");
        assert!(!dir.path().join(".node-id.tmp").exists());
    }

    #[test]
    fn a_damaged_id_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "not an id\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not hold a node ID") && err.contains("remove it"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(), "not an id\n", "left as it was");
    }
}
