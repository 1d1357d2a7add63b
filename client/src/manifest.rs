//! The manifest of a directory-tree upload: one JSON object per line recording where each file
//! went (relative path, file ID, size, crc32 of the whole file, modification time). It is
//! appended to and flushed after every finished file, so an interrupted run leaves a valid
//! record of what was done; the last line for a path wins, and a last line cut short by a crash
//! is ignored. A run that appends holds an exclusive lock on the file, so two uploads cannot
//! interleave their lines.
//!
//! A manifest also has an identity, a random [`Origin`] that every upload of its runs carries to
//! the engine, so that a rerun can tell the files its own earlier runs stored (and perhaps never
//! recorded) from files anyone else stored under the same name. It lives in a header line,
//! `{"dfs_manifest":1,"origin":"<32 hex digits>"}`, which [`Writer::open`] writes and syncs
//! before the run stores anything, so even a run killed before its first entry line leaves it
//! behind. A manifest from before identities has no header: its next run appends one (not
//! necessarily as the first line; the first header in the file is the identity, wherever it is).
//!
//! Parsing checks the form of each line only. Whether a path may be written is the business of
//! whoever writes it ([`check_relative`]), so one hostile line fails that file alone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use crate::Origin;
use dfs_proto::ParseIdError;

/// The header format [`Writer::open`] writes; a header of another format is refused.
pub const HEADER_FORMAT: u32 = 1;

/// One uploaded file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the uploaded directory, `/`-separated.
    pub path: String,
    /// The file ID the engine handed out (32 hex digits).
    pub id: String,
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

impl Entry {
    pub fn file_id(&self) -> Result<crate::FileId, BadFileId> {
        self.id.parse().map_err(|source| BadFileId { id: self.id.clone(), source })
    }
}

/// An entry whose file ID does not parse: that file fails, not the whole manifest.
#[derive(Debug, thiserror::Error)]
#[error("the manifest's file ID {id:?} is not valid")]
pub struct BadFileId {
    pub id: String,
    #[source]
    pub source: ParseIdError,
}

/// The line naming a manifest's identity (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    /// The header's format, [`HEADER_FORMAT`]; also what tells a header from an entry.
    dfs_manifest: u32,
    /// The manifest's identity, 32 hex digits.
    origin: String,
}

impl Header {
    fn new(origin: Origin) -> Header {
        Header { dfs_manifest: HEADER_FORMAT, origin: origin.to_string() }
    }

    fn origin(&self) -> Result<Origin, LineError> {
        if self.dfs_manifest != HEADER_FORMAT {
            return Err(LineError::HeaderFormat(self.dfs_manifest));
        }
        self.origin.parse().map_err(LineError::Origin)
    }
}

/// One line of a manifest.
enum Line {
    Entry(Entry),
    Header(Header),
}

impl Line {
    /// An entry, else a header; the error is the entry's, since nearly every line is one.
    fn parse(text: &[u8]) -> Result<Line, serde_json::Error> {
        match serde_json::from_slice::<Entry>(text) {
            Ok(entry) => Ok(Line::Entry(entry)),
            Err(e) => serde_json::from_slice::<Header>(text).map(Line::Header).map_err(|_| e),
        }
    }
}

/// What a manifest holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// Its identity, from its first header line; None for a manifest without one (new, or
    /// written before identities).
    pub origin: Option<Origin>,
    /// Its entries, last line per path winning.
    pub entries: BTreeMap<String, Entry>,
}

/// Why a manifest cannot be read or appended to.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot {action} the manifest {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the manifest {} is in use by another dfs-client (it holds the file's lock)", .0.display())]
    Busy(PathBuf),
    /// `why` is part of the message rather than a `source()`: the line number alone says
    /// little.
    #[error("manifest {}, line {line}: {why}", path.display())]
    Line { path: PathBuf, line: usize, why: LineError },
}

/// What is wrong with one line of a manifest.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Neither an entry nor a header (the error is the entry's, since nearly every line is one).
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("manifest header format {0} is not the one this client knows ({HEADER_FORMAT})")]
    HeaderFormat(u32),
    #[error(transparent)]
    Origin(ParseIdError),
}

