//! Keys on the device: the P-256 device key and its PKCS#10 CSR (RFC 2986), the factory
//! (IDevID) key that signs the binding, and symmetric key material.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::AgentError;

/// The device's own key pair: ECDSA P-256 (FIPS 186-5), generated on the device and never
/// sent anywhere. Its private part is written only as PKCS#8 (RFC 5958), mode 0600.
pub struct DeviceKey {
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(P-256)")
    }
}

/// A PKCS#10 certification request (RFC 2986), DER and PEM.
#[derive(Debug, Clone)]
pub struct Csr {
    /// DER, which the binding hashes.
    pub der: Vec<u8>,
    /// PEM (`CERTIFICATE REQUEST`, RFC 7468 §7), which the protocol sends.
    pub pem: String,
}

impl DeviceKey {
    /// A fresh P-256 key from the system's CSPRNG (aws-lc-rs).
    pub fn generate() -> Result<Self, AgentError> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|key| DeviceKey { key })
            .map_err(|e| AgentError::crypto(format!("cannot generate a P-256 key: {e}")))
    }

    /// Read a PKCS#8 PEM private key (`PRIVATE KEY`) written by [`DeviceKey::pkcs8_pem`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, AgentError> {
        let key = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| AgentError::crypto(format!("the device key is not a PKCS#8 key: {e}")))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(AgentError::crypto("the device key is not an ECDSA P-256 key"));
        }
        Ok(DeviceKey { key })
    }

    /// The private key as PKCS#8 PEM (RFC 5958, RFC 7468 §10). Zeroized when dropped.
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// The SubjectPublicKeyInfo, DER (RFC 5280 §4.1.2.7).
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    /// A CSR for this key (RFC 2986), self-signed with ECDSA-with-SHA256. The subject is
    /// `CN=<device id>` when the id is known, else empty: the CA builds the certificate from
    /// its own profile anyway.
    pub fn csr(&self, common_name: Option<&str>) -> Result<Csr, AgentError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let req = params
            .serialize_request(&self.key)
            .map_err(|e| AgentError::crypto(format!("cannot make the CSR: {e}")))?;
        let pem = req.pem().map_err(|e| AgentError::crypto(format!("cannot encode the CSR: {e}")))?;
        Ok(Csr { der: req.der().to_vec(), pem })
    }
}

/// The factory (IDevID) private key that signs the binding for the `x509` method, as the
/// protocol says for its type: ECDSA P-256 with SHA-256 or P-384 with SHA-384 (DER
/// signature, RFC 3279 §2.2.3), RSA PKCS#1 v1.5 with SHA-256 (RFC 8017 §8.2), Ed25519
/// (RFC 8032 §5.1).
pub enum FactoryKey {
    /// ECDSA P-256.
    P256(EcdsaKeyPair),
    /// ECDSA P-384.
    P384(EcdsaKeyPair),
    /// RSA.
    Rsa(RsaKeyPair),
    /// Ed25519.
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for FactoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FactoryKey::P256(_) => "FactoryKey(P-256)",
            FactoryKey::P384(_) => "FactoryKey(P-384)",
            FactoryKey::Rsa(_) => "FactoryKey(RSA)",
            FactoryKey::Ed25519(_) => "FactoryKey(Ed25519)",
        })
    }
}

impl FactoryKey {
    /// Read a PKCS#8 (RFC 5208 / RFC 5958) PEM private key (`PRIVATE KEY`).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, AgentError> {
        let block = pem::parse_many(text)
            .map_err(|e| AgentError::crypto(format!("the IDevID key is not PEM: {e}")))?
            .into_iter()
            .find(|b| b.tag() == "PRIVATE KEY")
            .ok_or_else(|| {
                AgentError::crypto("the IDevID key file has no PKCS#8 `PRIVATE KEY` block (convert it with `openssl pkcs8 -topk8 -nocrypt`)")
            })?;
        let der = Zeroizing::new(block.into_contents());
        Self::from_pkcs8_der(&der)
    }

    /// Read a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, AgentError> {
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der) {
            return Ok(FactoryKey::P256(k));
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, der) {
            return Ok(FactoryKey::P384(k));
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            return Ok(FactoryKey::Rsa(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(FactoryKey::Ed25519(k));
        }
        Err(AgentError::crypto("the IDevID key is not a P-256, P-384, RSA or Ed25519 PKCS#8 key"))
    }

    /// Sign `msg` (the binding).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, AgentError> {
        let rng = SystemRandom::new();
        let fail = |_| AgentError::crypto("signing with the IDevID key failed");
        match self {
            FactoryKey::P256(k) | FactoryKey::P384(k) => {
                k.sign(&rng, msg).map(|s| s.as_ref().to_vec()).map_err(fail)
            }
            FactoryKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig).map_err(fail)?;
                Ok(sig)
            }
            FactoryKey::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

/// The DER certificates of a PEM text, in order (RFC 7468 §5 `CERTIFICATE` blocks).
pub fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, AgentError> {
    // rustls-pki-types' reader (RFC 7468): a single pass over the bytes. The `pem` crate's
    // parser, used before, built each block's text char by char and was 6 % of the
    // simulator's CPU per renewal.
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| AgentError::crypto(format!("not PEM: {e}"))))
        .collect()
}

