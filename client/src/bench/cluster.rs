//! `--local`: a throw-away cluster for one benchmark run. It starts `dfs-engine --local 4` (the
//! engine plus four node processes on the next four loopback ports) from the directory of the
//! running executable, with its data and log in a new temporary directory, and stops it and
//! removes the directory when dropped, whether the benchmark succeeded or not.
//!
//! If the engine does not start, the directory is kept and the error names its log, since the
//! log is then the only explanation.

use super::BenchError;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use std::{io, thread};

/// Nodes of the local cluster: the fewest an engine accepts.
const N_NODES: u16 = 4;
/// How long the engine (which starts its nodes first) may take to print `listening ADDR`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the engine's log quoted when it failed to start: its last words are the reason.
const START_FAILURE_LOG_LINES: usize = 8;
/// Lines of the engine's log worth quoting after a failed request: enough for the engine's
/// view of the failure, short enough to keep the error line readable.
pub const LOG_TAIL_LINES: usize = 3;
/// The most of the log's end read to find those lines.
const LOG_TAIL_MAX_BYTES: u64 = 16 * 1024;
/// Attempts at removing the data directory: the nodes learn of the engine's death by a signal
/// and may still be exiting when the engine has been reaped.
const REMOVE_ATTEMPTS: usize = 20;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A running local cluster. Dropping it kills the engine (its nodes follow it) and removes the
/// data directory.
pub struct LocalCluster {
    child: Child,
    server: dfs_client::Server,
    dir: PathBuf,
    log_path: PathBuf,
    /// Set when the engine failed to start, so its log outlives the cluster.
    keep_dir: bool,
}

impl LocalCluster {
    /// Starts the engine found next to the current executable and waits for it to listen.
    pub fn start() -> Result<LocalCluster, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Cluster(format!("cannot locate the running executable: {e}")))?;
        let engine_exe = exe.with_file_name("dfs-engine");
        if !engine_exe.is_file() {
            return Err(BenchError::Cluster(format!(
                "{} not found next to {}: build it (cargo build --release)",
                engine_exe.display(),
                exe.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("dfs-bench-cluster-")
            .tempdir()
            .map_err(|source| BenchError::File {
                action: "create a directory for the local cluster in",
                path: std::env::temp_dir(),
                source,
            })?
            .keep();
        let log_path = dir.join("engine.log");
        match start_engine(&engine_exe, &dir, &log_path) {
            Ok(started) => {
                let mut cluster = LocalCluster {
                    child: started.child,
                    server: dfs_client::Server::new(started.addr.to_string()),
                    dir,
                    log_path,
                    keep_dir: false,
                };
                // The engine made a random access key for this cluster; present it.
                let key_file = cluster.dir.join("data").join("access.key");
                let key =
                    dfs_proto::auth::read_client_key(&key_file).map_err(|e| BenchError::Cluster(e.to_string()))?;
                cluster.server = cluster.server.clone().with_key(Some(key));
                Ok(cluster)
            }
            Err(StartError::Log(e)) => {
                // Best effort: nothing ran, so the directory holds nothing worth keeping.
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
            // Keep the directory: the log in it is the only explanation.
            Err(StartError::Launch(why)) => Err(BenchError::Cluster(format!(
                "the local cluster did not start: {why}; its log is {}, ending: {}",
                log_path.display(),
                tail_of(&log_path, START_FAILURE_LOG_LINES)
            ))),
        }
    }

    /// The cluster's engine, with the access key it made.
    pub fn server(&self) -> &dfs_client::Server {
        &self.server
    }

    /// The directory holding the cluster's data and the engine's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `n_lines` lines of the engine's log (its nodes log there too), joined by ` | `
    /// so that they fit on the one line of an error message.
    pub fn log_tail(&self, n_lines: usize) -> String {
        tail_of(&self.log_path, n_lines)
    }
}

/// The last `n_lines` lines of the log at `path`, joined by ` | `.
fn tail_of(path: &Path, n_lines: usize) -> String {
    match read_tail(path, n_lines) {
        Ok(lines) if lines.is_empty() => "(empty)".to_owned(),
        Ok(lines) => lines.join(" | "),
        Err(e) => format!("(cannot read it: {e})"),
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Best effort throughout: a failed clean-up must not hide the benchmark's result.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_dir {
            return;
        }
        for _ in 0..REMOVE_ATTEMPTS {
            match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => thread::sleep(REMOVE_RETRY_DELAY),
                _ => return,
            }
        }
    }
}

enum StartError {
    Log(BenchError),
    Launch(dfs_launch::LaunchError),
}

/// Starts `dfs-engine --local 4` on free ports (port 0: the engine and its nodes each take a
/// free port; the engine announces its own) and waits for it to listen. Its stderr, with its
/// nodes', goes to `log_path`.
fn start_engine(engine_exe: &Path, dir: &Path, log_path: &Path) -> Result<dfs_launch::Started, StartError> {
    let log = File::create(log_path).map_err(|source| {
        StartError::Log(BenchError::File { action: "create the engine log", path: log_path.to_owned(), source })
    })?;
    let mut cmd = Command::new(engine_exe);
    cmd.arg("--local")
        .arg(N_NODES.to_string())
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stderr(log);
    // The engine (and so its nodes) stops if this process dies without dropping the cluster,
    // for example on Ctrl-C.
    dfs_launch::die_with_parent(&mut cmd);
    dfs_launch::start(&mut cmd, "the engine", START_TIMEOUT, dfs_launch::Rest::Discard).map_err(StartError::Launch)
}

/// The last `n_lines` non-empty lines of a file, read from at most its last
/// [`LOG_TAIL_MAX_BYTES`].
fn read_tail(path: &Path, n_lines: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_MAX_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_MAX_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    // A read that starts mid-file most likely starts mid-line.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n_lines);
    Ok(lines[skip..].iter().map(|l| strip_ansi(l)).collect())
}

/// Removes terminal colour sequences (`ESC [ ... m`), in case the log was written in colour.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn log_tail_keeps_the_last_non_empty_lines() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(file, "one\n\ntwo\n\u{1b}[31mthree\u{1b}[0m\nfour\n").expect("write");
        assert_eq!(read_tail(file.path(), 3).expect("tail"), ["two", "three", "four"]);
        assert_eq!(read_tail(file.path(), 10).expect("tail"), ["one", "two", "three", "four"]);
    }

    #[test]
    fn log_tail_of_a_long_log_drops_the_partial_first_line() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for i in 0..10_000 {
            writeln!(file, "line {i}").expect("write");
        }
        assert_eq!(read_tail(file.path(), 2).expect("tail"), ["line 9998", "line 9999"]);
        let all = read_tail(file.path(), usize::MAX).expect("tail");
        assert!(all.iter().all(|l| l.starts_with("line ")), "{:?}", &all[..2]);
    }
}
