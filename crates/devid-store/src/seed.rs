//! Seeding: fill a PostgreSQL store with a large population of devices and certificates in
//! one transaction (`devid seed`), for scale tests and benchmarks.
//!
//! The rows are the ones the normal paths write, in the same tables:
//! - `devices` (what registration and enrollment leave: status, token hash, labels, batch,
//!   group);
//! - `certificates`, signed (status `issued` or `revoked`);
//! - for each revoked certificate, what `record_revocation!` writes: a `revocations` row with
//!   the certificate's issuer and notAfter copied (CRL building reads only that table), and a
//!   `revoked` change event in `cert_events`;
//! - the enrollment groups the devices belong to, and one audit entry for the whole act.
//!
//! Rows are loaded with `COPY … FROM STDIN (FORMAT binary)` (PostgreSQL's bulk path, one
//! statement per table and chunk instead of one `INSERT` per row). The caller encodes each
//! chunk with [`CopyChunk`] (pure, so that it can run on worker threads next to the signing)
//! and hands it to [`PgSeed::write`]; nothing holds more than the chunks in flight, so memory
//! stays bounded whatever the total. SQLite has no bulk path and is not a scale target:
//! [`connect`] refuses it with a message that says so.
//!
//! The binary COPY format (PostgreSQL documentation, "COPY", section "Binary Format"): an
//! 11-byte signature `PGCOPY\n\377\r\n\0`, a 32-bit flags field and a 32-bit header extension
//! length; then per tuple a 16-bit field count and, per field, a 32-bit length (-1 for NULL)
//! and the field's binary representation (`text`: its bytes; `bytea`: its bytes; `bigint`,
//! `smallint`: big-endian two's complement); then a 16-bit -1 trailer.

use devid_core::{CaId, ErrorKind, RevocationReason, UnixTime};
use sqlx::postgres::Postgres;

use crate::error::from_sqlx;
use crate::{AuditEvent, DeviceStatus, GroupRecord, PgStore, StoreError};

/// The tables a seed writes, in the order their rows must be loaded (foreign keys).
pub const SEEDED_TABLES: [&str; 4] = ["devices", "certificates", "revocations", "cert_events"];

const DEVICES_COPY: &str = "COPY devices (id, status, token_hash, token_used_at, created_at, updated_at, \
                            labels, batch_id, group_name) FROM STDIN (FORMAT binary)";
const CERTIFICATES_COPY: &str = "COPY certificates (serial, issuer_id, device_id, status, not_before, \
                                 not_after, csr_sha256, tbs_der, cert_der, created_at, updated_at) \
                                 FROM STDIN (FORMAT binary)";
const REVOCATIONS_COPY: &str =
    "COPY revocations (serial, reason, revoked_at, issuer_id, not_after) FROM STDIN (FORMAT binary)";
const EVENTS_COPY: &str = "COPY cert_events (serial, issuer_id, kind, at) FROM STDIN (FORMAT binary)";

/// Open a store for seeding: PostgreSQL only (migrations run, as with [`crate::connect`]).
/// A SQLite URL is refused with [`ErrorKind::InvalidInput`] and a message that says why.
pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PgStore::connect(url).await
    } else if url.starts_with("sqlite:") {
        Err(StoreError::new(
            ErrorKind::InvalidInput,
            "seeding needs PostgreSQL: it loads millions of rows with COPY, which SQLite does not have; \
             point --database-url (or DEVID_DATABASE_URL) at a postgres:// database"
                .to_string(),
        ))
    } else {
        Err(StoreError::new(
            ErrorKind::InvalidInput,
            "database URL must start with postgres:// (seeding needs PostgreSQL)".to_string(),
        ))
    }
}

/// A device row to seed.
#[derive(Debug, Clone, Copy)]
pub struct SeedDevice<'a> {
    /// The device id.
    pub id: &'a str,
    /// Enrolled (it has certificates) or registered (not yet).
    pub status: DeviceStatus,
    /// SHA-256 of its one-time enrollment token.
    pub token_hash: &'a [u8],
    /// When the token was redeemed (enrolled devices).
    pub token_used_at: Option<UnixTime>,
    /// When it was registered.
    pub created_at: UnixTime,
    /// When it last changed.
    pub updated_at: UnixTime,
    /// Its labels: a JSON object of string to string, as compact text.
    pub labels: Option<&'a str>,
    /// The batch that registered it.
    pub batch_id: &'a str,
    /// Its enrollment group.
    pub group: Option<&'a str>,
}

