//! The baselines, run from where they live (never copied into this repository):
//!
//! - the ideal relay (`<baselines>/relay`), built with cargo into `target/baselines` and run as
//!   `relay put|get --size BYTES --dir DIR --mode rw|splice --runs N`, puts with `--keep` (its
//!   sinks keep every file until the end, as a store and the dfs phases do, so no run writes
//!   into the page cache the previous one freed); it prints one line per run and a `median:`
//!   line with MB/s (10^6 B/s) and the relay's CPU seconds per GiB;
//! - the original Python sketch (`<baselines>/seed_py`), started with `run_cluster.sh DIR` on its
//!   fixed ports 9100-9104 and driven with `client.py upload|get`, which print MB/s on stderr;
//! - SeaweedFS, a real peer (`<baselines>/seaweedfs/run.sh small|large`), which installs it into
//!   a cache folder on first use, runs its own server on free loopback ports for one measurement
//!   and prints one `seaweedfs …` line per figure.

use crate::cluster::ports_free;
use crate::proc::{self, Output};
use crate::stats::Stats;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The sketch's fixed ports: main server, then four storage nodes.
pub const SKETCH_FIRST_PORT: u16 = 9100;
const SKETCH_N_PORTS: u16 = 5;
/// How long the sketch's processes may take to print their start lines.
const SKETCH_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the relay with `cargo build --release --manifest-path DIR/Cargo.toml --target-dir
/// TARGET` and returns the path of its binary.
pub fn build_relay(relay_dir: &Path, target_dir: &Path, timeout: Duration) -> Result<PathBuf> {
    let manifest = relay_dir.join("Cargo.toml");
    ensure!(manifest.is_file(), "{} not found: pass --baselines DIR", manifest.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    proc::checked_output(
        Command::new(cargo)
            .args(["build", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir),
        timeout,
    )?;
    let bin = target_dir.join("release").join("relay");
    ensure!(bin.is_file(), "cargo built the relay but {} is missing", bin.display());
    Ok(bin)
}

/// One `relay put|get` invocation.
#[derive(Clone, Debug, Serialize)]
pub struct RelayResult {
    pub op: String,
    pub mode: String,
    pub size_bytes: u64,
    /// MB/s (10^6 B/s) of each run; the median is the relay's own `median:` figure.
    pub mb_s: Stats,
    /// CPU seconds of the relay process per GiB it moved, over all runs.
    pub cpu_s_per_gib: f64,
}

/// Parses the relay's stdout: `run K: OP SIZE bytes in S s = R MB/s (MODE)` per run, then
/// `median: OP R MB/s relay_cpu_s_per_gib=X mode=MODE`.
pub fn parse_relay_output(stdout: &str) -> Result<RelayResult> {
    let mut runs = Vec::new();
    let mut size_bytes = None;
    let mut median = None;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("median:") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            ensure!(words.len() >= 5 && words[2] == "MB/s", "unexpected relay median line: {line:?}");
            let rate: f64 = words[1].parse().with_context(|| format!("MB/s in {line:?}"))?;
            let cpu: f64 = words
                .iter()
                .find_map(|w| w.strip_prefix("relay_cpu_s_per_gib="))
                .with_context(|| format!("no relay_cpu_s_per_gib in {line:?}"))?
                .parse()
                .with_context(|| format!("relay_cpu_s_per_gib in {line:?}"))?;
            let mode = words.iter().find_map(|w| w.strip_prefix("mode=")).unwrap_or("?");
            median = Some((words[0].to_string(), mode.to_string(), rate, cpu));
        } else if line.starts_with("run ") {
            let (_, after_eq) =
                line.rsplit_once(" = ").with_context(|| format!("unexpected relay run line: {line:?}"))?;
            let rate = after_eq.split_whitespace().next().and_then(|r| r.parse::<f64>().ok());
            runs.push(rate.with_context(|| format!("MB/s in {line:?}"))?);
            // `run K: OP SIZE bytes in …`
            let size = line.split_whitespace().nth(3).and_then(|s| s.parse::<u64>().ok());
            size_bytes = Some(size.with_context(|| format!("size in {line:?}"))?);
        }
    }
    let (op, mode, median, cpu_s_per_gib) = median.context("the relay printed no `median:` line")?;
    let mut mb_s = Stats::of(&runs).context("the relay printed no `run` lines")?;
    // The relay's median of an even count is the upper middle value; report its own figure.
    mb_s.median = median;
    let size_bytes = size_bytes.context("no size in the relay's run lines")?;
    Ok(RelayResult { op, mode, size_bytes, mb_s, cpu_s_per_gib })
}

