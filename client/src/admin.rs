//! Cluster administration requests: node status, repair, scrub and orphan collection. Scrub
//! and gc can run far longer than an ordinary request, so they wait without the usual read
//! timeout; repair reports progress as it goes.

use crate::{unexpected, Client, ClientError, Result, IO_TIMEOUT};
use dfs_proto::{Msg, NodeStatus, RepairSummary};
use std::time::Duration;

/// What `gc` found and did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub n_scanned: u64,
    pub n_orphans: u64,
    pub n_deleted: u64,
    pub orphans: Vec<String>,
}

/// What `scrub` found, over every node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScrubReport {
    pub n_checked: u64,
    pub n_corrupt: u64,
    pub corrupt: Vec<String>,
}

/// The cluster as the engine sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub replicas: u32,
    pub nodes: Vec<NodeStatus>,
    pub repair_queue: dfs_proto::msg::RepairQueueStatus,
}

/// How long scrub or gc may keep the engine busy before the client gives up.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Client {
    fn with_timeout<T>(&mut self, timeout: Duration, op: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let set = |c: &Client, t| {
            c.reader.get_ref().set_read_timeout(Some(t)).map_err(|e| ClientError::Connection {
                doing: "setting the socket's read timeout",
                source: dfs_proto::FrameError::Io(e),
            })
        };
        set(self, timeout)?;
        let result = op(self);
        set(self, IO_TIMEOUT)?;
        result
    }

    pub fn status(&mut self) -> Result<ClusterStatus> {
        self.run(true, |c| match c.request(&Msg::ClusterStatus, "ClusterStatusOk")? {
            Msg::ClusterStatusOk { replicas, nodes, repair_queue } => {
                Ok(ClusterStatus { replicas, nodes, repair_queue })
            }
            other => Err(unexpected(&other, "ClusterStatusOk")),
        })
    }

    /// Runs a repair pass; `progress(done, total)` is called as the engine reports it.
    pub fn repair(&mut self, mut progress: impl FnMut(u64, u64)) -> Result<RepairSummary> {
        self.run(true, |c| {
            c.send(&Msg::Repair, "sending the request")?;
            loop {
                match c.recv_msg("waiting for repair to finish", "RepairOk")? {
                    Msg::RepairProgress { n_done, n_total } => progress(n_done, n_total),
                    Msg::RepairOk(summary) => return Ok(summary),
                    other => return Err(unexpected(&other, "RepairOk")),
                }
            }
        })
    }

    pub fn scrub(&mut self) -> Result<ScrubReport> {
        self.with_timeout(LONG_REQUEST_TIMEOUT, |c| {
            c.run(true, |c| match c.request(&Msg::Scrub, "ScrubOk")? {
                Msg::ScrubOk { n_checked, n_corrupt, corrupt } => Ok(ScrubReport { n_checked, n_corrupt, corrupt }),
                other => Err(unexpected(&other, "ScrubOk")),
            })
        })
    }

    /// Finds (and unless `dry_run`, deletes) chunks no file references that are older than
    /// `grace_secs`, or the engine's grace period.
    pub fn gc(&mut self, dry_run: bool, grace_secs: Option<u64>) -> Result<GcReport> {
        self.with_timeout(LONG_REQUEST_TIMEOUT, |c| {
            c.run(true, |c| match c.request(&Msg::Gc { dry_run, grace_secs }, "GcOk")? {
                Msg::GcOk { n_scanned, n_orphans, n_deleted, orphans } => {
                    Ok(GcReport { dry_run, n_scanned, n_orphans, n_deleted, orphans })
                }
                other => Err(unexpected(&other, "GcOk")),
            })
        })
    }
}
