//! The tamper-evident audit log: entry shapes and the chain hash.
//!
//! Entry `n` carries `hash_n = SHA-256(hash_{n-1} || seq || at || actor || action || subject
//! || details)`, with `hash_0` 32 zero bytes, integers as 8 big-endian bytes and each text
//! as a 4-byte big-endian length and its UTF-8 bytes (so no two different entries encode
//! alike). Sequence numbers are dense (1, 2, 3…): an append takes the next number from the
//! `audit_head` row inside the act's own transaction, so a rolled-back act leaves no gap.
//! Editing, inserting or deleting a row breaks the chain at that row; deleting the newest
//! rows is caught by comparing with `audit_head`.

use devid_core::UnixTime;
use sha2::{Digest, Sha256};

/// One security-relevant act, to append to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened.
    pub at: UnixTime,
    /// Who did it: `credential:<client id>`, `device:<id>`, `cli:<user>`, `system`.
    pub actor: String,
    /// What was done, dotted (`certificate.issue`, `device.quarantine`, `auth.failure`…).
    pub action: String,
    /// What it was done to (a serial, a device id, a client id…).
    pub subject: String,
    /// More about it, a JSON object as text (evidence summary, reason…); never a secret.
    pub details: String,
}

impl AuditEvent {
    /// An event; `details` is serialized as JSON text.
    pub fn new(
        at: UnixTime,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        details: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            at,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            details: details.to_string(),
        }
    }
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position in the log (1, 2, 3…).
    pub seq: i64,
    /// The act.
    pub event: AuditEvent,
    /// The previous entry's hash, as recorded when this one was appended.
    pub prev_hash: Vec<u8>,
    /// The chain hash (see the module documentation).
    pub hash: Vec<u8>,
}

/// The chain hash of entry `seq` after an entry whose hash was `prev`.
pub fn entry_hash(prev: &[u8], seq: i64, e: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at.0.to_be_bytes());
    for text in [&e.actor, &e.action, &e.subject, &e.details] {
        h.update((text.len() as u32).to_be_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().into()
}

/// The hash before the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        let a = AuditEvent::new(UnixTime(1), "ab", "c", "d", serde_json::json!({}));
        let b = AuditEvent::new(UnixTime(1), "a", "bc", "d", serde_json::json!({}));
        assert_ne!(entry_hash(&GENESIS_HASH, 1, &a), entry_hash(&GENESIS_HASH, 1, &b));
        assert_ne!(entry_hash(&GENESIS_HASH, 1, &a), entry_hash(&GENESIS_HASH, 2, &a));
        assert_ne!(entry_hash(&GENESIS_HASH, 1, &a), entry_hash(&[1; 32], 1, &a));
    }
}
