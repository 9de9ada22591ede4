//! Certificate revocation lists (RFC 5280 §5), encoded as a stream.
//!
//! RFC 5280 §5.1:
//!
//! ```text
//! CertificateList  ::=  SEQUENCE  {
//!      tbsCertList          TBSCertList,
//!      signatureAlgorithm   AlgorithmIdentifier,
//!      signatureValue       BIT STRING  }
//!
//! TBSCertList  ::=  SEQUENCE  {
//!      version                 Version OPTIONAL,
//!                                   -- if present, MUST be v2
//!      signature               AlgorithmIdentifier,
//!      issuer                  Name,
//!      thisUpdate              Time,
//!      nextUpdate              Time OPTIONAL,
//!      revokedCertificates     SEQUENCE OF SEQUENCE  {
//!           userCertificate         CertificateSerialNumber,
//!           revocationDate          Time,
//!           crlEntryExtensions      Extensions OPTIONAL
//!                                    -- if present, version MUST be v2
//!                                }  OPTIONAL,
//!      crlExtensions           [0]  EXPLICIT Extensions OPTIONAL
//!                                    -- if present, version MUST be v2
//!                                }
//! ```
//!
//! A [`CrlBuilder`] is fed one revoked certificate at a time (typically straight from a
//! database cursor) and DER-encodes each `revokedCertificates` entry into one growing
//! buffer; no per-entry structs are kept. [`CrlBuilder::finish`] writes the SEQUENCE
//! headers and the fixed TBSCertList fields into headroom reserved at the front of that
//! buffer, appends `crlExtensions`, signs the TBSCertList bytes in place, verifies the
//! signature with the issuer's public key and appends the signature.
//!
//! # Memory
//!
//! The whole CRL lives in one `Vec<u8>`, the one returned; the entries are never copied
//! into a second buffer. [`CrlBuilder::new`] reserves a headroom of
//! `3 × 6 + len(version … nextUpdate)` bytes at the front; `finish` fills the end of it
//! with the headers and then moves the CRL down over the few unused headroom bytes with an
//! in-place `memmove` (`Vec::drain`), which allocates nothing. Every `push` keeps enough
//! spare capacity for the `crlExtensions` and the signature, so `finish` never reallocates.
//!
//! The peak is therefore the capacity of that one buffer: without a hint it grows by
//! doubling, so it stays below 2 × the final CRL size (plus, during one growth step, the
//! old block if the allocator cannot grow it in place: glibc `mremap`s large blocks,
//! mimalloc copies them into a new one).
//! With [`CrlBuilder::reserve`] given the number of entries to come, the buffer is
//! allocated once at [`MAX_ENTRY_LEN`] (55) bytes per entry (≤ 1.41 × the final size for
//! 20-octet serials without reason codes, ≤ 1.04 × with them) and never reallocated.
//!
//! # Size limit
//!
//! The CRL's outer length must fit the 256 MiB DER length limit of the `der` crate
//! (`der::Length::MAX`), so that this crate's own parser can read it back; that is about
//! five million entries. [`CrlBuilder::push`] refuses the entry that would cross it:
//! partition large populations with [`shard_of`] and an [`IssuingDistributionPoint`].

use const_oid::db::rfc5280;
use der::asn1::{BitStringRef, ContextSpecificRef, Ia5String, OctetString, Uint};
use der::{Decode, Encode, Header, Length, Reader, SliceReader, Tag, TagMode, TagNumber};
use devid_core::{RevocationReason, Serial, UnixTime};
use devid_kms::{SignatureAlgorithm, Signer};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use x509_cert::certificate::Version;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

use crate::CaError;
use crate::profile::{IssuerInfo, SignatureBits, aki, algorithm_identifier, ext, time};

