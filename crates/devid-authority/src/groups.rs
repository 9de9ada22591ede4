//! Enrollment groups: the policy a factory line defines (allowed attestation methods, trust
//! anchors, registration, how the device id is taken from the evidence, maximum lifetime,
//! enrollment rate), and the methods themselves.

use std::str::FromStr;

use devid_core::{Clock, Entropy};
use devid_kms::KeyManager;
use devid_store::{GroupRecord, Store};
use serde_json::json;

use crate::{Actor, AuthorityError};

/// An attestation method (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// A one-time enrollment token.
    Token,
    /// An IEEE 802.1AR-style IDevID: a factory certificate chain and a signature.
    X509,
    /// TPM 2.0: EK certificate, credential activation, TPM2_Certify.
    Tpm,
    /// A key derived from the group's master key (HMAC-SHA256).
    Symmetric,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 4] = [Method::Token, Method::X509, Method::Tpm, Method::Symmetric];

    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::X509 => "x509",
            Method::Tpm => "tpm",
            Method::Symmetric => "symmetric",
        }
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown method {s:?}: expected token, x509, tpm or symmetric"))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device id source of TPM groups: a hash of the EK's public key.
pub const TPM_ID_SOURCE: &str = "ek-hash";
/// The device id source of groups whose devices name themselves (token, derived key).
pub const CLAIMED_ID_SOURCE: &str = "claimed";

/// Shortest and longest certificate lifetime a group may set.
const MIN_VALIDITY_SECS: i64 = 60;
const MAX_VALIDITY_SECS: i64 = 397 * 86_400;

/// What a factory line asks for when it defines a group.
#[derive(Debug, Clone, Default)]
pub struct GroupSpec {
    /// 1–64 of `A–Z a–z 0–9 . _ -`.
    pub name: String,
    /// Allowed methods (at least one).
    pub methods: Vec<Method>,
    /// Whether devices must be registered in the group first (default true).
    pub registration_required: bool,
    /// For x509: `subject-serial` (default), `subject-cn`, `san-uri:<prefix>`, `san-dns`.
    pub id_source: Option<String>,
    /// Maximum certificate lifetime (capped by the service's own).
    pub validity_secs: Option<i64>,
    /// Trust anchors, DER (manufacturer CAs for x509, TPM vendor CAs for tpm).
    pub trust_anchors: Vec<Vec<u8>>,
    /// Manufacturer CRLs, DER.
    pub crls: Vec<Vec<u8>>,
    /// The derived-key master key; one is generated (and returned once) when the group
    /// allows `symmetric` and none is given.
    pub master_key: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Enrollments per minute for the whole group (`None`: the service default).
    pub rate_per_minute: Option<i64>,
}

/// A group as shown to operators (no key material).
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The stored record, with the sealed master key removed.
    pub record: GroupRecord,
    /// Subject and SHA-256 fingerprint of each trust anchor.
    pub anchors: Vec<(String, String)>,
    /// Whether it holds a derived-key master key.
    pub has_master_key: bool,
}

impl GroupView {
    fn of(mut record: GroupRecord) -> GroupView {
        let anchors = record
            .trust_anchors
            .iter()
            .map(|der| match devid_attest::x509::check_anchor(der) {
                Ok(a) => (a.subject, a.fingerprint_sha256),
                Err(_) => ("(unreadable)".into(), String::new()),
            })
            .collect();
        let has_master_key = record.master_key.take().is_some();
        GroupView { record, anchors, has_master_key }
    }
}

/// The group's methods, parsed.
pub(crate) fn methods_of(g: &GroupRecord) -> Vec<Method> {
    g.methods.iter().filter_map(|m| m.parse().ok()).collect()
}

/// The seal context of a group's master key.
pub(crate) fn group_seal_context(name: &str) -> String {
    format!("group:{name}")
}

