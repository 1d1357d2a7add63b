//! The dfs measurements. A phase is one kind of load (put or get, an object size, a count, a
//! concurrency) on one data path; it runs on a freshly started cluster, as `runs` separate
//! `dfs-client put --bench … --json` invocations, each printing one JSON object. One invocation
//! per run makes the median a true median of per-run throughput. The client uploads a file the
//! harness wrote and fsynced beforehand (`--file`). Around each invocation the
//! engine's CPU time is read from /proc, and at the end of the phase its VmHWM, which covers that
//! phase alone because the cluster is new.

use crate::cluster::{Binaries, Cluster};
use crate::proc;
use crate::stats::Stats;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const MIB: f64 = (1u64 << 20) as f64;
pub const GIB: f64 = (1u64 << 30) as f64;
pub const MB: f64 = 1e6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One kind of load.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseSpec {
    pub op: Op,
    pub size_bytes: u64,
    pub count: u64,
    pub concurrency: u64,
    pub runs: usize,
}

impl PhaseSpec {
    /// `put 1 GiB`, `put 4 KiB ×10000, 32 concurrent`.
    pub fn label(&self) -> String {
        let mut s = format!("{} {}", self.op.name(), human_size(self.size_bytes));
        if self.count > 1 {
            s += &format!(" ×{}", self.count);
        }
        if self.concurrency > 1 {
            s += &format!(", {} concurrent", self.concurrency);
        }
        s
    }
}

/// `1 GiB`, `4 KiB`, `1536 MiB`, `1000 B`: the largest binary unit that divides the size.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What `dfs-client put --bench --json` prints.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ClientBench {
    pub op: String,
    pub size_bytes: u64,
    pub count: u64,
    pub concurrency: u64,
    pub chunking: serde_json::Value,
    pub elapsed_s: f64,
    pub bytes_total: u64,
    pub mib_s: f64,
    pub gib_s: f64,
    pub ops_s: f64,
    pub latency_us: Latency,
    pub errors: u64,
}

/// The JSON object in the client's stdout: all of it, or else its last line that parses.
pub fn parse_client_json(stdout: &str) -> Result<ClientBench> {
    if let Ok(b) = serde_json::from_str(stdout.trim()) {
        return Ok(b);
    }
    let mut last_err = None;
    for line in stdout.lines().rev().filter(|l| l.trim_start().starts_with('{')) {
        match serde_json::from_str(line) {
            Ok(b) => return Ok(b),
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e).context("the client's JSON does not have the expected fields"),
        None => anyhow::bail!("no JSON object in the client's stdout:\n{}", proc::tail(stdout, 10)),
    }
}

/// One phase's results.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub spec: PhaseSpec,
    pub label: String,
    /// The engine's `--data-path`, or None when it has no such flag.
    pub data_path: Option<String>,
    /// Each invocation's JSON, in order.
    pub runs: Vec<ClientBench>,
    pub mb_s: Stats,
    pub mib_s: Stats,
    pub ops_s: Stats,
    pub latency_p50_us: Stats,
    pub latency_p99_us: Stats,
    /// Engine CPU seconds per invocation.
    pub engine_cpu_s: Stats,
    /// Engine CPU seconds per GiB the engine moved in each invocation.
    pub engine_cpu_s_per_gib: Stats,
    /// Engine CPU microseconds per operation measured.
    pub engine_cpu_us_per_op: Stats,
    /// Engine CPU seconds over the whole phase divided by GiB moved in it.
    pub engine_cpu_s_per_gib_phase: f64,
    /// Get phases: an estimate of the engine's CPU per GiB for the downloads alone (see
    /// [`estimate_get_alone`]); None for puts or without a matching put phase.
    pub engine_cpu_s_per_gib_get_alone_est: Option<Stats>,
    /// Peak RSS of the engine process over the phase (the cluster was started for it).
    pub engine_vm_hwm_kib: u64,
    pub errors: u64,
    /// Copies of each chunk the engine kept, as its status said (None in unit tests).
    pub copies: Option<u64>,
    /// WARN/ERROR lines in the engine's log.
    pub engine_warnings: Vec<String>,
}

