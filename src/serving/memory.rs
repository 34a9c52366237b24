//! Giving freed model memory back to the system. A retired load's weights and the importer's
//! temporaries are freed into glibc's heaps, which keep them: measured over 40 unload/reload
//! cycles in the binary, RSS went from 60 MB to a plateau of 120-150 MB without this, the
//! freed pages held by malloc's arenas (not a leak: it stopped growing). `malloc_trim` returns
//! the free pages of every arena.

/// Returns the allocator's free memory to the system, where the allocator can (glibc); a no-op
/// elsewhere. Costs a walk over the heaps: for rare events such as a model leaving, not per
/// request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes a byte count and only touches the allocator's own
        // state, under its own locks; any pad is valid.
        unsafe {
            malloc_trim(0);
        }
    }
}
