//! Allocator settings for programs that run blocks.

/// Keeps freed memory 10 s before giving it back to the OS (mimalloc's default is 10 ms), and
/// then gives it back as a reset (`MADV_FREE`: the kernel takes the pages only when it needs
/// them) rather than a decommit (the pages are unmapped and fault back in zeroed). Block
/// execution frees and reallocates hundreds of megabytes per block; memory given back too early
/// returns through page faults that zero it, which cost about a seventh of block execution
/// (BENCHMARKS.md). A node keeps executing blocks, so the memory is reused, not held idle.
///
/// For programs whose global allocator is mimalloc (the `chainql` binary, the benches); with
/// another allocator it changes nothing.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` of `mi_option_e` in mimalloc v3's `include/mimalloc.h` (the
    /// `libmimalloc-sys` bindings do not name it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// `mi_option_purge_decommits`, likewise.
    const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;
    // SAFETY: each sets one integer option, which mimalloc allows at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 10_000);
        libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
    }
}
