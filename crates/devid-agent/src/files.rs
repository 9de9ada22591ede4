//! The agent's output directory: `key.pem` (0600, PKCS#8), `cert.pem`, `chain.pem`, and
//! for TPM keys `key.tpm` instead of `key.pem`. Every file is replaced atomically: written
//! to a new temporary file in the same directory, flushed to disk, then renamed over the
//! old one (POSIX `rename(2)` is atomic), and the directory is flushed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use der::Decode;
use devid_core::UnixTime;

use crate::error::AgentError;

/// The name of the device key file (PKCS#8 PEM).
pub const KEY_PEM: &str = "key.pem";
/// The name of the TPM key file (TPM2B_PUBLIC and TPM2B_PRIVATE blobs).
pub const KEY_TPM: &str = "key.tpm";
/// The name of the device certificate file (PEM).
pub const CERT_PEM: &str = "cert.pem";
/// The name of the chain file (issuing CA then root, PEM).
pub const CHAIN_PEM: &str = "chain.pem";

/// The paths of an output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }
    /// `key.pem`.
    pub fn key(&self) -> PathBuf {
        self.dir.join(KEY_PEM)
    }
    /// `key.tpm`.
    pub fn key_tpm(&self) -> PathBuf {
        self.dir.join(KEY_TPM)
    }
    /// `cert.pem`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join(CERT_PEM)
    }
    /// `chain.pem`.
    pub fn chain(&self) -> PathBuf {
        self.dir.join(CHAIN_PEM)
    }
    /// Whether a certificate is there.
    pub fn has_certificate(&self) -> bool {
        self.cert().is_file()
    }
}

/// Create `dir` (and its parents) with mode 0700 when it does not exist. An existing
/// directory keeps its mode.
pub fn ensure_dir(dir: &Path) -> Result<(), AgentError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))
}

/// A file to be written by [`write_files`].
#[derive(Debug)]
pub struct NewFile<'a> {
    /// The file name inside the directory.
    pub name: &'a str,
    /// The contents.
    pub contents: &'a [u8],
    /// The permission bits (0600 for keys, 0644 for certificates).
    pub mode: u32,
}

/// Replace several files of `dir` atomically each: all temporary files are written and
/// flushed first, then renamed one after the other, so that the window in which the
/// directory holds a mix of old and new files is as short as possible.
pub fn write_files(dir: &Path, files: &[NewFile<'_>]) -> Result<(), AgentError> {
    ensure_dir(dir)?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for f in files {
            let target = dir.join(f.name);
            let tmp = write_temp(dir, f)?;
            staged.push((tmp, target));
        }
        for (tmp, target) in &staged {
            fs::rename(tmp, target)
                .map_err(|e| AgentError::io(format!("renaming to {}", target.display()), e))?;
        }
        // Make the renames durable (the directory entry is in the directory).
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AgentError::io(format!("flushing {}", dir.display()), e))
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// Replace one file atomically.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), AgentError> {
    write_files(dir, &[NewFile { name, contents, mode }])
}

/// Write a new temporary file next to the target, created exclusively with `mode` (so a
/// key is never readable by others, not even for a moment), and flush it.
fn write_temp(dir: &Path, f: &NewFile<'_>) -> Result<PathBuf, AgentError> {
    let mut rnd = [0u8; 8];
    devid_core::Entropy::fill(&devid_core::OsEntropy, &mut rnd);
    let tmp = dir.join(format!(".{}.{}.{}.tmp", f.name, std::process::id(), hex::encode(rnd)));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(f.mode).open(&tmp)?;
        // The umask may have removed bits; set exactly the mode asked for.
        file.set_permissions(fs::Permissions::from_mode(f.mode))?;
        file.write_all(f.contents)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(AgentError::io(format!("writing {}", dir.join(f.name).display()), e))
        }
    }
}

/// Read a file to a string.
pub fn read_text(path: &Path) -> Result<String, AgentError> {
    fs::read_to_string(path).map_err(|e| AgentError::io(format!("reading {}", path.display()), e))
}

/// What the agent needs to know about its current certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// notBefore (RFC 5280 §4.1.2.5).
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The subject's common name, when it has one (the device id in devid's profile).
    pub common_name: Option<String>,
}

/// Read the validity, serial and CN of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, AgentError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| AgentError::crypto(format!("the certificate does not parse: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let secs = |t: &x509_cert::time::Time| UnixTime(t.to_unix_duration().as_secs() as i64);
    let common_name = tbs.subject.0.iter().flat_map(|rdn| rdn.0.iter()).find_map(|atv| {
        if atv.oid == ID_AT_COMMON_NAME {
            std::str::from_utf8(atv.value.value()).ok().map(str::to_string)
        } else {
            None
        }
    });
    Ok(CertInfo {
        not_before: secs(&tbs.validity.not_before),
        not_after: secs(&tbs.validity.not_after),
        serial: hex::encode(tbs.serial_number.as_bytes()),
        common_name,
    })
}

