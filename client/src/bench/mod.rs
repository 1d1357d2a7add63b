//! The benchmark behind `dfs-client put --bench`: many uploads (or, with `--get`, verified
//! downloads) of one file through the real client path, each timed on its own.
//!
//! A run opens one connection per worker (`concurrency` of them) before the clock starts, so
//! connection set-up is not measured, then releases all workers at once. The `count` requests
//! are split into one contiguous range per worker, and each worker runs its range one request
//! after the other on its own connection, recording each request's wall time in its own
//! histogram; the histograms are merged at the end. Elapsed time runs from the start of the
//! first request to the end of the last. The first failed request stops every worker and fails
//! the run: a benchmark that hides failures measures nothing.
//!
//! Uploads go through [`Client::put_file`], exactly as `dfs-client put` does, so whatever that
//! path does (hash, then sendfile) is what is measured. Downloads go through
//! [`Client::get_to_writer`] into a writer that only computes the crc32 of what it receives: the
//! library verifies every chunk against the engine's chunk table, and the whole download is then
//! compared with the crc32 of the uploaded file, but nothing is written to disk. For `--get`,
//! the objects are uploaded first, untimed: `count` of them, or fewer if that would exceed
//! [`MAX_GET_OBJECTS`] objects or [`MAX_GET_PRELOAD_BYTES`] bytes, in which case the timed
//! downloads cycle through them round-robin.
//!
//! Every object the run created is deleted afterwards, untimed and in parallel over the same
//! connections, unless the caller keeps them.

mod cluster;
mod input;
pub mod latency;
mod plot;
mod report;

pub use cluster::{LocalCluster, LOG_TAIL_LINES};
pub use input::BenchInput;
pub use latency::write_hgrm;
pub use plot::render_svg;
pub use report::{format_bytes, BenchReport, Cleanup};

use dfs_client::{default_name, Chunking, Client, ClientError, FileId};
use dfs_proto::limits::MAX_FILE_SIZE_BYTES;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{self, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use std::{fmt, thread};

/// Object size when neither a size nor a file is given.
pub const DEFAULT_SIZE_BYTES: u64 = 4 << 10;
/// Requests when no count is given.
pub const DEFAULT_COUNT: u64 = 1000;
/// Workers (connections) when no concurrency is given: one, so that latency is measured
/// without queueing behind other requests of the same run.
pub const DEFAULT_CONCURRENCY: u64 = 1;
/// The most workers: each is a thread with a connection and a histogram of about 190 KiB.
pub const MAX_CONCURRENCY: u64 = 256;
/// The most requests in one run; the IDs of the objects a put run creates (16 bytes each) are
/// held until they are deleted.
pub const MAX_COUNT: u64 = 10_000_000;
// The bytes of a run, size × count, always fit the report's u64.
const _: () = assert!(MAX_COUNT.checked_mul(MAX_FILE_SIZE_BYTES).is_some());
/// The most distinct objects a get run uploads beforehand.
pub const MAX_GET_OBJECTS: u64 = 10_000;
/// The most bytes a get run uploads beforehand; larger objects are fewer, down to one.
pub const MAX_GET_PRELOAD_BYTES: u64 = 8 << 30;

/// The request a run times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchOp {
    Put,
    Get,
}

impl fmt::Display for BenchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
        })
    }
}

/// What to run. The object size is the input file's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    pub op: BenchOp,
    pub count: u64,
    pub concurrency: u64,
    pub chunking: Chunking,
    /// Leave the objects the run created in place instead of deleting them.
    pub keep: bool,
}

impl BenchConfig {
    /// Checks the counts and the object size before anything is created. Concurrency above
    /// the count is refused rather than lowered, so a report never shows a concurrency other
    /// than the one asked for.
    pub fn validate(&self, size_bytes: u64) -> Result<(), BenchError> {
        let invalid = |message: String| Err(BenchError::Invalid(message));
        if !(1..=MAX_COUNT).contains(&self.count) {
            return invalid(format!("--count must be 1 to {MAX_COUNT}, got {}", self.count));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return invalid(format!("--concurrency must be 1 to {MAX_CONCURRENCY}, got {}", self.concurrency));
        }
        if self.concurrency > self.count {
            return invalid(format!(
                "--concurrency {} is more than --count {}: every connection needs at least one request",
                self.concurrency, self.count
            ));
        }
        if size_bytes > MAX_FILE_SIZE_BYTES {
            return invalid(format!(
                "the object size {} is over the protocol's limit of {}",
                format_bytes(size_bytes),
                format_bytes(MAX_FILE_SIZE_BYTES)
            ));
        }
        Ok(())
    }

