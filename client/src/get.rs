//! Download with end-to-end verification. The engine answers Get with the file's chunk table
//! (GetOk), the file's bytes in order as Data frames, then End; it may send an Error frame
//! instead at any point. The client recomputes each chunk's crc32 as its bytes stream by and
//! compares it with the table the moment the chunk is complete, so a chunk corrupted on a node,
//! in the engine or on the wire is named rather than delivered.
//!
//! Downloading to a path goes through a temporary file next to the destination that is synced
//! and renamed into place only after End and full verification; on any failure it is removed,
//! so a destination path either holds the whole, verified file or is left untouched.

use crate::error::{ClientError, IntegrityError, Result};
use crate::{check_file_id, connection_error, unexpected, Client, Progress, IO_TIMEOUT};
use dfs_proto::io_std::{self, Frame};
use dfs_proto::limits::{MAX_DATA_FRAME_BYTES, MAX_FILE_SIZE_BYTES};
use dfs_proto::{ChunkInfo, FileId, FileInfo, Msg};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The longest piece of the destination's name kept in the temporary file's name, so that the
/// prefix and suffix never push it over the usual 255-byte file name limit.
const TEMP_NAME_KEEP_BYTES: usize = 128;

impl Client {
    /// Downloads a file into `out` and returns its description. Bytes reach `out` as they
    /// arrive, before the chunk they belong to has been verified: on an error part of the file
    /// (possibly including bytes of a corrupt chunk) may already have been written.
    pub fn get_to_writer(
        &mut self,
        file_id: FileId,
        out: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<FileInfo> {
        let info = self.start_get(file_id)?;
        let mut write = |data: &[u8]| out.write_all(data).map_err(ClientError::Output);
        self.run(false, |c| c.receive(&info, &mut write, progress))?;
        out.flush().map_err(ClientError::Output)?;
        Ok(info)
    }

    /// Downloads a file to `path`, replacing any file there, and returns its description.
    /// `path` appears only once the whole file has arrived, verified and synced to disk.
    pub fn get_to_path(&mut self, file_id: FileId, path: &Path, progress: &mut dyn Progress) -> Result<FileInfo> {
        // The temporary file comes first: an unwritable destination is refused before the
        // engine starts gathering chunks from its nodes.
        let mut partial = PartialFile::create(path)?;
        let info = self.start_get(file_id)?;
        partial.preallocate(info.size)?;
        let mut write = |data: &[u8]| partial.write(data);
        self.run(false, |c| c.receive(&info, &mut write, progress))?;
        partial.persist()?;
        Ok(info)
    }

    /// Sends Get and reads GetOk. A refusal here (such as "not found") is a complete answer and
    /// leaves the connection usable.
    fn start_get(&mut self, file_id: FileId) -> Result<FileInfo> {
        self.run(true, |c| {
            let info = match c.request(&Msg::Get { file_id }, "GetOk")? {
                Msg::GetOk(info) => check_file_id(info, file_id)?,
                other => return Err(unexpected(&other, "GetOk")),
            };
            check_chunk_table(&info)?;
            Ok(info)
        })
    }

    /// Reads the Data frames of a download up to End, verifying them and passing them to `write`.
    fn receive(
        &mut self,
        info: &FileInfo,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        self.receive_from(info, &mut Resume::default(), write, progress)
    }

    /// A download that goes on where an earlier one of the same file (on another engine)
    /// stopped: sends Get, checks that the chunk table is the one `table` holds (or records it,
    /// the first time, after `on_table`), then receives the file, passing to `write` only the
    /// bytes past what `resume` says was written. See [`Resume`].
    pub(crate) fn get_resuming(
        &mut self,
        file_id: FileId,
        table: &mut Option<FileInfo>,
        resume: &mut Resume,
        on_table: &mut dyn FnMut(&FileInfo) -> Result<()>,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
        progress: &mut dyn Progress,
    ) -> Result<FileInfo> {
        let info = self.start_get(file_id)?;
        match table {
            Some(before) if *before != info => {
                return Err(ClientError::Protocol(format!(
                    "engine {} describes file {file_id} otherwise than the engine the download began on",
                    self.engine_addr()
                )))
            }
            Some(_) => {}
            None => {
                on_table(&info)?;
                *table = Some(info.clone());
            }
        }
        self.run(false, |c| c.receive_from(&info, resume, write, progress))?;
        Ok(info)
    }

    /// [`Client::receive`] for a download that goes on from `resume`.
    fn receive_from(
        &mut self,
        info: &FileInfo,
        resume: &mut Resume,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let mut verifier = StreamVerifier::new(info);
        // A data frame is at most one block, and never more than the bytes still expected.
        let buf_len = info.size.min(MAX_DATA_FRAME_BYTES as u64) as usize;
        let mut buf = vec![0u8; buf_len];
        let skip = resume.written;
        if skip == 0 {
            progress.start(info.size);
        }
        loop {
            match self.recv("receiving file data")? {
                Frame::Data(len) => {
                    verifier.check_room(len as u64)?;
                    let data = buf.get_mut(..len as usize).ok_or_else(|| {
                        ClientError::Protocol(format!("data frame of {len} bytes is larger than any allowed here"))
                    })?;
                    io_std::read_data(&mut self.reader, data)
                        .map_err(|e| connection_error("receiving file data", e, IO_TIMEOUT))?;
                    // Bytes already written by the download this one continues are verified,
                    // not written again; where they end, the open chunk's crc32 so far must
                    // be the one the earlier download had written.
                    let already = skip.saturating_sub(verifier.received_bytes).min(len as u64) as usize;
                    let (old, new) = data.split_at(already);
                    if !old.is_empty() {
                        verifier.update(old)?;
                        if verifier.received_bytes == skip && verifier.open_chunk_crc32() != resume.open_chunk_crc32 {
                            return Err(IntegrityError::ResumeMismatch { offset: skip }.into());
                        }
                    }
                    if !new.is_empty() {
                        verifier.update(new)?;
                        write(new)?;
                        resume.written += new.len() as u64;
                        resume.open_chunk_crc32 = verifier.open_chunk_crc32();
                        progress.advance(new.len() as u64);
                    }
                }
                Frame::Msg(Msg::End) => return Ok(verifier.finish()?),
                Frame::Msg(Msg::Error { status, message }) => return Err(ClientError::Remote { status, message }),
                Frame::Msg(other) => return Err(unexpected(&other, "Data or End")),
            }
        }
    }
}

/// How far a download got: the bytes written, and the crc32 of those of them that belong to the
/// chunk not yet complete (not yet verified). A download continued on another engine skips the
/// written bytes, checking the open chunk's part against that crc32, so the output is the file
/// or an error, never a mix.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Resume {
    pub written: u64,
    pub open_chunk_crc32: u32,
}

