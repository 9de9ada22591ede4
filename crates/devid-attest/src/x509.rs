//! X.509 IDevID attestation (IEEE 802.1AR-style factory identities).
//!
//! The device presents the certificate chain its manufacturer installed (device certificate
//! first, then intermediates) and a signature with the factory key over the [`binding`]
//! (PROTOCOL.md, "Enroll", method `x509`). [`verify`] validates the path to one of the
//! group's trust anchors (RFC 5280 §6, with rustls-webpki), checks revocation against the
//! manufacturer CRLs when the group has some (RFC 5280 §6.3), verifies the possession
//! signature with the device certificate's key and takes the device id from the certificate
//! as the group's [`IdSource`] says.
//!
//! [`binding`]: crate::binding

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc4519, rfc5912, rfc8410};
use der::{Decode, Tag, Tagged};
use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime as PkiTime};
use sha2::{Digest, Sha256};
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, EndEntityCert, Error as WebPkiError, KeyUsage,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage as X509KeyUsage, SubjectAltName};

use crate::{AttestError, Attested, Failure};

/// The longest chain a device may present (device certificate plus intermediates). Real
/// IDevID chains have one to three certificates; the bound keeps path building cheap.
pub const MAX_CHAIN_LEN: usize = 8;

/// The signature algorithms a chain may use (RFC 5280 §4.1.1.2), all from aws-lc-rs: the
/// IDevID chains here and the TPM's EK chains ([`crate::tpm`]).
///
/// Not `webpki::ALL_VERIFICATION_ALGS`: what that list holds depends on the crate's
/// features, which cargo unifies across the workspace. With `ring` on as well (reqwest's
/// rustls in `devid-agent`, and every test build) it lists ring's algorithms first, so the
/// chains were verified by a second crypto library, one that the README does not name as
/// the backend. The accepted set was the same (aws-lc-rs's entries cover ring's). This list
/// is the aws-lc-rs part of that list, whatever the build.
pub(crate) static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P256_SHA512,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA512,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::ED25519,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PKCS1_3072_8192_SHA384,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::aws_lc_rs::ML_DSA_44,
    webpki::aws_lc_rs::ML_DSA_65,
    webpki::aws_lc_rs::ML_DSA_87,
];

/// How the device id is taken from the device certificate.
///
/// Text forms (used by [`FromStr`], [`fmt::Display`] and serde): `subject-serial`,
/// `subject-cn`, `san-uri:<prefix>`, `san-dns`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdSource {
    /// The subject's `serialNumber` attribute (OID 2.5.4.5, RFC 4519 §2.31), which is
    /// where IEEE 802.1AR §8.6 puts the device serial number.
    SubjectSerialNumber,
    /// The subject's `commonName` attribute (OID 2.5.4.3, RFC 4519 §2.3).
    SubjectCommonName,
    /// A `uniformResourceIdentifier` subject alternative name (RFC 5280 §4.2.1.6) that
    /// starts with `prefix`; the id is the rest of the URI.
    SanUri {
        /// The URI prefix, e.g. `urn:example:device:`.
        prefix: String,
    },
    /// The `dNSName` subject alternative name (RFC 5280 §4.2.1.6).
    SanDns,
}

impl fmt::Display for IdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSource::SubjectSerialNumber => f.write_str("subject-serial"),
            IdSource::SubjectCommonName => f.write_str("subject-cn"),
            IdSource::SanUri { prefix } => write!(f, "san-uri:{prefix}"),
            IdSource::SanDns => f.write_str("san-dns"),
        }
    }
}

/// An id source text that is none of the known forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown id source {0:?}: expected subject-serial, subject-cn, san-uri:<prefix> or san-dns")]
pub struct IdSourceError(pub String);

impl FromStr for IdSource {
    type Err = IdSourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "subject-serial" => Ok(IdSource::SubjectSerialNumber),
            "subject-cn" => Ok(IdSource::SubjectCommonName),
            "san-dns" => Ok(IdSource::SanDns),
            _ => match s.strip_prefix("san-uri:") {
                Some(prefix) if !prefix.is_empty() => Ok(IdSource::SanUri { prefix: prefix.to_string() }),
                _ => Err(IdSourceError(s.to_string())),
            },
        }
    }
}