pub fn run_relay(
    relay: &Path,
    op: &str,
    mode: &str,
    size_bytes: u64,
    dir: &Path,
    runs: usize,
    timeout: Duration,
) -> Result<RelayResult> {
    let mut cmd = Command::new(relay);
    cmd.args([op, "--size", &size_bytes.to_string(), "--dir"]).arg(dir).args([
        "--mode",
        mode,
        "--runs",
        &runs.to_string(),
    ]);
    if op == "put" {
        cmd.arg("--keep");
    }
    let out = proc::checked_output(&mut cmd, timeout)?;
    let r = parse_relay_output(&out.stdout).with_context(|| format!("relay output:\n{}", out.stdout))?;
    ensure!(r.mb_s.n == runs, "the relay printed {} run lines for --runs {runs}", r.mb_s.n);
    Ok(r)
}

/// The MB/s figure of a `client.py` stderr line, e.g.
/// `upload /x/in 1073741824 bytes status=STORED 4.760s 225.6 MB/s`.
pub fn parse_sketch_mb_s(stderr: &str) -> Result<f64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("MB/s"))
        .with_context(|| format!("no `MB/s` line in the sketch client's stderr:\n{}", proc::tail(stderr, 10)))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    ensure!(words.len() >= 2, "unexpected sketch line: {line:?}");
    words[words.len() - 2].parse().with_context(|| format!("MB/s in {line:?}"))
}

/// Whether the sketch's upload line reports success.
fn sketch_upload_ok(stderr: &str) -> bool {
    stderr.contains("status=STORED")
}

/// What the sketch measured.
#[derive(Clone, Debug, Serialize)]
pub struct SketchResult {
    pub size_bytes: u64,
    pub upload_mb_s: Stats,
    pub get_mb_s: Stats,
    /// VmHWM of the main server after the uploads and before the first get.
    pub main_vm_hwm_kib_before_get: u64,
    /// VmHWM of the main server after the gets: its peak during them, since it was lower before.
    pub main_vm_hwm_kib_after_get: u64,
}

/// The sketch's five processes, started by `run_cluster.sh`. They are not our children (the
/// script exits), so they are stopped by pid, read from `DIR/pids`, when this is dropped.
pub struct SketchCluster {
    /// (role, pid), role `node1`..`node4` or `main`.
    pids: Vec<(String, u32)>,
}

