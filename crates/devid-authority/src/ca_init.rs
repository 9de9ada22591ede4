use std::sync::Arc;

use devid_ca::profile::{CaSubject, IssuerInfo};
use devid_core::{CaId, Clock, Entropy, KeyRef, Serial};
use devid_kms::{KeyAlgorithm, KeyManager, Signer};
use devid_store::{CaKind, CaRecord, Store};

use crate::AuthorityError;

/// What the CA ceremony creates.
#[derive(Debug, Clone)]
pub struct CaInitParams {
    /// Where the root key is created. With `offline_root`, this is a key manager the
    /// running service is not configured with (a removable key store, another token).
    pub root_key: KeyRef,
    /// Where the issuing key is created; the running service needs only this one.
    pub issuing_key: KeyRef,
    /// The root's subject.
    pub root_subject: CaSubject,
    /// The issuing CA's subject.
    pub issuing_subject: CaSubject,
    /// Root lifetime in seconds.
    pub root_validity_secs: i64,
    /// Issuing CA lifetime in seconds (clipped to the root's).
    pub issuing_validity_secs: i64,
    /// Do not record where the root key is: the service cannot use it.
    pub offline_root: bool,
    /// Replace an existing CA (the old CAs are kept, inactive) and existing keys of the
    /// same reference.
    pub force: bool,
}

/// What the ceremony made.
#[derive(Debug, Clone)]
pub struct CaInitReport {
    /// The root's id in the store.
    pub root_id: CaId,
    /// The issuing CA's id in the store.
    pub issuing_id: CaId,
    /// The root certificate, DER.
    pub root_der: Vec<u8>,
    /// The issuing CA certificate, DER.
    pub issuing_der: Vec<u8>,
}

/// A fresh CA id: `<prefix>-<8 hex>`. Ids are never reused, so a replaced CA's
/// certificates keep pointing at their own issuer.
pub fn new_ca_id(prefix: &str, rng: &dyn Entropy) -> Result<CaId, AuthorityError> {
    let mut b = [0u8; 4];
    rng.fill(&mut b);
    CaId::new(format!("{prefix}-{}", hex::encode(b))).map_err(|e| AuthorityError::Invalid(e.to_string()))
}

/// The CA ceremony: create the root and issuing keys, the root certificate (self-signed)
/// and the issuing CA certificate (signed by the root), and record both in the store.
/// Refuses to replace an existing CA unless `force` is set.
pub async fn init_ca(
    store: &dyn Store,
    root_kms: Arc<dyn KeyManager>,
    issuing_kms: Arc<dyn KeyManager>,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    params: &CaInitParams,
    actor: &crate::Actor,
) -> Result<CaInitReport, AuthorityError> {
    if !params.force && !store.list_cas().await?.is_empty() {
        return Err(AuthorityError::CaExists);
    }
    if params.root_key == params.issuing_key {
        return Err(AuthorityError::Invalid("the root and issuing CA need different keys".into()));
    }
    let now = clock.now();
    let root_signer = create_key(root_kms, &params.root_key, params.force).await?;
    let issuing_signer = create_key(issuing_kms, &params.issuing_key, params.force).await?;

    let root_tbs = devid_ca::profile::root_tbs(
        root_signer.algorithm(),
        &params.root_subject,
        &Serial::random(rng),
        root_signer.public_key_spki_der(),
        now,
        params.root_validity_secs,
    )?;
    let root_der = sign(root_signer.clone(), root_tbs).await?;
    let root_info = IssuerInfo::from_cert_der(&root_der)?;
    let issuing_tbs = devid_ca::profile::issuing_tbs(
        &root_info,
        root_signer.algorithm(),
        &params.issuing_subject,
        &Serial::random(rng),
        issuing_signer.public_key_spki_der(),
        now,
        params.issuing_validity_secs,
    )?;
    let issuing_der = sign(root_signer, issuing_tbs).await?;
    let issuing_info = IssuerInfo::from_cert_der(&issuing_der)?;

    let root_id = new_ca_id("root", rng)?;
    let issuing_id = new_ca_id("issuing", rng)?;
    let root = CaRecord {
        id: root_id.clone(),
        kind: CaKind::Root,
        parent: None,
        cert_der: root_der.clone(),
        key_ref: (!params.offline_root).then(|| params.root_key.to_string()),
        ski: root_info.ski.clone(),
        not_before: now.plus(-60),
        not_after: root_info.not_after,
        active: true,
        created_at: now,
    };
    let issuing = CaRecord {
        id: issuing_id.clone(),
        kind: CaKind::Issuing,
        parent: Some(root_id.clone()),
        cert_der: issuing_der.clone(),
        key_ref: Some(params.issuing_key.to_string()),
        ski: issuing_info.ski,
        not_before: now.plus(-60),
        not_after: issuing_info.not_after,
        active: true,
        created_at: now,
    };
    let audit = crate::audit::event(
        now,
        actor,
        "ca.init",
        issuing_id.as_str(),
        serde_json::json!({
            "root": root_id.as_str(),
            "issuing": issuing_id.as_str(),
            "root_key": params.root_key.to_string(),
            "issuing_key": params.issuing_key.to_string(),
            "offline_root": params.offline_root,
            "replace": params.force,
        }),
    );
    store.put_ca_hierarchy(&root, &issuing, params.force, &audit).await.map_err(|e| match e.kind() {
        devid_core::ErrorKind::Conflict => AuthorityError::CaExists,
        _ => AuthorityError::Store(e),
    })?;
    tracing::info!(root = %root_id, issuing = %issuing_id, offline_root = params.offline_root, "CA hierarchy created");
    Ok(CaInitReport { root_id, issuing_id, root_der, issuing_der })
}

async fn create_key(
    kms: Arc<dyn KeyManager>,
    key: &KeyRef,
    replace: bool,
) -> Result<Arc<dyn Signer>, AuthorityError> {
    let key = key.clone();
    tokio::task::spawn_blocking(move || kms.create_key(&key, KeyAlgorithm::EcdsaP256, replace))
        .await
        .map_err(|e| AuthorityError::Internal(format!("key creation task: {e}")))?
        .map_err(AuthorityError::from)
}

async fn sign(signer: Arc<dyn Signer>, tbs: Vec<u8>) -> Result<Vec<u8>, AuthorityError> {
    tokio::task::spawn_blocking(move || devid_ca::sign::sign_tbs(signer.as_ref(), &tbs))
        .await
        .map_err(|e| AuthorityError::Internal(format!("signing task: {e}")))?
        .map_err(AuthorityError::Ca)
}
