//! The machine the figures were measured on: cores, CPU model, memory, kernel, the scratch
//! directory's filesystem, and the revision of the code under test.

use crate::proc;
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: String,
    pub cpu_model: String,
    pub mem_total_kib: Option<u64>,
    pub kernel: String,
    /// `df -T` type of the scratch directory's filesystem, and its device.
    pub scratch_fs: String,
    pub scratch_device: String,
    /// `git describe --always --dirty` of the workspace.
    pub revision: String,
    pub rustc: String,
    /// /proc/loadavg when the harness started and when it finished measuring: other work on the
    /// machine shows here, and widens the min–max ranges.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// First line of a command's stdout, or `unknown (why)`.
fn first_line(cmd: &mut Command, timeout: Duration) -> String {
    match proc::checked_output(cmd, timeout) {
        Ok(out) => out.stdout.lines().next().unwrap_or("").trim().to_string(),
        Err(e) => format!("unknown ({})", e.to_string().lines().next().unwrap_or("")),
    }
}

/// The `model name` of the first processor in /proc/cpuinfo.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// (type, device) of the filesystem in `df -T PATH` output.
pub fn parse_df_type(df: &str) -> Option<(String, String)> {
    let line = df.lines().nth(1)?;
    let mut w = line.split_whitespace();
    let device = w.next()?.to_string();
    Some((w.next()?.to_string(), device))
}

impl Machine {
    pub fn read(scratch: &Path, workspace: &Path, timeout: Duration) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let df = proc::checked_output(Command::new("df").arg("-T").arg(scratch), timeout)
            .map(|o| o.stdout)
            .unwrap_or_default();
        let (scratch_fs, scratch_device) = parse_df_type(&df).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        let cargo = std::env::var_os("CARGO").map(std::path::PathBuf::from);
        let rustc = match cargo.as_ref().and_then(|c| c.parent()).map(|d| d.join("rustc")).filter(|r| r.is_file()) {
            Some(r) => first_line(Command::new(r).arg("--version"), timeout),
            None => first_line(Command::new("rustc").arg("--version"), timeout),
        };
        Machine {
            nproc: first_line(&mut Command::new("nproc"), timeout),
            cpu_model: parse_cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            mem_total_kib: proc::parse_status_kib(&meminfo, "MemTotal"),
            kernel: first_line(Command::new("uname").arg("-r"), timeout),
            scratch_fs,
            scratch_device,
            revision: first_line(
                Command::new("git").arg("-C").arg(workspace).args(["describe", "--always", "--dirty"]),
                timeout,
            ),
            rustc,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_df() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(parse_cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
        let df = "Filesystem     Type 1K-blocks     Used Available Use% Mounted on\n\
                  /dev/vda       ext4 264212084 23426780  71859108  25% /\n";
        assert_eq!(parse_df_type(df), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(parse_df_type("header only\n"), None);
    }
}