/// A signed certificate to seed, with its revocation if it is revoked.
#[derive(Debug, Clone, Copy)]
pub struct SeedCert<'a> {
    /// Lowercase hex of the serial (`Serial::to_hex`).
    pub serial_hex: &'a str,
    /// The issuing CA.
    pub issuer: &'a CaId,
    /// The device it was issued to (a seeded or existing device).
    pub device: &'a str,
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// SHA-256 of the CSR it was issued for.
    pub csr_sha256: &'a [u8],
    /// The DER TBSCertificate, as signed.
    pub tbs_der: &'a [u8],
    /// The DER certificate.
    pub cert_der: &'a [u8],
    /// When it was issued.
    pub created_at: UnixTime,
    /// Revocation time and reason, if it is revoked.
    pub revocation: Option<(UnixTime, RevocationReason)>,
}

/// What a seed wrote (or a chunk holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedCounts {
    /// Devices.
    pub devices: u64,
    /// Certificates.
    pub certificates: u64,
    /// Of those, revoked (each with its `revocations` row and `revoked` event).
    pub revoked: u64,
    /// Of those, expired at the seed's time.
    pub expired: u64,
}

impl SeedCounts {
    fn add(&mut self, o: &SeedCounts) {
        self.devices += o.devices;
        self.certificates += o.certificates;
        self.revoked += o.revoked;
        self.expired += o.expired;
    }
}

/// One table's binary COPY stream being built.
#[derive(Debug, Default)]
struct CopyBuf {
    bytes: Vec<u8>,
    rows: u64,
}

