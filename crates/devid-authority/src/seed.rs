//! Seeding a store with a large, realistic population (`devid seed`): devices, real device
//! certificates issued by the active issuing CA, a share of them revoked and a share
//! expired. For scale tests and benchmarks (issue #6): a 10,000,000-certificate store is
//! built in minutes, not by enrolling ten million devices.
//!
//! Every certificate is real: its TBSCertificate is built with the device profile
//! ([`devid_ca::profile::leaf_tbs`], RFC 5280 §4.1) and signed through the issuing CA's
//! [`devid_kms::Signer`] with [`devid_ca::sign::sign_tbs`], which checks each signature
//! before the certificate is assembled ("sign only what you checked"). What is synthetic:
//!
//! - **Time.** A certificate of the expired share was issued up to 90 days ago and its
//!   notAfter has passed; the others expire between `min(1 h, validity / 4)` and one
//!   validity (`issuance.validity`) from now, uniformly. Backdated certificates may predate
//!   the issuing CA's own notBefore.
//! - **Serials.** The shape issuance gives them ([`Serial::timed`]): 20 octets, the first 6
//!   a time in milliseconds, the other 14 from the CSPRNG. The time is not the
//!   certificate's own issuance time but a point of the seed's issuance window (from
//!   `HISTORY_SECS + validity` ago to now) that grows with the position: rows arrive in
//!   primary-key order, so the index is appended to instead of split at random, and every
//!   seeded serial sorts before those issued afterwards, as in a store that issuance
//!   filled. CRL shards ([`devid_ca::crl::shard_of`]) take the low 32 bits, random in both.
//! - **Keys and CSRs.** Each device gets a fresh P-256 key (one per device per chunk: a
//!   device whose certificates straddle two chunks has two keys, like a device that rotated
//!   its key on renewal). No CSR exists: `csr_sha256` is SHA-256 of the key and the serial.
//! - **Devices.** `seed-<6 hex>-<10 digits>`, registered in batch `seed-<6 hex>` with a
//!   redeemed token (only its hash, of 32 random bytes, is stored), three in four in one of
//!   the seed's enrollment groups (token method, registration required), one in two with
//!   labels `{"model":"m<0-4>","site":"site-<00-19>"}`. Certificates go to devices in
//!   order, `certificates / devices` each; with more devices than certificates the rest
//!   stay registered, not enrolled.
//! - **Shares.** Exactly `round(N × revoked)` certificates are revoked and
//!   `round(N × expired)` are expired, each set picked by its own affine permutation of the
//!   positions, so the two are independent (about `revoked × expired` of N are both).
//!   Revocation reasons: superseded 35 %, unspecified 30 %, cessationOfOperation 20 %,
//!   keyCompromise 10 %, privilegeWithdrawn 5 %; revoked between issuance and now.
//!
//! Building and signing run on `jobs` blocking threads, chunk by chunk; the store loads the
//! chunks in order with `COPY` (see `devid_store::seed`), in one transaction with one audit
//! entry (`store.seed`), then refreshes the planner's statistics. Memory holds at most
//! `2 × jobs + 1` chunks of [`CHUNK`] certificates.

use std::sync::Arc;

use devid_ca::profile::{IssuerInfo, LeafProfile};
use devid_core::{CaId, Clock, DeviceId, Entropy, RevocationReason, Serial, UnixTime};
use devid_kms::{KeyManager, Signer};
use devid_store::seed::{CopyChunk, SeedCert, SeedCounts, SeedDevice};
use devid_store::{DeviceStatus, GroupRecord, PgStore, Store};

use crate::issuer::ActiveIssuer;
use crate::{Actor, AuthorityConfig, AuthorityError};

