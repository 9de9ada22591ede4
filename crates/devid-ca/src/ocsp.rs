//! OCSP (RFC 6960) under the RFC 5019 lightweight profile: request parsing, issuer
//! matching, responses signed by a (delegated) responder, and unsigned error responses.
//! Pure: no clock, no store, no HTTP; times and statuses come in as arguments.
//!
//! The request side (RFC 6960 §4.1.1):
//!
//! ```text
//! OCSPRequest ::= SEQUENCE {
//!     tbsRequest                  TBSRequest,
//!     optionalSignature   [0]     EXPLICIT Signature OPTIONAL }
//!
//! TBSRequest ::= SEQUENCE {
//!     version             [0]     EXPLICIT Version DEFAULT v1,
//!     requestorName       [1]     EXPLICIT GeneralName OPTIONAL,
//!     requestList                 SEQUENCE OF Request,
//!     requestExtensions   [2]     EXPLICIT Extensions OPTIONAL }
//!
//! Request ::= SEQUENCE {
//!     reqCert                     CertID,
//!     singleRequestExtensions     [0] EXPLICIT Extensions OPTIONAL }
//!
//! CertID ::= SEQUENCE {
//!     hashAlgorithm       AlgorithmIdentifier,
//!     issuerNameHash      OCTET STRING, -- Hash of issuer's DN
//!     issuerKeyHash       OCTET STRING, -- Hash of issuer's public key
//!     serialNumber        CertificateSerialNumber }
//! ```
//!
//! The response side (RFC 6960 §4.2.1):
//!
//! ```text
//! OCSPResponse ::= SEQUENCE {
//!    responseStatus         OCSPResponseStatus,
//!    responseBytes          [0] EXPLICIT ResponseBytes OPTIONAL }
//!
//! BasicOCSPResponse       ::= SEQUENCE {
//!    tbsResponseData      ResponseData,
//!    signatureAlgorithm   AlgorithmIdentifier,
//!    signature            BIT STRING,
//!    certs            [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }
//!
//! ResponseData ::= SEQUENCE {
//!    version              [0] EXPLICIT Version DEFAULT v1,
//!    responderID              ResponderID,
//!    producedAt               GeneralizedTime,
//!    responses                SEQUENCE OF SingleResponse,
//!    responseExtensions   [1] EXPLICIT Extensions OPTIONAL }
//! ```
//!
//! The intended use is RFC 5019 §2.2's pre-produced responses: the server signs one
//! single-CertID response per certificate with [`Responder::sign_response`] (no nonce),
//! caches the DER and serves it to every client asking for that certificate. A request
//! with a nonce can still be answered freshly with the nonce echoed.

use std::sync::Arc;

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5280, rfc5912, rfc6960};
use der::asn1::{AnyRef, BitString, GeneralizedTime, IntRef, Null, OctetString, OctetStringRef};
use der::{Decode, Encode, Sequence};
use devid_core::{ErrorKind, RevocationReason, Serial, UnixTime};
use devid_kms::Signer;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, CrlReason, ExtendedKeyUsage};
use x509_ocsp::{
    CertStatus, OcspGeneralizedTime, OcspResponse, OcspResponseStatus, ResponderId, ResponseBytes,
    RevokedInfo, Version,
};

use crate::CaError;
use crate::profile::{IssuerInfo, SignatureBits, algorithm_identifier, key_id};

/// The most CertIDs accepted in one request. RFC 6960 sets no limit; RFC 5019 §2.1.1 lets
/// clients send one only. A bound keeps the work per request (and the signed response) small.
pub const MAX_CERT_IDS: usize = 32;

/// The longest nonce accepted, in octets. RFC 9654 §2.1 (updating RFC 8954): "Nonce ::=
/// OCTET STRING(SIZE(1..128))"; responders "MUST reject any OCSP request that has a nonce
/// with a length of either 0 octets or greater than 128 octets, with the malformedRequest
/// OCSPResponseStatus".
pub const MAX_NONCE_LEN: usize = 128;