impl CopyBuf {
    /// Start a tuple of `fields` fields (writing the stream header first).
    fn tuple(&mut self, fields: i16) {
        if self.bytes.is_empty() {
            self.bytes.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
            self.bytes.extend_from_slice(&0i32.to_be_bytes());
            self.bytes.extend_from_slice(&0i32.to_be_bytes());
        }
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    /// A `text` or `bytea` field. Fields are far below 1 GiB (PostgreSQL's own limit), so
    /// the length always fits.
    fn bytes(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(&(b.len().min(i32::MAX as usize) as i32).to_be_bytes());
        self.bytes.extend_from_slice(b);
    }

    fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn int8(&mut self, v: i64) {
        self.bytes.extend_from_slice(&8i32.to_be_bytes());
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }

    fn int2(&mut self, v: i16) {
        self.bytes.extend_from_slice(&2i32.to_be_bytes());
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }

    fn null(&mut self) {
        self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// The stream with its trailer; empty when no tuple was added.
    fn finish(&mut self) {
        if !self.bytes.is_empty() {
            self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        }
    }
}

/// One chunk of seeded rows, encoded for `COPY … (FORMAT binary)`: pure, no I/O, so that
/// it is built on the worker threads that sign. A chunk must hold every device that its
/// certificates name and that is not in the store or in an earlier chunk.
#[derive(Debug, Default)]
pub struct CopyChunk {
    devices: CopyBuf,
    certificates: CopyBuf,
    revocations: CopyBuf,
    events: CopyBuf,
    counts: SeedCounts,
    /// The seed's time: certificates whose notAfter is before it count as expired.
    now: i64,
    finished: bool,
}

impl CopyChunk {
    /// An empty chunk; `now` is the seed's time (for the expired count).
    pub fn new(now: UnixTime) -> CopyChunk {
        CopyChunk { now: now.0, ..CopyChunk::default() }
    }

    /// Add a device.
    pub fn push_device(&mut self, d: &SeedDevice<'_>) {
        let b = &mut self.devices;
        b.tuple(9);
        b.text(d.id);
        b.text(crate::common::device_status_text(d.status));
        b.bytes(d.token_hash);
        match d.token_used_at {
            Some(t) => b.int8(t.0),
            None => b.null(),
        }
        b.int8(d.created_at.0);
        b.int8(d.updated_at.0);
        match d.labels {
            Some(l) => b.text(l),
            None => b.null(),
        }
        b.text(d.batch_id);
        match d.group {
            Some(g) => b.text(g),
            None => b.null(),
        }
        self.counts.devices += 1;
    }

    /// Add a certificate; a revoked one also gets its `revocations` row and its `revoked`
    /// change event (what `record_revocation!` writes).
    pub fn push_certificate(&mut self, c: &SeedCert<'_>) {
        let status = if c.revocation.is_some() { "revoked" } else { "issued" };
        let updated_at = c.revocation.map(|(at, _)| at).unwrap_or(c.created_at);
        let b = &mut self.certificates;
        b.tuple(11);
        b.text(c.serial_hex);
        b.text(c.issuer.as_str());
        b.text(c.device);
        b.text(status);
        b.int8(c.not_before.0);
        b.int8(c.not_after.0);
        b.bytes(c.csr_sha256);
        b.bytes(&crate::common::stored_tbs(c.tbs_der, Some(c.cert_der)));
        b.bytes(c.cert_der);
        b.int8(c.created_at.0);
        b.int8(updated_at.0);
        if let Some((at, reason)) = c.revocation {
            let r = &mut self.revocations;
            r.tuple(5);
            r.text(c.serial_hex);
            r.int2(i16::from(reason.code()));
            r.int8(at.0);
            r.text(c.issuer.as_str());
            r.int8(c.not_after.0);
            let e = &mut self.events;
            e.tuple(4);
            e.text(c.serial_hex);
            e.text(c.issuer.as_str());
            e.text("revoked");
            e.int8(at.0);
            self.counts.revoked += 1;
        }
        self.counts.certificates += 1;
        if c.not_after.0 < self.now {
            self.counts.expired += 1;
        }
    }

    /// What the chunk holds.
    pub fn counts(&self) -> SeedCounts {
        self.counts
    }

    /// Close the streams (the trailers); call once, after the last row.
    pub fn finish(&mut self) {
        if !self.finished {
            self.devices.finish();
            self.certificates.finish();
            self.revocations.finish();
            self.events.finish();
            self.finished = true;
        }
    }

    /// The encoded size, in bytes.
    pub fn len_bytes(&self) -> usize {
        self.devices.bytes.len()
            + self.certificates.bytes.len()
            + self.revocations.bytes.len()
            + self.events.bytes.len()
    }
}

/// A seed in progress: one open transaction on one connection. Dropping it without
/// [`PgSeed::commit`] rolls everything back.
pub struct PgSeed {
    tx: sqlx::Transaction<'static, Postgres>,
    target: String,
    counts: SeedCounts,
}

impl std::fmt::Debug for PgSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSeed").field("target", &self.target).field("counts", &self.counts).finish()
    }
}

impl PgStore {
    /// Start a seed: open its transaction and record the enrollment groups its devices will
    /// name (groups that exist already are an [`ErrorKind::Conflict`]).
    pub async fn begin_seed(&self, groups: &[GroupRecord]) -> Result<PgSeed, StoreError> {
        let (pool, target) = self.seed_access();
        let target = target.to_string();
        let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, &target))?;
        for g in groups {
            crate::common::bind_group!(sqlx::query(crate::common::insert_group!()), g)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    from_sqlx(e, &target).on_conflict(|| format!("group {} already exists", g.name))
                })?;
        }
        Ok(PgSeed { tx, target, counts: SeedCounts::default() })
    }

    /// Refresh the planner's statistics of the seeded tables (`ANALYZE`), and with `vacuum`
    /// also set their visibility maps and hint bits (`VACUUM (ANALYZE)`), so that the first
    /// readers after a bulk load neither rewrite every page nor miss index-only scans.
    pub async fn analyze_seeded(&self, vacuum: bool) -> Result<(), StoreError> {
        let (pool, target) = self.seed_access();
        let sql = if vacuum {
            "VACUUM (ANALYZE) devices, certificates, revocations, cert_events"
        } else {
            "ANALYZE devices, certificates, revocations, cert_events"
        };
        sqlx::query(sql).execute(pool).await.map_err(|e| from_sqlx(e, target))?;
        Ok(())
    }
}

