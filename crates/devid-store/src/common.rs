//! What the two backends share: row shapes, row mapping, and the one body of the
//! [`Store`](crate::Store) implementation ([`impl_store!`]), stamped out once per backend.
//!
//! The SQL text is the same for both backends: SQLite accepts `$1` placeholders (and a
//! placeholder used twice), `TRUE`/`FALSE`, partial indexes and `LIMIT $n`; only a list of
//! values is bound differently per backend ([`crate::lists`]). Every value read
//! from the database is checked on the way out; a value that does not fit (an unknown status
//! text, a malformed serial or id, an unknown reason code) is an [`ErrorKind::Internal`]
//! error, never a panic.
//!
//! [`ErrorKind::Internal`]: devid_core::ErrorKind::Internal

use devid_core::{CaId, DeviceId, RevocationReason, Serial, UnixTime};

use crate::{
    CaKind, CaRecord, CertRecord, CertStatus, DeviceMeta, DeviceRecord, DeviceStatus, Page, StoreError,
};

/// The largest page a list returns; smaller and larger requests are clamped to `1..=MAX_PAGE`.
pub(crate) const MAX_PAGE: u32 = 1000;

/// The limit to use for a list request.
pub(crate) fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_PAGE)
}

/// Cut a result fetched with `LIMIT limit + 1` down to `limit` items; when there were more,
/// `next` is the key of the last item returned.
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit as usize;
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(key);
        Page { items, next }
    } else {
        Page { items, next: None }
    }
}

pub(crate) fn ca_kind_text(kind: CaKind) -> &'static str {
    match kind {
        CaKind::Root => "root",
        CaKind::Issuing => "issuing",
    }
}

pub(crate) fn device_status_text(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Registered => "registered",
        DeviceStatus::Enrolled => "enrolled",
        DeviceStatus::Quarantined => "quarantined",
    }
}

fn ca_kind_from_text(s: &str) -> Result<CaKind, StoreError> {
    match s {
        "root" => Ok(CaKind::Root),
        "issuing" => Ok(CaKind::Issuing),
        other => Err(StoreError::internal(format!("unknown CA kind {other:?} in the store"))),
    }
}

fn device_status_from_text(s: &str) -> Result<DeviceStatus, StoreError> {
    match s {
        "registered" => Ok(DeviceStatus::Registered),
        "enrolled" => Ok(DeviceStatus::Enrolled),
        "quarantined" => Ok(DeviceStatus::Quarantined),
        other => Err(StoreError::internal(format!("unknown device status {other:?} in the store"))),
    }
}

pub(crate) fn cert_status_text(s: CertStatus) -> &'static str {
    match s {
        CertStatus::Pending => "pending",
        CertStatus::Issued => "issued",
        CertStatus::Revoked => "revoked",
    }
}

/// The `LIKE` pattern that finds the label pair `k`=`v` in a labels object stored as
/// compact JSON text and wrapped as `,<members>,` (see `list_devices_filtered`): the pair
/// as serde_json writes it, between commas, with `%`, `_` and `\` escaped. Inside a JSON
/// string a quote is always escaped, so the pattern cannot match across members.
pub(crate) fn label_pattern(k: &str, v: &str) -> String {
    let pair =
        format!("{}:{}", serde_json::Value::String(k.to_string()), serde_json::Value::String(v.to_string()));
    let escaped: String = pair
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("%,{escaped},%")
}

/// `INSERT INTO challenges` of `records`, each row redeemed at `redeemed_at` (`None`: not
/// redeemed), whatever the records say; the caller appends what follows the rows.
pub(crate) fn challenge_insert<DB: crate::lists::Lists>(
    records: &[crate::ChallengeRecord],
    redeemed_at: Option<i64>,
) -> sqlx::QueryBuilder<DB> {
    use crate::lists::Column as C;
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO challenges (nonce_hash, group_name, method, state, expires_at, redeemed_at) ",
    );
    crate::lists::rows(
        &mut q,
        vec![
            C::Bytes(records.iter().map(|c| c.nonce_hash.clone()).collect()),
            C::Text(records.iter().map(|c| c.group.clone()).collect()),
            C::Text(records.iter().map(|c| c.method.clone()).collect()),
            C::OptText(records.iter().map(|c| c.state.clone()).collect()),
            C::Int(records.iter().map(|c| c.expires_at.0).collect()),
            C::OptInt(vec![redeemed_at; records.len()]),
        ],
    );
    q
}

fn cert_status_from_text(s: &str) -> Result<CertStatus, StoreError> {
    match s {
        "pending" => Ok(CertStatus::Pending),
        "issued" => Ok(CertStatus::Issued),
        "revoked" => Ok(CertStatus::Revoked),
        other => Err(StoreError::internal(format!("unknown certificate status {other:?} in the store"))),
    }
}

fn ca_id(s: String) -> Result<CaId, StoreError> {
    CaId::new(s.clone()).map_err(|e| StoreError::internal(format!("bad CA id {s:?} in the store: {e}")))
}

fn device_id(s: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(s.clone())
        .map_err(|e| StoreError::internal(format!("bad device id {s:?} in the store: {e}")))
}

fn serial(s: &str) -> Result<Serial, StoreError> {
    Serial::from_hex(s).map_err(|e| StoreError::internal(format!("bad serial {s:?} in the store: {e}")))
}

/// An `audit_log` row: seq, at, actor, action, subject, details, prev_hash, hash.
pub(crate) type AuditRow = (i64, i64, String, String, String, String, Vec<u8>, Vec<u8>);

/// Certificates (or CRLs) as stored in one column: each a u32 big-endian length and the DER.
pub(crate) fn pack_ders(ders: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ders.iter().map(|d| d.len() + 4).sum());
    for d in ders {
        out.extend_from_slice(&(d.len() as u32).to_be_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// The inverse of [`pack_ders`]; a truncated value is an internal error.
pub(crate) fn unpack_ders(mut b: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let bad = || StoreError::internal("malformed certificate list in the store".to_string());
        let len_bytes: [u8; 4] = b.get(..4).and_then(|x| x.try_into().ok()).ok_or_else(bad)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let der = b.get(4..4 + len).ok_or_else(bad)?;
        out.push(der.to_vec());
        b = &b[4 + len..];
    }
    Ok(out)
}

/// An `enrollment_groups` row.
#[derive(sqlx::FromRow)]
pub(crate) struct GroupRow {
    name: String,
    methods: String,
    registration: String,
    id_source: String,
    validity_secs: Option<i64>,
    trust_anchors: Vec<u8>,
    crls: Vec<u8>,
    master_key: Option<Vec<u8>>,
    rate_per_minute: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<GroupRow> for crate::GroupRecord {
    type Error = StoreError;
    fn try_from(r: GroupRow) -> Result<Self, StoreError> {
        Ok(crate::GroupRecord {
            name: r.name,
            methods: r.methods.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            registration: r.registration,
            id_source: r.id_source,
            validity_secs: r.validity_secs,
            trust_anchors: unpack_ders(&r.trust_anchors)?,
            crls: unpack_ders(&r.crls)?,
            master_key: r.master_key,
            rate_per_minute: r.rate_per_minute,
            created_at: UnixTime(r.created_at),
            updated_at: UnixTime(r.updated_at),
        })
    }
}

macro_rules! group_select {
    () => {
        "SELECT name, methods, registration, id_source, validity_secs, trust_anchors, crls, master_key, \
         rate_per_minute, created_at, updated_at FROM enrollment_groups"
    };
}
pub(crate) use group_select;

/// A `challenges` row: nonce_hash, group_name, method, state, expires_at, redeemed_at.
pub(crate) type ChallengeRow = (Vec<u8>, String, String, Option<String>, i64, Option<i64>);

pub(crate) fn challenge_from_row(r: ChallengeRow) -> crate::ChallengeRecord {
    crate::ChallengeRecord {
        nonce_hash: r.0,
        group: r.1,
        method: r.2,
        state: r.3,
        expires_at: UnixTime(r.4),
        redeemed_at: r.5.map(UnixTime),
    }
}

/// A `cas` row.
#[derive(sqlx::FromRow)]
pub(crate) struct CaRow {
    id: String,
    kind: String,
    parent_id: Option<String>,
    cert_der: Vec<u8>,
    key_ref: Option<String>,
    ski: Vec<u8>,
    not_before: i64,
    not_after: i64,
    active: bool,
    created_at: i64,
}

impl TryFrom<CaRow> for CaRecord {
    type Error = StoreError;
    fn try_from(r: CaRow) -> Result<Self, StoreError> {
        Ok(CaRecord {
            id: ca_id(r.id)?,
            kind: ca_kind_from_text(&r.kind)?,
            parent: r.parent_id.map(ca_id).transpose()?,
            cert_der: r.cert_der,
            key_ref: r.key_ref,
            ski: r.ski,
            not_before: UnixTime(r.not_before),
            not_after: UnixTime(r.not_after),
            active: r.active,
            created_at: UnixTime(r.created_at),
        })
    }
}

/// A `devices` row.
#[derive(sqlx::FromRow)]
pub(crate) struct DeviceRow {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) token_hash: Option<Vec<u8>>,
    pub(crate) token_used_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl TryFrom<DeviceRow> for DeviceRecord {
    type Error = StoreError;
    fn try_from(r: DeviceRow) -> Result<Self, StoreError> {
        Ok(DeviceRecord {
            id: device_id(r.id)?,
            status: device_status_from_text(&r.status)?,
            token_hash: r.token_hash,
            token_used_at: r.token_used_at.map(UnixTime),
            created_at: UnixTime(r.created_at),
            updated_at: UnixTime(r.updated_at),
        })
    }
}

/// The TBSCertificate inside a DER certificate, byte for byte: the first element of the
/// Certificate SEQUENCE (RFC 5280 §4.1.1.1). `None` if `cert_der` does not start that way.
pub(crate) fn tbs_of(cert_der: &[u8]) -> Option<&[u8]> {
    /// The header length and content length of a SEQUENCE at the start of `b` (X.690 §8.1:
    /// definite lengths, as DER requires).
    fn sequence(b: &[u8]) -> Option<(usize, usize)> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if tag != 0x30 {
            return None;
        }
        if first < 0x80 {
            return Some((2, usize::from(first)));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = rest.get(..n)?.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        Some((2 + n, len))
    }
    let (h, len) = sequence(cert_der)?;
    let inner = cert_der.get(h..h.checked_add(len)?)?;
    let (h, len) = sequence(inner)?;
    inner.get(..h.checked_add(len)?)
}

/// What a certificate row stores as `tbs_der` next to `cert_der`: nothing when the TBS can
/// be read back from the certificate itself (every certificate devid signs), so that a
/// certificate's bytes are written once (the TBS was 40 % of a row and of the
/// certificates table). [`CertRecord`]s read from the store carry the TBS either way.
pub(crate) fn stored_tbs(tbs_der: &[u8], cert_der: Option<&[u8]>) -> Vec<u8> {
    match cert_der.and_then(tbs_of) {
        Some(t) if t == tbs_der => Vec::new(),
        _ => tbs_der.to_vec(),
    }
}

/// Where a read by a list of keys runs (`keyed_read` of each store): a pooled connection
/// whose session is set up for it, or a transaction that sets it up.
pub(crate) enum KeyedRead<DB: sqlx::Database> {
    /// A connection of a pool kept for these reads.
    Session(sqlx::pool::PoolConnection<DB>),
    /// A read-only transaction with the settings.
    Tx(sqlx::Transaction<'static, DB>),
}

impl<DB: sqlx::Database> KeyedRead<DB> {
    /// The connection to run the read's statements on.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        match self {
            KeyedRead::Session(c) => c,
            KeyedRead::Tx(tx) => tx,
        }
    }

    /// The read is over: the connection goes back to its pool (a transaction commits).
    pub(crate) async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            KeyedRead::Session(_) => Ok(()),
            KeyedRead::Tx(tx) => tx.commit().await,
        }
    }
}

/// The columns of the certificates that a completion makes of its intents (`taken`, with
/// each one's DER in `der_of`), in this order: serial, issuer_id, device_id, not_before,
/// not_after, csr_sha256, tbs_der (empty when the certificate holds it, see
/// [`stored_tbs`]), cert_der, created_at, predecessor.
pub(crate) fn certificate_columns(
    taken: &[IntentRow],
    der_of: &std::collections::HashMap<&str, &[u8]>,
) -> Vec<crate::lists::Column> {
    use crate::lists::Column as C;
    vec![
        C::Text(taken.iter().map(|t| t.serial.clone()).collect()),
        C::Text(taken.iter().map(|t| t.issuer_id.clone()).collect()),
        C::Text(taken.iter().map(|t| t.device_id.clone()).collect()),
        C::Int(taken.iter().map(|t| t.not_before).collect()),
        C::Int(taken.iter().map(|t| t.not_after).collect()),
        C::Bytes(taken.iter().map(|t| t.csr_sha256.clone()).collect()),
        C::Bytes(
            taken.iter().map(|t| stored_tbs(&t.tbs_der, der_of.get(t.serial.as_str()).copied())).collect(),
        ),
        C::OptBytes(taken.iter().map(|t| der_of.get(t.serial.as_str()).map(|d| d.to_vec())).collect()),
        C::Int(taken.iter().map(|t| t.created_at).collect()),
        C::OptText(taken.iter().map(|t| t.predecessor.clone()).collect()),
    ]
}

/// A `certificates` row left-joined with its `revocations` row.
#[derive(sqlx::FromRow)]
pub(crate) struct CertRow {
    serial: String,
    issuer_id: String,
    device_id: String,
    status: String,
    not_before: i64,
    not_after: i64,
    csr_sha256: Vec<u8>,
    tbs_der: Vec<u8>,
    cert_der: Option<Vec<u8>>,
    created_at: i64,
    reason: Option<i16>,
    revoked_at: Option<i64>,
    predecessor: Option<String>,
}

