//! TPM 2.0 attestation, server side: pure Rust, no TPM, no I/O.
//!
//! Two steps (PROTOCOL.md, "Challenge" and "Enroll"):
//!
//! 1. [`start`]: the EK certificate chains to a TPM vendor anchor (RFC 5280 path validation
//!    with rustls-webpki, accepting the TCG EK certificate profile's EKU
//!    `tcg-kp-EKCertificate` 2.23.133.8.1); the EK public area is the certificate's key; the
//!    AK is a restricted signing key that never leaves the TPM (TPM 2.0 Part 2 §8.3,
//!    TPMA_OBJECT); a credential is made for the AK's Name with a fresh 32-byte secret
//!    (TPM2_MakeCredential, TPM 2.0 Part 1 §24 "Credential Protection", done in software by
//!    [`credential`]). Only the TPM holding both the EK and an object with that Name can
//!    recover the secret with TPM2_ActivateCredential (Part 3 §12.5).
//! 2. [`finish`]: the device returns the secret (proving the AK lives next to the EK), the
//!    public area of the CSR's key, and TPM2_Certify of that key by the AK (Part 3 §18.2)
//!    with the [`binding`](crate::binding) as qualifying data.
//!
//! Byte formats (all TPM canonical, big-endian, Part 1 §18): `ek_public`, `ak_public` and
//! `key_public` are TPM2B_PUBLIC; `credential_blob` is TPM2B_ID_OBJECT; `encrypted_secret`
//! is TPM2B_ENCRYPTED_SECRET; `certify_info` is TPM2B_ATTEST (the signature is over its
//! contents, the TPMS_ATTEST); `certify_signature` is a TPMT_SIGNATURE.

pub mod credential;
pub mod wire;

use crate::{AttestError, Attested, Failure};
use der::{Decode, Encode};
use devid_core::{Entropy, UnixTime};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rustls::pki_types::{CertificateDer, UnixTime as PkiTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use wire::{KeyDetail, Public, attr};
use x509_cert::Certificate;

/// The DER contents of `tcg-kp-EKCertificate` (2.23.133.8.1), the extended key usage of
/// TPM EK certificates (TCG EK Credential Profile for TPM Family 2.0, §3.2.16).
pub const TCG_KP_EK_CERTIFICATE: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];

/// The size of the credential secret (a SHA-256-sized TPM2B_DIGEST).
pub const SECRET_LEN: usize = 32;

/// What the group trusts for TPM attestation.
#[derive(Debug, Clone, Default)]
pub struct TpmPolicy {
    /// DER certificates of TPM vendor CAs. Every one is a trust anchor: list the vendor's
    /// intermediate CA that issues EK certificates (the EK certificate is the whole chain
    /// the device sends).
    pub ek_anchors: Vec<Vec<u8>>,
}

/// The challenge sent to the device: the output of TPM2_MakeCredential (Part 3 §12.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChallenge {
    /// TPM2B_ID_OBJECT: `UINT16 size || TPM2B_DIGEST integrityHMAC || encIdentity`.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: `UINT16 size || seed encrypted to the EK` (RSA: the OAEP
    /// ciphertext; ECC: the ephemeral TPMS_ECC_POINT).
    pub encrypted_secret: Vec<u8>,
}

/// What the server keeps (as JSON, next to the nonce) between [`start`] and [`finish`].
/// It holds no secret: the credential secret is stored only as its SHA-256 (the secret is
/// 32 random bytes, so the hash cannot be inverted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PendingTpm {
    /// `tpm-` + lowercase hex of the first 16 bytes of SHA-256(EK certificate SPKI DER).
    pub device_id: String,
    /// The AK's TPM2B_PUBLIC, hex: [`finish`] verifies TPM2_Certify with it.
    #[serde(with = "hex_bytes")]
    pub ak_public: Vec<u8>,
    /// The AK's Name (nameAlg || H(TPMT_PUBLIC)), hex.
    #[serde(with = "hex_bytes")]
    pub ak_name: Vec<u8>,
    /// SHA-256 of the credential secret, hex.
    #[serde(with = "hex_bytes")]
    pub secret_sha256: Vec<u8>,
    /// The audit summary [`finish`] returns (EK issuer, serial, key hash, AK name).
    pub summary: serde_json::Value,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