/// Checks that a chunk table describes the file it comes with: chunks numbered in order, each
/// starting where the previous one ended, together covering exactly `size` bytes.
fn check_chunk_table(info: &FileInfo) -> Result<()> {
    let bad =
        |why: String| ClientError::Protocol(format!("engine sent a chunk table that does not fit the file: {why}"));
    if info.size > MAX_FILE_SIZE_BYTES {
        return Err(bad(format!("size {} is over the limit of {MAX_FILE_SIZE_BYTES}", info.size)));
    }
    let mut next_offset = 0u64;
    for (pos, chunk) in info.chunks.iter().enumerate() {
        if chunk.chunk_idx as usize != pos {
            return Err(bad(format!("chunk {} is listed in position {pos}", chunk.chunk_idx)));
        }
        if chunk.offset != next_offset {
            return Err(bad(format!("chunk {pos} starts at {} instead of {next_offset}", chunk.offset)));
        }
        next_offset = next_offset
            .checked_add(chunk.length)
            .filter(|&end| end <= info.size)
            .ok_or_else(|| bad(format!("chunk {pos} ends past the file's {} bytes", info.size)))?;
    }
    if next_offset != info.size {
        return Err(bad(format!("chunks cover {next_offset} of {} bytes", info.size)));
    }
    Ok(())
}

/// Follows a download through a chunk table (one that passed [`check_chunk_table`]) and checks
/// each chunk's crc32 as soon as its last byte has arrived.
struct StreamVerifier<'a> {
    chunks: &'a [ChunkInfo],
    size_bytes: u64,
    received_bytes: u64,
    /// Position in `chunks` of the chunk being received.
    chunk_pos: usize,
    chunk_received_bytes: u64,
    chunk_hasher: crc32fast::Hasher,
}