impl TryFrom<CertRow> for CertRecord {
    type Error = StoreError;
    fn try_from(r: CertRow) -> Result<Self, StoreError> {
        let status = cert_status_from_text(&r.status)?;
        let revocation = match (r.revoked_at, r.reason) {
            (Some(at), Some(code)) => {
                let reason =
                    u8::try_from(code).ok().and_then(RevocationReason::from_code).ok_or_else(|| {
                        StoreError::internal(format!(
                            "unknown revocation reason {code} for serial {}",
                            r.serial
                        ))
                    })?;
                Some((UnixTime(at), reason))
            }
            (None, None) => None,
            _ => return Err(StoreError::internal(format!("half a revocation row for serial {}", r.serial))),
        };
        if (status == CertStatus::Revoked) != revocation.is_some() {
            return Err(StoreError::internal(format!(
                "certificate {} has status {} but {} revocation row",
                r.serial,
                r.status,
                if revocation.is_some() { "a" } else { "no" }
            )));
        }
        // Stored empty when the certificate holds it (see `stored_tbs`).
        let tbs_der = match &r.cert_der {
            Some(der) if r.tbs_der.is_empty() => tbs_of(der)
                .ok_or_else(|| StoreError::internal(format!("certificate {} does not parse", r.serial)))?
                .to_vec(),
            _ => r.tbs_der,
        };
        Ok(CertRecord {
            serial: serial(&r.serial)?,
            issuer: ca_id(r.issuer_id)?,
            device: device_id(r.device_id)?,
            status,
            not_before: UnixTime(r.not_before),
            not_after: UnixTime(r.not_after),
            csr_sha256: r.csr_sha256,
            tbs_der,
            cert_der: r.cert_der,
            created_at: UnixTime(r.created_at),
            revocation,
            predecessor: r.predecessor.as_deref().map(serial).transpose()?,
        })
    }
}

/// A `devices` row with its metadata, left-joined with the row of [`for_csr_select!`]
/// (the `p_` columns: all NULL when there is none).
#[derive(sqlx::FromRow)]
pub(crate) struct DeviceCsrRow {
    #[sqlx(flatten)]
    device: DeviceRow,
    labels: Option<String>,
    batch_id: Option<String>,
    group_name: Option<String>,
    method: Option<String>,
    secret: Option<Vec<u8>>,
    p_serial: Option<String>,
    p_issuer_id: Option<String>,
    p_device_id: Option<String>,
    p_status: Option<String>,
    p_not_before: Option<i64>,
    p_not_after: Option<i64>,
    p_csr_sha256: Option<Vec<u8>>,
    p_tbs_der: Option<Vec<u8>>,
    p_cert_der: Option<Vec<u8>>,
    p_created_at: Option<i64>,
    p_reason: Option<i16>,
    p_revoked_at: Option<i64>,
    p_predecessor: Option<String>,
}

/// A [`DeviceCsrRow`] with the certificate a device presented to renew (the `c_` columns).
#[derive(sqlx::FromRow)]
pub(crate) struct RenewalRow {
    #[sqlx(flatten)]
    device: DeviceCsrRow,
    c_serial: String,
    c_issuer_id: String,
    c_device_id: String,
    c_status: String,
    c_not_before: i64,
    c_not_after: i64,
    c_csr_sha256: Vec<u8>,
    c_tbs_der: Vec<u8>,
    c_cert_der: Option<Vec<u8>>,
    c_created_at: i64,
    c_reason: Option<i16>,
    c_revoked_at: Option<i64>,
    c_predecessor: Option<String>,
}

impl RenewalRow {
    pub(crate) fn split(self) -> Result<crate::RenewalContext, StoreError> {
        let current = CertRecord::try_from(CertRow {
            serial: self.c_serial,
            issuer_id: self.c_issuer_id,
            device_id: self.c_device_id,
            status: self.c_status,
            not_before: self.c_not_before,
            not_after: self.c_not_after,
            csr_sha256: self.c_csr_sha256,
            tbs_der: self.c_tbs_der,
            cert_der: self.c_cert_der,
            created_at: self.c_created_at,
            reason: self.c_reason,
            revoked_at: self.c_revoked_at,
            predecessor: self.c_predecessor,
        })?;
        let (device, meta, prior) = self.device.split()?;
        Ok(crate::RenewalContext { current, device, meta, prior })
    }
}

impl DeviceCsrRow {
    pub(crate) fn split(self) -> Result<(DeviceRecord, DeviceMeta, Option<CertRecord>), StoreError> {
        fn need<T>(v: Option<T>, column: &str, serial: &str) -> Result<T, StoreError> {
            v.ok_or_else(|| StoreError::internal(format!("certificate {serial} without {column}")))
        }
        let prior = match self.p_serial {
            None => None,
            Some(serial) => Some(CertRecord::try_from(CertRow {
                issuer_id: need(self.p_issuer_id, "issuer_id", &serial)?,
                device_id: need(self.p_device_id, "device_id", &serial)?,
                status: need(self.p_status, "status", &serial)?,
                not_before: need(self.p_not_before, "not_before", &serial)?,
                not_after: need(self.p_not_after, "not_after", &serial)?,
                csr_sha256: need(self.p_csr_sha256, "csr_sha256", &serial)?,
                tbs_der: need(self.p_tbs_der, "tbs_der", &serial)?,
                cert_der: self.p_cert_der,
                created_at: need(self.p_created_at, "created_at", &serial)?,
                reason: self.p_reason,
                revoked_at: self.p_revoked_at,
                predecessor: self.p_predecessor,
                serial,
            })?),
        };
        let meta = DeviceMeta {
            labels: self.labels,
            batch_id: self.batch_id,
            group: self.group_name,
            method: self.method,
            secret: self.secret,
        };
        Ok((DeviceRecord::try_from(self.device)?, meta, prior))
    }
}

/// An `issuance_intents` row, as step 6 takes it (`DELETE … RETURNING`).
#[derive(sqlx::FromRow)]
pub(crate) struct IntentRow {
    pub(crate) serial: String,
    pub(crate) issuer_id: String,
    pub(crate) device_id: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) csr_sha256: Vec<u8>,
    pub(crate) tbs_der: Vec<u8>,
    pub(crate) created_at: i64,
    pub(crate) predecessor: Option<String>,
}

impl IntentRow {
    /// The certificate this intent becomes once signed: issued, with `cert_der`.
    pub(crate) fn issued(self, cert_der: Vec<u8>) -> Result<CertRecord, StoreError> {
        CertRecord::try_from(CertRow {
            serial: self.serial,
            issuer_id: self.issuer_id,
            device_id: self.device_id,
            status: "issued".into(),
            not_before: self.not_before,
            not_after: self.not_after,
            csr_sha256: self.csr_sha256,
            tbs_der: self.tbs_der,
            cert_der: Some(cert_der),
            created_at: self.created_at,
            reason: None,
            revoked_at: None,
            predecessor: self.predecessor,
        })
    }
}

/// Convert fetched rows, failing on the first bad one.
pub(crate) fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

/// A change-log row.
pub(crate) fn event_from_row(
    row: (i64, String, String, String, i64),
) -> Result<crate::CertEvent, StoreError> {
    let (seq, serial, issuer, kind, at) = row;
    let kind = match kind.as_str() {
        "issued" => crate::CertEventKind::Issued,
        "revoked" => crate::CertEventKind::Revoked,
        other => return Err(StoreError::internal(format!("unknown event kind {other:?} in the store"))),
    };
    Ok(crate::CertEvent {
        seq,
        serial: serial_checked(&serial)?,
        issuer: ca_id(issuer)?,
        kind,
        at: UnixTime(at),
    })
}

/// An OCSP responder row.
pub(crate) fn responder_from_row(
    row: (String, String, Vec<u8>, String, i64, i64, i64),
) -> Result<crate::OcspResponderRecord, StoreError> {
    let (id, issuer, cert_der, key_ref, not_before, not_after, created_at) = row;
    Ok(crate::OcspResponderRecord {
        id,
        issuer: ca_id(issuer)?,
        cert_der,
        key_ref,
        not_before: UnixTime(not_before),
        not_after: UnixTime(not_after),
        created_at: UnixTime(created_at),
    })
}

/// A CRL row.
pub(crate) fn crl_from_row(
    row: (String, i64, i64, i64, i64, Vec<u8>),
) -> Result<crate::CrlRecord, StoreError> {
    let (issuer, shard, number, this_update, next_update, der) = row;
    Ok(crate::CrlRecord {
        issuer: ca_id(issuer)?,
        shard: shard_checked(shard)?,
        crl_number: number.max(0) as u64,
        this_update: UnixTime(this_update),
        next_update: UnixTime(next_update),
        der,
    })
}

pub(crate) fn device_id_checked(s: String) -> Result<DeviceId, StoreError> {
    device_id(s)
}

pub(crate) fn ca_id_checked(s: String) -> Result<CaId, StoreError> {
    ca_id(s)
}

pub(crate) fn shard_checked(shard: i64) -> Result<u16, StoreError> {
    u16::try_from(shard).map_err(|_| StoreError::internal(format!("bad CRL shard {shard} in the store")))
}

fn serial_checked(hex: &str) -> Result<Serial, StoreError> {
    Serial::from_hex(hex).map_err(|e| StoreError::internal(format!("bad serial {hex:?} in the store: {e}")))
}

/// A credential row.
pub(crate) fn credential_from_row(row: CredentialRow) -> crate::CredentialRecord {
    let (client_id, secret_hash, role, name, created_at, revoked_at, groups) = row;
    crate::CredentialRecord {
        client_id,
        secret_hash,
        role,
        name,
        created_at: UnixTime(created_at),
        revoked_at: revoked_at.map(UnixTime),
        groups: groups.map(|g| g.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()),
    }
}

/// A `credentials` row.
pub(crate) type CredentialRow = (String, String, String, String, i64, Option<i64>, Option<String>);

/// A CRL to store (the newest of its issuer and shard, if its number is higher).
pub(crate) struct NewCrl<'a> {
    pub(crate) issuer: &'a CaId,
    pub(crate) shard: u16,
    pub(crate) number: i64,
    pub(crate) this_update: i64,
    pub(crate) next_update: i64,
    pub(crate) der: &'a [u8],
}

// --- SQL, shared by both backends. `concat!` needs literals, hence the macros. ---

macro_rules! ca_select {
    () => {
        "SELECT id, kind, parent_id, cert_der, key_ref, ski, not_before, not_after, active, created_at \
         FROM cas"
    };
}
pub(crate) use ca_select;

macro_rules! device_select {
    () => {
        "SELECT id, status, token_hash, token_used_at, created_at, updated_at FROM devices"
    };
}
pub(crate) use device_select;

macro_rules! cert_select {
    () => {
        "SELECT c.serial AS serial, c.issuer_id AS issuer_id, c.device_id AS device_id, \
         c.status AS status, c.not_before AS not_before, c.not_after AS not_after, \
         c.csr_sha256 AS csr_sha256, c.tbs_der AS tbs_der, c.cert_der AS cert_der, \
         c.created_at AS created_at, r.reason AS reason, r.revoked_at AS revoked_at, \
         c.predecessor AS predecessor \
         FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial"
    };
}
pub(crate) use cert_select;

/// The newest of the certificates and the intents of device `$1` for the CSR hash `$2`, as
/// a [`CertRow`] (at most one row). With arguments, the device (and the CSR hash) are those
/// SQL expressions instead of `$1` (and `$2`).
macro_rules! for_csr_select {
    () => {
        $crate::common::for_csr_select!("$1")
    };
    ($device:literal) => {
        $crate::common::for_csr_select!($device, "$2")
    };
    ($device:literal, $csr:literal) => {
        concat!(
            "SELECT * FROM (",
            $crate::common::cert_select!(),
            " WHERE c.device_id = ",
            $device,
            " AND c.csr_sha256 = ",
            $csr,
            " ORDER BY c.created_at DESC, c.serial DESC LIMIT 1) AS a \
             UNION ALL SELECT * FROM (",
            $crate::common::intent_select!(),
            " WHERE c.device_id = ",
            $device,
            " AND c.csr_sha256 = ",
            $csr,
            " ORDER BY c.created_at DESC, c.serial DESC LIMIT 1) AS b \
             ORDER BY created_at DESC, serial DESC LIMIT 1"
        )
    };
}
pub(crate) use for_csr_select;

/// The columns of a [`DeviceCsrRow`]: device `d` and the [`for_csr_select!`] row `p`.
macro_rules! device_csr_columns {
    () => {
        "d.id AS id, d.status AS status, d.token_hash AS token_hash, \
         d.token_used_at AS token_used_at, d.created_at AS created_at, d.updated_at AS updated_at, \
         d.labels AS labels, d.batch_id AS batch_id, d.group_name AS group_name, d.method AS method, \
         d.secret AS secret, p.serial AS p_serial, p.issuer_id AS p_issuer_id, \
         p.device_id AS p_device_id, p.status AS p_status, p.not_before AS p_not_before, \
         p.not_after AS p_not_after, p.csr_sha256 AS p_csr_sha256, p.tbs_der AS p_tbs_der, \
         p.cert_der AS p_cert_der, p.created_at AS p_created_at, p.reason AS p_reason, \
         p.revoked_at AS p_revoked_at, p.predecessor AS p_predecessor"
    };
}
pub(crate) use device_csr_columns;

/// An issuance intent (step 4) as a [`CertRow`]: a pending certificate, never revoked, with
/// no DER yet. Aliased `c` like [`cert_select!`], so the same filters apply to both.
macro_rules! intent_select {
    () => {
        "SELECT c.serial AS serial, c.issuer_id AS issuer_id, c.device_id AS device_id, \
         'pending' AS status, c.not_before AS not_before, c.not_after AS not_after, \
         c.csr_sha256 AS csr_sha256, c.tbs_der AS tbs_der, CAST(NULL AS BYTEA) AS cert_der, \
         c.created_at AS created_at, CAST(NULL AS SMALLINT) AS reason, \
         CAST(NULL AS BIGINT) AS revoked_at, c.predecessor AS predecessor \
         FROM issuance_intents c"
    };
}
pub(crate) use intent_select;

/// Insert a device row with its metadata, followed by `$tail` (e.g. an `ON CONFLICT`
/// clause). Binds: `$1`–`$6` id, status, token_hash, token_used_at, created_at, updated_at;
/// `$7`–`$11` labels, batch_id, group_name, method, secret.
macro_rules! insert_device {
    ($tail:literal) => {
        concat!(
            "INSERT INTO devices (id, status, token_hash, token_used_at, created_at, updated_at, \
             labels, batch_id, group_name, method, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            $tail
        )
    };
}
pub(crate) use insert_device;

