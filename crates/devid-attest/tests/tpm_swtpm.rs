//! Cross-check of the server side against a real software TPM driven by tpm2-tools (an
//! implementation independent of devid's agent): the credential `devid_attest::tpm::start`
//! makes in Rust is activated by swtpm's TPM2_ActivateCredential, for RSA-2048 and ECC
//! P-256 endorsement keys, with swtpm's own EK certificates accepted by the chain check.
//!
//! The software TPM is `devid_testkit::swtpm::Swtpm` (shared with devid-agent and the
//! end-to-end tests of the devid binary). Needs the Debian packages swtpm, swtpm-tools,
//! gnutls-bin and tpm2-tools: the test fails, naming them, when they are missing.

use devid_attest::tpm::{TpmPolicy, start};
use devid_core::{Clock, OsEntropy, SystemClock};
use devid_testkit::swtpm::{Swtpm, run};
use std::process::Stdio;

/// EK (default TCG template) and AK under it, made by tpm2-tools; returns (EK cert DER,
/// EK TPM2B_PUBLIC, AK TPM2B_PUBLIC). The EK certificate is the one the harness's
/// manufacturing stored at its TCG NV index.
fn identity(tpm: &Swtpm, ecc: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    tpm.create_ek_ak(ecc);
    let read = |p: &str| std::fs::read(tpm.path(p)).expect(p);
    (tpm.ek_cert(ecc), read("ek.pub"), read("ak.pub"))
}

/// tpm2_activatecredential with the EK's PolicySecret(TPM_RH_ENDORSEMENT) session.
fn activate(tpm: &Swtpm, blob: &[u8], secret: &[u8]) -> Result<Vec<u8>, String> {
    // tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
    // TPM2B_ENCRYPTED_SECRET.
    let file = [&0xBADC_C0DEu32.to_be_bytes()[..], &1u32.to_be_bytes(), blob, secret].concat();
    std::fs::write(tpm.path("cred.in"), file).expect("write");
    run(tpm.tool("tpm2_startauthsession").arg("--policy-session").arg("-S").arg(tpm.path("session.ctx")));
    run(tpm.tool("tpm2_policysecret").arg("-S").arg(tpm.path("session.ctx")).args(["-c", "e"]));
    let out = tpm
        .tool("tpm2_activatecredential")
        .arg("-c")
        .arg(tpm.path("ak.ctx"))
        .arg("-C")
        .arg(tpm.path("ek.ctx"))
        .arg("-i")
        .arg(tpm.path("cred.in"))
        .arg("-o")
        .arg(tpm.path("cred.out"))
        .arg("-P")
        .arg(format!("session:{}", tpm.path("session.ctx").display()))
        .stdin(Stdio::null())
        .output()
        .expect("tpm2_activatecredential");
    let _ = tpm.tool("tpm2_flushcontext").arg(tpm.path("session.ctx")).output();
    tpm.flush_transients();
    if out.status.success() {
        Ok(std::fs::read(tpm.path("cred.out")).expect("cred.out"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn cross_check(ecc: bool) {
    use sha2::{Digest, Sha256};
    let tpm = Swtpm::start();
    let (ek_cert, ek_public, ak_public) = identity(&tpm, ecc);
    let policy = TpmPolicy { ek_anchors: vec![tpm.vendor_ca_der()] };
    let (pending, ch) =
        start(&policy, &ek_cert, &ek_public, &ak_public, &OsEntropy, SystemClock.now()).expect("start");
    let secret =
        activate(&tpm, &ch.credential_blob, &ch.encrypted_secret).expect("the TPM activates the credential");
    assert_eq!(secret.len(), 32);
    assert_eq!(Sha256::digest(&secret).to_vec(), pending.secret_sha256);
    assert_eq!(pending.summary["ek_type"], if ecc { "ecc-p256" } else { "rsa-2048" });

    // A credential for another name does not activate: flip a byte of the encrypted
    // identity, the TPM's integrity HMAC refuses it.
    let mut blob = ch.credential_blob.clone();
    let last = blob.len() - 1;
    blob[last] ^= 0x80;
    assert!(activate(&tpm, &blob, &ch.encrypted_secret).is_err());
}

#[test]
fn swtpm_activates_rsa2048_credentials() {
    cross_check(false);
}

#[test]
fn swtpm_activates_ecc_p256_credentials() {
    cross_check(true);
}
