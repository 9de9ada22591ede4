//! `devid-agent`: see `devid-agent --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    devid_agent::cli::main()
}