    /// Distinct objects a get run downloads from: `count`, capped by [`MAX_GET_OBJECTS`] and
    /// [`MAX_GET_PRELOAD_BYTES`], and at least one.
    pub fn n_get_objects(&self, size_bytes: u64) -> u64 {
        let fit_bytes = MAX_GET_PRELOAD_BYTES.checked_div(size_bytes).unwrap_or(u64::MAX);
        self.count.min(MAX_GET_OBJECTS).min(fit_bytes).max(1)
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration or input cannot be benchmarked.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot {action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Connecting a worker, or a local problem with the input file.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An untimed upload before a get run failed.
    #[error("preloading object {object_idx} failed")]
    Preload {
        object_idx: u64,
        #[source]
        source: ClientError,
    },
    /// A timed request failed; requests are numbered from 0. `op_idx` is the failure that
    /// happened first; `n_errors` counts the requests that failed before every worker stopped.
    #[error("op {op_idx} failed")]
    Op {
        op_idx: u64,
        n_errors: u64,
        #[source]
        source: OpError,
    },
    #[error("cannot start a benchmark thread")]
    Thread(#[source] io::Error),
    /// The local cluster could not be started.
    #[error("{0}")]
    Cluster(String),
}

/// Why one timed request failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The download passed the library's per-chunk checks, yet differs from what was uploaded:
    /// the engine's chunk table itself describes other bytes.
    #[error(
        "downloaded {actual_bytes} bytes with crc32 {actual_crc32:08x}, \
         the uploaded file has {expected_bytes} bytes with crc32 {expected_crc32:08x}"
    )]
    Mismatch { expected_bytes: u64, actual_bytes: u64, expected_crc32: u32, actual_crc32: u32 },
}

/// Runs the benchmark against `server`, uploading `input` (and, for get,
/// downloading it back), and returns what it measured.
pub fn run(server: &dfs_client::Server, config: &BenchConfig, input: &BenchInput) -> Result<BenchReport, BenchError> {
    config.validate(input.size_bytes())?;
    // A local problem with the name would otherwise fail every request alike.
    let name = default_name(input.path())?;
    // With several engines (`--server A,B`), connection i goes to engine i mod n first.
    let mut clients = Vec::with_capacity(config.concurrency as usize);
    for i in 0..config.concurrency as usize {
        clients.push(Client::connect_from(server, i)?);
    }
    let work = Work { config, input, name: &name };

    let objects = match config.op {
        BenchOp::Put => Vec::new(),
        BenchOp::Get => {
            let Preloaded { objects, failure } =
                preload(&mut clients, &work, config.n_get_objects(input.size_bytes()))?;
            if let Some((object_idx, source)) = failure {
                // Best effort: the failed upload is the error worth reporting.
                let _ = cleanup(clients, server, &objects, config.keep);
                return Err(BenchError::Preload { object_idx, source });
            }
            objects
        }
    };

    let stop = AtomicBool::new(false);
    let ranges = split_ops(config.count, config.concurrency);
    let runs = on_every_client(&mut clients, |worker_idx, client| {
        work.timed(client, ranges[worker_idx].clone(), &objects, &stop)
    })?;

    let mut latency_us = latency::new_histogram();
    let mut created = objects;
    let mut failures = Vec::new();
    let (mut first_start, mut last_end) = (None::<Instant>, None::<Instant>);
    let mut samples = Vec::new();
    for run in runs {
        latency_us.add(&run.histogram).expect("worker histograms share the merged one's bounds");
        samples.extend(run.samples);
        created.extend(run.created);
        failures.extend(run.failure);
        first_start = first_start.into_iter().chain(run.first_start).min();
        last_end = last_end.into_iter().chain(run.last_end).max();
    }
    let n_objects = created.len() as u64;
    let cleanup_result = cleanup(clients, server, &created, config.keep);
    // The failure that happened first is the cause; the others are likely its echoes.
    let n_errors = failures.len() as u64;
    if let Some(first) = failures.into_iter().min_by_key(|f| f.at) {
        return Err(BenchError::Op { op_idx: first.op_idx, n_errors, source: first.error });
    }
    let elapsed = match (first_start, last_end) {
        (Some(start), Some(end)) => end.duration_since(start),
        _ => Duration::ZERO,
    };
    let mut timeline: Vec<(f64, f64)> = match first_start {
        Some(start) => samples
            .into_iter()
            .map(|(end, latency)| (end.duration_since(start).as_secs_f64(), latency.as_secs_f64() * 1000.0))
            .collect(),
        None => Vec::new(),
    };
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(BenchReport {
        op: config.op,
        size_bytes: input.size_bytes(),
        count: config.count,
        concurrency: config.concurrency,
        chunking: config.chunking,
        n_objects,
        elapsed,
        latency_us,
        timeline,
        errors: 0,
        cleanup: cleanup_result?,
    })
}

