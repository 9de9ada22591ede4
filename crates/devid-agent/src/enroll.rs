//! Enrollment (PROTOCOL.md §1–2) and renewal (§3), from evidence to files on disk.

use std::path::PathBuf;

use devid_core::DeviceId;
use zeroize::Zeroizing;

use crate::client::{endpoint, http_client, mtls_client, post_json, read_pem_certificates};
use crate::error::{AgentError, ErrorKind};
use crate::files::{self, CertInfo, Layout, NewFile};
use crate::keys::{Csr, DeviceKey, FactoryKey, pem_certificates};
use crate::protocol::{
    ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, RenewRequest, b64, unb64,
};

/// What the device proves its identity with.
pub enum Evidence {
    /// A one-time enrollment token from `devid device add`.
    Token {
        /// The token (a secret).
        token: Zeroizing<String>,
    },
    /// An X.509 IDevID: the factory chain (DER, device certificate first) and its key.
    X509 {
        /// The enrollment group.
        group: String,
        /// The factory chain, DER, device certificate first.
        chain: Vec<Vec<u8>>,
        /// The factory key.
        key: FactoryKey,
    },
    /// A key derived from the group master key (or provisioned per device).
    Symmetric {
        /// The enrollment group.
        group: String,
        /// The device id the key belongs to.
        device_id: DeviceId,
        /// The device key (a secret).
        device_key: Zeroizing<[u8; 32]>,
    },
    /// A TPM 2.0 (feature `tpm`).
    #[cfg(feature = "tpm")]
    Tpm {
        /// The enrollment group.
        group: String,
        /// The TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
        tcti: String,
        /// Which EK.
        ek: crate::tpm::EkKind,
    },
}

impl Evidence {
    /// The method name of the protocol.
    pub fn method(&self) -> &'static str {
        match self {
            Evidence::Token { .. } => "token",
            Evidence::X509 { .. } => "x509",
            Evidence::Symmetric { .. } => "symmetric",
            #[cfg(feature = "tpm")]
            Evidence::Tpm { .. } => "tpm",
        }
    }

    /// Whether enrolling again with this evidence can work (a token is single-use).
    pub fn is_reusable(&self) -> bool {
        !matches!(self, Evidence::Token { .. })
    }
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence").field("method", &self.method()).finish_non_exhaustive()
    }
}

/// An enrollment to do.
#[derive(Debug)]
pub struct EnrollPlan {
    /// The enrollment server's base URL.
    pub server: String,
    /// Trust exactly these CA certificates (PEM file) for the server's TLS; else the
    /// built-in web PKI roots.
    pub ca: Option<PathBuf>,
    /// The evidence.
    pub evidence: Evidence,
    /// The device id for the CSR's CN, when known.
    pub device_id: Option<DeviceId>,
}

/// A renewal to do.
#[derive(Debug, Clone)]
pub struct RenewPlan {
    /// The renewal listener's base URL (https).
    pub server: String,
    /// Trust exactly these CA certificates (PEM file); else the root at the end of
    /// `chain.pem`.
    pub ca: Option<PathBuf>,
    /// Make a new key instead of certifying the current one again (for a TPM key: a new
    /// key in the same TPM).
    pub rekey: bool,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The device id (the certificate's CN), when it has one.
    pub device_id: Option<String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// The certificate file.
    pub cert: PathBuf,
    /// The chain file.
    pub chain: PathBuf,
    /// The key file (`key.pem`, or `key.tpm` for a TPM key).
    pub key: PathBuf,
}

impl Outcome {
    /// `{device_id, serial, not_after, cert, chain, key}` (paths), for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "device_id": self.device_id,
            "serial": self.serial,
            "not_after": self.not_after,
            "cert": self.cert.display().to_string(),
            "chain": self.chain.display().to_string(),
            "key": self.key.display().to_string(),
        })
    }
}

