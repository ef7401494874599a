//! One run of a pipeline and snapshot date at a time.
//!
//! A run holds an OS file lock on
//! `<state>/runs/<pipeline>/snapshot_date=D/.lock` for its whole life
//! (`flock`/`LockFileEx` through `fs4`). The operating system releases it
//! when the process ends in any way, `kill -9` included, so a dead run
//! never leaves the day stuck; while a run holds it, another run of the
//! same pipeline and day either refuses at once ([`ErrorKind::Held`]) or
//! waits for it. The holder writes its run id into the file so the one
//! refused can name it.
//!
//! [`ErrorKind::Held`]: crate::ErrorKind::Held

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::{FileExt, TryLockError};
use tokio_util::sync::CancellationToken;

use crate::error::{Context, Error, Result};
use crate::state;

/// The lock file of one pipeline and day, in its runs directory.
pub fn lock_file(runs_dir: &Path) -> PathBuf {
    runs_dir.join(".lock")
}

/// How often a run that waits for another tries the lock again.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// The lock of one pipeline and day, held until dropped (or the process
/// ends).
#[derive(Debug)]
pub struct RunLock {
    // Closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock of `runs_dir` for `run_id` if no other run holds it:
/// `Ok(None)` when one does.
pub fn try_acquire(runs_dir: &Path, run_id: &str) -> Result<Option<RunLock>> {
    std::fs::create_dir_all(runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;
    let path = lock_file(runs_dir);
    // Not truncated on open: the file holds the holder's run id.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the run lock {}", path.display()))?;
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    let record = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(run_id.as_bytes())?;
        file.flush()
    };
    record(&mut file).with_context(|| format!("writing the run lock {}", path.display()))?;
    Ok(Some(RunLock { _file: file, path }))
}

/// Takes the lock of `runs_dir` for `run_id`. When another run holds it,
/// refuses at once with an [`Error::Held`] naming that run, or with `wait`
/// tries again until it is free (or `stop` is cancelled).
pub async fn acquire(
    runs_dir: &Path,
    run_id: &str,
    wait: bool,
    stop: &CancellationToken,
) -> Result<RunLock> {
    let mut announced = false;
    loop {
        let (dir, id) = (runs_dir.to_path_buf(), run_id.to_owned());
        let taken = tokio::task::spawn_blocking(move || try_acquire(&dir, &id))
            .await
            .context("taking the run lock")??;
        if let Some(lock) = taken {
            return Ok(lock);
        }
        let holder = holder(runs_dir);
        if !wait {
            return Err(Error::Held(format!(
                "another run holds this pipeline and day: {holder}; it goes on, and this one did not start (wait for it with `--wait`, or see `backlinks status`). Lock: {}",
                lock_file(runs_dir).display()
            )));
        }
        if !announced {
            tracing::info!(holder = %holder, "waiting for another run of this pipeline and day to end");
            announced = true;
        }
        tokio::select! {
            () = stop.cancelled() => {
                return Err(Error::Step {
                    context: format!("stopped while waiting for {holder}"),
                    source: Box::new(std::io::Error::from(std::io::ErrorKind::Interrupted)),
                });
            }
            () = tokio::time::sleep(WAIT_POLL) => {}
        }
    }
}

/// Which run holds the lock of `runs_dir`, for messages: the run id the
/// holder wrote, with what its manifest says of it.
pub fn holder(runs_dir: &Path) -> String {
    let mut recorded = String::new();
    if let Ok(mut file) = File::open(lock_file(runs_dir)) {
        let _ = file.read_to_string(&mut recorded);
    }
    let recorded = recorded.trim();
    let manifests = state::read_manifests(runs_dir).unwrap_or_default();
    let manifest = if recorded.is_empty() {
        // The holder has just taken it: its manifest is the latest running.
        manifests.iter().rev().find(|m| !m.finished())
    } else {
        manifests.iter().find(|m| m.run_id == recorded)
    };
    match (manifest, recorded) {
        (Some(m), _) => format!(
            "run {} (`{}`, started {})",
            m.run_id,
            m.command,
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        (None, "") => "a run that has just started".into(),
        (None, id) => format!("run {id} (starting)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_acquire(dir.path(), "run-a").unwrap().expect("free");
        assert!(try_acquire(dir.path(), "run-b").unwrap().is_none());
        assert_eq!(holder(dir.path()), "run run-a (starting)");
        drop(first);
        let second = try_acquire(dir.path(), "run-b")
            .unwrap()
            .expect("free again");
        assert_eq!(holder(dir.path()), "run run-b (starting)");
        assert_eq!(second.path(), lock_file(dir.path()));
    }

    #[tokio::test]
    async fn refusal_names_the_holder_and_waiting_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let first = acquire(dir.path(), "run-a", false, &stop).await.unwrap();
        let refused = acquire(dir.path(), "run-b", false, &stop)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::Held);
        assert!(refused.to_string().contains("run run-a"), "{refused}");
        let path = dir.path().to_path_buf();
        let waiter = tokio::spawn(async move {
            let stop = CancellationToken::new();
            acquire(&path, "run-b", true, &stop).await.map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap().unwrap();
    }
}
