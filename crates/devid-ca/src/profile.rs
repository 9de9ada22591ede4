//! Certificate profiles (RFC 5280 §4.1) and the TBSCertificate builder.
//!
//! Three profiles:
//! - **root**: self-signed; basicConstraints `cA=TRUE` (critical), keyUsage
//!   `keyCertSign, cRLSign` (critical), SKI, AKI = SKI;
//! - **issuing CA**: signed by the root; basicConstraints `cA=TRUE, pathLen=0` (critical),
//!   keyUsage `digitalSignature, keyCertSign, cRLSign` (critical), SKI, AKI;
//! - **device leaf**: signed by the issuing CA; subject `CN=<device id>`; basicConstraints
//!   `cA=FALSE` (critical); keyUsage `digitalSignature` (critical); extKeyUsage
//!   `clientAuth`; subjectAltName URI `<prefix><device id>`; SKI; AKI; authorityInfoAccess
//!   (OCSP + caIssuers); cRLDistributionPoints.
//!
//! A leaf is built from the profile and the CSR's public key only: nothing else of the CSR
//! (subject, requested extensions) reaches the certificate.

use const_oid::AssociatedOid;
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc4519, rfc5280, rfc5912};
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, SetOfVec, UtcTime, Utf8StringRef};
use der::{Decode, Encode};
use devid_core::{CaId, DeviceId, Serial, UnixTime, Validity};
use devid_kms::SignatureAlgorithm;
use sha1::{Digest, Sha1};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::CaError;

/// What the builder needs to know of the issuer: its subject, key identifier, public key
/// and the end of its own validity (a certificate never outlives its issuer).
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    /// The issuer's subject Name.
    pub name: Name,
    /// The issuer's subject key identifier.
    pub ski: Vec<u8>,
    /// The issuer's public key, DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// The issuer's notAfter.
    pub not_after: UnixTime,
}

impl IssuerInfo {
    /// Read the issuer facts from a CA certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<IssuerInfo, CaError> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
        let tbs = cert.tbs_certificate;
        let spki_der = tbs.subject_public_key_info.to_der()?;
        let ski = tbs
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == SubjectKeyIdentifier::OID)
            .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
            .map(|s| s.0.as_bytes().to_vec())
            .unwrap_or_else(|| key_id(&tbs.subject_public_key_info));
        let not_after = UnixTime(tbs.validity.not_after.to_unix_duration().as_secs() as i64);
        Ok(IssuerInfo { name: tbs.subject, ski, spki_der, not_after })
    }
}

/// The URLs a leaf points at, built from the service's public URL (RFC 5280 §4.2.2.1
/// authorityInfoAccess, §4.2.1.13 cRLDistributionPoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrls {
    /// The OCSP responder (id-ad-ocsp).
    pub ocsp: String,
    /// The issuing CA's certificate, DER (id-ad-caIssuers).
    pub ca_issuers: String,
    /// The issuing CA's CRL, DER.
    pub crl: String,
}

impl PublicUrls {
    /// `{base}/ocsp`, `{base}/v1/ca/{issuer}.cer`, `{base}/crl/{issuer}.crl`.
    pub fn for_issuer(public_url: &url::Url, issuer: &CaId) -> PublicUrls {
        let base = public_url.as_str().trim_end_matches('/');
        PublicUrls {
            ocsp: format!("{base}/ocsp"),
            ca_issuers: format!("{base}/v1/ca/{issuer}.cer"),
            crl: format!("{base}/crl/{issuer}.crl"),
        }
    }

    /// The OCSP URL at another base (`{ocsp_base}/ocsp`), when the responder is reached
    /// elsewhere than the rest; `None` keeps it as it is.
    pub fn with_ocsp_base(mut self, ocsp_base: Option<&url::Url>) -> PublicUrls {
        if let Some(b) = ocsp_base {
            self.ocsp = format!("{}/ocsp", b.as_str().trim_end_matches('/'));
        }
        self
    }
}

/// The device leaf profile.
#[derive(Debug, Clone)]
pub struct LeafProfile {
    /// Lifetime in seconds (default 24 h).
    pub validity_secs: i64,
    /// notBefore is set this many seconds before now, for devices with slightly slow clocks.
    pub backdate_secs: i64,
    /// The URI SAN is this prefix followed by the device id.
    pub device_uri_prefix: String,
    /// AIA and CRL DP URLs.
    pub urls: PublicUrls,
    /// Number of CRL shards (serial-based partitioning; 1 = one CRL per issuer).
    pub crl_shards: u16,
}

