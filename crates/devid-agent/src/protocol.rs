//! The agent's view of the wire protocol (`crates/devid-attest/PROTOCOL.md`, v1): its own
//! request and response types. Binary values are base64url without padding (RFC 4648 §5);
//! CSRs and certificates in answers are PEM (RFC 7468).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Base64url without padding (RFC 4648 §5), the protocol's encoding of binary values.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding (RFC 4648 §5).
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// The TPM's identity, sent with a `tpm` challenge request.
#[derive(Debug, Clone, Serialize)]
pub struct TpmIdentityWire {
    /// The EK certificate, DER, base64url.
    pub ek_cert: String,
    /// The EK's TPM2B_PUBLIC, base64url.
    pub ek_public: String,
    /// The AK's TPM2B_PUBLIC, base64url.
    pub ak_public: String,
}

/// `POST /v1/enroll/challenge` (PROTOCOL.md §1).
#[derive(Debug, Clone, Serialize)]
pub struct ChallengeRequest {
    /// The enrollment group.
    pub group: String,
    /// `x509`, `symmetric` or `tpm`.
    pub method: String,
    /// Present exactly for the `tpm` method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmIdentityWire>,
}

/// The credential made for the AK (TPM2_MakeCredential), in a `tpm` challenge answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TpmCredentialWire {
    /// TPM2B_ID_OBJECT, base64url.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET, base64url.
    pub encrypted_secret: String,
}

/// The answer to a challenge request (`201`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChallengeResponse {
    /// 32 bytes, base64url; single-use.
    pub nonce: String,
    /// When the nonce expires, RFC 3339.
    pub expires_at: String,
    /// For the `tpm` method.
    #[serde(default)]
    pub tpm: Option<TpmCredentialWire>,
}

/// `POST /v1/enroll` (PROTOCOL.md §2): one body per method, `method` is the tag. The
/// `Debug` form leaves the secrets out.
#[derive(Clone, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum EnrollRequest {
    /// A one-time enrollment token.
    Token {
        /// The token (a secret).
        token: String,
        /// The CSR, PEM.
        csr: String,
    },
    /// An X.509 IDevID.
    X509 {
        /// The group.
        group: String,
        /// The nonce as the challenge answer gave it.
        nonce: String,
        /// The factory chain, DER base64url each, device certificate first.
        chain: Vec<String>,
        /// The factory key's signature over the binding, base64url.
        signature: String,
        /// The CSR, PEM.
        csr: String,
    },
    /// A key derived from a group master key.
    Symmetric {
        /// The group.
        group: String,
        /// The device id the key is derived for.
        device_id: String,
        /// The nonce.
        nonce: String,
        /// HMAC-SHA256(device key, binding), base64url.
        proof: String,
        /// The CSR, PEM.
        csr: String,
    },
    /// A TPM 2.0.
    Tpm {
        /// The group.
        group: String,
        /// The nonce.
        nonce: String,
        /// The activated credential secret, base64url.
        secret: String,
        /// TPM2B_PUBLIC of the key in the CSR, base64url.
        key_public: String,
        /// TPM2B_ATTEST from TPM2_Certify with the binding as qualifying data, base64url.
        certify_info: String,
        /// TPMT_SIGNATURE by the AK, base64url.
        certify_signature: String,
        /// The CSR, PEM.
        csr: String,
    },
}

impl EnrollRequest {
    /// The method name (the tag).
    pub fn method(&self) -> &'static str {
        match self {
            EnrollRequest::Token { .. } => "token",
            EnrollRequest::X509 { .. } => "x509",
            EnrollRequest::Symmetric { .. } => "symmetric",
            EnrollRequest::Tpm { .. } => "tpm",
        }
    }
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest").field("method", &self.method()).finish_non_exhaustive()
    }
}

/// `POST /v1/renew` on the mutual-TLS listener (PROTOCOL.md §3).
#[derive(Debug, Clone, Serialize)]
pub struct RenewRequest {
    /// The CSR, PEM.
    pub csr: String,
}

/// The answer to enroll and renew (`200`).
#[derive(Debug, Clone, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_bodies_match_the_protocol() {
        let r = EnrollRequest::Symmetric {
            group: "line-7".into(),
            device_id: "sensor-1".into(),
            nonce: "bm9uY2U".into(),
            proof: "cHJvb2Y".into(),
            csr: "PEM".into(),
        };
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"method":"symmetric","group":"line-7","device_id":"sensor-1",
                               "nonce":"bm9uY2U","proof":"cHJvb2Y","csr":"PEM"})
        );
        let t = EnrollRequest::Token { token: "s3cret-token".into(), csr: "PEM".into() };
        assert_eq!(serde_json::to_value(&t).expect("serializes")["method"], "token");
        assert!(!format!("{t:?}").contains("s3cret"));
        let c = ChallengeRequest { group: "g".into(), method: "x509".into(), tpm: None };
        assert_eq!(
            serde_json::to_value(&c).expect("serializes"),
            serde_json::json!({"group":"g","method":"x509"})
        );
    }

    #[test]
    fn base64url_without_padding() {
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
        assert_eq!(unb64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(unb64("-_8="), Some(vec![0xfb, 0xff]));
        assert_eq!(unb64("!"), None);
    }
}
