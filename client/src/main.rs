//! `dfs-client`: the command line for a dfs engine. Each command opens one connection, makes
//! its request(s) and prints the result; everything machine-readable goes to stdout (a file ID,
//! a listing, downloaded bytes with `-o -`), and everything else to stderr: a progress bar when
//! stderr is a terminal, and on failure exactly one line starting with `error: `, with exit
//! status 1. Usage mistakes are reported by clap (exit status 2).
//!
//! `put --bench` runs the benchmark of [`bench`] instead of one upload, over
//! `--concurrency` connections: its report (text, or one JSON object with `--json`) is what goes
//! to stdout, and a failed request is an `error: op N failed: ...` line like any other failure.
//!
//! `put -r` and `get -r` move a whole tree over `--jobs` connections (see `tree_cmd`): a failed
//! file does not stop the others; the summary lists it and the exit status is 1.

mod admin_cmd;
mod bench;
mod bucket_cmd;
mod tree_cmd;
mod view;

use anyhow::{bail, Context, Result};
use bench::{BenchConfig, BenchInput, BenchOp, Cleanup, LocalCluster, LOG_TAIL_LINES};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, CommandFactory, Parser, Subcommand};
use dfs_client::{failover, Chunking, Client, FileId, MappedFile, Progress, DEFAULT_SERVER};
use dfs_proto::units::parse_bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use view::{FileView, SummaryView};

