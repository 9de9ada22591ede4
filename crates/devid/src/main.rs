//! The `devid` binary: see `devid --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    devid::main()
}
