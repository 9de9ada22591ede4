//! PKCS#10 certification requests (RFC 2986).
//!
//! ```text
//! CertificationRequest ::= SEQUENCE {
//!      certificationRequestInfo CertificationRequestInfo,
//!      signatureAlgorithm AlgorithmIdentifier{{ SignatureAlgorithms }},
//!      signature          BIT STRING
//! }
//! ```
//!
//! RFC 2986 §3: "The signature process consists of two steps: 1. The value of the
//! certificationRequestInfo component is DER encoded, yielding an octet string. 2. The
//! result of step 1 is signed with the certification request subject's private key". The
//! signature is therefore checked over the certificationRequestInfo bytes exactly as they
//! were received.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5912, rfc8410};
use der::{Decode, Encode, Reader, SliceReader};
use x509_cert::request::CertReq;

use crate::CaError;

/// Largest CSR accepted, in DER bytes. An RSA-8192 CSR is about 1.2 KiB.
pub const MAX_CSR_DER: usize = 16 * 1024;

/// A device key type that policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKeyType {
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// Ed25519 (RFC 8410).
    Ed25519,
    /// RSA with the given modulus size in bits (2048–8192).
    Rsa(u32),
}

/// A CSR whose self-signature has been verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The subject public key, DER SubjectPublicKeyInfo, exactly as in the CSR.
    pub spki_der: Vec<u8>,
    /// The key type.
    pub key_type: DeviceKeyType,
    /// SHA-256 of the CSR's DER encoding (enrollment is idempotent per device and CSR).
    pub sha256: [u8; 32],
}

/// Parse a CSR given as PEM (`CERTIFICATE REQUEST`, or the older `NEW CERTIFICATE
/// REQUEST`) or DER, check the key type against policy, and verify the self-signature
/// (proof of possession of the private key).
pub fn parse_and_verify(input: &[u8]) -> Result<VerifiedCsr, CaError> {
    parse(input, None)
}

/// [`parse_and_verify`] for a client that has already proven possession of the key
/// `proven_spki` (DER SubjectPublicKeyInfo): the key of the certificate it authenticated
/// with over mutual TLS, whose CertificateVerify message (RFC 8446 §4.4.3; RFC 5246 §7.4.8
/// for TLS 1.2) is a signature by that key over the handshake. A CSR for that same key
/// then needs no self-signature check: RFC 2986 §3 has the signature prove that the
/// requester holds the subject's private key, which the handshake proved, and no other
/// field of the CSR reaches the certificate (the profile builds it). A CSR for any other key
/// is verified as always.
pub fn parse_for_key_holder(input: &[u8], proven_spki: &[u8]) -> Result<VerifiedCsr, CaError> {
    parse(input, Some(proven_spki))
}