/// One revoked certificate, as read from the store: RFC 5280 §5.1.2.6
///
/// ```text
/// SEQUENCE  {
///      userCertificate         CertificateSerialNumber,
///      revocationDate          Time,
///      crlEntryExtensions      Extensions OPTIONAL }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlEntry<'a> {
    /// userCertificate: the revoked certificate's serial number.
    pub serial: &'a Serial,
    /// revocationDate (RFC 5280 §5.1.2.6: encoded by the rules of §5.1.2.4, UTCTime
    /// through 2049 and GeneralizedTime from 2050).
    pub revoked_at: UnixTime,
    /// The reasonCode entry extension (RFC 5280 §5.3.1). `None` and `Some(Unspecified)`
    /// both leave it out: "the reason code CRL entry extension SHOULD be absent instead of
    /// using the unspecified (0) reasonCode value".
    pub reason: Option<RevocationReason>,
}

/// The per-CRL fields of the TBSCertList (RFC 5280 §5.1.2.4, §5.1.2.5, §5.2.3, §5.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlParams {
    /// cRLNumber (RFC 5280 §5.2.3, `CRLNumber ::= INTEGER (0..MAX)`): "a monotonically
    /// increasing sequence number for a given CRL scope and CRL issuer". Non-critical.
    pub crl_number: u64,
    /// thisUpdate (RFC 5280 §5.1.2.4): the issue date of this CRL.
    pub this_update: UnixTime,
    /// nextUpdate (RFC 5280 §5.1.2.5): "the date by which the next CRL will be issued";
    /// always present ("Conforming CRL issuers MUST include the nextUpdate time"), and
    /// must be later than `this_update`.
    pub next_update: UnixTime,
    /// The issuingDistributionPoint extension of a sharded CRL, if any.
    pub idp: Option<IssuingDistributionPoint>,
}

/// For sharded CRLs: the RFC 5280 §5.2.5 issuingDistributionPoint CRL extension,
/// critical, with a fullName URI and onlyContainsUserCerts = TRUE.
///
/// ```text
/// IssuingDistributionPoint ::= SEQUENCE {
///      distributionPoint          [0] DistributionPointName OPTIONAL,
///      onlyContainsUserCerts      [1] BOOLEAN DEFAULT FALSE,
///      onlyContainsCACerts        [2] BOOLEAN DEFAULT FALSE,
///      onlySomeReasons            [3] ReasonFlags OPTIONAL,
///      indirectCRL                [4] BOOLEAN DEFAULT FALSE,
///      onlyContainsAttributeCerts [5] BOOLEAN DEFAULT FALSE }
/// ```
///
/// The URI must be the one in the cRLDistributionPoints of the certificates this shard
/// covers (relying parties such as OpenSSL match the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuingDistributionPoint {
    /// The distributionPoint fullName, a uniformResourceIdentifier (IA5String).
    pub uri: String,
}

/// The longest DER encoding of one `revokedCertificates` entry: SEQUENCE header (2),
/// INTEGER of at most 20 content octets (2 + 20, RFC 5280 §4.1.2.2), GeneralizedTime
/// (2 + 15), crlEntryExtensions with reasonCode (14).
pub const MAX_ENTRY_LEN: usize = 2 + 22 + 17 + REASON_EXT_LEN;

/// The crlEntryExtensions of an entry with a reasonCode, RFC 5280 §5.3.1
/// (`id-ce-cRLReasons OBJECT IDENTIFIER ::= { id-ce 21 }`, `CRLReason ::= ENUMERATED`),
/// non-critical; the last octet is the code:
///
/// ```text
/// 30 0c                      Extensions
///    30 0a                   Extension
///       06 03 55 1d 15       extnID id-ce-cRLReasons (2.5.29.21)
///       04 03                extnValue OCTET STRING
///          0a 01 XX          ENUMERATED code
/// ```
const REASON_EXT: [u8; REASON_EXT_LEN] =
    [0x30, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01, 0x00];
const REASON_EXT_LEN: usize = 14;

/// The longest tag + length of a SEQUENCE whose content fits `der::Length::MAX`
/// (tag, 0x84, four length octets).
const MAX_HEADER_LEN: usize = 6;

/// The largest outer content length `der` 0.7 can parse back (`der::Length::MAX`, 256 MiB).
const MAX_CRL_CONTENT: usize = 0x0fff_ffff;

