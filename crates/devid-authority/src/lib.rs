//! The devid use cases: the issuance cycle, enrollment, device registration and the CA
//! ceremony. Policy is decided here, in one place; handlers never see keys or SQL, and the
//! CA never sees SQL or HTTP.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attested;
pub mod audit;
pub mod auth;
pub mod bulk;
mod ca_init;
mod enroll;
mod error;
mod group_cache;
mod group_commit;
pub mod groups;
mod issuer;
pub mod metrics;
mod nonce;
mod ops;
pub mod publish;
pub mod ratelimit;
mod renew;
mod revocation;
pub mod seed;

use std::sync::Arc;

use devid_core::{Clock, DeviceId, Entropy, UnixTime};
use devid_kms::KeyManager;
use devid_store::{DeviceRecord, DeviceStatus, Store};
use tokio::sync::RwLock;

pub use attested::{Challenge, Evidence, NONCE_LEN, TpmIdentity};
pub use audit::Actor;
pub use ca_init::{CaInitParams, CaInitReport, init_ca};
/// The longest IDevID chain accepted (device certificate and intermediates).
pub use devid_attest::x509::MAX_CHAIN_LEN;
pub use enroll::{EnrollToken, Issued};
pub use error::AuthorityError;
pub use issuer::ActiveIssuer;
pub use revocation::{quarantine, release, revoke_certificate, revoke_device};

