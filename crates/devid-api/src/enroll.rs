//! Enrollment (PROTOCOL.md): `POST /v1/enroll/challenge`, `POST /v1/enroll` with a token or
//! attestation evidence, and `POST /v1/renew` on the mutual-TLS listener.

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use devid_authority::groups::Method;
use devid_authority::{Evidence, Issued, TpmIdentity};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{ApiError, ApiJson, Problem};

const P: &str = "application/problem+json";

/// Decode base64url (RFC 4648 §5), with or without padding.
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Encode base64url without padding (RFC 4648 §5).
pub(crate) fn b64_pub(b: &[u8]) -> String {
    b64(b)
}

fn field(name: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    unb64(s).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", format!("{name}: not base64url"))
    })
}

/// An enrollment request: the method names the kind of evidence (PROTOCOL.md §2). Binary
/// values are base64url.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum EnrollRequest {
    /// A one-time enrollment token from `devid device add`.
    Token {
        /// The token.
        token: String,
        /// A PKCS#10 CSR, PEM.
        csr: String,
    },
    /// An X.509 IDevID (IEEE 802.1AR): the factory chain and a signature by the factory
    /// key over the binding of the nonce and the CSR.
    X509 {
        /// The enrollment group.
        group: String,
        /// The nonce from the challenge.
        nonce: String,
        /// The factory certificates, DER, device certificate first.
        chain: Vec<String>,
        /// The signature over the binding.
        signature: String,
        /// A PKCS#10 CSR, PEM.
        csr: String,
    },
    /// A key derived from the group's master key: HMAC-SHA256 over the binding.
    Symmetric {
        /// The enrollment group.
        group: String,
        /// The device id the key is derived for.
        device_id: String,
        /// The nonce from the challenge.
        nonce: String,
        /// HMAC-SHA256(device key, binding).
        proof: String,
        /// A PKCS#10 CSR, PEM.
        csr: String,
    },
    /// A TPM 2.0: the activated credential and TPM2_Certify of the CSR's key by the AK.
    Tpm {
        /// The enrollment group.
        group: String,
        /// The nonce from the challenge.
        nonce: String,
        /// The secret recovered with TPM2_ActivateCredential.
        secret: String,
        /// TPM2B_PUBLIC of the key in the CSR.
        key_public: String,
        /// TPM2B_ATTEST from TPM2_Certify, with the binding as qualifying data.
        certify_info: String,
        /// TPMT_SIGNATURE by the AK.
        certify_signature: String,
        /// A PKCS#10 CSR, PEM.
        csr: String,
    },
}

/// A freshly issued certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollResponse {
    /// The device certificate, PEM.
    pub certificate: String,
    /// The issuing CA certificate followed by the root, PEM.
    pub chain: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
}

impl From<Issued> for EnrollResponse {
    fn from(issued: Issued) -> Self {
        EnrollResponse {
            certificate: devid_ca::to_pem("CERTIFICATE", &issued.cert_der),
            chain: issued.chain_pem,
            serial: issued.serial.to_hex(),
            not_after: issued.not_after.to_rfc3339(),
        }
    }
}

/// Enroll a device.
#[utoipa::path(
    post,
    path = "/v1/enroll",
    tag = "enroll",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "The certificate and its chain; the certificate is already in the store.", body = EnrollResponse),
        (status = 400, description = "Malformed request or CSR.", body = Problem, content_type = P),
        (status = 401, description = "Unknown token, unknown or expired nonce, or evidence refused.", body = Problem, content_type = P),
        (status = 403, description = "Quarantined, not registered, or method not allowed.", body = Problem, content_type = P),
        (status = 404, description = "No such group.", body = Problem, content_type = P),
        (status = 409, description = "The token or nonce was already used.", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P),
        (status = 429, description = "Too many enrollments; retry after the Retry-After seconds.", body = Problem, content_type = P),
        (status = 503, description = "No CA or the store is unavailable.", body = Problem, content_type = P)
    )
)]
async fn enroll(
    State(state): State<AppState>,
    req: Result<ApiJson<EnrollRequest>, ApiError>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    // Every refusal, the malformed bodies too, counts by its problem code.
    enroll_inner(state, req)
        .await
        .inspect_err(|e| devid_authority::metrics::ENROLLMENT_FAILURES.inc(e.code()))
}

async fn enroll_inner(
    state: AppState,
    req: Result<ApiJson<EnrollRequest>, ApiError>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    let ApiJson(req) = req?;
    let a = &state.authority;
    let issued = match req {
        EnrollRequest::Token { token, csr } => a.enroll_with_token(&token, csr.as_bytes()).await?,
        EnrollRequest::X509 { group, nonce, chain, signature, csr } => {
            if chain.is_empty() || chain.len() > devid_authority::MAX_CHAIN_LEN {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    format!("chain: 1 to {} certificates", devid_authority::MAX_CHAIN_LEN),
                ));
            }
            let chain = chain.iter().map(|c| field("chain", c)).collect::<Result<Vec<_>, _>>()?;
            let evidence = Evidence::X509 { chain, signature: field("signature", &signature)? };
            a.enroll_attested(&group, &field("nonce", &nonce)?, evidence, csr.as_bytes()).await?
        }
        EnrollRequest::Symmetric { group, device_id, nonce, proof, csr } => {
            let evidence = Evidence::Symmetric { device_id, proof: field("proof", &proof)? };
            a.enroll_attested(&group, &field("nonce", &nonce)?, evidence, csr.as_bytes()).await?
        }
        EnrollRequest::Tpm { group, nonce, secret, key_public, certify_info, certify_signature, csr } => {
            let evidence = Evidence::Tpm {
                secret: field("secret", &secret)?,
                key_public: field("key_public", &key_public)?,
                certify_info: field("certify_info", &certify_info)?,
                certify_signature: field("certify_signature", &certify_signature)?,
            };
            a.enroll_attested(&group, &field("nonce", &nonce)?, evidence, csr.as_bytes()).await?
        }
    };
    Ok(axum::Json(issued.into()))
}

