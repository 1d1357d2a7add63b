//! Whole directory trees: `put -r` uploads every regular file of a tree in parallel and records
//! each in a manifest (see [`crate::manifest`]); a rerun with the same manifest skips files
//! already stored unchanged. `get -r` restores a tree from a manifest, verifying every file.
//! Both report progress through a [`TreeProgress`] and end with a [`TreeSummary`].

use crate::manifest::{self, Entry};
use crate::{Chunking, Client, MappedFile, Progress};
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// How a tree transfer reports progress; called from every worker thread.
pub trait TreeProgress: Sync {
    /// The transfer of `n_files` files, `n_bytes` bytes in all, begins.
    fn start(&self, n_files: u64, n_bytes: u64);
    /// `n_bytes` more bytes of some file moved.
    fn bytes(&self, n_bytes: u64);
    /// One more file is done (moved, skipped or failed).
    fn file_done(&self);
    fn finish(&self);
}

/// What a tree transfer did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TreeSummary {
    pub files_done: u64,
    pub bytes_done: u64,
    /// Stored unchanged by an earlier run (put), or already present and identical (get).
    pub skipped_unchanged: u64,
    /// put: found already stored under their path with the same bytes, though the manifest
    /// did not record them (an earlier run stopped between storing and recording), so recorded
    /// now instead of stored twice.
    pub adopted: u64,
    /// Symlinks and special files, with what they are.
    pub skipped_not_regular: Vec<Skipped>,
    pub failed: Vec<Failed>,
    pub elapsed_s: f64,
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

/// Options of `put -r`.
pub struct PutTree<'a> {
    pub server: &'a str,
    pub root: &'a Path,
    pub manifest: &'a Path,
    pub jobs: usize,
    pub follow_symlinks: bool,
    pub chunking: Chunking,
}

/// Options of `get -r`.
pub struct GetTree<'a> {
    pub server: &'a str,
    pub manifest: &'a Path,
    pub out_dir: &'a Path,
    pub jobs: usize,
    /// Replace existing files that differ from the manifest instead of failing them.
    pub force: bool,
}

/// A file to upload.
struct Upload {
    rel: String,
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symlink"
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
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
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

fn connected<'a>(client: &'a mut Option<Client>, server: &str) -> crate::Result<&'a mut Client> {
    if client.is_none() {
        *client = Some(Client::connect(server)?);
    }
    Ok(client.as_mut().expect("connected above"))
}

fn finish(summary: &mut TreeSummary, started: Instant) {
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.throughput_mib_s =
        if summary.elapsed_s > 0.0 { summary.bytes_done as f64 / (1 << 20) as f64 / summary.elapsed_s } else { 0.0 };
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    summary.skipped_not_regular.sort_by(|a, b| a.path.cmp(&b.path));
}

/// Uploads a directory tree. Err: the run could not start (unreadable root or manifest).
pub fn put_tree(opts: &PutTree, progress: &dyn TreeProgress) -> Result<TreeSummary, String> {
    let started = Instant::now();
    let root_meta = std::fs::metadata(opts.root).map_err(|e| format!("cannot read {}: {e}", opts.root.display()))?;
    if !root_meta.is_dir() {
        return Err(format!("{} is not a directory", opts.root.display()));
    }
    let done_before = manifest::load(opts.manifest).map_err(|e| e.to_string())?;
    let mut summary = TreeSummary::default();
    let mut uploads = Vec::new();
    for entry in walkdir::WalkDir::new(opts.root).follow_links(opts.follow_symlinks).sort_by_file_name() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                summary.failed.push(Failed { path, error: e.to_string() });
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
        if !ft.is_file() {
            summary.skipped_not_regular.push(Skipped { path: rel, kind: kind_of(ft).into() });
            continue;
        }
        match entry.metadata() {
            Ok(meta) => uploads.push(Upload {
                rel,
                path: entry.path().to_path_buf(),
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            }),
            Err(e) => summary.failed.push(Failed { path: rel, error: e.to_string() }),
        }
    }
    // A rerun may find files an interrupted run stored but never recorded: look them up by name
    // rather than store them twice.
    let mut stored_by_name: std::collections::HashMap<String, Vec<(crate::FileId, u64)>> = Default::default();
    if !done_before.is_empty() {
        let files = Client::connect(opts.server).and_then(|mut c| c.list()).map_err(|e| format!("{e:#}"))?;
        for f in files {
            stored_by_name.entry(f.name).or_default().push((f.file_id, f.size));
        }
    }
    let writer = Mutex::new(
        manifest::Writer::open(opts.manifest)
            .map_err(|e| format!("cannot open manifest {}: {e}", opts.manifest.display()))?,
    );
    progress.start(uploads.len() as u64, uploads.iter().map(|u| u.size).sum());

    enum Outcome {
        Uploaded(u64),
        Unchanged,
        Adopted,
        Failed(Failed),
    }
    let outcomes = run_parallel(opts.jobs, uploads, |client, up| {
        let result = (|| -> Result<Outcome, String> {
            let conn = connected(client, opts.server).map_err(|e| format!("{e:#}"))?;
            if let Some(prev) = done_before.get(&up.rel) {
                if prev.size == up.size && prev.mtime_ns == up.mtime_ns {
                    // Unchanged here; skip it if the engine still has it as recorded.
                    let still_there =
                        prev.file_id().ok().and_then(|id| conn.stat(id).ok()).is_some_and(|info| info.size == up.size);
                    if still_there {
                        progress.bytes(up.size);
                        return Ok(Outcome::Unchanged);
                    }
                }
            }
            let file = MappedFile::open(&up.path).map_err(|e| e.to_string())?;
            if file.len() as u64 != up.size {
                return Err("the file changed while it was being read".into());
            }
            let crc32 = crc32fast::hash(&file);
            let record = |id: crate::FileId| -> Result<(), String> {
                let entry =
                    Entry { path: up.rel.clone(), id: id.to_string(), size: up.size, crc32, mtime_ns: up.mtime_ns };
                writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append(&entry)
                    .map_err(|e| format!("stored as {id}, but the manifest could not be written: {e}"))
            };
            let same_size = stored_by_name.get(&up.rel).into_iter().flatten().filter(|(_, size)| *size == up.size);
            for (id, _) in same_size {
                if let Ok(info) = conn.stat(*id) {
                    let same_bytes = info.chunks.iter().all(|c| {
                        let range = c.offset as usize..(c.offset + c.length) as usize;
                        file.get(range).is_some_and(|bytes| crc32fast::hash(bytes) == c.crc32)
                    });
                    if same_bytes {
                        record(*id)?;
                        progress.bytes(up.size);
                        return Ok(Outcome::Adopted);
                    }
                }
            }
            let id =
                conn.put_bytes(&up.rel, &file, opts.chunking, &mut FileBytes(progress)).map_err(|e| e.to_string())?;
            record(id)?;
            Ok(Outcome::Uploaded(up.size))
        })();
        progress.file_done();
        result.unwrap_or_else(|error| Outcome::Failed(Failed { path: up.rel.clone(), error }))
    });
    for outcome in outcomes {
        match outcome {
            Outcome::Uploaded(n) => {
                summary.files_done += 1;
                summary.bytes_done += n;
            }
            Outcome::Unchanged => summary.skipped_unchanged += 1,
            Outcome::Adopted => summary.adopted += 1,
            Outcome::Failed(f) => summary.failed.push(f),
        }
    }
    if let Err(e) = writer.lock().unwrap_or_else(|e| e.into_inner()).sync() {
        summary.failed.push(Failed { path: opts.manifest.display().to_string(), error: format!("cannot sync: {e}") });
    }
    progress.finish();
    finish(&mut summary, started);
    Ok(summary)
}