/// Why a request was refused, and the `OCSPResponseStatus` to answer with
/// ([`OcspError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    /// Not a well-formed DER `OCSPRequest` (RFC 6960 §4.1.1), or a field outside what the
    /// RFC allows (empty requestList, a hash of the wrong length, an unknown critical
    /// extension). Answer `malformedRequest`.
    #[error("malformed OCSP request: {0}")]
    Malformed(String),
    /// More than [`MAX_CERT_IDS`] CertIDs in one request. Answer `malformedRequest`.
    #[error("OCSP request with {0} CertIDs (at most {MAX_CERT_IDS})")]
    TooManyCertIds(usize),
    /// A nonce of 0 or more than [`MAX_NONCE_LEN`] octets (RFC 9654 §2.1). Answer
    /// `malformedRequest`.
    #[error("OCSP nonce of {0} octets (1 to {MAX_NONCE_LEN})")]
    BadNonce(usize),
    /// A CertID hashAlgorithm other than SHA-1 or SHA-256: the responder cannot tell
    /// which issuer is meant, so it cannot respond authoritatively. Answer `unauthorized`
    /// (RFC 6960 §2.3: "the server is not capable of responding authoritatively").
    #[error("unsupported CertID hash algorithm {0}")]
    UnsupportedHash(ObjectIdentifier),
}

impl OcspError {
    /// The `OCSPResponseStatus` the HTTP layer answers with.
    pub fn status(&self) -> ErrorStatus {
        match self {
            OcspError::UnsupportedHash(_) => ErrorStatus::Unauthorized,
            OcspError::Malformed(_) | OcspError::TooManyCertIds(_) | OcspError::BadNonce(_) => {
                ErrorStatus::MalformedRequest
            }
        }
    }

    /// The coarse kind of this error (always the caller's fault).
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// The hash algorithm of a CertID (RFC 6960 §4.1.1 `hashAlgorithm`). RFC 5019 §2.1.1 has
/// clients use SHA-1; SHA-256 is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// id-sha1 (1.3.14.3.2.26).
    Sha1,
    /// id-sha256 (2.16.840.1.101.3.4.2.1).
    Sha256,
}

impl HashAlgorithm {
    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlgorithm::Sha1 => rfc5912::ID_SHA_1,
            HashAlgorithm::Sha256 => rfc5912::ID_SHA_256,
        }
    }

    fn from_oid(oid: ObjectIdentifier) -> Option<HashAlgorithm> {
        match oid {
            o if o == rfc5912::ID_SHA_1 => Some(HashAlgorithm::Sha1),
            o if o == rfc5912::ID_SHA_256 => Some(HashAlgorithm::Sha256),
            _ => None,
        }
    }

    fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
        }
    }
}

/// One CertID of a request (RFC 6960 §4.1.1):
///
/// ```text
/// CertID ::= SEQUENCE {
///     hashAlgorithm       AlgorithmIdentifier,
///     issuerNameHash      OCTET STRING, -- Hash of issuer's DN
///     issuerKeyHash       OCTET STRING, -- Hash of issuer's public key
///     serialNumber        CertificateSerialNumber }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedCert {
    /// The CertID exactly as received (DER, tag and length included): the response echoes
    /// these bytes (RFC 6960 §4.2.1 `SingleResponse.certID`).
    pub der: Vec<u8>,
    /// The hash algorithm of the two hashes.
    pub hash: HashAlgorithm,
    /// issuerNameHash: the hash of the DER of the issuer's subject Name.
    pub issuer_name_hash: Vec<u8>,
    /// issuerKeyHash: the hash of the issuer's subjectPublicKey BIT STRING contents.
    pub issuer_key_hash: Vec<u8>,
    /// The serial number, or `None` when it cannot be a devid serial (zero, negative or
    /// longer than 20 octets): answer `unknown` for those.
    pub serial: Option<Serial>,
}

/// A parsed `OCSPRequest` (RFC 6960 §4.1.1).
///
/// A request's `optionalSignature` and `requestorName` are accepted and ignored: devid's
/// responder serves status to anyone (RFC 6960 §4.1.2 leaves request signing optional).
/// `singleRequestExtensions` are ignored. Of the `requestExtensions`, the nonce is read;
/// other non-critical ones are ignored, and an unknown critical one makes the request
/// malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The CertIDs, in request order (1 to [`MAX_CERT_IDS`]).
    pub cert_ids: Vec<RequestedCert>,
    /// The value of the id-pkix-ocsp-nonce extension (RFC 6960 §4.4.1, RFC 9654), i.e. the
    /// contents of `Nonce ::= OCTET STRING`: 1 to [`MAX_NONCE_LEN`] octets.
    pub nonce: Option<Vec<u8>>,
    /// Whether the request carried an `optionalSignature` (not verified).
    pub signed: bool,
}

// Borrowed mirrors of the x509-ocsp request types, so that each CertID's received bytes
// are kept (x509-ocsp's owned types would only give a re-encoding).

