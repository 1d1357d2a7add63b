//! Every process the harness starts goes through this module, so that it is recorded (the report
//! lists the exact commands), bounded by a timeout, and gone when the harness exits: drop guards
//! kill and reap on return, error and panic, and a signal thread kills whatever is still
//! registered on Ctrl-C, SIGTERM or SIGHUP. It also reads a process's CPU time and peak RSS
//! from /proc.

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every command run, in order, as a shell-like line.
static COMMANDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Processes to kill if the harness is interrupted: (pid, what it is).
static LIVE: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());
/// A scratch directory to remove if the harness is interrupted.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set once an interrupt is being handled: nothing new is started after it.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// How long an interrupt waits for a start already under way to register its process.
const STOP_SETTLE: Duration = Duration::from_millis(100);

/// How often a running command is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a process that was asked to stop (SIGTERM) may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The write end of the pipe the signal handler reports signals through.
static SIGNAL_PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    let fd = SIGNAL_PIPE_WRITE_FD.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call. A failed write only
    // loses the cleanup, and there is nothing safe to do about it in a signal handler.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// On SIGINT, SIGTERM or SIGHUP, kills every registered process, removes the registered scratch
/// directory and exits. The handler only writes the signal number to a pipe; a thread does the
/// work. A signal that was ignored when the harness started (e.g. SIGHUP under nohup) stays
/// ignored. Handlers, unlike a blocked mask, are not inherited across exec, so the processes
/// the harness starts see the default dispositions.
pub fn install_signal_cleanup() -> Result<()> {
    let (read_fd, write_fd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    SIGNAL_PIPE_WRITE_FD.store(write_fd.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the process: the handler may use it at any time.
    std::mem::forget(write_fd);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        let old = unsafe { sigaction(sig, &action) }.with_context(|| format!("cannot handle {sig}"))?;
        if old.handler() == SigHandler::SigIgn {
            // SAFETY: restores the disposition the harness was started with.
            unsafe { sigaction(sig, &old) }.with_context(|| format!("cannot restore {sig}"))?;
        }
    }
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut pipe = std::fs::File::from(read_fd);
        let mut byte = [0u8; 1];
        if pipe.read_exact(&mut byte).is_err() {
            return;
        }
        let sig = byte[0];
        eprintln!("\nbench: signal {sig}: stopping every process it started");
        STOPPING.store(true, Ordering::SeqCst);
        std::thread::sleep(STOP_SETTLE);
        let live: Vec<(u32, String)> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        for (pid, what) in live.iter().rev() {
            // The engine's nodes would get SIGTERM from their parent-death signal; kill them
            // directly so they are gone before we exit.
            if !alive(*pid) {
                continue;
            }
            let kids = children_of(*pid);
            kill(*pid, Signal::SIGKILL);
            for k in kids {
                kill(k, Signal::SIGKILL);
            }
            eprintln!("bench: killed {what} (pid {pid})");
        }
        if let Some(dir) = SCRATCH.lock().ok().and_then(|d| d.clone()) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::process::exit(128 + i32::from(sig));
    })?;
    Ok(())
}

/// Registers a scratch directory that an interrupt should remove (None: keep it).
pub fn set_scratch_for_interrupt(dir: Option<PathBuf>) {
    if let Ok(mut s) = SCRATCH.lock() {
        *s = dir;
    }
}

pub fn register(pid: u32, what: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.push((pid, what.to_string()));
    }
}

pub fn unregister(pid: u32) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|(p, _)| *p != pid);
    }
}

/// The commands run so far, consecutive repeats folded into one line with a count.
pub fn commands() -> Vec<String> {
    let all = COMMANDS.lock().map(|c| c.clone()).unwrap_or_default();
    fold_repeats(&all)
}

pub fn fold_repeats(lines: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in lines {
        match out.last_mut() {
            Some((prev, n)) if prev == l => *n += 1,
            _ => out.push((l.clone(), 1)),
        }
    }
    out.into_iter().map(|(l, n)| if n == 1 { l } else { format!("{l}   (×{n})") }).collect()
}

/// Records a command line that the harness did not run through `Command` (e.g. a /proc read
/// worth citing).
pub fn record(line: String) {
    if let Ok(mut c) = COMMANDS.lock() {
        c.push(line);
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command as a shell line: `(cd DIR && ENV=V prog args…)`.
pub fn describe(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), shell_quote(&v.to_string_lossy())));
        }
    }
    parts.push(shell_quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    let line = parts.join(" ");
    match cmd.get_current_dir() {
        Some(d) => format!("(cd {} && {line})", shell_quote(&d.to_string_lossy())),
        None => line,
    }
}

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr, 15)
    }
}

