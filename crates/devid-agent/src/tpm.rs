//! TPM 2.0 device side (feature `tpm`): the EK certificate, an attestation key, credential
//! activation, a device key that never leaves the TPM, its CSR and its certification.
//!
//! Built on tss-esapi (the TCG ESAPI, Debian's libtss2). It works on a TPM without a
//! resource manager (plain swtpm): every transient object and session is flushed after the
//! command that needs it, and at most three objects are loaded at once (the reference
//! implementation's MAX_LOADED_OBJECTS, TPM 2.0 Part 4).
//!
//! The byte formats are those of `devid_attest::tpm` (PROTOCOL.md): public areas are
//! TPM2B_PUBLIC, private areas TPM2B_PRIVATE, the credential TPM2B_ID_OBJECT and
//! TPM2B_ENCRYPTED_SECRET, the certification TPM2B_ATTEST and TPMT_SIGNATURE, all in the
//! TPM's canonical marshalling (TPM 2.0 Part 1 §18).

use std::cell::RefCell;
use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EccParameter, EccPoint, EccScheme, EncryptedSecret, HashScheme, HashcheckTicket, IdObject,
    KeyDerivationFunctionScheme, Private, Public, PublicBuffer, PublicBuilder, PublicEccParametersBuilder,
    Signature, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

/// Which endorsement key to use: the two TCG low-range EK templates (TCG EK Credential
/// Profile for TPM Family 2.0, §2.1.5.1 template L-1 and §2.1.5.3 template L-2), whose
/// certificates sit at NV indices 0x01C00002 and 0x01C0000A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkKind {
    /// RSA-2048 EK; the AK is then RSA-2048 with RSASSA-SHA256.
    Rsa2048,
    /// ECC NIST P-256 EK; the AK is then ECC P-256 with ECDSA-SHA256.
    EccP256,
}

/// A TPM failure. The messages name the operation and the TSS response code; they never
/// contain key material, credentials or secrets.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse or the TPM cannot be reached.
    #[error("cannot open the TPM through {tcti:?}: {detail}")]
    Open {
        /// The TCTI configuration given.
        tcti: String,
        /// Why.
        detail: String,
    },
    /// A TPM command failed.
    #[error("TPM {op} failed: {detail}")]
    Command {
        /// The operation (e.g. "TPM2_ActivateCredential").
        op: &'static str,
        /// The TSS response code or wrapper error.
        detail: String,
    },
    /// `activate` or `certify` was called before `identity` made an AK.
    #[error("no attestation key: call identity() first")]
    NoIdentity,
    /// An input is not in the expected TPM format.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The TPM returned something this agent does not handle.
    #[error("unexpected TPM output: {0}")]
    Unexpected(&'static str),
    /// The CSR could not be built.
    #[error("cannot build the CSR: {0}")]
    Csr(String),
}

fn cmd(op: &'static str) -> impl Fn(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Command { op, detail: e.to_string() }
}

/// What the device sends in the challenge request (PROTOCOL.md §1, `tpm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    /// The EK certificate (DER), read from the TCG NV index.
    pub ek_cert: Vec<u8>,
    /// The EK public area (TPM2B_PUBLIC).
    pub ek_public: Vec<u8>,
    /// The AK public area (TPM2B_PUBLIC).
    pub ak_public: Vec<u8>,
}

/// A key created in the TPM under the device-key primary, stored outside the TPM as its
/// public and (TPM-encrypted) private areas; [`TpmAgent`] reloads it for every use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKey {
    /// TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE (wrapped by the primary: useless outside this TPM).
    pub private: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the key (ECC P-256).
    pub spki_der: Vec<u8>,
}

impl TpmKey {
    /// A key saved earlier (by [`TpmAgent::create_device_key`]) from its two blobs: the
    /// TPM2B_PUBLIC, which must be an ECC NIST P-256 key, and the TPM2B_PRIVATE. Nothing
    /// is asked of the TPM here; a private area from another TPM (or a corrupted one) is
    /// refused by TPM2_Load when the key is used.
    pub fn from_blobs(public: Vec<u8>, private: Vec<u8>) -> Result<TpmKey, TpmError> {
        let area = Public::try_from(
            PublicBuffer::unmarshall(&public).map_err(|_| TpmError::Malformed("TPM2B_PUBLIC"))?,
        )
        .map_err(|_| TpmError::Malformed("TPM2B_PUBLIC"))?;
        match &area {
            Public::Ecc { parameters, .. } if parameters.ecc_curve() == EccCurve::NistP256 => {}
            _ => return Err(TpmError::Unexpected("the saved key is not an ECC NIST P-256 key")),
        }
        untpm2b(&private, "TPM2B_PRIVATE")?;
        let spki_der = [&P256_SPKI_PREFIX[..], &p256_point(&area)?].concat();
        Ok(TpmKey { public, private, spki_der })
    }
}