#[derive(Sequence)]
struct OcspRequestRef<'a> {
    tbs_request: TbsRequestRef<'a>,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    optional_signature: Option<AnyRef<'a>>,
}

#[derive(Sequence)]
struct TbsRequestRef<'a> {
    #[asn1(context_specific = "0", default = "Default::default", tag_mode = "EXPLICIT")]
    version: Version,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    requestor_name: Option<AnyRef<'a>>,
    request_list: Vec<RequestRef<'a>>,
    #[asn1(context_specific = "2", optional = "true", tag_mode = "EXPLICIT")]
    request_extensions: Option<Vec<Extension>>,
}

#[derive(Sequence)]
struct RequestRef<'a> {
    req_cert: AnyRef<'a>,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    single_request_extensions: Option<AnyRef<'a>>,
}

#[derive(Sequence)]
struct CertIdRef<'a> {
    hash_algorithm: AlgorithmIdentifierRef<'a>,
    issuer_name_hash: OctetStringRef<'a>,
    issuer_key_hash: OctetStringRef<'a>,
    serial_number: IntRef<'a>,
}

/// Parse a DER `OCSPRequest` (RFC 6960 §4.1.1; the HTTP layer has already undone the
/// base64 of a GET, RFC 6960 Appendix A.1).
///
/// Accepted: 1 to [`MAX_CERT_IDS`] CertIDs hashed with SHA-1 or SHA-256 (parameters
/// absent or NULL), an optional nonce of 1 to [`MAX_NONCE_LEN`] octets. See
/// [`ParsedRequest`] for what is ignored, and [`OcspError::status`] for the answer to give
/// when this fails.
pub fn parse_request(der: &[u8]) -> Result<ParsedRequest, OcspError> {
    let req = OcspRequestRef::from_der(der).map_err(|e| OcspError::Malformed(e.to_string()))?;
    let tbs = req.tbs_request;
    let list = tbs.request_list;
    if list.is_empty() {
        return Err(OcspError::Malformed("empty requestList".into()));
    }
    if list.len() > MAX_CERT_IDS {
        return Err(OcspError::TooManyCertIds(list.len()));
    }
    let mut cert_ids = Vec::with_capacity(list.len());
    for r in &list {
        cert_ids.push(parse_cert_id(r.req_cert)?);
    }
    let mut nonce = None;
    for e in tbs.request_extensions.iter().flatten() {
        if e.extn_id == rfc6960::ID_PKIX_OCSP_NONCE {
            if nonce.is_some() {
                return Err(OcspError::Malformed("two nonce extensions".into()));
            }
            let n = OctetStringRef::from_der(e.extn_value.as_bytes())
                .map_err(|err| OcspError::Malformed(format!("nonce: {err}")))?;
            let n = n.as_bytes();
            if n.is_empty() || n.len() > MAX_NONCE_LEN {
                return Err(OcspError::BadNonce(n.len()));
            }
            nonce = Some(n.to_vec());
        } else if e.critical {
            return Err(OcspError::Malformed(format!("unknown critical extension {}", e.extn_id)));
        }
    }
    Ok(ParsedRequest { cert_ids, nonce, signed: req.optional_signature.is_some() })
}

fn parse_cert_id(any: AnyRef<'_>) -> Result<RequestedCert, OcspError> {
    let malformed = |e: der::Error| OcspError::Malformed(format!("CertID: {e}"));
    let der = any.to_der().map_err(malformed)?;
    let id = CertIdRef::from_der(&der).map_err(malformed)?;
    let oid = id.hash_algorithm.oid;
    let hash = HashAlgorithm::from_oid(oid).ok_or(OcspError::UnsupportedHash(oid))?;
    // RFC 5754 §2: the parameters of SHA-1/SHA-2 are absent, or NULL from older encoders.
    if let Some(p) = id.hash_algorithm.parameters
        && p != AnyRef::from(Null)
    {
        return Err(OcspError::Malformed("CertID hash algorithm with parameters".into()));
    }
    let (name, key) = (id.issuer_name_hash.as_bytes(), id.issuer_key_hash.as_bytes());
    if name.len() != hash.output_len() || key.len() != hash.output_len() {
        return Err(OcspError::Malformed("CertID hash of the wrong length".into()));
    }
    let serial_bytes = id.serial_number.as_bytes();
    let serial = match serial_bytes.first() {
        Some(b) if b & 0x80 == 0 => Serial::from_bytes(serial_bytes).ok(),
        _ => None,
    };
    Ok(RequestedCert { hash, issuer_name_hash: name.to_vec(), issuer_key_hash: key.to_vec(), serial, der })
}

