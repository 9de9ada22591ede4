use std::sync::Arc;

use base64::Engine;
use devid_ca::csr::VerifiedCsr;
use devid_core::{DeviceId, Entropy, Serial, UnixTime};
use devid_store::{AuditEvent, CertRecord, CertStatus, DeviceStatus, PendingCert, Redeem};

use crate::issuer::ActiveIssuer;
use crate::{Actor, Authority, AuthorityError};

/// What steps 1 and 2 decided for steps 3 to 6: how the device proved itself (for the
/// audit entry written with the certificate), the lifetime policy allows, and the
/// certificate a renewal replaces.
#[derive(Debug, Clone)]
pub(crate) struct IssueContext {
    /// `token`, `x509`, `tpm`, `symmetric`, `renewal`.
    pub method: &'static str,
    /// What the attestor established (never a secret).
    pub summary: serde_json::Value,
    /// The group's maximum lifetime (the service's own caps it too).
    pub validity_secs: Option<i64>,
    /// The certificate this one renews.
    pub predecessor: Option<Serial>,
    /// For devid's own TLS server certificate: its DNS names and IP addresses (the server
    /// profile instead of the device profile).
    pub server_names: Option<Vec<String>>,
}

impl IssueContext {
    /// The audit event of a certificate issued on this evidence.
    fn audit(&self, at: UnixTime, device: &DeviceId, serial: &Serial, not_after: UnixTime) -> AuditEvent {
        let action = if self.method == "renewal" { "certificate.renew" } else { "certificate.issue" };
        crate::audit::event(
            at,
            &Actor::Device(device.clone()),
            action,
            serial.to_hex(),
            serde_json::json!({
                "device": device.as_str(),
                "method": self.method,
                "evidence": self.summary,
                "not_after": not_after.to_rfc3339(),
                "predecessor": self.predecessor.as_ref().map(Serial::to_hex),
            }),
        )
    }
}

const TOKEN: IssueContext = IssueContext {
    method: "token",
    summary: serde_json::Value::Null,
    validity_secs: None,
    predecessor: None,
    server_names: None,
};

/// A one-time enrollment token: 256 random bits, base64url, prefixed `devid_et_` so that
/// secret scanners can recognise a leaked one. Only its SHA-256 is stored: a 256-bit random
/// value has no dictionary to guess from, so a slow password hash would add nothing.
pub struct EnrollToken(String);

impl EnrollToken {
    const PREFIX: &'static str = "devid_et_";

    /// A fresh token.
    pub fn generate(rng: &dyn Entropy) -> EnrollToken {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        EnrollToken(format!("{}{}", Self::PREFIX, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)))
    }

    /// The token in clear: show it once, never log it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token text.
    pub fn hash(&self) -> [u8; 32] {
        hash_token(&self.0)
    }
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollToken(..redacted..)")
    }
}

fn hash_token(t: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A certificate handed to a device: always already in the store.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The device.
    pub device: DeviceId,
    /// The serial number.
    pub serial: Serial,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// `issuing\nroot`, PEM.
    pub chain_pem: String,
    /// notAfter.
    pub not_after: UnixTime,
}

impl Authority {
    /// Enroll a device with its one-time token and a CSR.
    ///
    /// Idempotent per (device, CSR): a retry with the same token and the same CSR returns the
    /// certificate issued the first time (or completes it, if the first attempt stopped
    /// after recording the intent). The same token with another CSR is refused.
    pub async fn enroll_with_token(&self, token: &str, csr: &[u8]) -> Result<Issued, AuthorityError> {
        // Step 1: verify the evidence (the token) and the CSR's signature.
        let csr = devid_ca::csr::parse_and_verify(csr)?;
        let token_hash = hash_token(token);
        let device = self
            .commits
            .token_lookups
            .submit(token_hash.to_vec())
            .await?
            .ok_or(AuthorityError::TokenUnknown)?;
        if device.status == DeviceStatus::Quarantined {
            return Err(AuthorityError::DeviceQuarantined);
        }
        self.limiter.device(device.id.as_str(), self.clock.as_ref())?;
        if device.token_used_at.is_some() {
            return self.resume(&device.id, &csr).await;
        }
        // Step 2: policy. A token binds to one registered device; the CSR's key type was
        // checked against the allowed list in step 1. (Enrollment groups add more here.)
        let issued = self.issue(&device.id, &csr, Redeem::Token(&token_hash), None, &TOKEN).await?;
        crate::metrics::CERTIFICATES_ISSUED.inc("token");
        Ok(issued)
    }

