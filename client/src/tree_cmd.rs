//! `put -r` and `get -r` on the command line: a tree progress display (one bar on a terminal,
//! a plain line every few seconds otherwise) and the summary (text on stderr, or one JSON
//! object on stdout with `--json`). Any failed file makes the exit status 1.

use anyhow::{bail, Context, Result};
use dfs_client::ingest::{TreeProgress, TreeSummary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a progress line is printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Skipped and failed files listed by name in the text summary; `--json` lists them all.
const SUMMARY_LIST_MAX: usize = 20;

pub struct TreeBar {
    verb: &'static str,
    bar: Option<ProgressBar>,
    n_files: AtomicU64,
    files_done: AtomicU64,
    /// Bytes to move: the tree's, less those of files found already in place.
    n_bytes: AtomicU64,
    bytes_done: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl TreeBar {
    pub fn on_stderr(verb: &'static str) -> TreeBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        TreeBar {
            verb,
            bar,
            n_files: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            n_bytes: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn files_msg(&self) -> String {
        format!(
            "{} {}/{} files",
            self.verb,
            self.files_done.load(Ordering::Relaxed),
            self.n_files.load(Ordering::Relaxed)
        )
    }

    fn maybe_print_line(&self) {
        if self.bar.is_some() {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < PLAIN_PROGRESS_EVERY {
            return;
        }
        *last = Instant::now();
        let done = self.bytes_done.load(Ordering::Relaxed);
        let total = self.n_bytes.load(Ordering::Relaxed);
        let elapsed_s = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed_s;
        let eta = if rate > 0.0 {
            format!("{:.0} s", total.saturating_sub(done) as f64 / rate)
        } else {
            "unknown".to_string()
        };
        // Nothing sensible is left to do if stderr itself is gone.
        let _ = writeln!(
            std::io::stderr(),
            "{}, {} of {}, {}/s, eta {eta}",
            self.files_msg(),
            crate::view::human_bytes(done),
            crate::view::human_bytes(total),
            crate::view::human_bytes(rate as u64),
        );
    }
}

impl TreeProgress for TreeBar {
    fn start(&self, n_files: u64, n_bytes: u64) {
        self.n_files.store(n_files, Ordering::Relaxed);
        self.n_bytes.store(n_bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(n_bytes);
            bar.set_message(self.files_msg());
        }
    }

    fn bytes(&self, n_bytes: u64) {
        self.bytes_done.fetch_add(n_bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n_bytes);
        }
        self.maybe_print_line();
    }

    fn skipped(&self, n_bytes: u64) {
        let left = self.n_bytes.fetch_sub(n_bytes, Ordering::Relaxed).saturating_sub(n_bytes);
        if let Some(bar) = &self.bar {
            bar.set_length(left);
        }
    }

    fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_message(self.files_msg());
        }
        self.maybe_print_line();
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Makes SIGINT and SIGTERM end the process on a thread of its own, after removing the
/// temporary files of restores in progress, with one `error:` line ending in `hint` and the
/// usual 128 + signal number status. Must run before any other thread starts, so that every
/// thread inherits the blocked signals and only the waiting thread receives them.
pub fn exit_cleanly_on_interrupt(
    hint: &'static str,
    partial_files: Option<std::sync::Arc<dfs_client::ingest::PartialFiles>>,
) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("cannot block SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                if let Some(partial_files) = &partial_files {
                    partial_files.remove_all();
                }
                let mut err = std::io::stderr().lock();
                let newline = if std::io::stderr().is_terminal() { "\n" } else { "" };
                // Nothing sensible is left to do if stderr itself is gone.
                let _ = writeln!(err, "{newline}error: interrupted by {signal}; {hint}");
                std::process::exit(128 + signal as i32);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Prints the summary and turns failures into the exit status.
pub fn report(summary: &TreeSummary, verb: &str, json: bool, stdout: &mut dyn Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *stdout, summary).context("cannot write to stdout")?;
        writeln!(stdout).context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    } else {
        let mut err = std::io::stderr().lock();
        // Nothing sensible is left to do if stderr itself is gone.
        let _ = writeln!(
            err,
            "{verb} {} files, {} in {:.1} s ({:.1} MiB/s); {} unchanged, {} found stored and recorded, {} not regular files skipped, {} failed",
            summary.files_done,
            crate::view::human_bytes(summary.bytes_done),
            summary.elapsed_s,
            summary.throughput_mib_s,
            summary.skipped_unchanged,
            summary.adopted,
            summary.skipped_not_regular.len(),
            summary.failed.len()
        );
        for s in summary.skipped_not_regular.iter().take(SUMMARY_LIST_MAX) {
            let _ = writeln!(err, "  skipped {} ({})", s.path, s.kind);
        }
        for f in summary.failed.iter().take(SUMMARY_LIST_MAX) {
            let _ = writeln!(err, "  failed {}: {}", f.path, f.error);
        }
        let n_unlisted = summary.skipped_not_regular.len().saturating_sub(SUMMARY_LIST_MAX)
            + summary.failed.len().saturating_sub(SUMMARY_LIST_MAX);
        if n_unlisted > 0 {
            let _ = writeln!(err, "  ... and {n_unlisted} more (--json lists every one)");
        }
    }
    if let Some(first) = summary.failed.first() {
        bail!("{} file(s) failed, the first {}: {}", summary.failed.len(), first.path, first.error);
    }
    Ok(())
}
