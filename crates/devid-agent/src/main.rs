//! `devid-agent`: see `devid-agent --help`.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: under load the simulator spent about a sixth of its CPU in
/// glibc's allocator (perf, issue #6), and mimalloc's per-thread free lists cost far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    devid_agent::cli::main()
}
