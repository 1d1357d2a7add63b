//! The client's hash pass alone, several ways, over a file (best kept in the page cache), for
//! perf.md's "The client's hash pass": `cargo run --release -p dfs-client --example hash_pass --
//! FILE [ROUNDS]`. `mmap 2 threads` is what `put` does on a 2-core machine; the others are the
//! alternatives it was measured against. Each way runs once per round, in turn; the medians of
//! wall time and of the process's CPU time (user + system, all threads) are printed.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const PIECE: usize = 8 << 20;

fn mmap_crc(path: &str, threads: usize, populate: bool) -> u32 {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let mut opts = memmap2::MmapOptions::new();
    if populate {
        opts.populate();
    }
    let map = unsafe { opts.map(&f) }.unwrap();
    let _ = map.advise(memmap2::Advice::Sequential);
    let pieces: Vec<(usize, usize)> = (0..len).step_by(PIECE).map(|s| (s, (s + PIECE).min(len))).collect();
    let per = pieces.len().div_ceil(threads);
    let mut crcs = vec![0u32; pieces.len()];
    std::thread::scope(|sc| {
        for (ps, cs) in pieces.chunks(per).zip(crcs.chunks_mut(per)) {
            let map = &map;
            sc.spawn(move || {
                for (p, c) in ps.iter().zip(cs) {
                    *c = crc32fast::hash(&map[p.0..p.1]);
                }
            });
        }
    });
    combine(&pieces, &crcs)
}

fn pread_crc(path: &str, threads: usize, buf_bytes: usize) -> u32 {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let pieces: Vec<(usize, usize)> = (0..len).step_by(PIECE).map(|s| (s, (s + PIECE).min(len))).collect();
    let per = pieces.len().div_ceil(threads);
    let mut crcs = vec![0u32; pieces.len()];
    std::thread::scope(|sc| {
        for (ps, cs) in pieces.chunks(per).zip(crcs.chunks_mut(per)) {
            let f = &f;
            sc.spawn(move || {
                let mut buf = vec![0u8; buf_bytes];
                for (p, c) in ps.iter().zip(cs) {
                    let mut h = crc32fast::Hasher::new();
                    let mut off = p.0;
                    while off < p.1 {
                        let n = (p.1 - off).min(buf_bytes);
                        f.read_exact_at(&mut buf[..n], off as u64).unwrap();
                        h.update(&buf[..n]);
                        off += n;
                    }
                    *c = h.finalize();
                }
            });
        }
    });
    combine(&pieces, &crcs)
}

fn combine(pieces: &[(usize, usize)], crcs: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (p, &c) in pieces.iter().zip(crcs) {
        h.combine(&crc32fast::Hasher::new_with_initial_len(c, (p.1 - p.0) as u64));
    }
    h.finalize()
}

/// CPU time of this process so far, user + system, all threads.
fn cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: hash_pass FILE [ROUNDS]");
    let rounds: usize = std::env::args().nth(2).map_or(5, |s| s.parse().unwrap());
    type Case<'a> = (&'static str, Box<dyn Fn() -> u32 + 'a>);
    let cases: Vec<Case> = vec![
        ("mmap 1 thread", Box::new(|| mmap_crc(&path, 1, false))),
        ("mmap 2 threads (put)", Box::new(|| mmap_crc(&path, 2, false))),
        ("mmap+populate 2 threads", Box::new(|| mmap_crc(&path, 2, true))),
        ("pread 256KiB 1 thread", Box::new(|| pread_crc(&path, 1, 256 << 10))),
        ("pread 256KiB 2 threads", Box::new(|| pread_crc(&path, 2, 256 << 10))),
        ("pread 1MiB 2 threads", Box::new(|| pread_crc(&path, 2, 1 << 20))),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut expected = None;
    for _ in 0..rounds {
        for (i, (_, f)) in cases.iter().enumerate() {
            let (t, cpu) = (Instant::now(), cpu_s());
            let crc = f();
            times[i].push(t.elapsed().as_secs_f64());
            cpus[i].push(cpu_s() - cpu);
            assert_eq!(*expected.get_or_insert(crc), crc);
        }
    }
    for (i, (name, _)) in cases.iter().enumerate() {
        let (wall, cpu) = (median(times[i].clone()), median(cpus[i].clone()));
        println!("{name:28} wall {wall:.3} s  cpu {cpu:.3} s  (median of {rounds})");
    }
}
