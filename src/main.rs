//! `imagersync_service_bin`: everything lives in the library; see [`imagersync::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(imagersync::cli::run(std::env::args_os()))
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and every
/// arena keeps freed transfer buffers: ~3 MiB of peak memory measured in the `big`
/// benchmark with the default, ~1 MiB more with two arenas than with one. Blob bytes
/// pass in 16 KiB pieces (engine/rechunk.rs), few enough allocations that one arena's
/// lock costs no measurable CPU. An operator's own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists; mallopt
        // only tunes the allocator and has no memory-safety preconditions.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
