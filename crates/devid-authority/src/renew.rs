//! Renewal over mutual TLS: a device proves itself with its current certificate (the TLS
//! handshake checked that it chains to our issuing CA and that the device holds its key)
//! and gets a new one, within policy.

use devid_store::{CertStatus, DeviceStatus, Redeem};
use serde_json::json;

use crate::enroll::IssueContext;
use crate::{Authority, AuthorityError, Issued};

impl Authority {
    /// Renew the certificate `presented` (DER, from the TLS handshake) for the key in `csr`
    /// (the same key or a new one). `presented` must be the certificate the client
    /// authenticated with in that handshake, which proved that it holds its key: a CSR for
    /// that key is taken without checking its self-signature again.
    ///
    /// Policy: the certificate is one this CA issued and stored, byte for byte; it is not
    /// revoked; its device is not quarantined; at least `renew_after_fraction` of its
    /// lifetime has passed; it expired no more than `renew_grace_secs` ago. The new
    /// certificate records the old one as its predecessor (lineage) and gets the lifetime
    /// of the device's group. A retry with the same CSR returns the certificate already
    /// issued for it.
    pub async fn renew(&self, presented: &[u8], csr: &[u8]) -> Result<Issued, AuthorityError> {
        let refuse = |why: &str| Err(AuthorityError::RenewalRefused(why.to_string()));
        let (serial, current_key) = devid_ca::certificate_serial_and_key(presented)
            .map_err(|_| AuthorityError::RenewalRefused("the client certificate does not parse".into()))?;
        // The TLS handshake proved that the client holds the presented certificate's key: a
        // CSR for that key is not verified again (a new key's is). One ECDSA verification
        // less per same-key renewal: about 8 % of devid's CPU per renewal.
        let csr = devid_ca::csr::parse_for_key_holder(csr, &current_key)?;
        let same_key = csr.spki_der == current_key;
        // The certificate, its device and the certificate already issued for this CSR (a
        // retry), in one read.
        let Some(devid_store::RenewalContext { current, device: record, meta, prior }) =
            self.commits.renewal_lookups.submit((serial.clone(), csr.sha256.to_vec())).await?
        else {
            return refuse("the client certificate was not issued by this CA");
        };
        if current.cert_der.as_deref() != Some(presented) {
            return refuse("the client certificate was not issued by this CA");
        }
        let device = current.device.clone();
        self.limiter.device(device.as_str(), self.clock.as_ref())?;
        // Quarantine first: it revoked the certificate too, and is the reason to tell.
        if record.status == DeviceStatus::Quarantined {
            return Err(AuthorityError::DeviceQuarantined);
        }
        match current.status {
            CertStatus::Issued => {}
            CertStatus::Revoked => return refuse("the certificate is revoked"),
            CertStatus::Pending => return refuse("the certificate was never issued"),
        }
        let now = self.clock.now();
        let lifetime = (current.not_after.0 - current.not_before.0).max(1);
        let from = current.not_before.0 + (lifetime as f64 * self.config.renew_after_fraction) as i64;
        if now.0 < from {
            return Err(AuthorityError::RenewalRefused(format!(
                "too early: renewal opens at {}",
                devid_core::UnixTime(from).to_rfc3339()
            )));
        }
        if now.0 > current.not_after.0 + self.config.renew_grace_secs {
            return refuse("the certificate expired longer ago than the grace period; enroll again");
        }
        // A retry of this renewal: the certificate already issued for this CSR.
        if let Some(prior) = prior
            && prior.predecessor.as_ref() == Some(&serial)
            && prior.status == CertStatus::Issued
        {
            return self.issued(prior).await;
        }
        let validity_secs = match &meta.group {
            Some(g) => self
                .groups
                .get(self.store.as_ref(), self.clock.as_ref(), g)
                .await?
                .and_then(|g| g.validity_secs),
            None => None,
        };
        let ctx = IssueContext {
            method: "renewal",
            summary: json!({"predecessor": serial.to_hex(), "same_key": same_key}),
            validity_secs,
            predecessor: Some(serial),
            server_names: None,
        };
        let issued = self.issue(&device, &csr, Redeem::Nothing, None, &ctx).await?;
        crate::metrics::CERTIFICATES_ISSUED.inc("renewal");
        Ok(issued)
    }
}

/// The device id under which devid records its own TLS server certificates.
pub const SERVER_DEVICE_ID: &str = "devid-tls-server";

impl Authority {
    /// Issue devid's own TLS server certificate (the renewal listener) for `spki_der` (a
    /// key the caller holds in memory), naming `names` (DNS names or IP addresses), with
    /// `validity_secs` of lifetime. Recorded in the store like every certificate, under the
    /// device [`SERVER_DEVICE_ID`].
    pub async fn issue_server_certificate(
        &self,
        names: &[String],
        spki_der: &[u8],
        validity_secs: i64,
    ) -> Result<Issued, AuthorityError> {
        if names.is_empty() {
            return Err(AuthorityError::Invalid("the TLS server certificate needs at least one name".into()));
        }
        let ctx = IssueContext {
            method: "server",
            summary: json!({"names": names}),
            validity_secs: Some(validity_secs),
            predecessor: None,
            server_names: Some(names.to_vec()),
        };
        let purpose = json!({"purpose": "devid TLS server certificates"});
        self.issue_for_key(SERVER_DEVICE_ID, spki_der, &ctx, &crate::Actor::System, purpose).await
    }

    /// Issue a certificate for a P-256 key devid made itself (`spki_der`), to the device
    /// `device` of its own (registered first if need be, with an audit entry saying why):
    /// the renewal listener's server certificates and credentials' client certificates.
    pub(crate) async fn issue_for_key(
        &self,
        device: &str,
        spki_der: &[u8],
        ctx: &IssueContext,
        actor: &crate::Actor,
        purpose: serde_json::Value,
    ) -> Result<Issued, AuthorityError> {
        use sha2::Digest;
        let device = devid_core::DeviceId::new(device)
            .map_err(|e| AuthorityError::Internal(format!("device id {device:?}: {e}")))?;
        let now = self.clock.now();
        let audit = crate::audit::event(now, actor, "device.register", device.as_str(), purpose);
        let record = crate::new_device_record(&device, now);
        self.store.ensure_device(&record, &devid_store::DeviceMeta::default(), &audit).await?;
        let csr = devid_ca::csr::VerifiedCsr {
            spki_der: spki_der.to_vec(),
            key_type: devid_ca::csr::DeviceKeyType::EcP256,
            sha256: sha2::Sha256::digest(spki_der).into(),
        };
        self.issue(&device, &csr, Redeem::Nothing, None, ctx).await
    }
}