impl<'a> StreamVerifier<'a> {
    fn new(info: &'a FileInfo) -> StreamVerifier<'a> {
        StreamVerifier {
            chunks: &info.chunks,
            size_bytes: info.size,
            received_bytes: 0,
            chunk_pos: 0,
            chunk_received_bytes: 0,
            chunk_hasher: crc32fast::Hasher::new(),
        }
    }

    /// Refuses `n_bytes` more bytes if they would run past the end of the file. Checked before
    /// a frame's body is read, so no byte past the end is ever accepted.
    fn check_room(&self, n_bytes: u64) -> Result<(), IntegrityError> {
        if n_bytes > self.size_bytes - self.received_bytes {
            return Err(IntegrityError::Overrun {
                received_bytes: self.received_bytes,
                n_bytes,
                size_bytes: self.size_bytes,
            });
        }
        Ok(())
    }

    fn update(&mut self, mut data: &[u8]) -> Result<(), IntegrityError> {
        self.check_room(data.len() as u64)?;
        self.close_complete_chunks()?;
        while !data.is_empty() {
            // The table tiles the file and `check_room` passed, so a chunk is always open here.
            let Some(chunk) = self.chunks.get(self.chunk_pos) else {
                return Err(IntegrityError::Overrun {
                    received_bytes: self.received_bytes,
                    n_bytes: data.len() as u64,
                    size_bytes: self.size_bytes,
                });
            };
            let take = (chunk.length - self.chunk_received_bytes).min(data.len() as u64) as usize;
            let (now, rest) = data.split_at(take);
            self.chunk_hasher.update(now);
            self.chunk_received_bytes += take as u64;
            self.received_bytes += take as u64;
            data = rest;
            self.close_complete_chunks()?;
        }
        Ok(())
    }

    /// Verifies every chunk whose bytes have all arrived, empty chunks included.
    fn close_complete_chunks(&mut self) -> Result<(), IntegrityError> {
        while let Some(chunk) = self.chunks.get(self.chunk_pos) {
            if self.chunk_received_bytes < chunk.length {
                break;
            }
            let actual_crc32 = std::mem::take(&mut self.chunk_hasher).finalize();
            if actual_crc32 != chunk.crc32 {
                return Err(IntegrityError::ChunkMismatch {
                    chunk_idx: chunk.chunk_idx,
                    expected_crc32: chunk.crc32,
                    actual_crc32,
                });
            }
            self.chunk_pos += 1;
            self.chunk_received_bytes = 0;
        }
        Ok(())
    }

    /// The crc32 of the bytes received so far of the chunk not yet complete.
    fn open_chunk_crc32(&self) -> u32 {
        self.chunk_hasher.clone().finalize()
    }

    /// Called at End: every chunk must have arrived whole and verified.
    fn finish(mut self) -> Result<(), IntegrityError> {
        self.close_complete_chunks()?;
        match self.chunks.get(self.chunk_pos) {
            None if self.received_bytes == self.size_bytes => Ok(()),
            open => Err(IntegrityError::ShortStream {
                chunk_idx: open.map_or(self.chunk_pos as u32, |c| c.chunk_idx),
                received_bytes: self.received_bytes,
                size_bytes: self.size_bytes,
            }),
        }
    }
}

/// A download in progress: a temporary file next to its destination. Dropping it without
/// [`PartialFile::persist`] removes the temporary file, whatever the reason for the drop.
pub(crate) struct PartialFile {
    dest: PathBuf,
    temp: PathBuf,
    file: File,
    persisted: bool,
}

impl PartialFile {
    pub(crate) fn create(dest: &Path) -> Result<PartialFile> {
        if dest.is_dir() {
            return Err(ClientError::Invalid(format!("{} is a directory", dest.display())));
        }
        let dest_name = dest
            .file_name()
            .ok_or_else(|| ClientError::Invalid(format!("{} does not end in a file name", dest.display())))?;
        let file_error =
            |source| ClientError::File { action: "create a temporary file for", path: dest.to_owned(), source };
        let mut suffix = [0u8; 8];
        getrandom::getrandom(&mut suffix).map_err(|e| file_error(io::Error::from(e)))?;
        let dest_name = dest_name.to_string_lossy();
        let mut keep = dest_name.len().min(TEMP_NAME_KEEP_BYTES);
        while !dest_name.is_char_boundary(keep) {
            keep -= 1;
        }
        let temp_name = format!(".{}.dfs-partial-{}", &dest_name[..keep], hex::encode(suffix));
        let temp = dest.with_file_name(temp_name);
        // create_new: never truncate or follow a file someone else put at this name.
        let file = OpenOptions::new().write(true).create_new(true).open(&temp).map_err(file_error)?;
        Ok(PartialFile { dest: dest.to_owned(), temp, file, persisted: false })
    }