#[derive(Parser)]
#[command(name = "dfs-client", version, about = "Store, fetch and inspect files in a dfs cluster")]
struct Cli {
    /// Engine address (host:port), or several engines of one cluster separated by commas
    /// (A,B,C): tried in order; a request whose engine fails goes on with the next (a download
    /// continues where it stopped, an upload is sent again whole)
    #[arg(long, global = true, value_name = "ADDR[,ADDR...]", env = "DFS_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Access key to present to the engine
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "DFS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the access key to present (its first line), e.g. DATA/access.key of a
    /// `dfs-engine --local` cluster
    #[arg(long, global = true, value_name = "FILE", env = "DFS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload a file and print its ID on stdout
    Put(PutArgs),
    /// Download a file, verifying every chunk's checksum (or, with -r, a whole tree)
    Get {
        /// File ID (32 hex digits); with -r, the manifest of a `put -r`
        id: String,
        /// Restore the directory tree a manifest records (the last line for each path) into the
        /// directory given with -o, in parallel, checking every file's size and crc32 before it
        /// is renamed into place. A file already present with the recorded contents is left
        /// alone; an existing file or symlink that differs is a failed file unless --force. A
        /// manifest path that is absolute, contains `..`, or leads through a symlink or a file
        /// is refused for that file alone: nothing is ever written outside the directory. Prints
        /// a summary (stderr, or stdout with --json); exit status 1 if any file failed
        #[arg(short = 'r', long)]
        recursive: bool,
        /// With -r: files downloaded at once, each over its own connection (1 to 256)
        #[arg(long, default_value_t = DEFAULT_JOBS, requires = "recursive", value_parser = parse_jobs)]
        jobs: usize,
        /// With -r: replace existing files and symlinks that differ from the manifest
        #[arg(long, requires = "recursive")]
        force: bool,
        /// With -r: print the summary as one JSON object on stdout
        #[arg(long, requires = "recursive")]
        json: bool,
        /// Where to write the file; `-` for stdout. A path is written only once the whole file
        /// has arrived and been verified. On stdout, data is written as it arrives: after a
        /// failure part of the file may already have been written, but the exit status is 1.
        /// With -r: the directory to restore into, created if missing
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
    },
    /// Show a file's description and chunk table
    Stat {
        /// File ID (32 hex digits)
        id: String,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// List files (sizes in bytes, or human-readable on a terminal)
    Ls {
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
        /// Order by name, size or time (creation) [default: the engine's order, by file ID]
        #[arg(long, value_parser = ["name", "size", "time"])]
        sort: Option<String>,
        /// Reverse the order
        #[arg(long)]
        reverse: bool,
        /// Only files whose name starts with PREFIX
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the man page, or write dfs-client.1 and one page per command into DIR
    Man {
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Delete a file
    Rm {
        /// File ID (32 hex digits)
        id: String,
    },
    #[command(flatten)]
    Admin(admin_cmd::AdminCommand),
    /// Manage the S3 front door's buckets: create, list, remove, and list a bucket's keys
    #[command(subcommand)]
    Bucket(bucket_cmd::BucketCommand),
}

/// Arguments of `put`, a struct of its own so that options such as a benchmark mode can join.
#[derive(Args)]
struct PutArgs {
    /// The file to upload (with --bench, see --file instead)
    // Against the whole group of benchmark options rather than each of them requiring --bench:
    // clap counts a flag's implicit `false` as present, so `requires = "bench"` never fires.
    #[arg(required_unless_present = "BenchArgs", conflicts_with = "BenchArgs")]
    path: Option<PathBuf>,
    /// Name to store the file under (default: the file's base name)
    #[arg(long, conflicts_with = "bench")]
    name: Option<String>,
    /// How to cut the file into chunks: `equal` (4 chunks) or `dynamic` (4·k chunks, each at
    /// most the engine's chunk size cap)
    #[arg(
        long,
        default_value = "equal",
        value_parser = PossibleValuesParser::new(["equal", "dynamic"]).try_map(|s| s.parse::<Chunking>())
    )]
    chunking: Chunking,
    /// With --bench or -r: print the report as one JSON object on stdout instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bench: BenchArgs,
    #[command(flatten)]
    tree: TreeArgs,
}

/// `put -r`: a whole directory tree.
#[derive(Args)]
#[command(next_help_heading = "Directory trees")]
struct TreeArgs {
    /// Upload every regular file under the directory PATH, in parallel, each under its path
    /// relative to PATH, recording each in --manifest. Rerun with the same manifest to resume:
    /// files stored unchanged (same size and modification time as recorded, and still on the
    /// engine with the recorded size and crc32) are skipped; files an earlier run of this
    /// manifest stored but never recorded are recorded; the others are uploaded and their new
    /// lines supersede the old. Symlinks and special files are reported and skipped.
    /// Prints a summary (stderr, or stdout with --json); exit status 1 if any file failed
    #[arg(short = 'r', long, conflicts_with_all = ["bench", "name"])]
    recursive: bool,
    /// With -r: the manifest file (JSON lines: a header with the manifest's identity, then path,
    /// id, size, crc32, mtime_ns), created or appended to, one line per finished file; locked
    /// while the upload runs, and never uploaded itself
    #[arg(long, value_name = "FILE", requires = "recursive")]
    manifest: Option<PathBuf>,
    /// With -r: files uploaded at once, each over its own connection (1 to 256). Each small
    /// file waits for its copies' syncs, so a tree of small files goes faster with more jobs
    #[arg(long, default_value_t = DEFAULT_JOBS, requires = "recursive", value_parser = parse_jobs)]
    jobs: usize,
    /// With -r: upload the regular file a symlink points to instead of skipping the symlink
    /// (symlinks to directories and other files are still skipped)
    #[arg(long, requires = "recursive")]
    follow_symlinks: bool,
}

/// `put --bench`: time many uploads (or downloads) instead of uploading one file.
#[derive(Args)]
#[command(next_help_heading = "Benchmark")]
struct BenchArgs {
    /// Benchmark instead: upload one file --count times over --concurrency connections, time
    /// each request, and report throughput and latency percentiles. The objects are deleted
    /// afterwards. Exits 1 at the first failed request
    #[arg(long)]
    bench: bool,
    /// Time verified downloads instead of uploads: upload the objects first (untimed; at most
    /// 10000 objects or 8 GiB, read round-robin if fewer than --count), then download --count
    /// times, checking each download against the file's crc32 and discarding the bytes
    #[arg(long)]
    get: bool,
    /// Object size, e.g. 4KiB, 64MiB, 1GiB: a temporary file of pseudo-random bytes [default: 4KiB]
    #[arg(long, conflicts_with = "file", value_parser = parse_bytes)]
    size: Option<u64>,
    /// Upload this existing file instead of a generated one; its size is the object size
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Number of timed requests [default: 1000]
    #[arg(long)]
    count: Option<u64>,
    /// Number of connections, each with its own thread, sharing the requests; at most --count
    /// and 256 [default: 1]. With several engines in --server, connection i goes to engine
    /// i mod n
    #[arg(long)]
    concurrency: Option<u64>,
    /// Start a throw-away local cluster (dfs-engine --local 4 from this program's directory,
    /// on free loopback ports, data in a temporary directory) and benchmark it instead of
    /// --server
    #[arg(long)]
    local: bool,
    /// Keep the objects instead of deleting them after the run
    #[arg(long, conflicts_with = "local")]
    keep: bool,
    /// Write the latency percentile distribution to FILE in HdrHistogram's .hgrm text format
    /// (values in ms)
    #[arg(long, value_name = "FILE")]
    hist_out: Option<PathBuf>,
    /// Draw the latencies to FILE as SVG: the percentile curve, and latency over time
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    dfs_proto::env::forget_empty_settings();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the engine's message contains, so scripts can rely on it.
            let line = format!("{err:#}").replace(['\n', '\r'], " ");
            // Nothing sensible is left to do if stderr itself is gone.
            let _ = writeln!(io::stderr(), "error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Says on stderr that a request moved on to another engine (always: it is a warning).
fn failover_note(line: &str) {
    let _ = writeln!(io::stderr(), "dfs-client: {line}");
}

fn run(cli: Cli) -> Result<()> {
    let key = match (&cli.token, &cli.token_file) {
        (Some(key), _) => Some(key.clone()),
        (None, Some(path)) => Some(dfs_proto::auth::read_client_key(path)?),
        (None, None) => None,
    };
    let server = &dfs_client::Server::new(cli.server.clone()).with_key(key);
    let stdout = &mut io::stdout().lock();
    match cli.command {
        Command::Put(args) if args.bench.bench => run_bench(server, args.chunking, args.json, args.bench, stdout)?,
        Command::Put(args) if args.tree.recursive => {
            let root = args.path.context("put -r needs a directory")?;
            let manifest = args.tree.manifest.context("put -r needs --manifest FILE to record what went where")?;
            let opts = dfs_client::ingest::PutTree {
                server,
                failover_note: &failover_note,
                root: &root,
                manifest: &manifest,
                jobs: args.tree.jobs,
                follow_symlinks: args.tree.follow_symlinks,
                chunking: args.chunking,
            };
            tree_cmd::exit_cleanly_on_interrupt("every finished file is in the manifest: rerun to resume", None)?;
            let bar = tree_cmd::TreeBar::on_stderr("uploaded");
            let summary = dfs_client::ingest::put_tree(&opts, &bar)?;
            tree_cmd::report(&summary, "uploaded", args.json, stdout)?;
        }
        Command::Put(args) => {
            // Only benchmark options, without --bench, get this far without a path.
            let path = args.path.context("the benchmark options need --bench")?;
            if args.json {
                bail!("--json needs --bench or -r");
            }
            // Local problems (missing file, bad name) are reported before connecting.
            let name = match args.name {
                Some(name) => name,
                None => dfs_client::default_name(&path)?,
            };
            let file = MappedFile::open(&path)?;
            let mut bar = Bar::on_stderr();
            let (file_id, _) =
                failover::put_mapped(&mut None, server, &failover_note, &name, &file, args.chunking, None, &mut bar)?;
            writeln!(stdout, "{file_id}").context("cannot write to stdout")?;
        }
        Command::Get { id, recursive: true, output, jobs, force, json } => {
            if output.as_os_str() == "-" {
                bail!("get -r restores into a directory: give one with -o, not `-`");
            }
            let partial_files = std::sync::Arc::new(dfs_client::ingest::PartialFiles::default());
            let opts = dfs_client::ingest::GetTree {
                server,
                failover_note: &failover_note,
                manifest: std::path::Path::new(&id),
                out_dir: &output,
                jobs,
                force,
                partial_files: &partial_files,
            };
            let on_interrupt = Some(partial_files.clone());
            tree_cmd::exit_cleanly_on_interrupt("unfinished files were removed: rerun to resume", on_interrupt)?;
            let bar = tree_cmd::TreeBar::on_stderr("restored");
            let summary = dfs_client::ingest::get_tree(&opts, &bar)?;
            tree_cmd::report(&summary, "restored", json, stdout)?;
        }
        Command::Get { id, output, .. } => {
            let file_id = parse_id(&id)?;
            let mut bar = Bar::on_stderr();
            if output.as_os_str() == "-" {
                failover::get_to_writer(&mut None, server, &failover_note, file_id, stdout, &mut bar)?;
            } else {
                failover::get_to_path(&mut None, server, &failover_note, file_id, &output, &mut bar)?;
            }
        }
        Command::Stat { id, json } => {
            let file_id = parse_id(&id)?;
            let info = Client::connect(server)?.stat(file_id)?;
            if json {
                serde_json::to_writer_pretty(&mut *stdout, &FileView::from(&info)).context("cannot write to stdout")?;
                writeln!(stdout).context("cannot write to stdout")?;
            } else {
                view::write_stat_text(stdout, &info).context("cannot write to stdout")?;
            }
        }
        Command::Ls { json, sort, reverse, prefix } => {
            let mut files = Client::connect(server)?.list()?;
            if let Some(prefix) = &prefix {
                files.retain(|f| f.name.starts_with(prefix.as_str()));
            }
            match sort.as_deref() {
                Some("name") => files.sort_by(|a, b| a.name.cmp(&b.name).then(a.file_id.cmp(&b.file_id))),
                Some("size") => files.sort_by(|a, b| a.size.cmp(&b.size).then(a.name.cmp(&b.name))),
                Some("time") => {
                    files.sort_by(|a, b| a.created_unix_ms.cmp(&b.created_unix_ms).then(a.name.cmp(&b.name)))
                }
                _ => {}
            }
            if reverse {
                files.reverse();
            }
            if json {
                let views: Vec<SummaryView> = files.iter().map(SummaryView::from).collect();
                serde_json::to_writer_pretty(&mut *stdout, &views).context("cannot write to stdout")?;
                writeln!(stdout).context("cannot write to stdout")?;
            } else {
                let human = io::stdout().is_terminal();
                view::write_list_text(stdout, &files, human).context("cannot write to stdout")?;
            }
        }
        Command::Rm { id } => {
            let file_id = parse_id(&id)?;
            Client::connect(server)?.delete(file_id)?;
        }
        Command::Admin(command) => admin_cmd::run(server, command, stdout)?,
        Command::Bucket(command) => bucket_cmd::run(server, command, stdout)?,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dfs-client", stdout);
        }
        Command::Man { output: None } => {
            clap_mangen::Man::new(Cli::command()).render(stdout).context("cannot write to stdout")?;
        }
        Command::Man { output: Some(dir) } => {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let cmd = Cli::command();
            let mut pages = vec![("dfs-client".to_string(), cmd.clone())];
            pages.extend(cmd.get_subcommands().map(|sub| (format!("dfs-client-{}", sub.get_name()), sub.clone())));
            for (name, page) in pages {
                let path = dir.join(format!("{name}.1"));
                let mut out = Vec::new();
                clap_mangen::Man::new(page)
                    .title(name.clone())
                    .render(&mut out)
                    .context("cannot render the man page")?;
                fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    stdout.flush().context("cannot write to stdout")
}

/// `put --bench`: prepares the input (and the local cluster), runs the benchmark, prints the
/// report and writes the histogram and plot files.
fn run_bench(
    server: &dfs_client::Server,
    chunking: Chunking,
    json: bool,
    args: BenchArgs,
    stdout: &mut dyn Write,
) -> Result<()> {
    let config = BenchConfig {
        op: if args.get { BenchOp::Get } else { BenchOp::Put },
        count: args.count.unwrap_or(bench::DEFAULT_COUNT),
        concurrency: args.concurrency.unwrap_or(bench::DEFAULT_CONCURRENCY),
        chunking,
        keep: args.keep,
    };
    // Everything that can be refused is refused before a byte is generated or a process started.
    for out in [&args.hist_out, &args.plot].into_iter().flatten() {
        check_output_path(out)?;
    }
    let input = match &args.file {
        Some(path) => {
            // The size from the metadata is enough to validate; opening hashes the whole file.
            let metadata = fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
            config.validate(metadata.len())?;
            BenchInput::open(path)?
        }
        None => {
            let size_bytes = args.size.unwrap_or(bench::DEFAULT_SIZE_BYTES);
            config.validate(size_bytes)?;
            note(&format!("writing {} of pseudo-random data", bench::format_bytes(size_bytes)));
            BenchInput::generate(size_bytes)?
        }
    };
    let cluster = if args.local { Some(LocalCluster::start()?) } else { None };
    let server = cluster.as_ref().map_or(server, LocalCluster::server);
    let addr = &server.addr;
    if let Some(cluster) = &cluster {
        note(&format!("local cluster on {addr}, data in {}", cluster.dir().display()));
    }
    note(&format!(
        "{} × {} {} over {} connection(s)",
        config.count,
        bench::format_bytes(input.size_bytes()),
        config.op,
        config.concurrency
    ));
    let report = match bench::run(server, &config, &input) {
        Ok(report) => report,
        // The engine's log is removed with the cluster, so its last lines go with the error.
        Err(e) => match &cluster {
            Some(cluster) => {
                bail!("{:#} (engine log ends: {})", anyhow::Error::from(e), cluster.log_tail(LOG_TAIL_LINES))
            }
            None => return Err(e.into()),
        },
    };
    drop(cluster);
    if json {
        serde_json::to_writer(&mut *stdout, &report.json()).context("cannot write to stdout")?;
        writeln!(stdout).context("cannot write to stdout")?;
    } else {
        report.write_text(stdout).context("cannot write to stdout")?;
    }
    if let Some(path) = &args.hist_out {
        let mut text = Vec::new();
        bench::write_hgrm(&mut text, &report.latency_us).context("cannot format the histogram")?;
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} latency: {} × {}, concurrency {}, chunking {}",
            report.op,
            report.count,
            bench::format_bytes(report.size_bytes),
            report.concurrency,
            report.chunking
        );
        let svg = bench::render_svg(&report.latency_us, &report.timeline, &title).context("cannot draw the plot")?;
        fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Cleanup::Failed { n_failed, first_error } = &report.cleanup {
        bail!("{n_failed} of {} benchmark objects could not be deleted, the first: {first_error}", report.n_objects);
    }
    Ok(())
}

/// Refuses an output path whose directory does not exist, before a long run rather than after.
fn check_output_path(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("cannot write {}: it is a directory", path.display());
    }
    Ok(())
}

/// A status line on stderr, for a person watching: only when stderr is a terminal, like the
/// progress bar, so that logs and pipelines stay clean.
fn note(line: &str) {
    if io::stderr().is_terminal() {
        // Nothing sensible is left to do if stderr itself is gone.
        let _ = writeln!(io::stderr(), "{line}");
    }
}

/// Files moved at once by `put -r` and `get -r`. Ingesting 4,060 small files (two copies, a
/// local cluster) went at about 530 files/s with 4 jobs, 810 with 16 and 950 with 32 (perf.md);
/// 16 takes most of that gain while a tree of large files still holds only a few tens of MiB of
/// node buffers.
const DEFAULT_JOBS: usize = 16;

/// A `--jobs` value that is not a number from 1 to [`dfs_client::ingest::MAX_JOBS`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number of jobs from 1 to {max}", max = dfs_client::ingest::MAX_JOBS)]
struct BadJobs(String);

fn parse_jobs(s: &str) -> Result<usize, BadJobs> {
    match s.parse::<usize>() {
        Ok(n) if (1..=dfs_client::ingest::MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(BadJobs(s.to_string())),
    }
}

/// Parses a file ID before any connection is made, so a typo costs no round trip.
fn parse_id(id: &str) -> Result<FileId> {
    Ok(id.parse::<FileId>()?)
}

/// A byte progress bar on stderr, shown only when stderr is a terminal so that logs and
/// pipelines stay clean. It clears itself when the transfer ends, successfully or not.
struct Bar {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    fn on_stderr() -> Bar {
        Bar { enabled: io::stderr().is_terminal(), bar: None }
    }
}

impl Progress for Bar {
    fn start(&mut self, total_bytes: u64) {
        if !self.enabled {
            return;
        }
        let style =
            ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        bar.set_style(style);
        self.bar = Some(bar);
    }

    fn advance(&mut self, n_bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n_bytes);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
