//! The async runtime of a dfs daemon that answers one small request at a time: the metadata
//! server and the mount.
//!
//! Such a request crosses the runtime in a few short steps (a datagram in, a command, a reply
//! out). With a worker per core, one worker takes the datagram from the socket and wakes
//! another to run the task, and each step's wake-up of the I/O driver lands on the other CPU:
//! on a small virtual machine every such wake-up of an idle CPU costs tens of microseconds,
//! more than the step itself. Half the cores keeps a request on one thread on a small host and
//! still spreads many clients over a large one; the other half is left to the work these
//! daemons hand to threads of their own (the log's flush, the store's checkpoints, FUSE's
//! reads and writes) and to the processes beside them.

/// Workers when none are asked for: `TOKIO_WORKER_THREADS` when set to a count (as every
/// tokio runtime reads it, so one setting covers every dfs process of a host), else half the
/// cores, at least one.
pub fn default_workers() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// A multi-thread runtime with `workers` workers ([`default_workers`] when `None`), timers
/// and I/O enabled. Zero workers is refused: the runtime could run nothing.
pub fn build(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.unwrap_or_else(default_workers);
    if workers == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "worker threads: at least 1",
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_has_at_least_one_worker_and_zero_is_refused() {
        assert!(default_workers() >= 1);
        let rt = build(Some(1)).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(rt.block_on(async { 2 + 2 }), 4);
        let default = build(None).unwrap();
        assert_eq!(default.metrics().num_workers(), default_workers());
        assert!(build(Some(0)).is_err());
    }
}