/// Splits `count` requests into `n_workers` contiguous ranges, in worker order, whose lengths
/// differ by at most one and add up to `count`. Zero workers get no ranges at all.
pub fn split_ops(count: u64, n_workers: u64) -> Vec<Range<u64>> {
    let Some(base) = count.checked_div(n_workers) else { return Vec::new() };
    let extra = count % n_workers;
    let mut start = 0;
    (0..n_workers)
        .map(|worker_idx| {
            let len = base + u64::from(worker_idx < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// The length of a range of requests, which is at most [`MAX_COUNT`] and so fits a usize.
fn n_ops(ops: &Range<u64>) -> usize {
    (ops.end - ops.start) as usize
}

/// What every worker shares.
struct Work<'a> {
    config: &'a BenchConfig,
    input: &'a BenchInput,
    name: &'a str,
}

/// One worker's share of the timed phase.
struct WorkerRun {
    histogram: Histogram<u64>,
    /// Each request's end and latency, for the latency-over-time view.
    samples: Vec<(Instant, Duration)>,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
    /// Objects stored by its puts, to be deleted.
    created: Vec<FileId>,
    failure: Option<OpFailure>,
}

struct OpFailure {
    op_idx: u64,
    at: Instant,
    error: OpError,
}

impl Work<'_> {
    fn upload(&self, client: &mut Client) -> Result<FileId, ClientError> {
        client.put_file(self.input.path(), Some(self.name), self.config.chunking, &mut ())
    }

    /// Downloads `file_id`, keeping only the crc32 of the bytes, and compares it with the input.
    fn download(&self, client: &mut Client, file_id: FileId) -> Result<(), OpError> {
        let mut sink = CrcSink::default();
        client.get_to_writer(file_id, &mut sink, &mut ())?;
        let actual_crc32 = sink.hasher.finalize();
        if sink.n_bytes != self.input.size_bytes() || actual_crc32 != self.input.crc32() {
            return Err(OpError::Mismatch {
                expected_bytes: self.input.size_bytes(),
                actual_bytes: sink.n_bytes,
                expected_crc32: self.input.crc32(),
                actual_crc32,
            });
        }
        Ok(())
    }

    /// Runs the requests `ops` one after the other, timing each, until done or until any
    /// worker has failed.
    fn timed(&self, client: &mut Client, ops: Range<u64>, objects: &[FileId], stop: &AtomicBool) -> WorkerRun {
        let mut run = WorkerRun {
            histogram: latency::new_histogram(),
            samples: Vec::with_capacity(n_ops(&ops)),
            first_start: None,
            last_end: None,
            created: Vec::with_capacity(if self.config.op == BenchOp::Put { n_ops(&ops) } else { 0 }),
            failure: None,
        };
        for op_idx in ops {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let start = Instant::now();
            let result = match self.config.op {
                BenchOp::Put => self.upload(client).map(|file_id| run.created.push(file_id)).map_err(OpError::from),
                // Lossless: the index is below the object count, a Vec length.
                BenchOp::Get => self.download(client, objects[(op_idx % objects.len() as u64) as usize]),
            };
            let end = Instant::now();
            run.first_start.get_or_insert(start);
            run.last_end = Some(end);
            match result {
                Ok(()) => {
                    latency::record(&mut run.histogram, end.duration_since(start));
                    run.samples.push((end, end.duration_since(start)));
                }
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    run.failure = Some(OpFailure { op_idx, at: end, error });
                    break;
                }
            }
        }
        run
    }
}

/// The objects a get run downloads.
struct Preloaded {
    /// In object order; after a failure, those that were uploaded, to be deleted.
    objects: Vec<FileId>,
    /// The first object that could not be uploaded, and why.
    failure: Option<(u64, ClientError)>,
}

/// Uploads `n_objects` copies of the input over all connections, untimed.
fn preload(clients: &mut [Client], work: &Work<'_>, n_objects: u64) -> Result<Preloaded, BenchError> {
    let stop = AtomicBool::new(false);
    let ranges = split_ops(n_objects, clients.len() as u64);
    let shares = on_every_client(clients, |worker_idx, client| {
        let mut uploaded = Vec::with_capacity(n_ops(&ranges[worker_idx]));
        for object_idx in ranges[worker_idx].clone() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match work.upload(client) {
                Ok(file_id) => uploaded.push(file_id),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return (uploaded, Some((object_idx, e)));
                }
            }
        }
        (uploaded, None)
    })?;
    let mut objects = Vec::with_capacity(n_objects as usize);
    let mut failure = None;
    for (uploaded, worker_failure) in shares {
        objects.extend(uploaded);
        failure = failure.or(worker_failure);
    }
    Ok(Preloaded { objects, failure })
}

