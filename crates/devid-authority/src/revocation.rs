//! Revocation and quarantine (RFC 5280 §5.3.1 reasons). These write to the store only;
//! publishing (CRL, OCSP) reads from it.

use devid_core::{Clock, DeviceId, ErrorKind, RevocationReason, Serial};
use devid_store::{CertRecord, Store};
use serde_json::json;

use crate::audit::{Actor, event};

use crate::AuthorityError;

/// Revoke one certificate. Idempotent: a revoked certificate is returned unchanged (with
/// its original time and reason).
pub async fn revoke_certificate(
    store: &dyn Store,
    clock: &dyn Clock,
    serial: &Serial,
    reason: RevocationReason,
    actor: &Actor,
) -> Result<CertRecord, AuthorityError> {
    let now = clock.now();
    let audit =
        event(now, actor, "certificate.revoke", serial.to_hex(), json!({"reason": reason.to_string()}));
    store.revoke(serial, reason, now, &audit).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound => AuthorityError::NotFound("certificate"),
        ErrorKind::Conflict => AuthorityError::Invalid(format!("certificate {serial} is not issued yet")),
        _ => AuthorityError::Store(e),
    })
}

/// Revoke every issued certificate of a device; the device may enroll again.
pub async fn revoke_device(
    store: &dyn Store,
    clock: &dyn Clock,
    device: &DeviceId,
    reason: RevocationReason,
    actor: &Actor,
) -> Result<Vec<Serial>, AuthorityError> {
    let now = clock.now();
    let audit = event(now, actor, "device.revoke", device.as_str(), json!({"reason": reason.to_string()}));
    store.revoke_device_certificates(device, reason, now, &audit).await.map_err(not_found("device"))
}

/// Quarantine a device: revoke everything it holds and refuse its enrollment and renewal
/// until it is released. Idempotent.
pub async fn quarantine(
    store: &dyn Store,
    clock: &dyn Clock,
    device: &DeviceId,
    reason: RevocationReason,
    actor: &Actor,
) -> Result<Vec<Serial>, AuthorityError> {
    let now = clock.now();
    let audit =
        event(now, actor, "device.quarantine", device.as_str(), json!({"reason": reason.to_string()}));
    let revoked = store.quarantine_device(device, reason, now, &audit).await.map_err(not_found("device"))?;
    tracing::warn!(%device, revoked = revoked.len(), "device quarantined");
    Ok(revoked)
}

/// Release a quarantined device; it must enroll again. Returns whether it was quarantined.
pub async fn release(
    store: &dyn Store,
    clock: &dyn Clock,
    device: &DeviceId,
    actor: &Actor,
) -> Result<bool, AuthorityError> {
    let now = clock.now();
    let audit = event(now, actor, "device.release", device.as_str(), json!({}));
    let was = store.release_device(device, now, &audit).await.map_err(not_found("device"))?;
    tracing::info!(%device, was_quarantined = was, "device released");
    Ok(was)
}

fn not_found(what: &'static str) -> impl Fn(devid_store::StoreError) -> AuthorityError {
    move |e| match e.kind() {
        ErrorKind::NotFound => AuthorityError::NotFound(what),
        _ => AuthorityError::Store(e),
    }
}
