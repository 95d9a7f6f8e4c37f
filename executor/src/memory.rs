//! Allocator settings for programs that run blocks.

/// Sets up the allocator for block execution. It keeps freed memory 10 s before giving it back
/// to the OS (mimalloc's default is 10 ms), and then gives it back as a reset (`MADV_FREE`: the
/// kernel takes the pages only when it needs them) rather than a decommit (the pages are
/// unmapped and fault back in zeroed). Block
/// execution frees and reallocates hundreds of megabytes per block; memory given back too early
/// returns through page faults that zero it, which cost about a seventh of block execution
/// (BENCHMARKS.md). A node keeps executing blocks, so the memory is reused, not held idle.
///
/// It also turns transparent huge pages off for the process. mimalloc asks for them on its
/// arenas, and each first touch of a 2 MiB region then faults in and zeroes all of it: in a node,
/// whose many threads each grow their own heap pages, that zeroing was a sixth of all CPU time
/// with four validators on one machine, and replay was 1.6× slower (BENCHMARKS.md).
///
/// For programs whose global allocator is mimalloc (the `chainql` binary, the benches); with
/// another allocator it changes nothing but the huge-page setting.
#[allow(unsafe_code)]
pub fn configure_allocator() {
    /// `mi_option_purge_delay` of `mi_option_e` in mimalloc v3's `include/mimalloc.h` (the
    /// `libmimalloc-sys` bindings do not name it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// `mi_option_purge_decommits`, likewise.
    const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;
    /// `mi_option_allow_thp`, likewise: mimalloc no longer advises huge pages on new memory.
    const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    // SAFETY: each sets one integer option, which mimalloc allows at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 10_000);
        libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
    }
    // Memory mimalloc already advised (its first arena is reserved before `main`) is covered by
    // the process-wide switch, which the kernel checks at each fault. Failure (an old kernel)
    // leaves huge pages on, which costs speed, not correctness.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
