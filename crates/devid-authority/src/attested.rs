//! Enrollment with attestation evidence (PROTOCOL.md): the challenge, then steps 1 and 2 of
//! the issuance cycle for the x509, tpm and symmetric methods; steps 3 to 6 are
//! [`Authority::issue`], shared with every method.

use std::sync::Arc;

use devid_attest::{AttestError, Attested};
use devid_core::{DeviceId, ErrorKind, UnixTime};
use devid_store::{ChallengeRecord, DeviceMeta, DeviceStatus, GroupRecord, Redeem, SealedNonce};
use serde_json::json;
use sha2::Digest;

use crate::enroll::IssueContext;
use crate::groups::{Method, device_seal_context, group_seal_context, methods_of};
use crate::{Actor, Authority, AuthorityError, Issued};

/// Nonce length (PROTOCOL.md §1).
pub const NONCE_LEN: usize = 32;

/// A TPM's identity, sent with a `tpm` challenge request.
#[derive(Debug, Clone)]
pub struct TpmIdentity {
    /// The EK certificate, DER.
    pub ek_cert: Vec<u8>,
    /// The EK's TPM2B_PUBLIC.
    pub ek_public: Vec<u8>,
    /// The AK's TPM2B_PUBLIC.
    pub ak_public: Vec<u8>,
}

/// A fresh challenge.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The single-use nonce.
    pub nonce: [u8; NONCE_LEN],
    /// When it stops being accepted.
    pub expires_at: UnixTime,
    /// For `tpm`: the credential made for the AK.
    pub tpm: Option<devid_attest::tpm::CredentialChallenge>,
}

/// The evidence of one method (PROTOCOL.md §2), decoded.
#[derive(Clone)]
pub enum Evidence {
    /// X.509 IDevID.
    X509 {
        /// Device certificate first.
        chain: Vec<Vec<u8>>,
        /// The factory key's signature over the binding.
        signature: Vec<u8>,
    },
    /// Derived symmetric key.
    Symmetric {
        /// The id the key is derived for.
        device_id: String,
        /// HMAC-SHA256(device key, binding).
        proof: Vec<u8>,
    },
    /// TPM 2.0.
    Tpm {
        /// The activated credential secret.
        secret: Vec<u8>,
        /// TPM2B_PUBLIC of the CSR's key.
        key_public: Vec<u8>,
        /// TPM2B_ATTEST.
        certify_info: Vec<u8>,
        /// TPMT_SIGNATURE.
        certify_signature: Vec<u8>,
    },
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Evidence::X509 { .. } => "Evidence::X509",
            Evidence::Symmetric { .. } => "Evidence::Symmetric",
            Evidence::Tpm { .. } => "Evidence::Tpm",
        })
    }
}

impl Evidence {
    fn method(&self) -> Method {
        match self {
            Evidence::X509 { .. } => Method::X509,
            Evidence::Symmetric { .. } => Method::Symmetric,
            Evidence::Tpm { .. } => Method::Tpm,
        }
    }
}

fn nonce_hash(nonce: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(nonce).to_vec()
}

