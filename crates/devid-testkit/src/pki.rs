//! Device-side PKI for tests: keys and CSRs made with rcgen (as a device would), and
//! `openssl` as the independent verifier.

use std::path::Path;
use std::process::Command;

/// A device key pair (P-256) and a CSR for it, PEM.
pub fn csr_p256(common_name: &str) -> (rcgen::KeyPair, String) {
    csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, common_name, &[], false)
}

/// A CSR that asks for more than it may get: extra DNS SANs and `CA:TRUE`. The issued
/// certificate must ignore all of it.
pub fn csr_greedy(common_name: &str) -> (rcgen::KeyPair, String) {
    csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, common_name, &["evil.example.com", "*.example.com"], true)
}

/// A key of the given algorithm and a CSR for it.
pub fn csr_for(
    alg: &'static rcgen::SignatureAlgorithm,
    common_name: &str,
    sans: &[&str],
    ask_ca: bool,
) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key generation");
    let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    if ask_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let csr = params.serialize_request(&key).expect("CSR");
    let pem = csr.pem().expect("PEM");
    (key, pem)
}

/// Run `openssl` with `args` in `dir`; returns (success, stdout + stderr). Panics with the
/// install line when openssl is missing.
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run openssl ({e}): install it with `apt-get install -y openssl`"),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl verify -CAfile root.pem -untrusted issuing.pem -purpose sslclient -x509_strict
/// leaf.pem`, with the three PEMs written into `dir`.
pub fn openssl_verify(dir: &Path, root_pem: &str, issuing_pem: &str, leaf_pem: &str) -> (bool, String) {
    std::fs::write(dir.join("root.pem"), root_pem).expect("write root");
    std::fs::write(dir.join("issuing.pem"), issuing_pem).expect("write issuing");
    std::fs::write(dir.join("leaf.pem"), leaf_pem).expect("write leaf");
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "-purpose",
            "sslclient",
            "-x509_strict",
            "leaf.pem",
        ],
    )
}

/// `openssl x509 -noout -text` of a PEM certificate.
pub fn openssl_text(dir: &Path, cert_pem: &str) -> String {
    let path = dir.join("text.pem");
    std::fs::write(&path, cert_pem).expect("write cert");
    let (ok, text) = openssl(dir, &["x509", "-noout", "-text", "-in", "text.pem"]);
    assert!(ok, "openssl x509 failed: {text}");
    text
}

/// Split a PEM bundle into its blocks, each with its BEGIN/END lines.
pub fn split_pem(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}
