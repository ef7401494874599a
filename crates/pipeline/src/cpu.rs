//! The pool CPU-bound work runs on: JSON → Arrow, Parquet encoding,
//! reading and writing files. Jobs run on tokio's blocking threads, a
//! bounded number at a time (two per core by default), so units waiting
//! for the network never wait behind another unit's encoding, and the
//! cores are kept busy without being flooded.
//! A job waiting for a core holds only what it was given (one page), and
//! the units that may be open at once are bounded, so this queue is too.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// A handle on the pool; cheap to clone.
#[derive(Clone, Debug)]
pub struct CpuPool {
    cores: Arc<Semaphore>,
    size: usize,
}

impl CpuPool {
    /// A pool of `size` concurrent jobs (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            cores: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// A pool sized to the machine: two jobs per available core. A job
    /// spends part of its time off the core (page faults on a fresh page's
    /// buffers, writes into the page cache); with one job per core those
    /// moments leave the core idle. Measured on a 2-core machine, replaying
    /// 1M items: 2 jobs kept 1.55–1.6 cores busy, 4 jobs 1.8–1.85, with the
    /// same CPU time (BENCHMARKS.md, "The engine as a library").
    pub fn per_core() -> Self {
        Self::new(2 * std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Jobs that run at once at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `job` on a blocking thread once a core is free, keeping the
    /// caller's tracing span.
    pub async fn run<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // The permit goes with the job and is given back the moment the
        // job ends, not when this task is next polled.
        let core = Arc::clone(&self.cores)
            .acquire_owned()
            .await
            .map_err(|e| Error::Step {
                context: "the CPU pool is closed".into(),
                source: Box::new(e),
            })?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _core = core;
            span.in_scope(job)
        })
        .await
        .map_err(|e| Error::Step {
            context: "a CPU job of the run failed".into(),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_jobs_run_at_once_than_the_pool_has_cores() {
        let pool = CpuPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|i| {
            let pool = pool.clone();
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
                .await
            })
        });
        let mut results = Vec::new();
        for job in jobs {
            results.push(job.await.unwrap().unwrap());
        }
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
        // Without the bound all eight would sleep at once.
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
    }
}