/// The SubjectPublicKeyInfo of a DER certificate, DER, borrowed from it (RFC 5280 §4.1.2.7).
///
/// ```text
/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
/// TBSCertificate ::= SEQUENCE { version [0] EXPLICIT (optional), serialNumber, signature,
///      issuer, validity, subject, subjectPublicKeyInfo, ... }
/// ```
///
/// Each field is read as a TLV and the key is the seventh (sixth without a version), so
/// the names and extensions around it are not decoded: the simulator checks every answer
/// this way, and decoding the whole certificate was an eighth of its CPU (perf, issue #6).
/// Where the agent needs more of a certificate it decodes it whole ([`cert_info`]).
pub fn cert_spki_der(der: &[u8]) -> Result<&[u8], AgentError> {
    use der::{Reader, SliceReader, Tag, TagNumber};
    let bad = |e: der::Error| AgentError::crypto(format!("the certificate does not parse: {e}"));
    let mut reader = SliceReader::new(der).map_err(bad)?;
    let spki = reader
        .sequence(|cert| {
            let spki = cert.sequence(|tbs| {
                if tbs.peek_tag()? == (Tag::ContextSpecific { constructed: true, number: TagNumber::N0 }) {
                    tbs.tlv_bytes()?;
                }
                for _field in ["serialNumber", "signature", "issuer", "validity", "subject"] {
                    tbs.tlv_bytes()?;
                }
                let spki = tbs.tlv_bytes()?;
                while !tbs.is_finished() {
                    tbs.tlv_bytes()?;
                }
                Ok(spki)
            })?;
            cert.tlv_bytes()?; // signatureAlgorithm
            cert.tlv_bytes()?; // signatureValue
            Ok(spki)
        })
        .map_err(bad)?;
    let spki = reader.finish(spki).map_err(bad)?;
    if spki.first() != Some(&0x30) {
        return Err(AgentError::crypto("the certificate does not parse: its public key is not a SEQUENCE"));
    }
    Ok(spki)
}

/// id-at-commonName, 2.5.4.3 (RFC 4519 §2.3).
const ID_AT_COMMON_NAME: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_public_key_is_read_where_the_whole_decoding_finds_it() {
        use der::Encode;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["device-1".into()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let v3 = params.self_signed(&key).expect("cert").der().to_vec();
        let whole = |der: &[u8]| {
            let cert = x509_cert::Certificate::from_der(der).expect("decodes");
            cert.tbs_certificate.subject_public_key_info.to_der().expect("encodes")
        };
        assert_eq!(cert_spki_der(&v3).expect("v3"), whole(&v3).as_slice());
        assert_eq!(
            cert_spki_der(&v3).expect("v3"),
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        // Without the version field (v1: DER leaves the default out) and the extensions.
        let mut cert = x509_cert::Certificate::from_der(&v3).expect("decodes");
        cert.tbs_certificate.version = x509_cert::Version::V1;
        cert.tbs_certificate.extensions = None;
        let v1 = cert.to_der().expect("encodes");
        let version_v3 = [0xa0, 0x03, 0x02, 0x01, 0x02];
        assert!(v3.windows(5).any(|w| w == version_v3));
        assert!(!v1.windows(5).any(|w| w == version_v3), "the version field is gone");
        assert_eq!(cert_spki_der(&v1).expect("v1"), whole(&v1).as_slice());
        // Not a certificate: an error each, never a slice of something else.
        assert!(cert_spki_der(&v3[..v3.len() - 1]).is_err(), "truncated");
        assert!(cert_spki_der(&[v3.as_slice(), &[0]].concat()).is_err(), "trailing byte");
        assert!(cert_spki_der(b"").is_err());
        assert!(cert_spki_der(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err(), "too few fields");
        let csr = params.serialize_request(&key).expect("csr").der().to_vec();
        assert!(cert_spki_der(&csr).is_err(), "a CSR is not a certificate");
    }

    #[test]
    fn keys_are_0600_and_the_new_dir_0700() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a/b");
        write_atomic(&dir, KEY_PEM, b"secret", 0o600).expect("writes");
        write_atomic(&dir, CERT_PEM, b"cert", 0o644).expect("writes");
        assert_eq!(fs::metadata(dir.join(KEY_PEM)).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join(CERT_PEM)).expect("meta").mode() & 0o777, 0o644);
        assert_eq!(fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        assert_eq!(fs::read(dir.join(KEY_PEM)).expect("read"), b"secret");
    }

    #[test]
    fn replacing_is_atomic_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), CERT_PEM, b"old", 0o644).expect("writes");
        // A reader holding the old file keeps seeing the old contents: the new file is a
        // new inode renamed over the name, not the old file rewritten in place.
        let old_ino = fs::metadata(dir.path().join(CERT_PEM)).expect("meta").ino();
        write_files(
            dir.path(),
            &[
                NewFile { name: CERT_PEM, contents: b"new", mode: 0o644 },
                NewFile { name: CHAIN_PEM, contents: b"chain", mode: 0o644 },
            ],
        )
        .expect("writes");
        let meta = fs::metadata(dir.path().join(CERT_PEM)).expect("meta");
        assert_ne!(meta.ino(), old_ino);
        assert_eq!(fs::read(dir.path().join(CERT_PEM)).expect("read"), b"new");
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), CERT_PEM, b"old", 0o644).expect("writes");
        // Renames run only after every temporary file is written: when one cannot be
        // written (here: a name inside a missing directory), nothing is replaced.
        let r = write_files(
            dir.path(),
            &[
                NewFile { name: CERT_PEM, contents: b"new", mode: 0o644 },
                NewFile { name: "missing/x", contents: b"x", mode: 0o644 },
            ],
        );
        assert!(r.is_err());
        assert_eq!(fs::read(dir.path().join(CERT_PEM)).expect("read"), b"old");
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "temporary files are removed: {names:?}");
    }
}