/// Settings of the issuance policy that do not live in the store.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The public base URL of this service (AIA, CRL distribution point).
    pub public_url: url::Url,
    /// The base URL of the OCSP responder, when brokers reach it elsewhere than
    /// `public_url` (a listener of its own): certificates name `{it}/ocsp` in their
    /// authorityInfoAccess (RFC 5280 §4.2.2.1, id-ad-ocsp).
    pub ocsp_public_url: Option<url::Url>,
    /// Device certificate lifetime in seconds (default 24 h).
    pub leaf_validity_secs: i64,
    /// notBefore backdating in seconds.
    pub backdate_secs: i64,
    /// URI SAN prefix for device certificates.
    pub device_uri_prefix: String,
    /// CRL shards per CA (must equal the publisher's).
    pub crl_shards: u16,
    /// How long an enrollment challenge (nonce) is accepted, in seconds (default 300).
    pub challenge_ttl_secs: i64,
    /// Renewal is allowed from this fraction of a certificate's lifetime on (0 to 1;
    /// default 0.5).
    pub renew_after_fraction: f64,
    /// Renewal is allowed this many seconds after expiry (default 3600).
    pub renew_grace_secs: i64,
    /// Rate limits.
    pub limits: ratelimit::Limits,
    /// How long an enrollment group read from the store serves the enrollment and renewal
    /// paths, in milliseconds (0: every request reads the store). A change made through
    /// this node applies at once; one made elsewhere within this time.
    pub group_cache_ms: i64,
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
    limiter: ratelimit::RateLimiter,
    commits: group_commit::GroupCommit,
    groups: group_cache::GroupCache,
    /// This node's OCSP publisher, once started: it pre-signs what this node issues.
    publisher: std::sync::OnceLock<Arc<publish::Publisher>>,
    /// The key of stateless challenges, once read from the store (or made).
    challenge_key: tokio::sync::OnceCell<nonce::ChallengeKey>,
    /// While the challenge key cannot be had: when to try again (Unix seconds).
    challenge_key_retry: std::sync::atomic::AtomicI64,
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
        let limiter = ratelimit::RateLimiter::new(config.limits);
        let commits = group_commit::GroupCommit::new(store.clone());
        let groups = group_cache::GroupCache::new(config.group_cache_ms);
        Ok(Authority {
            store,
            kms,
            clock,
            rng,
            config,
            issuer: RwLock::new(Arc::new(issuer)),
            limiter,
            commits,
            groups,
            publisher: std::sync::OnceLock::new(),
            challenge_key: tokio::sync::OnceCell::new(),
            challenge_key_retry: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// Hand the certificates this node issues to its OCSP publisher as they are stored, so
    /// their answers are pre-signed at once from what the store returned (without it, the
    /// publisher's change-log poll reads each one back). Set once; later calls are ignored.
    pub fn publish_to(&self, publisher: Arc<publish::Publisher>) {
        let _ = self.publisher.set(publisher);
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

    /// The rate limiters of this node.
    pub fn limiter(&self) -> &ratelimit::RateLimiter {
        &self.limiter
    }

    /// Check the per-source limit of the public enrollment routes.
    pub fn admit_source(&self, source: &str) -> Result<(), AuthorityError> {
        self.limiter.source(source, self.clock.as_ref())
    }

    /// Check the per-credential limit of the API.
    pub fn admit_credential(&self, client_id: &str) -> Result<(), AuthorityError> {
        self.limiter.credential(client_id, self.clock.as_ref())
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

/// How a device is registered: its token, group, own method and own secret.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Give it a one-time enrollment token (shown once; only its SHA-256 is stored).
    pub token: bool,
    /// Its enrollment group (which must exist).
    pub group: Option<String>,
    /// Its own method (which its group must allow).
    pub method: Option<groups::Method>,
    /// Its own derived-key secret (method symmetric), sealed before it is stored.
    pub secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Its labels (a JSON object of string to string, as text).
    pub labels: Option<String>,
}

/// Register a device. Returns the token in clear once; only its SHA-256 is stored.
pub async fn register_device(
    store: &dyn Store,
    kms: &dyn KeyManager,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    id: &DeviceId,
    opts: &DeviceOptions,
    actor: &Actor,
) -> Result<(DeviceRecord, Option<EnrollToken>), AuthorityError> {
    if !actor.may_use_group(opts.group.as_deref()) {
        return Err(AuthorityError::Forbidden(
            "this credential registers devices into its own groups only: name one of them".into(),
        ));
    }
    if let Some(g) = &opts.group {
        // A group named in the request body that does not exist is a bad request (400), not
        // a missing resource.
        let group =
            store.get_group(g).await?.ok_or_else(|| AuthorityError::Invalid(format!("no group {g}")))?;
        if let Some(m) = opts.method
            && !groups::methods_of(&group).contains(&m)
        {
            return Err(AuthorityError::MethodNotAllowed(m.as_str().into()));
        }
    }
    if opts.method.is_some() && opts.group.is_none() && opts.method != Some(groups::Method::Token) {
        return Err(AuthorityError::Invalid("a device with an attested method needs a group".into()));
    }
    if opts.method == Some(groups::Method::Token) && !opts.token {
        return Err(AuthorityError::Invalid("the token method needs a token".into()));
    }
    let secret = match &opts.secret {
        None => None,
        Some(_) if opts.method != Some(groups::Method::Symmetric) => {
            return Err(AuthorityError::Invalid("a device secret is for the symmetric method only".into()));
        }
        Some(s) if s.len() < 32 || s.len() > 64 => {
            return Err(AuthorityError::Invalid("a device secret must be 32 to 64 bytes".into()));
        }
        Some(s) => Some(kms.seal(&groups::device_seal_context(id.as_str()), s)?),
    };
    let now = clock.now();
    let token = opts.token.then(|| EnrollToken::generate(rng));
    let record = DeviceRecord {
        id: id.clone(),
        status: DeviceStatus::Registered,
        token_hash: token.as_ref().map(|t| t.hash().to_vec()),
        token_used_at: None,
        created_at: now,
        updated_at: now,
    };
    let meta = devid_store::DeviceMeta {
        labels: opts.labels.clone(),
        batch_id: None,
        group: opts.group.clone(),
        method: opts.method.map(|m| m.as_str().to_string()),
        secret,
    };
    let audit = audit::event(
        now,
        actor,
        "device.register",
        id.as_str(),
        serde_json::json!({
            "token": opts.token, "group": opts.group, "method": meta.method, "secret": opts.secret.is_some(),
        }),
    );
    store.insert_device(&record, &meta, &audit).await.map_err(|e| match e.kind() {
        devid_core::ErrorKind::Conflict => AuthorityError::DeviceExists(id.to_string()),
        // Its group was deleted after it was checked: the answer of a group that never was.
        devid_core::ErrorKind::NotFound => {
            AuthorityError::Invalid(format!("no group {}", opts.group.as_deref().unwrap_or_default()))
        }
        _ => AuthorityError::Store(e),
    })?;
    Ok((record, token))
}

/// A new device record: registered, no token.
pub(crate) fn new_device_record(id: &DeviceId, now: UnixTime) -> DeviceRecord {
    DeviceRecord {
        id: id.clone(),
        status: DeviceStatus::Registered,
        token_hash: None,
        token_used_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// A certificate as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    devid_ca::to_pem("CERTIFICATE", der)
}