/// A v2 CRL being built, one revoked certificate at a time. See the [module
/// documentation](self) for the layout and the memory bound.
#[derive(Debug)]
pub struct CrlBuilder {
    alg: SignatureAlgorithm,
    /// The issuer's SubjectPublicKeyInfo: the signer must hold this key, and the signature
    /// is verified with it.
    issuer_spki: Vec<u8>,
    /// DER of `version`, `signature`, `issuer`, `thisUpdate`, `nextUpdate`.
    prefix: Vec<u8>,
    /// DER of `crlExtensions [0] EXPLICIT Extensions`.
    suffix: Vec<u8>,
    /// `head` bytes of headroom, then the DER entries.
    buf: Vec<u8>,
    head: usize,
    /// Spare capacity every push leaves for `suffix` and the signature.
    tail_reserve: usize,
    /// The size limit, [`MAX_CRL_CONTENT`] (lowered by tests).
    max_len: usize,
    count: usize,
}

impl CrlBuilder {
    /// Start a CRL of `issuer`, to be signed with `alg` (RFC 5280 §5.1.2.2: the
    /// `signature` field "MUST contain the same algorithm identifier as the
    /// signatureAlgorithm field in the sequence CertificateList").
    ///
    /// Encodes now what does not depend on the entries: version v2 (§5.1.2.1), signature,
    /// issuer (§5.1.2.3, the issuer's subject Name), thisUpdate and nextUpdate (§5.1.2.4–5),
    /// and crlExtensions (§5.2): authorityKeyIdentifier (§5.2.1, the issuer's SKI),
    /// cRLNumber (§5.2.3, non-critical) and, for a shard, issuingDistributionPoint (§5.2.5,
    /// critical).
    pub fn new(issuer: &IssuerInfo, alg: SignatureAlgorithm, params: CrlParams) -> Result<Self, CaError> {
        if params.next_update <= params.this_update {
            return Err(CaError::Encoding("the CRL's nextUpdate must be later than its thisUpdate".into()));
        }
        let alg_id = algorithm_identifier(alg);
        let mut prefix = Vec::new();
        Version::V2.encode_to_vec(&mut prefix)?;
        alg_id.encode_to_vec(&mut prefix)?;
        issuer.name.encode_to_vec(&mut prefix)?;
        time(params.this_update)?.encode_to_vec(&mut prefix)?;
        time(params.next_update)?.encode_to_vec(&mut prefix)?;

        let mut extensions = vec![
            ext(&aki(&issuer.ski)?, false)?,
            ext(&CrlNumber(Uint::new(&params.crl_number.to_be_bytes())?), false)?,
        ];
        if let Some(idp) = &params.idp {
            extensions.push(idp_extension(idp)?);
        }
        let mut suffix = Vec::new();
        ContextSpecificRef { tag_number: TagNumber::N0, tag_mode: TagMode::Explicit, value: &extensions }
            .encode_to_vec(&mut suffix)?;

        let head = 3 * MAX_HEADER_LEN + prefix.len();
        let tail_reserve = suffix.len()
            + usize::try_from(alg_id.encoded_len()?)?
            + MAX_HEADER_LEN
            + 1
            + max_signature_len(alg);
        let mut buf = Vec::with_capacity(head + tail_reserve);
        buf.resize(head, 0);
        Ok(CrlBuilder {
            alg,
            issuer_spki: issuer.spki_der.clone(),
            prefix,
            suffix,
            buf,
            head,
            tail_reserve,
            max_len: MAX_CRL_CONTENT,
            count: 0,
        })
    }

    /// Reserve room for `entries` more entries at [`MAX_ENTRY_LEN`] bytes each, so that
    /// the buffer is allocated once (pass the store's count of revoked certificates).
    /// Optional: without it the buffer grows by doubling.
    pub fn reserve(&mut self, entries: usize) {
        let bytes = entries.saturating_mul(MAX_ENTRY_LEN).min(MAX_CRL_CONTENT);
        self.buf.reserve_exact(bytes.saturating_add(self.tail_reserve));
    }

