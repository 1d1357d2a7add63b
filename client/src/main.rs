//! `dfs-client`: the command line for a dfs engine. Each command opens one connection, makes
//! its request(s) and prints the result; everything machine-readable goes to stdout (a file ID,
//! a listing, downloaded bytes with `-o -`), and everything else to stderr: a progress bar when
//! stderr is a terminal, and on failure exactly one line starting with `error: `, with exit
//! status 1. Usage mistakes are reported by clap (exit status 2).

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use dfs_client::view::{self, FileView, SummaryView};
use dfs_client::{Chunking, Client, FileId, MappedFile, Progress, DEFAULT_SERVER};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "dfs-client", version, about = "Store, fetch and inspect files in a dfs cluster")]
struct Cli {
    /// Engine address (host:port)
    #[arg(long, global = true, value_name = "ADDR", env = "DFS_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload a file and print its ID on stdout
    Put(PutArgs),
    /// Download a file, verifying every chunk's checksum
    Get {
        /// File ID (32 hex digits)
        id: String,
        /// Where to write the file; `-` for stdout. A path is written only once the whole file
        /// has arrived and been verified. On stdout, data is written as it arrives: after a
        /// failure part of the file may already have been written, but the exit status is 1.
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
    /// List all files
    Ls {
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
    },
    /// Delete a file
    Rm {
        /// File ID (32 hex digits)
        id: String,
    },
}

/// Arguments of `put`, a struct of its own so that options such as a benchmark mode can join.
#[derive(Args)]
struct PutArgs {
    /// The file to upload
    path: PathBuf,
    /// Name to store the file under (default: the file's base name)
    #[arg(long)]
    name: Option<String>,
    /// How to cut the file into chunks: `equal` (4 chunks) or `dynamic` (4·k chunks, each at
    /// most the engine's chunk size cap)
    #[arg(
        long,
        default_value = "equal",
        value_parser = PossibleValuesParser::new(["equal", "dynamic"]).try_map(|s| s.parse::<Chunking>())
    )]
    chunking: Chunking,
}

fn main() -> ExitCode {
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

fn run(cli: Cli) -> Result<()> {
    let stdout = &mut io::stdout().lock();
    match cli.command {
        Command::Put(args) => {
            // Local problems (missing file, bad name) are reported before connecting.
            let name = match args.name {
                Some(name) => name,
                None => dfs_client::default_name(&args.path)?,
            };
            let file = MappedFile::open(&args.path)?;
            let mut client = Client::connect(&cli.server)?;
            let file_id = client.put_bytes(&name, &file, args.chunking, &mut Bar::on_stderr())?;
            writeln!(stdout, "{file_id}").context("cannot write to stdout")?;
        }
        Command::Get { id, output } => {
            let file_id = parse_id(&id)?;
            let mut client = Client::connect(&cli.server)?;
            let mut bar = Bar::on_stderr();
            if output.as_os_str() == "-" {
                client.get_to_writer(file_id, stdout, &mut bar)?;
            } else {
                client.get_to_path(file_id, &output, &mut bar)?;
            }
        }
        Command::Stat { id, json } => {
            let file_id = parse_id(&id)?;
            let info = Client::connect(&cli.server)?.stat(file_id)?;
            if json {
                serde_json::to_writer_pretty(&mut *stdout, &FileView::from(&info)).context("cannot write to stdout")?;
                writeln!(stdout).context("cannot write to stdout")?;
            } else {
                view::write_stat_text(stdout, &info).context("cannot write to stdout")?;
            }
        }
        Command::Ls { json } => {
            let files = Client::connect(&cli.server)?.list()?;
            if json {
                let views: Vec<SummaryView> = files.iter().map(SummaryView::from).collect();
                serde_json::to_writer_pretty(&mut *stdout, &views).context("cannot write to stdout")?;
                writeln!(stdout).context("cannot write to stdout")?;
            } else {
                view::write_list_text(stdout, &files).context("cannot write to stdout")?;
            }
        }
        Command::Rm { id } => {
            let file_id = parse_id(&id)?;
            Client::connect(&cli.server)?.delete(file_id)?;
        }
    }
    stdout.flush().context("cannot write to stdout")
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
