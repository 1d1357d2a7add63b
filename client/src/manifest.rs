//! The manifest of a directory-tree upload: one JSON object per line recording where each file
//! went (relative path, file ID, size, crc32 of the whole file, modification time). It is
//! appended to and flushed after every finished file, so an interrupted run leaves a valid
//! record of what was done; the last line for a path wins, and a last line cut short by a crash
//! is ignored.

use crate::FileId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path};

/// One uploaded file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the uploaded directory, `/`-separated.
    pub path: String,
    pub id: String,
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

impl Entry {
    pub fn file_id(&self) -> Result<FileId, String> {
        self.id.parse().map_err(|e| format!("{}: bad file ID {:?}: {e}", self.path, self.id))
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("manifest {path}, line {line}: {why}")]
    Line { path: String, line: usize, why: String },
}

/// The entries of a manifest's text, last line per path winning. A final line without its
/// newline that does not parse is the trace of an interrupted write and is ignored; any other
/// bad line is an error naming it.
pub fn parse(text: &str, path_for_errors: &str) -> Result<BTreeMap<String, Entry>, ManifestError> {
    let mut entries = BTreeMap::new();
    let complete = text.ends_with('\n');
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
        if let Err(why) = check_relative(&entry.path) {
            return Err(ManifestError::Line { path: path_for_errors.into(), line: idx + 1, why });
        }
        entries.insert(entry.path.clone(), entry);
    }
    Ok(entries)
}

/// Reads a manifest file; a missing file is an empty manifest.
pub fn load(path: &Path) -> Result<BTreeMap<String, Entry>, ManifestError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(ManifestError::Io { path: path.display().to_string(), source }),
    }
}

/// A relative path that stays inside the directory it is joined to: not empty, not absolute,
/// no `..`, no `.` components and no empty ones.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(format!("path {path:?} is absolute"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("path {path:?} has an empty, `.` or `..` component"));
    }
    if Path::new(path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("path {path:?} does not stay inside the directory"));
    }
    Ok(())
}

/// Appends entries to a manifest file, one flushed line each.
pub struct Writer {
    file: File,
}

impl Writer {
    pub fn open(path: &Path) -> io::Result<Writer> {
        // A previous run cut short mid-line left a partial last line: drop it, so every line
        // in the file stays a complete entry.
        match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() && !bytes.ends_with(b"\n") => {
                let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                OpenOptions::new().write(true).open(path)?.set_len(keep as u64)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Writer { file })
    }

    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// Makes everything appended durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str, size: u64) -> String {
        format!(r#"{{"path":"{path}","id":"00112233445566778899aabbccddeeff","size":{size},"crc32":7,"mtime_ns":1}}"#)
    }

    #[test]
    fn last_line_per_path_wins_and_a_cut_last_line_is_ignored() {
        let text = format!("{}\n{}\n{}\n{}", line("a", 1), line("b/c", 2), line("a", 3), &line("d", 4)[..20]);
        let got = parse(&text, "m").expect("parse");
        assert_eq!(got.len(), 2);
        assert_eq!(got["a"].size, 3);
        assert_eq!(got["b/c"].size, 2);
    }

    #[test]
    fn garbage_in_the_middle_is_refused_with_its_line_number() {
        let text = format!("{}\nnot json\n{}\n", line("a", 1), line("b", 2));
        let err = parse(&text, "m").expect_err("garbage must be refused").to_string();
        assert!(err.contains("line 2"), "{err}");
        // A complete (newline-terminated) bad last line is refused too.
        assert!(parse(&format!("{}\n{{\"path\":1}}\n", line("a", 1)), "m").is_err());
    }

    #[test]
    fn paths_that_leave_the_directory_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a/..", "x\0y"] {
            assert!(check_relative(bad).is_err(), "{bad:?} was accepted");
            let text = format!("{}\n", line(&bad.replace('\0', "\\u0000"), 1));
            assert!(parse(&text, "m").is_err(), "manifest line with {bad:?} was accepted");
        }
        for good in ["a", "a/b c/ü.txt", "..a", "a..b/c"] {
            assert!(check_relative(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn writer_appends_parseable_lines_after_a_cut_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, format!("{}\n{}", line("kept", 1), &line("cut", 1)[..15])).expect("write");
        let mut w = Writer::open(&path).expect("open");
        let e = Entry {
            path: "x/y".into(),
            id: "00112233445566778899aabbccddeeff".into(),
            size: 5,
            crc32: 9,
            mtime_ns: -3,
        };
        w.append(&e).expect("append");
        w.sync().expect("sync");
        let got = load(&path).expect("load");
        assert_eq!(got.get("x/y"), Some(&e));
        assert_eq!(got.len(), 2, "the complete line before the cut one is kept: {got:?}");
    }
}