fn parse(input: &[u8], proven_spki: Option<&[u8]>) -> Result<VerifiedCsr, CaError> {
    let der = to_der(input)?;
    if der.len() > MAX_CSR_DER {
        return Err(CaError::InvalidCsr(format!("larger than {MAX_CSR_DER} bytes")));
    }
    let req =
        CertReq::from_der(&der).map_err(|e| CaError::InvalidCsr(format!("not a PKCS#10 request: {e}")))?;
    if req.info.version != x509_cert::request::Version::V1 {
        return Err(CaError::InvalidCsr("version must be v1 (0)".into()));
    }
    let info_tlv = raw_info_bytes(&der)?;
    let spki = &req.info.public_key;
    let spki_der = spki.to_der()?;
    let key_bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CaError::InvalidCsr("subjectPublicKey has unused bits".into()))?;
    let key_type = key_type(spki.algorithm.oid, spki.algorithm.parameters.as_ref(), key_bits)?;
    let sig_alg = req.algorithm.oid;
    let verifier: &'static dyn VerificationAlgorithm = match (key_type, sig_alg) {
        (DeviceKeyType::EcP256, rfc5912::ECDSA_WITH_SHA_256) => &signature::ECDSA_P256_SHA256_ASN1,
        (DeviceKeyType::EcP384, rfc5912::ECDSA_WITH_SHA_384) => &signature::ECDSA_P384_SHA384_ASN1,
        (DeviceKeyType::Ed25519, rfc8410::ID_ED_25519) => &signature::ED25519,
        (DeviceKeyType::Rsa(_), rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (DeviceKeyType::Rsa(_), rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (DeviceKeyType::Rsa(_), rfc5912::SHA_512_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (kt, oid) => {
            return Err(CaError::InvalidCsr(format!(
                "signature algorithm {oid} does not fit a {kt:?} key or is not allowed"
            )));
        }
    };
    let sig =
        req.signature.as_bytes().ok_or_else(|| CaError::InvalidCsr("signature has unused bits".into()))?;
    if proven_spki != Some(spki_der.as_slice()) {
        UnparsedPublicKey::new(verifier, key_bits)
            .verify(info_tlv, sig)
            .map_err(|_| CaError::InvalidCsr("signature does not verify with the CSR's public key".into()))?;
    }
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(d.as_ref());
    Ok(VerifiedCsr { spki_der, key_type, sha256 })
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CaError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let p = pem::parse(trimmed).map_err(|e| CaError::InvalidCsr(format!("bad PEM: {e}")))?;
        match p.tag() {
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(p.into_contents()),
            other => {
                Err(CaError::InvalidCsr(format!("PEM label is '{other}', expected 'CERTIFICATE REQUEST'")))
            }
        }
    } else {
        Ok(input.to_vec())
    }
}

/// The certificationRequestInfo TLV exactly as received: the first element of the outer
/// SEQUENCE.
fn raw_info_bytes(der: &[u8]) -> Result<&[u8], CaError> {
    let bad = |e: der::Error| CaError::InvalidCsr(format!("not a PKCS#10 request: {e}"));
    let mut r = SliceReader::new(der).map_err(bad)?;
    let outer = der::Header::decode(&mut r).map_err(bad)?;
    if outer.tag != der::Tag::Sequence {
        return Err(CaError::InvalidCsr("not a SEQUENCE".into()));
    }
    r.tlv_bytes().map_err(bad)
}