/// The identity and entries of a manifest's text, last line per path winning. A final line
/// without its newline that does not parse is the trace of an interrupted write and is ignored;
/// any other bad line, a malformed header included, is an error naming it. Of several headers
/// (manifests concatenated by hand) the first is the identity.
pub fn parse(text: &str, path_for_errors: &Path) -> Result<Contents, ManifestError> {
    let mut contents = Contents::default();
    let complete = text.is_empty() || text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (idx, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let is_last = idx + 1 == lines.len();
        let bad = |why: LineError| ManifestError::Line { path: path_for_errors.into(), line: idx + 1, why };
        match Line::parse(line.as_bytes()) {
            Ok(Line::Entry(entry)) => {
                contents.entries.insert(entry.path.clone(), entry);
            }
            Ok(Line::Header(header)) => {
                let origin = header.origin().map_err(bad)?;
                contents.origin.get_or_insert(origin);
            }
            Err(_) if is_last && !complete => break,
            Err(e) => return Err(bad(LineError::Json(e))),
        }
    }
    Ok(contents)
}

/// Reads a manifest file that must exist (for restoring).
pub fn load(path: &Path) -> Result<Contents, ManifestError> {
    let bytes =
        std::fs::read(path).map_err(|source| ManifestError::Io { action: "read", path: path.into(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| ManifestError::Line {
        path: path.into(),
        line: line_of(e.as_bytes(), e.utf8_error().valid_up_to()),
        why: LineError::NotUtf8,
    })?;
    parse(&text, path)
}

/// The 1-based line number of byte offset `at`.
fn line_of(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at.min(bytes.len())].iter().filter(|&&b| b == b'\n').count()
}

/// Why a manifest path may not be written (see [`check_relative`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    #[error("the path is empty")]
    Empty,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path is absolute; manifest paths are relative to the output directory")]
    Absolute,
    #[error("the path contains `..` and would leave the output directory")]
    ParentDir,
    #[error("the path has an empty or `.` component")]
    EmptyOrDotComponent,
    #[error("the path does not stay inside the output directory")]
    Escapes,
}

/// A relative path that stays inside the directory it is joined to: not empty, not absolute,
/// no `..`, no `.` components and no empty ones.
pub fn check_relative(path: &str) -> Result<(), UnsafePath> {
    if path.is_empty() {
        return Err(UnsafePath::Empty);
    }
    if path.contains('\0') {
        return Err(UnsafePath::Nul);
    }
    if path.starts_with('/') {
        return Err(UnsafePath::Absolute);
    }
    if path.split('/').any(|c| c == "..") {
        return Err(UnsafePath::ParentDir);
    }
    if path.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(UnsafePath::EmptyOrDotComponent);
    }
    if Path::new(path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(UnsafePath::Escapes);
    }
    Ok(())
}

/// Appends entries to a manifest file, one flushed line each, holding the file's lock.
pub struct Writer {
    file: File,
    origin: Origin,
}