/// Deletes `objects` over all connections in parallel, unless `keep`. A connection left
/// unusable by a failed request is closed and replaced by a new one to `server`; if that fails
/// too, the objects it was to delete count as not deleted.
fn cleanup(
    clients: Vec<Client>,
    server: &dfs_client::Server,
    objects: &[FileId],
    keep: bool,
) -> Result<Cleanup, BenchError> {
    if keep {
        return Ok(Cleanup::Kept);
    }
    let per_client = objects.len().div_ceil(clients.len().max(1)).max(1);
    let shares: Vec<&[FileId]> = objects.chunks(per_client).collect();
    // Slots, so that a broken connection can be closed before its replacement is opened.
    let mut slots: Vec<Option<Client>> = clients.into_iter().map(Some).collect();
    let results = on_every_client(&mut slots, |worker_idx, slot| {
        let share = shares.get(worker_idx).copied().unwrap_or_default();
        let mut n_failed = 0u64;
        let mut first_error = None;
        for (pos, &file_id) in share.iter().enumerate() {
            if !slot.as_ref().is_some_and(Client::is_usable) {
                *slot = None;
                match Client::connect_from(server, worker_idx) {
                    Ok(fresh) => *slot = Some(fresh),
                    Err(e) => {
                        n_failed += (share.len() - pos) as u64;
                        first_error.get_or_insert_with(|| dfs_client::error_chain(&e));
                        break;
                    }
                }
            }
            let Some(client) = slot.as_mut() else { break };
            if let Err(e) = client.delete(file_id) {
                n_failed += 1;
                first_error.get_or_insert_with(|| format!("{file_id}: {}", dfs_client::error_chain(&e)));
            }
        }
        (n_failed, first_error)
    })?;
    let n_failed = results.iter().map(|(n, _)| n).sum();
    Ok(match results.into_iter().find_map(|(_, first)| first) {
        Some(first_error) => Cleanup::Failed { n_failed, first_error },
        None => Cleanup::Deleted,
    })
}

/// Runs `work` once per client, each on its own thread, and returns the results in client
/// order. The threads start work together, once all of them exist, so that the first to start
/// does not run alone while the others are still being created.
fn on_every_client<C: Send, T: Send>(
    clients: &mut [C],
    work: impl Fn(usize, &mut C) -> T + Sync,
) -> Result<Vec<T>, BenchError> {
    let gate = StartGate::default();
    let results = thread::scope(|scope| {
        let mut handles = Vec::with_capacity(clients.len());
        for (worker_idx, client) in clients.iter_mut().enumerate() {
            let (gate, work) = (&gate, &work);
            let spawned = thread::Builder::new()
                .name(format!("bench-{worker_idx}"))
                .spawn_scoped(scope, move || gate.wait().then(|| work(worker_idx, client)));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // The threads already started see a closed gate and end without working.
                    gate.open(false);
                    return Err(BenchError::Thread(e));
                }
            }
        }
        gate.open(true);
        Ok(handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect::<Vec<_>>())
    })?;
    Ok(results.into_iter().map(|result| result.expect("the gate opened, so every worker ran")).collect())
}

