//! Shared helpers of devid-agent's tests that run the real `devid` server binary: find (or
//! build) it, run commands with a time limit, and start `devid serve` on port 0.
//!
//! The server binary is taken from `DEVID_BIN` when set, else from the target directory of
//! the test (`<target>/<profile>/devid`), built with `cargo build -p devid` first when it
//! is not there.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devid-agent"))
}

/// The devid server binary (see the module doc).
pub fn devid_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DEVID_BIN") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join("devid");
    if !bin.is_file() {
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "devid", "--target-dir"]).arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
        assert!(status.success(), "cargo build -p devid failed");
    }
    bin
}

/// Run to completion, killed (and the test failed) after `limit`.
pub fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {} s", limit.as_secs());
        }
    }
}

/// A devid command on the data directory `data`, its renewal listener on port 0.
pub fn devid(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(devid_bin());
    c.args(args).arg("--data-dir").arg(data).env("RUST_LOG", "warn").env("DEVID_TLS__LISTEN", "127.0.0.1:0");
    c
}

/// A running `devid serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// The renewal listener, when the banner announced it (before `listening on`).
    pub renew: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` (a `devid serve`) and wait, up to 60 s, for its `listening on` banner line.
pub fn start_server(mut cmd: Command) -> Server {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut renew = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(r) = line.strip_prefix("renewal listener on ") {
                    renew = Some(r.trim().to_string());
                }
                if let Some(base) = line.strip_prefix("listening on ") {
                    return Server { child, base: base.trim().to_string(), renew };
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("devid serve exited with {status}");
                }
                assert!(std::time::Instant::now() < deadline, "devid serve did not start");
            }
        }
    }
}
