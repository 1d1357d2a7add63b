//! Whole directory trees: `put -r` uploads every regular file of a tree in parallel and records
//! each in a manifest (see [`crate::manifest`]); a rerun with the same manifest skips files
//! already stored unchanged, and records instead of storing again the files its own earlier runs
//! stored but never recorded (every upload carries the manifest's identity as its origin; no
//! other upload is ever taken for one of them). `get -r` restores a tree from a manifest,
//! verifying every file.
//! Both run on a pool of threads, each with its own engine connection, report progress through
//! a [`TreeProgress`] and end with a [`TreeSummary`]. A file that fails is recorded in the
//! summary and the others go on; only a run that cannot start at all is an error.

use crate::error_chain;
use crate::manifest::{self, BadFileId, Entry, ManifestError, UnsafePath};
use crate::{Chunking, Client, ClientError, FileId, MappedFile, Progress};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The most connections (and threads) one tree transfer may use.
pub const MAX_JOBS: usize = 256;

/// Temporary files of restores in progress, so that an interrupted `get -r` can remove them
/// (see [`PartialFiles::remove_all`]). A file is created and registered under this lock.
#[derive(Default)]
pub struct PartialFiles(Mutex<BTreeSet<PathBuf>>);

impl PartialFiles {
    /// Removes the temporary files of every restore in progress, and keeps new ones from being
    /// created: for a process about to exit on an interrupt, so that an output directory holds
    /// only whole, verified files. Never returns the lock, so call it only on the way out.
    pub fn remove_all(&self) {
        let partial = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for path in partial.iter() {
            // Best effort on the way out; a file already renamed into place is whole.
            let _ = fs::remove_file(path);
        }
        std::mem::forget(partial);
    }
}

/// A registered temporary file, unregistered when dropped (after it was renamed or removed).
struct Partial<'a> {
    /// None once renamed into place.
    temp: Option<tempfile::NamedTempFile>,
    path: PathBuf,
    registry: &'a PartialFiles,
}

impl<'a> Partial<'a> {
    fn create_in(dir: &Path, registry: &'a PartialFiles) -> io::Result<Partial<'a>> {
        let mut registered = registry.0.lock().unwrap_or_else(|e| e.into_inner());
        let file = tempfile::Builder::new()
            .prefix(".dfs-restore-")
            .permissions(fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)?;
        let path = file.path().to_path_buf();
        registered.insert(path.clone());
        drop(registered);
        Ok(Partial { temp: Some(file), path, registry })
    }

    fn file(&self) -> io::Result<&File> {
        self.temp.as_ref().map(|t| t.as_file()).ok_or_else(|| io::Error::other("already renamed into place"))
    }

    /// Renames the file to `dest`, replacing what is there only with `replace`.
    fn persist(mut self, dest: &Path, replace: bool) -> io::Result<()> {
        let temp = self.temp.take().ok_or_else(|| io::Error::other("already renamed into place"))?;
        let persisted = if replace { temp.persist(dest) } else { temp.persist_noclobber(dest) };
        persisted.map(drop).map_err(|e| e.error)
    }
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        self.registry.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.path);
    }
}

/// How a tree transfer reports progress; called from every worker thread.
pub trait TreeProgress: Sync {
    /// The transfer of `n_files` files, `n_bytes` bytes in all, begins.
    fn start(&self, n_files: u64, n_bytes: u64);
    /// `n_bytes` more bytes of some file moved.
    fn bytes(&self, n_bytes: u64);
    /// A file of `n_bytes` bytes needs no transfer after all (it is already in place).
    fn skipped(&self, n_bytes: u64);
    /// One more file is done (moved, skipped or failed).
    fn file_done(&self);
    fn finish(&self);
}

/// What a tree transfer did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TreeSummary {
    /// Files uploaded (put) or restored (get) by this run.
    pub files_done: u64,
    /// Their bytes.
    pub bytes_done: u64,
    /// Stored unchanged by an earlier run (put), or already present and identical (get).
    pub skipped_unchanged: u64,
    /// put: found already stored under their path with the same bytes by an earlier run of this
    /// manifest (same origin), though the manifest did not record them (that run stopped between
    /// storing and recording), so recorded now instead of stored twice.
    pub adopted: u64,
    /// Symlinks and special files, with what they are (put).
    pub skipped_not_regular: Vec<Skipped>,
    pub failed: Vec<Failed>,
    pub elapsed_s: f64,
    /// `bytes_done` over `elapsed_s`.
    pub throughput_mib_s: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub kind: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Failed {
    pub path: String,
    pub error: String,
}