/// Bind a device row and its metadata to an [`insert_device!`] statement, in its order.
macro_rules! bind_device {
    ($q:expr, $device:expr, $meta:expr) => {
        $q.bind($device.id.as_str())
            .bind($crate::common::device_status_text($device.status))
            .bind($device.token_hash.as_deref())
            .bind($device.token_used_at.map(|t| t.0))
            .bind($device.created_at.0)
            .bind($device.updated_at.0)
            .bind($meta.labels.as_deref())
            .bind($meta.batch_id.as_deref())
            .bind($meta.group.as_deref())
            .bind($meta.method.as_deref())
            .bind($meta.secret.as_deref())
    };
}
pub(crate) use bind_device;

/// Insert an enrollment group. Binds `$1`–`$11` in column order.
macro_rules! insert_group {
    () => {
        "INSERT INTO enrollment_groups (name, methods, registration, id_source, validity_secs, \
         trust_anchors, crls, master_key, rate_per_minute, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    };
}
pub(crate) use insert_group;

/// Bind a group to an [`insert_group!`] statement, in its order.
macro_rules! bind_group {
    ($q:expr, $g:expr) => {
        $q.bind($g.name.as_str())
            .bind($g.methods.join(","))
            .bind($g.registration.as_str())
            .bind($g.id_source.as_str())
            .bind($g.validity_secs)
            .bind($crate::common::pack_ders(&$g.trust_anchors))
            .bind($crate::common::pack_ders(&$g.crls))
            .bind($g.master_key.as_deref())
            .bind($g.rate_per_minute)
            .bind($g.created_at.0)
            .bind($g.updated_at.0)
    };
}
pub(crate) use bind_group;

/// Record a revocation: the `revocations` row (with the certificate's issuer and notAfter
/// copied for CRL building) and a `revoked` change event. Binds: `$1` serial, `$2` reason
/// code, `$3` time. Two statements, run in the caller's transaction.
macro_rules! insert_revocation {
    () => {
        "INSERT INTO revocations (serial, reason, revoked_at, issuer_id, not_after) \
         SELECT serial, $2, $3, issuer_id, not_after FROM certificates WHERE serial = $1"
    };
}
pub(crate) use insert_revocation;

/// A change event for a certificate. Binds: `$1` serial, `$2` kind (`issued`, `revoked`),
/// `$3` time.
macro_rules! insert_event {
    () => {
        "INSERT INTO cert_events (serial, issuer_id, kind, at) SELECT serial, issuer_id, $2, $3 \
         FROM certificates WHERE serial = $1"
    };
}
pub(crate) use insert_event;

/// Record a revocation inside an open transaction: the `revocations` row (with the
/// certificate's issuer and notAfter copied, for CRL building) and the `revoked` change
/// event that other nodes poll. One place, so neither can be written without the other.
macro_rules! record_revocation {
    ($self:expr, $tx:ident, $serial_hex:expr, $reason_code:expr, $at:expr) => {{
        sqlx::query($crate::common::insert_revocation!())
            .bind($serial_hex)
            .bind($reason_code)
            .bind($at)
            .execute(&mut *$tx)
            .await
            .map_err(|e| $self.db_err(e))?;
        sqlx::query($crate::common::insert_event!())
            .bind($serial_hex)
            .bind("revoked")
            .bind($at)
            .execute(&mut *$tx)
            .await
            .map_err(|e| $self.db_err(e))?;
    }};
}
pub(crate) use record_revocation;

/// Append one audit entry inside an open transaction `$tx` ([`append_audit_batch!`]).
macro_rules! append_audit {
    ($self:expr, $tx:ident, $ev:expr) => {{
        let ev: &$crate::AuditEvent = $ev;
        $crate::common::append_audit_batch!($self, $tx, &[ev]);
    }};
}
pub(crate) use append_audit;

/// Insert devices inside an open transaction `$tx`, each unless a device with its id
/// exists (`ON CONFLICT DO NOTHING`); the ids must be distinct. Evaluates to the set of ids
/// this statement created.
macro_rules! insert_absent_devices {
    ($self:expr, $tx:ident, $devices:expr) => {{
        let devices: &[(&$crate::DeviceRecord, &$crate::DeviceMeta)] = $devices;
        if devices.is_empty() {
            std::collections::HashSet::<String>::new()
        } else {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO devices (id, status, token_hash, token_used_at, created_at, updated_at, \
                 labels, batch_id, group_name, method, secret) ",
            );
            use $crate::lists::Column as C;
            $crate::lists::rows(
                &mut q,
                vec![
                    C::Text(devices.iter().map(|(d, _)| d.id.as_str().to_string()).collect()),
                    C::Text(
                        devices
                            .iter()
                            .map(|(d, _)| $crate::common::device_status_text(d.status).to_string())
                            .collect(),
                    ),
                    C::OptBytes(devices.iter().map(|(d, _)| d.token_hash.clone()).collect()),
                    C::OptInt(devices.iter().map(|(d, _)| d.token_used_at.map(|t| t.0)).collect()),
                    C::Int(devices.iter().map(|(d, _)| d.created_at.0).collect()),
                    C::Int(devices.iter().map(|(d, _)| d.updated_at.0).collect()),
                    C::OptText(devices.iter().map(|(_, m)| m.labels.clone()).collect()),
                    C::OptText(devices.iter().map(|(_, m)| m.batch_id.clone()).collect()),
                    C::OptText(devices.iter().map(|(_, m)| m.group.clone()).collect()),
                    C::OptText(devices.iter().map(|(_, m)| m.method.clone()).collect()),
                    C::OptBytes(devices.iter().map(|(_, m)| m.secret.clone()).collect()),
                ],
            );
            q.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let created: Vec<(String,)> = q
                .build_query_as()
                .fetch_all(&mut *$tx)
                .await
                .map_err(|e| $crate::error::device_insert_error(e, |e| $self.db_err(e)))?;
            created.into_iter().map(|(id,)| id).collect::<std::collections::HashSet<String>>()
        }
    }};
}
pub(crate) use insert_absent_devices;