/// The AK made by [`TpmAgent::identity`], kept (public + wrapped private) for activation
/// and certification.
struct AkState {
    ek: EkKind,
    public: Public,
    private: Private,
}

/// A connection to a TPM.
pub struct TpmAgent {
    ctx: Context,
    ak: Option<AkState>,
}

impl std::fmt::Debug for TpmAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmAgent").field("has_ak", &self.ak.is_some()).finish()
    }
}

/// A TPM2B: UINT16 size || bytes (TPM 2.0 Part 2 §10.4).
fn tpm2b(data: &[u8]) -> Result<Vec<u8>, TpmError> {
    let n = u16::try_from(data.len()).map_err(|_| TpmError::Unexpected("TPM2B larger than 64 KiB"))?;
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(data);
    Ok(v)
}

/// The contents of a TPM2B that must be the whole input.
fn untpm2b<'a>(data: &'a [u8], what: &'static str) -> Result<&'a [u8], TpmError> {
    let (size, rest) = data.split_at_checked(2).ok_or(TpmError::Malformed(what))?;
    if usize::from(u16::from_be_bytes([size[0], size[1]])) != rest.len() {
        return Err(TpmError::Malformed(what));
    }
    Ok(rest)
}

/// The DER SubjectPublicKeyInfo prefix of an uncompressed ECC P-256 key (RFC 5480 §2:
/// id-ecPublicKey, secp256r1, then a 66-byte BIT STRING holding 04 || x || y).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn pad32(b: &[u8]) -> Result<[u8; 32], TpmError> {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    let b = &b[first..];
    let mut out = [0u8; 32];
    let start = 32usize.checked_sub(b.len()).ok_or(TpmError::Unexpected("P-256 coordinate over 32 bytes"))?;
    out[start..].copy_from_slice(b);
    Ok(out)
}

/// 04 || x || y of an ECC P-256 public area.
fn p256_point(public: &Public) -> Result<Vec<u8>, TpmError> {
    let Public::Ecc { unique, .. } = public else { return Err(TpmError::Unexpected("not an ECC key")) };
    let mut v = vec![0x04];
    v.extend_from_slice(&pad32(unique.x().value())?);
    v.extend_from_slice(&pad32(unique.y().value())?);
    Ok(v)
}

/// A DER INTEGER (X.690 §8.3) of a big-endian unsigned value.
fn der_uint(out: &mut Vec<u8>, b: &[u8]) {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len().saturating_sub(1));
    let b = b.get(first..).unwrap_or(&[0]);
    let b = if b.is_empty() { &[0u8][..] } else { b };
    let pad = b[0] & 0x80 != 0;
    out.push(0x02);
    out.push((b.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(b);
}

/// ECDSA-Sig-Value (RFC 5480 §2.2 / RFC 3279 §2.2.3): SEQUENCE { r INTEGER, s INTEGER }.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(72);
    der_uint(&mut body, r);
    der_uint(&mut body, s);
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// The length of a DER TLV at the start of `b` (EK certificates in NV may be padded).
fn der_len(b: &[u8]) -> Option<usize> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(2 + i)?);
    }
    Some(2 + n + len)
}

/// The template of the device-key primary: an ECC P-256 restricted decryption (storage)
/// key in the owner hierarchy with AES-128-CFB, as the TCG SRK template (TCG TPM v2.0
/// Provisioning Guidance §7.5.1; TPM 2.0 Part 1 §27.1). A primary is derived from the
/// hierarchy seed and the template (Part 1 §27.1, TPM2_CreatePrimary), so the same
/// template always recreates the same key, under which saved keys reload.
fn storage_primary_template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(cmd("SRK template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(cmd("SRK template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; 32]).map_err(cmd("SRK template"))?,
            EccParameter::try_from(vec![0u8; 32]).map_err(cmd("SRK template"))?,
        ))
        .build()
        .map_err(cmd("SRK template"))
}

