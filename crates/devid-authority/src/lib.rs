//! The devid use cases: the issuance cycle, enrollment, device registration and the CA
//! ceremony. Policy is decided here, in one place; handlers never see keys or SQL, and the
//! CA never sees SQL or HTTP.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod auth;
pub mod bulk;
mod ca_init;
mod enroll;
mod error;
mod issuer;
pub mod metrics;
mod ops;
pub mod publish;
mod revocation;

use std::sync::Arc;

use devid_core::{Clock, DeviceId, Entropy, UnixTime};
use devid_kms::KeyManager;
use devid_store::{DeviceRecord, DeviceStatus, Store};
use tokio::sync::RwLock;

pub use audit::Actor;
pub use ca_init::{CaInitParams, CaInitReport, init_ca};
pub use enroll::{EnrollToken, Issued};
pub use error::AuthorityError;
pub use issuer::ActiveIssuer;
pub use revocation::{quarantine, release, revoke_certificate, revoke_device};

/// Settings of the issuance policy that do not live in the store.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The public base URL of this service (AIA, CRL distribution point).
    pub public_url: url::Url,
    /// Device certificate lifetime in seconds (default 24 h).
    pub leaf_validity_secs: i64,
    /// notBefore backdating in seconds.
    pub backdate_secs: i64,
    /// URI SAN prefix for device certificates.
    pub device_uri_prefix: String,
    /// CRL shards per CA (must equal the publisher's).
    pub crl_shards: u16,
}

/// The authority: owns the store, the key manager and the active issuing CA, and runs the
/// use cases.
pub struct Authority {
    store: Arc<dyn Store>,
    kms: Arc<dyn KeyManager>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Entropy>,
    config: AuthorityConfig,
    issuer: RwLock<Arc<ActiveIssuer>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}

impl Authority {
    /// Load the active issuing CA from the store and get a signer for its key. Fails with
    /// [`devid_core::ErrorKind::NotFound`] when no CA exists yet (`devid ca init`).
    pub async fn load(
        store: Arc<dyn Store>,
        kms: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Entropy>,
        config: AuthorityConfig,
    ) -> Result<Authority, AuthorityError> {
        let issuer = ActiveIssuer::load(store.as_ref(), kms.as_ref(), &config).await?;
        Ok(Authority { store, kms, clock, rng, config, issuer: RwLock::new(Arc::new(issuer)) })
    }

    /// The active issuing CA.
    pub async fn issuer(&self) -> Arc<ActiveIssuer> {
        self.issuer.read().await.clone()
    }

    /// Load the active issuing CA again (after `devid ca init --force` replaced it).
    pub async fn reload_issuer(&self) -> Result<(), AuthorityError> {
        let fresh = ActiveIssuer::load(self.store.as_ref(), self.kms.as_ref(), &self.config).await?;
        *self.issuer.write().await = Arc::new(fresh);
        Ok(())
    }

    /// The store (for the binary's wiring; handlers use the use cases).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key manager.
    pub fn kms(&self) -> &Arc<dyn KeyManager> {
        &self.kms
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Readiness: the store answers.
    pub async fn ready(&self) -> Result<(), AuthorityError> {
        Ok(self.store.ping().await?)
    }

    /// A CA certificate (DER) by id, for the AIA caIssuers URL.
    pub async fn ca_certificate(&self, id: &str) -> Result<Vec<u8>, AuthorityError> {
        let id = devid_core::CaId::new(id).map_err(|_| AuthorityError::NotFound("CA"))?;
        match self.store.get_ca(&id).await? {
            Some(ca) => Ok(ca.cert_der),
            None => Err(AuthorityError::NotFound("CA")),
        }
    }
}

/// Register a device, optionally with a one-time enrollment token. Returns the token in
/// clear once; only its SHA-256 is stored.
pub async fn register_device(
    store: &dyn Store,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    id: &DeviceId,
    with_token: bool,
    actor: &Actor,
) -> Result<(DeviceRecord, Option<EnrollToken>), AuthorityError> {
    let now = clock.now();
    let token = with_token.then(|| EnrollToken::generate(rng));
    let record = DeviceRecord {
        id: id.clone(),
        status: DeviceStatus::Registered,
        token_hash: token.as_ref().map(|t| t.hash().to_vec()),
        token_used_at: None,
        created_at: now,
        updated_at: now,
    };
    let audit =
        audit::event(now, actor, "device.register", id.as_str(), serde_json::json!({"token": with_token}));
    store.insert_device(&record, &devid_store::DeviceMeta::default(), &audit).await.map_err(|e| {
        match e.kind() {
            devid_core::ErrorKind::Conflict => AuthorityError::DeviceExists(id.to_string()),
            _ => AuthorityError::Store(e),
        }
    })?;
    Ok((record, token))
}

/// A certificate as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    devid_ca::to_pem("CERTIFICATE", der)
}