    fn file_error(&self, action: &'static str) -> impl FnOnce(io::Error) -> ClientError + '_ {
        move |source| ClientError::File { action, path: self.temp.clone(), source }
    }

    /// Reserves the file's blocks, so a full disk is reported before the download, not during.
    pub(crate) fn preallocate(&mut self, size_bytes: u64) -> Result<()> {
        if size_bytes == 0 {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            use nix::errno::Errno;
            use nix::fcntl::{fallocate, FallocateFlags};
            use std::os::fd::AsRawFd;
            let len = i64::try_from(size_bytes)
                .map_err(|_| ClientError::Invalid(format!("file size {size_bytes} does not fit in off_t")))?;
            match fallocate(self.file.as_raw_fd(), FallocateFlags::empty(), 0, len) {
                Ok(()) => return Ok(()),
                // Some file systems cannot reserve space; a sparse file of the right size will do.
                Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {}
                Err(e) => return Err(self.file_error("preallocate")(e.into())),
            }
        }
        self.file.set_len(size_bytes).map_err(self.file_error("set the size of"))
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(self.file_error("write"))
    }

    /// Syncs the file, renames it over the destination and syncs the directory, so the
    /// destination survives a crash once this returns.
    pub(crate) fn persist(mut self) -> Result<()> {
        self.file.sync_all().map_err(self.file_error("sync"))?;
        fs::rename(&self.temp, &self.dest).map_err(|source| ClientError::File {
            action: "move the download into place at",
            path: self.dest.clone(),
            source,
        })?;
        self.persisted = true;
        // The file is complete and verified at this point; a failure here only means the rename
        // itself may not survive a crash, which is still worth reporting.
        let dir = match self.dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|source| ClientError::File {
            action: "sync the directory of",
            path: self.dest.clone(),
            source,
        })
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the error being reported matters more than a failed clean-up.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::layout::{chunk_spans, crc32};
    use dfs_proto::Chunking;

    fn info_for(data: &[u8], chunking: Chunking, cap: u64) -> FileInfo {
        let chunks = chunk_spans(data.len() as u64, chunking, cap)
            .expect("layout")
            .into_iter()
            .map(|s| ChunkInfo {
                chunk_idx: s.chunk_idx,
                offset: s.offset,
                length: s.length,
                crc32: crc32(&data[s.offset as usize..(s.offset + s.length) as usize]),
                placement: vec![0],
            })
            .collect();
        FileInfo {
            file_id: FileId([7; 16]),
            name: "f".into(),
            size: data.len() as u64,
            created_unix_ms: 0,
            chunking,
            origin: None,
            nodes: vec![dfs_proto::FileNode { id: None, addr: "127.0.0.1:7701".into() }],
            chunks,
        }
    }

    /// Feeds `data` to a verifier in frames of `frame_len` bytes and finishes it.
    fn verify(info: &FileInfo, data: &[u8], frame_len: usize) -> Result<(), IntegrityError> {
        let mut verifier = StreamVerifier::new(info);
        for frame in data.chunks(frame_len) {
            verifier.check_room(frame.len() as u64)?;
            verifier.update(frame)?;
        }
        verifier.finish()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn intact_streams_pass_whatever_the_frame_size() {
        for (len, chunking, cap) in [(0, Chunking::Equal, 1), (1, Chunking::Equal, 1), (1001, Chunking::Dynamic, 50)] {
            let data = sample(len);
            let info = info_for(&data, chunking, cap);
            check_chunk_table(&info).expect("valid table");
            for frame_len in [1, 3, 64, 4096] {
                assert_eq!(verify(&info, &data, frame_len), Ok(()), "len {len}, frames of {frame_len}");
            }
        }
    }

    #[test]
    fn flipped_byte_names_its_chunk() {
        let data = sample(1000);
        let info = info_for(&data, Chunking::Equal, 1);
        let mut bad = data.clone();
        bad[600] ^= 1; // chunks of 250 bytes: byte 600 lies in chunk 2
        let err = verify(&info, &bad, 100).expect_err("corruption must be caught");
        assert!(matches!(err, IntegrityError::ChunkMismatch { chunk_idx: 2, .. }), "{err}");
        assert!(err.to_string().contains("chunk 2"), "{err}");
    }

    #[test]
    fn short_stream_names_the_open_chunk() {
        let data = sample(1000);
        let info = info_for(&data, Chunking::Equal, 1);
        let err = verify(&info, &data[..700], 100).expect_err("short stream must be caught");
        assert_eq!(err, IntegrityError::ShortStream { chunk_idx: 2, received_bytes: 700, size_bytes: 1000 });
    }

    #[test]
    fn data_past_the_end_is_refused_before_it_is_read() {
        let data = sample(10);
        let info = info_for(&data, Chunking::Equal, 1);
        let mut verifier = StreamVerifier::new(&info);
        verifier.update(&data[..8]).expect("first 8 bytes");
        assert!(matches!(verifier.check_room(3), Err(IntegrityError::Overrun { .. })));
        assert!(matches!(verifier.update(&[0; 3]), Err(IntegrityError::Overrun { .. })));
    }

    #[test]
    fn chunk_tables_that_do_not_tile_the_file_are_refused() {
        let data = sample(100);
        let good = info_for(&data, Chunking::Equal, 1);
        let mut gap = good.clone();
        gap.chunks[1].offset += 1;
        let mut short = good.clone();
        short.size += 1;
        let mut reordered = good.clone();
        reordered.chunks.swap(0, 1);
        let mut overflow = good.clone();
        overflow.chunks[3].length = u64::MAX;
        for (what, info) in [("gap", gap), ("short", short), ("reordered", reordered), ("overflow", overflow)] {
            assert!(matches!(check_chunk_table(&info), Err(ClientError::Protocol(_))), "{what}");
        }
    }

    #[test]
    fn dropped_partial_file_is_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("out.bin");
        let mut partial = PartialFile::create(&dest).expect("create");
        partial.preallocate(4096).expect("preallocate");
        partial.write(b"partial").expect("write");
        drop(partial);
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0, "nothing may be left behind");
    }