/// The template of a device key: an ECC P-256 ECDSA-SHA256 signing key that was generated
/// in the TPM and cannot leave it (fixedTPM, fixedParent, sensitiveDataOrigin; TPM 2.0
/// Part 2 §8.3), usable with an empty authValue (userWithAuth, noDA), not restricted (it
/// signs CSRs and TLS handshakes).
pub(crate) fn device_key_template() -> Result<Public, TpmError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(cmd("key template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(false)
                .build()
                .map_err(cmd("key template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("key template"))
}

fn ek_selection(kind: EkKind) -> AsymmetricAlgorithmSelection {
    match kind {
        EkKind::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    }
}

impl TpmAgent {
    /// Connects to a TPM through a TCTI, e.g. `swtpm:host=127.0.0.1,port=2321` or
    /// `device:/dev/tpmrm0`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| TpmError::Open { tcti: tcti.to_string(), detail: e.to_string() })?;
        let ctx = Context::new(conf)
            .map_err(|e| TpmError::Open { tcti: tcti.to_string(), detail: e.to_string() })?;
        Ok(TpmAgent { ctx, ak: None })
    }

    /// Flushes a transient object, ignoring a failure (the object is gone either way when
    /// the context closes).
    fn flush(&mut self, handle: impl Into<ObjectHandle>) {
        let _ = self.ctx.flush_context(handle.into());
    }

    /// Recreates the EK from its TCG template (EK Credential Profile §2.1.5) in the
    /// endorsement hierarchy (TPM2_CreatePrimary, Part 3 §24.1).
    fn load_ek(&mut self, kind: EkKind) -> Result<KeyHandle, TpmError> {
        ek::create_ek_object_2(&mut self.ctx, ek_selection(kind), DefaultKey)
            .map_err(cmd("TPM2_CreatePrimary (EK)"))
    }

    /// Recreates the device-key primary.
    fn load_srk(&mut self) -> Result<KeyHandle, TpmError> {
        let template = storage_primary_template()?;
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(cmd("TPM2_CreatePrimary (SRK)"))?;
        Ok(r.key_handle)
    }

    /// Loads the AK under a fresh EK and flushes the EK (the AK stays loaded).
    fn load_ak(&mut self) -> Result<KeyHandle, TpmError> {
        let (kind, public, private) = match &self.ak {
            Some(a) => (a.ek, a.public.clone(), a.private.clone()),
            None => return Err(TpmError::NoIdentity),
        };
        let ek = self.load_ek(kind)?;
        let r = ak::load_ak(&mut self.ctx, ek, None, private, public).map_err(cmd("TPM2_Load (AK)"));
        self.flush(ek);
        r
    }

    /// Loads a device key under a fresh primary and flushes the primary.
    fn load_key(&mut self, key: &TpmKey) -> Result<KeyHandle, TpmError> {
        let public = Public::try_from(
            PublicBuffer::unmarshall(&key.public).map_err(|_| TpmError::Malformed("TPM2B_PUBLIC"))?,
        )
        .map_err(|_| TpmError::Malformed("TPM2B_PUBLIC"))?;
        let private = Private::try_from(untpm2b(&key.private, "TPM2B_PRIVATE")?.to_vec())
            .map_err(|_| TpmError::Malformed("TPM2B_PRIVATE"))?;
        let srk = self.load_srk()?;
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| c.load(srk, private, public))
            .map_err(cmd("TPM2_Load (device key)"));
        self.flush(srk);
        r
    }

    /// A policy session satisfying the EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT)
    /// (EK Credential Profile §2.1.5, policy A; TPM 2.0 Part 3 §23.4).
    fn ek_policy_session(&mut self) -> Result<AuthSession, TpmError> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(cmd("TPM2_StartAuthSession"))?
            .ok_or(TpmError::Unexpected("no policy session"))?;
        let (attrs, mask) = SessionAttributesBuilder::new().with_continue_session(true).build();
        let r = self
            .ctx
            .tr_sess_set_attributes(session, attrs, mask)
            .map_err(cmd("session attributes"))
            .and_then(|()| {
                let policy = PolicySession::try_from(session).map_err(cmd("policy session"))?;
                self.ctx
                    .execute_with_nullauth_session(|c| {
                        c.policy_secret(
                            policy,
                            AuthHandle::Endorsement,
                            Default::default(),
                            Default::default(),
                            Default::default(),
                            None,
                        )
                    })
                    .map_err(cmd("TPM2_PolicySecret"))
            });
        match r {
            Ok(_) => Ok(session),
            Err(e) => {
                self.flush(SessionHandle::from(session));
                Err(e)
            }
        }
    }

    /// The EK certificate, the EK public area and a new AK (TCG EK Credential Profile §2.2.1
    /// for the NV indices and templates; the AK is a restricted signing key created under
    /// the EK, TPM 2.0 Part 1 §25.2, as `tpm2_createak` does). The AK is kept in this agent
    /// for [`activate`](Self::activate) and [`certify`](Self::certify).
    pub fn identity(&mut self, ek_kind: EkKind) -> Result<TpmIdentity, TpmError> {
        let mut ek_cert = ek::retrieve_ek_pubcert(&mut self.ctx, ek_selection(ek_kind))
            .map_err(cmd("TPM2_NV_Read (EK certificate)"))?;
        if let Some(n) = der_len(&ek_cert).filter(|n| *n <= ek_cert.len()) {
            ek_cert.truncate(n);
        }
        let ek = self.load_ek(ek_kind)?;
        let r = (|| {
            let (ek_public, _, _) = self.ctx.read_public(ek).map_err(cmd("TPM2_ReadPublic (EK)"))?;
            let sign_alg = match ek_kind {
                EkKind::Rsa2048 => SignatureSchemeAlgorithm::RsaSsa,
                EkKind::EccP256 => SignatureSchemeAlgorithm::EcDsa,
            };
            let created =
                ak::create_ak(&mut self.ctx, ek, HashingAlgorithm::Sha256, sign_alg, None, DefaultKey)
                    .map_err(cmd("TPM2_Create (AK)"))?;
            Ok::<_, TpmError>((ek_public, created))
        })();
        self.flush(ek);
        let (ek_public, created) = r?;
        let marshal = |p: Public| -> Result<Vec<u8>, TpmError> {
            PublicBuffer::try_from(p).and_then(|b| b.marshall()).map_err(cmd("marshal TPM2B_PUBLIC"))
        };
        let identity = TpmIdentity {
            ek_cert,
            ek_public: marshal(ek_public)?,
            ak_public: marshal(created.out_public.clone())?,
        };
        self.ak = Some(AkState { ek: ek_kind, public: created.out_public, private: created.out_private });
        Ok(identity)
    }

    /// Creates an ECC P-256 signing key (fixedTPM, fixedParent) under the device-key
    /// primary (TPM2_Create, Part 3 §12.1). Keep the returned [`TpmKey`] to use the key later.
    pub fn create_device_key(&mut self) -> Result<TpmKey, TpmError> {
        let template = device_key_template()?;
        let srk = self.load_srk()?;
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| c.create(srk, template, None, None, None, None))
            .map_err(cmd("TPM2_Create (device key)"));
        self.flush(srk);
        let created = r?;
        let spki_der = [&P256_SPKI_PREFIX[..], &p256_point(&created.out_public)?].concat();
        let public = PublicBuffer::try_from(created.out_public)
            .and_then(|b| b.marshall())
            .map_err(cmd("marshal TPM2B_PUBLIC"))?;
        let private = tpm2b(created.out_private.value())?;
        Ok(TpmKey { public, private, spki_der })
    }

    /// A PKCS#10 CSR (RFC 2986) for `key` with subject CN `subject_cn`, signed in the TPM
    /// (ECDSA with SHA-256).
    pub fn sign_csr(&mut self, key: &TpmKey, subject_cn: &str) -> Result<Vec<u8>, TpmError> {
        let raw = key.spki_der.get(P256_SPKI_PREFIX.len()..).ok_or(TpmError::Malformed("SPKI"))?.to_vec();
        let signer = CsrSigner { agent: RefCell::new(self), key, raw, error: RefCell::new(None) };
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| TpmError::Csr(e.to_string()))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, subject_cn);
        match params.serialize_request(&signer) {
            Ok(csr) => Ok(csr.der().to_vec()),
            Err(e) => Err(signer.error.into_inner().unwrap_or(TpmError::Csr(e.to_string()))),
        }
    }

    /// TPM2_ActivateCredential (Part 3 §12.5) with the AK as the credentialed object and the
    /// EK as the protector; returns the credential (the server's secret).
    /// `credential_blob` is a TPM2B_ID_OBJECT, `encrypted_secret` a TPM2B_ENCRYPTED_SECRET.
    pub fn activate(&mut self, credential_blob: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>, TpmError> {
        let id_object = IdObject::try_from(untpm2b(credential_blob, "TPM2B_ID_OBJECT")?.to_vec())
            .map_err(|_| TpmError::Malformed("TPM2B_ID_OBJECT"))?;
        let secret = EncryptedSecret::try_from(untpm2b(encrypted_secret, "TPM2B_ENCRYPTED_SECRET")?.to_vec())
            .map_err(|_| TpmError::Malformed("TPM2B_ENCRYPTED_SECRET"))?;
        let kind = self.ak.as_ref().map(|a| a.ek).ok_or(TpmError::NoIdentity)?;
        let ak = self.load_ak()?;
        let ek = match self.load_ek(kind) {
            Ok(ek) => ek,
            Err(e) => {
                self.flush(ak);
                return Err(e);
            }
        };
        let r = self.ek_policy_session().and_then(|policy| {
            let r = self
                .ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(policy), None), |c| {
                    c.activate_credential(ak, ek, id_object, secret)
                })
                .map_err(cmd("TPM2_ActivateCredential"));
            self.flush(SessionHandle::from(policy));
            r
        });
        self.flush(ak);
        self.flush(ek);
        Ok(r?.value().to_vec())
    }

    /// TPM2_Certify (Part 3 §18.2) of `key` by the AK with `qualifying_data` as extraData.
    /// Returns the TPM2B_ATTEST (a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY) and the
    /// TPMT_SIGNATURE over its contents.
    pub fn certify(
        &mut self,
        key: &TpmKey,
        qualifying_data: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let data = Data::try_from(qualifying_data.to_vec()).map_err(cmd("qualifying data"))?;
        let object = self.load_key(key)?;
        let ak = match self.load_ak() {
            Ok(ak) => ak,
            Err(e) => {
                self.flush(object);
                return Err(e);
            }
        };
        let r = self
            .ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(AuthSession::Password), None), |c| {
                c.certify(object.into(), ak, data, SignatureScheme::Null)
            })
            .map_err(cmd("TPM2_Certify"));
        self.flush(object);
        self.flush(ak);
        let (attest, signature) = r?;
        let attest = tpm2b(&attest.marshall().map_err(cmd("marshal TPMS_ATTEST"))?)?;
        let signature = signature.marshall().map_err(cmd("marshal TPMT_SIGNATURE"))?;
        Ok((attest, signature))
    }

    /// Signs a SHA-256 digest with `key` (TPM2_Sign, TPM 2.0 Part 3 §20.2); returns the
    /// DER ECDSA-Sig-Value (RFC 3279 §2.2.3), as TLS and X.509 carry it. The key is not
    /// restricted, so the TPM signs any digest: the null ticket (TPM_RH_NULL) is what
    /// Part 3 §20.2 asks for then.
    pub fn sign(&mut self, key: &TpmKey, digest_sha256: &[u8; 32]) -> Result<Vec<u8>, TpmError> {
        let digest = Digest::try_from(digest_sha256.to_vec()).map_err(cmd("digest"))?;
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(cmd("null ticket"))?;
        let handle = self.load_key(key)?;
        let r = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(handle, digest, SignatureScheme::Null, ticket)
            })
            .map_err(cmd("TPM2_Sign"));
        self.flush(handle);
        match r? {
            Signature::EcDsa(sig) => Ok(ecdsa_der(sig.signature_r().value(), sig.signature_s().value())),
            _ => Err(TpmError::Unexpected("TPM2_Sign returned a non-ECDSA signature")),
        }
    }
}

