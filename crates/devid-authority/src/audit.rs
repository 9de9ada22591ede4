//! The audit log: who did what (the [`Actor`]), the events every use case appends in its
//! own transaction, and the verification of the hash chain (`devid audit verify`).

use devid_core::{DeviceId, UnixTime};
use devid_store::audit::{GENESIS_HASH, entry_hash};
use devid_store::{AuditEvent, AuditRecord, Store};

use crate::AuthorityError;
use crate::auth::Role;

/// Who performed an act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API client, by its credential.
    Credential {
        /// The client id.
        client_id: String,
        /// Its role.
        role: Role,
        /// The enrollment groups it is limited to (`None`: all).
        groups: Option<Vec<String>>,
    },
    /// A device, enrolling or renewing.
    Device(DeviceId),
    /// Someone at the command line on a devid host (the operating-system user).
    Cli(String),
    /// devid itself (a scheduled act).
    System,
    /// An unauthenticated caller, by source address (failed authentication, enrollment).
    Anonymous(String),
}

impl Actor {
    /// The enrollment groups this actor is limited to, if it is (a scoped factory
    /// credential); everyone else is unscoped.
    pub fn group_scope(&self) -> Option<&[String]> {
        match self {
            Actor::Credential { groups: Some(g), .. } => Some(g),
            _ => None,
        }
    }

    /// Whether this actor may act on a device of `group` (`None`: no group).
    pub fn may_use_group(&self, group: Option<&str>) -> bool {
        match (self.group_scope(), group) {
            (None, _) => true,
            (Some(scope), Some(g)) => scope.iter().any(|s| s == g),
            (Some(_), None) => false,
        }
    }

    /// The command-line user (`$USER`, or `unknown`).
    pub fn cli() -> Actor {
        Actor::Cli(std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "unknown".into()))
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Credential { client_id, role, .. } => write!(f, "credential:{client_id}({role})"),
            Actor::Device(id) => write!(f, "device:{id}"),
            Actor::Cli(user) => write!(f, "cli:{user}"),
            Actor::System => f.write_str("system"),
            Actor::Anonymous(source) => write!(f, "anonymous:{source}"),
        }
    }
}

/// An audit event by `actor` at `at`.
pub fn event(
    at: UnixTime,
    actor: &Actor,
    action: &str,
    subject: impl Into<String>,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent::new(at, actor.to_string(), action, subject, details)
}

/// An entry as one JSON object (a line of `GET /v1/audit` and `devid audit export`).
pub fn to_json(r: &AuditRecord) -> serde_json::Value {
    let details: serde_json::Value = serde_json::from_str(&r.event.details)
        .unwrap_or_else(|_| serde_json::Value::String(r.event.details.clone()));
    serde_json::json!({
        "seq": r.seq,
        "at": r.event.at.to_rfc3339(),
        "actor": r.event.actor,
        "action": r.event.action,
        "subject": r.event.subject,
        "details": details,
        "prev_hash": hex::encode(&r.prev_hash),
        "hash": hex::encode(&r.hash),
    })
}

/// What `devid audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: i64,
    /// The head: the newest sequence number and its hash (hex). Record it elsewhere: a later
    /// verify with it as `expect` proves nothing up to it was rewritten since.
    pub head: (i64, String),
    /// The first bad entry and what is wrong with it; `None` when the chain is intact.
    pub first_bad: Option<(i64, String)>,
}

/// Check the whole chain, in pages: dense sequence numbers from 1, each entry's recorded
/// previous hash equal to the previous entry's hash, each hash recomputed from the entry,
/// and the head row equal to the last entry. `expect` is a (seq, hash hex) recorded earlier
/// (e.g. from a previous report or an export held by a SIEM); it must still be in the chain.
pub async fn verify(store: &dyn Store, expect: Option<(i64, &str)>) -> Result<VerifyReport, AuthorityError> {
    let mut prev = GENESIS_HASH.to_vec();
    let mut expected = 1i64;
    let mut first_bad: Option<(i64, String)> = None;
    let mut expect_seen = false;
    'pages: loop {
        let page = store.audit_entries(expected - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if e.seq != expected {
                first_bad = Some((expected, format!("entry {expected} is missing (deleted)")));
                break 'pages;
            }
            if e.prev_hash != prev {
                let bad = (e.seq - 1).max(1);
                let why = if e.seq == 1 {
                    "entry 1 does not start the chain".to_string()
                } else {
                    format!("entry {bad} was changed: entry {} recorded a different hash for it", e.seq)
                };
                first_bad = Some((bad, why));
                break 'pages;
            }
            if entry_hash(&e.prev_hash, e.seq, &e.event)[..] != e.hash[..] {
                first_bad = Some((e.seq, format!("entry {} does not match its hash (edited)", e.seq)));
                break 'pages;
            }
            if let Some((seq, hash)) = expect
                && seq == e.seq
            {
                if !hex::encode(&e.hash).eq_ignore_ascii_case(hash) {
                    first_bad = Some((
                        seq,
                        format!("entry {seq} is not the one recorded earlier (the chain was rewritten)"),
                    ));
                    break 'pages;
                }
                expect_seen = true;
            }
            prev = e.hash.clone();
            expected += 1;
        }
    }
    let last = expected - 1;
    let (head_seq, head_hash) = store.audit_head().await?;
    if first_bad.is_none() {
        if head_seq > last {
            first_bad = Some((last + 1, format!("entries {} to {head_seq} are missing (deleted)", last + 1)));
        } else if head_seq < last || head_hash != prev {
            first_bad =
                Some((last, format!("the head does not match entry {last} (entries were added or edited)")));
        } else if let Some((seq, _)) = expect
            && !expect_seen
        {
            first_bad = Some((seq, format!("entry {seq}, recorded earlier, is no longer in the chain")));
        }
    }
    Ok(VerifyReport { entries: last, head: (head_seq, hex::encode(head_hash)), first_bad })
}
