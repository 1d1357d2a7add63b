//! The manifest of a directory-tree upload: one JSON object per line recording where each file
//! went (relative path, file ID, size, crc32 of the whole file, modification time). It is
//! appended to and flushed after every finished file, so an interrupted run leaves a valid
//! record of what was done; the last line for a path wins, and a last line cut short by a crash
//! is ignored. A run that appends holds an exclusive lock on the file, so two uploads cannot
//! interleave their lines.
//!
//! Parsing checks the form of each line only. Whether a path may be written is the business of
//! whoever writes it ([`check_relative`]), so one hostile line fails that file alone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

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
    pub fn file_id(&self) -> Result<crate::FileId, String> {
        self.id.parse().map_err(|e| format!("the manifest's file ID {:?} is not valid: {e}", self.id))
    }
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
    #[error("manifest {}, line {line}: {why}", path.display())]
    Line { path: PathBuf, line: usize, why: String },
}

/// The entries of a manifest's text, last line per path winning. A final line without its
/// newline that does not parse is the trace of an interrupted write and is ignored; any other
/// bad line is an error naming it.
pub fn parse(text: &str, path_for_errors: &Path) -> Result<BTreeMap<String, Entry>, ManifestError> {
    let mut entries = BTreeMap::new();
    let complete = text.is_empty() || text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (idx, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let is_last = idx + 1 == lines.len();
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(_) if is_last && !complete => break,
            Err(e) => {
                return Err(ManifestError::Line { path: path_for_errors.into(), line: idx + 1, why: e.to_string() })
            }
        };
        entries.insert(entry.path.clone(), entry);
    }
    Ok(entries)
}

/// Reads a manifest file that must exist (for restoring).
pub fn load(path: &Path) -> Result<BTreeMap<String, Entry>, ManifestError> {
    let bytes =
        std::fs::read(path).map_err(|source| ManifestError::Io { action: "read", path: path.into(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| ManifestError::Line {
        path: path.into(),
        line: line_of(e.as_bytes(), e.utf8_error().valid_up_to()),
        why: "not valid UTF-8".into(),
    })?;
    parse(&text, path)
}

/// The 1-based line number of byte offset `at`.
fn line_of(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at.min(bytes.len())].iter().filter(|&&b| b == b'\n').count()
}

/// A relative path that stays inside the directory it is joined to: not empty, not absolute,
/// no `..`, no `.` components and no empty ones.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err("the path is absolute; manifest paths are relative to the output directory".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("the path contains `..` and would leave the output directory".into());
    }
    if path.split('/').any(|c| c.is_empty() || c == ".") {
        return Err("the path has an empty or `.` component".into());
    }
    if Path::new(path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err("the path does not stay inside the output directory".into());
    }
    Ok(())
}

/// Appends entries to a manifest file, one flushed line each, holding the file's lock.
pub struct Writer {
    file: File,
}

impl Writer {
    /// Opens (or creates) a manifest for appending and returns it with the entries it already
    /// holds. Fails if another process holds its lock. A previous run cut short mid-line left a
    /// partial last line: it is cut off (or, if it is a whole entry that only lacks its newline,
    /// completed), so that every line stays a complete entry and the entries returned are
    /// exactly those in the file.
    pub fn open(path: &Path) -> Result<(Writer, BTreeMap<String, Entry>), ManifestError> {
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
        let entries = parse(&text, path)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let tail_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let tail_is_entry = serde_json::from_slice::<Entry>(&bytes[tail_start..]).is_ok();
            if tail_is_entry {
                file.write_all(b"\n").map_err(io_error("append to"))?;
            } else {
                file.set_len(tail_start as u64).map_err(io_error("truncate"))?;
            }
        }
        Ok((Writer { file }, entries))
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
        let got = parse(&text, m()).expect("parse");
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
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a/..", "..", "x\0y"] {
            assert!(check_relative(bad).is_err(), "{bad:?} was accepted");
            // The line itself is well formed: the file it names fails, not the whole manifest.
            let text = format!("{}\n", line(bad, 1));
            assert_eq!(parse(&text, m()).expect("parse")[bad].path, bad);
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
        assert_eq!(before.keys().collect::<Vec<_>>(), ["kept"]);
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
        let got = load(&path).expect("load");
        assert_eq!(got.get("x/y"), Some(&e));
        assert_eq!(got.len(), 2, "the complete line before the cut one is kept: {got:?}");

        // A whole entry that lost only its newline is kept, and the next line starts on its own.
        std::fs::write(&path, line("whole", 1)).expect("write");
        let (mut w, before) = Writer::open(&path).expect("open");
        assert_eq!(before.keys().collect::<Vec<_>>(), ["whole"]);
        w.append(&e).expect("append");
        drop(w);
        assert_eq!(load(&path).expect("load").len(), 2);
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
    fn a_missing_or_non_utf8_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.jsonl");
        assert!(load(&missing).expect_err("missing").to_string().contains("nope.jsonl"));
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, [line("a", 1).as_bytes(), b"\n\xff\xfe\n"].concat()).expect("write");
        assert!(load(&bad).expect_err("non-UTF-8").to_string().contains("line 2"));
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
            entries in proptest::collection::vec(arb_entry(), 0..8),
            cut_frac in 0.0f64..=1.0,
        ) {
            let text: String = entries.iter().map(|e| serde_json::to_string(e).expect("serialize") + "\n").collect();
            let mut cut = (text.len() as f64 * cut_frac) as usize;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let got = parse(&text[..cut], m()).expect("a cut manifest must parse");
            // Lines wholly before the cut, plus the cut one if what is left of it is still a
            // complete object (only its newline was lost).
            let mut expected = BTreeMap::new();
            let mut offset = 0;
            for e in &entries {
                let len = serde_json::to_string(e).expect("serialize").len();
                if offset + len <= cut {
                    expected.insert(e.path.clone(), e.clone());
                }
                offset += len + 1;
            }
            prop_assert_eq!(got, expected);
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