/// crc32 of a local file, or None if it cannot be read.
fn crc32_of(path: &Path) -> Option<(u64, u32)> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Restores a tree from a manifest. Err: the run could not start.
pub fn get_tree(opts: &GetTree, progress: &dyn TreeProgress) -> Result<TreeSummary, String> {
    let started = Instant::now();
    let entries: BTreeMap<String, Entry> = match std::fs::read_to_string(opts.manifest) {
        Ok(text) => manifest::parse(&text, &opts.manifest.display().to_string()).map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("cannot read manifest {}: {e}", opts.manifest.display())),
    };
    std::fs::create_dir_all(opts.out_dir).map_err(|e| format!("cannot create {}: {e}", opts.out_dir.display()))?;
    let mut summary = TreeSummary::default();
    progress.start(entries.len() as u64, entries.values().map(|e| e.size).sum());
    enum Outcome {
        Restored(u64),
        Unchanged,
        Failed(Failed),
    }
    let outcomes = run_parallel(opts.jobs, entries.into_values().collect(), |client, entry| {
        let result = (|| -> Result<Outcome, String> {
            // parse() already refused paths that leave the directory; check again where it is used.
            manifest::check_relative(&entry.path)?;
            let dest = opts.out_dir.join(&entry.path);
            if std::fs::symlink_metadata(&dest).is_ok() {
                if crc32_of(&dest) == Some((entry.size, entry.crc32)) {
                    progress.bytes(entry.size);
                    return Ok(Outcome::Unchanged);
                }
                if !opts.force {
                    return Err(format!(
                        "{} exists and differs from the manifest (use --force to replace it)",
                        dest.display()
                    ));
                }
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let id = entry.file_id()?;
            let conn = connected(client, opts.server).map_err(|e| format!("{e:#}"))?;
            let info = conn.get_to_path(id, &dest, &mut FileBytes(progress)).map_err(|e| e.to_string())?;
            if info.size != entry.size {
                let _ = std::fs::remove_file(&dest);
                return Err(format!("the engine has {} bytes for {id}, the manifest says {}", info.size, entry.size));
            }
            match crc32_of(&dest) {
                Some((_, crc)) if crc == entry.crc32 => Ok(Outcome::Restored(entry.size)),
                Some((_, crc)) => {
                    let _ = std::fs::remove_file(&dest);
                    Err(format!("restored data has crc32 {crc:08x}, the manifest says {:08x}", entry.crc32))
                }
                None => Err(format!("cannot read back {}", dest.display())),
            }
        })();
        progress.file_done();
        result.unwrap_or_else(|error| Outcome::Failed(Failed { path: entry.path.clone(), error }))
    });
    for outcome in outcomes {
        match outcome {
            Outcome::Restored(n) => {
                summary.files_done += 1;
                summary.bytes_done += n;
            }
            Outcome::Unchanged => summary.skipped_unchanged += 1,
            Outcome::Failed(f) => summary.failed.push(f),
        }
    }
    progress.finish();
    finish(&mut summary, started);
    Ok(summary)
}