/// The CertID hashes of one issuer, for both accepted algorithms (RFC 6960 §4.1.1):
/// "issuerNameHash is the hash of the issuer's distinguished name (DN). The hash shall be
/// calculated over the DER encoding of the issuer's name field in the certificate being
/// checked. issuerKeyHash is the hash of the issuer's public key. The hash shall be
/// calculated over the value (excluding tag and length) of the subject public key field in
/// the issuer's certificate" — i.e. the subjectPublicKey BIT STRING contents, without the
/// unused-bits octet, as openssl computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerHashes {
    /// SHA-1 of the issuer's subject Name, DER.
    pub sha1_name: [u8; 20],
    /// SHA-1 of the issuer's subjectPublicKey.
    pub sha1_key: [u8; 20],
    /// SHA-256 of the issuer's subject Name, DER.
    pub sha256_name: [u8; 32],
    /// SHA-256 of the issuer's subjectPublicKey.
    pub sha256_key: [u8; 32],
}

impl IssuerHashes {
    /// The hashes of an issuer certificate (DER).
    pub fn from_cert_der(der: &[u8]) -> Result<IssuerHashes, CaError> {
        let cert = Certificate::from_der(der)
            .map_err(|e| CaError::InvalidCertificate(format!("OCSP issuer certificate: {e}")))?;
        let tbs = cert.tbs_certificate;
        Ok(IssuerHashes::compute(
            &tbs.subject.to_der()?,
            tbs.subject_public_key_info.subject_public_key.raw_bytes(),
        ))
    }

    /// The hashes of an issuer known by its [`IssuerInfo`].
    pub fn from_issuer_info(info: &IssuerInfo) -> Result<IssuerHashes, CaError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(&info.spki_der)?;
        Ok(IssuerHashes::compute(&info.name.to_der()?, spki.subject_public_key.raw_bytes()))
    }

    fn compute(name_der: &[u8], key: &[u8]) -> IssuerHashes {
        IssuerHashes {
            sha1_name: Sha1::digest(name_der).into(),
            sha1_key: Sha1::digest(key).into(),
            sha256_name: Sha256::digest(name_der).into(),
            sha256_key: Sha256::digest(key).into(),
        }
    }

    fn hashes(&self, alg: HashAlgorithm) -> (&[u8], &[u8]) {
        match alg {
            HashAlgorithm::Sha1 => (&self.sha1_name, &self.sha1_key),
            HashAlgorithm::Sha256 => (&self.sha256_name, &self.sha256_key),
        }
    }

    /// Whether `id` names this issuer, comparing with the CertID's own hash algorithm
    /// (both issuerNameHash and issuerKeyHash must match, RFC 6960 §4.1.1).
    pub fn matches(&self, id: &RequestedCert) -> bool {
        let (name, key) = self.hashes(id.hash);
        id.issuer_name_hash == name && id.issuer_key_hash == key
    }

    /// A CertID DER for a certificate of this issuer, the way openssl and RFC 5019 §2.1.1
    /// clients build it (hash parameters NULL): for pre-producing responses before any
    /// request came in.
    pub fn cert_id_der(&self, alg: HashAlgorithm, serial: &Serial) -> Result<Vec<u8>, CaError> {
        let (name, key) = self.hashes(alg);
        let id = x509_ocsp::CertId {
            hash_algorithm: AlgorithmIdentifierOwned { oid: alg.oid(), parameters: Some(Null.into()) },
            issuer_name_hash: OctetString::new(name)?,
            issuer_key_hash: OctetString::new(key)?,
            serial_number: x509_cert::serial_number::SerialNumber::new(serial.as_bytes())?,
        };
        Ok(id.to_der()?)
    }
}