impl serde::Serialize for IdSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IdSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a group trusts for X.509 attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Policy {
    /// Trust anchors: the manufacturers' root (or issuing) CA certificates, DER.
    pub anchors: Vec<Vec<u8>>,
    /// Manufacturer CRLs, DER (optional). When given, every certificate of the path whose
    /// issuer has a CRL here is checked against it.
    pub crls: Vec<Vec<u8>>,
    /// Where the device id is in the device certificate.
    pub id_source: IdSource,
}

/// A short description of a trust anchor, for display when a group is defined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AnchorInfo {
    /// The subject, as an RFC 4514 string.
    pub subject: String,
    /// The SHA-256 fingerprint of the DER certificate, colon-separated uppercase hex (as
    /// `openssl x509 -fingerprint -sha256` prints it).
    pub fingerprint_sha256: String,
}

/// Verify X.509 IDevID evidence.
///
/// - `chain`: DER certificates, the device certificate first, then intermediates (the
///   anchor itself may be left out).
/// - `signature`: by the device certificate's key over `binding`: ECDSA P-256 with SHA-256
///   or P-384 with SHA-384 (DER `Ecdsa-Sig-Value`, RFC 3279 §2.2.3), RSA PKCS#1 v1.5 with
///   SHA-256 (RFC 8017 §8.2), or Ed25519 (RFC 8032 §5.1).
///
/// Path validation (RFC 5280 §6.1) is rustls-webpki's `verify_for_usage` at `now`, with
/// the client-authentication EKU required if an EKU extension is present (IEEE 802.1AR
/// IDevIDs usually have none; the check applies to every certificate of the path). A CA
/// certificate is refused as the device certificate.
///
/// Revocation (RFC 5280 §6.3): each certificate of the path whose issuer has a CRL in the
/// policy is checked against it; a certificate whose issuer publishes no CRL here is
/// accepted (the manufacturer may publish a CRL only for its device-issuing CA). A CRL's
/// `nextUpdate` is not enforced, so that a stale manufacturer CRL does not lock out every
/// device; keeping the CRLs current is the operator's task.
pub fn verify(
    policy: &X509Policy,
    chain: &[Vec<u8>],
    signature: &[u8],
    binding: &[u8; 32],
    now: devid_core::UnixTime,
) -> Result<Attested, AttestError> {
    let Some(device_der) = chain.first() else {
        return Err(AttestError::new(Failure::Malformed, "empty certificate chain"));
    };
    if chain.len() > MAX_CHAIN_LEN {
        return Err(AttestError::new(
            Failure::Malformed,
            format!("chain of {} certificates; at most {MAX_CHAIN_LEN}", chain.len()),
        ));
    }
    // Parse every certificate first, so that garbage is Malformed and not a path error.
    let device = Certificate::from_der(device_der)
        .map_err(|e| AttestError::new(Failure::Malformed, format!("device certificate: {e}")))?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        Certificate::from_der(der)
            .map_err(|e| AttestError::new(Failure::Malformed, format!("chain certificate {i}: {e}")))?;
    }

    let ders: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let ee = EndEntityCert::try_from(&ders[0]).map_err(|e| path_error(e, "device certificate"))?;

    let anchor_ders: Vec<CertificateDer<'_>> =
        policy.anchors.iter().map(|a| CertificateDer::from(a.as_slice())).collect();
    // An anchor that does not parse cannot anchor anything; check_anchor refuses such
    // anchors when the group is defined.
    let anchors: Vec<_> =
        anchor_ders.iter().filter_map(|a| webpki::anchor_from_trusted_cert(a).ok()).collect();
    if anchors.is_empty() {
        return Err(AttestError::new(Failure::UntrustedChain, "the group has no usable trust anchor"));
    }

    let crls = policy
        .crls
        .iter()
        .enumerate()
        .map(|(i, der)| {
            BorrowedCertRevocationList::from_der(der).map(CertRevocationList::from).map_err(|e| {
                // Fail closed: revocation cannot be checked with a CRL that does not parse.
                AttestError::new(Failure::UntrustedChain, format!("manufacturer CRL {i} does not parse: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
        b.with_depth(RevocationCheckDepth::Chain).with_status_policy(UnknownStatusPolicy::Allow).build()
    });

    let time = PkiTime::since_unix_epoch(Duration::from_secs(now.0.max(0) as u64));
    ee.verify_for_usage(CHAIN_ALGS, &anchors, &ders[1..], time, KeyUsage::client_auth(), revocation, None)
        .map_err(|e| path_error(e, "path validation"))?;

    // Possession of the factory key, over this nonce and this CSR.
    let alg = signature_alg(&device)?;
    ee.verify_signature(alg, binding, signature).map_err(|e| match e {
        WebPkiError::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | WebPkiError::UnsupportedSignatureAlgorithmContext(_) => {
            AttestError::new(Failure::UnsupportedAlgorithm, format!("device key: {e:?}"))
        }
        _ => AttestError::new(Failure::BadProof, format!("signature over the binding: {e:?}")),
    })?;

    let device_id = device_id(&device, &policy.id_source)?;
    let tbs = &device.tbs_certificate;
    let summary = serde_json::json!({
        "method": "x509",
        "issuer": tbs.issuer.to_string(),
        "subject": tbs.subject.to_string(),
        "serial": hex::encode(tbs.serial_number.as_bytes()),
        "fingerprint_sha256": fingerprint(device_der),
        "id_source": policy.id_source.to_string(),
    });
    Ok(Attested { device_id, summary })
}

/// Check a trust anchor when a group is defined: it must be a well-formed certificate that
/// rustls-webpki accepts as an anchor, with basicConstraints `cA` TRUE (RFC 5280 §4.2.1.9)
/// and, when keyUsage is present, `keyCertSign` (RFC 5280 §4.2.1.3).
pub fn check_anchor(der: &[u8]) -> Result<AnchorInfo, AttestError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| AttestError::new(Failure::Malformed, format!("anchor certificate: {e}")))?;
    let cert_der = CertificateDer::from(der);
    webpki::anchor_from_trusted_cert(&cert_der)
        .map_err(|e| AttestError::new(Failure::Malformed, format!("anchor certificate: {e:?}")))?;
    let tbs = &cert.tbs_certificate;
    let bc = tbs
        .get::<BasicConstraints>()
        .map_err(|e| AttestError::new(Failure::Malformed, format!("basicConstraints: {e}")))?;
    if !bc.is_some_and(|(_, bc)| bc.ca) {
        return Err(AttestError::new(
            Failure::BadAttributes,
            "the anchor is not a CA certificate (cA is not TRUE)",
        ));
    }
    let ku = tbs
        .get::<X509KeyUsage>()
        .map_err(|e| AttestError::new(Failure::Malformed, format!("keyUsage: {e}")))?;
    if let Some((_, ku)) = ku
        && !ku.key_cert_sign()
    {
        return Err(AttestError::new(Failure::BadAttributes, "the anchor's keyUsage lacks keyCertSign"));
    }
    Ok(AnchorInfo { subject: tbs.subject.to_string(), fingerprint_sha256: fingerprint(der) })
}

/// SHA-256 of DER, colon-separated uppercase hex.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The one verification algorithm the protocol allows for the device key's type.
fn signature_alg(cert: &Certificate) -> Result<&'static dyn SignatureVerificationAlgorithm, AttestError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let oid = spki.algorithm.oid;
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| AttestError::new(Failure::Malformed, "EC key without a named curve"))?;
        if curve == rfc5912::SECP_256_R_1 {
            Ok(webpki::aws_lc_rs::ECDSA_P256_SHA256)
        } else if curve == rfc5912::SECP_384_R_1 {
            Ok(webpki::aws_lc_rs::ECDSA_P384_SHA384)
        } else {
            Err(AttestError::new(Failure::UnsupportedAlgorithm, format!("EC curve {curve}")))
        }
    } else if oid == rfc5912::RSA_ENCRYPTION {
        Ok(webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256)
    } else if oid == rfc8410::ID_ED_25519 {
        Ok(webpki::aws_lc_rs::ED25519)
    } else {
        Err(AttestError::new(Failure::UnsupportedAlgorithm, format!("device key algorithm {oid}")))
    }
}