/// Append audit entries inside an open transaction `$tx`, in order: take the next sequence
/// numbers and the previous hash from `audit_head` (its row lock orders concurrent
/// appends), chain the entries ([`crate::audit::entry_hash`]) and move the head once.
/// Rolled back with the act. [`append_audit!`] is the one-entry case.
macro_rules! append_audit_batch {
    ($self:expr, $tx:ident, $events:expr) => {{
        let events: &[&$crate::AuditEvent] = $events;
        if !events.is_empty() {
            let n = events.len() as i64;
            let (last, prev): (i64, Vec<u8>) =
                sqlx::query_as("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
                    .bind(n)
                    .fetch_one(&mut *$tx)
                    .await
                    .map_err(|e| $self.db_err(e))?;
            $crate::common::write_audit_chain!($self, $tx, events, last, prev);
        }
    }};
}
pub(crate) use append_audit_batch;

/// The intents of a batch whose items redeem a token or nothing and register no device
/// (token enrollments and renewals), inside the open transaction `$tx`, in **one**
/// statement (PostgreSQL's writable `WITH`): the conditional update that redeems each token
/// and enrolls its device (as in the general path of `record_intents`), and the insert of
/// the intents whose token was redeemed (or that redeem nothing) and whose serial no
/// certificate has. One round trip less per batch than a statement each inside the
/// transaction, with the same outcome: an item whose token was not redeemed is refused in
/// `$refused`, and an admitted intent whose serial is taken fails the whole batch (the
/// caller's transaction is then rolled back, redemptions included).
///
/// A token is redeemed only for the very (device, token hash) pair an item names; a pair
/// named again later in the batch is refused without reaching the database.
macro_rules! record_token_intents {
    ($self:expr, $tx:ident, $items:expr, $at:expr, $refused:ident) => {{
        let items: &[$crate::Intent<'_>] = $items;
        let refused_token = |device: &devid_core::DeviceId| {
            format!("enrollment token already used (or device {device} is quarantined or holds another token)")
        };
        let mut firsts = std::collections::HashSet::new();
        let mut sent: Vec<(usize, &$crate::Intent<'_>)> = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            if let $crate::Redeem::Token(h) = it.redeem
                && !firsts.insert((it.pending.device.as_str(), h))
            {
                $refused[i] = Some(refused_token(&it.pending.device));
                continue;
            }
            sent.push((i, it));
        }
        let token_of = |it: &$crate::Intent<'_>| match it.redeem {
            $crate::Redeem::Token(h) => Some(h.to_vec()),
            _ => None,
        };
        use $crate::lists::Column as C;
        let mut q = sqlx::QueryBuilder::new(
            "WITH k (serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, created_at, \
             predecessor, token_hash) AS (",
        );
        $crate::lists::rows(
            &mut q,
            vec![
                C::Text(sent.iter().map(|(_, it)| it.pending.serial.to_hex()).collect()),
                C::Text(sent.iter().map(|(_, it)| it.pending.issuer.as_str().to_string()).collect()),
                C::Text(sent.iter().map(|(_, it)| it.pending.device.as_str().to_string()).collect()),
                C::Int(sent.iter().map(|(_, it)| it.pending.not_before.0).collect()),
                C::Int(sent.iter().map(|(_, it)| it.pending.not_after.0).collect()),
                C::Bytes(sent.iter().map(|(_, it)| it.pending.csr_sha256.clone()).collect()),
                C::Bytes(sent.iter().map(|(_, it)| it.pending.tbs_der.clone()).collect()),
                C::Int(sent.iter().map(|(_, it)| it.pending.created_at.0).collect()),
                C::OptText(sent.iter().map(|(_, it)| it.pending.predecessor.as_ref().map(|s| s.to_hex())).collect()),
                C::OptBytes(sent.iter().map(|(_, it)| token_of(it)).collect()),
            ],
        );
        // Each item's device is found by its token hash (unique index), and must have the
        // item's id. Forms that also named the devices by `id = ANY` were planned from that
        // list, with a nested loop over all the items for each device: quadratic in the
        // batch (3.2 ms a call at about 37 items a call in a token enrollment run, against
        // 1.4 ms for this form; pg_stat_statements and EXPLAIN ANALYZE). The intents are tested
        // against the redemptions by `IN` an uncorrelated subquery, which PostgreSQL hashes
        // once; the serial test is a scalar subquery per item on the certificates' primary
        // key, as in the general path.
        q.push("), t AS (UPDATE devices SET status = 'enrolled', token_used_at = ").push_bind($at);
        q.push(", updated_at = ").push_bind($at);
        q.push(
            " FROM k WHERE devices.token_hash = k.token_hash AND devices.id = k.device_id \
             AND devices.token_used_at IS NULL AND devices.status <> 'quarantined' \
             RETURNING devices.id, devices.token_hash), \
             w AS (INSERT INTO issuance_intents (serial, issuer_id, device_id, not_before, not_after, csr_sha256, \
             tbs_der, created_at, predecessor) \
             SELECT k.serial, k.issuer_id, k.device_id, k.not_before, k.not_after, k.csr_sha256, k.tbs_der, \
             k.created_at, k.predecessor FROM k \
             WHERE (k.token_hash IS NULL OR (k.device_id, k.token_hash) IN (SELECT id, token_hash FROM t)) \
             AND (SELECT 1 FROM certificates c WHERE c.serial = k.serial) IS NULL RETURNING serial) \
             SELECT t.id, t.token_hash, NULL AS serial FROM t UNION ALL SELECT NULL, NULL, w.serial FROM w",
        );
        let rows: Vec<(Option<String>, Option<Vec<u8>>, Option<String>)> =
            q.build_query_as().fetch_all(&mut *$tx).await.map_err(|e| $self.db_err(e))?;
        let mut won: std::collections::HashSet<(String, Vec<u8>)> = std::collections::HashSet::new();
        let mut recorded: std::collections::HashSet<String> = std::collections::HashSet::new();
        for row in rows {
            match row {
                (Some(id), Some(hash), None) => {
                    won.insert((id, hash));
                }
                (None, None, Some(serial)) => {
                    recorded.insert(serial);
                }
                _ => return Err($crate::StoreError::internal("unexpected row from the intents' statement")),
            }
        }
        for (i, it) in &sent {
            if let $crate::Redeem::Token(h) = it.redeem {
                if !won.contains(&(it.pending.device.as_str().to_string(), h.to_vec())) {
                    $refused[*i] = Some(refused_token(&it.pending.device));
                    continue;
                }
            }
            let hex = it.pending.serial.to_hex();
            if !recorded.contains(&hex) {
                return Err($crate::StoreError::conflict(format!("serial {hex} already exists")));
            }
        }
    }};
}
pub(crate) use record_token_intents;

/// The second half of [`append_audit_batch!`], for a caller that has already moved
/// `audit_head.seq` on by `$events.len()` (to `$last`, the last entry's number) and read the
/// head's hash `$prev`, holding its row lock: chain the entries and write them, and the
/// new head hash.
macro_rules! write_audit_chain {
    ($self:expr, $tx:ident, $events:expr, $last:expr, $prev:expr) => {{
        let events: &[&$crate::AuditEvent] = $events;
        let mut prev: Vec<u8> = $prev;
        if !events.is_empty() {
            let first = $last - events.len() as i64 + 1;
            // The chain: each entry's sequence number, previous hash and own hash.
            let (mut seqs, mut prevs, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
            for (i, ev) in events.iter().enumerate() {
                let seq = first + i as i64;
                let hash = $crate::audit::entry_hash(&prev, seq, ev).to_vec();
                seqs.push(seq);
                prevs.push(std::mem::replace(&mut prev, hash.clone()));
                hashes.push(hash);
            }
            use $crate::lists::Column as C;
            const INSERT: &str =
                "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) ";
            let mut q = sqlx::QueryBuilder::new("");
            // Where the backend allows, the entries and the new head go in one statement:
            // one round trip less while the head's row lock is held.
            let one_statement = $crate::lists::writable_cte(&q);
            if one_statement {
                q.push("WITH a AS (");
            }
            q.push(INSERT);
            $crate::lists::rows(
                &mut q,
                vec![
                    C::Int(seqs),
                    C::Int(events.iter().map(|ev| ev.at.0).collect()),
                    C::Text(events.iter().map(|ev| ev.actor.clone()).collect()),
                    C::Text(events.iter().map(|ev| ev.action.clone()).collect()),
                    C::Text(events.iter().map(|ev| ev.subject.clone()).collect()),
                    C::Text(events.iter().map(|ev| ev.details.clone()).collect()),
                    C::Bytes(prevs),
                    C::Bytes(hashes),
                ],
            );
            if one_statement {
                q.push(") UPDATE audit_head SET hash = ").push_bind(prev).push(" WHERE id = 1");
                q.build().execute(&mut *$tx).await.map_err(|e| $self.db_err(e))?;
            } else {
                q.build().execute(&mut *$tx).await.map_err(|e| $self.db_err(e))?;
                sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
                    .bind(prev.as_slice())
                    .execute(&mut *$tx)
                    .await
                    .map_err(|e| $self.db_err(e))?;
            }
        }
    }};
}
pub(crate) use write_audit_chain;

/// Revoke every issued certificate of a device inside an open transaction `$tx`; evaluates
/// to the serials revoked. The status update comes first (`RETURNING`), then exactly those
/// rows get their revocation entry, so a certificate issued concurrently is either revoked
/// with its entry or not touched.
macro_rules! revoke_device_rows {
    ($self:ident, $tx:ident, $device:ident, $reason:ident, $at:ident) => {{
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE certificates SET status = 'revoked', updated_at = $2 \
             WHERE device_id = $1 AND status = 'issued' RETURNING serial",
        )
        .bind($device.as_str())
        .bind($at.0)
        .fetch_all(&mut *$tx)
        .await
        .map_err(|e| $self.db_err(e))?;
        let mut serials = Vec::with_capacity(rows.len());
        for (hex,) in rows {
            $crate::common::record_revocation!($self, $tx, hex.as_str(), i16::from($reason.code()), $at.0);
            serials.push(devid_core::Serial::from_hex(&hex).map_err(|e| {
                $crate::StoreError::internal(format!("bad serial {hex:?} in the store: {e}"))
            })?);
        }
        serials
    }};
}
pub(crate) use revoke_device_rows;

/// The body of `impl Store for $store`, the same for both backends.
///
/// The store type must have these inherent items:
/// - `fn reader(&self) -> &sqlx::Pool<DB>`: the pool for single-statement reads;
/// - `fn issuance_reader(&self) -> &sqlx::Pool<DB>`: the same for the single-row forms of
///   the group commit's step-1 reads (PostgreSQL: beside the batched forms);
/// - `async fn begin(&self) -> Result<sqlx::Transaction<'static, DB>, StoreError>`: a write
///   transaction;
/// - `async fn begin_relaxed(&self)`: the same, for a transaction whose loss in a crash is
///   harmless (PostgreSQL: its commit does not wait for the WAL flush);
/// - `async fn begin_keyed(&self)`: a write transaction for statements that look rows up
///   by a list of keys (`crate::lists`; PostgreSQL: planned for index lookups);
/// - `async fn begin_keyed_relaxed(&self)`: both of the above;
/// - `async fn keyed_read(&self) -> Result<KeyedRead<DB>, StoreError>`: where a read by a
///   list of keys runs (PostgreSQL: planned for index lookups);
/// - `fn db_err(&self, e: sqlx::Error) -> StoreError`: [`crate::error::from_sqlx`] with the
///   store's target description;
/// - `async fn settings_advice(&self) -> Result<Vec<String>, StoreError>`: see
///   [`crate::Store::advisories`];
/// - `fn intents_deleted(&self, n: u64)`, `fn challenges_deleted(&self, n: u64)`: `n` rows of
///   `issuance_intents` (of `challenges`) were deleted and committed (PostgreSQL: counted
///   towards vacuuming the table).
macro_rules! impl_store {
    ($store:ty, $backend:literal) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), $crate::StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await.map_err(|e| self.db_err(e))?;
                Ok(())
            }

            async fn advisories(&self) -> Result<Vec<String>, $crate::StoreError> {
                self.settings_advice().await
            }

            // --- CAs ---

            async fn put_ca_hierarchy(
                &self,
                root: &$crate::CaRecord,
                issuing: &$crate::CaRecord,
                replace: bool,
                audit: &$crate::AuditEvent,
            ) -> Result<(), $crate::StoreError> {
                if root.kind != $crate::CaKind::Root || issuing.kind != $crate::CaKind::Issuing {
                    return Err($crate::StoreError::new(
                        devid_core::ErrorKind::InvalidInput,
                        "put_ca_hierarchy takes a root CA and then an issuing CA".to_string(),
                    ));
                }
                let mut tx = self.begin().await?;
                if replace {
                    sqlx::query("UPDATE cas SET active = FALSE WHERE active")
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                } else {
                    let any: Option<String> = sqlx::query_scalar("SELECT id FROM cas LIMIT 1")
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                    if let Some(id) = any {
                        return Err($crate::StoreError::conflict(format!(
                            "a CA already exists ({id}); replace the hierarchy explicitly"
                        )));
                    }
                }
                // Old rows are kept (their certificates reference them), so a new hierarchy
                // needs new ids (e.g. `root-<8 hex>`): an id that exists is a Conflict, and
                // the whole transaction (including the deactivation) rolls back. The new pair
                // is stored active whatever the records' `active` field says.
                for ca in [root, issuing] {
                    sqlx::query(
                        "INSERT INTO cas (id, kind, parent_id, cert_der, key_ref, ski, not_before, not_after, \
                         active, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9)",
                    )
                    .bind(ca.id.as_str())
                    .bind($crate::common::ca_kind_text(ca.kind))
                    .bind(ca.parent.as_ref().map(|p| p.as_str()))
                    .bind(ca.cert_der.as_slice())
                    .bind(ca.key_ref.as_deref())
                    .bind(ca.ski.as_slice())
                    .bind(ca.not_before.0)
                    .bind(ca.not_after.0)
                    .bind(ca.created_at.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        self.db_err(e)
                            .on_conflict(|| format!("a CA with id {} or an active {:?} CA already exists", ca.id, ca.kind))
                    })?;
                }
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn get_ca(&self, id: &devid_core::CaId) -> Result<Option<$crate::CaRecord>, $crate::StoreError> {
                let row: Option<$crate::common::CaRow> =
                    sqlx::query_as(concat!($crate::common::ca_select!(), " WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                row.map($crate::CaRecord::try_from).transpose()
            }

            async fn active_ca(
                &self,
                kind: $crate::CaKind,
            ) -> Result<Option<$crate::CaRecord>, $crate::StoreError> {
                let row: Option<$crate::common::CaRow> =
                    sqlx::query_as(concat!($crate::common::ca_select!(), " WHERE kind = $1 AND active"))
                        .bind($crate::common::ca_kind_text(kind))
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                row.map($crate::CaRecord::try_from).transpose()
            }

            async fn list_cas(&self) -> Result<Vec<$crate::CaRecord>, $crate::StoreError> {
                // Oldest first; within one hierarchy (same created_at) the root first.
                let rows: Vec<$crate::common::CaRow> = sqlx::query_as(concat!(
                    $crate::common::ca_select!(),
                    " ORDER BY created_at, CASE kind WHEN 'root' THEN 0 ELSE 1 END, id"
                ))
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                $crate::common::convert(rows)
            }

            // --- devices ---

            async fn insert_device(
                &self,
                device: &$crate::DeviceRecord,
                meta: &$crate::DeviceMeta,
                audit: &$crate::AuditEvent,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                $crate::common::bind_device!(sqlx::query($crate::common::insert_device!("")), device, meta)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    $crate::error::device_insert_error(e, |e| {
                        self.db_err(e)
                            .on_conflict(|| format!("device {} (or its token hash) already exists", device.id))
                    })
                })?;
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn ensure_device(
                &self,
                device: &$crate::DeviceRecord,
                meta: &$crate::DeviceMeta,
                audit: &$crate::AuditEvent,
            ) -> Result<bool, $crate::StoreError> {
                let created = self.ensure_devices(&[(device, meta, audit)]).await?;
                Ok(created.first().copied().unwrap_or(false))
            }

            async fn ensure_devices(
                &self,
                items: &[(&$crate::DeviceRecord, &$crate::DeviceMeta, &$crate::AuditEvent)],
            ) -> Result<Vec<bool>, $crate::StoreError> {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                let mut firsts = std::collections::HashSet::new();
                let unique: Vec<&(&$crate::DeviceRecord, &$crate::DeviceMeta, &$crate::AuditEvent)> =
                    items.iter().filter(|(d, _, _)| firsts.insert(d.id.as_str())).collect();
                // See the trait: the enrollment's own intent makes this durable.
                let mut tx = self.begin_relaxed().await?;
                let pairs: Vec<(&$crate::DeviceRecord, &$crate::DeviceMeta)> =
                    unique.iter().map(|(d, m, _)| (*d, *m)).collect();
                let mut created = $crate::common::insert_absent_devices!(self, tx, &pairs);
                let flags: Vec<bool> = items.iter().map(|(d, _, _)| created.remove(d.id.as_str())).collect();
                let events: Vec<&$crate::AuditEvent> =
                    items.iter().zip(&flags).filter(|(_, c)| **c).map(|((_, _, a), _)| *a).collect();
                $crate::common::append_audit_batch!(self, tx, &events);
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(flags)
            }

            async fn get_device(
                &self,
                id: &devid_core::DeviceId,
            ) -> Result<Option<$crate::DeviceRecord>, $crate::StoreError> {
                let row: Option<$crate::common::DeviceRow> =
                    sqlx::query_as(concat!($crate::common::device_select!(), " WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                row.map($crate::DeviceRecord::try_from).transpose()
            }

            async fn device_by_token_hash(
                &self,
                token_hash: &[u8],
            ) -> Result<Option<$crate::DeviceRecord>, $crate::StoreError> {
                let row: Option<$crate::common::DeviceRow> =
                    sqlx::query_as(concat!($crate::common::device_select!(), " WHERE token_hash = $1"))
                        .bind(token_hash)
                        .fetch_optional(self.issuance_reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                row.map($crate::DeviceRecord::try_from).transpose()
            }

            async fn devices_by_token_hashes(
                &self,
                token_hashes: &[Vec<u8>],
            ) -> Result<Vec<$crate::DeviceRecord>, $crate::StoreError> {
                let mut out = Vec::with_capacity(token_hashes.len());
                if token_hashes.is_empty() {
                    return Ok(out);
                }
                // A read by a list of keys: planned for index lookups.
                let mut reader = self.keyed_read().await?;
                for chunk in token_hashes.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::new(concat!($crate::common::device_select!(), " WHERE "));
                    $crate::lists::any_bytes(&mut q, "token_hash", chunk.to_vec());
                    let rows: Vec<$crate::common::DeviceRow> =
                        q.build_query_as().fetch_all(reader.conn()).await.map_err(|e| self.db_err(e))?;
                    for row in rows {
                        out.push($crate::DeviceRecord::try_from(row)?);
                    }
                }
                reader.finish().await.map_err(|e| self.db_err(e))?;
                Ok(out)
            }

            async fn list_devices_filtered(
                &self,
                filter: &$crate::DeviceFilter,
                cursor: Option<&str>,
                limit: u32,
            ) -> Result<$crate::Page<$crate::DeviceRecord>, $crate::StoreError> {
                let limit = $crate::common::clamp_limit(limit);
                // Every id sorts after the empty string, so no cursor is the cursor "".
                let mut q = sqlx::QueryBuilder::new(concat!($crate::common::device_select!(), " WHERE id > "));
                q.push_bind(cursor.unwrap_or("").to_string());
                if let Some(g) = &filter.group {
                    q.push(" AND group_name = ").push_bind(g.clone());
                }
                if let Some(st) = filter.status {
                    q.push(" AND status = ").push_bind($crate::common::device_status_text(st));
                }
                if let Some((k, v)) = &filter.label {
                    // Labels are stored as compact JSON text; a pair is matched as it is
                    // written there, anchored on the delimiters around it (on PostgreSQL the
                    // trigram index of migration 0008 serves this very expression).
                    q.push(" AND (',' || substr(labels, 2, length(labels) - 2) || ',') LIKE ")
                        .push_bind($crate::common::label_pattern(k, v))
                        .push(" ESCAPE '\\'");
                }
                q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
                let rows: Vec<$crate::common::DeviceRow> =
                    q.build_query_as().fetch_all(self.reader()).await.map_err(|e| self.db_err(e))?;
                let items = $crate::common::convert(rows)?;
                Ok($crate::common::page(items, limit, |d: &$crate::DeviceRecord| d.id.as_str().to_string()))
            }

            async fn insert_device_batch(
                &self,
                batch_id: &str,
                devices: &[$crate::BatchDevice],
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<Vec<devid_core::DeviceId>, $crate::StoreError> {
                if devices.is_empty() {
                    return Ok(Vec::new());
                }
                let mut created = Vec::new();
                let mut tx = self.begin().await?;
                for chunk in devices.chunks($crate::BATCH_STATEMENT_ROWS) {
                    // One multi-row INSERT per chunk; RETURNING names the rows it inserted
                    // (PostgreSQL, and SQLite since 3.35), i.e. not the existing ids.
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO devices \
                         (id, status, token_hash, token_used_at, created_at, updated_at, labels, batch_id, \
                         group_name, method) ",
                    );
                    q.push_values(chunk, |mut b, d| {
                        b.push_bind(d.id.as_str())
                            .push("'registered'")
                            .push_bind(d.token_hash.as_deref())
                            .push("NULL")
                            .push_bind(at.0)
                            .push_bind(at.0)
                            .push_bind(d.labels.as_deref())
                            .push_bind(batch_id)
                            .push_bind(d.group.as_deref())
                            .push_bind(d.method.as_deref());
                    });
                    q.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                    let rows: Vec<(String,)> = q
                        .build_query_as()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| $crate::error::device_insert_error(e, |e| self.db_err(e)))?;
                    for (id,) in rows {
                        created.push($crate::common::device_id_checked(id)?);
                    }
                }
                if !created.is_empty() {
                    $crate::common::append_audit!(self, tx, audit);
                }
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(created)
            }

            async fn device_for_csr(
                &self,
                id: &devid_core::DeviceId,
                csr_sha256: &[u8],
            ) -> Result<
                Option<($crate::DeviceRecord, $crate::DeviceMeta, Option<$crate::CertRecord>)>,
                $crate::StoreError,
            > {
                // The device left-joined with the answer of `certificate_for_csr` (a subquery
                // that does not depend on the device row: it is evaluated once).
                let row: Option<$crate::common::DeviceCsrRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::common::device_csr_columns!(),
                    " FROM devices d LEFT JOIN (",
                    $crate::common::for_csr_select!(),
                    ") AS p ON 1 = 1 WHERE d.id = $1"
                ))
                .bind(id.as_str())
                .bind(csr_sha256)
                .fetch_optional(self.issuance_reader())
                .await
                .map_err(|e| self.db_err(e))?;
                row.map($crate::common::DeviceCsrRow::split).transpose()
            }

            async fn renewal_context(
                &self,
                serial: &devid_core::Serial,
                csr_sha256: &[u8],
            ) -> Result<Option<$crate::RenewalContext>, $crate::StoreError> {
                // The certificate by its primary key, its device by the device's, and the
                // answer of `certificate_for_csr` for that device (its id taken from the
                // certificate row by a scalar subquery on the same primary key).
                let row: Option<$crate::common::RenewalRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::common::device_csr_columns!(),
                    ", cur.serial AS c_serial, cur.issuer_id AS c_issuer_id, cur.device_id AS c_device_id, \
                     cur.status AS c_status, cur.not_before AS c_not_before, cur.not_after AS c_not_after, \
                     cur.csr_sha256 AS c_csr_sha256, cur.tbs_der AS c_tbs_der, cur.cert_der AS c_cert_der, \
                     cur.created_at AS c_created_at, cur.reason AS c_reason, cur.revoked_at AS c_revoked_at, \
                     cur.predecessor AS c_predecessor FROM (",
                    $crate::common::cert_select!(),
                    " WHERE c.serial = $1) AS cur JOIN devices d ON d.id = cur.device_id LEFT JOIN (",
                    $crate::common::for_csr_select!("(SELECT device_id FROM certificates WHERE serial = $1)"),
                    ") AS p ON 1 = 1"
                ))
                .bind(serial.to_hex())
                .bind(csr_sha256)
                .fetch_optional(self.issuance_reader())
                .await
                .map_err(|e| self.db_err(e))?;
                row.map($crate::common::RenewalRow::split).transpose()
            }

            async fn device_for_csrs(
                &self,
                keys: &[(devid_core::DeviceId, Vec<u8>)],
            ) -> Result<Vec<Option<$crate::DeviceForCsr>>, $crate::StoreError> {
                // Per backend (`device_for_csrs_batch` in postgres.rs and sqlite.rs).
                self.device_for_csrs_batch(keys).await
            }

            async fn renewal_contexts(
                &self,
                keys: &[(devid_core::Serial, Vec<u8>)],
            ) -> Result<Vec<Option<$crate::RenewalContext>>, $crate::StoreError> {
                // Per backend (`renewal_contexts_batch` in postgres.rs and sqlite.rs).
                self.renewal_contexts_batch(keys).await
            }

            async fn device_meta(
                &self,
                id: &devid_core::DeviceId,
            ) -> Result<Option<$crate::DeviceMeta>, $crate::StoreError> {
                type Row = (Option<String>, Option<String>, Option<String>, Option<String>, Option<Vec<u8>>);
                let row: Option<Row> = sqlx::query_as(
                    "SELECT labels, batch_id, group_name, method, secret FROM devices WHERE id = $1",
                )
                .bind(id.as_str())
                .fetch_optional(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(row.map(|(labels, batch_id, group, method, secret)| $crate::DeviceMeta {
                    labels,
                    batch_id,
                    group,
                    method,
                    secret,
                }))
            }

            // --- the issuance cycle ---

            async fn record_intent(
                &self,
                pending: &$crate::PendingCert,
                redeem: $crate::Redeem<'_>,
            ) -> Result<(), $crate::StoreError> {
                let mut answers = self
                    .record_intents(&[$crate::Intent::new(pending, redeem)], true)
                    .await
                    .map_err(|e| e.on_conflict(|| format!("serial {} already exists", pending.serial)))?;
                answers.pop().unwrap_or_else(|| Err($crate::StoreError::internal("no answer for the intent")))
            }

            async fn complete_issuance(
                &self,
                serial: &devid_core::Serial,
                cert_der: &[u8],
                now: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<$crate::CertRecord, $crate::StoreError> {
                let mut answers =
                    self.complete_issuances(&[$crate::Completion { serial, cert_der, audit }], now).await?;
                answers.pop().unwrap_or_else(|| Err($crate::StoreError::internal("no answer for the certificate")))
            }

            async fn record_intents(
                &self,
                items: &[$crate::Intent<'_>],
                wait_for_flush: bool,
            ) -> Result<Vec<Result<(), $crate::StoreError>>, $crate::StoreError> {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                // The batch's time: the latest intent's (the store has no clock of its own).
                let at = items.iter().map(|it| it.pending.created_at.0).max().unwrap_or_default();
                let mut refused: Vec<Option<String>> = vec![None; items.len()];
                // See the trait: unless asked to wait, the completion's commit makes the
                // intent durable.
                let mut tx =
                    if wait_for_flush { self.begin_keyed().await? } else { self.begin_keyed_relaxed().await? };
                // A batch of token enrollments (and renewals), where the backend allows:
                // the redemptions and the intents in one statement.
                let tokens_only = items
                    .iter()
                    .all(|it| it.register.is_none() && matches!(it.redeem, $crate::Redeem::Token(_) | $crate::Redeem::Nothing));
                if tokens_only
                    && items.iter().any(|it| matches!(it.redeem, $crate::Redeem::Token(_)))
                    && $crate::lists::writable_cte_in(&tx)
                {
                    $crate::common::record_token_intents!(self, tx, items, at, refused);
                    tx.commit().await.map_err(|e| self.db_err(e))?;
                    return Ok(refused
                        .into_iter()
                        .map(|r| match r {
                            None => Ok(()),
                            Some(why) => Err($crate::StoreError::conflict(why)),
                        })
                        .collect());
                }
                // Nonces: one conditional UPDATE (single use: concurrent redeemers serialize
                // on the challenge row and all but the first match no row); a nonce named
                // twice in the batch is redeemed by its first item only.
                let nonces: Vec<&[u8]> = items
                    .iter()
                    .filter_map(|it| if let $crate::Redeem::Nonce(h) = it.redeem { Some(h) } else { None })
                    .collect();
                if !nonces.is_empty() {
                    let mut q = sqlx::QueryBuilder::new("UPDATE challenges SET redeemed_at = ");
                    // The expiry is tested in the SET and on the rows returned, not in the
                    // WHERE: so the primary key is the one index that can serve this
                    // statement, whatever the plan. An expired challenge keeps its NULL
                    // (a refused item writes nothing) and is refused below.
                    q.push("CASE WHEN expires_at > ").push_bind(at).push(" THEN ").push_bind(at);
                    q.push(" ELSE redeemed_at END WHERE redeemed_at IS NULL AND ");
                    $crate::lists::any_bytes(&mut q, "nonce_hash", nonces.iter().map(|h| h.to_vec()).collect());
                    q.push(" RETURNING nonce_hash, expires_at");
                    let done: Vec<(Vec<u8>, i64)> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    let mut won: std::collections::HashSet<Vec<u8>> =
                        done.into_iter().filter(|(_, expires)| *expires > at).map(|(h, _)| h).collect();
                    for (i, it) in items.iter().enumerate() {
                        if let $crate::Redeem::Nonce(h) = it.redeem
                            && !won.remove(h)
                        {
                            refused[i] = Some("enrollment challenge already used or expired".to_string());
                        }
                    }
                }
                // Stateless challenges: the nonce's hash goes into `challenges`, redeemed; its
                // primary key makes it single use (a concurrent redeemer waits for this
                // transaction, then inserts nothing and is refused). An expired nonce, or
                // one named again in the batch, is refused without a write.
                let sealed: Vec<(usize, $crate::SealedNonce<'_>)> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, it)| if let $crate::Redeem::Sealed(n) = it.redeem { Some((i, n)) } else { None })
                    .collect();
                if !sealed.is_empty() {
                    const USED: &str = "enrollment challenge already used or expired";
                    let mut firsts = std::collections::HashSet::new();
                    let mut fresh = Vec::new();
                    for (i, n) in &sealed {
                        if n.expires_at.0 <= at || !firsts.insert(n.hash) {
                            refused[*i] = Some(USED.to_string());
                        } else {
                            fresh.push(*n);
                        }
                    }
                    if !fresh.is_empty() {
                        let records: Vec<$crate::ChallengeRecord> = fresh
                            .iter()
                            .map(|n| $crate::ChallengeRecord {
                                nonce_hash: n.hash.to_vec(),
                                group: n.group.to_string(),
                                method: n.method.to_string(),
                                state: None,
                                expires_at: n.expires_at,
                                redeemed_at: None,
                            })
                            .collect();
                        let mut q = $crate::common::challenge_insert(&records, Some(at));
                        q.push(" ON CONFLICT (nonce_hash) DO NOTHING RETURNING nonce_hash");
                        let won: Vec<(Vec<u8>,)> =
                            q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                        let won: std::collections::HashSet<Vec<u8>> = won.into_iter().map(|(h,)| h).collect();
                        for (i, n) in &sealed {
                            if refused[*i].is_none() && !won.contains(n.hash) {
                                refused[*i] = Some(USED.to_string());
                            }
                        }
                    }
                }
                // Tokens: a row is redeemed only if its id and its token hash are both named,
                // i.e. some item presented that device's own token; the conditional update is
                // the single-use check, as for nonces. The device becomes enrolled in the same
                // update, since its certificate's intent is recorded in this transaction (if
                // step 6 never comes, a retry with the token completes that certificate), and
                // step 6 then finds it enrolled and leaves the row alone. `status` is indexed,
                // so every update of a device row puts a new entry in each index of `devices`:
                // a second update in step 6 cost about 40 µs of PostgreSQL's time per token
                // enrollment (pg_stat_statements).
                let tokens: Vec<(&str, &[u8])> = items
                    .iter()
                    .filter_map(|it| {
                        if let $crate::Redeem::Token(h) = it.redeem { Some((it.pending.device.as_str(), h)) } else { None }
                    })
                    .collect();
                if !tokens.is_empty() {
                    let mut q = sqlx::QueryBuilder::new("UPDATE devices SET status = 'enrolled', token_used_at = ");
                    q.push_bind(at).push(", updated_at = ").push_bind(at);
                    q.push(" WHERE token_used_at IS NULL AND status <> 'quarantined' AND ");
                    $crate::lists::any_text(&mut q, "id", tokens.iter().map(|(id, _)| id.to_string()).collect());
                    q.push(" AND ");
                    $crate::lists::any_bytes(&mut q, "token_hash", tokens.iter().map(|(_, h)| h.to_vec()).collect());
                    q.push(" RETURNING id, token_hash");
                    let done: Vec<(String, Vec<u8>)> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    let mut won: std::collections::HashSet<(String, Vec<u8>)> = done.into_iter().collect();
                    for (i, it) in items.iter().enumerate() {
                        if let $crate::Redeem::Token(h) = it.redeem
                            && !won.remove(&(it.pending.device.as_str().to_string(), h.to_vec()))
                        {
                            refused[i] = Some(format!(
                                "enrollment token already used (or device {} is quarantined or holds another token)",
                                it.pending.device
                            ));
                        }
                    }
                }
                let admitted: Vec<&$crate::Intent<'_>> =
                    items.iter().zip(&refused).filter_map(|(it, r)| if r.is_none() { Some(it) } else { None }).collect();
                // Devices seen for the first time, inserted enrolled (as a token's redemption
                // enrolls its device: the intent recorded with it is that device's
                // certificate), so that step 6 finds them enrolled and leaves their rows
                // alone. This was a transaction of its own before the intent's (and a
                // second update of the device row in step 6).
                let mut firsts = std::collections::HashSet::new();
                let new_devices: Vec<($crate::DeviceRecord, &$crate::DeviceMeta, &$crate::AuditEvent)> = admitted
                    .iter()
                    .filter_map(|it| it.register.map(|(m, a)| (it.pending, m, a)))
                    .filter(|(p, _, _)| firsts.insert(p.device.as_str()))
                    .map(|(p, m, a)| {
                        let d = $crate::DeviceRecord {
                            id: p.device.clone(),
                            status: $crate::DeviceStatus::Enrolled,
                            token_hash: None,
                            token_used_at: None,
                            created_at: p.created_at,
                            updated_at: p.created_at,
                        };
                        (d, m, a)
                    })
                    .collect();
                let pairs: Vec<(&$crate::DeviceRecord, &$crate::DeviceMeta)> =
                    new_devices.iter().map(|(d, m, _)| (d, *m)).collect();
                let created = $crate::common::insert_absent_devices!(self, tx, &pairs);
                let registered: Vec<&$crate::AuditEvent> =
                    new_devices.iter().filter(|(d, _, _)| created.contains(d.id.as_str())).map(|(_, _, a)| *a).collect();
                let admitted: Vec<&$crate::PendingCert> = admitted.iter().map(|it| it.pending).collect();
                if !admitted.is_empty() {
                    // A serial is unique across intents and certificates: the primary key
                    // covers the intents, the `WHERE` the certificates, in the same
                    // statement (it was a query of its own: one round trip more per batch).
                    // A collision fails the batch, whose items the group commit then
                    // retries one by one. The test is a scalar subquery, run per item on
                    // the primary key, not `NOT EXISTS`, which PostgreSQL turns into an
                    // anti-join: its generic plan, made while `certificates` was nearly
                    // empty, read the whole primary key index on every batch (1,380
                    // buffers a call for 106 items, and 5.5 to 6.6 times the time of the
                    // insert and the probe it replaced: pg_stat_statements, token
                    // enrollment at about 4,200/s).
                    let hexes: Vec<String> = admitted.iter().map(|p| p.serial.to_hex()).collect();
                    let mut q = sqlx::QueryBuilder::new(
                        "WITH k (serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, \
                         created_at, predecessor) AS (",
                    );
                    use $crate::lists::Column as C;
                    $crate::lists::rows(
                        &mut q,
                        vec![
                            C::Text(hexes.clone()),
                            C::Text(admitted.iter().map(|p| p.issuer.as_str().to_string()).collect()),
                            C::Text(admitted.iter().map(|p| p.device.as_str().to_string()).collect()),
                            C::Int(admitted.iter().map(|p| p.not_before.0).collect()),
                            C::Int(admitted.iter().map(|p| p.not_after.0).collect()),
                            C::Bytes(admitted.iter().map(|p| p.csr_sha256.clone()).collect()),
                            C::Bytes(admitted.iter().map(|p| p.tbs_der.clone()).collect()),
                            C::Int(admitted.iter().map(|p| p.created_at.0).collect()),
                            C::OptText(admitted.iter().map(|p| p.predecessor.as_ref().map(|s| s.to_hex())).collect()),
                        ],
                    );
                    q.push(
                        ") INSERT INTO issuance_intents (serial, issuer_id, device_id, not_before, not_after, \
                         csr_sha256, tbs_der, created_at, predecessor) SELECT * FROM k \
                         WHERE (SELECT 1 FROM certificates c WHERE c.serial = k.serial) IS NULL RETURNING serial",
                    );
                    let recorded: Vec<(String,)> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    if recorded.len() < hexes.len() {
                        let recorded: std::collections::HashSet<String> = recorded.into_iter().map(|(h,)| h).collect();
                        let taken = hexes.iter().find(|h| !recorded.contains(*h)).cloned().unwrap_or_default();
                        return Err($crate::StoreError::conflict(format!("serial {taken} already exists")));
                    }
                }
                // Last before the commit, as in step 6: the audit head's row lock orders
                // every appender. A batch that registers no device does not take it.
                $crate::common::append_audit_batch!(self, tx, &registered);
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(refused
                    .into_iter()
                    .map(|r| match r {
                        None => Ok(()),
                        Some(why) => Err($crate::StoreError::conflict(why)),
                    })
                    .collect())
            }

            async fn complete_issuances(
                &self,
                items: &[$crate::Completion<'_>],
                now: devid_core::UnixTime,
            ) -> Result<Vec<Result<$crate::CertRecord, $crate::StoreError>>, $crate::StoreError> {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                let hexes: Vec<String> = items.iter().map(|c| c.serial.to_hex()).collect();
                // Each serial once: a serial named twice keeps its first DER.
                let mut der_of: std::collections::HashMap<&str, &[u8]> = std::collections::HashMap::new();
                for (c, h) in items.iter().zip(&hexes) {
                    der_of.entry(h.as_str()).or_insert(c.cert_der);
                }
                let mut tx = self.begin_keyed().await?;
                // The intents leave and their certificates arrive, once each. Deleting first
                // makes concurrent completers of one serial serialize on its row: the later
                // one takes nothing and answers with what the first stored.
                let mut q = sqlx::QueryBuilder::new("DELETE FROM issuance_intents WHERE ");
                $crate::lists::any_text(&mut q, "serial", der_of.keys().map(|h| h.to_string()).collect());
                q.push(
                    " RETURNING serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, \
                     created_at, predecessor",
                );
                let taken: Vec<$crate::common::IntentRow> =
                    q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                let deleted = taken.len() as u64;
                let mut stored: std::collections::HashMap<String, $crate::CertRecord> = std::collections::HashMap::new();
                let mut forbidden = std::collections::HashSet::new();
                let mut issued_here = std::collections::HashSet::new();
                // Where the backend allows (PostgreSQL), the reads and writes below go in one
                // statement that also takes the audit head's numbers, where the general path
                // has four (five when a device becomes enrolled): with the `BEGIN`, the
                // `DELETE`, the audit entries and the `COMMIT`, five round trips a batch
                // instead of eight. `Some((n, last seq, head hash))`: `n` numbers taken.
                let mut head: Option<(i64, i64, Vec<u8>)> = None;
                if !taken.is_empty() && $crate::lists::writable_cte_in(&tx) {
                    let mut q = sqlx::QueryBuilder::new(
                        "WITH k (serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, cert_der, \
                         created_at, predecessor) AS (",
                    );
                    $crate::lists::rows(&mut q, $crate::common::certificate_columns(&taken, &der_of));
                    // The devices as they are now: this statement starts after the DELETE
                    // above returned, so it sees a quarantine that committed while the
                    // DELETE waited for its lock on an intent (see `quarantine_device`). A
                    // quarantined device's certificate is stored revoked, with its
                    // revocation and its `revoked` event; the others are issued, with their
                    // `issued` event; a registered device becomes enrolled (the status is
                    // tested in the SET, see below); and the audit head's numbers are taken
                    // for the issued ones, only if there are any.
                    //
                    // Each item's device status is a scalar subquery on the devices' primary
                    // key, read once into `d` (a join of two `WITH` results may be planned as
                    // a nested loop over them, quadratic in the batch, as the first form of
                    // `record_token_intents!` was).
                    q.push(
                        "), d AS (SELECT k.*, (SELECT status FROM devices WHERE id = k.device_id) AS device_status \
                         FROM k), \
                         c AS (INSERT INTO certificates (serial, issuer_id, device_id, status, not_before, \
                         not_after, csr_sha256, tbs_der, cert_der, created_at, updated_at, predecessor) \
                         SELECT serial, issuer_id, device_id, \
                         CASE WHEN device_status = 'quarantined' THEN 'revoked' ELSE 'issued' END, not_before, \
                         not_after, csr_sha256, tbs_der, cert_der, created_at, ",
                    );
                    q.push_bind(now.0);
                    q.push(
                        ", predecessor FROM d \
                         RETURNING serial, issuer_id, status, not_after), \
                         r AS (INSERT INTO revocations (serial, reason, revoked_at, issuer_id, not_after) \
                         SELECT serial, ",
                    );
                    q.push_bind(i16::from(devid_core::RevocationReason::PrivilegeWithdrawn.code()));
                    q.push(", ").push_bind(now.0);
                    q.push(
                        ", issuer_id, not_after FROM c WHERE status = 'revoked'), \
                         e AS (INSERT INTO cert_events (serial, issuer_id, kind, at) SELECT serial, issuer_id, status, ",
                    );
                    q.push_bind(now.0);
                    q.push(
                        " FROM c), \
                         u AS (UPDATE devices SET status = CASE WHEN status = 'registered' THEN 'enrolled' ELSE status END, \
                         updated_at = CASE WHEN status = 'registered' THEN ",
                    );
                    q.push_bind(now.0);
                    q.push(
                        " ELSE updated_at END \
                         WHERE id = ANY(ARRAY(SELECT device_id FROM d WHERE device_status = 'registered'))), \
                         i AS (SELECT count(*) AS issued FROM c WHERE status = 'issued'), \
                         h AS (UPDATE audit_head SET seq = seq + (SELECT issued FROM i) \
                         WHERE id = 1 AND (SELECT issued FROM i) > 0 RETURNING seq, hash) \
                         SELECT c.serial, c.status, (SELECT issued FROM i), h.seq, h.hash FROM c LEFT JOIN h ON true",
                    );
                    let rows: Vec<(String, String, i64, Option<i64>, Option<Vec<u8>>)> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    if rows.len() != taken.len() {
                        return Err($crate::StoreError::internal("the completion stored another number of certificates"));
                    }
                    for (serial, status, n, seq, hash) in rows {
                        if status == "revoked" {
                            forbidden.insert(serial);
                        }
                        if let (Some(seq), Some(hash), None) = (seq, hash, &head) {
                            head = Some((n, seq, hash));
                        }
                    }
                } else if !taken.is_empty() {
                    // The devices as they are now. One quarantined between step 4 and now
                    // must not leave with a valid certificate: it is stored revoked, in
                    // this transaction, and refused. A registered one becomes enrolled.
                    let ids: std::collections::BTreeSet<&str> = taken.iter().map(|t| t.device_id.as_str()).collect();
                    let mut q = sqlx::QueryBuilder::new("SELECT id, status FROM devices WHERE ");
                    $crate::lists::any_text(&mut q, "id", ids.into_iter().map(str::to_string).collect());
                    let devices: Vec<(String, String)> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    let quarantined: std::collections::HashSet<&str> =
                        devices.iter().filter(|(_, st)| st == "quarantined").map(|(id, _)| id.as_str()).collect();
                    let registered: Vec<&str> =
                        devices.iter().filter(|(_, st)| st == "registered").map(|(id, _)| id.as_str()).collect();
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO certificates (serial, issuer_id, device_id, status, not_before, not_after, \
                         csr_sha256, tbs_der, cert_der, created_at, updated_at, predecessor) ",
                    );
                    use $crate::lists::Column as C;
                    let mut columns = $crate::common::certificate_columns(&taken, &der_of);
                    let status = taken
                        .iter()
                        .map(|t| if quarantined.contains(t.device_id.as_str()) { "revoked" } else { "issued" }.to_string())
                        .collect();
                    columns.insert(3, C::Text(status));
                    columns.insert(10, C::Int(vec![now.0; taken.len()]));
                    $crate::lists::rows(&mut q, columns);
                    q.build().execute(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    for t in taken.iter().filter(|t| quarantined.contains(t.device_id.as_str())) {
                        $crate::common::record_revocation!(self, tx, t.serial.as_str(), i16::from(devid_core::RevocationReason::PrivilegeWithdrawn.code()), now.0);
                        forbidden.insert(t.serial.clone());
                    }
                    let issued: Vec<&$crate::common::IntentRow> =
                        taken.iter().filter(|t| !quarantined.contains(t.device_id.as_str())).collect();
                    if !issued.is_empty() {
                        let mut q = sqlx::QueryBuilder::new("INSERT INTO cert_events (serial, issuer_id, kind, at) ");
                        $crate::lists::rows(
                            &mut q,
                            vec![
                                C::Text(issued.iter().map(|t| t.serial.clone()).collect()),
                                C::Text(issued.iter().map(|t| t.issuer_id.clone()).collect()),
                                C::Text(vec!["issued".to_string(); issued.len()]),
                                C::Int(vec![now.0; issued.len()]),
                            ],
                        );
                        q.build().execute(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    }
                    // A registered device is not quarantined: its certificates were all
                    // issued just now, and it becomes enrolled. The status is tested in the
                    // SET, not the WHERE, so that the primary key is the one index that can
                    // serve the statement: with `status = 'registered'` in the WHERE, a big
                    // store whose statistics say few devices are registered (5,000,000
                    // enrolled, then a new batch of 20,000) was planned on the status index
                    // and scanned every registered device per batch (6.3 ms a call). A
                    // device that changed meanwhile keeps its status.
                    if !registered.is_empty() {
                        let mut q = sqlx::QueryBuilder::new(
                            "UPDATE devices SET status = CASE WHEN status = 'registered' THEN 'enrolled' ELSE status END, \
                             updated_at = CASE WHEN status = 'registered' THEN ",
                        );
                        q.push_bind(now.0).push(" ELSE updated_at END WHERE ");
                        $crate::lists::any_text(&mut q, "id", registered.into_iter().map(str::to_string).collect());
                        q.build().execute(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    }
                }
                // The certificates this call issued (not those stored revoked).
                for t in taken {
                    if !forbidden.contains(&t.serial) {
                        let der = der_of.get(t.serial.as_str()).map(|d| d.to_vec()).unwrap_or_default();
                        let rec = t.issued(der)?;
                        issued_here.insert(rec.serial.to_hex());
                        stored.insert(rec.serial.to_hex(), rec);
                    }
                }
                // Serials that had no intent: completed before (by a concurrent caller or
                // an earlier attempt), or unknown. Answer with whatever is stored.
                let missing: Vec<&str> =
                    der_of.keys().copied().filter(|h| !stored.contains_key(*h) && !forbidden.contains(*h)).collect();
                if !missing.is_empty() {
                    let mut q = sqlx::QueryBuilder::new(concat!($crate::common::cert_select!(), " WHERE "));
                    $crate::lists::any_text(&mut q, "c.serial", missing.iter().map(|h| h.to_string()).collect());
                    let rows: Vec<$crate::common::CertRow> =
                        q.build_query_as().fetch_all(&mut *tx).await.map_err(|e| self.db_err(e))?;
                    for row in rows {
                        let rec = $crate::CertRecord::try_from(row)?;
                        stored.insert(rec.serial.to_hex(), rec);
                    }
                }
                // The audit entries of the certificates this call issued, in item order.
                let mut audited = std::collections::HashSet::new();
                let events: Vec<&$crate::AuditEvent> = items
                    .iter()
                    .zip(&hexes)
                    .filter(|(_, h)| issued_here.contains(h.as_str()) && audited.insert(h.as_str()))
                    .map(|(c, _)| c.audit)
                    .collect();
                // Last before the commit: the audit head's row lock orders every appender,
                // so it is held for as short a time as possible.
                match head {
                    Some((n, last, prev)) => {
                        if usize::try_from(n).ok() != Some(events.len()) {
                            return Err($crate::StoreError::internal("audit entries and their numbers differ"));
                        }
                        $crate::common::write_audit_chain!(self, tx, &events, last, prev);
                    }
                    None => $crate::common::append_audit_batch!(self, tx, &events),
                }
                tx.commit().await.map_err(|e| self.db_err(e))?;
                self.intents_deleted(deleted);
                Ok(hexes
                    .iter()
                    .map(|h| {
                        if forbidden.contains(h) {
                            return Err($crate::StoreError::new(
                                devid_core::ErrorKind::Forbidden,
                                format!("device was quarantined while certificate {h} was being issued; it is revoked"),
                            ));
                        }
                        stored
                            .get(h)
                            .cloned()
                            .ok_or_else(|| $crate::StoreError::not_found(format!("no certificate with serial {h}")))
                    })
                    .collect())
            }

            async fn certificates_by_serial(
                &self,
                serials: &[devid_core::Serial],
            ) -> Result<Vec<$crate::CertRecord>, $crate::StoreError> {
                let mut out = Vec::with_capacity(serials.len());
                // A read by a list of keys: planned for index lookups.
                let mut reader = self.keyed_read().await?;
                for chunk in serials.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::new(concat!($crate::common::cert_select!(), " WHERE "));
                    $crate::lists::any_text(&mut q, "c.serial", chunk.iter().map(|s| s.to_hex()).collect());
                    let rows: Vec<$crate::common::CertRow> =
                        q.build_query_as().fetch_all(reader.conn()).await.map_err(|e| self.db_err(e))?;
                    out.extend($crate::common::convert(rows)?);
                }
                reader.finish().await.map_err(|e| self.db_err(e))?;
                Ok(out)
            }

            async fn get_certificate(
                &self,
                serial: &devid_core::Serial,
            ) -> Result<Option<$crate::CertRecord>, $crate::StoreError> {
                let hex = serial.to_hex();
                let mut row: Option<$crate::common::CertRow> =
                    sqlx::query_as(concat!($crate::common::cert_select!(), " WHERE c.serial = $1"))
                        .bind(hex.as_str())
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                if row.is_none() {
                    // Not signed yet: maybe an intent (a pending certificate).
                    row = sqlx::query_as(concat!($crate::common::intent_select!(), " WHERE c.serial = $1"))
                        .bind(hex.as_str())
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                }
                row.map($crate::CertRecord::try_from).transpose()
            }

            async fn certificate_for_csr(
                &self,
                device: &devid_core::DeviceId,
                csr_sha256: &[u8],
            ) -> Result<Option<$crate::CertRecord>, $crate::StoreError> {
                // The newest of the certificates and the intents for this (device, CSR), in
                // one round trip.
                let row: Option<$crate::common::CertRow> = sqlx::query_as($crate::common::for_csr_select!())
                .bind(device.as_str())
                .bind(csr_sha256)
                .fetch_optional(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                row.map($crate::CertRecord::try_from).transpose()
            }

            async fn list_certificates_filtered(
                &self,
                filter: &$crate::CertFilter,
                cursor: Option<&str>,
                limit: u32,
            ) -> Result<$crate::Page<$crate::CertRecord>, $crate::StoreError> {
                let limit = $crate::common::clamp_limit(limit);
                // Serials are stored as lowercase hex; every serial sorts after the empty
                // string, so no cursor is the cursor "".
                let after = cursor.unwrap_or("").to_ascii_lowercase();
                // Signed certificates live in `certificates`, pending ones in
                // `issuance_intents`: a page is the first limit + 1 of both, by serial.
                let signed = filter.status != Some($crate::CertStatus::Pending);
                let pending = matches!(filter.status, None | Some($crate::CertStatus::Pending));
                let filters = |q: &mut sqlx::QueryBuilder<_>| {
                    if let Some(d) = &filter.device {
                        q.push(" AND c.device_id = ").push_bind(d.as_str().to_string());
                    }
                    if let Some(t) = filter.expiring_before {
                        q.push(" AND c.not_after < ").push_bind(t.0);
                    }
                    if let Some(g) = &filter.group {
                        q.push(" AND c.device_id IN (SELECT id FROM devices WHERE group_name = ")
                            .push_bind(g.clone())
                            .push(")");
                    }
                    q.push(" ORDER BY c.serial LIMIT ").push_bind(i64::from(limit) + 1);
                };
                let mut items: Vec<$crate::CertRecord> = Vec::new();
                if signed {
                    // The revocations side is bounded by the cursor too: otherwise the
                    // planner's merge join reads it from the first serial on every page.
                    let mut q = sqlx::QueryBuilder::new(concat!($crate::common::cert_select!(), " AND r.serial > "));
                    q.push_bind(after.clone()).push(" WHERE c.serial > ").push_bind(after.clone());
                    if let Some(st) = filter.status {
                        q.push(" AND c.status = ").push_bind($crate::common::cert_status_text(st));
                    }
                    filters(&mut q);
                    let rows: Vec<$crate::common::CertRow> =
                        q.build_query_as().fetch_all(self.reader()).await.map_err(|e| self.db_err(e))?;
                    items.extend($crate::common::convert::<_, $crate::CertRecord>(rows)?);
                }
                if pending {
                    let mut q = sqlx::QueryBuilder::new(concat!($crate::common::intent_select!(), " WHERE c.serial > "));
                    q.push_bind(after.clone());
                    filters(&mut q);
                    let rows: Vec<$crate::common::CertRow> =
                        q.build_query_as().fetch_all(self.reader()).await.map_err(|e| self.db_err(e))?;
                    items.extend($crate::common::convert::<_, $crate::CertRecord>(rows)?);
                }
                if signed && pending {
                    items.sort_by_cached_key(|c| c.serial.to_hex());
                    items.truncate(limit as usize + 1);
                }
                Ok($crate::common::page(items, limit, |c: &$crate::CertRecord| c.serial.to_hex()))
            }

            // --- revocation ---

            async fn revoke(
                &self,
                serial: &devid_core::Serial,
                reason: devid_core::RevocationReason,
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<$crate::CertRecord, $crate::StoreError> {
                let hex = serial.to_hex();
                let mut tx = self.begin().await?;
                // Conditional update first: concurrent revokers serialize on the row, and only
                // the first one writes the revocation row.
                let done = sqlx::query(
                    "UPDATE certificates SET status = 'revoked', updated_at = $2 \
                     WHERE serial = $1 AND status = 'issued'",
                )
                .bind(hex.as_str())
                .bind(at.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                if done.rows_affected() > 0 {
                    $crate::common::record_revocation!(self, tx, hex.as_str(), i16::from(reason.code()), at.0);
                    $crate::common::append_audit!(self, tx, audit);
                }
                let mut row: Option<$crate::common::CertRow> =
                    sqlx::query_as(concat!($crate::common::cert_select!(), " WHERE c.serial = $1"))
                        .bind(hex.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                if row.is_none() {
                    row = sqlx::query_as(concat!($crate::common::intent_select!(), " WHERE c.serial = $1"))
                        .bind(hex.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                }
                let Some(row) = row else {
                    return Err($crate::StoreError::not_found(format!("no certificate with serial {hex}")));
                };
                let record = $crate::CertRecord::try_from(row)?;
                match record.status {
                    $crate::CertStatus::Pending => {
                        Err($crate::StoreError::conflict(format!("certificate {hex} is not issued")))
                    }
                    $crate::CertStatus::Issued => Err($crate::StoreError::internal(format!(
                        "certificate {hex} is still issued after revoking it"
                    ))),
                    $crate::CertStatus::Revoked => {
                        tx.commit().await.map_err(|e| self.db_err(e))?;
                        Ok(record)
                    }
                }
            }

            async fn events_after(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<$crate::CertEvent>, $crate::StoreError> {
                let rows: Vec<(i64, String, String, String, i64)> = sqlx::query_as(
                    "SELECT seq, serial, issuer_id, kind, at FROM cert_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after_seq)
                .bind(i64::from($crate::common::clamp_limit(limit)))
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                rows.into_iter().map($crate::common::event_from_row).collect()
            }

            async fn last_event_seq(&self) -> Result<i64, $crate::StoreError> {
                let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM cert_events")
                    .fetch_one(self.reader())
                    .await
                    .map_err(|e| self.db_err(e))?;
                Ok(seq.unwrap_or(0))
            }

            async fn put_ocsp_responder(&self, r: &$crate::OcspResponderRecord) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO ocsp_responders (id, issuer_id, cert_der, key_ref, not_before, not_after, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(r.id.as_str())
                .bind(r.issuer.as_str())
                .bind(r.cert_der.as_slice())
                .bind(r.key_ref.as_str())
                .bind(r.not_before.0)
                .bind(r.not_after.0)
                .bind(r.created_at.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn latest_ocsp_responder(
                &self,
                issuer: &devid_core::CaId,
            ) -> Result<Option<$crate::OcspResponderRecord>, $crate::StoreError> {
                let row: Option<(String, String, Vec<u8>, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT id, issuer_id, cert_der, key_ref, not_before, not_after, created_at FROM ocsp_responders \
                     WHERE issuer_id = $1 ORDER BY not_after DESC, id DESC LIMIT 1",
                )
                .bind(issuer.as_str())
                .fetch_optional(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                row.map($crate::common::responder_from_row).transpose()
            }

            async fn ocsp_responders(
                &self,
                issuer: &devid_core::CaId,
                at: devid_core::UnixTime,
            ) -> Result<Vec<$crate::OcspResponderRecord>, $crate::StoreError> {
                let rows: Vec<(String, String, Vec<u8>, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT id, issuer_id, cert_der, key_ref, not_before, not_after, created_at FROM ocsp_responders \
                     WHERE issuer_id = $1 AND not_after > $2 ORDER BY not_after DESC, id DESC LIMIT 100",
                )
                .bind(issuer.as_str())
                .bind(at.0)
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                rows.into_iter().map($crate::common::responder_from_row).collect()
            }

            async fn get_crl(
                &self,
                issuer: &devid_core::CaId,
                shard: u16,
            ) -> Result<Option<$crate::CrlRecord>, $crate::StoreError> {
                let row: Option<(String, i64, i64, i64, i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT issuer_id, shard, crl_number, this_update, next_update, der FROM crls \
                     WHERE issuer_id = $1 AND shard = $2",
                )
                .bind(issuer.as_str())
                .bind(i64::from(shard))
                .fetch_optional(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                row.map($crate::common::crl_from_row).transpose()
            }

            async fn crl_versions(&self) -> Result<Vec<(devid_core::CaId, u16, u64)>, $crate::StoreError> {
                let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT issuer_id, shard, crl_number FROM crls")
                    .fetch_all(self.reader())
                    .await
                    .map_err(|e| self.db_err(e))?;
                rows.into_iter()
                    .map(|(issuer, shard, number)| {
                        Ok(($crate::common::ca_id_checked(issuer)?, $crate::common::shard_checked(shard)?, number.max(0) as u64))
                    })
                    .collect()
            }

            async fn rebuild_crl(
                &self,
                issuer: &devid_core::CaId,
                shard: u16,
                now: devid_core::UnixTime,
                sink: &mut dyn $crate::CrlSink,
            ) -> Result<Option<$crate::CrlRecord>, $crate::StoreError> {
                use futures_util::TryStreamExt;
                let mut tx = self.begin().await?;
                if !self.try_crl_lock(&mut tx, issuer, shard).await? {
                    return Ok(None);
                }
                let prev: Option<(i64,)> =
                    sqlx::query_as("SELECT crl_number FROM crls WHERE issuer_id = $1 AND shard = $2")
                        .bind(issuer.as_str())
                        .bind(i64::from(shard))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                let number = prev.map(|p| p.0.max(0) as u64).unwrap_or(0) + 1;
                let sink_err = |e: String| $crate::StoreError::internal(format!("CRL of {issuer}: {e}"));
                // The count first (the same index range), as a size hint: the CRL is
                // encoded into one buffer, which then never has to grow by copying (with
                // mimalloc a 47 MiB CRL peaked at 2.2 × its size without the hint, 1.0 × with
                // it: `bench/crl.sh`).
                let (expected,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM revocations WHERE issuer_id = $1 AND not_after > $2",
                )
                .bind(issuer.as_str())
                .bind(now.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                sink.begin(number, expected.max(0) as u64).map_err(sink_err)?;
                {
                    use sqlx::Row;
                    // One index range scan of revocations (issuer_id, not_after), streamed;
                    // each serial is read in place from its row, without a String per row.
                    let mut rows = sqlx::query(
                        "SELECT serial, reason, revoked_at FROM revocations WHERE issuer_id = $1 AND not_after > $2",
                    )
                    .bind(issuer.as_str())
                    .bind(now.0)
                    .fetch(&mut *tx);
                    while let Some(row) = rows.try_next().await.map_err(|e| self.db_err(e))? {
                        let hex: &str = row.try_get(0).map_err(|e| self.db_err(e))?;
                        let reason: i16 = row.try_get(1).map_err(|e| self.db_err(e))?;
                        let at: i64 = row.try_get(2).map_err(|e| self.db_err(e))?;
                        let serial = devid_core::Serial::from_hex(hex)
                            .map_err(|e| $crate::StoreError::internal(format!("bad serial {hex:?}: {e}")))?;
                        let reason = u8::try_from(reason)
                            .ok()
                            .and_then(devid_core::RevocationReason::from_code)
                            .ok_or_else(|| $crate::StoreError::internal(format!("bad reason code {reason} for {hex}")))?;
                        sink.entry(&serial, devid_core::UnixTime(at), reason).map_err(sink_err)?;
                    }
                }
                let (this_update, next_update, der) = sink.finish().map_err(sink_err)?;
                let row = $crate::common::NewCrl {
                    issuer,
                    shard,
                    number: number as i64,
                    this_update: this_update.0,
                    next_update: next_update.0,
                    der: &der,
                };
                self.store_crl(&mut tx, &row).await?;
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(Some($crate::CrlRecord {
                    issuer: issuer.clone(),
                    shard,
                    crl_number: number,
                    this_update,
                    next_update,
                    der,
                }))
            }

            async fn insert_credential(
                &self,
                c: &$crate::CredentialRecord,
                audit: &$crate::AuditEvent,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO credentials (client_id, secret_hash, role, name, created_at, revoked_at, groups) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(c.client_id.as_str())
                .bind(c.secret_hash.as_str())
                .bind(c.role.as_str())
                .bind(c.name.as_str())
                .bind(c.created_at.0)
                .bind(c.revoked_at.map(|t| t.0))
                .bind(c.groups.as_ref().map(|g| g.join(",")))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn get_credential(
                &self,
                client_id: &str,
            ) -> Result<Option<$crate::CredentialRecord>, $crate::StoreError> {
                let row: Option<$crate::common::CredentialRow> = sqlx::query_as(
                    "SELECT client_id, secret_hash, role, name, created_at, revoked_at, groups FROM credentials WHERE client_id = $1",
                )
                .bind(client_id)
                .fetch_optional(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(row.map($crate::common::credential_from_row))
            }

            async fn list_credentials(&self) -> Result<Vec<$crate::CredentialRecord>, $crate::StoreError> {
                let rows: Vec<$crate::common::CredentialRow> = sqlx::query_as(
                    "SELECT client_id, secret_hash, role, name, created_at, revoked_at, groups FROM credentials \
                     ORDER BY created_at, client_id",
                )
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(rows.into_iter().map($crate::common::credential_from_row).collect())
            }

            async fn revoke_credential(
                &self,
                client_id: &str,
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<$crate::CredentialRecord, $crate::StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "UPDATE credentials SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
                )
                .bind(client_id)
                .bind(at.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                if done.rows_affected() > 0 {
                    $crate::common::append_audit!(self, tx, audit);
                }
                let row: Option<$crate::common::CredentialRow> = sqlx::query_as(
                    "SELECT client_id, secret_hash, role, name, created_at, revoked_at, groups FROM credentials WHERE client_id = $1",
                )
                .bind(client_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                let Some(row) = row else {
                    return Err($crate::StoreError::not_found(format!("no credential {client_id}")));
                };
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok($crate::common::credential_from_row(row))
            }

            async fn put_token_key(&self, k: &$crate::TokenKeyRecord) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO token_keys (kid, key_ref, public_spki, created_at, not_after) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(k.kid.as_str())
                .bind(k.key_ref.as_str())
                .bind(k.public_spki.as_slice())
                .bind(k.created_at.0)
                .bind(k.not_after.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn token_keys(
                &self,
                at: devid_core::UnixTime,
            ) -> Result<Vec<$crate::TokenKeyRecord>, $crate::StoreError> {
                let rows: Vec<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
                    "SELECT kid, key_ref, public_spki, created_at, not_after FROM token_keys WHERE not_after > $1 \
                     ORDER BY created_at DESC, kid DESC LIMIT 100",
                )
                .bind(at.0)
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(rows
                    .into_iter()
                    .map(|(kid, key_ref, public_spki, created_at, not_after)| $crate::TokenKeyRecord {
                        kid,
                        key_ref,
                        public_spki,
                        created_at: devid_core::UnixTime(created_at),
                        not_after: devid_core::UnixTime(not_after),
                    })
                    .collect())
            }

            async fn revoke_token(
                &self,
                jti: &str,
                expires_at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                )
                .bind(jti)
                .bind(expires_at.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                if done.rows_affected() > 0 {
                    $crate::common::append_audit!(self, tx, audit);
                }
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn put_group(
                &self,
                g: &$crate::GroupRecord,
                replace: bool,
                audit: &$crate::AuditEvent,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let sql = if replace {
                    concat!(
                        $crate::common::insert_group!(),
                        " ON CONFLICT (name) DO UPDATE SET methods = excluded.methods, \
                         registration = excluded.registration, id_source = excluded.id_source, \
                         validity_secs = excluded.validity_secs, trust_anchors = excluded.trust_anchors, \
                         crls = excluded.crls, master_key = excluded.master_key, \
                         rate_per_minute = excluded.rate_per_minute, updated_at = excluded.updated_at"
                    )
                } else {
                    $crate::common::insert_group!()
                };
                $crate::common::bind_group!(sqlx::query(sql), g)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e).on_conflict(|| format!("group {} already exists", g.name)))?;
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn get_group(&self, name: &str) -> Result<Option<$crate::GroupRecord>, $crate::StoreError> {
                let row: Option<$crate::common::GroupRow> =
                    sqlx::query_as(concat!($crate::common::group_select!(), " WHERE name = $1"))
                        .bind(name)
                        .fetch_optional(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                row.map($crate::GroupRecord::try_from).transpose()
            }

            async fn list_groups(&self) -> Result<Vec<$crate::GroupRecord>, $crate::StoreError> {
                let rows: Vec<$crate::common::GroupRow> =
                    sqlx::query_as(concat!($crate::common::group_select!(), " ORDER BY name LIMIT 10000"))
                        .fetch_all(self.reader())
                        .await
                        .map_err(|e| self.db_err(e))?;
                rows.into_iter().map($crate::GroupRecord::try_from).collect()
            }

            async fn delete_group(&self, name: &str, audit: &$crate::AuditEvent) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                let members: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM devices WHERE group_name = $1 ORDER BY group_name, id LIMIT 1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                if let Some((id,)) = members {
                    return Err($crate::StoreError::conflict(format!(
                        "group {name} still has devices (e.g. {id}); move or remove them first"
                    )));
                }
                // A device may have named the group since the check above (its insert holds
                // the group's row until it commits): the delete then fails on the foreign key.
                let done = sqlx::query("DELETE FROM enrollment_groups WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        if $crate::error::is_foreign_key_violation(&e) {
                            $crate::StoreError::conflict(format!(
                                "group {name} still has devices; move or remove them first"
                            ))
                        } else {
                            self.db_err(e)
                        }
                    })?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::not_found(format!("no group {name}")));
                }
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn insert_challenge(
                &self,
                c: &$crate::ChallengeRecord,
                purge_before: Option<devid_core::UnixTime>,
            ) -> Result<(), $crate::StoreError> {
                self.insert_challenges(std::slice::from_ref(c), purge_before).await
            }

            async fn insert_challenges(
                &self,
                items: &[$crate::ChallengeRecord],
                purge_before: Option<devid_core::UnixTime>,
            ) -> Result<(), $crate::StoreError> {
                if items.is_empty() && purge_before.is_none() {
                    return Ok(());
                }
                // See the trait: losing a challenge in a crash costs the device a retry.
                let mut tx = self.begin_relaxed().await?;
                let mut purged = 0;
                if let Some(before) = purge_before {
                    purged = sqlx::query("DELETE FROM challenges WHERE expires_at < $1")
                        .bind(before.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?
                        .rows_affected();
                }
                if !items.is_empty() {
                    let mut q = $crate::common::challenge_insert(items, None);
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e).on_conflict(|| "nonce collision".to_string()))?;
                }
                tx.commit().await.map_err(|e| self.db_err(e))?;
                self.challenges_deleted(purged);
                Ok(())
            }

            async fn service_secret(
                &self,
                name: &str,
                candidate: &[u8],
                now: devid_core::UnixTime,
            ) -> Result<Vec<u8>, $crate::StoreError> {
                // Durable (a full commit): a secret that nonces were made with must not be
                // lost in a crash and replaced by another.
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO service_secrets (name, sealed, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(candidate)
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT sealed FROM service_secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(sealed)
            }

            async fn get_challenge(
                &self,
                nonce_hash: &[u8],
            ) -> Result<Option<$crate::ChallengeRecord>, $crate::StoreError> {
                let row: Option<$crate::common::ChallengeRow> = sqlx::query_as(
                    "SELECT nonce_hash, group_name, method, state, expires_at, redeemed_at FROM challenges \
                     WHERE nonce_hash = $1",
                )
                .bind(nonce_hash)
                .fetch_optional(self.issuance_reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(row.map($crate::common::challenge_from_row))
            }

            async fn get_challenges(
                &self,
                nonce_hashes: &[Vec<u8>],
            ) -> Result<Vec<$crate::ChallengeRecord>, $crate::StoreError> {
                let mut out = Vec::with_capacity(nonce_hashes.len());
                if nonce_hashes.is_empty() {
                    return Ok(out);
                }
                // A read by a list of keys: planned for index lookups.
                let mut reader = self.keyed_read().await?;
                for chunk in nonce_hashes.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::new(
                        "SELECT nonce_hash, group_name, method, state, expires_at, redeemed_at FROM challenges WHERE ",
                    );
                    $crate::lists::any_bytes(&mut q, "nonce_hash", chunk.to_vec());
                    let rows: Vec<$crate::common::ChallengeRow> =
                        q.build_query_as().fetch_all(reader.conn()).await.map_err(|e| self.db_err(e))?;
                    out.extend(rows.into_iter().map($crate::common::challenge_from_row));
                }
                reader.finish().await.map_err(|e| self.db_err(e))?;
                Ok(out)
            }

            async fn node_heartbeat(
                &self,
                node: &str,
                now: devid_core::UnixTime,
                live_after: devid_core::UnixTime,
            ) -> Result<u64, $crate::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO nodes (id, seen_at) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                )
                .bind(node)
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                sqlx::query("DELETE FROM nodes WHERE seen_at < $1")
                    .bind(now.0 - 3600)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodes WHERE seen_at > $1")
                    .bind(live_after.0)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(n.max(1) as u64)
            }

            async fn append_audit(&self, audit: &$crate::AuditEvent) -> Result<(), $crate::StoreError> {
                let mut tx = self.begin().await?;
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))
            }

            async fn audit_entries(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<$crate::AuditRecord>, $crate::StoreError> {
                let rows: Vec<$crate::common::AuditRow> = sqlx::query_as(
                    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after_seq)
                .bind(i64::from($crate::common::clamp_limit(limit)))
                .fetch_all(self.reader())
                .await
                .map_err(|e| self.db_err(e))?;
                Ok(rows
                    .into_iter()
                    .map(|(seq, at, actor, action, subject, details, prev_hash, hash)| $crate::AuditRecord {
                        seq,
                        event: $crate::AuditEvent { at: devid_core::UnixTime(at), actor, action, subject, details },
                        prev_hash,
                        hash,
                    })
                    .collect())
            }

            async fn audit_head(&self) -> Result<(i64, Vec<u8>), $crate::StoreError> {
                let row: (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                    .fetch_one(self.reader())
                    .await
                    .map_err(|e| self.db_err(e))?;
                Ok(row)
            }

            async fn is_token_revoked(&self, jti: &str) -> Result<bool, $crate::StoreError> {
                let row: Option<(String,)> = sqlx::query_as("SELECT jti FROM revoked_tokens WHERE jti = $1")
                    .bind(jti)
                    .fetch_optional(self.reader())
                    .await
                    .map_err(|e| self.db_err(e))?;
                Ok(row.is_some())
            }

            async fn revoke_device_certificates(
                &self,
                device: &devid_core::DeviceId,
                reason: devid_core::RevocationReason,
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<Vec<devid_core::Serial>, $crate::StoreError> {
                let mut tx = self.begin().await?;
                let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM devices WHERE id = $1")
                    .bind(device.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                if exists.is_none() {
                    return Err($crate::StoreError::not_found(format!("no device {device}")));
                }
                let serials = $crate::common::revoke_device_rows!(self, tx, device, reason, at);
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(serials)
            }

            async fn quarantine_device(
                &self,
                device: &devid_core::DeviceId,
                reason: devid_core::RevocationReason,
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<Vec<devid_core::Serial>, $crate::StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query("UPDATE devices SET status = 'quarantined', updated_at = $2 WHERE id = $1")
                    .bind(device.as_str())
                    .bind(at.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::not_found(format!("no device {device}")));
                }
                // Where another transaction can store this device's certificate meanwhile
                // (PostgreSQL; SQLite has one writer), wait for it: a completion locks its
                // intent's row from the moment it takes it until that certificate is
                // committed, so the revocation below, a later statement, sees the
                // certificate. A completion that reaches the intent after this lock waits
                // for this transaction, then reads the device quarantined in its next
                // statement. Without this, a completion that read the device before the
                // quarantine committed and stored its certificate after the revocation left
                // a quarantined device with a valid certificate
                // (`quarantine_overlapping_a_completion_leaves_no_valid_certificate` in
                // `tests/store.rs`).
                if $crate::lists::row_locks_in(&tx) {
                    sqlx::query("SELECT serial FROM issuance_intents WHERE device_id = $1 FOR UPDATE")
                        .bind(device.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.db_err(e))?;
                }
                let serials = $crate::common::revoke_device_rows!(self, tx, device, reason, at);
                $crate::common::append_audit!(self, tx, audit);
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(serials)
            }

            async fn release_device(
                &self,
                device: &devid_core::DeviceId,
                at: devid_core::UnixTime,
                audit: &$crate::AuditEvent,
            ) -> Result<bool, $crate::StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "UPDATE devices SET status = 'registered', updated_at = $2 \
                     WHERE id = $1 AND status = 'quarantined'",
                )
                .bind(device.as_str())
                .bind(at.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
                let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM devices WHERE id = $1")
                    .bind(device.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                if exists.is_none() {
                    return Err($crate::StoreError::not_found(format!("no device {device}")));
                }
                if done.rows_affected() > 0 {
                    $crate::common::append_audit!(self, tx, audit);
                }
                tx.commit().await.map_err(|e| self.db_err(e))?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}
pub(crate) use impl_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_math() {
        assert_eq!(clamp_limit(0), 1);
        assert_eq!(clamp_limit(5000), MAX_PAGE);
        let p = page(vec![1, 2, 3], 2, |x| x.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next.as_deref(), Some("2"));
        let p = page(vec![1, 2], 2, |x| x.to_string());
        assert_eq!(p.next, None);
    }

    #[test]
    fn tbs_is_the_first_element_of_the_certificate() {
        let cert = [0x30, 0x08, 0x30, 0x03, 0x02, 0x01, 0x05, 0x03, 0x01, 0x00];
        assert_eq!(tbs_of(&cert), Some(&cert[2..7]));
        // Long-form lengths (0x81 nn).
        let mut long = vec![0x30, 0x81, 0x86, 0x30, 0x81, 0x80];
        long.extend([0u8; 0x80]);
        long.extend([0x03, 0x01, 0x00]);
        assert_eq!(tbs_of(&long).map(<[u8]>::len), Some(0x83));
        // Not a SEQUENCE, indefinite or overlong lengths, truncated: none.
        for bad in [
            &[0x31, 0x03, 0x30, 0x01, 0x00][..],
            &[0x30, 0x80, 0x30, 0x01, 0x00, 0x00, 0x00],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x30, 0x05, 0x30, 0x09, 0x00],
            &cert[..6],
            &[0x30],
            &[],
        ] {
            assert_eq!(tbs_of(bad), None, "{bad:02x?}");
        }
        assert!(stored_tbs(&cert[2..7], Some(&cert)).is_empty());
        assert_eq!(stored_tbs(&[0x30, 0x00], Some(&cert)), vec![0x30, 0x00]);
        assert_eq!(stored_tbs(&cert[2..7], None), cert[2..7].to_vec());
    }

    fn cert_row() -> CertRow {
        CertRow {
            serial: "0a".into(),
            issuer_id: "issuing".into(),
            device_id: "d1".into(),
            status: "issued".into(),
            not_before: 1,
            not_after: 2,
            csr_sha256: vec![1],
            tbs_der: vec![2],
            cert_der: Some(vec![3]),
            created_at: 1,
            reason: None,
            revoked_at: None,
            predecessor: None,
        }
    }

    #[test]
    fn bad_rows_are_internal_errors() {
        use devid_core::ErrorKind;
        assert!(CertRecord::try_from(cert_row()).is_ok());
        let bad = [
            CertRow { status: "weird".into(), ..cert_row() },
            CertRow { serial: "zz".into(), ..cert_row() },
            CertRow { device_id: "-bad".into(), ..cert_row() },
            CertRow { issuer_id: "Upper".into(), ..cert_row() },
            CertRow { reason: Some(1), ..cert_row() },
            CertRow { status: "revoked".into(), ..cert_row() },
            CertRow { status: "revoked".into(), reason: Some(7), revoked_at: Some(5), ..cert_row() },
            CertRow { reason: Some(1), revoked_at: Some(5), ..cert_row() },
        ];
        for row in bad {
            let e = CertRecord::try_from(row).err().map(|e| e.kind());
            assert_eq!(e, Some(ErrorKind::Internal));
        }
        let ok = CertRecord::try_from(CertRow {
            status: "revoked".into(),
            reason: Some(1),
            revoked_at: Some(5),
            ..cert_row()
        });
        assert_eq!(ok.ok().and_then(|c| c.revocation), Some((UnixTime(5), RevocationReason::KeyCompromise)));
    }
}
