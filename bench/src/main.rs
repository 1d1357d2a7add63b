//! The benchmark harness: starts a local cluster (`dfs-engine --local 4`, separate processes),
//! round-trips a file of the given size through `dfs-client` several times, checks every copy
//! byte for byte, and reports median put and get throughput, the engine's CPU seconds per GiB
//! moved and its peak resident memory (VmHWM), read from /proc.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new().with_binary().parse_size(s).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Parser, Debug)]
#[command(about = "Round-trip benchmark of dfs on a local cluster")]
struct Args {
    /// File size (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    /// Round trips; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Chunking mode passed to `dfs-client put`.
    #[arg(long, default_value = "equal")]
    chunking: String,
    /// Directory with dfs-engine, dfs-node and dfs-client (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch directory (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra arguments for the engine, e.g. --engine-arg=--buffer-budget=64MiB.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    engine_args: Vec<String>,
}

struct Engine {
    child: Child,
    addr: String,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    // The engine's nodes take the 4 ports after it, so look for 5 free ports in a row.
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port > 65000 {
            continue;
        }
        if (1..=4).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no 5 consecutive free loopback ports found")
}

fn start_engine(bin: &Path, data: &Path, extra: &[String]) -> Result<Engine> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(data.with_extension("log"))?;
    let mut child = Command::new(bin.join("dfs-engine"))
        .args(["--local", "4", "--listen", &addr, "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start dfs-engine")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("engine stdout")?).read_line(&mut line)?;
    ensure!(line.starts_with("listening"), "engine did not start; see {}", data.with_extension("log").display());
    Ok(Engine { child, addr })
}

/// Fills a file with pseudo-random bytes (xorshift), quickly and reproducibly.
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
    f.flush()?;
    Ok(())
}

fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn client(bin: &Path, addr: &str, args: &[&str]) -> Result<(String, Duration)> {
    let t = Instant::now();
    let out = Command::new(bin.join("dfs-client")).arg("--server").arg(addr).args(args).output()?;
    let elapsed = t.elapsed();
    ensure!(out.status.success(), "dfs-client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok((String::from_utf8_lossy(&out.stdout).trim().to_string(), elapsed))
}

/// (peak RSS in KiB, CPU seconds) of a process, from /proc.
fn proc_usage(pid: u32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM in /proc status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("bad /proc stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture dfs runs on.
    const USER_HZ: f64 = 100.0;
    Ok((hwm_kib, ticks / USER_HZ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let bin = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.parent().context("binary directory")?.to_path_buf(),
    };
    for b in ["dfs-engine", "dfs-node", "dfs-client"] {
        ensure!(bin.join(b).is_file(), "{} not found: run `cargo build --release` first", bin.join(b).display());
    }
    let scratch = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("dfs-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch)?;
    let input = scratch.join("input");
    let output = scratch.join("output");
    eprintln!("writing {} bytes to {}", args.size, input.display());
    write_input(&input, args.size)?;
    let engine = start_engine(&bin, &scratch.join("cluster"), &args.engine_args)?;
    let (_, cpu_before) = proc_usage(engine.child.id())?;

    let mib = args.size as f64 / (1 << 20) as f64;
    let (mut put_mibs, mut get_mibs) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let input_s = input.to_str().context("utf-8 path")?;
        let (id, put_t) = client(&bin, &engine.addr, &["put", input_s, "--chunking", &args.chunking])?;
        let (_, get_t) = client(&bin, &engine.addr, &["get", &id, "-o", output.to_str().context("utf-8 path")?])?;
        ensure!(same_contents(&input, &output)?, "run {run}: downloaded file differs from the input");
        client(&bin, &engine.addr, &["rm", &id])?;
        std::fs::remove_file(&output)?;
        let (p, g) = (mib / put_t.as_secs_f64(), mib / get_t.as_secs_f64());
        eprintln!("run {run}: put {p:.0} MiB/s ({put_t:.2?}), get {g:.0} MiB/s ({get_t:.2?}), byte-identical");
        put_mibs.push(p);
        get_mibs.push(g);
    }
    let (hwm_kib, cpu_after) = proc_usage(engine.child.id())?;
    let gib_moved = 2.0 * args.runs as f64 * args.size as f64 / (1u64 << 30) as f64;
    println!("size_bytes={} runs={} chunking={}", args.size, args.runs, args.chunking);
    println!(
        "put_mib_s_median={:.0} (min {:.0}, max {:.0})",
        median(&mut put_mibs),
        put_mibs[0],
        put_mibs[put_mibs.len() - 1]
    );
    println!(
        "get_mib_s_median={:.0} (min {:.0}, max {:.0})",
        median(&mut get_mibs),
        get_mibs[0],
        get_mibs[get_mibs.len() - 1]
    );
    println!("engine_cpu_s_per_gib={:.3}", (cpu_after - cpu_before) / gib_moved);
    println!("engine_peak_rss_mib={:.1}", hwm_kib as f64 / 1024.0);
    drop(engine);
    if args.dir.is_none() {
        std::fs::remove_dir_all(&scratch)?;
    }
    Ok(())
}