/// Map a rustls-webpki path-validation error to the coarse failure.
fn path_error(e: WebPkiError, what: &str) -> AttestError {
    use WebPkiError as E;
    let failure = match &e {
        E::UnknownIssuer
        | E::InvalidSignatureForPublicKey
        | E::CertDistrusted
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded
        | E::UnknownRevocationStatus => Failure::UntrustedChain,
        E::CertExpired { .. } | E::CertNotValidYet { .. } => Failure::Expired,
        E::CertRevoked => Failure::Revoked,
        E::RequiredEkuNotFoundContext(_)
        | E::EmptyEkuExtension
        | E::CaUsedAsEndEntity
        | E::EndEntityUsedAsCa
        | E::PathLenConstraintViolated
        | E::NameConstraintViolation
        | E::UnsupportedCriticalExtension => Failure::BadAttributes,
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => Failure::UnsupportedAlgorithm,
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::InvalidCertValidity
        | E::InvalidSerialNumber
        | E::MalformedExtensions
        | E::ExtensionValueInvalid
        | E::UnsupportedCertVersion => Failure::Malformed,
        // CRL-side problems (an unsupported or badly signed manufacturer CRL), the
        // deprecated variants rustls-webpki 0.103 no longer returns, and anything else:
        // the chain could not be shown to be trustworthy.
        _ => Failure::UntrustedChain,
    };
    AttestError::new(failure, format!("{what}: {e:?}"))
}

