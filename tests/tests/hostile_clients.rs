//! A hostile process beside honest clients: while normal uploads and downloads run, another
//! thread keeps sending random bytes, truncated frames, absurd lengths, a wrong magic,
//! unauthenticated requests and one-byte trickles to the engine and to every node. Every honest
//! operation must succeed byte-identical, no process may die, memory must stay bounded, and a
//! trickling connection must be cut off within the idle timeout.

use dfs_proto::{Chunking, Hello, Msg, Role};
use dfs_tests::{assert_bytes_eq, frame_header, pseudo_random_bytes, Cluster, ClusterOpts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDLE_TIMEOUT_SECS: u64 = 2;

/// One burst of hostile bytes for a server whose honest peers send a Hello of `role`.
fn attacks(role: Role, seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut wrong_magic = Msg::Hello(Hello::new(role)).encode();
    wrong_magic[5..9].copy_from_slice(b"HTTP");
    let mut truncated = Msg::Hello(Hello::new(role)).encode();
    truncated.truncate(7);
    // A Hello claiming a 100 MB auth blob, then nothing.
    let mut absurd_auth = frame_header(4 + 2 + 1 + 1 + 4, 0x01);
    absurd_auth.extend_from_slice(b"DFS1");
    absurd_auth.extend_from_slice(&1u16.to_be_bytes());
    absurd_auth.extend_from_slice(&[role as u8, 1]);
    absurd_auth.extend_from_slice(&100_000_000u32.to_be_bytes());
    // An unauthenticated Hello followed by a request.
    let mut unauthenticated = Msg::Hello(Hello::new(role)).encode();
    unauthenticated.extend_from_slice(&Msg::List { after: None, limit: 10 }.encode());
    unauthenticated.extend_from_slice(&Msg::NodeStat.encode());
    vec![
        ("random bytes", pseudo_random_bytes(seed, 4096)),
        ("a 4 GiB frame header", frame_header(u32::MAX, 0x10)),
        ("a wrong magic", wrong_magic),
        ("a truncated Hello", truncated),
        ("a Hello with an absurd auth length", absurd_auth),
        ("an unauthenticated request", unauthenticated),
    ]
}

/// Sends `bytes`, then reads until the server closes (or 5 s pass). Returns whether it closed.
fn hit(addr: &str, bytes: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Trickles one byte of a valid Hello every 700 ms; returns how long until the server hung up.
fn trickle(addr: &str, role: Role) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).ok()?;
    let started = Instant::now();
    for byte in Msg::Hello(Hello::new(role)).encode() {
        if s.write_all(&[byte]).is_err() {
            return Some(started.elapsed());
        }
        // The trickle's pace: a fixed wait by design.
        std::thread::sleep(Duration::from_millis(700));
        // A closed connection shows as EOF on a non-blocking peek.
        s.set_nonblocking(true).ok()?;
        let mut b = [0u8; 1];
        let closed = matches!(s.peek(&mut b), Ok(0))
            || matches!(s.peek(&mut b), Err(ref e) if e.kind() != std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).ok()?;
        if closed {
            return Some(started.elapsed());
        }
    }
    None
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn honest_clients_are_unharmed_by_a_hostile_process() {
    let opts = ClusterOpts {
        access_key: true,
        cluster_secret: true,
        idle_timeout_secs: Some(IDLE_TIMEOUT_SECS),
        buffer_budget_bytes: Some(8 << 20),
        ..ClusterOpts::default()
    };
    let mut cluster = Cluster::start(4, opts);
    let targets: Vec<(String, Role)> = std::iter::once((cluster.engine_addr().to_string(), Role::Client))
        .chain(cluster.node_addrs().into_iter().map(|a| (a, Role::Engine)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let n_attacks = Arc::new(AtomicUsize::new(0));
    let n_not_closed = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, n_attacks, n_not_closed, targets) =
            (stop.clone(), n_attacks.clone(), n_not_closed.clone(), targets.clone());
        std::thread::spawn(move || {
            let mut seed = 1;
            while !stop.load(Ordering::Relaxed) {
                for (addr, role) in &targets {
                    for (_, bytes) in attacks(*role, seed) {
                        if !hit(addr, &bytes) {
                            n_not_closed.fetch_add(1, Ordering::Relaxed);
                        }
                        n_attacks.fetch_add(1, Ordering::Relaxed);
                    }
                    seed += 1;
                }
            }
        })
    };
    // Trickles to the engine and to one node, in parallel with everything else.
    let tricklers: Vec<_> = targets[..2]
        .iter()
        .cloned()
        .map(|(addr, role)| std::thread::spawn(move || (addr.clone(), trickle(&addr, role))))
        .collect();

    // Honest traffic: buffered and streamed sizes.
    for i in 0..16u64 {
        let size = match i % 4 {
            0 => 0,
            1 => 70_000,
            2 => (3 << 20) + 11,
            _ => (12 << 20) + 5,
        };
        let data = pseudo_random_bytes(500 + i, size);
        let id = cluster.put_bytes(&data, &format!("honest-{i}"), Chunking::Equal);
        let got = cluster.get(&id).unwrap_or_else(|e| panic!("honest get {id} under attack: {e}"));
        assert_bytes_eq(&got, &data, &format!("honest file {i} under attack"));
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    for t in tricklers {
        let (addr, cut) = t.join().expect("trickler thread");
        let cut = cut.unwrap_or_else(|| panic!("{addr} never cut off a connection trickling one byte per 700 ms"));
        assert!(
            cut <= Duration::from_secs(IDLE_TIMEOUT_SECS * 3),
            "{addr} cut a trickling connection only after {cut:?} (idle timeout {IDLE_TIMEOUT_SECS} s)"
        );
    }
    let n = n_attacks.load(Ordering::Relaxed);
    assert!(n >= targets.len() * 6, "the attacker made only {n} attempts");
    assert_eq!(n_not_closed.load(Ordering::Relaxed), 0, "some hostile connections were left open past 5 s");

    assert!(cluster.engine_alive(), "the engine died under attack");
    for i in 0..cluster.n_nodes() {
        assert!(cluster.node_alive(i), "node {i} died under attack");
    }
    for (what, pid) in cluster.pids() {
        let hwm = vm_hwm_kib(pid).unwrap_or_else(|| panic!("cannot read VmHWM of {what}"));
        // 8 MiB download budget, 1 MiB buffers per transfer: far below this bound.
        assert!(hwm < 256 * 1024, "{what} peaked at {hwm} KiB of memory under attack");
    }
}
