//! Enrollment with a TPM 2.0 (feature `tpm`, PROTOCOL.md §1–2, method `tpm`): the EK
//! certificate and an AK go with the challenge; the server's credential is activated in
//! the TPM (TPM2_ActivateCredential); the device key is made in the TPM, its CSR signed
//! there, and the key certified by the AK over the binding (TPM2_Certify). Renewal over
//! mutual TLS (§3) signs the handshake in the TPM too ([`crate::tpm_tls`]).
//!
//! The key never leaves the TPM: `key.tpm` holds its TPM2B_PUBLIC and its TPM2B_PRIVATE
//! (wrapped by the TPM's primary key, useless elsewhere) as two PEM blocks,
//! `TPM2B PUBLIC` and `TPM2B PRIVATE`, preceded by a line `TCTI: <tcti>` naming the TPM
//! the key was made in (explanatory text before the encapsulation boundary, which RFC 7468
//! §2 lets parsers ignore), so that `renew` and `run` find the TPM again without flags.

use std::path::Path;

use crate::client::{endpoint, post_json};
use crate::enroll::{
    CurrentIdentity, EnrollPlan, Outcome, RenewPlan, check_issued, nonce_bytes, outcome, store,
};
use crate::error::{AgentError, ErrorKind};
use crate::files::{self, Layout};
use crate::protocol::{
    ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, RenewRequest, TpmIdentityWire, b64,
    unb64,
};
use crate::tpm::{EkKind, TpmAgent, TpmError, TpmKey};
use crate::tpm_tls::TpmSigningKey;

fn tpm_err(what: &str) -> impl Fn(TpmError) -> AgentError + '_ {
    move |e| AgentError::new(ErrorKind::Tpm, format!("{what}: {e}"))
}

/// The label of the TCTI line of `key.tpm`.
const TCTI_LABEL: &str = "TCTI:";

/// The common name of a CSR when the device id is not known: a CN must not be empty
/// (RFC 5280 §4.1.2.4: DirectoryString SIZE (1..MAX)); the server names the device.
const PLACEHOLDER_CN: &str = "tpm-device";

/// The `key.tpm` file: the TCTI line (when `tcti` is given and is one line), then two PEM
/// blocks (RFC 7468 encapsulation) with the key's blobs.
pub fn key_file(key: &TpmKey, tcti: Option<&str>) -> String {
    let blocks = [
        pem::Pem::new("TPM2B PUBLIC", key.public.clone()),
        pem::Pem::new("TPM2B PRIVATE", key.private.clone()),
    ];
    let pem = pem::encode_many_config(&blocks, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF));
    match tcti.map(str::trim).filter(|t| !t.is_empty() && !t.contains(['\n', '\r'])) {
        Some(t) => format!("{TCTI_LABEL} {t}\n{pem}"),
        None => pem,
    }
}

/// Parse a `key.tpm` file: the key and the TCTI it records, if any.
pub fn parse_key_file(text: &str) -> Result<(TpmKey, Option<String>), AgentError> {
    let bad = |why: &str| AgentError::crypto(format!("key.tpm: {why}"));
    let blocks = pem::parse_many(text).map_err(|e| bad(&format!("not PEM: {e}")))?;
    let one = |tag: &str| -> Result<Vec<u8>, AgentError> {
        let mut found = blocks.iter().filter(|b| b.tag() == tag);
        match (found.next(), found.next()) {
            (Some(b), None) => Ok(b.contents().to_vec()),
            _ => Err(bad(&format!("needs exactly one {tag} block"))),
        }
    };
    let key =
        TpmKey::from_blobs(one("TPM2B PUBLIC")?, one("TPM2B PRIVATE")?).map_err(|e| bad(&e.to_string()))?;
    let tcti = text
        .lines()
        .take_while(|l| !l.starts_with("-----BEGIN "))
        .find_map(|l| l.strip_prefix(TCTI_LABEL))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok((key, tcti))
}

/// Read and parse `key.tpm`.
pub fn read_key_file(path: &Path) -> Result<(TpmKey, Option<String>), AgentError> {
    parse_key_file(&files::read_text(path)?)
}

/// A CSR signed in the TPM, DER and PEM.
fn tpm_csr(tpm: &mut TpmAgent, key: &TpmKey, cn: &str) -> Result<(Vec<u8>, String), AgentError> {
    let der = tpm.sign_csr(key, cn).map_err(tpm_err("signing the CSR"))?;
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE REQUEST", der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok((der, pem))
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
    // The server names the device from the EK; an unknown id gets a placeholder CN.
    let cn = plan.device_id.as_ref().map_or(PLACEHOLDER_CN, |d| d.as_str()).to_string();
    let (csr_der, csr_pem) = tpm_csr(&mut tpm, &key, &cn)?;

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
    let key_text = key_file(&key, Some(tcti));
    store(layout, &issued, &cert_der, Some((files::KEY_TPM, key_text.as_bytes())))?;
    Ok(outcome(layout, &issued, info, layout.key_tpm()))
}

