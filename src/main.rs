//! `imagersync_service_bin`: everything lives in the library; see [`imagersync::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(imagersync::cli::run(std::env::args_os()))
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and every
/// arena keeps freed transfer buffers: ~3 MiB of peak memory measured in the `big`
/// benchmark with the default, ~1 MiB more with two arenas than with one. Blob bytes
/// pass in 4 KiB pieces (engine/rechunk.rs), few enough allocations that one arena's
/// lock costs no measurable CPU. An operator's own `MALLOC_ARENA_MAX` wins.
///
/// The mmap threshold is fixed at 128 KiB (glibc's starting value) because glibc
/// otherwise raises it to the size of the largest mmapped block freed so far: after
/// the first of hyper's connection read buffers (which grow to a few hundred KiB on a
/// fast stream) is freed, all later ones come from the heap, whose holes between
/// live blocks are never given back. With many small blobs in flight at once (up to 24
/// in the `many` benchmark) that cost 5-6 MiB of peak memory (measured 23.6 against
/// 18.5 MiB, and 27.3 against 21.7 MiB on a later build; doc/perf.md). Such buffers
/// are few (a connection reuses its own, engine/rechunk.rs), so their mmap calls are
/// too. An operator's own `MALLOC_MMAP_THRESHOLD_` wins.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: called first thing in main, before any other thread exists; mallopt
            // only tunes the allocator and has no memory-safety preconditions.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}
