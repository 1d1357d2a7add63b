//! A committed chunk file opened for reading (FETCH, EXISTS): its footer read and checked first,
//! then its blocks, each checked against the footer's crc32 for it.

use super::footer::{Footer, FooterError, FOOTER_FIXED_BYTES};
use super::ChunkStore;
use crate::store::{check_block, ChunkError};
use dfs_proto::layout::block_len;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::ChunkId;
use dfs_runtime::backend::fs::{File, OpenOptions};
use dfs_runtime::splice::{dup_fd, SharedFd};
use std::io;
use std::os::fd::AsRawFd;
use tokio_uring::buf::BoundedBuf;

/// A chunk file open for reading, with its footer.
pub(crate) struct ChunkFile {
    chunk_id: ChunkId,
    file: File,
    footer: Footer,
}

impl ChunkStore {
    /// Opens a committed chunk without following symlinks, and reads and checks its footer.
    pub(crate) async fn open_chunk(&self, chunk_id: ChunkId) -> Result<ChunkFile, ChunkError> {
        let path = self.chunk_path(&chunk_id);
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChunkError::NotFound(chunk_id)),
            Err(e) => return Err(ChunkError::io(format!("cannot open chunk {chunk_id}"))(e)),
        };
        let corrupt = |e: FooterError| ChunkError::Corrupt(chunk_id, e.to_string());
        let file_len = file.len().await.map_err(ChunkError::io(format!("cannot stat chunk {chunk_id}")))?;
        if file_len < FOOTER_FIXED_BYTES as u64 {
            return Err(corrupt(FooterError::TooShort(file_len)));
        }
        let tail_at = file_len - FOOTER_FIXED_BYTES as u64;
        let (res, tail) = file.read_exact_at(vec![0u8; FOOTER_FIXED_BYTES], tail_at).await;
        res.map_err(ChunkError::io(format!("cannot read chunk {chunk_id}")))?;
        let (length, _) = Footer::parse_tail(&tail, file_len).map_err(corrupt)?;
        let footer_len = Footer::encoded_len(length);
        let (res, bytes) = file.read_exact_at(vec![0u8; footer_len as usize], length).await;
        res.map_err(ChunkError::io(format!("cannot read chunk {chunk_id}")))?;
        let footer = Footer::decode(&bytes, chunk_id).map_err(corrupt)?;
        Ok(ChunkFile { chunk_id, file, footer })
    }
}

impl ChunkFile {
    pub(crate) fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Reads block `block_idx` into the front of `buf` and checks it against its crc32.
    pub(crate) async fn read_block(&self, buf: Vec<u8>, block_idx: u64) -> (Result<(), ChunkError>, Vec<u8>) {
        let chunk_id = self.chunk_id;
        let len = block_len(self.footer.length, block_idx) as usize;
        let offset = block_idx * BLOCK_SIZE_BYTES as u64;
        let (res, slice) = self.file.read_exact_at(buf.slice(0..len), offset).await;
        let buf = slice.into_inner();
        let checked = res
            .map_err(ChunkError::io(format!("cannot read chunk {chunk_id}")))
            .and_then(|()| check_block(chunk_id, block_idx, &buf[..len], self.footer.block_crcs[block_idx as usize]));
        (checked, buf)
    }

    /// A descriptor of the file of its own, for splicing its pages into a socket; a block's data
    /// lies at `block_idx * BLOCK_SIZE_BYTES` (the footer comes after the data).
    pub(crate) fn dup_fd(&self) -> io::Result<SharedFd> {
        dup_fd(self.file.as_raw_fd())
    }

    /// Closes the file (best effort: it was only read).
    pub(crate) async fn close(self) {
        let _ = self.file.close().await;
    }
}
