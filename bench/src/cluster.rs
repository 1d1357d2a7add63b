//! The dfs local cluster as the harness runs it: `dfs-engine --local 4` as a separate process on
//! a run of five free loopback ports (the engine's and its four nodes'), started fresh for every
//! phase so that the engine's peak RSS and CPU time belong to that phase alone, and stopped with
//! its nodes before the next phase starts. Also asks the binaries what they support.

use crate::proc::{self, Guard};
use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long the engine (and its four nodes) may take to print `listening`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to retry a start that failed, e.g. because another process took a port meanwhile.
const START_ATTEMPTS: usize = 3;
/// Whether every port in `first..first + n` can be bound on loopback right now (the Python
/// sketch needs fixed ports).
pub fn ports_free(first: u16, n: u16) -> bool {
    (0..n).all(|i| first.checked_add(i).is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
}

/// Where the dfs binaries are and what they accept.
pub struct Binaries {
    pub dir: PathBuf,
    /// The engine's `--data-path` values, or empty if it has no such flag.
    pub data_paths: Vec<String>,
}

impl Binaries {
    pub fn engine(&self) -> PathBuf {
        self.dir.join("dfs-engine")
    }
    pub fn client(&self) -> PathBuf {
        self.dir.join("dfs-client")
    }

    /// Checks the binaries exist and asks them (`--help`) what they support.
    pub fn probe(dir: &Path, timeout: Duration) -> Result<Binaries> {
        for b in ["dfs-engine", "dfs-node", "dfs-client"] {
            if !dir.join(b).is_file() {
                bail!("{} not found: run `cargo build --release` first", dir.join(b).display());
            }
        }
        let engine_help = proc::checked_output(Command::new(dir.join("dfs-engine")).arg("--help"), timeout)?.stdout;
        let data_paths = if engine_help.contains("--data-path") {
            vec!["copy".to_string(), "splice".to_string()]
        } else {
            Vec::new()
        };
        Ok(Binaries { dir: dir.to_path_buf(), data_paths })
    }

    /// Whether `dfs-client put --bench` exists.
    pub fn client_has_bench(&self, timeout: Duration) -> Result<bool> {
        let help = proc::checked_output(Command::new(self.client()).args(["put", "--help"]), timeout)?.stdout;
        Ok(help.contains("--bench"))
    }
}

/// Source files newer than the binaries: a sign that `cargo build --release` was not run after
/// the last edit, so the figures would describe old code.
pub fn stale_sources(workspace: &Path, bins: &Binaries) -> Vec<PathBuf> {
    let built = |b: &str| std::fs::metadata(bins.dir.join(b)).ok()?.modified().ok();
    // Each source directory against the binaries built from it (a client change does not
    // make the engine stale).
    let crates: [(&str, &[&str]); 5] = [
        ("proto", &["dfs-engine", "dfs-node", "dfs-client"]),
        ("runtime", &["dfs-engine", "dfs-node"]),
        ("engine", &["dfs-engine"]),
        ("node", &["dfs-node"]),
        ("client", &["dfs-client"]),
    ];
    let mut newer = Vec::new();
    for (dir, users) in crates {
        let Some(oldest_bin) = users.iter().filter_map(|b| built(b)).min() else { continue };
        let mut stack = vec![workspace.join(dir)];
        while let Some(p) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&p) else { continue };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if (path.extension().is_some_and(|x| x == "rs") || path.ends_with("Cargo.toml"))
                    && e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > oldest_bin)
                {
                    newer.push(path.strip_prefix(workspace).unwrap_or(&path).to_path_buf());
                }
            }
        }
    }
    newer.sort();
    newer
}

/// A running engine with its four nodes. Dropping it stops all five processes.
pub struct Cluster {
    engine: Guard,
    pub addr: String,
    pub log: PathBuf,
    /// The access key file `--local` creates.
    pub token_file: PathBuf,
}

impl Cluster {
    /// Starts `dfs-engine --local 4 --data DATA --listen 127.0.0.1:0 [--data-path P] EXTRA…`
    /// and waits for its `listening` line. Its stderr goes to `DATA.log`.
    pub fn start(bins: &Binaries, data: &Path, data_path: Option<&str>, extra: &[String]) -> Result<Cluster> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Cluster::start_once(bins, data, data_path, extra) {
                Ok(c) => return Ok(c),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn start_once(bins: &Binaries, data: &Path, data_path: Option<&str>, extra: &[String]) -> Result<Cluster> {
        let _ = std::fs::remove_dir_all(data);
        // Port 0: the engine and its nodes each take a free port; the engine prints its own.
        let addr = "127.0.0.1:0";
        let log = data.with_extension("log");
        let mut cmd = Command::new(bins.engine());
        cmd.args(["--local", "4", "--data"]).arg(data).args(["--listen", addr]);
        if let Some(p) = data_path {
            cmd.args(["--data-path", p]);
        }
        cmd.args(extra);
        cmd.stderr(std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?);
        let token_file = data.join("access.key");
        match Guard::start_server(&mut cmd, "dfs-engine", START_TIMEOUT) {
            Ok((engine, announced)) => Ok(Cluster { engine, addr: announced.to_string(), log, token_file }),
            Err(e) => bail!(
                "the engine did not start ({e:#}); end of {}:\n{}",
                log.display(),
                proc::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.engine.pid()
    }

    pub fn log_tail(&self) -> String {
        proc::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }

    /// Fails if the engine has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.engine.try_wait() {
            bail!("the engine exited ({st}); end of {}:\n{}", self.log.display(), self.log_tail());
        }
        Ok(())
    }

    pub fn cpu_seconds(&self) -> Result<f64> {
        proc::cpu_seconds(self.pid())
    }

    pub fn vm_hwm_kib(&self) -> Result<u64> {
        proc::vm_hwm_kib(self.pid())
    }

    /// Warning and error lines the engine (or a node, whose stderr it shares) logged.
    /// Copies of each chunk the engine keeps, as it says itself (`dfs-client status --json`).
    pub fn copies(&self, bins: &Binaries, timeout: Duration) -> Result<u64> {
        let out = proc::checked_output(
            Command::new(bins.client())
                .env("DFS_TOKEN_FILE", &self.token_file)
                .args(["--server", &self.addr, "status", "--json"]),
            timeout,
        )?;
        let status: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).context("the client's status is not JSON")?;
        status["replicas"].as_u64().with_context(|| format!("no replicas in the client's status: {}", out.stdout))
    }

    pub fn log_warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes are the engine's children: note them before the engine goes, then make sure
        // they are gone too (they get SIGTERM from their parent-death signal) so that they do not
        // compete with the next phase.
        let nodes = proc::children_of(self.pid());
        for &n in &nodes {
            proc::register(n, "dfs-node");
        }
        self.engine.kill();
        for n in nodes {
            proc::stop_foreign(n);
        }
    }
}
