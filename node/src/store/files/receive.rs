//! A chunk being received into a file (STORE): written under a temp name beside its final one,
//! its last piece held back and written with the footer once the crc32 matched, then synced
//! (per chunk, or by the group sync) and renamed into place without replacing anything. The
//! temp file is removed on any failure, and the chunk exists only once it is durable.

use super::footer::Footer;
use super::sync::GroupSync;
use super::ChunkStore;
use crate::store::ChunkError;
use dfs_proto::layout::BlockHasher;
use dfs_proto::ChunkId;
use dfs_runtime::backend::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use tokio_uring::buf::BoundedBuf;

/// Removes a temp file unless the chunk was committed.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove temp file {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// A chunk of `length` bytes being received: the pieces that came so far, written to its temp
/// file, or why it is refused (the rest of its body is then only read through).
pub(crate) struct Incoming<'a> {
    store: &'a ChunkStore,
    chunk_id: ChunkId,
    length: u64,
    /// The crc32 the engine announced for the chunk.
    crc32: u32,
    file: Option<File>,
    temp: TempGuard,
    failed: Option<ChunkError>,
    hasher: BlockHasher,
    /// The last piece, written together with the footer after the crc32 check, so a chunk that
    /// fits one buffer costs one write.
    last: Vec<u8>,
}

impl ChunkStore {
    /// Begins receiving chunk `chunk_id` of `length` bytes whose crc32 is announced as `crc32`:
    /// a temp file, unless the chunk exists (then the refusal is kept for
    /// [`Incoming::finish`]). Error: no temp name could be drawn.
    pub(crate) async fn receive(&self, chunk_id: ChunkId, length: u64, crc32: u32) -> io::Result<Incoming<'_>> {
        let final_path = self.chunk_path(&chunk_id);
        let temp_path = self.temp_path(&chunk_id)?;
        let mut incoming = Incoming {
            store: self,
            chunk_id,
            length,
            crc32,
            file: None,
            temp: TempGuard { path: temp_path, armed: false },
            failed: None,
            hasher: BlockHasher::new(),
            last: Vec::new(),
        };
        if final_path.exists() {
            incoming.failed = Some(ChunkError::AlreadyExists(chunk_id));
        } else {
            incoming.temp.armed = true;
            match OpenOptions::new().write(true).create_new(true).open(&incoming.temp.path).await {
                Ok(f) => incoming.file = Some(f),
                Err(e) => {
                    let context = format!("cannot create {}", incoming.temp.path.display());
                    incoming.failed = Some(ChunkError::io(context)(e));
                }
            }
        }
        Ok(incoming)
    }
}

impl Incoming<'_> {
    /// Takes the piece in `buf[..n]`, at `pos` in the chunk: hashed, and written unless it is the
    /// last (or the chunk is already refused). Gives `buf` back for the next piece.
    pub(crate) async fn received(&mut self, mut buf: Vec<u8>, n: usize, pos: u64) -> Vec<u8> {
        let is_last = pos + n as u64 == self.length;
        if let (None, Some(f)) = (&self.failed, &self.file) {
            self.hasher.update(&buf[..n]);
            if is_last {
                self.last = Vec::with_capacity(n + Footer::encoded_len(self.length) as usize);
                self.last.extend_from_slice(&buf[..n]);
            } else {
                let (res, slice) = f.write_all_at(buf.slice(0..n), pos).await;
                buf = slice.into_inner();
                if let Err(e) = res {
                    self.failed = Some(ChunkError::io(format!("cannot write chunk {}", self.chunk_id))(e));
                }
            }
        }
        buf
    }

    /// Once the whole body was received: checks the crc32 announced, writes the last piece and
    /// the footer, and commits. Ok: the block crc32s of a chunk that is now durable in place.
    pub(crate) async fn finish(mut self, group_sync: Option<&GroupSync>) -> Result<Vec<u32>, ChunkError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let file = self.file.take().expect("no failure means the temp file is open");
        let (chunk_id, crc32) = (self.chunk_id, self.crc32);
        let (actual, block_crcs) = std::mem::take(&mut self.hasher).finish();
        if actual != crc32 {
            return Err(ChunkError::ChecksumMismatch { chunk: chunk_id, announced: crc32, actual });
        }
        let footer = Footer { chunk_id, length: self.length, crc32, block_crcs };
        let mut tail = std::mem::take(&mut self.last);
        let tail_at = self.length - tail.len() as u64;
        tail.extend_from_slice(&footer.encode());
        let res = self.commit(file, tail, tail_at, group_sync).await;
        if res.is_ok() {
            self.temp.armed = false;
        }
        res.map(|()| footer.block_crcs)
    }

    /// Last data and footer, fdatasync, no-replace rename, directory fsync: the chunk exists
    /// only once durable.
    async fn commit(
        &self,
        file: File,
        tail: Vec<u8>,
        tail_at: u64,
        group_sync: Option<&GroupSync>,
    ) -> Result<(), ChunkError> {
        let id = self.chunk_id;
        let tail_len = tail.len() as u64;
        let (res, _) = file.write_all_at(tail, tail_at).await;
        res.map_err(ChunkError::io(format!("cannot write chunk {id}")))?;
        if group_sync.is_none() {
            file.sync_data().await.map_err(ChunkError::io(format!("cannot sync chunk {id}")))?;
        }
        file.close().await.map_err(ChunkError::io(format!("cannot close chunk {id}")))?;
        let dir = self.store.chunk_dir_fd(&id);
        let temp_name = self.temp.path.file_name().and_then(|n| n.to_str()).expect("temp names are ASCII");
        match dfs_runtime::ops::rename_noreplace(dir, temp_name, dir, &id.file_name()).await {
            Ok(()) => self.store.note_added(tail_at + tail_len),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(ChunkError::AlreadyExists(id)),
            Err(e) => return Err(ChunkError::io(format!("cannot rename chunk {id} into place"))(e)),
        }
        match group_sync {
            // The file's data and its new name are durable once a sync that started after the
            // rename has finished.
            Some(group) => group.sync().await.map_err(ChunkError::io(format!("cannot sync chunk {id}"))),
            None => dfs_runtime::ops::fsync(dir)
                .await
                .map_err(ChunkError::io(format!("cannot sync directory of chunk {id}"))),
        }
    }
}
