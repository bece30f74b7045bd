//! How the simulator's process takes memory from the kernel.

/// Turns transparent huge pages off for this process, unless the user
/// chose with mimalloc's own `MIMALLOC_ALLOW_THP` variable (`0` does the
/// same, through mimalloc). Called first thing in `main`.
///
/// Why: mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), and
/// the kernel then clears 2 MiB each time it backs one, again after every
/// purge. A simulator process allocates and frees many small per-member
/// buffers: a 1,000-member SecAgg+ round took a median 1.18 s without huge
/// pages against 1.26 s with them (2.21 against 2.34 CPU-s, 95 against
/// 109 MiB peak), and Fashion-MNIST training runs were no slower
/// (docs/benchmarks.md, "Protocol time, fourth pass").
pub fn small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // The arguments are the kernel's unsigned longs, passed as such
        // through the variadic call.
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE takes integers only and reads or
        // writes no memory of this process; a failure (an old kernel) only
        // leaves huge pages on, so the result is ignored.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_unless_the_user_chose() {
        super::small_pages();
        let unused: libc::c_ulong = 0;
        // SAFETY: as above; PR_GET_THP_DISABLE takes no further argument.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, unused, unused, unused, unused) };
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            assert_eq!(disabled, 1, "transparent huge pages are still on for the process");
        }
    }
}