fn err(failure: Failure, detail: impl Into<String>) -> AttestError {
    AttestError::new(failure, detail)
}

/// Step 1: checks the EK certificate, the EK and the AK, and makes the credential.
///
/// - The EK certificate must chain to one of `policy.ek_anchors` at `now` (expired or not
///   yet valid: [`Failure::Expired`]; otherwise [`Failure::UntrustedChain`]).
/// - `ek_public` (TPM2B_PUBLIC, RSA-2048 or ECC P-256, nameAlg SHA-256, a restricted
///   decryption key as every TCG EK template is) must be the certificate's key
///   ([`Failure::UntrustedChain`] otherwise: that key is not vouched for).
/// - `ak_public` (TPM2B_PUBLIC, RSA or ECC P-256, nameAlg SHA-256) must be fixedTPM,
///   fixedParent, sensitiveDataOrigin, restricted, sign and not decrypt (Part 1 §25.2,
///   attestation keys; [`Failure::BadAttributes`] otherwise).
/// - The credential (Part 1 §24) carries a fresh 32-byte secret from `rng`, for the AK's
///   Name (Part 1 §16).
pub fn start(
    policy: &TpmPolicy,
    ek_cert: &[u8],
    ek_public: &[u8],
    ak_public: &[u8],
    rng: &dyn Entropy,
    now: UnixTime,
) -> Result<(PendingTpm, CredentialChallenge), AttestError> {
    let cert = Certificate::from_der(ek_cert)
        .map_err(|e| err(Failure::Malformed, format!("EK certificate: {e}")))?;
    let ek = Public::from_tpm2b(ek_public)?;
    let ak = Public::from_tpm2b(ak_public)?;

    verify_ek_chain(policy, ek_cert, now)?;

    let spki_der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| err(Failure::Malformed, format!("EK certificate key: {e}")))?;
    let ek_kind = check_ek(&ek)?;
    if !public_matches_spki(&ek, &spki_der)? {
        return Err(err(Failure::UntrustedChain, "the EK public area is not the key of the EK certificate"));
    }

    let ak_kind = check_ak(&ak)?;
    let ak_name = name_of(&ak)?;

    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    rng.fill(&mut secret[..]);
    let made = credential::make_credential(&ek, &ak_name, &secret[..], rng)?;

    let spki_hash = Sha256::digest(&spki_der);
    let device_id = format!("tpm-{}", hex::encode(&spki_hash[..16]));
    let tbs = &cert.tbs_certificate;
    let summary = serde_json::json!({
        "method": "tpm",
        "ek_issuer": tbs.issuer.to_string(),
        "ek_serial": hex::encode(tbs.serial_number.as_bytes()),
        "ek_public_sha256": hex::encode(spki_hash),
        "ek_type": ek_kind,
        "ak_type": ak_kind,
        "ak_name": hex::encode(&ak_name),
    });
    let pending = PendingTpm {
        device_id,
        ak_public: ak_public.to_vec(),
        ak_name,
        secret_sha256: Sha256::digest(&secret[..]).to_vec(),
        summary,
    };
    Ok((
        pending,
        CredentialChallenge {
            credential_blob: made.credential_blob,
            encrypted_secret: made.encrypted_secret,
        },
    ))
}