impl PublicUrls {
    /// The CRL URL of shard `shard` of `shards`: `{base}/crl/{issuer}.crl` when the CRL is
    /// not partitioned (`shards <= 1`), else `{base}/crl/{issuer}-{shard}.crl`.
    pub fn crl_shard_url(&self, shard: u16, shards: u16) -> String {
        if shards <= 1 {
            self.crl.clone()
        } else {
            let base = self.crl.strip_suffix(".crl").unwrap_or(&self.crl);
            format!("{base}-{shard}.crl")
        }
    }
}

impl LeafProfile {
    /// The cRLDistributionPoints URL of the certificate with this serial: its shard's CRL
    /// when the CRL is partitioned ([`crate::crl::shard_of`]).
    pub fn crl_url(&self, serial: &Serial) -> String {
        self.urls.crl_shard_url(crate::crl::shard_of(serial, self.crl_shards), self.crl_shards)
    }
}

/// The default URI SAN prefix: `urn:devid:device:<id>`.
pub const DEFAULT_DEVICE_URI_PREFIX: &str = "urn:devid:device:";

/// A CA's subject: common name and organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    /// commonName.
    pub common_name: String,
    /// organizationName.
    pub organization: String,
}

/// Build a leaf TBSCertificate. Returns the DER and the validity actually used (clipped to
/// the issuer's notAfter).
pub fn leaf_tbs(
    issuer: &IssuerInfo,
    alg: SignatureAlgorithm,
    profile: &LeafProfile,
    serial: &Serial,
    device: &DeviceId,
    subject_spki_der: &[u8],
    now: UnixTime,
) -> Result<(Vec<u8>, Validity), CaError> {
    let uri = format!("{}{}", profile.device_uri_prefix, device);
    let san = vec![GeneralName::UniformResourceIdentifier(Ia5String::new(&uri)?)];
    end_entity_tbs(
        issuer,
        alg,
        profile,
        serial,
        device.as_str(),
        subject_spki_der,
        now,
        rfc5280::ID_KP_CLIENT_AUTH,
        san,
    )
}

/// Build the TBSCertificate of devid's own TLS server certificate (the renewal
/// listener): like a device leaf, but with EKU serverAuth (RFC 5280 §4.2.1.12) and the
/// listener's DNS names and IP addresses as subject alternative names (§4.2.1.6).
pub fn server_tbs(
    issuer: &IssuerInfo,
    alg: SignatureAlgorithm,
    profile: &LeafProfile,
    serial: &Serial,
    names: &[String],
    subject_spki_der: &[u8],
    now: UnixTime,
) -> Result<(Vec<u8>, Validity), CaError> {
    let mut san = Vec::with_capacity(names.len());
    for n in names {
        match n.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                san.push(GeneralName::IpAddress(OctetString::new(ip.octets().to_vec())?))
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                san.push(GeneralName::IpAddress(OctetString::new(ip.octets().to_vec())?))
            }
            Err(_) => san.push(GeneralName::DnsName(Ia5String::new(n)?)),
        }
    }
    let cn = names.first().map(String::as_str).unwrap_or("devid");
    end_entity_tbs(issuer, alg, profile, serial, cn, subject_spki_der, now, rfc5280::ID_KP_SERVER_AUTH, san)
}

