//! Operator and factory use cases, as methods of [`Authority`]: the HTTP layer calls these
//! and never sees the store.

use devid_core::{DeviceId, RevocationReason, Serial};
use devid_store::{CertRecord, CredentialRecord, DeviceRecord, Page};

use crate::auth::{NewCredential, Role};
use crate::{Actor, Authority, AuthorityError, EnrollToken};

impl Authority {
    /// Register a device, optionally with a one-time enrollment token (shown once).
    pub async fn register_device(
        &self,
        id: &DeviceId,
        opts: &crate::DeviceOptions,
        actor: &Actor,
    ) -> Result<(DeviceRecord, Option<EnrollToken>), AuthorityError> {
        crate::register_device(
            self.store.as_ref(),
            self.kms.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            id,
            opts,
            actor,
        )
        .await
    }

    /// A device by id.
    pub async fn device(&self, id: &DeviceId) -> Result<DeviceRecord, AuthorityError> {
        self.store.get_device(id).await?.ok_or(AuthorityError::NotFound("device"))
    }

    /// Devices in id order after `cursor`.
    pub async fn devices(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeviceRecord>, AuthorityError> {
        Ok(self.store.list_devices(cursor, limit).await?)
    }

    /// A certificate by serial.
    pub async fn certificate(&self, serial: &Serial) -> Result<CertRecord, AuthorityError> {
        self.store.get_certificate(serial).await?.ok_or(AuthorityError::NotFound("certificate"))
    }

    /// Certificates (of one device, or all) in serial order after `cursor`.
    pub async fn certificates(
        &self,
        device: Option<&DeviceId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertRecord>, AuthorityError> {
        Ok(self.store.list_certificates(device, cursor, limit).await?)
    }

    /// Revoke one certificate (idempotent).
    pub async fn revoke(
        &self,
        serial: &Serial,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<CertRecord, AuthorityError> {
        // Idempotent: count it only when this call revoked it (not an earlier revocation).
        let was_revoked = self.store.get_certificate(serial).await?.is_some_and(|c| c.revocation.is_some());
        let c = crate::revoke_certificate(self.store.as_ref(), self.clock.as_ref(), serial, reason, actor)
            .await?;
        if !was_revoked && c.revocation.is_some() {
            crate::metrics::CERTIFICATES_REVOKED.inc();
        }
        Ok(c)
    }

    /// Revoke every certificate of a device.
    pub async fn revoke_device(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Vec<Serial>, AuthorityError> {
        let revoked =
            crate::revoke_device(self.store.as_ref(), self.clock.as_ref(), id, reason, actor).await?;
        crate::metrics::CERTIFICATES_REVOKED.add(revoked.len() as u64);
        Ok(revoked)
    }

    /// Quarantine a device.
    pub async fn quarantine(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Vec<Serial>, AuthorityError> {
        let revoked = crate::quarantine(self.store.as_ref(), self.clock.as_ref(), id, reason, actor).await?;
        crate::metrics::CERTIFICATES_REVOKED.add(revoked.len() as u64);
        Ok(revoked)
    }

    /// Release a quarantined device.
    pub async fn release(&self, id: &DeviceId, actor: &Actor) -> Result<bool, AuthorityError> {
        crate::release(self.store.as_ref(), self.clock.as_ref(), id, actor).await
    }

    /// Create an API credential (the secret is in the result, once).
    pub async fn create_credential(
        &self,
        role: Role,
        name: &str,
        actor: &Actor,
    ) -> Result<NewCredential, AuthorityError> {
        crate::auth::create_credential(
            self.store.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            role,
            name,
            actor,
        )
        .await
    }

    /// Every credential (hashes included: callers must not return them).
    pub async fn credentials(&self) -> Result<Vec<CredentialRecord>, AuthorityError> {
        Ok(self.store.list_credentials().await?)
    }

    /// Revoke a credential; its tokens stop working at once.
    pub async fn revoke_credential(
        &self,
        client_id: &str,
        actor: &Actor,
    ) -> Result<CredentialRecord, AuthorityError> {
        let c = crate::auth::revoke_credential(self.store.as_ref(), self.clock.as_ref(), client_id, actor)
            .await?;
        tracing::warn!(client_id, "credential revoked");
        Ok(c)
    }
}

impl Authority {
    /// Audit entries after `after_seq`, at most `limit` (clamped to 1000).
    pub async fn audit_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<devid_store::AuditRecord>, AuthorityError> {
        Ok(self.store.audit_entries(after_seq, limit).await?)
    }
}

impl Authority {
    /// Define (or with `replace`, redefine) an enrollment group; see [`crate::groups::put_group`].
    pub async fn put_group(
        &self,
        spec: crate::groups::GroupSpec,
        replace: bool,
        actor: &Actor,
    ) -> Result<(crate::groups::GroupView, Option<zeroize::Zeroizing<Vec<u8>>>), AuthorityError> {
        crate::groups::put_group(
            self.store.as_ref(),
            self.kms.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            spec,
            replace,
            actor,
        )
        .await
    }

    /// A group.
    pub async fn group(&self, name: &str) -> Result<crate::groups::GroupView, AuthorityError> {
        crate::groups::get_group(self.store.as_ref(), name).await
    }

    /// Every group.
    pub async fn groups(&self) -> Result<Vec<crate::groups::GroupView>, AuthorityError> {
        crate::groups::list_groups(self.store.as_ref()).await
    }

    /// Delete a group no device belongs to.
    pub async fn delete_group(&self, name: &str, actor: &Actor) -> Result<(), AuthorityError> {
        crate::groups::delete_group(self.store.as_ref(), self.clock.as_ref(), name, actor).await
    }
}
