//! Enrollment with a TPM 2.0 (feature `tpm`, PROTOCOL.md §1–2, method `tpm`): the EK
//! certificate and an AK go with the challenge; the server's credential is activated in
//! the TPM (TPM2_ActivateCredential); the device key is made in the TPM, its CSR signed
//! there, and the key certified by the AK over the binding (TPM2_Certify).
//!
//! The key never leaves the TPM: `key.tpm` holds its TPM2B_PUBLIC and its TPM2B_PRIVATE
//! (wrapped by the TPM's primary key, useless elsewhere) as two PEM blocks,
//! `TPM2B PUBLIC` and `TPM2B PRIVATE`.

use crate::client::{endpoint, post_json};
use crate::enroll::{EnrollPlan, Outcome, check_issued, nonce_bytes, outcome, store};
use crate::error::{AgentError, ErrorKind};
use crate::files::{self, Layout};
use crate::protocol::{
    ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, TpmIdentityWire, b64, unb64,
};
use crate::tpm::{EkKind, TpmAgent, TpmError, TpmKey};

fn tpm_err(what: &str) -> impl Fn(TpmError) -> AgentError + '_ {
    move |e| AgentError::new(ErrorKind::Tpm, format!("{what}: {e}"))
}

/// The `key.tpm` file: two PEM blocks (RFC 7468 encapsulation) with the key's blobs.
pub fn key_file(key: &TpmKey) -> String {
    let blocks = [
        pem::Pem::new("TPM2B PUBLIC", key.public.clone()),
        pem::Pem::new("TPM2B PRIVATE", key.private.clone()),
    ];
    pem::encode_many_config(&blocks, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// Enroll with the TPM at `tcti`.
pub(crate) async fn enroll(
    http: &reqwest::Client,
    plan: &EnrollPlan,
    group: &str,
    tcti: &str,
    ek: EkKind,
    layout: &Layout,
) -> Result<Outcome, AgentError> {
    let mut tpm = TpmAgent::open(tcti).map_err(tpm_err("opening the TPM"))?;
    let identity = tpm.identity(ek).map_err(tpm_err("reading the EK and making an AK"))?;
    let key = tpm.create_device_key().map_err(tpm_err("creating the device key"))?;
    // The server names the device from the EK; a CN must not be empty (RFC 5280 §4.1.2.4:
    // DirectoryString SIZE (1..MAX)), so an unknown id gets a placeholder.
    let cn = plan.device_id.as_ref().map_or("tpm-device", |d| d.as_str()).to_string();
    let csr_der = tpm.sign_csr(&key, &cn).map_err(tpm_err("signing the CSR"))?;
    let csr_pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE REQUEST", csr_der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );

    let url = endpoint(&plan.server, "/v1/enroll/challenge")?;
    let req = ChallengeRequest {
        group: group.to_string(),
        method: "tpm".to_string(),
        tpm: Some(TpmIdentityWire {
            ek_cert: b64(&identity.ek_cert),
            ek_public: b64(&identity.ek_public),
            ak_public: b64(&identity.ak_public),
        }),
    };
    let resp: ChallengeResponse = post_json(http, &url, &req, "challenge").await?;
    let nonce = nonce_bytes(&resp)?;
    let cred = resp
        .tpm
        .as_ref()
        .ok_or_else(|| AgentError::new(ErrorKind::Protocol, "the challenge answer has no TPM credential"))?;
    let blob = unb64(&cred.credential_blob)
        .ok_or_else(|| AgentError::new(ErrorKind::Protocol, "credential_blob is not base64url"))?;
    let enc = unb64(&cred.encrypted_secret)
        .ok_or_else(|| AgentError::new(ErrorKind::Protocol, "encrypted_secret is not base64url"))?;
    let secret =
        zeroize::Zeroizing::new(tpm.activate(&blob, &enc).map_err(tpm_err("activating the credential"))?);
    let binding = devid_attest::binding(&nonce, &csr_der);
    let (certify_info, certify_signature) =
        tpm.certify(&key, &binding).map_err(tpm_err("certifying the device key"))?;
    drop(tpm);

    let body = EnrollRequest::Tpm {
        group: group.to_string(),
        nonce: resp.nonce.clone(),
        secret: b64(&secret),
        key_public: b64(&key.public),
        certify_info: b64(&certify_info),
        certify_signature: b64(&certify_signature),
        csr: csr_pem,
    };
    let url = endpoint(&plan.server, "/v1/enroll")?;
    let issued: EnrollResponse = post_json(http, &url, &body, "enrollment").await?;
    let (info, cert_der) = check_issued(&issued, &key.spki_der)?;
    let key_text = key_file(&key);
    store(layout, &issued, &cert_der, Some((files::KEY_TPM, key_text.as_bytes())))?;
    Ok(outcome(layout, &issued, info, layout.key_tpm()))
}