/// A certificate's status (RFC 6960 §4.2.1):
///
/// ```text
/// CertStatus ::= CHOICE {
///     good        [0]     IMPLICIT NULL,
///     revoked     [1]     IMPLICIT RevokedInfo,
///     unknown     [2]     IMPLICIT UnknownInfo }
///
/// RevokedInfo ::= SEQUENCE {
///     revocationTime              GeneralizedTime,
///     revocationReason    [0]     EXPLICIT CRLReason OPTIONAL }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Issued by this CA and not revoked (RFC 6960 §2.2 "good").
    Good,
    /// Revoked at `at`. The revocationReason is included for any reason but
    /// `unspecified`, which is left out as RFC 5280 §5.3.1 asks of CRL entries ("the
    /// reason code CRL entry extension SHOULD be absent instead of using the unspecified
    /// (0) reasonCode value").
    Revoked {
        /// revocationTime.
        at: UnixTime,
        /// revocationReason.
        reason: Option<RevocationReason>,
    },
    /// Not known to this responder (RFC 6960 §2.2 "unknown").
    Unknown,
}

/// One SingleResponse to sign (RFC 6960 §4.2.1):
///
/// ```text
/// SingleResponse ::= SEQUENCE {
///    certID                       CertID,
///    certStatus                   CertStatus,
///    thisUpdate                   GeneralizedTime,
///    nextUpdate         [0]       EXPLICIT GeneralizedTime OPTIONAL,
///    singleExtensions   [1]       EXPLICIT Extensions OPTIONAL }
/// ```
///
/// nextUpdate is always present: RFC 5019 §2.2.4 has responders pre-producing responses
/// set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingleStatus<'a> {
    /// The CertID DER, echoed byte for byte: [`RequestedCert::der`] or
    /// [`IssuerHashes::cert_id_der`].
    pub cert_id_der: &'a [u8],
    /// certStatus.
    pub status: Status,
    /// thisUpdate: the time at which the status is known to be correct.
    pub this_update: UnixTime,
    /// nextUpdate: the time at or before which newer status will be available.
    pub next_update: UnixTime,
}

/// The unsuccessful `OCSPResponseStatus` values devid answers with (RFC 6960 §4.2.1):
///
/// ```text
/// OCSPResponseStatus ::= ENUMERATED {
///     successful            (0),  -- Response has valid confirmations
///     malformedRequest      (1),  -- Illegal confirmation request
///     internalError         (2),  -- Internal error in issuer
///     tryLater              (3),  -- Try again later
///                                 -- (4) is not used
///     sigRequired           (5),  -- Must sign the request
///     unauthorized          (6)   -- Request unauthorized
/// }
/// ```
///
/// `sigRequired` is never used: devid does not require signed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorStatus {
    /// malformedRequest (1).
    MalformedRequest,
    /// internalError (2).
    InternalError,
    /// tryLater (3).
    TryLater,
    /// unauthorized (6): RFC 5019 §2.2.3, the responder is not authoritative for the
    /// certificate asked about.
    Unauthorized,
}

impl ErrorStatus {
    /// The ENUMERATED value.
    pub fn code(self) -> u8 {
        match self {
            ErrorStatus::MalformedRequest => 1,
            ErrorStatus::InternalError => 2,
            ErrorStatus::TryLater => 3,
            ErrorStatus::Unauthorized => 6,
        }
    }
}

/// An unsigned `OCSPResponse` carrying only an error `responseStatus` (RFC 6960 §4.2.1:
/// "If the value of responseStatus is one of the error conditions, the responseBytes field
/// is not set"): `SEQUENCE { ENUMERATED code }`.
pub fn error_response(status: ErrorStatus) -> Vec<u8> {
    vec![0x30, 0x03, 0x0a, 0x01, status.code()]
}

// The response is assembled from borrowed parts, so that the CertIDs and the responder
// certificate are embedded as given, and the signed ResponseData is embedded as signed.

#[derive(Sequence)]
struct ResponseDataRef<'a> {
    // version [0] EXPLICIT DEFAULT v1: DER leaves the default out.
    responder_id: ResponderId,
    produced_at: OcspGeneralizedTime,
    responses: Vec<SingleResponseRef<'a>>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    response_extensions: Option<Vec<Extension>>,
}

#[derive(Sequence)]
struct SingleResponseRef<'a> {
    cert_id: AnyRef<'a>,
    cert_status: CertStatus,
    this_update: OcspGeneralizedTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    next_update: Option<OcspGeneralizedTime>,
}

#[derive(Sequence)]
struct BasicOcspResponseRef<'a> {
    tbs_response_data: AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    certs: Option<Vec<AnyRef<'a>>>,
}

