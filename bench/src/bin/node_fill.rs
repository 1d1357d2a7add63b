//! `node_fill`: stores many small chunks straight into one running `dfs-node` over the node
//! protocol (STORE, no engine), from several connections at once, and prints the rate and the
//! latency percentiles. Used to fill a node with a million records and time its start-up, and
//! to measure what a node alone sustains for small records.
//!
//! `cargo run --release -p bench --bin node_fill -- --node 127.0.0.1:PORT --count 1000000 --size 1KiB`

use anyhow::{bail, Context, Result};
use clap::Parser;
use dfs_proto::io_std::{self, Frame};
use dfs_proto::{ChunkId, FileId, Hello, Msg, Role};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// The node's address (on loopback, or one that needs no cluster secret).
    #[arg(long)]
    node: String,
    /// Chunks to store.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Bytes per chunk.
    #[arg(long, default_value = "1KiB", value_parser = |s: &str| parse_size::parse_size(s))]
    size: u64,
    /// Connections, each with one STORE in flight.
    #[arg(long, default_value_t = 64)]
    connections: u64,
}

fn connect(addr: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to node {addr}"))?;
    s.set_nodelay(true)?;
    io_std::write_msg(&mut s, &Msg::Hello(Hello::new(Role::Engine)))?;
    match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::HelloOk(_))) => Ok(s),
        other => bail!("node {addr} answered Hello with {other:?}"),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data: Vec<u8> = (0..args.size).map(|i| (i * 7 + 1) as u8).collect();
    let crc32 = crc32fast::hash(&data);
    let next = AtomicU64::new(0);
    let latencies_us: Mutex<Vec<u64>> = Mutex::new(Vec::with_capacity(args.count as usize));
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..args.connections)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut conn = connect(&args.node)?;
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < args.count {
                        let chunk_id = ChunkId { file_id: FileId::random()?, chunk_idx: 0 };
                        let t = Instant::now();
                        io_std::write_msg(&mut conn, &Msg::Store { chunk_id, length: args.size, crc32 })?;
                        std::io::Write::write_all(&mut conn, &data)?;
                        match io_std::read_frame(&mut conn) {
                            Ok(Frame::Msg(Msg::StoreOk { .. })) => {}
                            other => bail!("STORE of {chunk_id}: {other:?}"),
                        }
                        mine.push(t.elapsed().as_micros() as u64);
                    }
                    latencies_us.lock().expect("no worker panics holding it").extend(mine);
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let mut l = latencies_us.into_inner().expect("workers are done");
    l.sort_unstable();
    let pct = |p: f64| Duration::from_micros(l[((l.len() - 1) as f64 * p) as usize]);
    println!(
        "{} chunks of {} bytes in {:.1?}: {:.0} STOREs/s, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        l.len(),
        args.size,
        elapsed,
        l.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