/// Enroll: make a key and a CSR, prove the identity as the evidence says, and write
/// `key.pem` (0600), `cert.pem` and `chain.pem` atomically into `layout`.
pub async fn enroll(plan: &EnrollPlan, layout: &Layout) -> Result<Outcome, AgentError> {
    let roots = match &plan.ca {
        Some(p) => Some(read_pem_certificates(p)?),
        None => None,
    };
    let http = http_client(roots.as_deref())?;
    #[cfg(feature = "tpm")]
    if let Evidence::Tpm { group, tcti, ek } = &plan.evidence {
        return crate::tpm_enroll::enroll(&http, plan, group, tcti, *ek, layout).await;
    }
    let key = DeviceKey::generate()?;
    let csr = key.csr(plan.device_id.as_ref().map(DeviceId::as_str))?;
    let body = match &plan.evidence {
        Evidence::Token { token } => EnrollRequest::Token { token: token.to_string(), csr: csr.pem.clone() },
        Evidence::X509 { group, chain, key: factory } => {
            let (nonce_text, binding) = challenge(&http, &plan.server, group, "x509", &csr).await?;
            EnrollRequest::X509 {
                group: group.clone(),
                nonce: nonce_text,
                chain: chain.iter().map(|c| b64(c)).collect(),
                signature: b64(&factory.sign(&binding)?),
                csr: csr.pem.clone(),
            }
        }
        Evidence::Symmetric { group, device_id, device_key } => {
            let (nonce_text, binding) = challenge(&http, &plan.server, group, "symmetric", &csr).await?;
            EnrollRequest::Symmetric {
                group: group.clone(),
                device_id: device_id.to_string(),
                nonce: nonce_text,
                proof: b64(&devid_attest::symmetric::proof(device_key.as_slice(), &binding)),
                csr: csr.pem.clone(),
            }
        }
        #[cfg(feature = "tpm")]
        Evidence::Tpm { .. } => {
            return Err(AgentError::usage("internal: TPM evidence reached the software path"));
        }
    };
    let url = endpoint(&plan.server, "/v1/enroll")?;
    let resp: EnrollResponse = post_json(&http, &url, &body, "enrollment").await?;
    let (info, cert_der) = check_issued(&resp, &key.spki_der())?;
    let key_pem = key.pkcs8_pem();
    store(layout, &resp, &cert_der, Some((files::KEY_PEM, key_pem.as_bytes())))?;
    Ok(outcome(layout, &resp, info, layout.key()))
}

/// The identity a renewal presents over mutual TLS, read from the output directory.
#[derive(Debug, Clone)]
pub(crate) struct CurrentIdentity {
    /// The current certificate's serial, validity and CN.
    pub info: CertInfo,
    /// What is presented: the certificate, then the intermediates (not the root: the
    /// server has it). DER.
    pub presented: Vec<Vec<u8>>,
    /// The trust anchors for the renewal listener: `--ca`, else the root at the end of
    /// `chain.pem`.
    pub roots: Vec<Vec<u8>>,
}

impl CurrentIdentity {
    fn read(plan: &RenewPlan, layout: &Layout) -> Result<Self, AgentError> {
        let cert_pem = files::read_text(&layout.cert())?;
        let cert_der = pem_certificates(&cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| AgentError::crypto(format!("{} holds no certificate", layout.cert().display())))?;
        let chain = pem_certificates(&files::read_text(&layout.chain())?)?;
        let info = files::cert_info(&cert_der)?;
        let roots = match &plan.ca {
            Some(p) => read_pem_certificates(p)?,
            None => vec![chain.last().cloned().ok_or_else(|| {
                AgentError::crypto(format!(
                    "{} holds no certificate to trust; give --ca",
                    layout.chain().display()
                ))
            })?],
        };
        let mut presented = vec![cert_der];
        presented.extend(chain.iter().take(chain.len().saturating_sub(1)).cloned());
        Ok(CurrentIdentity { info, presented, roots })
    }

    /// The current certificate, DER.
    #[cfg(feature = "tpm")]
    fn cert_der(&self) -> &[u8] {
        self.presented.first().map_or(&[], Vec::as_slice)
    }
}