    /// A retry after the token was redeemed: hand back what was issued for this CSR.
    async fn resume(&self, device: &DeviceId, csr: &VerifiedCsr) -> Result<Issued, AuthorityError> {
        let prior = self.store.certificate_for_csr(device, &csr.sha256).await?;
        match prior {
            Some(c) if c.status == CertStatus::Issued => self.issued(c).await,
            Some(c) if c.status == CertStatus::Pending => {
                let issuer = self.issuer().await;
                if c.issuer != issuer.id {
                    return Err(AuthorityError::TokenUsed);
                }
                // The first attempt stopped after recording the intent: this one issues.
                let audit = TOKEN.audit(self.clock.now(), device, &c.serial, c.not_after);
                let issued = self.sign_and_store(&issuer, c.serial, c.tbs_der, audit).await?;
                crate::metrics::CERTIFICATES_ISSUED.inc("token");
                Ok(issued)
            }
            _ => Err(AuthorityError::TokenUsed),
        }
    }

    /// The issuance cycle (ARCHITECTURE.md), steps 3 to 6. Steps 1 and 2 (evidence and
    /// policy) are the caller's, per enrollment method. `register`: the device is new and
    /// step 2 registers it (optional registration), in step 4's transaction.
    pub(crate) async fn issue(
        &self,
        device: &DeviceId,
        csr: &VerifiedCsr,
        redeem: Redeem<'_>,
        register: Option<crate::group_commit::Registration>,
        ctx: &IssueContext,
    ) -> Result<Issued, AuthorityError> {
        let issuer = self.issuer().await;
        let now = self.clock.now();
        let shorter;
        let profile = match ctx.validity_secs {
            Some(v) if v < issuer.profile.validity_secs => {
                shorter = devid_ca::profile::LeafProfile { validity_secs: v, ..issuer.profile.clone() };
                &shorter
            }
            _ => &issuer.profile,
        };
        // Step 3: a serial of the issuance time's milliseconds and 112 bits from the CSPRNG
        // (`Serial::timed`: appended to the store's serial index, not inserted at random),
        // and the certificate built from the profile, never from the extensions the CSR
        // asks for.
        let ms = self.clock.now_ms().unwrap_or_else(|| now.0.saturating_mul(1000));
        let serial = Serial::timed(ms, self.rng.as_ref());
        let (tbs_der, validity) = match &ctx.server_names {
            None => devid_ca::profile::leaf_tbs(
                &issuer.info,
                issuer.signer.algorithm(),
                profile,
                &serial,
                device,
                &csr.spki_der,
                now,
            )?,
            Some(names) => devid_ca::profile::server_tbs(
                &issuer.info,
                issuer.signer.algorithm(),
                profile,
                &serial,
                names,
                &csr.spki_der,
                now,
            )?,
        };
        // Step 4: record the intent (serial, device, TBS) — and redeem the token or nonce in
        // the same transaction, so that one yields at most one certificate however many race
        // for it; a new device is registered in it too.
        let pending = PendingCert {
            serial: serial.clone(),
            issuer: issuer.id.clone(),
            device: device.clone(),
            not_before: validity.not_before,
            not_after: validity.not_after,
            csr_sha256: csr.sha256.to_vec(),
            tbs_der: tbs_der.clone(),
            created_at: now,
            predecessor: ctx.predecessor.clone(),
        };
        // The commit waits for its WAL flush only when the key is outside the process (an
        // HSM keeps its own record of each signature): see `Store::record_intents`.
        let item = crate::group_commit::IntentItem {
            pending,
            redeem: crate::group_commit::RedeemKey::of(redeem),
            register,
            wait_for_flush: issuer.signer.may_block(),
        };
        self.commits.intents.submit(item).await.map_err(|e| match (e.kind(), redeem) {
            (devid_core::ErrorKind::Conflict, Redeem::Token(_)) => AuthorityError::TokenUsed,
            (devid_core::ErrorKind::Conflict, Redeem::Nonce(_) | Redeem::Sealed(_)) => {
                AuthorityError::NonceUsed
            }
            // A new device's group was deleted after step 1 found it.
            (devid_core::ErrorKind::NotFound, _) => AuthorityError::NotFound("group"),
            _ => AuthorityError::Store(e),
        })?;
        let audit = ctx.audit(now, device, &serial, validity.not_after);
        self.sign_and_store(&issuer, serial, tbs_der, audit).await
    }

