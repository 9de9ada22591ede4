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

    /// A device by id. A credential limited to groups sees only their devices (others are
    /// "not found", so it learns nothing about them).
    pub async fn device(&self, id: &DeviceId, actor: &Actor) -> Result<DeviceRecord, AuthorityError> {
        if actor.group_scope().is_some() {
            let group = self.store.device_meta(id).await?.and_then(|m| m.group);
            if !actor.may_use_group(group.as_deref()) {
                return Err(AuthorityError::NotFound("device"));
            }
        }
        self.store.get_device(id).await?.ok_or(AuthorityError::NotFound("device"))
    }

    /// Devices matching `filter`, in id order after `cursor`.
    /// A credential limited to groups lists one of them at a time (`group`; it may be left
    /// out when the credential has one group).
    pub async fn devices(
        &self,
        filter: &devid_store::DeviceFilter,
        cursor: Option<&str>,
        limit: u32,
        actor: &Actor,
    ) -> Result<Page<DeviceRecord>, AuthorityError> {
        let mut filter = filter.clone();
        if let Some(scope) = actor.group_scope() {
            match (&filter.group, scope) {
                (Some(g), _) if scope.contains(g) => {}
                (Some(_), _) => {
                    return Err(AuthorityError::Forbidden(
                        "that group is not one of this credential's".into(),
                    ));
                }
                (None, [only]) => filter.group = Some(only.clone()),
                (None, _) => {
                    return Err(AuthorityError::Invalid(format!(
                        "this credential is limited to groups; list one at a time with group= ({})",
                        scope.join(", ")
                    )));
                }
            }
        }
        Ok(self.store.list_devices_filtered(&filter, cursor, limit).await?)
    }

    /// A certificate by serial.
    pub async fn certificate(&self, serial: &Serial) -> Result<CertRecord, AuthorityError> {
        self.store.get_certificate(serial).await?.ok_or(AuthorityError::NotFound("certificate"))
    }

    /// Certificates matching `filter`, in serial order after `cursor`.
    pub async fn certificates(
        &self,
        filter: &devid_store::CertFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertRecord>, AuthorityError> {
        Ok(self.store.list_certificates_filtered(filter, cursor, limit).await?)
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
        groups: Option<Vec<String>>,
        actor: &Actor,
    ) -> Result<NewCredential, AuthorityError> {
        crate::auth::create_credential(
            self.store.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            role,
            name,
            groups,
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
        let name = spec.name.clone();
        let put = crate::groups::put_group(
            self.store.as_ref(),
            self.kms.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            spec,
            replace,
            actor,
        )
        .await;
        self.groups.forget(&name);
        put
    }

    /// A group (to a credential limited to groups, only one of its own).
    pub async fn group(&self, name: &str, actor: &Actor) -> Result<crate::groups::GroupView, AuthorityError> {
        if !actor.may_use_group(Some(name)) {
            return Err(AuthorityError::NotFound("group"));
        }
        crate::groups::get_group(self.store.as_ref(), name).await
    }

    /// Every group (to a credential limited to groups, its own).
    pub async fn groups(&self, actor: &Actor) -> Result<Vec<crate::groups::GroupView>, AuthorityError> {
        let all = crate::groups::list_groups(self.store.as_ref()).await?;
        Ok(all.into_iter().filter(|g| actor.may_use_group(Some(&g.record.name))).collect())
    }

    /// Delete a group no device belongs to.
    pub async fn delete_group(&self, name: &str, actor: &Actor) -> Result<(), AuthorityError> {
        let deleted =
            crate::groups::delete_group(self.store.as_ref(), self.clock.as_ref(), name, actor).await;
        self.groups.forget(name);
        deleted
    }
}

impl Authority {
    /// Issue a client certificate for the credential `client_id` (mutual-TLS client
    /// authentication at the token endpoint, RFC 8705 §2.1) for `spki_der`. Recorded like
    /// every certificate, under the device `credential.<client_id>`; revocable and
    /// renewable like a device's.
    pub async fn issue_credential_certificate(
        &self,
        client_id: &str,
        spki_der: &[u8],
        actor: &Actor,
    ) -> Result<crate::Issued, AuthorityError> {
        let cred =
            self.store.get_credential(client_id).await?.ok_or(AuthorityError::NotFound("credential"))?;
        if cred.revoked_at.is_some() {
            return Err(AuthorityError::Invalid(format!("credential {client_id} is revoked")));
        }
        let ctx = crate::enroll::IssueContext {
            method: "credential",
            summary: serde_json::json!({"client_id": client_id, "role": cred.role}),
            validity_secs: None,
            predecessor: None,
            server_names: None,
        };
        let purpose =
            serde_json::json!({"purpose": "client certificate of a credential", "client_id": client_id});
        let device = crate::auth::credential_device_id(client_id);
        self.issue_for_key(&device, spki_der, &ctx, actor, purpose).await
    }
}