pub fn tail(text: &str, n_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n_lines)..].join("\n")
}

/// Runs a command to completion with its output captured, killing it after `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    ensure!(!STOPPING.load(Ordering::SeqCst), "interrupted");
    record(line.clone());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {line}"))?;
    let mut guard = Guard::new_raw(&line);
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err_t = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    guard.attach(child);
    let status = guard.wait_timeout(timeout).with_context(|| format!("{line} did not finish"))?;
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// Like [`output`], but a non-zero exit status is an error carrying the end of stderr.
pub fn checked_output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    let out = output(cmd, timeout)?;
    if !out.status.success() {
        bail!("{line} failed ({}):\n{}", out.status, out.stderr_tail());
    }
    Ok(out)
}

/// A child process that is killed and reaped when dropped.
pub struct Guard {
    child: Option<Child>,
    what: String,
}

impl Guard {
    fn new_raw(what: &str) -> Guard {
        Guard { child: None, what: what.to_string() }
    }

    fn attach(&mut self, child: Child) {
        register(child.id(), &self.what);
        self.child = Some(child);
    }

    /// Starts a dfs server and waits, at most `timeout`, for its `listening ADDR` line (the
    /// one launcher, `dfs_launch`); its stdout after that line is dropped.
    pub fn start_server(cmd: &mut Command, what: &str, timeout: Duration) -> Result<(Guard, std::net::SocketAddr)> {
        ensure!(!STOPPING.load(Ordering::SeqCst), "interrupted");
        record(describe(cmd));
        let started = dfs_launch::start(cmd, what, timeout, dfs_launch::Rest::Discard)?;
        let mut g = Guard::new_raw(what);
        g.attach(started.child);
        Ok((g, started.addr))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                if let Some(c) = self.child.take() {
                    unregister(c.id());
                }
                return Ok(st);
            }
            if start.elapsed() > timeout {
                self.kill();
                bail!("timed out after {timeout:?} and was killed");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills (SIGKILL) and reaps the process; idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister(c.id());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// The processes whose parent is `pid`, from /proc/*/stat.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.split_whitespace().nth(1) == Some(&pid.to_string())))
                .unwrap_or(false)
        })
        .collect()
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>().join(" "))
}

/// Stops a process that is not our child (we cannot reap it): SIGTERM, then SIGKILL after a
/// grace period; returns once it is gone or a zombie awaiting its own parent.
pub fn stop_foreign(pid: u32) {
    if !alive(pid) {
        unregister(pid);
        return;
    }
    kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < STOP_GRACE {
        std::thread::sleep(POLL_INTERVAL);
    }
    if alive(pid) {
        kill(pid, Signal::SIGKILL);
        while alive(pid) && start.elapsed() < 2 * STOP_GRACE {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    unregister(pid);
}

/// utime + stime of a process (all its threads, not its children), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).context("malformed /proc/PID/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / hz as f64)
}

/// utime + stime in clock ticks from the text of /proc/PID/stat (fields 14 and 15; the command
/// name in parentheses may itself contain spaces and parentheses).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is at index 11 and stime (15) at 12.
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, "VmHWM").context("no VmHWM in /proc/PID/status")
}

/// A `Key:   123 kB` line of /proc/PID/status or /proc/meminfo, in KiB.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Whether a command exists on PATH (or at that path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_a_name_with_spaces_and_parentheses() {
        let stat = "1234 (dfs (engine) x) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 5 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_kib_lines() {
        let status = "Name:\tdfs-engine\nVmPeak:\t  20000 kB\nVmHWM:\t   11060 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(11060));
        assert_eq!(parse_status_kib(status, "VmHW"), None);
        assert_eq!(parse_status_kib("MemTotal:       24563200 kB\n", "MemTotal"), Some(24563200));
    }

    #[test]
    fn commands_are_quoted_and_repeats_folded() {
        let mut c = Command::new("python3");
        c.args(["client.py", "get", "a b", "it's"]).env("SEED_PORT", "9100");
        assert_eq!(describe(&c), r"SEED_PORT=9100 python3 client.py get 'a b' 'it'\''s'");
        let lines: Vec<String> = ["a", "a", "b", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(fold_repeats(&lines), vec!["a   (×2)", "b", "a"]);
    }

    #[test]
    fn a_command_that_overruns_its_timeout_is_killed() {
        let t = Instant::now();
        let err = output(Command::new("sleep").arg("10"), Duration::from_millis(200)).err().expect("timeout");
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