/// Bytes that crossed the engine in one invocation. A get benchmark first uploads the objects
/// it reads (untimed) in the same invocation; the harness's get phases have a count of 1, so
/// that is one object of the same size, and the engine moved the bytes twice.
pub fn engine_bytes_moved(b: &ClientBench) -> u64 {
    match b.op.as_str() {
        "get" => b.bytes_total + uploaded_before_get(b),
        _ => b.bytes_total,
    }
}

/// Bytes a get invocation uploaded before its timed downloads: one object per download, up to
/// the client's cap, which a count of 1 never reaches.
fn uploaded_before_get(b: &ClientBench) -> u64 {
    debug_assert_eq!(b.count, 1, "the harness runs get phases with a count of 1");
    b.size_bytes * b.count.max(1)
}

/// The engine's CPU in a get invocation covers the untimed upload of what it reads, too. This
/// estimates the downloads alone: each run's CPU minus its upload priced at the median CPU per
/// GiB of the put phase with the same size and data path, over the GiB downloaded. A derived
/// figure, labelled as such in the report.
pub fn estimate_get_alone(phases: &mut [PhaseResult]) {
    let puts: Vec<(u64, Option<String>, f64)> = phases
        .iter()
        .filter(|p| p.spec.op == Op::Put && p.spec.count == 1)
        .map(|p| (p.spec.size_bytes, p.data_path.clone(), p.engine_cpu_s_per_gib.median))
        .collect();
    for p in phases.iter_mut().filter(|p| p.spec.op == Op::Get && p.spec.count == 1) {
        let Some(&(_, _, put_s_per_gib)) =
            puts.iter().find(|(size, path, _)| *size == p.spec.size_bytes && *path == p.data_path)
        else {
            continue;
        };
        let values: Vec<f64> = p
            .engine_cpu_s
            .values
            .iter()
            .zip(&p.runs)
            .map(|(cpu, b)| (cpu - put_s_per_gib * uploaded_before_get(b) as f64 / GIB) / (b.bytes_total as f64 / GIB))
            .collect();
        p.engine_cpu_s_per_gib_get_alone_est = Stats::of(&values);
    }
}

pub struct PhaseEnv<'a> {
    pub bins: &'a Binaries,
    pub scratch: &'a Path,
    pub chunking: Option<&'a str>,
    pub engine_args: &'a [String],
    pub timeout: Duration,
}

fn client_command(env: &PhaseEnv, cluster: &Cluster, spec: &PhaseSpec, input: &Path) -> Command {
    let addr = cluster.addr.as_str();
    let mut cmd = Command::new(env.bins.client());
    // The local cluster's own access key (the engine creates it in its data directory).
    cmd.env("DFS_TOKEN_FILE", &cluster.token_file);
    cmd.args(["--server", addr, "put", "--bench", "--file"]).arg(input);
    cmd.args(["--count", &spec.count.to_string()]);
    cmd.args(["--concurrency", &spec.concurrency.to_string()]);
    if spec.op == Op::Get {
        cmd.arg("--get");
    }
    if let Some(c) = env.chunking {
        cmd.args(["--chunking", c]);
    }
    cmd.arg("--json");
    cmd
}