    /// Encode one revokedCertificates entry straight into the output buffer (RFC 5280
    /// §5.1.2.6):
    ///
    /// ```text
    /// SEQUENCE  {
    ///      userCertificate         CertificateSerialNumber,
    ///      revocationDate          Time,
    ///      crlEntryExtensions      Extensions OPTIONAL }
    /// ```
    ///
    /// `userCertificate` is the serial as a positive, minimal INTEGER (§4.1.2.2);
    /// `crlEntryExtensions` is present only with a reasonCode other than unspecified
    /// (§5.3.1). Entries are written in the order pushed; the caller must not push a
    /// serial twice. On error nothing of the entry is kept.
    pub fn push(&mut self, e: &CrlEntry<'_>) -> Result<(), CaError> {
        let serial = e.serial.as_bytes();
        // RFC 5280 §4.1.2.2: positive, minimal, at most 20 octets (with the 0x00 pad).
        let pad = match serial.first() {
            Some(&b) if b != 0 && serial.len() + usize::from(b >= 0x80) <= 20 => usize::from(b >= 0x80),
            _ => return Err(CaError::Encoding(format!("serial {} is not a valid serial number", e.serial))),
        };
        let (date, date_len) = der_time(e.revoked_at)?;
        let reason = e.reason.filter(|r| *r != RevocationReason::Unspecified);

        // Amortized (doubling) growth; a no-op while the spare capacity suffices. Keeping
        // `tail_reserve` spare means `finish` never reallocates.
        self.buf.reserve(MAX_ENTRY_LEN + self.tail_reserve);
        let start = self.buf.len();
        // Every entry is shorter than 128 octets (MAX_ENTRY_LEN): short-form lengths.
        self.buf.extend_from_slice(&[0x30, 0x00, 0x02, (serial.len() + pad) as u8]);
        if pad == 1 {
            self.buf.push(0x00);
        }
        self.buf.extend_from_slice(serial);
        self.buf.extend_from_slice(&date[..date_len]);
        if let Some(r) = reason {
            let mut ext = REASON_EXT;
            ext[REASON_EXT_LEN - 1] = r.code();
            self.buf.extend_from_slice(&ext);
        }
        let content = self.buf.len() - start - 2;
        if content >= 0x80 || self.buf.len() + self.tail_reserve > self.max_len {
            self.buf.truncate(start);
            return Err(CaError::Encoding(format!(
                "the CRL would exceed {} octets after {} entries: partition it \
                 (shard_of and an issuingDistributionPoint)",
                self.max_len, self.count
            )));
        }
        if let Some(len) = self.buf.get_mut(start + 1) {
            *len = content as u8;
        }
        self.count += 1;
        Ok(())
    }

    /// The number of entries pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no entry has been pushed (the CRL will have no revokedCertificates field).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Assemble the TBSCertList, sign it through `signer`, verify the signature with the
    /// issuer's public key, and return the DER CertificateList (RFC 5280 §5.1.1):
    ///
    /// ```text
    /// CertificateList  ::=  SEQUENCE  {
    ///      tbsCertList          TBSCertList,
    ///      signatureAlgorithm   AlgorithmIdentifier,
    ///      signatureValue       BIT STRING  }
    /// ```
    ///
    /// With no entries, `revokedCertificates` is left out (§5.1.2.6: "When there are no
    /// revoked certificates, the revoked certificates list MUST be absent"). The bytes
    /// signed are the TBSCertList bytes of the output, in place; the framing of the result
    /// is parsed back before it is returned.
    pub fn finish(self, signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
        if signer.algorithm() != self.alg {
            return Err(CaError::InvalidCertificate(
                "the TBSCertList names a different signature algorithm than the signer's".into(),
            ));
        }
        same_key(signer.public_key_spki_der(), &self.issuer_spki)?;
        let CrlBuilder { alg, issuer_spki, prefix, suffix, mut buf, head, count, .. } = self;

        let entries_len = buf.len() - head;
        let revoked_header = if count > 0 { header(entries_len)? } else { Vec::new() };
        let tbs_header = header(prefix.len() + revoked_header.len() + entries_len + suffix.len())?;
        // Write the headers and the fixed fields backwards into the headroom.
        let mut pos = head;
        for part in [&revoked_header, &prefix, &tbs_header] {
            pos = pos.checked_sub(part.len()).ok_or_else(headroom_bug)?;
            buf.get_mut(pos..pos + part.len()).ok_or_else(headroom_bug)?.copy_from_slice(part);
        }
        let tbs_start = pos;
        buf.extend_from_slice(&suffix);
        let tbs_end = buf.len();

        let tbs = buf.get(tbs_start..tbs_end).ok_or_else(headroom_bug)?;
        let sig = signer.sign(tbs)?;
        devid_kms::verify_p256_sha256(&issuer_spki, tbs, &sig)?;
        algorithm_identifier(alg).encode_to_vec(&mut buf)?;
        SignatureBits::from_bytes(&sig)?.encode_to_vec(&mut buf)?;

        let outer_header = header(buf.len() - tbs_start)?;
        let start = tbs_start.checked_sub(outer_header.len()).ok_or_else(headroom_bug)?;
        buf.get_mut(start..tbs_start).ok_or_else(headroom_bug)?.copy_from_slice(&outer_header);
        // In-place move over the unused headroom: no allocation, no second copy.
        buf.drain(..start);

        check_framing(&buf, (tbs_start - start)..(tbs_end - start), count, alg)?;
        Ok(buf)
    }
}