/// Renew over mutual TLS with the current certificate and key (PROTOCOL.md §3): the same
/// key by default, a new one with `rekey` (written only once the new certificate is
/// there). A TPM key (`key.tpm`, feature `tpm`) is used through the TPM recorded in
/// `key.tpm`; [`renew_with_tcti`] names another.
pub async fn renew(plan: &RenewPlan, layout: &Layout) -> Result<Outcome, AgentError> {
    renew_with_tcti(plan, layout, None).await
}

/// [`renew`], with the TPM of a TPM key (`key.tpm`) at `tpm_tcti` (e.g.
/// `device:/dev/tpmrm0`) rather than the one `key.tpm` records. The TPM key is used when
/// there is no `key.pem`, or when the certificate is for the TPM key (a `key.pem` left by an
/// earlier software enrollment); the TLS handshake and the CSR are then signed in the TPM
/// (TPM2_Sign), and `rekey` makes the new key in the same TPM.
pub async fn renew_with_tcti(
    plan: &RenewPlan,
    layout: &Layout,
    tpm_tcti: Option<&str>,
) -> Result<Outcome, AgentError> {
    let current = CurrentIdentity::read(plan, layout)?;
    let has_pem = layout.key().is_file();
    if layout.key_tpm().is_file() {
        #[cfg(feature = "tpm")]
        {
            // With a key.pem too, an unreadable key.tpm does not stop the software renewal.
            let tpm_key = match crate::tpm_enroll::read_key_file(&layout.key_tpm()) {
                Ok(k) => Some(k),
                Err(e) if !has_pem => return Err(e),
                Err(_) => None,
            };
            if let Some((key, recorded)) = tpm_key
                && (!has_pem || files::cert_spki_der(current.cert_der())? == key.spki_der)
            {
                let tcti = tpm_tcti.map(str::to_string).or(recorded).ok_or_else(|| {
                    AgentError::usage(format!(
                        "{} does not record its TPM: give --tpm-tcti",
                        layout.key_tpm().display()
                    ))
                })?;
                return crate::tpm_enroll::renew(plan, layout, current, key, &tcti).await;
            }
        }
        #[cfg(not(feature = "tpm"))]
        if !has_pem {
            return Err(AgentError::usage(
                "this identity's key is in a TPM (key.tpm) and this devid-agent was built without TPM support (cargo feature `tpm`)",
            ));
        }
    }
    if tpm_tcti.is_some() {
        return Err(AgentError::usage(format!(
            "--tpm-tcti: {} holds no TPM key (key.tpm) for its certificate",
            layout.dir.display()
        )));
    }
    let key_pem = Zeroizing::new(files::read_text(&layout.key())?);
    let current_key = DeviceKey::from_pkcs8_pem(&key_pem)?;
    let key_der = Zeroizing::new(
        pem::parse(key_pem.as_bytes())
            .map_err(|e| AgentError::crypto(format!("the device key is not PEM: {e}")))?
            .into_contents(),
    );
    let http = mtls_client(&current.roots, current.presented, key_der.to_vec())?;

    let new_key = if plan.rekey { Some(DeviceKey::generate()?) } else { None };
    let key = new_key.as_ref().unwrap_or(&current_key);
    let csr = key.csr(current.info.common_name.as_deref())?;
    let url = endpoint(&plan.server, "/v1/renew")?;
    let resp: EnrollResponse =
        post_json(&http, &url, &RenewRequest { csr: csr.pem.clone() }, "renewal").await?;
    let (new_info, new_der) = check_issued(&resp, &key.spki_der())?;
    let new_key_pem = new_key.as_ref().map(DeviceKey::pkcs8_pem);
    store(layout, &resp, &new_der, new_key_pem.as_ref().map(|k| (files::KEY_PEM, k.as_bytes())))?;
    Ok(outcome(layout, &resp, new_info, layout.key()))
}

