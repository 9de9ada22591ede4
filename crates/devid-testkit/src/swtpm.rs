//! A real software TPM 2.0 (swtpm + libtpms) for tests, manufactured like a real one.
//!
//! swtpm_setup creates the RSA-2048 EK (template L-1) and, with a private local CA (the
//! TPM "vendor"), its certificate at NV 0x01C00002; the harness then certifies the ECC
//! P-256 EK (template L-2, as tpm2_createek makes it) with the same CA (swtpm_localca) and
//! stores it at NV 0x01C0000A, since swtpm_setup 0.7 only makes a P-384 EK for ECC.
//! Nothing is written outside a temporary directory; no shell is used. The swtpm process
//! is killed on drop.
//!
//! Needs the Debian packages swtpm, swtpm-tools, gnutls-bin and tpm2-tools: a missing tool
//! fails the test with the apt-get line (tests never skip silently).
//!
//! Use: [`Swtpm::start`], then [`Swtpm::tcti`] for tss-esapi / tpm2-tools
//! (`swtpm:host=127.0.0.1,port=N`), [`Swtpm::vendor_ca_der`] or [`Swtpm::vendor_ca_pem_path`]
//! for the EK trust anchor, and [`Swtpm::path`] for scratch files next to its state.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian packages the harness needs, named in its failure messages.
pub const PACKAGES: &str = "swtpm swtpm-tools gnutls-bin tpm2-tools";

/// Every tool the harness and its users (tpm2-tools cross-checks) run.
const TOOLS: [&str; 13] = [
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
    "tpm2_createek",
    "tpm2_createak",
    "tpm2_activatecredential",
    "tpm2_startauthsession",
    "tpm2_policysecret",
    "tpm2_flushcontext",
    "tpm2_nvdefine",
    "tpm2_nvwrite",
    "tpm2_nvread",
];

/// A running software TPM on loopback TCP; killed on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The full path of `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

/// Run `cmd` to completion; panics (failing the test) with its output when it fails, or
/// with the packages to install when it cannot start. Returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (apt-get install -y {PACKAGES})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Two consecutive free loopback ports (server, control).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(a) = TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(port) = a.local_addr().map(|a| a.port()) else { continue };
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback ports");
}

/// The DER contents of the first PEM block of `text`.
pub fn pem_to_der(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    assert!(!body.is_empty(), "no PEM block in:\n{text}");
    base64_decode(body.trim())
}