/// Why a tree transfer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read the directory {}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot create the output directory {}", path.display())]
    OutputDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The engine cannot be reached at all: reported once rather than once per file.
    #[error(transparent)]
    Engine(#[from] ClientError),
}

/// Why one file of a tree transfer failed; the others go on. It ends up, as one line with its
/// causes ([`error_chain`]), in the summary's [`Failed`] record.
#[derive(Debug, thiserror::Error)]
enum FileError {
    /// A request to the engine failed, or the local file could not be opened for upload.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read the metadata")]
    Metadata(#[source] io::Error),
    /// put: the file was found stored by an earlier run, but recording it failed.
    #[error("found stored as {id}, but the manifest could not be written")]
    AdoptedNotRecorded {
        id: FileId,
        #[source]
        source: io::Error,
    },
    #[error("stored as {id}, but the manifest could not be written")]
    StoredNotRecorded {
        id: FileId,
        #[source]
        source: io::Error,
    },
    /// get: the manifest's path would lead out of the output directory. The reason is part of
    /// the message, which goes on after it.
    #[error("refused: {0}; nothing was written")]
    UnsafePath(UnsafePath),
    #[error(transparent)]
    BadFileId(#[from] BadFileId),
    #[error("cannot create the directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory on the way to the file exists as something else, such as a symlink.
    #[error("{} is a {kind}, not a directory; nothing was written", path.display())]
    NotADirectory { path: PathBuf, kind: &'static str },
    #[error("{} exists and differs from the manifest (--force replaces it)", .0.display())]
    Differs(PathBuf),
    #[error("{} is a directory", .0.display())]
    IsADirectory(PathBuf),
    #[error("{} is a {kind} (--force replaces it)", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// The temporary file of the restore could not be created, written or synced.
    #[error("cannot {action} {}", path.display())]
    Temp {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the engine sent {n_bytes} bytes for {id}, the manifest says {size}")]
    SizeMismatch { id: FileId, n_bytes: u64, size: u64 },
    #[error("the data of {id} has crc32 {crc32:08x}, the manifest says {expected:08x}")]
    CrcMismatch { id: FileId, crc32: u32, expected: u32 },
    #[error("cannot put the file in place at {}", path.display())]
    Persist {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// The record of `path`'s failure for the summary.
    fn failed(&self, path: &str) -> Failed {
        Failed { path: path.to_string(), error: error_chain(self) }
    }
}

/// Options of `put -r`.
pub struct PutTree<'a> {
    pub server: &'a crate::Server,
    /// Hears of a file's upload moving on to another engine ([`crate::failover`]).
    pub failover_note: &'a (dyn Fn(&str) + Sync),
    pub root: &'a Path,
    pub manifest: &'a Path,
    /// Connections, hence files in flight, at once (1 to [`MAX_JOBS`]).
    pub jobs: usize,
    /// Upload the regular files symlinks point to, instead of skipping the symlinks.
    pub follow_symlinks: bool,
    pub chunking: Chunking,
}

/// Options of `get -r`.
pub struct GetTree<'a> {
    pub server: &'a crate::Server,
    /// Hears of a file's download moving on to another engine ([`crate::failover`]).
    pub failover_note: &'a (dyn Fn(&str) + Sync),
    pub manifest: &'a Path,
    pub out_dir: &'a Path,
    /// Connections, hence files in flight, at once (1 to [`MAX_JOBS`]).
    pub jobs: usize,
    /// Replace existing files (and symlinks) that differ from the manifest instead of failing them.
    pub force: bool,
    /// Where the temporary files of restores in progress are registered, for an interrupt
    /// handler to remove.
    pub partial_files: &'a PartialFiles,
}

/// A file to upload, as the walk found it.
struct Upload {
    rel: String,
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Adapts one file's byte progress to the tree's.
struct FileBytes<'a>(&'a dyn TreeProgress);

impl Progress for FileBytes<'_> {
    fn advance(&mut self, n_bytes: u64) {
        self.0.bytes(n_bytes);
    }
}

/// Runs `work` over `items` on `jobs` threads, each with its own engine connection (opened
/// again after a failure leaves it unusable).
fn run_parallel<T: Send, R: Send>(
    jobs: usize,
    items: Vec<T>,
    work: impl Fn(&mut Option<Client>, T) -> R + Sync,
) -> Vec<R> {
    let n_threads = jobs.clamp(1, MAX_JOBS).min(items.len().max(1));
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..n_threads {
            scope.spawn(|| {
                let mut client: Option<Client> = None;
                loop {
                    let Some(item) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { break };
                    if client.as_ref().is_some_and(|c| !c.is_usable()) {
                        client = None;
                    }
                    let r = work(&mut client, item);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn connected<'a>(client: &'a mut Option<Client>, server: &crate::Server) -> crate::Result<&'a mut Client> {
    match client {
        Some(c) => Ok(c),
        None => Ok(client.insert(Client::connect(server)?)),
    }
}

/// How one file ended.
enum Outcome {
    Moved(u64),
    Unchanged,
    Adopted,
    Failed(Failed),
}

fn tally(summary: &mut TreeSummary, outcomes: Vec<Outcome>, started: Instant) {
    for outcome in outcomes {
        match outcome {
            Outcome::Moved(n) => {
                summary.files_done += 1;
                summary.bytes_done += n;
            }
            Outcome::Unchanged => summary.skipped_unchanged += 1,
            Outcome::Adopted => summary.adopted += 1,
            Outcome::Failed(f) => summary.failed.push(f),
        }
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.throughput_mib_s =
        if summary.elapsed_s > 0.0 { summary.bytes_done as f64 / (1 << 20) as f64 / summary.elapsed_s } else { 0.0 };
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    summary.skipped_not_regular.sort_by(|a, b| a.path.cmp(&b.path));
}

/// Uploads a directory tree.
pub fn put_tree(opts: &PutTree, progress: &dyn TreeProgress) -> Result<TreeSummary, TreeError> {
    let started = Instant::now();
    let root_meta = fs::metadata(opts.root).map_err(|source| TreeError::Root { path: opts.root.into(), source })?;
    if !root_meta.is_dir() {
        return Err(TreeError::NotADirectory(opts.root.into()));
    }
    let (writer, before) = manifest::Writer::open(opts.manifest)?;
    let done_before = before.entries;
    let manifest_ino = writer.file().metadata().map(|m| (m.dev(), m.ino())).ok();
    // One connection first, so an unreachable engine or a refused key is one error, not one
    // per file.
    drop(Client::connect(opts.server)?);

    // A rerun may find files an interrupted run stored but never recorded: look them up by
    // name rather than store them twice. Only files carrying this manifest's identity are
    // candidates: a file another tree, another manifest or a plain `put` stored under the same
    // name is not ours to record, since whoever owns it may delete it. A manifest that had no
    // identity before this run (new, or from before identities) can have nothing to adopt;
    // files its earlier runs stored without recording are uploaded again.
    let mut stored_by_name: std::collections::HashMap<String, Vec<(FileId, u64)>> = Default::default();
    if let Some(own) = before.origin {
        for f in Client::connect(opts.server)?.list()?.into_iter().filter(|f| f.origin == Some(own)) {
            stored_by_name.entry(f.name).or_default().push((f.file_id, f.size));
        }
    }
    let mut summary = TreeSummary::default();
    let uploads = walk(opts, manifest_ino, &mut summary);
    progress.start(uploads.len() as u64, uploads.iter().map(|u| u.size).sum());
    let writer = Mutex::new(writer);
    let outcomes = run_parallel(opts.jobs, uploads, |client, up| {
        let stored = stored_by_name.get(&up.rel).map_or(&[][..], Vec::as_slice);
        let outcome = match put_one(client, opts, &up, done_before.get(&up.rel), stored, &writer, progress) {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error.failed(&up.rel)),
        };
        progress.file_done();
        outcome
    });
    if let Err(e) = writer.lock().unwrap_or_else(|e| e.into_inner()).sync() {
        summary.failed.push(Failed {
            path: opts.manifest.display().to_string(),
            error: format!("cannot sync the manifest: {e}"),
        });
    }
    progress.finish();
    tally(&mut summary, outcomes, started);
    Ok(summary)
}

/// Lists the regular files under the root, recording in `summary` what is skipped and what
/// cannot be read. The manifest itself, if it lies inside the tree, is left out.
fn walk(opts: &PutTree, manifest_ino: Option<(u64, u64)>, summary: &mut TreeSummary) -> Vec<Upload> {
    let mut uploads = Vec::new();
    // Symlinks are never followed by the walk itself: a symlink to a directory could lead out of
    // the tree or around in a loop. With --follow-symlinks, one to a regular file is uploaded.
    for entry in walkdir::WalkDir::new(opts.root).follow_links(false).sort_by_file_name() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map(|p| rel_display(opts.root, p)).unwrap_or_default();
                let error = e.io_error().map_or_else(|| e.to_string(), |io| format!("cannot read: {io}"));
                summary.failed.push(Failed { path, error });
                continue;
            }
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        let rel_path = entry.path().strip_prefix(opts.root).unwrap_or(entry.path());
        let Some(rel) = rel_path.to_str().map(str::to_string) else {
            summary.failed.push(Failed {
                path: rel_path.display().to_string(),
                error: "the name is not valid UTF-8; dfs names are text".into(),
            });
            continue;
        };
        let meta = if ft.is_symlink() && opts.follow_symlinks {
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => Ok(m),
                Ok(m) => {
                    let kind = format!("symlink to a {}", kind_of(m.file_type()));
                    summary.skipped_not_regular.push(Skipped { path: rel, kind });
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    summary.skipped_not_regular.push(Skipped { path: rel, kind: "broken symlink".into() });
                    continue;
                }
                Err(e) => Err(e),
            }
        } else if ft.is_file() {
            entry.metadata().map_err(|e| e.into_io_error().unwrap_or_else(|| io::Error::other("walk error")))
        } else {
            summary.skipped_not_regular.push(Skipped { path: rel, kind: kind_of(ft).into() });
            continue;
        };
        match meta {
            Ok(meta) if Some((meta.dev(), meta.ino())) == manifest_ino => {}
            Ok(meta) => {
                uploads.push(Upload { rel, path: entry.path().into(), size: meta.len(), mtime_ns: mtime_ns(&meta) })
            }
            Err(e) => summary.failed.push(Failed { path: rel, error: format!("cannot read: {e}") }),
        }
    }
    uploads
}

fn rel_display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// Uploads one file unless the manifest shows it stored unchanged and the engine still has it.
fn put_one(
    client: &mut Option<Client>,
    opts: &PutTree,
    up: &Upload,
    before: Option<&Entry>,
    stored: &[(FileId, u64)],
    writer: &Mutex<manifest::Writer>,
    progress: &dyn TreeProgress,
) -> Result<Outcome, FileError> {
    let origin = writer.lock().unwrap_or_else(|e| e.into_inner()).origin();
    let conn = connected(client, opts.server)?;
    if let Some(prev) = before.filter(|prev| prev.size == up.size && prev.mtime_ns == up.mtime_ns) {
        if let Ok(id) = prev.file_id() {
            match conn.stat(id) {
                Ok(info) if info.size == prev.size && crate::file_crc32(&info) == prev.crc32 => {
                    progress.skipped(up.size);
                    return Ok(Outcome::Unchanged);
                }
                // Gone from the engine, or not what the manifest says: upload it again.
                Ok(_) | Err(ClientError::Remote { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let file = MappedFile::open(&up.path)?;
    // What is recorded is what was opened: if the file changes after this, its modification
    // time moves on and the next run uploads it again.
    let meta = file.metadata().map_err(FileError::Metadata)?;
    for &(id, size) in stored.iter().filter(|(_, size)| *size == meta.len()) {
        // The list said this file is ours; STAT is what the entry is built from, so it must say
        // so too.
        let Ok(info) = conn.stat(id) else { continue };
        if info.origin != Some(origin) {
            continue;
        }
        let same_bytes = info.chunks.iter().all(|c| {
            let range = c.offset as usize..(c.offset + c.length) as usize;
            file.get(range).is_some_and(|bytes| crc32fast::hash(bytes) == c.crc32)
        });
        if same_bytes {
            let entry = Entry {
                path: up.rel.clone(),
                id: id.to_string(),
                size,
                crc32: crate::file_crc32(&info),
                mtime_ns: mtime_ns(&meta),
            };
            writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&entry)
                .map_err(|source| FileError::AdoptedNotRecorded { id, source })?;
            progress.skipped(size);
            return Ok(Outcome::Adopted);
        }
    }
    let bytes = &mut FileBytes(progress);
    let (id, crc32) = crate::failover::put_mapped(
        client,
        opts.server,
        opts.failover_note,
        &up.rel,
        &file,
        opts.chunking,
        Some(origin),
        bytes,
    )?;
    let entry = Entry { path: up.rel.clone(), id: id.to_string(), size: meta.len(), crc32, mtime_ns: mtime_ns(&meta) };
    writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&entry)
        .map_err(|source| FileError::StoredNotRecorded { id, source })?;
    Ok(Outcome::Moved(meta.len()))
}

/// Restores a tree from a manifest.
pub fn get_tree(opts: &GetTree, progress: &dyn TreeProgress) -> Result<TreeSummary, TreeError> {
    let started = Instant::now();
    let entries: BTreeMap<String, Entry> = manifest::load(opts.manifest)?.entries;
    fs::create_dir_all(opts.out_dir).map_err(|source| TreeError::OutputDir { path: opts.out_dir.into(), source })?;
    drop(Client::connect(opts.server)?);
    let mut summary = TreeSummary::default();
    progress.start(entries.len() as u64, entries.values().map(|e| e.size).sum());
    let outcomes = run_parallel(opts.jobs, entries.into_values().collect(), |client, entry| {
        let outcome = match get_one(client, opts, &entry, progress) {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error.failed(&entry.path)),
        };
        progress.file_done();
        outcome
    });
    // One sync of the whole file system makes the directories and renames durable, instead of
    // one fsync per directory entry.
    if let Err(e) = syncfs(opts.out_dir) {
        summary.failed.push(Failed { path: opts.out_dir.display().to_string(), error: format!("cannot sync: {e}") });
    }
    progress.finish();
    tally(&mut summary, outcomes, started);
    Ok(summary)
}

fn syncfs(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores one file: into a temporary file next to its place, checked against the manifest's
/// size and crc32, then renamed into place.
fn get_one(
    client: &mut Option<Client>,
    opts: &GetTree,
    entry: &Entry,
    progress: &dyn TreeProgress,
) -> Result<Outcome, FileError> {
    manifest::check_relative(&entry.path).map_err(FileError::UnsafePath)?;
    let id = entry.file_id()?;
    let dir = make_dirs(opts.out_dir, &entry.path)?;
    let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
    let dest = dir.join(name);
    let replace = match fs::symlink_metadata(&dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => return Err(FileError::Inspect { path: dest, source }),
        Ok(m) if m.is_file() => {
            if m.len() == entry.size && crc32_of(&dest).ok() == Some((entry.size, entry.crc32)) {
                progress.skipped(entry.size);
                return Ok(Outcome::Unchanged);
            }
            if !opts.force {
                return Err(FileError::Differs(dest));
            }
            true
        }
        Ok(m) if m.is_dir() => return Err(FileError::IsADirectory(dest)),
        Ok(m) => {
            if !opts.force {
                return Err(FileError::NotAFile { path: dest, kind: kind_of(m.file_type()) });
            }
            true
        }
    };
    let partial = Partial::create_in(&dir, opts.partial_files).map_err(|source| FileError::Temp {
        action: "create a file in",
        path: dir.clone(),
        source,
    })?;
    let file =
        partial.file().map_err(|source| FileError::Temp { action: "write", path: partial.path.clone(), source })?;
    let mut out = CrcWriter { file, hasher: crc32fast::Hasher::new(), n_bytes: 0 };
    crate::failover::get_to_writer(client, opts.server, opts.failover_note, id, &mut out, &mut FileBytes(progress))?;
    let (n_bytes, crc32) = (out.n_bytes, out.hasher.finalize());
    if n_bytes != entry.size {
        return Err(FileError::SizeMismatch { id, n_bytes, size: entry.size });
    }
    if crc32 != entry.crc32 {
        return Err(FileError::CrcMismatch { id, crc32, expected: entry.crc32 });
    }
    let mtime = u64::try_from(entry.mtime_ns).ok().map(|ns| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns));
    if let Some(mtime) = mtime {
        // Only cosmetic (the recorded time, as `cp -p` would keep it); the data is what counts.
        let _ = file.set_modified(mtime);
    }
    file.sync_data().map_err(|source| FileError::Temp { action: "sync", path: partial.path.clone(), source })?;
    partial.persist(&dest, replace).map_err(|source| FileError::Persist { path: dest, source })?;
    Ok(Outcome::Moved(entry.size))
}

/// Creates the directories leading to `rel` under `out_dir`, refusing any that exists as a
/// symlink or a file, so that no path inside the output directory can lead out of it.
fn make_dirs(out_dir: &Path, rel: &str) -> Result<PathBuf, FileError> {
    let mut dir = out_dir.to_path_buf();
    let mut components: Vec<&str> = rel.split('/').collect();
    components.pop();
    for component in components {
        dir.push(component);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(FileError::CreateDir { path: dir, source }),
        };
        if !created {
            let meta = fs::symlink_metadata(&dir).map_err(|source| FileError::Inspect { path: dir.clone(), source })?;
            if !meta.is_dir() {
                return Err(FileError::NotADirectory { path: dir, kind: kind_of(meta.file_type()) });
            }
        }
    }
    Ok(dir)
}

/// Writes to a file while computing the crc32 and length of what was written.
struct CrcWriter<'a> {
    file: &'a File,
    hasher: crc32fast::Hasher,
    n_bytes: u64,
}

impl Write for CrcWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Length and crc32 of a local file.
fn crc32_of(path: &Path) -> io::Result<(u64, u32)> {
    let mut f = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed file's record reads as it did when these errors were strings: the tests and
    /// scripts that read a summary look for these words.
    #[test]
    fn a_failed_file_is_recorded_as_one_line_with_its_cause() {
        let id: FileId = "00112233445566778899aabbccddeeff".parse().expect("file ID");
        let not_found = || io::Error::from(io::ErrorKind::NotFound);
        let cases: Vec<(FileError, String)> = vec![
            (FileError::Metadata(not_found()), format!("cannot read the metadata: {}", not_found())),
            (
                FileError::StoredNotRecorded { id, source: not_found() },
                format!("stored as {id}, but the manifest could not be written: {}", not_found()),
            ),
            (
                FileError::UnsafePath(UnsafePath::ParentDir),
                "refused: the path contains `..` and would leave the output directory; nothing was written".into(),
            ),
            (
                FileError::NotADirectory { path: "out/link".into(), kind: "symlink" },
                "out/link is a symlink, not a directory; nothing was written".into(),
            ),
            (
                FileError::Differs("out/f".into()),
                "out/f exists and differs from the manifest (--force replaces it)".into(),
            ),
            (
                FileError::CrcMismatch { id, crc32: 0xab, expected: 0xcd },
                format!("the data of {id} has crc32 000000ab, the manifest says 000000cd"),
            ),
            (
                FileError::Temp { action: "sync", path: "out/.dfs-restore-x".into(), source: not_found() },
                format!("cannot sync out/.dfs-restore-x: {}", not_found()),
            ),
        ];
        for (error, expected) in cases {
            let failed = error.failed("f");
            assert_eq!((failed.path.as_str(), failed.error.as_str()), ("f", expected.as_str()), "{error:?}");
        }
    }

    #[test]
    fn an_io_cause_keeps_its_kind() {
        let error = FileError::Inspect { path: "out/x".into(), source: io::ErrorKind::PermissionDenied.into() };
        let source = std::error::Error::source(&error).and_then(|e| e.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::PermissionDenied));
    }
}