/// `POST /v1/enroll/challenge`, then the binding over the nonce and the CSR.
pub(crate) async fn challenge(
    http: &reqwest::Client,
    server: &str,
    group: &str,
    method: &str,
    csr: &Csr,
) -> Result<(String, [u8; 32]), AgentError> {
    let url = endpoint(server, "/v1/enroll/challenge")?;
    let req = ChallengeRequest { group: group.to_string(), method: method.to_string(), tpm: None };
    let resp: ChallengeResponse = post_json(http, &url, &req, "challenge").await?;
    let nonce = nonce_bytes(&resp)?;
    Ok((resp.nonce, devid_attest::binding(&nonce, &csr.der)))
}

/// The nonce of a challenge answer: 32 bytes, base64url.
pub(crate) fn nonce_bytes(resp: &ChallengeResponse) -> Result<Vec<u8>, AgentError> {
    match unb64(&resp.nonce) {
        Some(n) if n.len() == 32 => Ok(n),
        _ => Err(AgentError::new(ErrorKind::Protocol, "the challenge nonce is not 32 bytes of base64url")),
    }
}

/// Check the issued certificate: it parses and certifies the key we asked for.
pub(crate) fn check_issued(
    resp: &EnrollResponse,
    spki_der: &[u8],
) -> Result<(CertInfo, Vec<u8>), AgentError> {
    let (der, _) = issued_der(resp, spki_der)?;
    Ok((files::cert_info(&der)?, der))
}

/// The issued certificate and the CA chain (DER, in order), checked as [`check_issued`]
/// checks them.
pub(crate) fn issued_der(
    resp: &EnrollResponse,
    spki_der: &[u8],
) -> Result<(Vec<u8>, Vec<Vec<u8>>), AgentError> {
    let der = issued_certificate(resp, spki_der)?;
    Ok((der, issued_chain(&resp.chain)?))
}

/// The answer's certificate, DER, checked to be for the key in the CSR (`spki_der`).
pub(crate) fn issued_certificate(resp: &EnrollResponse, spki_der: &[u8]) -> Result<Vec<u8>, AgentError> {
    let der = pem_certificates(&resp.certificate)?
        .into_iter()
        .next()
        .ok_or_else(|| AgentError::new(ErrorKind::Protocol, "the answer holds no certificate"))?;
    if files::cert_spki_der(&der)? != spki_der {
        return Err(AgentError::new(
            ErrorKind::Protocol,
            "the issued certificate is not for the key in the CSR",
        ));
    }
    Ok(der)
}

/// The answer's CA chain (`chain`, PEM), DER, at least one certificate.
pub(crate) fn issued_chain(pem: &str) -> Result<Vec<Vec<u8>>, AgentError> {
    let chain = pem_certificates(pem)?;
    if chain.is_empty() {
        return Err(AgentError::new(ErrorKind::Protocol, "the answer holds no CA chain"));
    }
    Ok(chain)
}

/// Write the certificate, the chain and (when given) the key, atomically each.
pub(crate) fn store(
    layout: &Layout,
    resp: &EnrollResponse,
    cert_der: &[u8],
    key: Option<(&str, &[u8])>,
) -> Result<(), AgentError> {
    let cert_pem = crate::keys::certificate_pem(cert_der);
    let mut new_files = Vec::new();
    if let Some((name, bytes)) = key {
        new_files.push(NewFile { name, contents: bytes, mode: 0o600 });
    }
    new_files.push(NewFile { name: files::CERT_PEM, contents: cert_pem.as_bytes(), mode: 0o644 });
    new_files.push(NewFile { name: files::CHAIN_PEM, contents: resp.chain.as_bytes(), mode: 0o644 });
    files::write_files(&layout.dir, &new_files)
}

pub(crate) fn outcome(layout: &Layout, resp: &EnrollResponse, info: CertInfo, key: PathBuf) -> Outcome {
    Outcome {
        device_id: info.common_name,
        serial: resp.serial.clone(),
        not_after: resp.not_after.clone(),
        cert: layout.cert(),
        chain: layout.chain(),
        key,
    }
}