/// Certificates per chunk (one `COPY` per table and chunk; about 5 MiB encoded).
pub const CHUNK: u64 = 4096;
/// The most devices a seed makes (their ids carry 10 digits).
pub const MAX_DEVICES: u64 = 9_999_999_999;
/// How far back the expired share reaches.
const HISTORY_SECS: i64 = 90 * 86_400;

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedParams {
    /// Certificates (at least 1).
    pub certificates: u64,
    /// Devices they belong to (at least 1, at most [`MAX_DEVICES`]).
    pub devices: u64,
    /// The revoked share, 0 to 1.
    pub revoked: f64,
    /// The expired share, 0 to 1.
    pub expired: f64,
    /// Enrollment groups to spread the devices over (0: none).
    pub groups: u32,
    /// Threads that build and sign.
    pub jobs: usize,
    /// `VACUUM (ANALYZE)` the seeded tables afterwards instead of `ANALYZE` alone.
    pub vacuum: bool,
}

/// What a seed did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The batch id of the seeded devices (`seed-<6 hex>`), also the audit subject.
    pub batch_id: String,
    /// The issuing CA that signed the certificates.
    pub issuer: CaId,
    /// The enrollment groups made.
    pub groups: Vec<String>,
    /// What was written.
    pub counts: SeedCounts,
    /// Seconds spent building, signing and loading (until the commit).
    pub load_secs: f64,
    /// Seconds spent on `ANALYZE` (or `VACUUM (ANALYZE)`).
    pub analyze_secs: f64,
}

/// Seed the store: see the module documentation. `progress` is called after each chunk
/// with what has been written so far.
#[allow(clippy::too_many_arguments)]
pub async fn seed(
    store: &PgStore,
    kms: &dyn KeyManager,
    clock: &dyn Clock,
    rng: Arc<dyn Entropy>,
    config: &AuthorityConfig,
    params: &SeedParams,
    actor: &Actor,
    progress: &mut (dyn FnMut(SeedCounts) + Send),
) -> Result<SeedReport, AuthorityError> {
    check(params)?;
    let started = std::time::Instant::now();
    let issuer = ActiveIssuer::load(store as &dyn Store, kms, config).await?;
    let now = clock.now();
    let mut tag = [0u8; 3];
    rng.fill(&mut tag);
    let batch_id = format!("seed-{}", hex::encode(tag));
    let groups: Vec<GroupRecord> = (0..params.groups)
        .map(|g| GroupRecord {
            name: format!("{batch_id}-g{g}"),
            methods: vec![crate::groups::Method::Token.as_str().to_string()],
            registration: "required".into(),
            id_source: crate::groups::CLAIMED_ID_SOURCE.into(),
            validity_secs: None,
            trust_anchors: Vec::new(),
            crls: Vec::new(),
            master_key: None,
            rate_per_minute: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    let plan = Arc::new(Plan::new(params, &issuer, now, &batch_id, &groups, rng)?);

    let mut seed = store.begin_seed(&groups).await?;
    let jobs = params.jobs.max(1);
    let chunks = params.certificates.div_ceil(CHUNK);
    let mut inbox = Vec::with_capacity(jobs);
    for w in 0..jobs {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<CopyChunk, AuthorityError>>(2);
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = w as u64;
            while j < chunks {
                let built = plan.chunk(j);
                let failed = built.is_err();
                // A closed channel: the loader stopped (an error); stop too.
                if tx.blocking_send(built).is_err() || failed {
                    return;
                }
                j += jobs as u64;
            }
        });
        inbox.push(rx);
    }
    for j in 0..chunks {
        let rx = &mut inbox[(j % jobs as u64) as usize];
        let mut chunk =
            rx.recv().await.ok_or_else(|| AuthorityError::Internal("a seeding thread stopped".into()))??;
        seed.write(&mut chunk).await?;
        progress(seed.counts());
    }
    let written = seed.counts();
    let audit = crate::audit::event(
        now,
        actor,
        "store.seed",
        batch_id.as_str(),
        serde_json::json!({
            "issuer": issuer.id.as_str(),
            "certificates": written.certificates,
            "devices": written.devices,
            "revoked": written.revoked,
            "expired": written.expired,
            "groups": groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        }),
    );
    let counts = seed.commit(&audit).await?;
    let load_secs = started.elapsed().as_secs_f64();
    let analyzing = std::time::Instant::now();
    store.analyze_seeded(params.vacuum).await?;
    Ok(SeedReport {
        batch_id,
        issuer: issuer.id.clone(),
        groups: groups.into_iter().map(|g| g.name).collect(),
        counts,
        load_secs,
        analyze_secs: analyzing.elapsed().as_secs_f64(),
    })
}