/// Holds threads until it is opened: `true` to let them work, `false` to send them home.
#[derive(Default)]
struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, go: bool) {
        // Nothing panics while holding the lock, and a bool cannot be left half-written.
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(go);
        self.opened.notify_all();
    }

    fn wait(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.opened.wait_while(state, |s| s.is_none()).unwrap_or_else(PoisonError::into_inner);
        *state == Some(true)
    }
}

/// A download's destination that keeps only the count and crc32 of the bytes, so that the
/// benchmark measures the data path and not the local disk.
#[derive(Default)]
struct CrcSink {
    hasher: crc32fast::Hasher,
    n_bytes: u64,
}

impl Write for CrcSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.n_bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64, concurrency: u64) -> BenchConfig {
        BenchConfig { op: BenchOp::Put, count, concurrency, chunking: Chunking::Equal, keep: false }
    }

    #[test]
    fn ops_are_split_into_contiguous_ranges_that_add_up_to_count() {
        for (count, n_workers) in [(1, 1), (10, 3), (1000, 1), (2000, 32), (5, 5), (7, 2), (1_000_003, 256)] {
            let ranges = split_ops(count, n_workers);
            assert_eq!(ranges.len() as u64, n_workers);
            assert_eq!(ranges.iter().map(|r| r.end - r.start).sum::<u64>(), count, "{count} over {n_workers}");
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[ranges.len() - 1].end, count);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "{ranges:?}");
            let lens: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
            let (min, max) = (lens.iter().min().copied(), lens.iter().max().copied());
            assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "{lens:?}");
        }
        assert_eq!(split_ops(10, 0), Vec::<Range<u64>>::new());
    }

    #[test]
    fn validation_refuses_bad_counts_and_sizes() {
        let ok = [(config(1, 1), 0), (config(1000, 1), 4096), (config(32, 32), MAX_FILE_SIZE_BYTES)];
        for (config, size) in ok {
            assert!(config.validate(size).is_ok(), "{config:?} size {size}");
        }
        let bad = [
            (config(0, 1), 4096, "--count must be 1 to"),
            (config(MAX_COUNT + 1, 1), 4096, "--count must be 1 to"),
            (config(10, 0), 4096, "--concurrency must be 1 to"),
            (config(1000, MAX_CONCURRENCY + 1), 4096, "--concurrency must be 1 to"),
            (config(10, 11), 4096, "--concurrency 11 is more than --count 10"),
            (config(1, 1), MAX_FILE_SIZE_BYTES + 1, "over the protocol's limit of 1 TiB"),
        ];
        for (config, size, message) in bad {
            match config.validate(size) {
                Err(BenchError::Invalid(text)) => assert!(text.contains(message), "{text:?} lacks {message:?}"),
                other => panic!("{config:?} size {size}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn get_objects_are_capped_by_count_and_bytes() {
        let get = |count| BenchConfig { op: BenchOp::Get, ..config(count, 1) };
        assert_eq!(get(3).n_get_objects(1 << 30), 3);
        assert_eq!(get(100).n_get_objects(1 << 30), 8);
        assert_eq!(get(100).n_get_objects(MAX_FILE_SIZE_BYTES), 1);
        assert_eq!(get(1_000_000).n_get_objects(4096), MAX_GET_OBJECTS);
        assert_eq!(get(5).n_get_objects(0), 5);
    }

    #[test]
    fn crc_sink_counts_and_hashes() {
        let mut sink = CrcSink::default();
        sink.write_all(b"hello ").expect("write");
        sink.write_all(b"dfs").expect("write");
        assert_eq!(sink.n_bytes, 9);
        assert_eq!(sink.hasher.finalize(), crc32fast::hash(b"hello dfs"));
    }

    #[test]
    fn bench_op_prints_and_serializes_in_lower_case() {
        assert_eq!(BenchOp::Get.to_string(), "get");
        assert_eq!(serde_json::to_string(&BenchOp::Put).expect("serialize"), r#""put""#);
    }
}