fn key_type(alg: ObjectIdentifier, params: Option<&der::Any>, key: &[u8]) -> Result<DeviceKeyType, CaError> {
    match alg {
        rfc5912::ID_EC_PUBLIC_KEY => {
            let curve = params
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or_else(|| CaError::UnsupportedKey("EC key without a named curve".into()))?;
            match curve {
                rfc5912::SECP_256_R_1 if key.len() == 65 && key[0] == 4 => Ok(DeviceKeyType::EcP256),
                rfc5912::SECP_384_R_1 if key.len() == 97 && key[0] == 4 => Ok(DeviceKeyType::EcP384),
                rfc5912::SECP_256_R_1 | rfc5912::SECP_384_R_1 => {
                    Err(CaError::UnsupportedKey("EC point must be uncompressed".into()))
                }
                other => {
                    Err(CaError::UnsupportedKey(format!("EC curve {other} is not allowed (P-256, P-384)")))
                }
            }
        }
        rfc8410::ID_ED_25519 if key.len() == 32 && params.is_none() => Ok(DeviceKeyType::Ed25519),
        rfc5912::RSA_ENCRYPTION => {
            let bits = rsa_modulus_bits(key)?;
            if !(2048..=8192).contains(&bits) {
                return Err(CaError::UnsupportedKey(format!("RSA-{bits} is not allowed (2048-8192 bits)")));
            }
            Ok(DeviceKeyType::Rsa(bits))
        }
        other => Err(CaError::UnsupportedKey(format!("key algorithm {other} is not allowed"))),
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 §A.1.1)
fn rsa_modulus_bits(key: &[u8]) -> Result<u32, CaError> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: der::asn1::UintRef<'a>,
        _exponent: der::asn1::UintRef<'a>,
    }
    let k = RsaPublicKey::from_der(key).map_err(|e| CaError::UnsupportedKey(format!("bad RSA key: {e}")))?;
    let m = k.modulus.as_bytes();
    let lead = m.first().copied().unwrap_or(0);
    Ok((m.len() as u32) * 8 - lead.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate_for(alg).expect("keygen");
        let params = rcgen::CertificateParams::new(vec!["ignored.example".into()]).expect("params");
        let csr = params.serialize_request(&key).expect("csr");
        (key, csr.pem().expect("pem"))
    }

    #[test]
    fn accepts_allowed_key_types_pem_and_der() {
        for (alg, kt) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, DeviceKeyType::EcP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, DeviceKeyType::EcP384),
            (&rcgen::PKCS_ED25519, DeviceKeyType::Ed25519),
        ] {
            let (_k, pem_text) = csr_for(alg);
            let v = parse_and_verify(pem_text.as_bytes()).expect("valid CSR");
            assert_eq!(v.key_type, kt);
            let der = pem::parse(&pem_text).expect("pem").into_contents();
            let v2 = parse_and_verify(&der).expect("DER CSR");
            assert_eq!(v.sha256, v2.sha256);
        }
    }

    #[test]
    fn rejects_tampered_signature_and_garbage() {
        let (_k, pem_text) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = pem::parse(&pem_text).expect("pem").into_contents();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        assert!(matches!(parse_and_verify(&der), Err(CaError::InvalidCsr(_))));
        assert!(matches!(parse_and_verify(b"hello"), Err(CaError::InvalidCsr(_))));
        assert!(matches!(parse_and_verify(b""), Err(CaError::InvalidCsr(_))));
        let cert_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse_and_verify(cert_pem.as_bytes()), Err(CaError::InvalidCsr(_))));
    }

    #[test]
    fn a_proven_key_skips_only_its_own_csr_signature() {
        let (key, pem_text) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = pem::parse(&pem_text).expect("pem").into_contents();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let proven = rcgen::PublicKeyData::subject_public_key_info(&key);
        // The key the client proved it holds: its CSR's signature is not checked again.
        let v = parse_for_key_holder(&der, &proven).expect("the proven key's CSR");
        assert_eq!(v.spki_der, proven);
        assert_eq!(v.key_type, DeviceKeyType::EcP256);
        // Anyone else's CSR is verified: a bad signature is refused.
        let (other, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(matches!(
            parse_for_key_holder(&der, &rcgen::PublicKeyData::subject_public_key_info(&other)),
            Err(CaError::InvalidCsr(_))
        ));
        assert!(matches!(parse_and_verify(&der), Err(CaError::InvalidCsr(_))));
        // A good CSR for another key passes either way; parsing and policy still apply.
        let (_k, good) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(parse_for_key_holder(good.as_bytes(), &proven).is_ok());
        assert!(matches!(parse_for_key_holder(b"hello", &proven), Err(CaError::InvalidCsr(_))));
    }

    #[test]
    fn rejects_a_csr_whose_key_was_swapped() {
        // Sign a request with key A, then put key B's SPKI in it: proof of possession fails.
        let (_a, pem_a) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_b, pem_b) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let der_a = pem::parse(&pem_a).expect("pem").into_contents();
        let der_b = pem::parse(&pem_b).expect("pem").into_contents();
        let mut ra = CertReq::from_der(&der_a).expect("parse");
        let rb = CertReq::from_der(&der_b).expect("parse");
        ra.info.public_key = rb.info.public_key;
        let swapped = ra.to_der().expect("encode");
        let err = parse_and_verify(&swapped).expect_err("must fail");
        assert_eq!(err.kind(), devid_core::ErrorKind::InvalidInput);
    }
}