impl SketchCluster {
    /// Checks the ports are free, runs `run_cluster.sh DIR` and waits for the five start lines
    /// in `DIR/*.log`.
    pub fn start(sketch_dir: &Path, data: &Path, python: &str, timeout: Duration) -> Result<SketchCluster> {
        if !ports_free(SKETCH_FIRST_PORT, SKETCH_N_PORTS) {
            bail!(
                "a port in {}-{} is in use (the sketch's ports are fixed)",
                SKETCH_FIRST_PORT,
                SKETCH_FIRST_PORT + SKETCH_N_PORTS - 1
            );
        }
        std::fs::create_dir_all(data)?;
        let out = proc::output(
            Command::new("bash").arg(sketch_dir.join("run_cluster.sh")).arg(data).env("PYTHON", python),
            timeout,
        )?;
        // Register whatever it started before judging success, so that a failure still stops it.
        let pids_text = std::fs::read_to_string(data.join("pids")).unwrap_or_default();
        // Only processes that are the sketch's own: a pid is stopped later, so make sure it is
        // one of the scripts this run started.
        let pids = parse_pids(&pids_text)
            .into_iter()
            .filter(|(_, pid)| {
                proc::cmdline(*pid).is_some_and(|c| c.contains("storage_node.py") || c.contains("main_server.py"))
            })
            .collect();
        let cluster = SketchCluster { pids };
        for (role, pid) in &cluster.pids {
            proc::register(*pid, &format!("sketch {role}"));
        }
        ensure!(out.status.success(), "run_cluster.sh failed ({}):\n{}", out.status, out.stderr_tail());
        ensure!(cluster.pids.len() == 5, "run_cluster.sh wrote {} pids, expected 5", cluster.pids.len());
        let start = Instant::now();
        let logs = ["node1", "node2", "node3", "node4", "main"];
        loop {
            let ready = logs.iter().all(|l| {
                std::fs::read_to_string(data.join(format!("{l}.log"))).is_ok_and(|t| t.contains(" on 127.0.0.1:"))
            });
            if ready {
                return Ok(cluster);
            }
            if let Some((role, _)) = cluster.pids.iter().find(|(_, p)| !proc::alive(*p)) {
                let log = std::fs::read_to_string(data.join(format!("{role}.log"))).unwrap_or_default();
                bail!("the sketch's {role} exited:\n{}", proc::tail(&log, 10));
            }
            ensure!(start.elapsed() < SKETCH_START_TIMEOUT, "the sketch did not start within {SKETCH_START_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn main_pid(&self) -> Option<u32> {
        self.pids.iter().find(|(r, _)| r == "main").map(|(_, p)| *p)
    }
}

impl Drop for SketchCluster {
    fn drop(&mut self) {
        for (_, pid) in self.pids.iter().rev() {
            proc::stop_foreign(*pid);
        }
    }
}

/// Lines `role pid` of the sketch's pids file.
pub fn parse_pids(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// Uploads `input` `runs` times, then gets it `runs` times into /dev/null (the other systems'
/// gets discard too), reading the main server's VmHWM before and after the gets.
pub fn run_sketch(
    sketch_dir: &Path,
    python: &str,
    cluster: &SketchCluster,
    input: &Path,
    runs: usize,
    timeout: Duration,
) -> Result<SketchResult> {
    let client = sketch_dir.join("client.py");
    let name = input.file_name().context("input file name")?.to_string_lossy().into_owned();
    let main = cluster.main_pid().context("no main server pid")?;
    let run = |args: &[&str]| -> Result<Output> {
        let out = proc::checked_output(Command::new(python).arg(&client).args(args), timeout)?;
        Ok(out)
    };
    let mut upload = Vec::new();
    for k in 1..=runs {
        let out = run(&["upload", &input.to_string_lossy()])?;
        ensure!(sketch_upload_ok(&out.stderr), "sketch upload failed:\n{}", out.stderr_tail());
        let mb_s = parse_sketch_mb_s(&out.stderr)?;
        eprintln!("  sketch upload run {k}/{runs}: {mb_s:.1} MB/s");
        upload.push(mb_s);
    }
    let hwm_before = proc::vm_hwm_kib(main)?;
    let mut get = Vec::new();
    for k in 1..=runs {
        let out = run(&["get", &name, "/dev/null"])?;
        let mb_s = parse_sketch_mb_s(&out.stderr)?;
        eprintln!("  sketch get run {k}/{runs}: {mb_s:.1} MB/s");
        get.push(mb_s);
    }
    let hwm_after = proc::vm_hwm_kib(main)?;
    proc::record(format!("(read VmHWM from /proc/{main}/status before and after the gets: the sketch's main server)"));
    Ok(SketchResult {
        size_bytes: std::fs::metadata(input)?.len(),
        upload_mb_s: Stats::of(&upload).context("no sketch runs")?,
        get_mb_s: Stats::of(&get).context("no sketch runs")?,
        main_vm_hwm_kib_before_get: hwm_before,
        main_vm_hwm_kib_after_get: hwm_after,
    })
}

/// What SeaweedFS measured, each figure over its runs (one `run.sh` invocation per run).
#[derive(Clone, Debug, Serialize)]
pub struct SeaweedResult {
    /// `run.sh small SIZE COUNT CONCURRENCY`: `weed benchmark` with `-fsync`, writes then reads.
    pub small: Option<SeaweedSmall>,
    /// `run.sh large SIZE`: `weed upload` of one file, then one download with curl.
    pub large: Option<SeaweedLarge>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeaweedSmall {
    pub size_bytes: u64,
    pub count: u64,
    pub concurrency: u64,
    pub put_ops_s: Stats,
    pub put_p99_ms: Stats,
    pub get_ops_s: Stats,
    pub get_p99_ms: Stats,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeaweedLarge {
    pub size_bytes: u64,
    pub put_mb_s: Stats,
    pub get_mb_s: Stats,
}

/// The first `seaweedfs OP …: FIGURES` line of `run.sh`'s output that gives `unit`: the line,
/// and its figures (what follows the last `: `).
fn seaweed_line<'a>(stdout: &'a str, op: &str, unit: &str) -> Result<(&'a str, &'a str)> {
    let prefix = format!("seaweedfs {op} ");
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix) && l.contains(&format!(" {unit}")))
        .with_context(|| format!("no `seaweedfs {op} … {unit}` line in:\n{}", proc::tail(stdout, 10)))?;
    let (_, figures) = line.rsplit_once(": ").with_context(|| format!("unexpected line {line:?}"))?;
    Ok((line, figures))
}

/// `seaweedfs OP …: RATE ops/s, p99 LAT ms` for OP `put` and `get`: (ops/s, p99 ms) of each.
pub fn parse_seaweed_small(stdout: &str) -> Result<[(f64, f64); 2]> {
    let figure = |op: &str| -> Result<(f64, f64)> {
        let (line, figures) = seaweed_line(stdout, op, "ops/s")?;
        // `1667.23 ops/s, p99 1010.7 ms`
        let words: Vec<&str> = figures.split_whitespace().collect();
        ensure!(
            words.len() == 5 && words[1] == "ops/s," && words[2] == "p99" && words[4] == "ms",
            "unexpected figures in {line:?} (a failed measurement prints `?`)"
        );
        let ops: f64 = words[0].parse().with_context(|| format!("ops/s in {line:?}"))?;
        let p99: f64 = words[3].parse().with_context(|| format!("p99 in {line:?}"))?;
        Ok((ops, p99))
    };
    Ok([figure("put")?, figure("get")?])
}

/// `seaweedfs put SIZE B: RATE MB/s (…)` and the same for `get`: (put, get) MB/s.
pub fn parse_seaweed_large(stdout: &str) -> Result<(f64, f64)> {
    let figure = |op: &str| -> Result<f64> {
        let (line, figures) = seaweed_line(stdout, op, "MB/s")?;
        let mut words = figures.split_whitespace();
        let rate = words.next().and_then(|w| w.parse::<f64>().ok());
        ensure!(words.next() == Some("MB/s"), "unexpected figures in {line:?}");
        rate.with_context(|| format!("MB/s in {line:?}"))
    };
    Ok((figure("put")?, figure("get")?))
}

/// What to ask of SeaweedFS: the small-object figure like the harness's small phase, and the
/// large one at the single-object size; None skips that part.
pub struct SeaweedPlan {
    pub small: Option<(u64, u64, u64)>,
    pub large: Option<u64>,
    pub runs: usize,
}

/// Runs `run.sh` once per run and figure. Each invocation starts a fresh SeaweedFS server that
/// keeps what it is given until that invocation ends, like the dfs phases.
pub fn run_seaweedfs(script: &Path, plan: &SeaweedPlan, timeout: Duration) -> Result<SeaweedResult> {
    ensure!(script.is_file(), "{} not found: pass --baselines DIR", script.display());
    let run = |args: &[String]| -> Result<Output> {
        proc::checked_output(&mut Command::new("sync"), timeout)?;
        proc::checked_output(Command::new("bash").arg(script).args(args), timeout)
    };
    let mut small = None;
    if let Some((size, count, concurrency)) = plan.small {
        let (mut put, mut put_p99, mut get, mut get_p99) = (vec![], vec![], vec![], vec![]);
        for k in 1..=plan.runs {
            let out = run(&["small".into(), size.to_string(), count.to_string(), concurrency.to_string()])?;
            let [(p, p99), (g, g99)] = parse_seaweed_small(&out.stdout)?;
            eprintln!("  seaweedfs small run {k}/{}: put {p:.0} ops/s (p99 {p99} ms), get {g:.0} ops/s", plan.runs);
            put.push(p);
            put_p99.push(p99);
            get.push(g);
            get_p99.push(g99);
        }
        let stats = |v: &[f64]| Stats::of(v).context("no seaweedfs runs");
        small = Some(SeaweedSmall {
            size_bytes: size,
            count,
            concurrency,
            put_ops_s: stats(&put)?,
            put_p99_ms: stats(&put_p99)?,
            get_ops_s: stats(&get)?,
            get_p99_ms: stats(&get_p99)?,
        });
    }
    let mut large = None;
    if let Some(size) = plan.large {
        let (mut put, mut get) = (vec![], vec![]);
        for k in 1..=plan.runs {
            let out = run(&["large".into(), size.to_string()])?;
            let (p, g) = parse_seaweed_large(&out.stdout)?;
            eprintln!("  seaweedfs large run {k}/{}: put {p:.0} MB/s, get {g:.0} MB/s", plan.runs);
            put.push(p);
            get.push(g);
        }
        large = Some(SeaweedLarge {
            size_bytes: size,
            put_mb_s: Stats::of(&put).context("no seaweedfs runs")?,
            get_mb_s: Stats::of(&get).context("no seaweedfs runs")?,
        });
    }
    Ok(SeaweedResult { small, large })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_output() {
        let out = "run 0: put 1073741824 bytes in 1.094 s = 981.3 MB/s (rw)\n\
                   run 1: put 1073741824 bytes in 0.900 s = 1193.0 MB/s (rw)\n\
                   run 2: put 1073741824 bytes in 1.300 s = 826.0 MB/s (rw)\n\
                   median: put 981.3 MB/s relay_cpu_s_per_gib=0.447 mode=rw\n";
        let r = parse_relay_output(out).unwrap();
        assert_eq!((r.op.as_str(), r.mode.as_str()), ("put", "rw"));
        assert_eq!((r.mb_s.median, r.mb_s.min, r.mb_s.max, r.mb_s.n), (981.3, 826.0, 1193.0, 3));
        assert_eq!((r.cpu_s_per_gib, r.size_bytes), (0.447, 1 << 30));
    }

    #[test]
    fn relay_median_of_an_even_count_is_its_own() {
        let out = "run 0: get 8 bytes in 1.0 s = 1.0 MB/s (splice)\nrun 1: get 8 bytes in 1.0 s = 3.0 MB/s (splice)\n\
                   median: get 3.0 MB/s relay_cpu_s_per_gib=0.273 mode=splice\n";
        let r = parse_relay_output(out).unwrap();
        assert_eq!((r.mb_s.median, r.mode.as_str()), (3.0, "splice"));
    }

    #[test]
    fn relay_output_without_a_median_line_is_an_error() {
        let err = parse_relay_output("run 0: put 8 bytes in 1.0 s = 1.0 MB/s (rw)\n").unwrap_err();
        assert!(err.to_string().contains("median"), "{err}");
        assert!(parse_relay_output("median: put fast MB/s relay_cpu_s_per_gib=0.4 mode=rw\n").is_err());
    }

    #[test]
    fn sketch_lines() {
        let up = "upload /tmp/x/input 1073741824 bytes status=STORED 4.760s 225.6 MB/s\n";
        assert_eq!(parse_sketch_mb_s(up).unwrap(), 225.6);
        assert!(sketch_upload_ok(up));
        let get = "some warning\nget input -> /dev/null 1073741824 bytes 6.210s 172.9 MB/s\n";
        assert_eq!(parse_sketch_mb_s(get).unwrap(), 172.9);
        assert!(parse_sketch_mb_s("get input: NOFILE\n").is_err());
        assert!(!sketch_upload_ok("upload /x 8 bytes status=ERROR 0.1s 0.0 MB/s"));
    }

    #[test]
    fn pids_file() {
        let pids = parse_pids("node1 100\nnode2 101\n\nmain 104\nbroken\n");
        assert_eq!(pids, vec![("node1".into(), 100), ("node2".into(), 101), ("main".into(), 104)]);
    }

    #[test]
    fn seaweedfs_small_lines() {
        let out = "seaweedfs put 4096 B x 2000 c=32 -fsync: 1667.23 ops/s, p99 1010.7 ms\n\
                   seaweedfs get 4096 B x 2000 c=32: 19496.82 ops/s, p99 6.8 ms\n";
        assert_eq!(parse_seaweed_small(out).unwrap(), [(1667.23, 1010.7), (19496.82, 6.8)]);
        let failed = "seaweedfs put 4096 B x 2000 c=32 -fsync: ? ops/s, p99 ?\n\
                      seaweedfs get 4096 B x 2000 c=32: ? ops/s, p99 ?\n";
        assert!(parse_seaweed_small(failed).is_err());
        assert!(parse_seaweed_small("seaweedfs put 4096 B x 2 c=1 -fsync: 5.0 ops/s, p99 1.0 ms\n").is_err());
    }

    #[test]
    fn seaweedfs_large_lines() {
        let out = "seaweedfs put 1073741824 B: 412 MB/s (weed upload -maxMB 64, no fsync)\n\
                   seaweedfs get 1073741824 B: 1290 MB/s (curl to a file)\n";
        assert_eq!(parse_seaweed_large(out).unwrap(), (412.0, 1290.0));
        assert!(parse_seaweed_large("seaweedfs get 8 B: bytes differ\n").is_err());
        assert!(parse_seaweed_large("seaweedfs put 8 B: 3 MB/s (x)\nseaweedfs get: bytes differ\n").is_err());
    }
}