/// The device id, as `source` says, validated as a [`devid_core::DeviceId`]. Exactly one
/// candidate value must be present (two different ones are ambiguous).
fn device_id(cert: &Certificate, source: &IdSource) -> Result<String, AttestError> {
    let tbs = &cert.tbs_certificate;
    let mut candidates: Vec<String> = Vec::new();
    match source {
        IdSource::SubjectSerialNumber | IdSource::SubjectCommonName => {
            let want = match source {
                IdSource::SubjectSerialNumber => rfc4519::SERIAL_NUMBER,
                _ => rfc4519::CN,
            };
            for rdn in tbs.subject.0.iter() {
                for atv in rdn.0.iter().filter(|a| a.oid == want) {
                    candidates.push(directory_string(&atv.value).ok_or_else(|| {
                        AttestError::new(Failure::NoDeviceId, "subject attribute is not a text string")
                    })?);
                }
            }
        }
        IdSource::SanUri { .. } | IdSource::SanDns => {
            let san = tbs
                .get::<SubjectAltName>()
                .map_err(|e| AttestError::new(Failure::Malformed, format!("subjectAltName: {e}")))?;
            for name in san.map(|(_, s)| s.0).unwrap_or_default() {
                match (source, name) {
                    (IdSource::SanUri { prefix }, GeneralName::UniformResourceIdentifier(uri)) => {
                        if let Some(rest) = uri.as_str().strip_prefix(prefix.as_str()) {
                            candidates.push(rest.to_string());
                        }
                    }
                    (IdSource::SanDns, GeneralName::DnsName(dns)) => {
                        candidates.push(dns.as_str().to_string())
                    }
                    _ => {}
                }
            }
        }
    }
    candidates.dedup();
    match candidates.as_slice() {
        [one] => devid_core::DeviceId::new(one.as_str()).map(|id| id.as_str().to_string()).map_err(|_| {
            AttestError::new(Failure::NoDeviceId, format!("{source}: {one:?} is not a valid device id"))
        }),
        [] => Err(AttestError::new(Failure::NoDeviceId, format!("{source}: not present in the certificate"))),
        _ => Err(AttestError::new(Failure::NoDeviceId, format!("{source}: more than one value"))),
    }
}

/// The text of a DirectoryString-like attribute value (RFC 5280 §4.1.2.4): UTF8String,
/// PrintableString, IA5String or TeletexString (read as UTF-8, as RFC 5280 allows for
/// ASCII content).
fn directory_string(v: &der::Any) -> Option<String> {
    match v.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            std::str::from_utf8(v.value()).ok().map(str::to_string)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn id_source_text_round_trip() {
        for s in ["subject-serial", "subject-cn", "san-dns", "san-uri:urn:example:dev:"] {
            let src: IdSource = s.parse().expect("parses");
            assert_eq!(src.to_string(), s);
            let json = serde_json::to_string(&src).expect("serializes");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<IdSource>(&json).expect("deserializes"), src);
        }
        assert!("san-uri:".parse::<IdSource>().is_err());
        assert!("subject".parse::<IdSource>().is_err());
        assert!(serde_json::from_str::<IdSource>("\"nope\"").is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        let policy = X509Policy { anchors: vec![], crls: vec![], id_source: IdSource::SubjectSerialNumber };
        let e = verify(&policy, &[b"junk".to_vec()], b"", &[0; 32], devid_core::UnixTime(0)).unwrap_err();
        assert_eq!(e.failure, Failure::Malformed);
        let e = verify(&policy, &[], b"", &[0; 32], devid_core::UnixTime(0)).unwrap_err();
        assert_eq!(e.failure, Failure::Malformed);
        assert_eq!(check_anchor(b"junk").unwrap_err().failure, Failure::Malformed);
    }
}