/// Runs one phase on a new cluster, which is stopped before returning. `input` is a file of
/// `spec.size_bytes` bytes, written and fsynced beforehand: the client uploads it with `--file`,
/// so no run pays for generating its input or for the writeback of a freshly written one.
pub fn run_phase(env: &PhaseEnv, spec: &PhaseSpec, data_path: Option<&str>, input: &Path) -> Result<PhaseResult> {
    let label = spec.label();
    let tag = data_path.unwrap_or("default");
    // Let writeback from the previous phase finish before this one starts.
    proc::checked_output(&mut Command::new("sync"), env.timeout)?;
    let data = env.scratch.join(format!("dfs-{}-{}-{tag}", spec.op.name(), spec.size_bytes));
    let mut cluster = Cluster::start(env.bins, &data, data_path, env.engine_args)?;
    let copies = cluster.copies(env.bins, env.timeout)?;
    let mut runs = Vec::new();
    let mut cpu_s = Vec::new();
    for run in 1..=spec.runs {
        let cpu_before = cluster.cpu_seconds()?;
        let out = proc::output(&mut client_command(env, &cluster, spec, input), env.timeout);
        let cpu_after = cluster.cpu_seconds();
        cluster.check_alive()?;
        let out = out?;
        ensure!(
            out.status.success(),
            "dfs-client failed in {label} [{tag}] run {run} ({}):\n{}\nend of the engine log {}:\n{}",
            out.status,
            out.stderr_tail(),
            cluster.log.display(),
            cluster.log_tail()
        );
        let b = parse_client_json(&out.stdout).with_context(|| format!("{label} [{tag}] run {run}"))?;
        ensure!(
            b.count == spec.count && b.size_bytes == spec.size_bytes,
            "the client ran {} × {} bytes, asked for {} × {}",
            b.count,
            b.size_bytes,
            spec.count,
            spec.size_bytes
        );
        let cpu = cpu_after? - cpu_before;
        let rate = if spec.count == 1 {
            format!("{:.1} MB/s", b.bytes_total as f64 / b.elapsed_s / MB)
        } else {
            format!("{:.0} ops/s, p99 {:.1} ms", b.ops_s, b.latency_us.p99 / 1e3)
        };
        let errors = if b.errors > 0 { format!(", {} ERRORS", b.errors) } else { String::new() };
        eprintln!("  {label} [{tag}] run {run}/{}: {rate}, engine CPU {cpu:.2} s{errors}", spec.runs);
        cpu_s.push(cpu);
        runs.push(b);
    }
    let engine_vm_hwm_kib = cluster.vm_hwm_kib()?;
    proc::record(format!(
        "(read /proc/{pid}/stat utime+stime before and after each run, and VmHWM from /proc/{pid}/status after the last: the engine)",
        pid = cluster.pid()
    ));
    let engine_warnings = cluster.log_warnings();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&data);
    let mut r = summarize(spec.clone(), data_path, runs, &cpu_s, engine_vm_hwm_kib, engine_warnings)?;
    r.copies = Some(copies);
    Ok(r)
}

