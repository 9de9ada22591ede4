//! API authentication and roles.
//!
//! - **Credentials**: a client id and a long random secret (RFC 6749 §2.3.1), shown once;
//!   the store keeps an Argon2id hash of the secret (RFC 9106; OWASP parameters m=19 MiB,
//!   t=2, p=1).
//! - **Access tokens**: the client-credentials grant (RFC 6749 §4.4) exchanges them for a
//!   short-lived JWT (RFC 7519) signed with ES256 (RFC 7518 §3.4: the JWS signature is
//!   `R || S`, 64 octets) by a key held in the KMS. Each node signs with its own key, which
//!   it rotates every [`TokenConfig::signing_period_secs`]; the public keys are in the
//!   store, so every node verifies tokens made by any node, and a key stays valid for
//!   verification as long as a token it signed can live (rotation with overlap).
//! - **Revocation**: revoking a credential invalidates its tokens at once; a single token
//!   can be revoked by its `jti` (RFC 7009).
//! - **Throttling**: failed attempts are counted per client id and per source address;
//!   after [`TokenConfig::max_failures`] within the window, attempts are refused with a
//!   retry time, on this node (a documented approximation across replicas).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use argon2::{PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use devid_core::{Clock, Entropy, KeyRef, UnixTime};
use devid_kms::{KeyAlgorithm, KeyManager, Signer};
use devid_store::{CredentialRecord, Store, TokenKeyRecord};

use crate::AuthorityError;

/// An Argon2id hash (same parameters as real ones) of a secret nobody has: verified against
/// when a client id is unknown, so that failing costs the same time either way.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZGV2aWQtZHVtbXktc2FsdA$wKzMCxM8Hc3GcvlYbGxqB1wG7R2aFqx7wqRDeoLR0yg";

/// A role: what a credential may do. Least privilege: each route names the roles it
/// admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// CAs, enrollment groups, credentials.
    Admin,
    /// Registers devices and reads their status.
    Factory,
    /// Looks up, revokes, quarantines.
    Operator,
    /// Reads everything, including the audit log; changes nothing.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Factory, Role::Operator, Role::Auditor];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Factory => "factory",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}'; one of: admin, factory, operator, auditor"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: established from a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The credential's client id.
    pub client_id: String,
    /// Its role.
    pub role: Role,
    /// The token's id.
    pub jti: String,
    /// When the token expires.
    pub expires_at: UnixTime,
    /// The enrollment groups its credential is limited to (`None`: all).
    pub groups: Option<Vec<String>>,
}

/// A new credential; the secret is shown once.
pub struct NewCredential {
    /// The stored record (with the secret's hash only).
    pub record: CredentialRecord,
    /// The secret in clear.
    pub client_secret: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential").field("client_id", &self.record.client_id).finish_non_exhaustive()
    }
}

fn random_b64(rng: &dyn Entropy, n: usize) -> String {
    let mut b = vec![0u8; n];
    rng.fill(&mut b);
    B64URL.encode(b)
}

/// The device id under which a credential's client certificates are recorded.
pub fn credential_device_id(client_id: &str) -> String {
    format!("credential.{client_id}")
}

/// Revoke a credential (idempotent: the first revocation time stands); its access tokens
/// stop working at once, because every token check reads the credential.
pub async fn revoke_credential(
    store: &dyn Store,
    clock: &dyn Clock,
    client_id: &str,
    actor: &crate::Actor,
) -> Result<CredentialRecord, AuthorityError> {
    let now = clock.now();
    let audit = crate::audit::event(now, actor, "credential.revoke", client_id, serde_json::json!({}));
    store.revoke_credential(client_id, now, &audit).await.map_err(|e| match e.kind() {
        devid_core::ErrorKind::NotFound => AuthorityError::NotFound("credential"),
        _ => AuthorityError::Store(e),
    })
}

