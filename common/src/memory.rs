//! Allocator settings: glibc's, for processes that stream large buffers (4 MiB blocks, 1 MiB
//! shards, network batches); transparent huge pages, for processes whose allocator asks for
//! them.
//!
//! By default glibc maps a large allocation (over 128 KiB, a threshold it raises as such
//! buffers are freed) on its own and unmaps it when freed, and it trims a heap whenever a little
//! memory at its top is free. A buffer that streams through then costs page faults and the
//! kernel zeroing fresh pages at every allocation: about a tenth of the CPU of a `dfs get`
//! (see docs/BENCHMARKS.md). Fixed, higher thresholds keep such buffers in the heaps, and freed
//! memory there for the next one: a process holds on to its peak working set instead.

/// Allocations up to this size come from glibc's heaps (a block is 4 MiB at most by default).
const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of a heap that glibc keeps rather than giving back to the kernel.
const TRIM_THRESHOLD: usize = 256 << 20;

/// Sets glibc's thresholds (see the module's doc); call first thing in `main`. Returns whether
/// glibc took them (always false where the C library is not glibc).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; any value is accepted or refused.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), whatever its
/// allocator asked for: mimalloc marks its memory for huge pages, and a metadata server that
/// grows its caches then faults in fresh 2 MiB pages, each zeroed whole by the kernel even
/// where a few KiB are used, about a tenth of its CPU per small file (see
/// docs/BENCHMARKS.md). Returns whether the kernel took it (false off Linux).
pub fn no_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        assert!(super::keep_freed_memory());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_turned_off_for_the_process() {
        // SAFETY: PR_GET_THP_DISABLE only reads a flag of this process.
        let before = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(before, 0, "huge pages start allowed");
        assert!(super::no_transparent_huge_pages());
        let after = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(after, 1);
    }
}