/// A TPM's identity (binary values base64url).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmIdentityBody {
    /// The EK certificate, DER.
    pub ek_cert: String,
    /// The EK's TPM2B_PUBLIC.
    pub ek_public: String,
    /// The AK's TPM2B_PUBLIC.
    pub ak_public: String,
}

/// A challenge request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The enrollment group.
    pub group: String,
    /// `x509`, `symmetric` or `tpm`.
    pub method: String,
    /// For `tpm` only: the TPM's identity.
    pub tpm: Option<TpmIdentityBody>,
}

/// The credential made for the AK (TPM2_MakeCredential), base64url.
#[derive(Debug, Serialize, ToSchema)]
pub struct TpmCredentialBody {
    /// TPM2B_ID_OBJECT.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: String,
}

/// A fresh challenge.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChallengeResponse {
    /// 32 bytes, base64url; single-use.
    pub nonce: String,
    /// When it stops being accepted, RFC 3339.
    pub expires_at: String,
    /// For `tpm`: the credential to activate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmCredentialBody>,
}

/// Ask for an enrollment challenge: a single-use nonce that the evidence must bind.
#[utoipa::path(
    post,
    path = "/v1/enroll/challenge",
    tag = "enroll",
    request_body = ChallengeRequest,
    responses(
        (status = 201, description = "A fresh nonce (and for tpm, the credential to activate).", body = ChallengeResponse),
        (status = 400, description = "Malformed request.", body = Problem, content_type = P),
        (status = 401, description = "TPM evidence refused.", body = Problem, content_type = P),
        (status = 403, description = "The group does not allow this method.", body = Problem, content_type = P),
        (status = 404, description = "No such group.", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P),
        (status = 429, description = "Too many requests; retry after the Retry-After seconds.", body = Problem, content_type = P),
        (status = 503, description = "The store is unavailable.", body = Problem, content_type = P)
    )
)]
async fn challenge(
    State(state): State<AppState>,
    req: Result<ApiJson<ChallengeRequest>, ApiError>,
) -> Result<(StatusCode, axum::Json<ChallengeResponse>), ApiError> {
    let ApiJson(req) = req?;
    let method: Method = req
        .method
        .parse()
        .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", e))?;
    let tpm = match req.tpm {
        None => None,
        Some(t) => Some(TpmIdentity {
            ek_cert: field("ek_cert", &t.ek_cert)?,
            ek_public: field("ek_public", &t.ek_public)?,
            ak_public: field("ak_public", &t.ak_public)?,
        }),
    };
    let c = state.authority.challenge(&req.group, method, tpm).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ChallengeResponse {
            nonce: b64(&c.nonce),
            expires_at: c.expires_at.to_rfc3339(),
            tpm: c.tpm.map(|t| TpmCredentialBody {
                credential_blob: b64(&t.credential_blob),
                encrypted_secret: b64(&t.encrypted_secret),
            }),
        }),
    ))
}

/// A renewal request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A PKCS#10 CSR, PEM (the current key or a new one).
    pub csr: String,
}

/// The client certificate of a mutual-TLS connection (DER), put in each request by the
/// renewal listener.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub std::sync::Arc<Vec<u8>>);

/// Renew the certificate the client presented in the TLS handshake (only on the
/// mutual-TLS listener; elsewhere 403 `client-certificate-required`).
#[utoipa::path(
    post,
    path = "/v1/renew",
    tag = "enroll",
    request_body = RenewRequest,
    responses(
        (status = 200, description = "The new certificate (its predecessor is recorded).", body = EnrollResponse),
        (status = 400, description = "Malformed request or CSR.", body = Problem, content_type = P),
        (status = 403, description = "No client certificate, or renewal refused (revoked, quarantined, too early, past the grace period).", body = Problem, content_type = P),
        (status = 413, description = "Request body too large.", body = Problem, content_type = P),
        (status = 415, description = "Content type is not application/json.", body = Problem, content_type = P),
        (status = 429, description = "Too many renewals; retry after the Retry-After seconds.", body = Problem, content_type = P),
        (status = 503, description = "No CA or the store is unavailable.", body = Problem, content_type = P)
    )
)]
async fn renew(
    State(state): State<AppState>,
    peer: Option<axum::Extension<PeerCertificate>>,
    req: Result<ApiJson<RenewRequest>, ApiError>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    let result = async {
        let Some(axum::Extension(PeerCertificate(cert))) = peer else {
            return Err(devid_authority::AuthorityError::ClientCertificateRequired.into());
        };
        let ApiJson(req) = req?;
        Ok(state.authority.renew(&cert, req.csr.as_bytes()).await?)
    }
    .await
    .inspect_err(|e: &ApiError| devid_authority::metrics::ENROLLMENT_FAILURES.inc(e.code()))?;
    Ok(axum::Json(result.into()))
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(enroll)).routes(routes!(challenge)).routes(routes!(renew))
}
