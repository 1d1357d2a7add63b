//! Group commit for chunk stores. Instead of each STORE syncing its own file and directory,
//! a STORE renames its chunk into place and then waits for the next `syncfs(2)` of the data
//! directory's file system, which makes every file written and renamed before it started
//! durable at once. One thread runs the syncs back to back: it takes every waiter queued so
//! far, syncs, and answers them all, so under load one sync covers many chunks, and alone a
//! chunk waits for exactly one.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;

type Waiter = tokio::sync::oneshot::Sender<Result<(), crate::store::SyncFailed>>;

/// How a STORE is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitSync {
    /// fdatasync the chunk file, rename it, fsync its directory: two syncs per chunk.
    PerChunk,
    /// rename the chunk file, then wait for the next file-system-wide sync shared by every
    /// chunk renamed before it started.
    Grouped,
}

pub struct GroupSync {
    queue: mpsc::Sender<Waiter>,
}

impl GroupSync {
    /// Starts the sync thread for the file system holding `dir`.
    pub fn start(dir: &std::path::Path) -> io::Result<GroupSync> {
        let fd: OwnedFd = std::fs::File::open(dir)?.into();
        let (queue, waiting) = mpsc::channel::<Waiter>();
        std::thread::Builder::new().name("group-sync".into()).spawn(move || {
            while let Ok(first) = waiting.recv() {
                let mut batch = vec![first];
                batch.extend(waiting.try_iter());
                // SAFETY: syncfs on a descriptor this thread owns.
                let rc = unsafe { libc::syncfs(fd.as_raw_fd()) };
                let result = if rc == 0 { Ok(()) } else { Err((&io::Error::last_os_error()).into()) };
                for waiter in batch {
                    let _ = waiter.send(result.clone());
                }
            }
        })?;
        Ok(GroupSync { queue })
    }

    /// Returns once a sync that started after this call has finished.
    pub(super) async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue.send(tx).map_err(|_| io::Error::other("the group sync thread is gone"))?;
        Ok(rx.await.map_err(|_| io::Error::other("the group sync thread is gone"))??)
    }
}