#[allow(clippy::too_many_arguments)]
fn end_entity_tbs(
    issuer: &IssuerInfo,
    alg: SignatureAlgorithm,
    profile: &LeafProfile,
    serial: &Serial,
    subject_cn: &str,
    subject_spki_der: &[u8],
    now: UnixTime,
    eku: ObjectIdentifier,
    san: Vec<GeneralName>,
) -> Result<(Vec<u8>, Validity), CaError> {
    if profile.validity_secs <= 0 {
        return Err(CaError::Encoding("leaf validity must be positive".into()));
    }
    let spki = SubjectPublicKeyInfoOwned::from_der(subject_spki_der)?;
    let validity = Validity {
        not_before: now.plus(-profile.backdate_secs.max(0)),
        not_after: now.plus(profile.validity_secs).min(issuer.not_after),
    };
    if validity.not_after <= now {
        return Err(CaError::InvalidCertificate("the issuing CA has expired".into()));
    }
    let extensions = vec![
        ext(&BasicConstraints { ca: false, path_len_constraint: None }, true)?,
        ext(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
        ext(&ExtendedKeyUsage(vec![eku]), false)?,
        ext(&SubjectAltName(san), false)?,
        ext(&SubjectKeyIdentifier(OctetString::new(key_id(&spki))?), false)?,
        ext(&aki(&issuer.ski)?, false)?,
        ext(
            &AuthorityInfoAccessSyntax(vec![
                AccessDescription {
                    access_method: rfc5280::ID_AD_OCSP,
                    access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(
                        &profile.urls.ocsp,
                    )?),
                },
                AccessDescription {
                    access_method: rfc5280::ID_AD_CA_ISSUERS,
                    access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(
                        &profile.urls.ca_issuers,
                    )?),
                },
            ]),
            false,
        )?,
        ext(
            &CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(Ia5String::new(&profile.crl_url(serial))?),
                ])),
                reasons: None,
                crl_issuer: None,
            }]),
            false,
        )?,
    ];
    let tbs = tbs(
        serial,
        alg,
        issuer.name.clone(),
        validity,
        name(&[(rfc4519::CN, subject_cn)])?,
        spki,
        extensions,
    )?;
    Ok((tbs, validity))
}

/// Build a self-signed root CA TBSCertificate.
pub fn root_tbs(
    alg: SignatureAlgorithm,
    subject: &CaSubject,
    serial: &Serial,
    spki_der: &[u8],
    now: UnixTime,
    validity_secs: i64,
) -> Result<Vec<u8>, CaError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
    let ski = key_id(&spki);
    let subject = ca_name(subject)?;
    let extensions = vec![
        ext(&BasicConstraints { ca: true, path_len_constraint: None }, true)?,
        ext(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign), true)?,
        ext(&SubjectKeyIdentifier(OctetString::new(ski.clone())?), false)?,
        ext(&aki(&ski)?, false)?,
    ];
    let validity = Validity { not_before: now.plus(-60), not_after: now.plus(validity_secs) };
    tbs(serial, alg, subject.clone(), validity, subject, spki, extensions)
}

/// Build an issuing CA TBSCertificate signed by `root` (pathLen 0: it signs leaves only).
pub fn issuing_tbs(
    root: &IssuerInfo,
    alg: SignatureAlgorithm,
    subject: &CaSubject,
    serial: &Serial,
    spki_der: &[u8],
    now: UnixTime,
    validity_secs: i64,
) -> Result<Vec<u8>, CaError> {
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
    let extensions = vec![
        ext(&BasicConstraints { ca: true, path_len_constraint: Some(0) }, true)?,
        ext(&KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign), true)?,
        ext(&SubjectKeyIdentifier(OctetString::new(key_id(&spki))?), false)?,
        ext(&aki(&root.ski)?, false)?,
    ];
    let validity =
        Validity { not_before: now.plus(-60), not_after: now.plus(validity_secs).min(root.not_after) };
    tbs(serial, alg, root.name.clone(), validity, ca_name(subject)?, spki, extensions)
}

/// The subject key identifier of a public key: RFC 5280 §4.2.1.2 method (1), "the 160-bit
/// SHA-1 hash of the value of the BIT STRING subjectPublicKey (excluding the tag, length,
/// and number of unused bits)".
pub fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec()
}

/// The AlgorithmIdentifier for a signer's algorithm (RFC 5758 §3.2: the parameters field
/// MUST be absent for ecdsa-with-SHA256).
pub fn algorithm_identifier(alg: SignatureAlgorithm) -> AlgorithmIdentifierOwned {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => {
            AlgorithmIdentifierOwned { oid: rfc5912::ECDSA_WITH_SHA_256, parameters: None }
        }
    }
}

pub(crate) fn aki(key_identifier: &[u8]) -> Result<AuthorityKeyIdentifier, CaError> {
    Ok(AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(key_identifier)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    })
}

pub(crate) fn ca_name(s: &CaSubject) -> Result<Name, CaError> {
    name(&[(rfc4519::O, s.organization.as_str()), (rfc4519::CN, s.common_name.as_str())])
}