/// PEM of one DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Symmetric key material given on the command line or in a file: the file's bytes are
/// read as base64 (standard or URL-safe, padding optional, RFC 4648 §4–5) when they are
/// base64 text, else taken as raw bytes. A value that is not a readable file is decoded
/// as base64. Zeroized when dropped.
pub fn read_key_material(value: &str, file_only: bool) -> Result<Zeroizing<Vec<u8>>, AgentError> {
    let path = std::path::Path::new(value);
    let raw = if path.is_file() {
        Zeroizing::new(
            std::fs::read(path).map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?,
        )
    } else if file_only {
        return Err(AgentError::usage(format!("{value}: no such file")));
    } else {
        return decode_b64_key(value.as_bytes())
            .ok_or_else(|| AgentError::usage("the key is neither a file nor base64 text"));
    };
    Ok(decode_b64_key(&raw).unwrap_or(raw))
}

fn decode_b64_key(text: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let s = std::str::from_utf8(text).ok()?.trim();
    if s.is_empty()
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='))
    {
        return None;
    }
    let unpadded = s.trim_end_matches('=');
    let std_alphabet: String = unpadded
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let std_alphabet = Zeroizing::new(std_alphabet);
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(std_alphabet.as_bytes()).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_p256_signed_and_names_the_device() {
        use der::{Decode, Encode};
        let key = DeviceKey::generate().expect("keygen");
        let csr = key.csr(Some("sensor-0001")).expect("csr");
        assert!(csr.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let req = x509_cert::request::CertReq::from_der(&csr.der).expect("parses");
        assert_eq!(req.info.subject.to_string(), "CN=sensor-0001");
        assert_eq!(req.info.public_key.to_der().expect("encodes"), key.spki_der());
        // ecdsa-with-SHA256 (RFC 5758 §3.2), and the signature verifies over the info.
        assert_eq!(req.algorithm.oid.to_string(), "1.2.840.10045.4.3.2");
        let point = req.info.public_key.subject_public_key.raw_bytes();
        let pk = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point);
        let tbs = req.info.to_der().expect("encodes");
        pk.verify(&tbs, req.signature.raw_bytes()).expect("CSR signature verifies");
        // Without an id the subject is empty.
        let csr = key.csr(None).expect("csr");
        let req = x509_cert::request::CertReq::from_der(&csr.der).expect("parses");
        assert!(req.info.subject.0.is_empty());
    }

    #[test]
    fn pem_certificates_keeps_certificate_blocks_in_order() {
        let a = certificate_pem(&[0x30, 0x03, 0x02, 0x01, 0x01]);
        let b = certificate_pem(&[0x30, 0x03, 0x02, 0x01, 0x02]);
        let key = DeviceKey::generate().expect("keygen").pkcs8_pem();
        // Text around the blocks, a key between them and CRLF line ends are all allowed.
        let text = format!("leaf:\n{a}{}\r\n{}", key.as_str(), b.replace('\n', "\r\n"));
        let got = pem_certificates(&text).expect("parses");
        assert_eq!(got, vec![vec![0x30, 0x03, 0x02, 0x01, 0x01], vec![0x30, 0x03, 0x02, 0x01, 0x02]]);
        assert!(pem_certificates("no PEM here").expect("parses").is_empty());
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(pem_certificates(&a[..a.len() - 10]).is_err());
    }

    #[test]
    fn device_key_round_trips_through_pkcs8_pem() {
        let key = DeviceKey::generate().expect("keygen");
        let pem = key.pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = DeviceKey::from_pkcs8_pem(&pem).expect("reads");
        assert_eq!(again.spki_der(), key.spki_der());
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("keygen");
        assert!(DeviceKey::from_pkcs8_pem(&rsa.serialize_pem()).is_err());
    }

    #[test]
    fn factory_keys_of_each_type_are_recognised() {
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
            (&rcgen::PKCS_RSA_SHA256, "RSA"),
            (&rcgen::PKCS_ED25519, "Ed25519"),
        ] {
            let k = rcgen::KeyPair::generate_for(alg).expect("keygen");
            let fk = FactoryKey::from_pkcs8_pem(&k.serialize_pem()).expect("reads");
            assert!(format!("{fk:?}").contains(want), "{fk:?}");
            assert!(!fk.sign(b"binding").expect("signs").is_empty());
        }
        assert!(FactoryKey::from_pkcs8_pem("junk").is_err());
    }

    #[test]
    fn key_material_from_base64_or_file() {
        let want = vec![0xfbu8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&want);
        assert_eq!(*read_key_material(&b64, false).expect("b64"), want);
        let url = crate::protocol::b64(&want);
        assert_eq!(*read_key_material(&url, false).expect("b64url"), want);
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("k.b64");
        std::fs::write(&text, format!("{b64}\n")).expect("write");
        assert_eq!(*read_key_material(text.to_str().expect("utf8"), true).expect("file"), want);
        let raw = dir.path().join("k.bin");
        std::fs::write(&raw, &want).expect("write");
        assert_eq!(*read_key_material(raw.to_str().expect("utf8"), true).expect("file"), want);
        assert!(read_key_material("/nonexistent/key", true).is_err());
        assert!(read_key_material("not base64!", false).is_err());
    }
}