/// The seal context of a device's own key.
pub(crate) fn device_seal_context(id: &str) -> String {
    format!("device:{id}")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Define (or, with `replace`, redefine) a group. Returns the view and, when a master key
/// was generated, that key (shown once; only its sealed form is stored).
#[allow(clippy::too_many_arguments)]
pub async fn put_group(
    store: &dyn Store,
    kms: &dyn KeyManager,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    spec: GroupSpec,
    replace: bool,
    actor: &Actor,
) -> Result<(GroupView, Option<zeroize::Zeroizing<Vec<u8>>>), AuthorityError> {
    let invalid = |m: String| Err(AuthorityError::Invalid(m));
    if !valid_name(&spec.name) {
        return invalid("group name must be 1-64 of A-Z a-z 0-9 . _ -".into());
    }
    let mut methods = spec.methods.clone();
    methods.sort_by_key(|m| m.as_str());
    methods.dedup();
    if methods.is_empty() {
        return invalid("a group needs at least one method".into());
    }
    let needs_anchors = methods.iter().any(|m| matches!(m, Method::X509 | Method::Tpm));
    if needs_anchors && spec.trust_anchors.is_empty() {
        return invalid("the x509 and tpm methods need at least one trust anchor".into());
    }
    if spec.trust_anchors.len() > 64 || spec.crls.len() > 64 {
        return invalid("at most 64 trust anchors and 64 CRLs".into());
    }
    for (i, der) in spec.trust_anchors.iter().enumerate() {
        devid_attest::x509::check_anchor(der).map_err(|e| {
            AuthorityError::Invalid(format!(
                "trust anchor {} is not a CA certificate ({})",
                i + 1,
                e.failure.as_str()
            ))
        })?;
    }
    let id_source = match (methods.contains(&Method::X509), &spec.id_source) {
        (true, Some(s)) => {
            devid_attest::x509::IdSource::from_str(s).map_err(|e| AuthorityError::Invalid(e.to_string()))?;
            s.clone()
        }
        (true, None) => "subject-serial".to_string(),
        (false, Some(s)) if s != TPM_ID_SOURCE && s != CLAIMED_ID_SOURCE => {
            return invalid("--id-source applies to the x509 method only".into());
        }
        (false, _) if methods.contains(&Method::Tpm) => TPM_ID_SOURCE.to_string(),
        (false, _) => CLAIMED_ID_SOURCE.to_string(),
    };
    if let Some(v) = spec.validity_secs
        && !(MIN_VALIDITY_SECS..=MAX_VALIDITY_SECS).contains(&v)
    {
        return invalid(format!("validity must be between {MIN_VALIDITY_SECS} s and 397 days"));
    }
    if let Some(r) = spec.rate_per_minute
        && !(1..=10_000_000).contains(&r)
    {
        return invalid("rate must be 1 to 10,000,000 enrollments a minute".into());
    }
    let mut generated = None;
    let master_key = if methods.contains(&Method::Symmetric) {
        let key = match spec.master_key {
            Some(k) if k.len() >= 32 && k.len() <= 64 => k,
            Some(_) => return invalid("a master key must be 32 to 64 bytes".into()),
            None => {
                let mut k = zeroize::Zeroizing::new(vec![0u8; 32]);
                rng.fill(&mut k);
                generated = Some(k.clone());
                k
            }
        };
        Some(kms.seal(&group_seal_context(&spec.name), &key)?)
    } else if spec.master_key.is_some() {
        return invalid("a master key applies to the symmetric method only".into());
    } else {
        None
    };
    let now = clock.now();
    let record = GroupRecord {
        name: spec.name.clone(),
        methods: methods.iter().map(|m| m.as_str().to_string()).collect(),
        registration: if spec.registration_required { "required" } else { "optional" }.into(),
        id_source,
        validity_secs: spec.validity_secs,
        trust_anchors: spec.trust_anchors,
        crls: spec.crls,
        master_key,
        rate_per_minute: spec.rate_per_minute,
        created_at: now,
        updated_at: now,
    };
    let audit = crate::audit::event(
        now,
        actor,
        if replace { "group.put" } else { "group.create" },
        record.name.as_str(),
        json!({
            "methods": record.methods, "registration": record.registration, "id_source": record.id_source,
            "validity_secs": record.validity_secs, "trust_anchors": record.trust_anchors.len(),
            "crls": record.crls.len(), "master_key": if generated.is_some() { "generated" } else if record.master_key.is_some() { "given" } else { "none" },
            "rate_per_minute": record.rate_per_minute,
        }),
    );
    store.put_group(&record, replace, &audit).await.map_err(|e| match e.kind() {
        devid_core::ErrorKind::Conflict => {
            AuthorityError::Conflict(format!("group {} already exists", record.name))
        }
        _ => AuthorityError::Store(e),
    })?;
    let stored = store.get_group(&record.name).await?.ok_or(AuthorityError::NotFound("group"))?;
    Ok((GroupView::of(stored), generated))
}

/// A group by name.
pub async fn get_group(store: &dyn Store, name: &str) -> Result<GroupView, AuthorityError> {
    Ok(GroupView::of(store.get_group(name).await?.ok_or(AuthorityError::NotFound("group"))?))
}

/// Every group.
pub async fn list_groups(store: &dyn Store) -> Result<Vec<GroupView>, AuthorityError> {
    Ok(store.list_groups().await?.into_iter().map(GroupView::of).collect())
}

/// Delete a group that no device belongs to.
pub async fn delete_group(
    store: &dyn Store,
    clock: &dyn Clock,
    name: &str,
    actor: &Actor,
) -> Result<(), AuthorityError> {
    let audit = crate::audit::event(clock.now(), actor, "group.delete", name, json!({}));
    store.delete_group(name, &audit).await.map_err(|e| match e.kind() {
        devid_core::ErrorKind::NotFound => AuthorityError::NotFound("group"),
        devid_core::ErrorKind::Conflict => AuthorityError::Conflict(e.to_string()),
        _ => AuthorityError::Store(e),
    })
}