impl Writer {
    /// Opens (or creates) a manifest for appending and returns it with what it already holds.
    /// Fails if another process holds its lock. A previous run cut short mid-line left a
    /// partial last line: it is cut off (or, if it is a whole line that only lacks its newline,
    /// completed), so that every line stays complete and the contents returned are exactly
    /// those in the file.
    ///
    /// A manifest without an identity (new, or from before identities) is given one: a header
    /// line is appended and made durable, file and directory entry, before this returns, so no
    /// upload can carry an identity the manifest might lose. The contents returned are those
    /// from before, so `origin` is None then: no earlier run stored anything under the new
    /// identity. [`Writer::origin`] is the identity in force either way.
    pub fn open(path: &Path) -> Result<(Writer, Contents), ManifestError> {
        let io_error = |action| move |source| ManifestError::Io { action, path: path.into(), source };
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io_error("open"))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call; the
        // lock is released when the descriptor is closed with the Writer.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                ManifestError::Busy(path.into())
            } else {
                io_error("lock")(e)
            });
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io_error("read"))?;
        file.read_to_end(&mut bytes).map_err(io_error("read"))?;
        let text = String::from_utf8_lossy(&bytes);
        let contents = parse(&text, path)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let tail_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            // parse() kept a whole last line only if it read as a line; the same test here.
            if Line::parse(&bytes[tail_start..]).is_ok() {
                file.write_all(b"\n").map_err(io_error("append to"))?;
            } else {
                file.set_len(tail_start as u64).map_err(io_error("truncate"))?;
            }
        }
        let origin = match contents.origin {
            Some(origin) => origin,
            None => {
                let origin = Origin::random().map_err(io_error("draw an identity for"))?;
                let mut line = serde_json::to_vec(&Header::new(origin)).map_err(|e| io_error("write")(e.into()))?;
                line.push(b'\n');
                file.write_all(&line).map_err(io_error("append to"))?;
                file.sync_all().map_err(io_error("sync"))?;
                sync_parent_dir(path).map_err(io_error("sync the directory of"))?;
                origin
            }
        };
        Ok((Writer { file, origin }, contents))
    }

    /// The manifest's identity, which every upload of this run carries.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per line: with O_APPEND a line is never split by another writer's, and a
        // crash leaves at most this line cut short.
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// Makes everything appended durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// The open manifest, for telling it apart from the files being uploaded.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Makes a file's directory entry durable: a manifest created by this run must not vanish in a
/// crash while files carrying its identity survive on the engine.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(path: &str, size: u64) -> String {
        serde_json::to_string(&entry(path, size)).expect("serialize")
    }

    fn entry(path: &str, size: u64) -> Entry {
        Entry { path: path.into(), id: "00112233445566778899aabbccddeeff".into(), size, crc32: 7, mtime_ns: 1 }
    }

    fn m() -> &'static Path {
        Path::new("m")
    }

    #[test]
    fn last_line_per_path_wins_and_a_cut_last_line_is_ignored() {
        let text = format!("{}\n{}\n{}\n{}", line("a", 1), line("b/c", 2), line("a", 3), &line("d", 4)[..20]);
        let got = parse(&text, m()).expect("parse").entries;
        assert_eq!(got.len(), 2);
        assert_eq!(got["a"].size, 3);
        assert_eq!(got["b/c"].size, 2);
    }

    #[test]
    fn garbage_is_refused_with_its_line_number() {
        let text = format!("{}\nnot json\n{}\n", line("a", 1), line("b", 2));
        let err = parse(&text, m()).expect_err("garbage must be refused").to_string();
        assert!(err.contains("line 2"), "{err}");
        // A complete (newline-terminated) bad last line is refused too, and so is a line that is
        // JSON but not an entry.
        let err = parse(&format!("{}\n{{\"path\":1}}\n", line("a", 1)), m()).expect_err("bad last line").to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse(&format!("\n{}\n[1,2]\n{}\n", line("a", 1), line("b", 1)), m()).expect_err("array");
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn paths_that_leave_the_directory_are_refused_by_check_relative_only() {
        use UnsafePath::*;
        for (bad, why) in [
            ("", Empty),
            ("/etc/passwd", Absolute),
            ("../x", ParentDir),
            ("a/../../x", ParentDir),
            ("a//b", EmptyOrDotComponent),
            ("./a", EmptyOrDotComponent),
            ("a/.", EmptyOrDotComponent),
            ("a/..", ParentDir),
            ("..", ParentDir),
            ("x\0y", Nul),
        ] {
            assert_eq!(check_relative(bad), Err(why), "{bad:?}");
            // The line itself is well formed: the file it names fails, not the whole manifest.
            let text = format!("{}\n", line(bad, 1));
            assert_eq!(parse(&text, m()).expect("parse").entries[bad].path, bad);
        }
        for good in ["a", "a/b c/ü.txt", "..a", "a..b/c", ".hidden", "a/.b"] {
            assert!(check_relative(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn writer_cuts_a_partial_line_and_completes_a_whole_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, format!("{}\n{}", line("kept", 1), &line("cut", 1)[..15])).expect("write");
        let (mut w, before) = Writer::open(&path).expect("open");
        assert_eq!(before.entries.keys().collect::<Vec<_>>(), ["kept"]);
        let e = Entry {
            path: "x/y".into(),
            id: "00112233445566778899aabbccddeeff".into(),
            size: 5,
            crc32: 9,
            mtime_ns: -3,
        };
        w.append(&e).expect("append");
        w.sync().expect("sync");
        drop(w);
        let got = load(&path).expect("load").entries;
        assert_eq!(got.get("x/y"), Some(&e));
        assert_eq!(got.len(), 2, "the complete line before the cut one is kept: {got:?}");

        // A whole entry that lost only its newline is kept, and the next line starts on its own.
        std::fs::write(&path, line("whole", 1)).expect("write");
        let (mut w, before) = Writer::open(&path).expect("open");
        assert_eq!(before.entries.keys().collect::<Vec<_>>(), ["whole"]);
        w.append(&e).expect("append");
        drop(w);
        assert_eq!(load(&path).expect("load").entries.len(), 2);
    }

    fn header_line(origin: &str) -> String {
        format!("{{\"dfs_manifest\":1,\"origin\":\"{origin}\"}}")
    }

    #[test]
    fn a_new_manifest_starts_with_its_identity_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let (mut w, before) = Writer::open(&path).expect("open");
        assert_eq!(before, Contents::default(), "a new manifest has no identity runs could have used");
        let origin = w.origin();
        // Written before any entry, so a run killed before its first entry leaves it behind.
        assert_eq!(std::fs::read_to_string(&path).expect("read"), header_line(&origin.to_string()) + "\n");
        w.append(&entry("a", 1)).expect("append");
        drop(w);
        let (w, again) = Writer::open(&path).expect("reopen");
        assert_eq!((again.origin, w.origin()), (Some(origin), origin));
        assert_eq!(again.entries.keys().collect::<Vec<_>>(), ["a"]);
        drop(w);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches("dfs_manifest").count(), 1, "a second header was written: {text}");
        assert_eq!(load(&path).expect("load").origin, Some(origin));
    }

    #[test]
    fn an_old_manifest_gets_an_identity_appended_and_loses_no_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.jsonl");
        std::fs::write(&path, format!("{}\n{}\n", line("a", 1), line("b", 2))).expect("write");
        let (w, before) = Writer::open(&path).expect("open");
        assert_eq!(before.origin, None, "nothing was stored under an identity it never had");
        assert_eq!(before.entries.len(), 2);
        let origin = w.origin();
        drop(w);
        let got = load(&path).expect("load");
        assert_eq!((got.origin, got.entries.len()), (Some(origin), 2));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with(&(header_line(&origin.to_string()) + "\n")), "{text}");
    }

    #[test]
    fn a_header_cut_short_is_dropped_and_a_new_identity_drawn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let old = "ab".repeat(16);
        std::fs::write(&path, &header_line(&old)[..30]).expect("write");
        let (w, before) = Writer::open(&path).expect("open");
        assert_eq!(before.origin, None);
        assert_ne!(w.origin().to_string(), old);
        drop(w);
        assert_eq!(std::fs::read_to_string(&path).expect("read").lines().count(), 1);
        // A whole header that only lost its newline is kept.
        std::fs::write(&path, header_line(&old)).expect("write");
        let (w, before) = Writer::open(&path).expect("open");
        assert_eq!((before.origin, w.origin().to_string()), (Some(old.parse().expect("origin")), old.clone()));
    }

    #[test]
    fn the_first_header_is_the_identity_and_a_malformed_one_is_refused() {
        let (first, second) = ("01".repeat(16), "02".repeat(16));
        let text = format!("{}\n{}\n{}\n", header_line(&first), line("a", 1), header_line(&second));
        let got = parse(&text, m()).expect("parse");
        assert_eq!(got.origin, Some(first.parse().expect("origin")));
        assert_eq!(got.entries.len(), 1);
        for (bad, why) in [
            (header_line("ABAB"), "origin"),
            (header_line(&"AB".repeat(16)), "origin"),
            (format!("{{\"dfs_manifest\":2,\"origin\":\"{first}\"}}"), "format 2"),
            ("{\"dfs_manifest\":1}".to_string(), "line 2"),
        ] {
            let err = parse(&format!("{}\n{bad}\n", line("a", 1)), m()).expect_err(&bad).to_string();
            assert!(err.contains("line 2") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        let first = Writer::open(&path).expect("open");
        let err = Writer::open(&path).err().expect("the second open must fail");
        assert!(matches!(err, ManifestError::Busy(_)), "{err}");
        drop(first);
        Writer::open(&path).expect("open after the first closed");
    }

    #[test]
    fn a_bad_file_id_names_itself_and_keeps_the_parse_error() {
        let e = Entry { id: "not-an-id".into(), ..entry("a", 1) }.file_id().expect_err("not an ID");
        assert_eq!(e.source, ParseIdError::File("not-an-id".into()));
        assert_eq!(
            crate::error_chain(&e),
            "the manifest's file ID \"not-an-id\" is not valid: malformed file ID \"not-an-id\": expected 32 hex digits"
        );
    }

    #[test]
    fn a_missing_or_non_utf8_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.jsonl");
        let e = load(&missing).expect_err("missing");
        assert!(e.to_string().contains("nope.jsonl"), "{e}");
        assert!(matches!(&e, ManifestError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{e:?}");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, [line("a", 1).as_bytes(), b"\n\xff\xfe\n"].concat()).expect("write");
        let e = load(&bad).expect_err("non-UTF-8");
        assert!(matches!(e, ManifestError::Line { line: 2, why: LineError::NotUtf8, .. }), "{e:?}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        ("[a-z ü/]{1,12}", any::<u64>(), any::<u32>(), any::<i64>()).prop_map(|(path, size, crc32, mtime)| Entry {
            path,
            id: "00112233445566778899aabbccddeeff".into(),
            size,
            crc32,
            mtime_ns: mtime as i128 * 3,
        })
    }

    proptest! {
        /// Cutting a manifest anywhere (a crash mid-append) never makes it unreadable: every
        /// line finished before the cut is read, last line per path winning, and nothing else.
        #[test]
        fn a_manifest_cut_anywhere_reads_as_its_finished_lines(
            origin in proptest::option::of(any::<[u8; 16]>().prop_map(Origin)),
            entries in proptest::collection::vec(arb_entry(), 0..8),
            cut_frac in 0.0f64..=1.0,
        ) {
            let header = origin.map(|o| serde_json::to_string(&Header::new(o)).expect("serialize") + "\n");
            let header = header.unwrap_or_default();
            let text: String = std::iter::once(header.clone())
                .chain(entries.iter().map(|e| serde_json::to_string(e).expect("serialize") + "\n"))
                .collect();
            let mut cut = (text.len() as f64 * cut_frac) as usize;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let got = parse(&text[..cut], m()).expect("a cut manifest must parse");
            // Lines wholly before the cut, plus the cut one if what is left of it is still a
            // complete object (only its newline was lost).
            let header_kept = !header.is_empty() && header.len() - 1 <= cut;
            prop_assert_eq!(got.origin, if header_kept { origin } else { None });
            let mut expected = BTreeMap::new();
            let mut offset = header.len();
            for e in &entries {
                let len = serde_json::to_string(e).expect("serialize").len();
                if offset + len <= cut {
                    expected.insert(e.path.clone(), e.clone());
                }
                offset += len + 1;
            }
            prop_assert_eq!(got.entries, expected);
        }

        /// Whatever the text, parsing returns entries or an error naming a line; it never panics.
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            if let Err(ManifestError::Line { line, .. }) = parse(&text, m()) {
                prop_assert!(line >= 1 && line <= text.lines().count());
            }
        }
    }
}