    /// Steps 5 and 6: sign the recorded TBS (off the async executor when the signer may
    /// block, as an HSM call does), store the certificate with its audit entry (one
    /// transaction), and only then answer.
    async fn sign_and_store(
        &self,
        issuer: &Arc<ActiveIssuer>,
        serial: Serial,
        tbs_der: Vec<u8>,
        audit: AuditEvent,
    ) -> Result<Issued, AuthorityError> {
        // Step 5: sign once, through the Signer (timed: devid_kms_sign_seconds).
        let signer = issuer.signer.clone();
        let sign = move || {
            let timed =
                crate::metrics::TimedSigner { inner: signer.as_ref(), histogram: &crate::metrics::KMS_SIGN };
            devid_ca::sign::sign_tbs(&timed, &tbs_der)
        };
        let cert_der = if issuer.signer.may_block() {
            tokio::task::spawn_blocking(sign)
                .await
                .map_err(|e| AuthorityError::Internal(format!("signing task: {e}")))??
        } else {
            sign()?
        };
        // Step 6: store the certificate; if a concurrent retry stored one first, theirs wins
        // and this signature is discarded, so a serial is handed out once.
        let epoch = self.publisher.get().map(|p| p.epoch());
        let stored = self
            .commits
            .completions
            .submit(crate::group_commit::Signed { serial, cert_der, audit, now: self.clock.now() })
            .await
            .map_err(|e| match e.kind() {
                // Quarantined while this certificate was being signed: the store kept it, revoked.
                devid_core::ErrorKind::Forbidden => {
                    crate::metrics::CERTIFICATES_REVOKED.inc();
                    AuthorityError::DeviceQuarantined
                }
                _ => AuthorityError::Store(e),
            })?;
        tracing::info!(serial = %stored.serial, device = %stored.device, "certificate issued");
        if let (Some(p), Some(epoch)) = (self.publisher.get(), epoch) {
            p.presign_issued(&stored, epoch);
        }
        self.issued(stored).await
    }

    pub(crate) async fn issued(&self, c: CertRecord) -> Result<Issued, AuthorityError> {
        let cert_der =
            c.cert_der.ok_or_else(|| AuthorityError::Internal("issued certificate without DER".into()))?;
        let issuer = self.issuer().await;
        let chain_pem = if c.issuer == issuer.id {
            issuer.chain_pem.clone()
        } else {
            // Issued by a CA that has since been replaced: hand back that CA's own chain.
            self.chain_of(&c.issuer).await?
        };
        Ok(Issued { device: c.device, serial: c.serial, cert_der, chain_pem, not_after: c.not_after })
    }

    /// The PEM chain (issuing CA, then its root) of any CA in the store.
    async fn chain_of(&self, id: &devid_core::CaId) -> Result<String, AuthorityError> {
        let ca = self.store.get_ca(id).await?.ok_or(AuthorityError::NotFound("CA"))?;
        let mut pem = crate::certificate_pem(&ca.cert_der);
        if let Some(parent) = &ca.parent {
            let root = self.store.get_ca(parent).await?.ok_or(AuthorityError::NotFound("CA"))?;
            pem.push_str(&crate::certificate_pem(&root.cert_der));
        }
        Ok(pem)
    }
}