/// A Name with one attribute per RDN, as UTF8String (RFC 5280 §4.1.2.4).
pub(crate) fn name(attrs: &[(ObjectIdentifier, &str)]) -> Result<Name, CaError> {
    let mut rdns = Vec::with_capacity(attrs.len());
    for (oid, value) in attrs {
        let atv =
            AttributeTypeAndValue { oid: *oid, value: der::Any::encode_from(&Utf8StringRef::new(value)?)? };
        rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?));
    }
    Ok(RdnSequence(rdns))
}

pub(crate) fn ext<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, CaError> {
    Ok(Extension { extn_id: T::OID, critical, extn_value: OctetString::new(value.to_der()?)? })
}

/// RFC 5280 §4.1.2.5: "CAs conforming to this profile MUST always encode certificate
/// validity dates through the year 2049 as UTCTime; certificate validity dates in 2050 or
/// later MUST be encoded as GeneralizedTime."
pub(crate) fn time(t: UnixTime) -> Result<Time, CaError> {
    let dt = der::DateTime::from_unix_duration(std::time::Duration::from_secs(t.0.max(0) as u64))?;
    if dt.year() < 2050 {
        Ok(Time::UtcTime(UtcTime::from_date_time(dt)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(dt)))
    }
}

fn tbs(
    serial: &Serial,
    alg: SignatureAlgorithm,
    issuer: Name,
    validity: Validity,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, CaError> {
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial.as_bytes())?,
        signature: algorithm_identifier(alg),
        issuer,
        validity: x509_cert::time::Validity {
            not_before: time(validity.not_before)?,
            not_after: time(validity.not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    Ok(tbs.to_der()?)
}

/// Keeps `BitString` in scope for the signing module's use of the same type.
pub(crate) type SignatureBits = BitString;

/// Build a delegated OCSP responder TBSCertificate signed by `issuer`, RFC 6960 §4.2.2.2
/// ("Authorized Responders"): the responder's certificate is issued directly by the CA
/// whose certificates it answers for and includes
///
/// ```text
/// id-kp-OCSPSigning OBJECT IDENTIFIER ::= { id-kp 9 }
/// ```
///
/// in extKeyUsage. Profile: subject `O=<the issuer's O>, CN=<subject_cn>` (just the CN when
/// the issuer has no O); basicConstraints `cA=FALSE` (critical); keyUsage
/// `digitalSignature` (critical); extKeyUsage `id-kp-OCSPSigning`; id-pkix-ocsp-nocheck
/// (RFC 6960 §4.2.2.2.1, "the value of the extension SHALL be NULL": clients need not
/// check the responder certificate's own revocation, so keep its lifetime short); SKI;
/// AKI. notBefore is one minute before `now`; notAfter is clipped to the issuer's.
pub fn ocsp_responder_tbs(
    issuer: &IssuerInfo,
    alg: SignatureAlgorithm,
    serial: &Serial,
    spki_der: &[u8],
    subject_cn: &str,
    now: UnixTime,
    validity_secs: i64,
) -> Result<Vec<u8>, CaError> {
    if validity_secs <= 0 {
        return Err(CaError::Encoding("OCSP responder validity must be positive".into()));
    }
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
    let validity =
        Validity { not_before: now.plus(-60), not_after: now.plus(validity_secs).min(issuer.not_after) };
    if validity.not_after <= now {
        return Err(CaError::InvalidCertificate("the issuing CA has expired".into()));
    }
    // The issuer's organizationName, copied as encoded, then the responder's CN.
    let mut rdns: Vec<RelativeDistinguishedName> = issuer
        .name
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == rfc4519::O)
        .take(1)
        .map(|atv| SetOfVec::try_from(vec![atv.clone()]).map(RelativeDistinguishedName))
        .collect::<Result<_, _>>()?;
    rdns.extend(name(&[(rfc4519::CN, subject_cn)])?.0);
    let no_check = Extension {
        extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK,
        critical: false,
        extn_value: OctetString::new(der::asn1::Null.to_der()?)?,
    };
    let extensions = vec![
        ext(&BasicConstraints { ca: false, path_len_constraint: None }, true)?,
        ext(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
        ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_OCSP_SIGNING]), false)?,
        no_check,
        ext(&SubjectKeyIdentifier(OctetString::new(key_id(&spki))?), false)?,
        ext(&aki(&issuer.ski)?, false)?,
    ];
    tbs(serial, alg, issuer.name.clone(), validity, RdnSequence(rdns), spki, extensions)
}