/// Step 2: checks the activated secret and TPM2_Certify of the CSR's key by the AK.
///
/// - SHA-256(`secret`) must equal the stored hash (constant time; [`Failure::BadProof`]).
/// - `key_public` (TPM2B_PUBLIC) must be fixedTPM and fixedParent
///   ([`Failure::BadAttributes`]) and be the key of `csr_spki_der` (DER
///   SubjectPublicKeyInfo; ECC P-256 or RSA; [`Failure::BindingMismatch`]).
/// - `certify_info` (TPM2B_ATTEST holding a TPMS_ATTEST, Part 2 §10.12.12) must be signed
///   by the AK (`certify_signature`, TPMT_SIGNATURE, ECDSA or RSASSA with SHA-256;
///   [`Failure::BadProof`]), be TPM_GENERATED and TPM_ST_ATTEST_CERTIFY
///   ([`Failure::Malformed`]), carry `binding` as extraData and the Name of `key_public`
///   as the certified name ([`Failure::BindingMismatch`]).
pub fn finish(
    pending: &PendingTpm,
    secret: &[u8],
    key_public: &[u8],
    certify_info: &[u8],
    certify_signature: &[u8],
    binding: &[u8; 32],
    csr_spki_der: &[u8],
) -> Result<Attested, AttestError> {
    let got = Sha256::digest(secret);
    if pending.secret_sha256.len() != got.len()
        || aws_lc_rs::constant_time::verify_slices_are_equal(&got, &pending.secret_sha256).is_err()
    {
        return Err(err(Failure::BadProof, "the activated credential secret is wrong"));
    }

    let ak = Public::from_tpm2b(&pending.ak_public)?;
    let key = Public::from_tpm2b(key_public)?;
    if !key.has(attr::FIXED_TPM | attr::FIXED_PARENT) {
        return Err(err(
            Failure::BadAttributes,
            format!("the CSR key is not fixedTPM and fixedParent (attributes {:#010x})", key.attributes),
        ));
    }
    if !public_matches_spki(&key, csr_spki_der)? {
        return Err(err(Failure::BindingMismatch, "key_public is not the key of the CSR"));
    }
    let key_name = name_of(&key)?;

    let attest = wire::unwrap_tpm2b(certify_info, "TPM2B_ATTEST")?;
    let signature = wire::Signature::parse(certify_signature)?;
    verify_signature(&ak, &signature, attest)?;

    let info = wire::CertifyInfo::parse(attest)?;
    if info.extra_data.as_slice() != binding.as_slice() {
        return Err(err(Failure::BindingMismatch, "TPM2_Certify qualifying data is not this binding"));
    }
    if info.name != key_name {
        return Err(err(Failure::BindingMismatch, "TPM2_Certify certified another object than key_public"));
    }

    let mut summary = pending.summary.clone();
    if let Some(obj) = summary.as_object_mut() {
        obj.insert("key_name".into(), serde_json::Value::String(hex::encode(&key_name)));
    }
    Ok(Attested { device_id: pending.device_id.clone(), summary })
}

/// RFC 5280 path validation of the EK certificate to the vendor anchors, at `now`.
fn verify_ek_chain(policy: &TpmPolicy, ek_cert: &[u8], now: UnixTime) -> Result<(), AttestError> {
    let ee_der = CertificateDer::from(ek_cert);
    let ee = webpki::EndEntityCert::try_from(&ee_der)
        .map_err(|e| err(Failure::Malformed, format!("EK certificate: {e:?}")))?;
    let anchor_ders: Vec<CertificateDer<'_>> =
        policy.ek_anchors.iter().map(|a| CertificateDer::from(a.as_slice())).collect();
    let anchors: Vec<_> =
        anchor_ders.iter().filter_map(|a| webpki::anchor_from_trusted_cert(a).ok()).collect();
    if anchors.is_empty() {
        return Err(err(Failure::UntrustedChain, "no usable TPM vendor anchor"));
    }
    let time = PkiTime::since_unix_epoch(Duration::from_secs(now.0.max(0) as u64));
    ee.verify_for_usage(
        crate::x509::CHAIN_ALGS,
        &anchors,
        &[],
        time,
        webpki::KeyUsage::required_if_present(TCG_KP_EK_CERTIFICATE),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            err(Failure::Expired, format!("EK certificate: {e:?}"))
        }
        _ => err(Failure::UntrustedChain, format!("EK certificate: {e:?}")),
    })?;
    Ok(())
}

