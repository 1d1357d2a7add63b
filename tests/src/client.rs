//! Client runs: `dfs-client` run to completion (bounded) or in the background, and the
//! commands tests run through it (put, get, stat, ls, rm).

use crate::cluster::command_line;
use crate::{json, Cluster, Value, CLIENT_TIMEOUT, HISTORY_STDOUT_BYTES};
use dfs_proto::{Chunking, FileId};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What one `dfs-client` run produced.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics, naming `what`, unless the command exited 0.
    #[track_caller]
    pub fn expect_success(&self, what: &str) -> &ClientOutput {
        assert!(self.success(), "{what}: expected exit 0 from `{}`\n{}", self.cmdline, self.describe());
        self
    }

    /// Checks the client's error contract (exit status not 0, exactly one stderr line, starting
    /// with `error:`) and returns that line.
    #[track_caller]
    pub fn expect_error(&self, what: &str) -> String {
        assert!(
            !self.success(),
            "{what}: expected a failure from `{}`, it succeeded\n{}",
            self.cmdline,
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error:"),
            "{what}: expected exactly one stderr line starting with `error:` from `{}`\n{}",
            self.cmdline,
            self.describe()
        );
        lines[0].to_string()
    }

    pub fn describe(&self) -> String {
        format!(
            "  exit: {}\n  stdout ({} bytes): {}\n  stderr: {}",
            self.status,
            self.stdout.len(),
            preview(&self.stdout, HISTORY_STDOUT_BYTES),
            self.stderr.trim_end().replace('\n', "\n          ")
        )
    }
}

pub(crate) fn preview(bytes: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        format!("{:?} [... {} more bytes]", shown, bytes.len() - max)
    } else {
        format!("{shown:?}")
    }
}

/// Runs `cmd` to completion with stdout and stderr captured; kills it after `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let tx2 = tx.clone();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        let _ = tx.send((true, buf));
    });
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = tx2.send((false, buf));
    });
    let deadline = Instant::now() + timeout;
    let (mut out, mut err) = (None, None);
    while out.is_none() || err.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, b)) => out = Some(b),
            Ok((false, b)) => err = Some(b),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?} and was killed"));
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cannot wait for it: {e}"))?;
    Ok((status, out.unwrap_or_default(), err.unwrap_or_default()))
}

impl Cluster {
    /// Runs `dfs-client --server ENGINE ARGS...` and records it.
    pub fn client<I, S>(&self, args: I) -> ClientOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<OsString> = vec!["--server".into(), self.server().into()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self.client_raw(&full)
    }

    /// Runs `dfs-client ARGS...` exactly as given (no `--server` added).
    pub fn client_raw(&self, args: &[OsString]) -> ClientOutput {
        let mut cmd = self.process("dfs-client", "client");
        cmd.args(args).current_dir(self.root.join("scratch"));
        if let Some(key) = &self.token_file {
            cmd.env("DFS_TOKEN_FILE", key);
        }
        let cmdline = command_line(&cmd);
        let started = Instant::now();
        let res = run_bounded(cmd, CLIENT_TIMEOUT);
        match res {
            Ok((status, stdout, stderr)) => {
                let out = ClientOutput {
                    cmdline: cmdline.clone(),
                    status,
                    stdout,
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                };
                self.record(format!("$ {cmdline}   # {:.2?}\n{}", started.elapsed(), out.describe()));
                out
            }
            Err(e) => {
                self.record(format!("$ {cmdline}\n  {e}"));
                panic!("dfs-client {e}: `{cmdline}`")
            }
        }
    }