/// Standard base64 (RFC 4648 §4), padding optional; panics on other characters.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Swtpm {
    /// Manufactures and starts a software TPM. Panics (failing the test) with the apt-get
    /// line when a tool is missing.
    pub fn start() -> Swtpm {
        let missing: Vec<&str> = TOOLS.into_iter().filter(|t| which(t).is_none()).collect();
        assert!(missing.is_empty(), "missing {missing:?}: apt-get install -y {PACKAGES}");

        let dir = tempfile::Builder::new().prefix("devid-swtpm-").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["state", "ca", "ek256"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
        }
        let ca = d.join("ca");
        let localca_conf = d.join("swtpm-localca.conf");
        std::fs::write(
            &localca_conf,
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .expect("write localca conf");
        let setup_conf = d.join("swtpm_setup.conf");
        std::fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /dev/null\n",
                which("swtpm_localca").map(|p| p.display().to_string()).unwrap_or_default(),
                localca_conf.display()
            ),
        )
        .expect("write setup conf");
        run(Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--pcr-banks", "sha256", "--tpmstate"])
            .arg(d.join("state"))
            .arg("--config")
            .arg(&setup_conf)
            .arg("--logfile")
            .arg(d.join("swtpm_setup.log")));

        let port = free_port_pair();
        let log = std::fs::File::create(d.join("swtpm.log")).expect("log");
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
            .arg("--tpmstate")
            .arg(format!("dir={}", d.join("state").display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start swtpm: {e} (apt-get install -y {PACKAGES})"));
        let tpm = Swtpm { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen on port {}", port + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
        tpm.provision_p256_ek_cert();
        tpm
    }

    /// The TCTI configuration of this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A path inside the harness's temporary directory (`ca/issuercert.pem` is the vendor
    /// CA; `state`, `ca` and `ek256` are taken).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local CA that issued the EK certificates (the TPM "vendor" anchor), PEM file.
    pub fn vendor_ca_pem_path(&self) -> PathBuf {
        self.path("ca/issuercert.pem")
    }

    /// The local CA that issued the EK certificates (the TPM "vendor" anchor), DER.
    pub fn vendor_ca_der(&self) -> Vec<u8> {
        pem_to_der(&std::fs::read(self.vendor_ca_pem_path()).expect("issuercert.pem"))
    }

    /// A tpm2-tools command aimed at this TPM (`-T <tcti>` set).
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(name);
        c.args(["-T", &self.tcti()]);
        c
    }

    /// Flush every transient object (a TPM without a resource manager holds only three).
    pub fn flush_transients(&self) {
        run(self.tool("tpm2_flushcontext").arg("-t"));
    }

    /// An EK (default TCG template, ECC P-256 or RSA-2048) and an AK under it, made by
    /// tpm2-tools: their contexts at `ek.ctx` and `ak.ctx`, their TPM2B_PUBLIC at `ek.pub`
    /// and `ak.pub` (see [`Swtpm::path`]); the transient objects flushed.
    pub fn create_ek_ak(&self, ecc: bool) {
        let (g, s) = if ecc { ("ecc", "ecdsa") } else { ("rsa", "rsassa") };
        run(self
            .tool("tpm2_createek")
            .args(["-G", g, "-c"])
            .arg(self.path("ek.ctx"))
            .arg("-u")
            .arg(self.path("ek.pub")));
        self.flush_transients();
        run(self
            .tool("tpm2_createak")
            .arg("-C")
            .arg(self.path("ek.ctx"))
            .arg("-c")
            .arg(self.path("ak.ctx"))
            .args(["-G", g, "-g", "sha256", "-s", s, "-u"])
            .arg(self.path("ak.pub")));
        self.flush_transients();
    }

    /// Certifies the ECC P-256 EK (TCG template L-2, as tpm2_createek makes it) with the
    /// local CA and stores the certificate at its TCG NV index, as a manufacturer would.
    fn provision_p256_ek_cert(&self) {
        let d = self.dir.path();
        let pub_pem = d.join("ek256/ek.pem");
        run(self
            .tool("tpm2_createek")
            .args(["-G", "ecc", "-c"])
            .arg(d.join("ek256/ek.ctx"))
            .arg("-u")
            .arg(&pub_pem)
            .args(["-f", "pem"]));
        self.flush_transients();
        let spki = pem_to_der(&std::fs::read(&pub_pem).expect("EK PEM"));
        let xy = &spki[spki.len() - 64..];
        run(Command::new("swtpm_localca")
            .args(["--type", "ek", "--ek"])
            .arg(format!("x={},y={},id=secp256r1", hex::encode(&xy[..32]), hex::encode(&xy[32..])))
            .arg("--dir")
            .arg(d.join("ek256"))
            .args(["--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164"])
            .args([
                "--tpm-manufacturer",
                "id:00001014",
                "--tpm-model",
                "swtpm",
                "--tpm-version",
                "id:20191023",
            ])
            .arg("--tpm2")
            .arg("--configfile")
            .arg(d.join("swtpm-localca.conf"))
            .args(["--optsfile", "/dev/null"]));
        let cert = d.join("ek256/ek.cert");
        let size = std::fs::metadata(&cert).expect("ek.cert").len().to_string();
        run(self.tool("tpm2_nvdefine").args([
            "-C",
            "p",
            "0x01c0000a",
            "-s",
            &size,
            "-a",
            "ppwrite|ppread|ownerread|authread|no_da|platformcreate",
        ]));
        run(self.tool("tpm2_nvwrite").args(["-C", "p", "0x01c0000a", "-i"]).arg(&cert));
    }

    /// The EK certificate stored at NV `0x01c00002` (RSA-2048) or `0x01c0000a` (ECC
    /// P-256), DER, read with tpm2_nvread.
    pub fn ek_cert(&self, ecc: bool) -> Vec<u8> {
        run(self.tool("tpm2_nvread").arg(if ecc { "0x01c0000a" } else { "0x01c00002" }))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_pem() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8"), b"hello");
        assert_eq!(super::pem_to_der(b"-----BEGIN X-----\naGVs\nbG8=\n-----END X-----\n"), b"hello");
    }
}
