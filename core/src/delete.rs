//! Deleting a file: its record goes first, then its copies, best effort. In that order a file
//! is never listed with a copy already deleted, and a copy left behind (a node down, a delete
//! lost) is an orphan that gc collects after its grace period. The engine runs [`delete_file`]
//! over its metadata and node connections (`engine/src/server.rs`), `dfs-sim` over simulated
//! ones.

use dfs_proto::{ChunkId, FileId};

/// What deleting a file needs.
#[allow(async_fn_in_trait)]
pub trait DeleteIo {
    type Node;
    type Error;
    /// Removes the file's record. Ok(None): no such file. Ok(Some): the copies it placed, as
    /// (chunk, node).
    async fn remove_record(&self, file_id: FileId) -> Result<Option<Vec<(ChunkId, Self::Node)>>, Self::Error>;
    /// Deletes the copies of a file whose record is gone, best effort (the engine does it in
    /// the background and the client is answered meanwhile).
    fn delete_copies(&self, copies: Vec<(ChunkId, Self::Node)>);
}

/// Deletes file `file_id`: false when there is no such file.
pub async fn delete_file<D: DeleteIo>(io: &D, file_id: FileId) -> Result<bool, D::Error> {
    let Some(copies) = io.remove_record(file_id).await? else { return Ok(false) };
    assert!(copies.iter().all(|(c, _)| c.file_id == file_id), "a record places only its own file's chunks");
    io.delete_copies(copies);
    Ok(true)
}