/// An OCSP responder: its certificate and the signer of its key, checked and prepared
/// once, then used for every response.
///
/// The certificate is either a delegated responder certificate
/// ([`crate::profile::ocsp_responder_tbs`], RFC 6960 §4.2.2.2: issued by the CA whose
/// certificates it answers for, with id-kp-OCSPSigning) or the CA certificate itself.
pub struct Responder {
    cert_der: Vec<u8>,
    key_hash: [u8; 20],
    signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("key_hash", &hex::encode(self.key_hash))
            .field("key_ref", self.signer.key_ref())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Prepare a responder. Fails when the certificate does not parse, its public key is
    /// not the signer's, or it can sign OCSP responses for nobody (neither a CA nor a
    /// holder of id-kp-OCSPSigning, RFC 6960 §4.2.2.2).
    pub fn new(cert_der: &[u8], signer: Arc<dyn Signer>) -> Result<Responder, CaError> {
        let key_hash = check_responder(cert_der, signer.as_ref())?;
        Ok(Responder { cert_der: cert_der.to_vec(), key_hash, signer })
    }

    /// The responder's certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The `ResponderID ::= byKey KeyHash` value: the SHA-1 of the responder's
    /// subjectPublicKey BIT STRING contents (RFC 6960 §4.2.1).
    pub fn key_hash(&self) -> &[u8; 20] {
        &self.key_hash
    }