/// The EK must be one of the two TCG low-range templates' key types (EK Credential
/// Profile §2.1.5: RSA-2048 and ECC NIST P-256, nameAlg SHA-256, AES-128-CFB) and a
/// restricted decryption key.
fn check_ek(ek: &Public) -> Result<&'static str, AttestError> {
    let kind = match &ek.detail {
        KeyDetail::Rsa { key_bits: 2048, modulus, .. } if modulus.len() == 256 => "rsa-2048",
        KeyDetail::Ecc { curve: wire::ECC_NIST_P256, .. } => "ecc-p256",
        KeyDetail::Rsa { key_bits, .. } => {
            return Err(err(Failure::UnsupportedAlgorithm, format!("EK is RSA-{key_bits}")));
        }
        KeyDetail::Ecc { curve, .. } => {
            return Err(err(Failure::UnsupportedAlgorithm, format!("EK curve {curve:#06x}")));
        }
    };
    if ek.name_alg != wire::ALG_SHA256 {
        return Err(err(Failure::UnsupportedAlgorithm, format!("EK nameAlg {:#06x}", ek.name_alg)));
    }
    if !ek.has(attr::RESTRICTED | attr::DECRYPT) || ek.has(attr::SIGN) {
        return Err(err(Failure::BadAttributes, "the EK is not a restricted decryption key"));
    }
    Ok(kind)
}

/// An attestation key (Part 1 §25.2; Part 2 §8.3): generated in this TPM and bound to it
/// (fixedTPM, fixedParent, sensitiveDataOrigin), signing only TPM-generated data
/// (restricted, sign, not decrypt).
fn check_ak(ak: &Public) -> Result<&'static str, AttestError> {
    let required =
        attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::RESTRICTED | attr::SIGN;
    if !ak.has(required) || ak.has(attr::DECRYPT) {
        return Err(err(
            Failure::BadAttributes,
            format!(
                "the AK must be fixedTPM|fixedParent|sensitiveDataOrigin|restricted|sign and not decrypt \
                 (attributes {:#010x})",
                ak.attributes
            ),
        ));
    }
    match &ak.detail {
        KeyDetail::Rsa { key_bits, modulus, .. }
            if (2048..=4096).contains(key_bits) && !modulus.is_empty() =>
        {
            Ok("rsa")
        }
        KeyDetail::Ecc { curve: wire::ECC_NIST_P256, .. } => Ok("ecc-p256"),
        _ => Err(err(Failure::UnsupportedAlgorithm, "the AK is neither RSA-2048..4096 nor ECC P-256")),
    }
}

/// The Name of an object (Part 1 §16): nameAlg || H_nameAlg(marshalled TPMT_PUBLIC).
pub fn name_of(public: &Public) -> Result<Vec<u8>, AttestError> {
    if public.name_alg != wire::ALG_SHA256 {
        return Err(err(
            Failure::UnsupportedAlgorithm,
            format!("nameAlg {:#06x} is not SHA-256", public.name_alg),
        ));
    }
    let mut name = wire::ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(&public.raw));
    Ok(name)
}