impl PgSeed {
    /// Load one chunk: its devices, then its certificates, then their revocations and change
    /// events (each a binary `COPY` statement, in foreign-key order).
    pub async fn write(&mut self, chunk: &mut CopyChunk) -> Result<(), StoreError> {
        chunk.finish();
        for (sql, buf) in [
            (DEVICES_COPY, &chunk.devices),
            (CERTIFICATES_COPY, &chunk.certificates),
            (REVOCATIONS_COPY, &chunk.revocations),
            (EVENTS_COPY, &chunk.events),
        ] {
            if buf.rows == 0 {
                continue;
            }
            let conn: &mut sqlx::PgConnection = &mut self.tx;
            let mut copy = conn.copy_in_raw(sql).await.map_err(|e| from_sqlx(e, &self.target))?;
            if let Err(e) = copy.send(buf.bytes.as_slice()).await {
                let _ = copy.abort("devid seed: send failed").await;
                return Err(from_sqlx(e, &self.target));
            }
            let rows = copy.finish().await.map_err(|e| from_sqlx(e, &self.target))?;
            if rows != buf.rows {
                return Err(StoreError::internal(format!(
                    "{sql}: the server stored {rows} rows of {}",
                    buf.rows
                )));
            }
        }
        self.counts.add(&chunk.counts);
        Ok(())
    }

    /// What was written so far.
    pub fn counts(&self) -> SeedCounts {
        self.counts
    }

    /// Append the audit entry of the act and commit everything.
    pub async fn commit(self, audit: &AuditEvent) -> Result<SeedCounts, StoreError> {
        let PgSeed { mut tx, target, counts } = self;
        let me = SeedErr { target };
        // The same append as every other act: the head's row lock orders it after any
        // concurrent append, and it commits (or not) with the rows.
        crate::common::append_audit!(me, tx, audit);
        tx.commit().await.map_err(|e| me.db_err(e))?;
        Ok(counts)
    }
}

/// Gives `append_audit!` the `db_err` it expects.
struct SeedErr {
    target: String,
}

impl SeedErr {
    fn db_err(&self, e: sqlx::Error) -> StoreError {
        from_sqlx(e, &self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_streams_are_framed() {
        let issuer = CaId::new("issuing").expect("id");
        let mut c = CopyChunk::new(UnixTime(100));
        c.push_device(&SeedDevice {
            id: "d1",
            status: DeviceStatus::Enrolled,
            token_hash: &[7; 32],
            token_used_at: Some(UnixTime(5)),
            created_at: UnixTime(1),
            updated_at: UnixTime(5),
            labels: None,
            batch_id: "b",
            group: None,
        });
        let cert = SeedCert {
            serial_hex: "0a",
            issuer: &issuer,
            device: "d1",
            not_before: UnixTime(1),
            not_after: UnixTime(50),
            csr_sha256: &[1; 32],
            tbs_der: &[2; 3],
            cert_der: &[3; 4],
            created_at: UnixTime(2),
            revocation: Some((UnixTime(10), RevocationReason::Superseded)),
        };
        c.push_certificate(&cert);
        c.push_certificate(&SeedCert {
            serial_hex: "0b",
            not_after: UnixTime(200),
            revocation: None,
            ..cert
        });
        c.finish();
        c.finish();
        assert_eq!(c.counts(), SeedCounts { devices: 1, certificates: 2, revoked: 1, expired: 1 });
        for buf in [&c.devices, &c.certificates, &c.revocations, &c.events] {
            assert!(buf.bytes.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
            assert!(buf.bytes.ends_with(&[0xff, 0xff]));
        }
        assert_eq!((c.certificates.rows, c.revocations.rows, c.events.rows), (2, 1, 1));
        // The revocation tuple: 5 fields; serial "0a", reason 4 (superseded) as int2.
        let r = &c.revocations.bytes[19..];
        assert_eq!(&r[..2], &5i16.to_be_bytes());
        assert_eq!(&r[2..8], &[0, 0, 0, 2, b'0', b'a']);
        assert_eq!(&r[8..14], &[0, 0, 0, 2, 0, 4]);
        // An empty stream stays empty (no COPY is sent for it).
        let mut empty = CopyChunk::new(UnixTime(0));
        empty.finish();
        assert_eq!(empty.len_bytes(), 0);
    }
}