    /// Starts `dfs-client --server ENGINE ARGS...` in the background with stdout piped and
    /// stderr sent to a log under `logs/`, for tests that act while a request is in flight.
    /// The caller waits for it.
    pub fn spawn_client<I, S>(&self, args: I) -> std::process::Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.next_run();
        let stderr_log = self.root.join("logs").join(format!("client-{run}.stderr"));
        let stderr = fs::File::create(&stderr_log).expect("cannot create client stderr log");
        let mut cmd = self.process("dfs-client", "client");
        cmd.arg("--server").arg(self.server()).args(args).current_dir(self.root.join("scratch"));
        if let Some(key) = &self.token_file {
            cmd.env("DFS_TOKEN_FILE", key);
        }
        cmd.stdout(Stdio::piped()).stderr(stderr);
        self.record(format!("$ {} &   # stderr in {}", command_line(&cmd), stderr_log.display()));
        cmd.spawn().expect("cannot start dfs-client")
    }

    /// Writes `data` to a fresh input file and returns its path.
    pub fn write_input(&self, data: &[u8]) -> PathBuf {
        let path = self.root.join("inputs").join(format!("input-{}", self.next_run()));
        fs::write(&path, data).expect("cannot write input file");
        path
    }

    /// `put`: the file ID on success, the client's output on failure.
    pub fn try_put_file(
        &self,
        path: &Path,
        name: Option<&str>,
        chunking: Option<Chunking>,
    ) -> Result<String, ClientOutput> {
        let mut args: Vec<OsString> = vec!["put".into(), path.into()];
        if let Some(name) = name {
            args.push("--name".into());
            args.push(name.into());
        }
        if let Some(chunking) = chunking {
            args.push("--chunking".into());
            args.push(chunking.to_string().into());
        }
        let out = self.client(&args);
        if !out.success() {
            return Err(out);
        }
        let id = out.stdout_text().trim().to_string();
        assert!(
            id.parse::<FileId>().is_ok() && out.stdout_text() == format!("{id}\n"),
            "put must print the 32-hex file ID alone on stdout, got: `{}`\n{}",
            out.cmdline,
            out.describe()
        );
        Ok(id)
    }

    pub fn try_put_bytes(&self, data: &[u8], name: &str, chunking: Chunking) -> Result<String, ClientOutput> {
        let path = self.write_input(data);
        let res = self.try_put_file(&path, Some(name), Some(chunking));
        let _ = fs::remove_file(&path);
        res
    }

    /// Uploads `data` under `name`; panics if the upload fails.
    #[track_caller]
    pub fn put_bytes(&self, data: &[u8], name: &str, chunking: Chunking) -> String {
        match self.try_put_bytes(data, name, chunking) {
            Ok(id) => id,
            Err(out) => panic!(
                "put of {} bytes as {name:?} ({chunking}) failed: `{}`\n{}",
                data.len(),
                out.cmdline,
                out.describe()
            ),
        }
    }

    /// Downloads `id` into a fresh directory with `-o PATH`. On success, checks the directory holds
    /// only the output file and returns its bytes. On failure, checks the error contract (one
    /// `error:` line, exit not 0) and that neither the output file nor any temp file was left,
    /// and returns the error line.
    #[track_caller]
    pub fn get(&self, id: &str) -> Result<Vec<u8>, String> {
        let dir = self.root.join("gets").join(format!("get-{}", self.next_run()));
        fs::create_dir_all(&dir).expect("cannot create download directory");
        let out_path = dir.join("out.bin");
        let out = self.client([OsStr::new("get"), OsStr::new(id), OsStr::new("-o"), out_path.as_os_str()]);
        let left: Vec<String> = fs::read_dir(&dir)
            .expect("read download dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        if out.success() {
            assert_eq!(
                left,
                ["out.bin"],
                "get {id} succeeded: the download directory must hold exactly the output file\n{}",
                out.describe()
            );
            let data = fs::read(&out_path).expect("read downloaded file");
            fs::remove_dir_all(&dir).expect("remove download dir");
            Ok(data)
        } else {
            let line = out.expect_error(&format!("get {id}"));
            assert!(
                left.is_empty(),
                "get {id} failed but left files behind in {}: {left:?} (expected no output file and no temp files)\n{}",
                dir.display(),
                out.describe()
            );
            Err(line)
        }
    }

    /// Downloads `id` with `-o -` (to stdout).
    #[track_caller]
    pub fn get_stdout(&self, id: &str) -> Result<Vec<u8>, String> {
        let out = self.client(["get", id, "-o", "-"]);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.expect_error(&format!("get {id} -o -")))
        }
    }

    /// Runs `dfs-client ARGS... --json` and returns whether it succeeded and the JSON it printed
    /// (panicking if it printed none).
    #[track_caller]
    pub fn client_json(&self, args: &[&str]) -> (bool, Value) {
        let mut full: Vec<&str> = args.to_vec();
        full.push("--json");
        let out = self.client(&full);
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {}", args.join(" "), out.describe()));
        (out.success(), value)
    }

    /// `stat ID --json`, parsed; the error line on failure.
    #[track_caller]
    pub fn stat(&self, id: &str) -> Result<json::StatInfo, String> {
        let out = self.client(["stat", id, "--json"]);
        if !out.success() {
            return Err(out.expect_error(&format!("stat {id}")));
        }
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stat {id} --json printed invalid JSON ({e})\n{}", out.describe()));
        Ok(json::StatInfo::from_json(&value).unwrap_or_else(|e| panic!("stat {id} --json: {e}\n{}", out.describe())))
    }

    /// `ls --json`, parsed; panics if it fails.
    #[track_caller]
    pub fn ls(&self) -> Vec<json::ListEntry> {
        let out = self.client(["ls", "--json"]);
        out.expect_success("ls --json");
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ls --json printed invalid JSON ({e})\n{}", out.describe()));
        json::ListEntry::from_json_list(&value).unwrap_or_else(|e| panic!("ls --json: {e}\n{}", out.describe()))
    }

    /// `rm ID`; the error line on failure.
    #[track_caller]
    pub fn rm(&self, id: &str) -> Result<(), String> {
        let out = self.client(["rm", id]);
        if out.success() {
            Ok(())
        } else {
            Err(out.expect_error(&format!("rm {id}")))
        }
    }
}