/// rcgen's remote signing key: the CSR's to-be-signed bytes are hashed here and the digest
/// signed in the TPM.
struct CsrSigner<'a> {
    agent: RefCell<&'a mut TpmAgent>,
    key: &'a TpmKey,
    raw: Vec<u8>,
    error: RefCell<Option<TpmError>>,
}

impl rcgen::PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CsrSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        let r = self.agent.borrow_mut().sign(self.key, &digest);
        r.map_err(|e| {
            *self.error.borrow_mut() = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_helpers() {
        assert_eq!(ecdsa_der(&[0x01], &[0x80]), vec![0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80]);
        assert_eq!(ecdsa_der(&[0, 0, 5], &[0]), vec![0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x00]);
        assert_eq!(der_len(&[0x30, 0x82, 0x01, 0x00]), Some(260));
        assert_eq!(der_len(&[0x30, 0x05]), Some(7));
        assert_eq!(der_len(&[0x30]), None);
        assert_eq!(untpm2b(&[0, 2, 1, 2], "x").unwrap(), &[1, 2]);
        assert!(untpm2b(&[0, 3, 1, 2], "x").is_err());
        assert!(untpm2b(&[0], "x").is_err());
        assert_eq!(pad32(&[0, 1]).unwrap()[31], 1);
        assert!(pad32(&[1; 33]).is_err());
    }
}
