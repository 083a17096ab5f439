//! Whether a process the mount is working for has a signal waiting for it.
//!
//! A process blocked in a FUSE request that the daemon has already received cannot be woken
//! by any signal, not even SIGKILL: the kernel waits for the daemon's answer, and would tell
//! the daemon through FUSE_INTERRUPT, which the FUSE library dfs uses does not deliver. So
//! requests that may wait without bound (blocking locks) look at the caller's pending signals
//! in `/proc` while they wait, and answer EINTR as soon as one is there: SIGKILL then ends the
//! process, and a caught signal interrupts the call as POSIX says (fcntl F_SETLKW fails with
//! EINTR).

/// Whether `pid` (a thread id, as FUSE reports it) has a signal pending that it neither
/// blocks nor ignores, or no longer exists. FUSE reports pid 0 for a caller outside the
/// mount's PID namespace: nothing can be known of it, so its wait goes on.
pub fn signal_pending(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => pending_in_status(&status),
        // Gone (or unreadable): nobody is waiting any more.
        Err(_) => true,
    }
}

/// Reads the signal masks of a `/proc/PID/status` text.
fn pending_in_status(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pnd: &str, shd: &str, blk: &str, ign: &str) -> String {
        format!(
            "Name:\tsleep\nState:\tS (sleeping)\nSigQ:\t0/94\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0000000000000000\n"
        )
    }

    #[test]
    fn pending_signals_count_unless_blocked_or_ignored() {
        let none = "0000000000000000";
        assert!(!pending_in_status(&status(none, none, none, none)));
        // SIGKILL (9) pending for the thread, or for the whole process.
        assert!(pending_in_status(&status(
            "0000000000000100",
            none,
            none,
            none
        )));
        assert!(pending_in_status(&status(
            none,
            "0000000000000100",
            none,
            none
        )));
        // SIGINT (2) blocked, or SIGPIPE (13) ignored: not an interruption.
        assert!(!pending_in_status(&status(
            "0000000000000002",
            none,
            "0000000000000002",
            none
        )));
        assert!(!pending_in_status(&status(
            none,
            "0000000000001000",
            none,
            "0000000000001000"
        )));
    }

    #[test]
    fn this_process_has_nothing_pending_and_a_missing_one_counts_as_gone() {
        assert!(!signal_pending(std::process::id()));
        assert!(signal_pending(u32::MAX));
        assert!(!signal_pending(0));
    }
}