impl Authority {
    /// `POST /v1/enroll/challenge`: a single-use nonce for `group` and `method` that any
    /// node can redeem. For `x509` and `symmetric` it is stateless (see [`crate::nonce`]):
    /// nothing is written until it is redeemed. For `tpm`, the EK certificate, EK and AK are
    /// checked now, the credential for the AK is made (TPM2_MakeCredential), and the
    /// challenge is stored with what the enrollment will need of them.
    pub async fn challenge(
        &self,
        group: &str,
        method: Method,
        tpm: Option<TpmIdentity>,
    ) -> Result<Challenge, AuthorityError> {
        let g = self.group_for(group, method).await?;
        if method == Method::Token {
            return Err(AuthorityError::Invalid("the token method needs no challenge".into()));
        }
        let now = self.clock.now();
        let expires_at = now.plus(self.config.challenge_ttl_secs);
        if method != Method::Tpm
            && tpm.is_none()
            && let Some(key) = self.challenge_key().await
            && let Some(nonce) =
                key.seal(&crate::nonce::random(self.rng.as_ref()), expires_at, &g.name, method.as_str())
        {
            // Redeemed nonces are rows of `challenges` until an hour after they expire.
            if self.commits.purge_due(now.plus(-3600)) {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.insert_challenges(&[], Some(now.plus(-3600))).await {
                        tracing::warn!(error = %e, "could not purge expired challenges");
                    }
                });
            }
            return Ok(Challenge { nonce, expires_at, tpm: None });
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce);
        let (state, tpm_challenge) = match (method, tpm) {
            (Method::Tpm, Some(id)) => {
                let policy = devid_attest::tpm::TpmPolicy { ek_anchors: g.trust_anchors.clone() };
                match devid_attest::tpm::start(
                    &policy,
                    &id.ek_cert,
                    &id.ek_public,
                    &id.ak_public,
                    self.rng.as_ref(),
                    now,
                ) {
                    Ok((pending, cred)) => {
                        let state = serde_json::to_string(&pending)
                            .map_err(|e| AuthorityError::Internal(format!("TPM state: {e}")))?;
                        (Some(state), Some(cred))
                    }
                    Err(e) => return Err(self.refused(group, method, None, e).await),
                }
            }
            (Method::Tpm, None) => {
                return Err(AuthorityError::Invalid(
                    "the tpm method needs the EK certificate, EK and AK".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(AuthorityError::Invalid("tpm evidence is for the tpm method only".into()));
            }
            (_, None) => (None, None),
        };
        let record = ChallengeRecord {
            nonce_hash: nonce_hash(&nonce),
            group: g.name.clone(),
            method: method.as_str().into(),
            state,
            expires_at,
            redeemed_at: None,
        };
        // Challenges that expired an hour ago go in the same transaction: the table stays
        // as small as the traffic of the last hour.
        self.commits.challenges.submit((record, now.plus(-3600))).await?;
        Ok(Challenge { nonce, expires_at, tpm: tpm_challenge })
    }

    /// `POST /v1/enroll` with evidence: the issuance cycle (ARCHITECTURE.md), steps 1 and 2
    /// for the attested methods, then [`Authority::issue`].
    ///
    /// Step 1: the CSR's signature; the nonce (made for this group and method, unexpired,
    /// and for a stored challenge known and unredeemed); the evidence, over
    /// `binding(nonce, CSR)`. Step 2: the group's policy: the method is allowed, the device
    /// (named by the evidence) is registered in the group when registration is required
    /// (registered with the intent, in step 4, when it is optional), not quarantined, and
    /// its own method (if it has one) is this one. The nonce is redeemed in the transaction
    /// of step 4, so a nonce yields at most one certificate.
    pub async fn enroll_attested(
        &self,
        group: &str,
        nonce: &[u8],
        evidence: Evidence,
        csr: &[u8],
    ) -> Result<Issued, AuthorityError> {
        let method = evidence.method();
        // Step 1.
        let csr = devid_ca::csr::parse_and_verify(csr)?;
        if nonce.len() != NONCE_LEN {
            return Err(AuthorityError::NonceInvalid);
        }
        let now = self.clock.now();
        let hash = nonce_hash(nonce);
        // A stateless nonce needs no read: whether it was redeemed is found in step 4. Any
        // other is looked up (a TPM challenge; one stored before stateless challenges, or
        // by a node without the key).
        let sealed = match method {
            Method::Tpm => None,
            _ => self.challenge_key().await.and_then(|k| k.open(nonce, group, method.as_str())),
        };
        let (state, redeem) = match sealed {
            Some(expires_at) if expires_at <= now => return Err(AuthorityError::NonceInvalid),
            Some(expires_at) => (
                None,
                Redeem::Sealed(SealedNonce { hash: &hash, group, method: method.as_str(), expires_at }),
            ),
            None => {
                let challenge = self
                    .commits
                    .challenge_lookups
                    .submit(hash.clone())
                    .await?
                    .ok_or(AuthorityError::NonceInvalid)?;
                if challenge.group != group
                    || challenge.method != method.as_str()
                    || challenge.expires_at <= now
                {
                    return Err(AuthorityError::NonceInvalid);
                }
                if challenge.redeemed_at.is_some() {
                    return Err(AuthorityError::NonceUsed);
                }
                (challenge.state, Redeem::Nonce(&hash))
            }
        };
        let g = self.group_for(group, method).await?;
        self.limiter.group(&g.name, g.rate_per_minute, self.clock.as_ref())?;
        let binding = devid_attest::binding_from_csr_hash(nonce, &csr.sha256);
        let attested = match self.attest(&g, state.as_deref(), &evidence, &binding, &csr.spki_der, now).await
        {
            Ok(a) => a,
            Err(AuthorityError::Attestation(e)) => {
                let claimed = match &evidence {
                    Evidence::Symmetric { device_id, .. } => Some(device_id.as_str()),
                    _ => None,
                };
                return Err(self.refused(group, method, claimed, e).await);
            }
            Err(e) => return Err(e),
        };
        let device = DeviceId::new(&attested.device_id).map_err(|_| {
            AuthorityError::Attestation(AttestError::new(
                devid_attest::Failure::NoDeviceId,
                "invalid device id",
            ))
        })?;
        // Step 2.
        self.limiter.device(device.as_str(), self.clock.as_ref())?;
        // The device and the certificate already issued for this CSR (a retry), in one read.
        let (existing, prior) =
            match self.commits.csr_lookups.submit((device.clone(), csr.sha256.to_vec())).await? {
                Some((d, meta, prior)) => (Some((d, meta)), prior),
                None => (None, None),
            };
        let register = self.admit(&g, method, &device, existing)?;
        if let Some(prior) = prior
            && prior.status == devid_store::CertStatus::Issued
            && prior.not_after > now
            && prior.predecessor.is_none()
        {
            // A retry of an enrollment that succeeded (same device, same CSR): the same
            // certificate, and the new nonce stays unredeemed (it expires on its own).
            return self.issued(prior).await;
        }
        let ctx = IssueContext {
            method: method.as_str(),
            summary: attested.summary,
            validity_secs: g.validity_secs,
            predecessor: None,
            server_names: None,
        };
        let issued = self.issue(&device, &csr, redeem, register, &ctx).await?;
        crate::metrics::CERTIFICATES_ISSUED.inc(method.as_str());
        Ok(issued)
    }

    /// The key of stateless challenges: read from the store (sealed by the key manager) the
    /// first time, or made and stored if no node has made one yet. `None` (and the stored
    /// challenges of before) while it cannot be had: no sealing key, one that does not open
    /// the stored secret (another key-encryption key than the other replicas'), the store
    /// unreachable; a call ten seconds later tries again.
    async fn challenge_key(&self) -> Option<&crate::nonce::ChallengeKey> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(k) = self.challenge_key.get() {
            return Some(k);
        }
        let now = self.clock.now();
        if now.0 < self.challenge_key_retry.load(Relaxed) {
            return None;
        }
        let got = self
            .challenge_key
            .get_or_try_init(|| async {
                let mut secret = zeroize::Zeroizing::new([0u8; 32]);
                self.rng.fill(secret.as_mut());
                let context = crate::nonce::SECRET_NAME;
                let candidate = self.kms.seal(context, secret.as_ref()).map_err(AuthorityError::from)?;
                let sealed = self.store.service_secret(context, &candidate, self.clock.now()).await?;
                let secret = self.kms.unseal(context, &sealed).map_err(AuthorityError::from)?;
                Ok::<_, AuthorityError>(crate::nonce::ChallengeKey::new(&secret))
            })
            .await;
        match got {
            Ok(k) => Some(k),
            Err(e) => {
                self.challenge_key_retry.store(now.0.saturating_add(10), Relaxed);
                tracing::warn!(error = %e, "no key for stateless challenges: storing challenges (trying again in 10 s)");
                None
            }
        }
    }

    /// The group, which must exist and allow `method`.
    async fn group_for(&self, group: &str, method: Method) -> Result<Arc<GroupRecord>, AuthorityError> {
        let g = self
            .groups
            .get(self.store.as_ref(), self.clock.as_ref(), group)
            .await?
            .ok_or(AuthorityError::NotFound("group"))?;
        if !methods_of(&g).contains(&method) {
            return Err(AuthorityError::MethodNotAllowed(method.as_str().into()));
        }
        Ok(g)
    }

    async fn attest(
        &self,
        g: &GroupRecord,
        state: Option<&str>,
        evidence: &Evidence,
        binding: &[u8; 32],
        csr_spki: &[u8],
        now: UnixTime,
    ) -> Result<Attested, AuthorityError> {
        let a = match evidence {
            Evidence::X509 { chain, signature } => {
                let id_source = g
                    .id_source
                    .parse()
                    .map_err(|e| AuthorityError::Internal(format!("group {}: {e}", g.name)))?;
                let policy = devid_attest::x509::X509Policy {
                    anchors: g.trust_anchors.clone(),
                    crls: g.crls.clone(),
                    id_source,
                };
                devid_attest::x509::verify(&policy, chain, signature, binding, now)
            }
            Evidence::Symmetric { device_id, proof } => {
                // A device registered with its own key proves that one; any other, the
                // key derived from the group's master key.
                let own = match DeviceId::new(device_id) {
                    Ok(id) => self.store.device_meta(&id).await?.and_then(|m| m.secret),
                    Err(_) => None,
                };
                match own {
                    Some(sealed) => {
                        let key = self.kms.unseal(&device_seal_context(device_id), &sealed)?;
                        devid_attest::symmetric::verify_device(&key, device_id, binding, proof)
                    }
                    None => {
                        let sealed = g.master_key.as_ref().ok_or_else(|| {
                            AuthorityError::Internal(format!(
                                "group {} allows symmetric but has no key",
                                g.name
                            ))
                        })?;
                        let key = self.kms.unseal(&group_seal_context(&g.name), sealed)?;
                        devid_attest::symmetric::verify_group(&key, device_id, binding, proof)
                    }
                }
            }
            Evidence::Tpm { secret, key_public, certify_info, certify_signature } => {
                let state = state.ok_or(AuthorityError::NonceInvalid)?;
                let pending: devid_attest::tpm::PendingTpm = serde_json::from_str(state)
                    .map_err(|e| AuthorityError::Internal(format!("stored TPM state: {e}")))?;
                devid_attest::tpm::finish(
                    &pending,
                    secret,
                    key_public,
                    certify_info,
                    certify_signature,
                    binding,
                    csr_spki,
                )
            }
        };
        a.map_err(AuthorityError::Attestation)
    }

    /// Step 2: may this device (`existing`: its record as read, if it exists) enroll in this
    /// group with this method? A device the store does not know, in a group whose
    /// registration is optional, may: the answer is then its registration, which step 4
    /// writes in the intent's transaction (one transaction and one device update fewer per
    /// such enrollment than a registration of its own).
    fn admit(
        &self,
        g: &GroupRecord,
        method: Method,
        device: &DeviceId,
        existing: Option<(devid_store::DeviceRecord, DeviceMeta)>,
    ) -> Result<Option<crate::group_commit::Registration>, AuthorityError> {
        match existing {
            Some((d, meta)) => {
                if d.status == DeviceStatus::Quarantined {
                    return Err(AuthorityError::DeviceQuarantined);
                }
                if meta.group.as_deref() != Some(g.name.as_str()) {
                    return Err(AuthorityError::DeviceNotRegistered(device.to_string()));
                }
                if let Some(m) = meta.method
                    && m != method.as_str()
                {
                    return Err(AuthorityError::MethodNotAllowed(method.as_str().into()));
                }
                Ok(None)
            }
            None if g.registration == "required" => {
                Err(AuthorityError::DeviceNotRegistered(device.to_string()))
            }
            None => {
                let meta = DeviceMeta { group: Some(g.name.clone()), ..DeviceMeta::default() };
                let audit = crate::audit::event(
                    self.clock.now(),
                    &Actor::Device(device.clone()),
                    "device.register",
                    device.as_str(),
                    json!({"group": g.name, "method": method.as_str(), "registration": "optional"}),
                );
                Ok(Some(crate::group_commit::Registration { meta, audit }))
            }
        }
    }

    /// Count and record a refused attestation; the error to return.
    async fn refused(
        &self,
        group: &str,
        method: Method,
        claimed: Option<&str>,
        e: AttestError,
    ) -> AuthorityError {
        crate::metrics::ATTESTATION_FAILURES.inc(e.failure.as_str());
        tracing::info!(group, method = method.as_str(), reason = e.failure.as_str(), detail = %e.detail, "attestation refused");
        let actor = match claimed.and_then(|c| DeviceId::new(c).ok()) {
            Some(id) => Actor::Device(id),
            None => Actor::Anonymous("device".into()),
        };
        let audit = crate::audit::event(
            self.clock.now(),
            &actor,
            "enroll.refused",
            group,
            json!({"method": method.as_str(), "reason": e.failure.as_str()}),
        );
        if let Err(err) = self.store.append_audit(&audit).await
            && err.kind() != ErrorKind::NotFound
        {
            tracing::error!(error = %err, "could not record a refused attestation in the audit log");
        }
        AuthorityError::Attestation(e)
    }
}