fn check(p: &SeedParams) -> Result<(), AuthorityError> {
    let invalid = |m: &str| Err(AuthorityError::Invalid(m.into()));
    if p.certificates == 0 {
        return invalid("--certificates must be at least 1");
    }
    if p.devices == 0 || p.devices > MAX_DEVICES {
        return invalid("--devices must be between 1 and 9,999,999,999");
    }
    for (name, v) in [("--revoked", p.revoked), ("--expired", p.expired)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(AuthorityError::Invalid(format!("{name} must be a fraction between 0 and 1")));
        }
    }
    if p.groups > 1000 {
        return invalid("--groups must be at most 1000");
    }
    Ok(())
}

/// Picks exactly `k` of the positions `0..n`: position `i` is picked when
/// `(a·i + b) mod n < k`, with `a` coprime to `n` (so the map is a permutation of `0..n`).
#[derive(Debug, Clone, Copy)]
struct Pick {
    n: u64,
    a: u64,
    b: u64,
    k: u64,
}

impl Pick {
    fn new(n: u64, share: f64, salt: u64) -> Pick {
        let k = ((n as f64) * share).round().clamp(0.0, n as f64) as u64;
        let mut a = (salt % n).max(1);
        while gcd(a, n) != 1 {
            a = a % n + 1;
        }
        Pick { n, a, b: mix(salt) % n, k }
    }

