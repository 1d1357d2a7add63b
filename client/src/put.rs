//! Upload. The client computes the chunk layout from the file size and the engine's dynamic
//! chunk cap (both ends derive the same layout, see `dfs_proto::layout`), announces the crc32 of
//! every chunk in the Put frame, then streams the raw bytes. The engine checks each chunk
//! against its announced crc32, so corruption between this process's memory and the nodes'
//! disks is caught before the file becomes visible.
//!
//! Every upload of a file (`dfs-client put`, `put --bench`, `put -r`) takes the one path of
//! [`Client::put_mapped`]: the chunk crc32s are computed on all cores from a read-only memory
//! map, then the bytes are sent with sendfile(2). Both passes read the same page-cache pages,
//! with no copy into a user buffer and no second read from disk. The hash pass cannot overlap
//! the sending: the protocol puts every chunk's crc32 in the Put frame, before the body
//! (perf.md, "The client's sending path", measures what the pass costs and the alternatives).

use crate::error::{ClientError, Result};
use crate::{connection_error, unexpected, Client, Progress, IO_TIMEOUT};
use dfs_proto::io_std::{self, Frame};
use dfs_proto::layout::{self, chunk_spans, ChunkSpan, LayoutError};
use dfs_proto::limits::{MAX_FILE_SIZE_BYTES, MAX_NAME_BYTES};
use dfs_proto::{Chunking, FileId, Link, Msg, Origin};
use memmap2::Mmap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use std::{ops, thread};

/// Bytes handed to the socket per write, so a progress bar advances smoothly.
const SEND_PIECE_BYTES: usize = 1 << 20;
/// Unit of parallel hashing: chunks are cut into pieces this size whose crcs are combined, so
/// the threads stay balanced whether a file has 4 huge chunks or thousands of small ones.
const HASH_PIECE_BYTES: usize = 8 << 20;
/// Below this size, starting threads costs more than hashing on one core.
const PARALLEL_HASH_MIN_BYTES: usize = 32 << 20;
/// Hashing uses every core (ARCHITECTURE.md: "computed on all cores before sending"), up to
/// this bound; crc32 runs near memory speed per core, so more threads than this gain nothing.
const MAX_HASH_THREADS: usize = 8;
/// After a failed write, how long to wait for the Error frame that explains it.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A local file opened for upload: a read-only map of its bytes. An empty file cannot be
/// mapped, so it is held as an empty slice.
pub struct MappedFile {
    map: Option<Mmap>,
    /// The open file, so its bytes can be sent with sendfile(2) from the page cache.
    file: File,
}

impl MappedFile {
    /// Opens and maps a regular file, checking its size against the protocol limit.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file_error = |action| move |source| ClientError::File { action, path: path.to_owned(), source };
        let file = File::open(path).map_err(file_error("open"))?;
        let metadata = file.metadata().map_err(file_error("read the metadata of"))?;
        if !metadata.is_file() {
            return Err(ClientError::Invalid(format!("{} is not a regular file", path.display())));
        }
        if metadata.len() > MAX_FILE_SIZE_BYTES {
            return Err(LayoutError::FileTooLarge { size: metadata.len(), max: MAX_FILE_SIZE_BYTES }.into());
        }
        if metadata.len() == 0 {
            return Ok(MappedFile { map: None, file });
        }
        // SAFETY: the map is read-only and private to this process; what the OS cannot promise
        // is that no other process changes the file meanwhile. If one truncates it, reading a
        // vanished page raises SIGBUS and the client dies, leaving no file in the store. If one
        // overwrites it, the bytes sent may differ from the bytes hashed, and the engine
        // refuses the upload with a checksum mismatch. Neither can store a wrong file.
        let map = unsafe { Mmap::map(&file) }.map_err(file_error("map"))?;
        // Only a hint for read-ahead; the upload is correct without it.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile { map: Some(map), file })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }

    /// The metadata of the open file (size, modification time) as it was when it was mapped
    /// or later, whatever path it was opened by.
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }
}