    /// Sign a successful `OCSPResponse`; see [`build_response`].
    ///
    /// The signature is checked afterwards only when the responder's key is outside this
    /// process ([`Signer::may_block`]: an HSM or a remote KMS, where a faulty device is a
    /// real possibility and the check costs little beside the round trip). An in-process
    /// key is not checked: the check (one ECDSA verification) costs more than twice the
    /// signing and was about 8 % of the server's CPU per enrollment, since every issuance
    /// pre-signs an answer. A bad signature would fail closed at the client (the response
    /// is refused), and could never make a revoked certificate look good. Certificates and
    /// CRLs, signed with the CA's key, are always checked.
    pub fn sign_response(
        &self,
        produced_at: UnixTime,
        statuses: &[SingleStatus<'_>],
        nonce: Option<&[u8]>,
    ) -> Result<Vec<u8>, CaError> {
        let check = self.signer.may_block();
        sign(&self.cert_der, &self.key_hash, self.signer.as_ref(), produced_at, statuses, nonce, check)
    }
}

/// Build and sign a successful DER `OCSPResponse` (RFC 6960 §4.2.1, RFC 5019 §2.2):
/// responseStatus `successful`, responseBytes of type id-pkix-ocsp-basic holding a
/// `BasicOCSPResponse` with
/// - responderID `byKey` (RFC 5019 §2.2.2 recommends it): the SHA-1 of the responder's
///   subjectPublicKey BIT STRING contents;
/// - producedAt, and one SingleResponse per entry of `statuses`, in order, each echoing
///   its CertID byte for byte;
/// - the id-pkix-ocsp-nonce extension (RFC 6960 §4.4.1) when `nonce` (the OCTET STRING
///   contents from [`ParsedRequest::nonce`]) is given; leave it out for pre-produced
///   responses;
/// - signatureAlgorithm and signature from `signer`, whose key must be the responder
///   certificate's; the signature is checked with that public key before returning;
/// - certs = [the responder certificate], so that clients can check the delegation
///   (RFC 6960 §4.2.2.2).
///
/// All times are GeneralizedTime in UTC without fractions (RFC 6960 §4.2.2.1). For many
/// responses with one responder, build a [`Responder`] once instead.
pub fn build_response(
    responder_cert_der: &[u8],
    signer: &dyn Signer,
    produced_at: UnixTime,
    statuses: &[SingleStatus<'_>],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, CaError> {
    let key_hash = check_responder(responder_cert_der, signer)?;
    sign(responder_cert_der, &key_hash, signer, produced_at, statuses, nonce, true)
}

/// Check the responder certificate against its signer; returns the byKey KeyHash.
fn check_responder(cert_der: &[u8], signer: &dyn Signer) -> Result<[u8; 20], CaError> {
    let cert = Certificate::from_der(cert_der)
        .map_err(|e| CaError::InvalidCertificate(format!("OCSP responder certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let signer_spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_spki_der())?;
    if tbs.subject_public_key_info != signer_spki {
        return Err(CaError::InvalidCertificate(
            "the OCSP responder certificate is not for the signer's key".into(),
        ));
    }
    let exts = tbs.extensions.iter().flatten();
    let mut is_ca = false;
    let mut ocsp_signing = false;
    for e in exts {
        if e.extn_id == rfc5280::ID_CE_BASIC_CONSTRAINTS {
            is_ca = BasicConstraints::from_der(e.extn_value.as_bytes()).map(|b| b.ca).unwrap_or(false);
        } else if e.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE {
            ocsp_signing = ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                .map(|k| k.0.contains(&rfc5280::ID_KP_OCSP_SIGNING))
                .unwrap_or(false);
        }
    }
    if !is_ca && !ocsp_signing {
        return Err(CaError::InvalidCertificate(
            "the OCSP responder certificate is neither a CA nor an id-kp-OCSPSigning delegate".into(),
        ));
    }
    key_id(&tbs.subject_public_key_info)
        .try_into()
        .map_err(|_| CaError::Encoding("SHA-1 key hash is not 20 octets".into()))
}

fn sign(
    cert_der: &[u8],
    key_hash: &[u8; 20],
    signer: &dyn Signer,
    produced_at: UnixTime,
    statuses: &[SingleStatus<'_>],
    nonce: Option<&[u8]>,
    check: bool,
) -> Result<Vec<u8>, CaError> {
    if statuses.is_empty() {
        return Err(CaError::Encoding("an OCSP response needs at least one SingleResponse".into()));
    }
    let mut responses = Vec::with_capacity(statuses.len());
    for s in statuses {
        if s.next_update < s.this_update {
            return Err(CaError::Encoding("OCSP nextUpdate before thisUpdate".into()));
        }
        // Only a well-formed CertID may be echoed.
        CertIdRef::from_der(s.cert_id_der).map_err(|e| CaError::Encoding(format!("CertID to echo: {e}")))?;
        responses.push(SingleResponseRef {
            cert_id: AnyRef::from_der(s.cert_id_der)?,
            cert_status: cert_status(s.status)?,
            this_update: gtime(s.this_update)?,
            next_update: Some(gtime(s.next_update)?),
        });
    }
    let response_extensions = match nonce {
        None => None,
        Some(n) => Some(vec![Extension {
            extn_id: rfc6960::ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(OctetStringRef::new(n)?.to_der()?)?,
        }]),
    };
    let tbs = ResponseDataRef {
        responder_id: ResponderId::ByKey(OctetString::new(key_hash.as_slice())?),
        produced_at: gtime(produced_at)?,
        responses,
        response_extensions,
    }
    .to_der()?;
    let sig = signer.sign(&tbs)?;
    if check {
        devid_kms::verify_p256_sha256(signer.public_key_spki_der(), &tbs, &sig)?;
    }
    let basic = BasicOcspResponseRef {
        tbs_response_data: AnyRef::from_der(&tbs)?,
        signature_algorithm: algorithm_identifier(signer.algorithm()),
        signature: SignatureBits::from_bytes(&sig)?,
        certs: Some(vec![AnyRef::from_der(cert_der)?]),
    }
    .to_der()?;
    let resp = OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: rfc6960::ID_PKIX_OCSP_BASIC,
            response: OctetString::new(basic)?,
        }),
    };
    Ok(resp.to_der()?)
}

fn cert_status(s: Status) -> Result<CertStatus, CaError> {
    Ok(match s {
        Status::Good => CertStatus::good(),
        Status::Unknown => CertStatus::unknown(),
        Status::Revoked { at, reason } => CertStatus::revoked(RevokedInfo {
            revocation_time: gtime(at)?,
            revocation_reason: reason.and_then(crl_reason),
        }),
    })
}

/// CRLReason for a revocation reason; `None` for unspecified (left out, see [`Status`]).
fn crl_reason(r: RevocationReason) -> Option<CrlReason> {
    match r {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::CaCompromise => Some(CrlReason::CaCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
        RevocationReason::AaCompromise => Some(CrlReason::AaCompromise),
    }
}

/// RFC 6960 §4.2.2.1 / RFC 5280 §4.1.2.5.2: GeneralizedTime in Zulu, seconds, no fraction.
fn gtime(t: UnixTime) -> Result<OcspGeneralizedTime, CaError> {
    let secs = u64::try_from(t.0).map_err(|_| CaError::Encoding(format!("time before 1970: {}", t.0)))?;
    Ok(OcspGeneralizedTime(GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_match_x509_ocsp_encoding() {
        for (s, r) in [
            (ErrorStatus::MalformedRequest, OcspResponse::malformed_request()),
            (ErrorStatus::InternalError, OcspResponse::internal_error()),
            (ErrorStatus::TryLater, OcspResponse::try_later()),
            (ErrorStatus::Unauthorized, OcspResponse::unauthorized()),
        ] {
            assert_eq!(error_response(s), r.to_der().expect("der"));
        }
    }

    #[test]
    fn every_reason_but_unspecified_is_encoded() {
        for code in 0..=10u8 {
            if let Some(r) = RevocationReason::from_code(code) {
                let c = crl_reason(r);
                assert_eq!(c.map(|c| c as u8), if code == 0 { None } else { Some(code) });
            }
        }
    }

    #[test]
    fn garbage_and_limits_are_refused() {
        assert!(matches!(parse_request(b"not der"), Err(OcspError::Malformed(_))));
        assert!(matches!(parse_request(&[]), Err(OcspError::Malformed(_))));
        let hashes = IssuerHashes::compute(b"name", b"key");
        let id = hashes.cert_id_der(HashAlgorithm::Sha1, &Serial::from_bytes(&[1]).expect("s")).expect("id");
        let req = |n: usize, nonce: Option<&[u8]>| {
            let list: Vec<RequestRef<'_>> = (0..n)
                .map(|_| RequestRef {
                    req_cert: AnyRef::from_der(&id).expect("any"),
                    single_request_extensions: None,
                })
                .collect();
            let exts = nonce.map(|n| {
                vec![Extension {
                    extn_id: rfc6960::ID_PKIX_OCSP_NONCE,
                    critical: false,
                    extn_value: OctetString::new(OctetStringRef::new(n).expect("n").to_der().expect("d"))
                        .expect("o"),
                }]
            });
            OcspRequestRef {
                tbs_request: TbsRequestRef {
                    version: Version::V1,
                    requestor_name: None,
                    request_list: list,
                    request_extensions: exts,
                },
                optional_signature: None,
            }
            .to_der()
            .expect("der")
        };
        let ok = parse_request(&req(MAX_CERT_IDS, Some(&[7; MAX_NONCE_LEN]))).expect("max");
        assert_eq!(ok.cert_ids.len(), MAX_CERT_IDS);
        assert_eq!(ok.nonce.as_deref(), Some(&[7u8; MAX_NONCE_LEN][..]));
        assert!(ok.cert_ids.iter().all(|c| hashes.matches(c) && c.der == id));
        assert_eq!(parse_request(&req(MAX_CERT_IDS + 1, None)), Err(OcspError::TooManyCertIds(33)));
        assert!(matches!(parse_request(&req(0, None)), Err(OcspError::Malformed(_))));
        assert_eq!(parse_request(&req(1, Some(&[7; 129]))), Err(OcspError::BadNonce(129)));
        assert_eq!(parse_request(&req(1, Some(&[]))), Err(OcspError::BadNonce(0)));
        assert_eq!(OcspError::BadNonce(0).status(), ErrorStatus::MalformedRequest);
    }

    #[test]
    fn unsupported_hash_is_unauthorized_and_odd_serials_are_unknown() {
        let mk = |oid: ObjectIdentifier, len: usize, serial: &[u8]| {
            let id = CertIdRef {
                hash_algorithm: AlgorithmIdentifierRef { oid, parameters: None },
                issuer_name_hash: OctetStringRef::new(&[1; 48][..len]).expect("o"),
                issuer_key_hash: OctetStringRef::new(&[2; 48][..len]).expect("o"),
                serial_number: IntRef::new(serial).expect("i"),
            }
            .to_der()
            .expect("der");
            parse_cert_id(AnyRef::from_der(&id).expect("any"))
        };
        let e = mk(rfc5912::ID_SHA_384, 48, &[1]).expect_err("sha384");
        assert_eq!(e.status(), ErrorStatus::Unauthorized);
        assert!(matches!(mk(rfc5912::ID_SHA_1, 32, &[1]), Err(OcspError::Malformed(_))));
        let neg = mk(rfc5912::ID_SHA_256, 32, &[0x80]).expect("negative serial parses");
        assert_eq!(neg.serial, None);
        assert_eq!(neg.hash, HashAlgorithm::Sha256);
        assert_eq!(mk(rfc5912::ID_SHA_1, 20, &[0]).expect("zero").serial, None);
        assert_eq!(mk(rfc5912::ID_SHA_1, 20, &[0x7f; 21]).expect("long").serial, None);
        assert_eq!(
            mk(rfc5912::ID_SHA_1, 20, &[0, 0x80]).expect("padded").serial,
            Serial::from_bytes(&[0x80]).ok()
        );
    }
}