/// The uncompressed SEC1 point of an ECC P-256 public area.
fn p256_point(x: &[u8], y: &[u8]) -> Result<Vec<u8>, AttestError> {
    let px =
        credential::pad_to(x, 32).ok_or_else(|| err(Failure::Malformed, "ECC x longer than 32 bytes"))?;
    let py =
        credential::pad_to(y, 32).ok_or_else(|| err(Failure::Malformed, "ECC y longer than 32 bytes"))?;
    Ok([&[0x04u8][..], &px, &py].concat())
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Whether the TPM public area is the key of a DER SubjectPublicKeyInfo (RFC 5280
/// §4.1.2.7): rsaEncryption (RFC 8017 RSAPublicKey) or id-ecPublicKey on secp256r1
/// (RFC 5480). Other key types are [`Failure::UnsupportedAlgorithm`].
fn public_matches_spki(public: &Public, spki_der: &[u8]) -> Result<bool, AttestError> {
    use const_oid::db::rfc5912;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| err(Failure::Malformed, format!("SubjectPublicKeyInfo: {e}")))?;
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| err(Failure::Malformed, "SubjectPublicKeyInfo bit string has unused bits"))?;
    let oid = spki.algorithm.oid;
    if oid == rfc5912::RSA_ENCRYPTION {
        let key = rsa::pkcs1::RsaPublicKey::from_der(bits)
            .map_err(|e| err(Failure::Malformed, format!("RSAPublicKey: {e}")))?;
        let KeyDetail::Rsa { exponent, modulus, .. } = &public.detail else { return Ok(false) };
        Ok(trim_zeros(key.modulus.as_bytes()) == trim_zeros(modulus)
            && trim_zeros(key.public_exponent.as_bytes()) == trim_zeros(&exponent.to_be_bytes()))
    } else if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .ok_or_else(|| err(Failure::Malformed, "id-ecPublicKey without a curve"))?
            .decode_as::<const_oid::ObjectIdentifier>()
            .map_err(|e| err(Failure::Malformed, format!("EC curve: {e}")))?;
        if curve != rfc5912::SECP_256_R_1 {
            return Err(err(Failure::UnsupportedAlgorithm, format!("EC curve {curve}")));
        }
        let key = p256::PublicKey::from_sec1_bytes(bits)
            .map_err(|_| err(Failure::Malformed, "EC point is not on P-256"))?;
        let KeyDetail::Ecc { curve: wire::ECC_NIST_P256, x, y, .. } = &public.detail else {
            return Ok(false);
        };
        Ok(key.to_encoded_point(false).as_bytes() == p256_point(x, y)?.as_slice())
    } else {
        Err(err(Failure::UnsupportedAlgorithm, format!("key algorithm {oid}")))
    }
}

/// Verifies a TPMT_SIGNATURE by `key` over `message` (Part 2 §11.3.4; the TPM signs the
/// SHA-256 digest of the TPMS_ATTEST, Part 3 §18.2).
fn verify_signature(key: &Public, sig: &wire::Signature, message: &[u8]) -> Result<(), AttestError> {
    use aws_lc_rs::signature::{self as sg, VerificationAlgorithm};
    let bad = |what: &str| err(Failure::BadProof, format!("TPM2_Certify signature: {what}"));
    match (sig, &key.detail) {
        (wire::Signature::Ecdsa { hash, r, s }, KeyDetail::Ecc { curve: wire::ECC_NIST_P256, x, y, .. }) => {
            if *hash != wire::ALG_SHA256 {
                return Err(err(Failure::UnsupportedAlgorithm, "ECDSA signature hash is not SHA-256"));
            }
            let point = p256_point(x, y)?;
            let (Some(r), Some(s)) = (credential::pad_to(r, 32), credential::pad_to(s, 32)) else {
                return Err(bad("r or s longer than 32 bytes"));
            };
            let rs = [r, s].concat();
            sg::ECDSA_P256_SHA256_FIXED
                .verify_sig(&point, message, &rs)
                .map_err(|_| bad("ECDSA does not verify with the AK"))
        }
        (wire::Signature::RsaSsa { hash, sig }, KeyDetail::Rsa { exponent, modulus, .. }) => {
            if *hash != wire::ALG_SHA256 {
                return Err(err(Failure::UnsupportedAlgorithm, "RSASSA signature hash is not SHA-256"));
            }
            let e = exponent.to_be_bytes();
            sg::RsaPublicKeyComponents { n: trim_zeros(modulus), e: trim_zeros(&e) }
                .verify(&sg::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .map_err(|_| bad("RSASSA does not verify with the AK"))
        }
        _ => Err(bad("the signature algorithm is not the AK's")),
    }
}

#[cfg(test)]
mod tests;
