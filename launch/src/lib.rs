//! The one way a dfs process starts another dfs server and learns where it listens: the
//! engine's `--local` (its nodes), the client's `put --bench --local` (an engine), the bench
//! harness (an engine per phase) and the test harness (engines and nodes) all go through
//! [`start`].
//!
//! A server prints `listening ADDR` as the first line of its stdout once it accepts connections
//! (`dfs_proto::listening`). [`start`] spawns the command with stdout piped, reads that line on
//! a thread of its own (so the wait is bounded even if the process prints nothing), and keeps
//! reading afterwards, into a file or nowhere, so the server never blocks on a full pipe.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Why a server did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: io::Error },
    #[error("{what} exited without listening ({status})")]
    Exited { what: String, status: String },
    #[error("{what} printed nothing within {timeout:?}")]
    Silent { what: String, timeout: Duration },
    #[error("{what}'s first line of output was {line:?}, not `listening ADDR`")]
    NotListening { what: String, line: String },
    #[error("cannot read {what}'s output: {source}")]
    Read { what: String, source: io::Error },
}

/// Where a server's stdout goes after its `listening` line.
pub enum Rest {
    /// Read and dropped.
    Discard,
    /// Appended to this file (the `listening` line first).
    File(File),
}

/// A server that announced its address. The child is the caller's to stop.
pub struct Started {
    pub child: Child,
    pub addr: SocketAddr,
}

/// Makes the process started from `cmd` receive SIGTERM when the process that started it dies,
/// so that a crashed or interrupted parent leaves no server behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: set_pdeathsig is a single prctl system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(io::Error::from));
    }
}

/// Starts `cmd` (named `what` in errors) with stdin closed and stdout piped, and waits at most
/// `timeout` for its `listening ADDR` line. Its stderr is left as the caller set it. On failure
/// the child is killed and reaped, and the error says what it did instead.
pub fn start(cmd: &mut Command, what: &str, timeout: Duration, rest: Rest) -> Result<Started, LaunchError> {
    let what = what.to_string();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| LaunchError::Spawn { what: what.clone(), source })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::Builder::new().name("server-stdout".into()).spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let mut rest = rest;
        if let (Rest::File(f), Some(Ok(line))) = (&mut rest, &first) {
            let _ = writeln!(f, "{line}");
        }
        let _ = tx.send(first);
        for line in lines {
            let Ok(line) = line else { break };
            if let Rest::File(f) = &mut rest {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    if let Err(source) = reader {
        stop(&mut child);
        return Err(LaunchError::Read { what, source });
    }
    let outcome = match rx.recv_timeout(timeout) {
        Ok(Some(Ok(line))) => match dfs_proto::listening::parse(&line) {
            Some(addr) => return Ok(Started { child, addr }),
            None => LaunchError::NotListening { what, line },
        },
        Ok(Some(Err(source))) => LaunchError::Read { what, source },
        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| format!("status unknown: {e}"));
            return Err(LaunchError::Exited { what, status });
        }
        Err(mpsc::RecvTimeoutError::Timeout) => LaunchError::Silent { what, timeout },
    };
    stop(&mut child);
    Err(outcome)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell running `script`; scripts `exec` their last command, so that killing the child
    /// leaves no grandchild holding the test's pipes.
    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn the_announced_address_is_returned_and_the_rest_of_stdout_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out");
        let mut cmd = sh("echo 'listening 127.0.0.1:4567'; echo later; exec sleep 30");
        let mut started =
            start(&mut cmd, "test server", Duration::from_secs(10), Rest::File(File::create(&log).unwrap())).unwrap();
        assert_eq!(started.addr, "127.0.0.1:4567".parse().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap().contains("later") {
            assert!(std::time::Instant::now() < deadline, "the rest of stdout never reached the file");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(&mut started.child);
    }

    #[test]
    fn a_server_that_exits_prints_garbage_or_stays_silent_is_an_error_naming_it() {
        let exited = start(&mut sh("exit 3"), "quitter", Duration::from_secs(10), Rest::Discard).err().unwrap();
        assert!(matches!(&exited, LaunchError::Exited { .. }), "{exited}");
        assert!(exited.to_string().contains("quitter exited without listening"), "{exited}");
        let garbage = start(&mut sh("echo hello; exec sleep 30"), "talker", Duration::from_secs(10), Rest::Discard);
        assert!(garbage.err().unwrap().to_string().contains("\"hello\", not `listening ADDR`"));
        let silent = start(&mut sh("exec sleep 30"), "mute", Duration::from_millis(200), Rest::Discard).err().unwrap();
        assert!(silent.to_string().contains("mute printed nothing within 200ms"), "{silent}");
        let missing = start(&mut Command::new("/nonexistent/dfs-node"), "node", Duration::from_secs(1), Rest::Discard);
        assert!(missing.err().unwrap().to_string().starts_with("cannot start node:"));
    }
}