/// The shard of a certificate for serial-number-partitioned CRLs:
///
/// ```text
/// shard = (serialNumber mod 2^32) mod shards
/// ```
///
/// i.e. the last (least significant) four octets of the serial, big-endian, modulo
/// `shards` (a shorter serial is its own value). It depends on the serial's integer value
/// only, so the issuer (choosing the certificate's cRLDistributionPoints URI) and the store
/// (selecting a shard's revoked certificates, or recording the shard at issuance) agree.
/// Random serials spread evenly; so do sequential ones. `shards` of 0 or 1 mean a single
/// CRL: the result is 0.
pub fn shard_of(serial: &Serial, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let bytes = serial.as_bytes();
    let low = &bytes[bytes.len().saturating_sub(4)..];
    let v = low.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    (v % u32::from(shards)) as u16
}

/// The issuingDistributionPoint extension, RFC 5280 §5.2.5
/// (`id-ce-issuingDistributionPoint OBJECT IDENTIFIER ::= { id-ce 28 }`), critical.
///
/// Built with an explicit OID: `x509-cert` 0.2.5 associates its `IssuingDistributionPoint`
/// type with id-pe-subjectInfoAccess (1.3.6.1.5.5.7.1.11) instead of 2.5.29.28, so the
/// crate's `ext` helper must not be used for it.
fn idp_extension(idp: &IssuingDistributionPoint) -> Result<Extension, CaError> {
    let value = x509_cert::ext::pkix::crl::IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(Ia5String::new(&idp.uri)?),
        ])),
        only_contains_user_certs: true,
        only_contains_ca_certs: false,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    Ok(Extension {
        extn_id: rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT,
        critical: true,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// The DER Time of `t` by the rule of [`crate::profile::time`] (RFC 5280 §5.1.2.6 → §5.1.2.4:
/// "CRL issuers conforming to this profile MUST encode thisUpdate as UTCTime for dates
/// through the year 2049" and as GeneralizedTime from 2050; negative times clamp to the
/// epoch), written directly: this is the per-entry hot path, and going through
/// `der::DateTime` costs several times more. Returns the buffer and the encoded length.
///
/// ```text
/// UTCTime          17 0d YYMMDDHHMMSSZ
/// GeneralizedTime  18 0f YYYYMMDDHHMMSSZ
/// ```
fn der_time(t: UnixTime) -> Result<([u8; 17], usize), CaError> {
    let secs = t.0.max(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms", days_from_civil inverse), for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        return Err(CaError::Encoding(format!("time {} is after the year 9999", t.0)));
    }
    let (tag, len, century) = if year < 2050 { (0x17, 13, None) } else { (0x18, 15, Some(year / 100)) };
    let digits = [century, Some(year % 100), Some(month), Some(day), Some(rem / 3600), Some(rem / 60 % 60)];
    let mut out = [0u8; 17];
    out[0] = tag;
    out[1] = len;
    let mut n = 2;
    // Each field is two decimal digits (0..=99).
    for v in digits.into_iter().flatten().chain([rem % 60]) {
        out[n] = b'0' + (v / 10) as u8;
        out[n + 1] = b'0' + (v % 10) as u8;
        n += 2;
    }
    out[n] = b'Z';
    Ok((out, n + 1))
}

/// The longest DER signature value of `alg` (ECDSA-Sig-Value of P-256: at most 72 octets).
fn max_signature_len(alg: SignatureAlgorithm) -> usize {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => 72,
    }
}

/// The DER tag and length of a SEQUENCE with `len` content octets.
fn header(len: usize) -> Result<Vec<u8>, CaError> {
    let length = Length::try_from(len)
        .map_err(|_| CaError::Encoding(format!("a CRL of {len} octets exceeds the DER length limit")))?;
    Ok(Header::new(Tag::Sequence, length)?.to_der()?)
}

fn headroom_bug() -> CaError {
    CaError::Encoding("CRL headroom too small (a bug)".into())
}

/// The signer must hold the issuer's key: a CRL signed by another key would be rejected by
/// every relying party.
fn same_key(signer_spki: &[u8], issuer_spki: &[u8]) -> Result<(), CaError> {
    fn parse(der: &[u8]) -> Result<SubjectPublicKeyInfoRef<'_>, CaError> {
        SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| CaError::InvalidCertificate(format!("public key: {e}")))
    }
    if parse(signer_spki)? != parse(issuer_spki)? {
        return Err(CaError::InvalidCertificate("the signer's key is not the CRL issuer's key".into()));
    }
    Ok(())
}

