//! Cross-check of the server side against a real software TPM driven by tpm2-tools (an
//! implementation independent of devid's agent): the credential `devid_attest::tpm::start`
//! makes in Rust is activated by swtpm's TPM2_ActivateCredential, for RSA-2048 and ECC
//! P-256 endorsement keys, with swtpm's own EK certificates accepted by the chain check.
//!
//! Needs the Debian packages swtpm, swtpm-tools, gnutls-bin and tpm2-tools: the test fails,
//! naming them, when they are missing.

use devid_attest::tpm::{TpmPolicy, start};
use devid_core::{Clock, OsEntropy, SystemClock};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: &str = "swtpm swtpm-tools gnutls-bin tpm2-tools";

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install {PACKAGES})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    der::pem::decode_vec(&text).expect("PEM").1
}

/// swtpm manufactured by swtpm_setup (RSA-2048 EK certificate from a private local CA),
/// plus an ECC P-256 EK certificate from the same CA (swtpm_localca); killed on drop.
struct Swtpm {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Swtpm {
    fn start() -> Swtpm {
        let tools = [
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
            "tpm2_nvread",
        ];
        let missing: Vec<&str> = tools.into_iter().filter(|t| which(t).is_none()).collect();
        assert!(missing.is_empty(), "missing {missing:?}: install the Debian packages {PACKAGES}");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("state")).expect("mkdir");
        std::fs::create_dir(d.join("ca")).expect("mkdir");
        let ca = d.join("ca");
        let localca = d.join("swtpm-localca.conf");
        std::fs::write(
            &localca,
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .expect("conf");
        let setup = d.join("swtpm_setup.conf");
        std::fs::write(
            &setup,
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /dev/null\n",
                which("swtpm_localca").map(|p| p.display().to_string()).unwrap_or_default(),
                localca.display()
            ),
        )
        .expect("conf");
        run(Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--pcr-banks", "sha256", "--tpmstate"])
            .arg(d.join("state"))
            .arg("--config")
            .arg(&setup)
            .arg("--logfile")
            .arg(d.join("setup.log")));
        let port = (0..100)
            .find_map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").ok()?;
                let p = l.local_addr().ok()?.port();
                (p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()).then_some(p)
            })
            .expect("free ports");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
            .arg("--tpmstate")
            .arg(format!("dir={}", d.join("state").display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start swtpm: {e} (install {PACKAGES})"));
        let tpm = Swtpm { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        tpm
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(name);
        c.args(["-T", &self.tcti()]);
        c
    }

    fn flush_transients(&self) {
        run(self.tool("tpm2_flushcontext").arg("-t"));
    }

    /// EK (default TCG template) and AK under it; returns (EK cert DER, EK TPM2B_PUBLIC,
    /// AK TPM2B_PUBLIC). For ECC the EK certificate is made here with the local CA.
    fn identity(&self, ecc: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (g, s) = if ecc { ("ecc", "ecdsa") } else { ("rsa", "rsassa") };
        run(self
            .tool("tpm2_createek")
            .args(["-G", g, "-c"])
            .arg(self.path("ek.ctx"))
            .arg("-u")
            .arg(self.path("ek.pub")));
        self.flush_transients();
        run(self
            .tool("tpm2_createek")
            .args(["-G", g, "-c"])
            .arg(self.path("ek.ctx"))
            .arg("-u")
            .arg(self.path("ek.pem"))
            .args(["-f", "pem"]));
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
        let ek_cert = if ecc {
            let spki = pem_der(&self.path("ek.pem"));
            let xy = &spki[spki.len() - 64..];
            let out = self.path("ek256");
            std::fs::create_dir_all(&out).expect("mkdir");
            run(Command::new("swtpm_localca")
                .args(["--type", "ek", "--ek"])
                .arg(format!("x={},y={},id=secp256r1", hex::encode(&xy[..32]), hex::encode(&xy[32..])))
                .arg("--dir")
                .arg(&out)
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
                .arg(self.path("swtpm-localca.conf"))
                .args(["--optsfile", "/dev/null"]));
            std::fs::read(out.join("ek.cert")).expect("ek.cert")
        } else {
            // swtpm_setup stored it at the TCG index of the RSA-2048 EK certificate.
            run(self.tool("tpm2_nvread").arg("0x01c00002"))
        };
        let read = |p: &str| std::fs::read(self.path(p)).expect(p);
        (ek_cert, read("ek.pub"), read("ak.pub"))
    }

    /// tpm2_activatecredential with the EK's PolicySecret(TPM_RH_ENDORSEMENT) session.
    fn activate(&self, blob: &[u8], secret: &[u8]) -> Result<Vec<u8>, String> {
        // tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
        // TPM2B_ENCRYPTED_SECRET.
        let file = [&0xBADC_C0DEu32.to_be_bytes()[..], &1u32.to_be_bytes(), blob, secret].concat();
        std::fs::write(self.path("cred.in"), file).expect("write");
        run(self
            .tool("tpm2_startauthsession")
            .arg("--policy-session")
            .arg("-S")
            .arg(self.path("session.ctx")));
        run(self.tool("tpm2_policysecret").arg("-S").arg(self.path("session.ctx")).args(["-c", "e"]));
        let out = self
            .tool("tpm2_activatecredential")
            .arg("-c")
            .arg(self.path("ak.ctx"))
            .arg("-C")
            .arg(self.path("ek.ctx"))
            .arg("-i")
            .arg(self.path("cred.in"))
            .arg("-o")
            .arg(self.path("cred.out"))
            .arg("-P")
            .arg(format!("session:{}", self.path("session.ctx").display()))
            .stdin(Stdio::null())
            .output()
            .expect("tpm2_activatecredential");
        let _ = self.tool("tpm2_flushcontext").arg(self.path("session.ctx")).output();
        self.flush_transients();
        if out.status.success() {
            Ok(std::fs::read(self.path("cred.out")).expect("cred.out"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn cross_check(ecc: bool) {
    use sha2::{Digest, Sha256};
    let tpm = Swtpm::start();
    let (ek_cert, ek_public, ak_public) = tpm.identity(ecc);
    let policy = TpmPolicy { ek_anchors: vec![pem_der(&tpm.path("ca/issuercert.pem"))] };
    let (pending, ch) =
        start(&policy, &ek_cert, &ek_public, &ak_public, &OsEntropy, SystemClock.now()).expect("start");
    let secret =
        tpm.activate(&ch.credential_blob, &ch.encrypted_secret).expect("the TPM activates the credential");
    assert_eq!(secret.len(), 32);
    assert_eq!(Sha256::digest(&secret).to_vec(), pending.secret_sha256);
    assert_eq!(pending.summary["ek_type"], if ecc { "ecc-p256" } else { "rsa-2048" });

    // A credential for another name does not activate: flip a byte of the encrypted
    // identity, the TPM's integrity HMAC refuses it.
    let mut blob = ch.credential_blob.clone();
    let last = blob.len() - 1;
    blob[last] ^= 0x80;
    assert!(tpm.activate(&blob, &ch.encrypted_secret).is_err());
}

#[test]
fn swtpm_activates_rsa2048_credentials() {
    cross_check(false);
}

#[test]
fn swtpm_activates_ecc_p256_credentials() {
    cross_check(true);
}
