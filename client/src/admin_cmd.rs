//! The administration commands of the CLI: `status`, `repair`, `scrub`, `gc`. Reports go to
//! stdout (text, or one JSON object with `--json`); a repair that leaves any chunk lost,
//! unavailable or short of copies ends with an `error:` line and exit status 1.

use crate::view::{format_unix_ms, human_bytes};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use dfs_client::Client;
use dfs_proto::RepairSummary;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Show every storage node: up or down, last seen, chunks held, bytes used and free
    Status {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
        /// Ask again every second until interrupted: on a terminal the table is redrawn in
        /// place; otherwise each report follows the last (with --json, one object per line)
        #[arg(long)]
        watch: bool,
    },
    /// Bring every chunk back to the engine's number of copies, copying from sound copies
    ///
    /// Repair never lowers the number of sound copies a chunk has: only a copy proven missing
    /// or corrupt is replaced, and a corrupt copy is deleted only once a sound one is durable
    /// elsewhere. A copy whose check fails for any other reason (its node out of file
    /// descriptors, an I/O error) is left as it is and checked again next pass.
    ///
    /// The report counts chunks that are "lost" (unrecoverable: every copy is proven missing
    /// or corrupt; no pass can bring them back), "unavailable now" (no sound copy could be read,
    /// but some copy could not be checked, because its node is down or answered with a passing
    /// error; run repair again once the node is back) and "short of copies" (readable, but too
    /// few live nodes could take a new copy). Any of the three makes the exit status 1.
    Repair {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Have every node re-verify all its chunks and set corrupt ones aside, then repair
    Scrub {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Delete chunks that no file references (interrupted uploads, leftovers of deleted files)
    Gc {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
        /// Only chunks older than this many seconds [default: the engine's --gc-grace-secs]
        #[arg(long, value_name = "SECS")]
        grace_secs: Option<u64>,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

fn json_line(stdout: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *stdout, value).context("cannot write to stdout")?;
    writeln!(stdout).context("cannot write to stdout")
}

/// Runs a repair pass with a progress bar on a terminal.
fn repair(client: &mut Client) -> Result<RepairSummary> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("repair {bar:30} {pos}/{len} chunks {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let summary = client.repair(|done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(summary?)
}

fn write_repair(stdout: &mut dyn Write, s: &RepairSummary) -> Result<()> {
    writeln!(
        stdout,
        "repair: {} files, {} chunks checked, {} copies made ({}), {} lost, {} unavailable now, {} short of copies",
        s.n_files,
        s.n_chunks_checked,
        s.n_copies_made,
        human_bytes(s.bytes_copied),
        s.n_chunks_unrecoverable,
        s.n_chunks_unavailable,
        s.n_chunks_degraded
    )?;
    for line in &s.problems {
        writeln!(stdout, "  {line}")?;
    }
    Ok(())
}

/// Exit status 1 when repair could not restore every chunk.
fn check_repair(s: &RepairSummary) -> Result<()> {
    let mut parts = Vec::new();
    if s.n_chunks_unrecoverable > 0 {
        parts.push(format!("{} chunk(s) lost (every copy missing or corrupt)", s.n_chunks_unrecoverable));
    }
    if s.n_chunks_unavailable > 0 {
        parts.push(format!(
            "{} chunk(s) unavailable now (no sound copy reachable; run repair again once the down node is back)",
            s.n_chunks_unavailable
        ));
    }
    if s.n_chunks_degraded > 0 {
        parts.push(format!("{} chunk(s) short of copies", s.n_chunks_degraded));
    }
    if !parts.is_empty() {
        bail!("{}; see the report", parts.join(", "));
    }
    Ok(())
}

pub fn run(server: &dfs_client::Server, command: AdminCommand, stdout: &mut dyn Write) -> Result<()> {
    let mut client = Client::connect(server)?;
    match command {
        AdminCommand::Status { json, watch: false } => {
            let status = client.status()?;
            if json {
                return json_line(stdout, &status);
            }
            write_status(stdout, &status)?;
        }
        AdminCommand::Status { json, watch: true } => {
            let redraw = !json && std::io::stdout().is_terminal();
            loop {
                // The engine may go away and come back: a failed ask is a line, not the end.
                let status = match client.status() {
                    Ok(s) => Ok(s),
                    Err(_) => Client::connect(server).and_then(|c| {
                        client = c;
                        client.status()
                    }),
                };
                let mut frame: Vec<u8> = Vec::new();
                match &status {
                    Ok(s) if json => serde_json::to_writer(&mut frame, s).context("cannot encode the status")?,
                    Ok(s) => {
                        writeln!(frame, "{}", format_unix_ms(now_unix_ms()))?;
                        write_status(&mut frame, s)?;
                    }
                    Err(e) => write!(frame, "{}: no answer from the engine: {e}", format_unix_ms(now_unix_ms()))?,
                }
                if redraw {
                    // Home and clear, then the report: one redraw per second, in place.
                    stdout.write_all(b"\x1b[H\x1b[2J")?;
                }
                stdout.write_all(&frame)?;
                // Text reports end with a line of their own; apart, they are kept apart by a blank one.
                if json || status.is_err() || !redraw {
                    writeln!(stdout)?;
                }
                stdout.flush()?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        AdminCommand::Repair { json } => {
            let summary = repair(&mut client)?;
            if json {
                json_line(stdout, &summary)?;
            } else {
                write_repair(stdout, &summary)?;
            }
            check_repair(&summary)?;
        }
        AdminCommand::Scrub { json } => {
            let scrub = client.scrub()?;
            // Corrupt copies were set aside by their nodes: repair puts sound ones back.
            let repaired = if scrub.n_corrupt > 0 { Some(repair(&mut client)?) } else { None };
            if json {
                json_line(stdout, &serde_json::json!({ "scrub": scrub, "repair": repaired }))?;
            } else {
                writeln!(stdout, "scrub: {} chunk copies checked, {} corrupt", scrub.n_checked, scrub.n_corrupt)?;
                for line in &scrub.corrupt {
                    writeln!(stdout, "  {line}")?;
                }
                if let Some(r) = &repaired {
                    write_repair(stdout, r)?;
                }
            }
            if let Some(r) = &repaired {
                check_repair(r)?;
            }
        }
        AdminCommand::Gc { dry_run, grace_secs, json } => {
            let report = client.gc(dry_run, grace_secs)?;
            if json {
                return json_line(stdout, &report);
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            let n = if dry_run { report.n_orphans } else { report.n_deleted };
            writeln!(stdout, "gc: {} old chunks scanned, {} orphans, {verb} {n}", report.n_scanned, report.n_orphans)?;
            for line in &report.orphans {
                writeln!(stdout, "  {line}")?;
            }
        }
    }
    Ok(())
}

/// A node's scrub in a few words: the running pass's progress, else the last pass's outcome
/// and when it finished; and the copies set aside.
fn scrub_cell(r: &dfs_proto::StoreReport) -> String {
    let s = &r.scrub;
    let mut cell = if s.running {
        format!("checking {}/{}", s.n_checked, r.n_chunks)
    } else if s.last_finished_unix_ms > 0 {
        format!("{} checked, {} corrupt, {}", s.last_checked, s.last_corrupt, format_unix_ms(s.last_finished_unix_ms))
    } else {
        "-".into()
    };
    if r.n_quarantined > 0 {
        cell += &format!("; {} set aside", r.n_quarantined);
    }
    cell
}

/// The text report of `status`.
fn write_status(out: &mut dyn Write, status: &dfs_client::admin::ClusterStatus) -> Result<()> {
    writeln!(out, "{} nodes, {} copies of each chunk", status.nodes.len(), status.replicas)?;
    writeln!(
        out,
        "{:<32} {:<22} {:<5} {:<24} {:>10} {:>12} {:>12} {:>12}  SCRUB",
        "ID", "ADDRESS", "STATE", "LAST SEEN", "CHUNKS", "LIVE", "RECLAIMABLE", "FREE"
    )?;
    for n in &status.nodes {
        let seen = if n.last_seen_unix_ms == 0 { "never".to_string() } else { format_unix_ms(n.last_seen_unix_ms) };
        let (chunks, used, reclaimable, free, scrub) = match &n.report {
            Some(r) => (
                r.n_chunks.to_string(),
                human_bytes(r.bytes_used),
                human_bytes(r.bytes_reclaimable),
                human_bytes(r.bytes_free),
                scrub_cell(r),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let state = if n.up { "up" } else { "down" };
        let id = n.id.map(|id| id.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<32} {:<22} {:<5} {:<24} {:>10} {:>12} {:>12} {:>12}  {scrub}",
            id, n.addr, state, seen, chunks, used, reclaimable, free
        )?;
        if let (false, Some(e)) = (n.up, &n.last_error) {
            writeln!(out, "  last error: {e}")?;
        }
    }
    let q = &status.repair_queue;
    writeln!(
        out,
        "repair queue: {} chunk(s) waiting; {} settled and {} cop(ies) made since the engine started",
        q.n_queued, q.n_settled, q.n_copies_made
    )?;
    Ok(())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