/// Create a credential with a random client id and a 256-bit random secret (never a
/// human-chosen password), stored as an Argon2id hash.
pub async fn create_credential(
    store: &dyn Store,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    role: Role,
    name: &str,
    groups: Option<Vec<String>>,
    actor: &crate::Actor,
) -> Result<NewCredential, AuthorityError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(AuthorityError::Invalid("credential name must be 1-200 printable characters".into()));
    }
    if let Some(gs) = &groups {
        if role != Role::Factory {
            return Err(AuthorityError::Invalid("only factory credentials are limited to groups".into()));
        }
        if gs.is_empty() || gs.len() > 100 {
            return Err(AuthorityError::Invalid("give 1 to 100 groups".into()));
        }
        for g in gs {
            if store.get_group(g).await?.is_none() {
                return Err(AuthorityError::Invalid(format!("no group {g}")));
            }
        }
    }
    let mut id = [0u8; 8];
    rng.fill(&mut id);
    let client_id = format!("devid_ci_{}", hex::encode(id));
    let client_secret = format!("devid_cs_{}", random_b64(rng, 32));
    let mut salt = [0u8; 16];
    rng.fill(&mut salt);
    let secret = client_secret.clone();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&secret, &salt))
        .await
        .map_err(|e| AuthorityError::Internal(format!("hashing task: {e}")))??;
    let record = CredentialRecord {
        client_id,
        secret_hash: hash,
        role: role.as_str().to_string(),
        name: name.to_string(),
        created_at: clock.now(),
        revoked_at: None,
        groups,
    };
    let audit = crate::audit::event(
        record.created_at,
        actor,
        "credential.create",
        record.client_id.as_str(),
        serde_json::json!({"role": role.as_str(), "name": name, "groups": record.groups}),
    );
    store.insert_credential(&record, &audit).await?;
    tracing::info!(client_id = %record.client_id, role = %role, "credential created");
    Ok(NewCredential { record, client_secret })
}

fn hash_secret(secret: &str, salt: &[u8]) -> Result<String, AuthorityError> {
    let salt = argon2::password_hash::SaltString::encode_b64(salt)
        .map_err(|e| AuthorityError::Internal(format!("salt: {e}")))?;
    // Argon2::default() is Argon2id v19 with m=19456 KiB, t=2, p=1 (OWASP's minimum).
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthorityError::Internal(format!("hashing: {e}")))
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// `iss` of the tokens (the public URL).
    pub issuer: String,
    /// Token lifetime in seconds (at most 900: 15 minutes).
    pub lifetime_secs: i64,
    /// A node signs with one key for this long, then makes a new one.
    pub signing_period_secs: i64,
    /// Failed attempts allowed per client id or source address within the window.
    pub max_failures: u32,
    /// The failure window, and how long attempts are refused once it is exceeded.
    pub failure_window_secs: i64,
}

impl TokenConfig {
    /// 15-minute tokens, keys rotated every 12 hours, 10 failures per 5 minutes.
    pub fn new(issuer: String) -> Self {
        TokenConfig {
            issuer,
            lifetime_secs: 900,
            signing_period_secs: 12 * 3600,
            max_failures: 10,
            failure_window_secs: 300,
        }
    }
}

/// An access token handed to a client.
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

struct SigningKey {
    kid: String,
    signer: Arc<dyn Signer>,
    rotate_at: UnixTime,
}

struct Failures {
    count: u32,
    since: UnixTime,
}

/// Issues and verifies access tokens.
pub struct TokenService {
    store: Arc<dyn Store>,
    kms: Arc<dyn KeyManager>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Entropy>,
    config: TokenConfig,
    signing: tokio::sync::Mutex<Option<SigningKey>>,
    verify_keys: RwLock<(UnixTime, HashMap<String, Vec<u8>>)>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("config", &self.config).finish_non_exhaustive()
    }
}