/// Parse the framing of the assembled CRL back, without allocating per entry: the outer
/// SEQUENCE spans the whole output; its first TLV is exactly the bytes that were signed;
/// the TBSCertList holds the fixed fields, `count` entries (or no list at all) and the
/// crlExtensions; the signature algorithm is the signer's.
fn check_framing(
    der: &[u8],
    signed: std::ops::Range<usize>,
    count: usize,
    alg: SignatureAlgorithm,
) -> Result<(), CaError> {
    let bad = |what: &str| CaError::Encoding(format!("assembled CRL is malformed: {what}"));
    let signed_bytes = der.get(signed).ok_or_else(|| bad("signed range"))?;
    let mut outer = SliceReader::new(der)?;
    outer.sequence(|r| {
        let tbs = r.tlv_bytes()?;
        if !std::ptr::eq(tbs, signed_bytes) {
            return Err(der::Tag::Sequence.value_error());
        }
        let sig_alg = AlgorithmIdentifierRef::decode(r)?;
        if sig_alg.oid != algorithm_identifier(alg).oid || sig_alg.parameters.is_some() {
            return Err(der::Tag::Sequence.value_error());
        }
        BitStringRef::decode(r)?;
        Ok(())
    })?;
    outer.finish(())?;

    let mut tbs = SliceReader::new(signed_bytes)?;
    let entries = tbs.sequence(|r| {
        let version = Version::decode(r)?;
        if version != Version::V2 {
            return Err(der::Tag::Integer.value_error());
        }
        for _ in 0..4 {
            // signature, issuer, thisUpdate, nextUpdate
            r.tlv_bytes()?;
        }
        let entries = if r.peek_header()?.tag == Tag::Sequence {
            count_entries(der::asn1::AnyRef::decode(r)?.value()).ok_or_else(|| Tag::Sequence.value_error())?
        } else {
            0
        };
        let ext = r.peek_header()?;
        if ext.tag != (Tag::ContextSpecific { constructed: true, number: TagNumber::N0 }) {
            return Err(ext.tag.value_error());
        }
        r.tlv_bytes()?;
        Ok(entries)
    })?;
    tbs.finish(())?;
    if entries != count {
        return Err(bad(&format!("{entries} entries instead of {count}")));
    }
    Ok(())
}