    #[test]
    fn persisted_partial_file_replaces_the_destination() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("out.bin");
        fs::write(&dest, b"old contents").expect("old file");
        let mut partial = PartialFile::create(&dest).expect("create");
        partial.preallocate(3).expect("preallocate");
        partial.write(b"new").expect("write");
        partial.persist().expect("persist");
        assert_eq!(fs::read(&dest).expect("read"), b"new");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1, "only the destination remains");
    }

    #[test]
    fn directory_destination_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(PartialFile::create(dir.path()), Err(ClientError::Invalid(_))));
    }

    /// A client whose engine, on a thread, answers one GET with `info` and `data` in frames of
    /// `frame_len` bytes.
    fn serving(info: FileInfo, data: Vec<u8>, frame_len: usize) -> Client {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = io_std::read_frame_on(&mut s, dfs_proto::Link::Client);
            io_std::write_msg(&mut s, &Msg::GetOk(info)).unwrap();
            for piece in data.chunks(frame_len) {
                io_std::write_data(&mut s, piece).unwrap();
            }
            io_std::write_msg(&mut s, &Msg::End).unwrap();
        });
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let hello = dfs_proto::HelloOk {
            version: dfs_proto::VERSION,
            block_size_bytes: 1 << 20,
            dynamic_chunk_cap_bytes: 64 << 20,
            idle_timeout_ms: 60_000,
            node_id: None,
        };
        Client {
            reader: std::io::BufReader::new(stream),
            hello,
            usable: true,
            engine_idx: 0,
            engine_addr: addr.to_string(),
        }
    }

    /// Gets the file with `resume`; returns what was written, or the error.
    fn resumed(data: &[u8], resume: Resume, frame_len: usize) -> Result<Vec<u8>> {
        let info = info_for(data, Chunking::Equal, 1 << 20);
        let mut client = serving(info.clone(), data.to_vec(), frame_len);
        let (mut table, mut resume, mut out) = (Some(info.clone()), resume, Vec::new());
        client.get_resuming(
            info.file_id,
            &mut table,
            &mut resume,
            &mut |_| Ok(()),
            &mut |d| {
                out.extend_from_slice(d);
                Ok(())
            },
            &mut (),
        )?;
        Ok(out)
    }

    #[test]
    fn a_resumed_download_writes_only_what_is_new_and_checks_what_was_written() {
        let data = sample(10_000);
        // Quarters of 2,500 bytes: 3,000 bytes written means 500 of the second chunk unverified.
        let open_crc = crc32(&data[2500..3000]);
        for frame_len in [7, 500, 4096, 10_000] {
            let got = resumed(&data, Resume { written: 3000, open_chunk_crc32: open_crc }, frame_len).unwrap();
            assert_eq!(got, &data[3000..], "frames of {frame_len}");
            // The 500 bytes written earlier were not these: the download must not go on.
            let err = resumed(&data, Resume { written: 3000, open_chunk_crc32: open_crc ^ 1 }, frame_len).unwrap_err();
            assert!(
                matches!(err, ClientError::Integrity(IntegrityError::ResumeMismatch { offset: 3000 })),
                "frames of {frame_len}: {err}"
            );
        }
        // At a chunk boundary, and with everything written but the End.
        assert_eq!(resumed(&data, Resume { written: 5000, open_chunk_crc32: 0 }, 999).unwrap(), &data[5000..]);
        assert!(resumed(&data, Resume { written: 10_000, open_chunk_crc32: 0 }, 999).unwrap().is_empty());
    }
}