impl ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Sends `len` bytes of `file` from `offset` to the socket with sendfile(2).
fn send_file_range(sock: &std::net::TcpStream, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut off = offset as libc::off64_t;
    let end = offset + len as u64;
    while (off as u64) < end {
        let want = (end - off as u64) as usize;
        // SAFETY: both descriptors are open for the duration of the call, and `off` is a valid
        // off64_t the kernel advances by the bytes sent.
        let n = unsafe { libc::sendfile64(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        match n {
            n if n > 0 => {}
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while being sent")),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The name a file is stored under when none is given: its base name.
pub fn default_name(path: &Path) -> Result<String> {
    let base = path
        .file_name()
        .ok_or_else(|| ClientError::Invalid(format!("{} does not end in a file name: give a name", path.display())))?;
    let name = base.to_str().ok_or_else(|| {
        ClientError::Invalid(format!("the file name of {} is not valid UTF-8: give a name", path.display()))
    })?;
    Ok(name.to_owned())
}

impl Client {
    /// Uploads the file at `path` under `name` (default: its base name) and returns its ID.
    pub fn put_file(
        &mut self,
        path: &Path,
        name: Option<&str>,
        chunking: Chunking,
        progress: &mut dyn Progress,
    ) -> Result<FileId> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_name(path)?,
        };
        let file = MappedFile::open(path)?;
        self.put_mapped(&name, &file, chunking, None, progress).map(|(id, _)| id)
    }

    /// Uploads an opened file under `name`, sending its bytes with sendfile(2), and returns its
    /// ID and the crc32 of the whole file, derived from the chunk crc32s the engine checked.
    /// `origin` is stored with the file and shown in STAT and LIST (see [`Origin`]). Every
    /// upload of a file, by any command, goes through here.
    pub fn put_mapped(
        &mut self,
        name: &str,
        file: &MappedFile,
        chunking: Chunking,
        origin: Option<Origin>,
        progress: &mut dyn Progress,
    ) -> Result<(FileId, u32)> {
        self.put_from(name, file, Some(&file.file), chunking, origin, progress)
    }

    /// Uploads `data`, held in memory, as a file called `name` and returns its ID. The bytes
    /// are copied into the socket: for a file, use [`Client::put_mapped`].
    pub fn put_bytes(
        &mut self,
        name: &str,
        data: &[u8],
        chunking: Chunking,
        progress: &mut dyn Progress,
    ) -> Result<FileId> {
        self.put_from(name, data, None, chunking, None, progress).map(|(id, _)| id)
    }

    /// Uploads `data`; if `source` is the file `data` maps, the bytes are sent from it with
    /// sendfile(2), straight from the page cache, instead of being copied out of the map.
    /// Returns the file's ID and the crc32 of all of `data`.
    fn put_from(
        &mut self,
        name: &str,
        data: &[u8],
        source: Option<&File>,
        chunking: Chunking,
        origin: Option<Origin>,
        progress: &mut dyn Progress,
    ) -> Result<(FileId, u32)> {
        if name.len() > MAX_NAME_BYTES as usize {
            return Err(ClientError::Invalid(format!(
                "file name is {} bytes, over the limit of {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        // Everything that can be refused locally is checked before the first byte is sent, so
        // such a refusal leaves the connection usable.
        let spans = chunk_spans(data.len() as u64, chunking, self.hello.dynamic_chunk_cap_bytes)?;
        let chunk_crcs = chunk_crcs(data, &spans, hash_threads(data.len()));
        let whole_crc32 = crate::combine_crc32s(chunk_crcs.iter().zip(&spans).map(|(&crc, span)| (crc, span.length)));
        let put = Msg::Put { name: name.to_owned(), size: data.len() as u64, chunking, chunk_crcs, origin };
        let file_id = self.run(false, |c| c.upload(&put, data, source, progress))?;
        Ok((file_id, whole_crc32))
    }

    fn upload(&mut self, put: &Msg, data: &[u8], source: Option<&File>, progress: &mut dyn Progress) -> Result<FileId> {
        if data.len() <= SMALL_UPLOAD_BYTES {
            // A small file goes out with its request in one write: one wake-up of the engine.
            progress.start(data.len() as u64);
            let mut frame = put.encode();
            frame.extend_from_slice(data);
            if let Err(e) = self.reader.get_ref().write_all(&frame) {
                return Err(self
                    .refusal_reason()
                    .unwrap_or_else(|| connection_error("sending the upload", e.into(), IO_TIMEOUT)));
            }
            progress.advance(data.len() as u64);
            return match self.recv_msg("waiting for the engine to store the file", "PutOk")? {
                Msg::PutOk { file_id } => Ok(file_id),
                other => Err(unexpected(&other, "PutOk")),
            };
        }
        self.send(put, "sending the upload request")?;
        progress.start(data.len() as u64);
        let mut offset = 0u64;
        for piece in data.chunks(SEND_PIECE_BYTES) {
            let mut writer = self.reader.get_ref();
            let sent = match source {
                Some(file) => send_file_range(writer, file, offset, piece.len()),
                None => writer.write_all(piece),
            };
            offset += piece.len() as u64;
            if let Err(e) = sent {
                // An engine that refuses an upload says why in an Error frame and closes; our
                // write then fails with a bare "broken pipe". The frame is the real reason.
                return Err(self
                    .refusal_reason()
                    .unwrap_or_else(|| connection_error("sending file data", e.into(), IO_TIMEOUT)));
            }
            progress.advance(piece.len() as u64);
        }
        match self.recv_msg("waiting for the engine to store the file", "PutOk")? {
            Msg::PutOk { file_id } => Ok(file_id),
            other => Err(unexpected(&other, "PutOk")),
        }
    }

    /// After a failed write: the Error frame the engine sent before closing, if one arrives.
    fn refusal_reason(&mut self) -> Option<ClientError> {
        self.reader.get_ref().set_read_timeout(Some(REFUSAL_READ_TIMEOUT)).ok()?;
        match io_std::read_frame_on(&mut self.reader, Link::Client) {
            Ok(Frame::Msg(Msg::Error { status, message })) => Some(ClientError::Remote { status, message }),
            _ => None,
        }
    }
}

/// Files up to this size are sent with their request in one write, copied out of the map.
const SMALL_UPLOAD_BYTES: usize = 64 << 10;

/// How many threads hash a file of `size_bytes` bytes.
fn hash_threads(size_bytes: usize) -> usize {
    if size_bytes < PARALLEL_HASH_MIN_BYTES {
        return 1;
    }
    thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_HASH_THREADS)
}

/// One slice of one chunk.
struct Piece {
    chunk_pos: usize,
    range: ops::Range<usize>,
}

/// The crc32 of every chunk of `data`, computed on up to `n_threads` threads. `spans` must tile
/// `data` (as `chunk_spans` of its length does).
fn chunk_crcs(data: &[u8], spans: &[ChunkSpan], n_threads: usize) -> Vec<u32> {
    let pieces: Vec<Piece> = spans
        .iter()
        .enumerate()
        .flat_map(|(chunk_pos, span)| {
            // Lossless: the spans lie inside `data`, whose length is a usize.
            let start = span.offset as usize;
            let end = start + span.length as usize;
            (start..end).step_by(HASH_PIECE_BYTES).map(move |piece_start| Piece {
                chunk_pos,
                range: piece_start..end.min(piece_start + HASH_PIECE_BYTES),
            })
        })
        .collect();
    let mut piece_crcs = vec![0u32; pieces.len()];
    let hash = |pieces: &[Piece], crcs: &mut [u32]| {
        for (piece, crc) in pieces.iter().zip(crcs) {
            *crc = layout::crc32(&data[piece.range.clone()]);
        }
    };
    // Pieces are equal in size (bar each chunk's last), so equal runs of them balance the threads.
    let per_thread = pieces.len().div_ceil(n_threads.max(1)).max(1);
    if per_thread >= pieces.len() {
        hash(&pieces, &mut piece_crcs);
    } else {
        thread::scope(|scope| {
            for (pieces, crcs) in pieces.chunks(per_thread).zip(piece_crcs.chunks_mut(per_thread)) {
                scope.spawn(move || hash(pieces, crcs));
            }
        });
    }
    // crc32 of a concatenation follows from the crcs and lengths of its parts.
    let mut chunk_hashers: Vec<crc32fast::Hasher> = spans.iter().map(|_| crc32fast::Hasher::new()).collect();
    for (piece, &crc) in pieces.iter().zip(&piece_crcs) {
        let part = crc32fast::Hasher::new_with_initial_len(crc, piece.range.len() as u64);
        chunk_hashers[piece.chunk_pos].combine(&part);
    }
    chunk_hashers.into_iter().map(crc32fast::Hasher::finalize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn parallel_chunk_crcs_match_one_shot_crcs() {
        let cases = [
            (0, Chunking::Equal, 1),
            (1, Chunking::Equal, 1),
            (5, Chunking::Dynamic, 2),
            (HASH_PIECE_BYTES * 3 + 17, Chunking::Equal, 1 << 30),
            (HASH_PIECE_BYTES * 2 + 5, Chunking::Dynamic, 3_000_000),
        ];
        for (len, chunking, cap) in cases {
            let data = sample(len);
            let spans = chunk_spans(len as u64, chunking, cap).expect("layout");
            let expected: Vec<u32> =
                spans.iter().map(|s| layout::crc32(&data[s.offset as usize..(s.offset + s.length) as usize])).collect();
            for n_threads in [1, 2, 3, 7] {
                assert_eq!(chunk_crcs(&data, &spans, n_threads), expected, "len {len}, {n_threads} threads");
            }
        }
    }

    #[test]
    fn empty_file_maps_to_an_empty_slice() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mapped = MappedFile::open(file.path()).expect("open empty file");
        assert!(mapped.as_bytes().is_empty());
    }

    #[test]
    fn mapped_file_reads_the_file() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"hello dfs").expect("write");
        let mapped = MappedFile::open(file.path()).expect("open");
        assert_eq!(&*mapped, b"hello dfs");
    }

    #[test]
    fn directories_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(MappedFile::open(dir.path()), Err(ClientError::Invalid(_))));
        let missing = dir.path().join("missing");
        assert!(matches!(MappedFile::open(&missing), Err(ClientError::File { action: "open", .. })));
    }

    #[test]
    fn default_name_is_the_base_name() {
        assert_eq!(default_name(Path::new("/tmp/a/b.bin")).expect("name"), "b.bin");
        assert!(default_name(Path::new("/")).is_err());
        assert!(default_name(Path::new("a/..")).is_err());
    }
}