/// The number of entries in the contents of `revokedCertificates`, each a SEQUENCE with a
/// short-form length as `push` writes them; `None` if they do not tile the list exactly.
/// A plain loop: der's reader costs ~20 ns per entry here, this ~1 ns.
fn count_entries(list: &[u8]) -> Option<usize> {
    let (mut i, mut n) = (0usize, 0usize);
    while i < list.len() {
        match list.get(i..i + 2) {
            Some(&[0x30, len]) if len < 0x80 && len > 0 => i += 2 + usize::from(len),
            _ => return None,
        }
        n += 1;
    }
    (i == list.len()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use const_oid::AssociatedOid;
    use der::Decode;
    use x509_cert::ext::pkix::crl::CrlReason;

    #[test]
    fn reason_template_matches_x509_cert_encoding() {
        let all = [
            (RevocationReason::KeyCompromise, CrlReason::KeyCompromise),
            (RevocationReason::CaCompromise, CrlReason::CaCompromise),
            (RevocationReason::AffiliationChanged, CrlReason::AffiliationChanged),
            (RevocationReason::Superseded, CrlReason::Superseded),
            (RevocationReason::CessationOfOperation, CrlReason::CessationOfOperation),
            (RevocationReason::PrivilegeWithdrawn, CrlReason::PrivilegeWithdrawn),
            (RevocationReason::AaCompromise, CrlReason::AaCompromise),
        ];
        for (ours, theirs) in all {
            let exts = vec![ext(&theirs, false).expect("ext")];
            let mut want = REASON_EXT;
            want[REASON_EXT_LEN - 1] = ours.code();
            assert_eq!(exts.to_der().expect("der"), want.to_vec(), "{ours}");
        }
        assert_eq!(CrlReason::OID, rfc5280::ID_CE_CRL_REASONS);
    }

    /// An in-memory P-256 signer and an issuer for it.
    struct TestSigner {
        key: aws_lc_rs::signature::EcdsaKeyPair,
        spki: Vec<u8>,
        key_ref: devid_core::KeyRef,
    }

    impl TestSigner {
        fn new() -> (TestSigner, IssuerInfo) {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
            let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
            spki.extend_from_slice(key.public_key().as_ref());
            let issuer = IssuerInfo {
                name: crate::profile::name(&[(const_oid::db::rfc4519::CN, "Unit Issuing")]).expect("name"),
                ski: vec![7; 20],
                spki_der: spki.clone(),
                not_after: UnixTime(4_000_000_000),
            };
            (TestSigner { key, spki, key_ref: devid_core::KeyRef::soft("unit").expect("ref") }, issuer)
        }
    }

    impl Signer for TestSigner {
        fn key_ref(&self) -> &devid_core::KeyRef {
            &self.key_ref
        }
        fn algorithm(&self) -> SignatureAlgorithm {
            SignatureAlgorithm::EcdsaP256Sha256
        }
        fn public_key_spki_der(&self) -> &[u8] {
            &self.spki
        }
        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, devid_kms::KmsError> {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            Ok(self.key.sign(&rng, msg).expect("sign").as_ref().to_vec())
        }
    }

    fn params() -> CrlParams {
        CrlParams {
            crl_number: 1,
            this_update: UnixTime(1_800_000_000),
            next_update: UnixTime(1_800_086_400),
            idp: None,
        }
    }

    fn entry(s: &Serial) -> CrlEntry<'_> {
        CrlEntry { serial: s, revoked_at: UnixTime(1_799_000_000), reason: None }
    }

    fn serial(i: u32) -> Serial {
        let mut b = [0x5a; 20];
        b[16..].copy_from_slice(&i.to_be_bytes());
        Serial::from_bytes(&b).expect("serial")
    }

    /// The memory claims: `finish` works in the pushed buffer (same allocation, no
    /// reallocation), with a hint the buffer is allocated once, and without one its
    /// capacity stays under twice the CRL.
    #[test]
    fn finish_reuses_the_entry_buffer_and_capacity_is_bounded() {
        let (signer, issuer) = TestSigner::new();
        let n = 50_000u32;

        let mut hinted =
            CrlBuilder::new(&issuer, SignatureAlgorithm::EcdsaP256Sha256, params()).expect("new");
        hinted.reserve(n as usize);
        let (ptr, cap) = (hinted.buf.as_ptr(), hinted.buf.capacity());
        for i in 0..n {
            hinted.push(&entry(&serial(i))).expect("push");
        }
        let crl = hinted.finish(&signer).expect("finish");
        assert_eq!((crl.as_ptr(), crl.capacity()), (ptr, cap), "hinted: allocated once");
        assert!(cap <= n as usize * MAX_ENTRY_LEN + 1024);

        let mut grown = CrlBuilder::new(&issuer, SignatureAlgorithm::EcdsaP256Sha256, params()).expect("new");
        for i in 0..n {
            grown.push(&entry(&serial(i))).expect("push");
        }
        let (ptr, cap) = (grown.buf.as_ptr(), grown.buf.capacity());
        let same = grown.finish(&signer).expect("finish");
        assert_eq!((same.as_ptr(), same.capacity()), (ptr, cap), "finish must not reallocate");
        assert!(same.capacity() < 2 * same.len(), "{} for {}", same.capacity(), same.len());
        // Same content (the signatures differ: ECDSA is randomized, 70 to 72 octets).
        let tbs = |d: &[u8]| {
            x509_cert::crl::CertificateList::from_der(d).expect("parse").tbs_cert_list.to_der().expect("der")
        };
        assert_eq!(tbs(&same), tbs(&crl));
    }

    #[test]
    fn an_oversized_crl_is_refused_without_a_trace() {
        let (signer, issuer) = TestSigner::new();
        let mut b = CrlBuilder::new(&issuer, SignatureAlgorithm::EcdsaP256Sha256, params()).expect("new");
        b.max_len = b.buf.len() + b.tail_reserve + 100;
        b.push(&entry(&serial(1))).expect("first fits");
        b.push(&entry(&serial(2))).expect("second fits");
        let full = b.buf.len();
        let err = b.push(&entry(&serial(3))).expect_err("too large");
        assert!(err.to_string().contains("partition"), "{err}");
        assert_eq!((b.buf.len(), b.len()), (full, 2));
        // What was pushed before is intact.
        let crl = b.finish(&signer).expect("finish");
        let parsed = x509_cert::crl::CertificateList::from_der(&crl).expect("parse");
        assert_eq!(parsed.tbs_cert_list.revoked_certificates.map(|r| r.len()), Some(2));
    }

    /// The hot-path Time encoder agrees with `profile::time` (der's DateTime) everywhere.
    #[test]
    fn der_time_matches_the_profile_rule() {
        let der = |t: i64| {
            let (b, n) = der_time(UnixTime(t)).expect("der_time");
            b[..n].to_vec()
        };
        let want = |t: i64| time(UnixTime(t)).expect("time").to_der().expect("der");
        let fixed = [
            -5,
            0,
            86_399,
            86_400,
            951_782_400,     // 2000-02-29
            1_800_000_000,   // 2027
            2_524_607_999,   // 2049-12-31T23:59:59Z: last UTCTime
            2_524_608_000,   // 2050-01-01: first GeneralizedTime
            4_107_542_400,   // 2100-03-01 (2100 is not a leap year)
            4_107_456_000,   // 2100-02-28
            253_402_300_799, // 9999-12-31T23:59:59Z
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random = (0..200_000).map(|_| {
            // xorshift: times spread over 1970..=9999.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 253_402_300_800) as i64
        });
        for t in fixed.into_iter().chain(random) {
            assert_eq!(der(t), want(t), "t = {t}");
        }
        assert!(der_time(UnixTime(253_402_300_800)).is_err());
        assert!(time(UnixTime(253_402_300_800)).is_err());
    }

    #[test]
    fn shard_is_the_low_32_bits_mod_shards() {
        let s = Serial::from_hex("7f0102030405").expect("serial");
        assert_eq!(shard_of(&s, 16), (0x0203_0405u32 % 16) as u16);
        assert_eq!(shard_of(&s, 1000), (0x0203_0405u32 % 1000) as u16);
        let short = Serial::from_hex("0105").expect("serial");
        assert_eq!(shard_of(&short, 7), (0x0105 % 7) as u16);
        assert_eq!(shard_of(&s, 0), 0);
        assert_eq!(shard_of(&s, 1), 0);
    }
}
