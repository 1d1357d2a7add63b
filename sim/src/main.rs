//! dfs-sim: runs the engine's decisions (dfs-core) over a simulated cluster, one seed at a
//! time, and checks the invariants on every step. A failing seed prints the step and the
//! invariant that broke; `--seed S` replays it exactly.

mod engine;
mod exec;
mod store;
mod stream;
mod workload;
mod world;

use clap::Parser;
use std::rc::Rc;
use std::time::{Duration, Instant};
use world::{Config, World};

#[derive(Parser)]
#[command(about = "Deterministic simulation of the dfs engine's failure handling")]
struct Args {
    /// Run this many seeds, from --from on.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of a --seeds run.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Replay one seed, with what it did.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print every store, delete, commit and decision as it happens.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Also replay every seed listed in this file (one per line, `#` comments): seeds that
    /// once failed, kept as regression cases.
    #[arg(long)]
    regressions: Option<std::path::PathBuf>,
}

/// What one seed did.
struct Outcome {
    sim_time: Duration,
    steps: u64,
    n_lost: u64,
    summary: String,
}

/// How a seed failed.
#[derive(Debug, thiserror::Error)]
enum SeedFailed {
    /// An invariant broke, or an assertion of the code under test failed.
    #[error("{0}")]
    Panicked(String),
    /// The node's segment store broke an invariant over the simulated disk.
    #[error("segment store: {0}")]
    Store(String),
    #[error("deadlock: nothing can run and no timer is set; waiting: {}", .0.join(", "))]
    Deadlock(Vec<String>),
    #[error("not finished after {limit:?} of simulated time; still running: {}", waiting.join(", "))]
    OutOfTime { limit: Duration, waiting: Vec<String> },
}

/// The run a seed stands for: the cluster's shape and the workload are drawn from it too.
fn run_seed(seed: u64) -> Result<Outcome, SeedFailed> {
    std::panic::catch_unwind(|| {
        exec::run(seed, Duration::from_secs(3 * 3600), async move {
            let n_nodes = exec::random_range(4..7) as usize;
            let replicas = exec::random_range(1..4) as usize;
            let n_clients = exec::random_range(2..5);
            let n_ops = exec::random_range(20..80);
            let w = Rc::new(World::new(Config { n_nodes, replicas, request_timeout: Duration::from_secs(2) }));
            exec::spawn("pinger", engine::pinger(w.clone()));
            exec::spawn("repair queue", engine::repair_queue(w.clone()));
            exec::spawn("chaos", workload::chaos(w.clone()));
            let clients: Vec<_> =
                (0..n_clients).map(|i| exec::spawn(format!("client {i}"), workload::client(w.clone(), n_ops))).collect();
            exec::join_all(clients).await;
            let n_lost = workload::final_check(w.clone()).await;
            let c = w.counts.borrow();
            let faults: Vec<String> = c.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let summary = format!(
                "{n_nodes} nodes, R={replicas}, {n_clients} clients × {n_ops} ops: puts {} ok / {} failed, gets {} ok / {} failed ({} streamed), \
                 deletes {}, gc {} ({} deleted), repair {} ({} copies made), scrub {}; faults: {}",
                c.puts_ok,
                c.puts_failed,
                c.gets_ok,
                c.gets_failed,
                c.streamed_gets,
                c.deletes,
                c.gcs,
                c.gc_deleted,
                c.repairs,
                c.copies_made,
                c.scrubs,
                faults.join(", ")
            );
            (n_lost, summary, exec::now(), exec::steps())
        })
    })
    .map_err(|panic| SeedFailed::Panicked(panic_message(&*panic)))?
    .map(|(n_lost, summary, sim_time, steps)| Outcome { sim_time, steps, n_lost, summary })
    .map_err(|stuck| match stuck {
        exec::Stuck::Deadlock { waiting } => SeedFailed::Deadlock(waiting),
        exec::Stuck::OutOfTime { limit, waiting } => SeedFailed::OutOfTime { limit, waiting },
    })
    .and_then(|mut outcome| {
        let c = std::panic::catch_unwind(|| store::run(seed))
            .map_err(|panic| SeedFailed::Store(panic_message(&*panic)))?
            .map_err(|failed| SeedFailed::Store(failed.to_string()))?;
        outcome.summary += &format!(
            "; segment store: {} acknowledged, {} deleted, {} power cuts, {} writeback errors, {} rotted, {} repaired, \
             {} checkpoints, {} compactions, {} writes refused by a full disk",
            c.acked,
            c.deleted,
            c.power_cuts,
            c.writeback_errors,
            c.rotted,
            c.repaired,
            c.checkpoints,
            c.compactions,
            c.disk_full
        );
        Ok(outcome)
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // A broken invariant is a panic inside the run; its message is reported once, below.
    if std::env::var_os("DFS_SIM_PANICS").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    exec::set_trace(args.trace);
    let mut seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.from..args.from + args.seeds).collect(),
    };
    if let Some(path) = &args.regressions {
        match std::fs::read_to_string(path) {
            Ok(text) => seeds.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| l.parse::<u64>().ok()),
            ),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let started = Instant::now();
    let (mut n_failed, mut n_lost, mut sim_time, mut steps) = (0, 0, Duration::ZERO, 0);
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(o) => {
                if args.seed.is_some() {
                    println!("seed {seed}: {}", o.summary);
                    println!(
                        "seed {seed}: passed, {} steps, {:.1?} simulated, {} file(s) lost to faults",
                        o.steps, o.sim_time, o.n_lost
                    );
                }
                n_lost += o.n_lost;
                sim_time += o.sim_time;
                steps += o.steps;
            }
            Err(why) => {
                n_failed += 1;
                println!("seed {seed} FAILED: {why}");
                println!("  replay: cargo run --release -p dfs-sim -- --seed {seed}");
            }
        }
    }
    println!(
        "{} seed(s), {} failed, {steps} steps, {:.0?} simulated in {:.1?} of wall time; {n_lost} file(s) lost to faults (every copy destroyed)",
        seeds.len(),
        n_failed,
        sim_time,
        started.elapsed()
    );
    if n_failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