/// Renew over mutual TLS (PROTOCOL.md §3) with the TPM key `key` of the TPM at `tcti`: the
/// TLS handshake is signed in the TPM ([`crate::tpm_tls`]). The CSR is for the same key,
/// signed in the TPM; with `plan.rekey`, for a new key made in the same TPM (TPM2_Create),
/// whose `key.tpm` is written only once its certificate is issued (the old key then stays
/// in use, and its file untouched, when the renewal fails).
pub(crate) async fn renew(
    plan: &RenewPlan,
    layout: &Layout,
    current: CurrentIdentity,
    key: TpmKey,
    tcti: &str,
) -> Result<Outcome, AgentError> {
    let mut tpm = TpmAgent::open(tcti).map_err(tpm_err("opening the TPM"))?;
    let new_key = if plan.rekey {
        Some(tpm.create_device_key().map_err(tpm_err("creating the new device key"))?)
    } else {
        None
    };
    let csr_key = new_key.as_ref().unwrap_or(&key).clone();
    let cn = current.info.common_name.clone().unwrap_or_else(|| PLACEHOLDER_CN.to_string());
    let (_, csr_pem) = tpm_csr(&mut tpm, &csr_key, &cn)?;

    // The TPM connection goes to the TLS signer; it closes with the HTTP client.
    let http = crate::tpm_tls::mtls_client(&current.roots, current.presented, TpmSigningKey::new(tpm, key))?;
    let url = endpoint(&plan.server, "/v1/renew")?;
    let resp: EnrollResponse = post_json(&http, &url, &RenewRequest { csr: csr_pem }, "renewal").await?;
    drop(http);
    let (info, cert_der) = check_issued(&resp, &csr_key.spki_der)?;
    let key_text = new_key.as_ref().map(|k| key_file(k, Some(tcti)));
    store(layout, &resp, &cert_der, key_text.as_ref().map(|t| (files::KEY_TPM, t.as_bytes())))?;
    Ok(outcome(layout, &resp, info, layout.key_tpm()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TPM2B_PUBLIC of an ECC P-256 signing key, as the TPM returns it (marshalled by
    /// tss-esapi from the device key template with a made-up point).
    fn sample_key() -> TpmKey {
        use tss_esapi::structures::{EccParameter, EccPoint, Public, PublicBuffer};
        use tss_esapi::traits::Marshall;
        let Public::Ecc { object_attributes, name_hashing_algorithm, auth_policy, parameters, .. } =
            crate::tpm::device_key_template().unwrap()
        else {
            panic!("the device key template is not an ECC key");
        };
        let public = Public::Ecc {
            object_attributes,
            name_hashing_algorithm,
            auth_policy,
            parameters,
            unique: EccPoint::new(
                EccParameter::try_from(vec![1u8; 32]).unwrap(),
                EccParameter::try_from(vec![2u8; 32]).unwrap(),
            ),
        };
        let public = PublicBuffer::try_from(public).unwrap().marshall().unwrap();
        TpmKey::from_blobs(public, vec![0, 3, 9, 9, 9]).unwrap()
    }

    #[test]
    fn key_file_round_trip_with_and_without_tcti() {
        let key = sample_key();
        assert_eq!(key.spki_der.len(), 91);
        assert_eq!(&key.spki_der[27..59], &[1u8; 32]);

        let text = key_file(&key, Some("swtpm:host=127.0.0.1,port=2321"));
        assert!(text.starts_with(
            "TCTI: swtpm:host=127.0.0.1,port=2321
-----BEGIN TPM2B PUBLIC-----
"
        ));
        let (back, tcti) = parse_key_file(&text).unwrap();
        assert_eq!(back, key);
        assert_eq!(tcti.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));

        // Files written before the TCTI line existed, and TCTIs that are not one line.
        for text in [
            key_file(&key, None),
            key_file(
                &key,
                Some(
                    "a
b",
                ),
            ),
            key_file(&key, Some(" ")),
        ] {
            assert!(text.starts_with("-----BEGIN TPM2B PUBLIC-----"), "{text}");
            let (back, tcti) = parse_key_file(&text).unwrap();
            assert_eq!(back, key);
            assert_eq!(tcti, None);
        }
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let key = sample_key();
        let public = pem::encode(&pem::Pem::new("TPM2B PUBLIC", key.public.clone()));
        let private = pem::encode(&pem::Pem::new("TPM2B PRIVATE", key.private.clone()));
        assert!(parse_key_file("").is_err());
        assert!(parse_key_file(&public).is_err(), "no private block");
        assert!(parse_key_file(&format!("{public}{public}{private}")).is_err(), "two public blocks");
        let bad_private = pem::encode(&pem::Pem::new("TPM2B PRIVATE", vec![0, 9, 1]));
        assert!(parse_key_file(&format!("{public}{bad_private}")).is_err(), "TPM2B size");
        let bad_public = pem::encode(&pem::Pem::new("TPM2B PUBLIC", vec![0, 1, 0]));
        assert!(parse_key_file(&format!("{bad_public}{private}")).is_err(), "not a public area");
    }
}