impl TokenService {
    /// A token service; the lifetime is clamped to 1..=900 seconds.
    pub fn new(
        store: Arc<dyn Store>,
        kms: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Entropy>,
        mut config: TokenConfig,
    ) -> Self {
        config.lifetime_secs = config.lifetime_secs.clamp(1, 900);
        TokenService {
            store,
            kms,
            clock,
            rng,
            config,
            signing: tokio::sync::Mutex::new(None),
            verify_keys: RwLock::new((UnixTime(0), HashMap::new())),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The client-credentials grant (RFC 6749 §4.4): check the client's secret and issue a
    /// token. Every failure looks the same to the caller (`invalid_client`).
    pub async fn exchange(
        &self,
        client_id: &str,
        client_secret: &str,
        source: IpAddr,
    ) -> Result<IssuedToken, AuthorityError> {
        let (cred, role) = self.authenticate(client_id, client_secret, source).await?;
        let token = self.sign(&cred.client_id, role, self.clock.now()).await?;
        Ok(IssuedToken { access_token: token, expires_in: self.config.lifetime_secs })
    }

    /// The client-credentials grant with mutual-TLS client authentication (RFC 8705 §2.1,
    /// `tls_client_auth`): the client presented `cert_der` on the renewal listener, a
    /// certificate devid issued for this credential (`devid credential create
    /// --client-cert-out`), stored, unexpired and not revoked; the credential is not
    /// revoked. Failures count toward the same throttle as wrong secrets.
    pub async fn exchange_with_certificate(
        &self,
        client_id: &str,
        cert_der: &[u8],
        source: IpAddr,
    ) -> Result<IssuedToken, AuthorityError> {
        let now = self.clock.now();
        let keys = [format!("id:{client_id}"), format!("ip:{source}")];
        self.check_throttle(&keys, now)?;
        let bound = async {
            let serial = devid_ca::certificate_serial(cert_der).ok()?;
            let c = self.store.get_certificate(&serial).await.ok()??;
            let ok = c.cert_der.as_deref() == Some(cert_der)
                && c.status == devid_store::CertStatus::Issued
                && c.not_after > now
                && c.device.as_str() == credential_device_id(client_id);
            if !ok {
                return None;
            }
            let cred = self.store.get_credential(client_id).await.ok()??;
            cred.revoked_at.is_none().then_some(cred)
        }
        .await;
        let Some(cred) = bound else {
            self.fail(&keys, now);
            self.audit_failure(client_id, source, "client certificate not bound to a usable credential")
                .await;
            return Err(AuthorityError::InvalidClient);
        };
        let role: Role = cred.role.parse().map_err(AuthorityError::Internal)?;
        let token = self.sign(&cred.client_id, role, now).await?;
        Ok(IssuedToken { access_token: token, expires_in: self.config.lifetime_secs })
    }

    /// Check a client's id and secret (RFC 6749 §2.3.1), counting failures.
    pub async fn authenticate(
        &self,
        client_id: &str,
        client_secret: &str,
        source: IpAddr,
    ) -> Result<(CredentialRecord, Role), AuthorityError> {
        let now = self.clock.now();
        let keys = [format!("id:{client_id}"), format!("ip:{source}")];
        self.check_throttle(&keys, now)?;
        let cred = self.store.get_credential(client_id).await?;
        let usable = cred.as_ref().is_some_and(|c| c.revoked_at.is_none()) && client_secret.len() <= 256;
        // Run Argon2 whatever happened above, against a dummy hash when there is no usable
        // credential, so the response time does not tell which client ids exist.
        let hash = match (&cred, usable) {
            (Some(c), true) => c.secret_hash.clone(),
            _ => DUMMY_HASH.to_string(),
        };
        let secret: String = client_secret.chars().take(256).collect();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| argon2::Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|e| AuthorityError::Internal(format!("verification task: {e}")))?;
        let cred = match cred {
            Some(c) if usable && ok => c,
            _ if !usable => {
                self.fail(&keys, now);
                self.audit_failure(client_id, source, "unknown or revoked client").await;
                tracing::info!(client_id, %source, "token request refused: unknown or revoked client");
                return Err(AuthorityError::InvalidClient);
            }
            _ => {
                self.fail(&keys, now);
                self.audit_failure(client_id, source, "wrong secret").await;
                tracing::info!(client_id, %source, "token request refused: wrong secret");
                return Err(AuthorityError::InvalidClient);
            }
        };
        let role: Role = cred.role.parse().map_err(AuthorityError::Internal)?;
        Ok((cred, role))
    }

    /// Record a failed authentication in the audit log. The client id is recorded as sent
    /// (cut to 128 characters); the secret never is.
    async fn audit_failure(&self, client_id: &str, source: IpAddr, why: &str) {
        let subject: String = client_id.chars().take(128).collect();
        let audit = crate::audit::event(
            self.clock.now(),
            &crate::Actor::Anonymous(source.to_string()),
            "auth.failure",
            subject,
            serde_json::json!({"reason": why}),
        );
        if let Err(e) = self.store.append_audit(&audit).await {
            tracing::error!(error = %e, "could not record an authentication failure in the audit log");
        }
    }

    fn check_throttle(&self, keys: &[String], now: UnixTime) -> Result<(), AuthorityError> {
        let Ok(f) = self.failures.lock() else { return Ok(()) };
        for k in keys {
            if let Some(x) = f.get(k)
                && x.count >= self.config.max_failures
                && now.0 - x.since.0 < self.config.failure_window_secs
            {
                let retry_after = (self.config.failure_window_secs - (now.0 - x.since.0)).max(1);
                return Err(AuthorityError::RateLimited { retry_after_secs: retry_after as u64 });
            }
        }
        Ok(())
    }

    fn fail(&self, keys: &[String], now: UnixTime) {
        let Ok(mut f) = self.failures.lock() else { return };
        if f.len() > 100_000 {
            let window = self.config.failure_window_secs;
            f.retain(|_, x| now.0 - x.since.0 < window);
        }
        for k in keys {
            let e = f.entry(k.clone()).or_insert(Failures { count: 0, since: now });
            if now.0 - e.since.0 >= self.config.failure_window_secs {
                *e = Failures { count: 0, since: now };
            }
            e.count += 1;
        }
    }

    async fn signing_key(&self, now: UnixTime) -> Result<(String, Arc<dyn Signer>), AuthorityError> {
        let mut slot = self.signing.lock().await;
        if let Some(k) = slot.as_ref()
            && now < k.rotate_at
        {
            return Ok((k.kid.clone(), k.signer.clone()));
        }
        // A key of ours still in its signing period (e.g. after a restart)?
        for rec in self.store.token_keys(now).await? {
            let rotate_at = rec.created_at.plus(self.config.signing_period_secs);
            if now >= rotate_at {
                continue;
            }
            let Ok(key) = rec.key_ref.parse::<KeyRef>() else { continue };
            if let Ok(signer) = self.kms.signer(&key) {
                *slot = Some(SigningKey { kid: rec.kid.clone(), signer: signer.clone(), rotate_at });
                return Ok((rec.kid, signer));
            }
        }
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        let kid = format!("tk-{}", hex::encode(b));
        let key = KeyRef::soft(&kid).map_err(|e| AuthorityError::Internal(e.to_string()))?;
        let kms = self.kms.clone();
        let k = key.clone();
        let signer = tokio::task::spawn_blocking(move || kms.create_key(&k, KeyAlgorithm::EcdsaP256, false))
            .await
            .map_err(|e| AuthorityError::Internal(format!("key task: {e}")))??;
        // Valid for verification while any token it signed can still be presented.
        let not_after = now.plus(self.config.signing_period_secs + self.config.lifetime_secs + 60);
        self.store
            .put_token_key(&TokenKeyRecord {
                kid: kid.clone(),
                key_ref: key.to_string(),
                public_spki: signer.public_key_spki_der().to_vec(),
                created_at: now,
                not_after,
            })
            .await?;
        tracing::info!(kid, "new access-token signing key");
        let rotate_at = now.plus(self.config.signing_period_secs);
        *slot = Some(SigningKey { kid: kid.clone(), signer: signer.clone(), rotate_at });
        Ok((kid, signer))
    }

    async fn sign(&self, client_id: &str, role: Role, now: UnixTime) -> Result<String, AuthorityError> {
        let (kid, signer) = self.signing_key(now).await?;
        let header = serde_json::json!({ "alg": "ES256", "typ": "at+jwt", "kid": kid });
        let claims = serde_json::json!({
            "iss": self.config.issuer,
            "sub": client_id,
            "role": role.as_str(),
            "iat": now.0,
            "exp": now.0 + self.config.lifetime_secs,
            "jti": random_b64(self.rng.as_ref(), 16),
        });
        let signing_input =
            format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let der = signer.sign(signing_input.as_bytes())?;
        // RFC 7518 §3.4: the JWS signature is R || S, each 32 octets, not DER.
        let fixed = p256::ecdsa::Signature::from_der(&der)
            .map_err(|e| AuthorityError::Internal(format!("signature encoding: {e}")))?
            .to_bytes();
        Ok(format!("{signing_input}.{}", B64URL.encode(fixed)))
    }

    async fn verify_key(&self, kid: &str, now: UnixTime) -> Result<Option<Vec<u8>>, AuthorityError> {
        let fetched_at = {
            let g = self.verify_keys.read().map_err(|_| AuthorityError::Internal("lock".into()))?;
            if let Some(k) = g.1.get(kid) {
                return Ok(Some(k.clone()));
            }
            g.0
        };
        // An unknown kid: another node's new key. Reload, at most once per second.
        if now.0.saturating_sub(fetched_at.0) < 1 {
            return Ok(None);
        }
        let keys = self.store.token_keys(now).await?;
        let mut map = HashMap::new();
        for k in keys {
            use spki_decode::point_of;
            if let Some(point) = point_of(&k.public_spki) {
                map.insert(k.kid, point);
            }
        }
        let found = map.get(kid).cloned();
        *self.verify_keys.write().map_err(|_| AuthorityError::Internal("lock".into()))? = (now, map);
        Ok(found)
    }

    /// Verify a bearer token (RFC 6750) and return who it speaks for. Refused: a bad
    /// signature or an unknown key, a wrong issuer, an expired token, a revoked token or
    /// credential.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthorityError> {
        let bad = |why: &str| AuthorityError::Unauthenticated(why.to_string());
        let now = self.clock.now();
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("malformed token"));
        };
        let header: serde_json::Value = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed token"))?;
        if header["alg"] != "ES256" {
            return Err(bad("unsupported token algorithm"));
        }
        let kid = header["kid"].as_str().ok_or_else(|| bad("malformed token"))?;
        let point = self.verify_key(kid, now).await?.ok_or_else(|| bad("token signed by an unknown key"))?;
        let sig = B64URL.decode(s).map_err(|_| bad("malformed token"))?;
        let signing_input_len = h.len() + 1 + c.len();
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(&token.as_bytes()[..signing_input_len], &sig)
            .map_err(|_| bad("bad token signature"))?;
        let claims: serde_json::Value = B64URL
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed token"))?;
        if claims["iss"] != self.config.issuer.as_str() {
            return Err(bad("token from another issuer"));
        }
        let exp = claims["exp"].as_i64().ok_or_else(|| bad("malformed token"))?;
        if now.0 >= exp {
            return Err(bad("token expired"));
        }
        let (Some(sub), Some(role), Some(jti)) =
            (claims["sub"].as_str(), claims["role"].as_str(), claims["jti"].as_str())
        else {
            return Err(bad("malformed token"));
        };
        let role: Role = role.parse().map_err(|_| bad("malformed token"))?;
        if self.store.is_token_revoked(jti).await? {
            return Err(bad("token revoked"));
        }
        let groups = match self.store.get_credential(sub).await? {
            Some(cred) if cred.revoked_at.is_none() && cred.role == role.as_str() => cred.groups,
            _ => return Err(bad("credential revoked")),
        };
        Ok(Principal {
            client_id: sub.to_string(),
            role,
            jti: jti.to_string(),
            expires_at: UnixTime(exp),
            groups,
        })
    }

    /// Revoke one access token on behalf of the client it was issued to (RFC 7009 §2.1:
    /// "the authorization server ... verifies whether the token was issued to the client
    /// making the revocation request"). A token that does not verify, or belongs to
    /// another client, is ignored, as RFC 7009 §2.2 asks ("invalid tokens do not cause an
    /// error response").
    pub async fn revoke(&self, client_id: &str, token: &str) -> Result<(), AuthorityError> {
        match self.verify(token).await {
            Ok(p) if p.client_id == client_id => {
                let actor = crate::Actor::Credential {
                    client_id: p.client_id.clone(),
                    role: p.role,
                    groups: p.groups.clone(),
                };
                let audit = crate::audit::event(
                    self.clock.now(),
                    &actor,
                    "token.revoke",
                    p.jti.as_str(),
                    serde_json::json!({}),
                );
                self.store.revoke_token(&p.jti, p.expires_at, &audit).await?;
                tracing::info!(client_id = %p.client_id, "access token revoked");
                Ok(())
            }
            Ok(_) | Err(AuthorityError::Unauthenticated(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

mod spki_decode {
    /// The EC point of a P-256 SubjectPublicKeyInfo.
    pub(super) fn point_of(spki: &[u8]) -> Option<Vec<u8>> {
        use p256::pkcs8::DecodePublicKey;
        let key = p256::PublicKey::from_public_key_der(spki).ok()?;
        Some(p256::EncodedPoint::from(key).as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_parses_and_matches_nothing_we_issue() {
        let h = PasswordHash::new(DUMMY_HASH).expect("valid PHC string");
        assert_eq!(h.algorithm.as_str(), "argon2id");
        assert!(argon2::Argon2::default().verify_password(b"devid_cs_x", &h).is_err());
    }

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn secret_hash_is_argon2id_and_verifies() {
        let h = hash_secret("devid_cs_abc", &[7u8; 16]).expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).expect("phc");
        assert!(argon2::Argon2::default().verify_password(b"devid_cs_abc", &parsed).is_ok());
        assert!(argon2::Argon2::default().verify_password(b"devid_cs_abd", &parsed).is_err());
    }
}