    fn picks(&self, i: u64) -> bool {
        let p = (u128::from(self.a) * u128::from(i) + u128::from(self.b)) % u128::from(self.n);
        (p as u64) < self.k
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// SplitMix64: spreads positions into well-mixed 64-bit values (not a secret: times,
/// reasons, groups and labels only; serials and token hashes use the CSPRNG).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A value in [0, 1) from a mixed value.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Everything the building threads share.
struct Plan {
    n: u64,
    m: u64,
    revoked: Pick,
    expired: Pick,
    salt: u64,
    now: UnixTime,
    validity: i64,
    margin: i64,
    batch_id: String,
    groups: Vec<String>,
    issuer_id: CaId,
    info: IssuerInfo,
    profile: LeafProfile,
    signer: Arc<dyn Signer>,
    rng: Arc<dyn Entropy>,
}

impl Plan {
    fn new(
        p: &SeedParams,
        issuer: &ActiveIssuer,
        now: UnixTime,
        batch_id: &str,
        groups: &[GroupRecord],
        rng: Arc<dyn Entropy>,
    ) -> Result<Plan, AuthorityError> {
        let mut salt = [0u8; 8];
        rng.fill(&mut salt);
        let salt = u64::from_be_bytes(salt);
        let validity = issuer.profile.validity_secs;
        if validity <= 0 {
            return Err(AuthorityError::Invalid("issuance.validity must be positive".into()));
        }
        Ok(Plan {
            n: p.certificates,
            m: p.devices,
            revoked: Pick::new(p.certificates, p.revoked, mix(salt ^ 1)),
            expired: Pick::new(p.certificates, p.expired, mix(salt ^ 2)),
            salt,
            now,
            validity,
            margin: (validity / 4).min(3600),
            batch_id: batch_id.to_string(),
            groups: groups.iter().map(|g| g.name.clone()).collect(),
            issuer_id: issuer.id.clone(),
            info: issuer.info.clone(),
            profile: issuer.profile.clone(),
            signer: issuer.signer.clone(),
            rng,
        })
    }

    /// The first device whose certificates start at or after position `x` (devices own the
    /// positions `ceil(d·n/m)..ceil((d+1)·n/m)`).
    fn first_device_from(&self, x: u64) -> u64 {
        if x == 0 { 0 } else { ((u128::from(x - 1) * u128::from(self.m)) / u128::from(self.n)) as u64 + 1 }
    }

    /// The device that owns certificate `i`.
    fn owner(&self, i: u64) -> u64 {
        ((u128::from(i) * u128::from(self.m)) / u128::from(self.n)) as u64
    }

    fn device_id(&self, d: u64) -> String {
        format!("{}-{d:010}", self.batch_id)
    }

    /// Build, sign and encode chunk `j`: certificates `j·CHUNK..`, and the devices whose
    /// certificates start there (the last chunk also takes devices without certificates).
    fn chunk(&self, j: u64) -> Result<CopyChunk, AuthorityError> {
        let lo = j * CHUNK;
        let hi = (lo + CHUNK).min(self.n);
        let mut out = CopyChunk::new(self.now);
        let d_lo = self.first_device_from(lo);
        let d_hi = if hi == self.n { self.m } else { self.first_device_from(hi) };
        let mut token_hashes = vec![0u8; 32 * (d_hi - d_lo) as usize];
        self.rng.fill(&mut token_hashes);
        let created_at = self.now.plus(-HISTORY_SECS - self.validity - 30 * 86_400);
        for (k, d) in (d_lo..d_hi).enumerate() {
            let id = self.device_id(d);
            // It owns at least one position.
            let enrolled = self.first_start(d) < self.first_start(d + 1);
            let h = mix(d ^ self.salt.rotate_left(17));
            let group = match (self.groups.len() as u64, h % 4) {
                (0, _) | (_, 0) => None,
                (g, _) => Some(self.groups[((h >> 8) % g) as usize].as_str()),
            };
            let labels = (h >> 20)
                .is_multiple_of(2)
                .then(|| format!(r#"{{"model":"m{}","site":"site-{:02}"}}"#, (h >> 24) % 5, (h >> 32) % 20));
            let used = enrolled.then(|| created_at.plus(3600 + ((h >> 40) % 86_400) as i64));
            out.push_device(&SeedDevice {
                id: &id,
                status: if enrolled { DeviceStatus::Enrolled } else { DeviceStatus::Registered },
                token_hash: &token_hashes[32 * k..32 * (k + 1)],
                token_used_at: used,
                created_at,
                updated_at: used.unwrap_or(created_at),
                labels: labels.as_deref(),
                batch_id: &self.batch_id,
                group,
            });
        }
        let mut serial_bytes = vec![[0u8; Serial::TIMED_RANDOM]; (hi - lo) as usize];
        for r in &mut serial_bytes {
            self.rng.fill(r);
        }
        let mut key: Option<(u64, Vec<u8>)> = None;
        let alg = self.signer.algorithm();
        for (i, random) in (lo..hi).zip(&serial_bytes) {
            let d = self.owner(i);
            let spki = match &key {
                Some((owner, spki)) if *owner == d => spki.clone(),
                _ => {
                    let spki = device_key()?;
                    key = Some((d, spki.clone()));
                    spki
                }
            };
            let device =
                DeviceId::new(self.device_id(d)).map_err(|e| AuthorityError::Internal(e.to_string()))?;
            let serial = self.serial(i, random);
            let h = mix(i ^ self.salt);
            let not_after = if self.expired.picks(i) {
                self.now.plus(-60 - (unit(h) * (HISTORY_SECS - 60) as f64) as i64)
            } else {
                self.now.plus(self.margin + (unit(h) * (self.validity - self.margin) as f64) as i64)
            };
            let issued_at = not_after.plus(-self.validity);
            let (tbs, validity) = devid_ca::profile::leaf_tbs(
                &self.info,
                alg,
                &self.profile,
                &serial,
                &device,
                &spki,
                issued_at,
            )?;
            let cert_der = devid_ca::sign::sign_tbs(self.signer.as_ref(), &tbs)?;
            let csr_sha256 = {
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                ctx.update(&spki);
                ctx.update(serial.as_bytes());
                ctx.finish()
            };
            let revocation = self.revoked.picks(i).then(|| {
                let h2 = mix(h);
                let until = self.now.min(validity.not_after).0.max(issued_at.0);
                let at = UnixTime(issued_at.0 + (unit(h2) * (until - issued_at.0) as f64) as i64);
                (at, reason(unit(mix(h2))))
            });
            out.push_certificate(&SeedCert {
                serial_hex: &serial.to_hex(),
                issuer: &self.issuer_id,
                device: device.as_str(),
                not_before: validity.not_before,
                not_after: validity.not_after,
                csr_sha256: csr_sha256.as_ref(),
                tbs_der: &tbs,
                cert_der: &cert_der,
                created_at: issued_at,
                revocation,
            });
        }
        out.finish();
        Ok(out)
    }

    /// `ceil(d·n/m)`: the first position device `d` owns.
    fn first_start(&self, d: u64) -> u64 {
        (u128::from(d) * u128::from(self.n)).div_ceil(u128::from(self.m)) as u64
    }

    /// Serial of position `i` from 14 random octets `r`: [`Serial::timed`] at the point
    /// `i / n` of the issuance window, from `HISTORY_SECS + validity` ago to now (the
    /// window is at least 90 days, so 10,000,000 positions are each at least 0.7 s apart
    /// and the serials grow with `i`).
    fn serial(&self, i: u64, r: &[u8; Serial::TIMED_RANDOM]) -> Serial {
        let span_ms = u128::from((HISTORY_SECS + self.validity).unsigned_abs()) * 1000;
        let start_ms = self.now.0.saturating_sub(HISTORY_SECS + self.validity).saturating_mul(1000);
        let offset = (u128::from(i) * span_ms / u128::from(self.n.max(1))) as i64;
        Serial::timed_from(start_ms.saturating_add(offset), r)
    }
}

/// A revocation reason from a value in [0, 1): superseded 35 %, unspecified 30 %,
/// cessationOfOperation 20 %, keyCompromise 10 %, privilegeWithdrawn 5 %.
fn reason(u: f64) -> RevocationReason {
    match u {
        u if u < 0.35 => RevocationReason::Superseded,
        u if u < 0.65 => RevocationReason::Unspecified,
        u if u < 0.85 => RevocationReason::CessationOfOperation,
        u if u < 0.95 => RevocationReason::KeyCompromise,
        _ => RevocationReason::PrivilegeWithdrawn,
    }
}

/// A fresh P-256 key's SubjectPublicKeyInfo (RFC 5480 §2); the private key is dropped.
fn device_key() -> Result<Vec<u8>, AuthorityError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|_| AuthorityError::Internal("P-256 key generation failed".into()))?;
    let der = pair
        .public_key()
        .as_der()
        .map_err(|_| AuthorityError::Internal("P-256 public key encoding failed".into()))?;
    Ok(der.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_exact_and_independent() {
        for (n, share) in [(1u64, 0.5), (7, 0.2), (1000, 0.05), (4096, 0.2), (10_000, 1.0), (10_000, 0.0)] {
            let p = Pick::new(n, share, 12345);
            let got = (0..n).filter(|&i| p.picks(i)).count() as u64;
            assert_eq!(got, ((n as f64) * share).round() as u64, "n={n} share={share}");
        }
        let (a, b) = (Pick::new(100_000, 0.05, mix(1)), Pick::new(100_000, 0.2, mix(2)));
        let both = (0..100_000).filter(|&i| a.picks(i) && b.picks(i)).count();
        // About 0.05 × 0.2 × 100,000 = 1,000.
        assert!((700..1300).contains(&both), "{both}");
    }

    #[test]
    fn reasons_cover_the_mix() {
        assert_eq!(reason(0.0), RevocationReason::Superseded);
        assert_eq!(reason(0.5), RevocationReason::Unspecified);
        assert_eq!(reason(0.99), RevocationReason::PrivilegeWithdrawn);
        assert!((0..1000).all(|i| unit(mix(i)) < 1.0));
    }
}