/// The summary of a phase's runs: pure, so it is tested without a cluster.
pub fn summarize(
    spec: PhaseSpec,
    data_path: Option<&str>,
    runs: Vec<ClientBench>,
    cpu_s: &[f64],
    engine_vm_hwm_kib: u64,
    engine_warnings: Vec<String>,
) -> Result<PhaseResult> {
    ensure!(!runs.is_empty() && runs.len() == cpu_s.len(), "a phase needs runs, each with its CPU time");
    let per = |f: &dyn Fn(&ClientBench) -> f64| Stats::of(&runs.iter().map(f).collect::<Vec<_>>()).expect("runs");
    let moved_gib: Vec<f64> = runs.iter().map(|b| engine_bytes_moved(b) as f64 / GIB).collect();
    let cpu_per_gib: Vec<f64> = cpu_s.iter().zip(&moved_gib).map(|(c, g)| c / g).collect();
    let cpu_per_op: Vec<f64> = cpu_s.iter().zip(&runs).map(|(c, b)| c * 1e6 / b.count as f64).collect();
    Ok(PhaseResult {
        label: spec.label(),
        data_path: data_path.map(str::to_string),
        mb_s: per(&|b| b.bytes_total as f64 / b.elapsed_s / MB),
        mib_s: per(&|b| b.bytes_total as f64 / b.elapsed_s / MIB),
        ops_s: per(&|b| b.ops_s),
        latency_p50_us: per(&|b| b.latency_us.p50),
        latency_p99_us: per(&|b| b.latency_us.p99),
        engine_cpu_s: Stats::of(cpu_s).expect("runs"),
        engine_cpu_s_per_gib: Stats::of(&cpu_per_gib).expect("runs"),
        engine_cpu_us_per_op: Stats::of(&cpu_per_op).expect("runs"),
        engine_cpu_s_per_gib_phase: cpu_s.iter().sum::<f64>() / moved_gib.iter().sum::<f64>(),
        engine_cpu_s_per_gib_get_alone_est: None,
        engine_vm_hwm_kib,
        errors: runs.iter().map(|b| b.errors).sum(),
        copies: None,
        engine_warnings,
        spec,
        runs,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn bench_json(op: &str, size: u64, count: u64, elapsed_s: f64) -> ClientBench {
        let json = format!(
            r#"{{"op":"{op}","size_bytes":{size},"count":{count},"concurrency":1,"chunking":"equal",
               "elapsed_s":{elapsed_s},"bytes_total":{},"mib_s":1.0,"gib_s":1.0,"ops_s":{},
               "latency_us":{{"p50":10,"p90":20,"p99":30,"p999":40,"max":50,"mean":12.5}},"errors":0}}"#,
            size * count,
            count as f64 / elapsed_s
        );
        parse_client_json(&json).unwrap()
    }

    #[test]
    fn client_json_alone_or_as_the_last_line() {
        let b = bench_json("put", 1 << 30, 1, 2.0);
        let line = serde_json::to_string(&b).unwrap();
        assert_eq!(parse_client_json(&line).unwrap().bytes_total, 1 << 30);
        let noisy = format!("warming up\n{line}\n");
        assert_eq!(parse_client_json(&noisy).unwrap().latency_us.p99, 30.0);
        assert!(parse_client_json("no json here").is_err());
        assert!(parse_client_json(r#"{"op":"put"}"#).unwrap_err().to_string().contains("expected fields"));
    }

    #[test]
    fn phase_summary_units_and_cpu_per_gib() {
        let spec = PhaseSpec { op: Op::Get, size_bytes: 1 << 30, count: 1, concurrency: 1, runs: 3 };
        let runs = vec![
            bench_json("get", 1 << 30, 1, 1.0),
            bench_json("get", 1 << 30, 1, 2.0),
            bench_json("get", 1 << 30, 1, 4.0),
        ];
        let r = summarize(spec, Some("splice"), runs, &[0.5, 1.0, 0.3], 10240, vec![]).unwrap();
        assert_eq!(r.label, "get 1 GiB");
        assert_eq!(r.mib_s.median, 512.0);
        assert_eq!(r.mib_s.values, vec![1024.0, 512.0, 256.0]);
        assert!((r.mb_s.median - 536.870912).abs() < 1e-9);
        // A get run moves each GiB through the engine twice: once uploaded, once read.
        assert_eq!(r.engine_cpu_s_per_gib.values, vec![0.25, 0.5, 0.15]);
        assert!((r.engine_cpu_s_per_gib_phase - 1.8 / 6.0).abs() < 1e-12);
        assert_eq!(r.engine_cpu_us_per_op.median, 5e5);
    }

    #[test]
    fn get_alone_subtracts_the_upload_at_the_put_phase_rate() {
        let put_spec = PhaseSpec { op: Op::Put, size_bytes: 1 << 30, count: 1, concurrency: 1, runs: 1 };
        let get_spec = PhaseSpec { op: Op::Get, ..put_spec.clone() };
        let put = summarize(put_spec, Some("copy"), vec![bench_json("put", 1 << 30, 1, 1.0)], &[0.4], 1, vec![]);
        let get =
            |path| summarize(get_spec.clone(), Some(path), vec![bench_json("get", 1 << 30, 1, 1.0)], &[0.7], 1, vec![]);
        let mut phases = vec![put.unwrap(), get("copy").unwrap(), get("splice").unwrap()];
        estimate_get_alone(&mut phases);
        assert_eq!(phases[0].engine_cpu_s_per_gib_get_alone_est, None, "puts have none");
        let est = phases[1].engine_cpu_s_per_gib_get_alone_est.as_ref().unwrap();
        assert!((est.median - 0.3).abs() < 1e-12, "{est:?}");
        assert_eq!(phases[2].engine_cpu_s_per_gib_get_alone_est, None, "no put phase on that path");
    }

    #[test]
    fn labels() {
        let small = PhaseSpec { op: Op::Put, size_bytes: 4096, count: 10_000, concurrency: 32, runs: 5 };
        assert_eq!(small.label(), "put 4 KiB ×10000, 32 concurrent");
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(1536 << 20), "1536 MiB");
        assert_eq!(human_size(1000), "1000 B");
    }
}
