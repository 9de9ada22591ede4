//! The devid store: one [`Store`] trait with a PostgreSQL and a SQLite implementation.
//!
//! Both implementations run the same SQL text where the dialects agree (SQLite accepts
//! `$1` placeholders); times are `BIGINT` Unix seconds in both so that one index shape
//! serves both. Migrations live in `migrations/postgres` and `migrations/sqlite` at the
//! top of the repository and run at start-up ([`connect`]).
//!
//! Every list is paged by key (a cursor), never by offset.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;

use devid_core::{CaId, DeviceId, ErrorKind, RevocationReason, Serial, UnixTime};

pub mod audit;
mod common;
mod error;
mod lists;
mod postgres;
pub mod seed;
mod sqlite;

pub use audit::{AuditEvent, AuditRecord};
pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Whether a CA is a self-signed root or an issuing (intermediate) CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// A self-signed root.
    Root,
    /// An issuing CA, signed by a root; it signs device certificates.
    Issuing,
}

/// A CA certificate and where its key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// The CA's id (e.g. `root`, `issuing`).
    pub id: CaId,
    /// Root or issuing.
    pub kind: CaKind,
    /// The CA that signed this one (`None` for a root).
    pub parent: Option<CaId>,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// The key reference (`soft:…`, `pkcs11:…`), or `None` when the key is kept offline.
    pub key_ref: Option<String>,
    /// The subject key identifier (RFC 5280 §4.2.1.2).
    pub ski: Vec<u8>,
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// Whether this is the CA in use for its kind (one active root and one active issuing CA).
    pub active: bool,
    /// When it was recorded.
    pub created_at: UnixTime,
}

/// A device's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Pre-registered, not yet enrolled.
    Registered,
    /// Holds (or held) a certificate, or redeemed its one-time token for one (recorded in
    /// step 4 of the issuance cycle, and completed by a retry if step 6 did not come).
    Enrolled,
    /// Refused enrollment and renewal until released.
    Quarantined,
}

/// A device record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id.
    pub id: DeviceId,
    /// Its state.
    pub status: DeviceStatus,
    /// SHA-256 of its one-time enrollment token, if it has one. Tokens are 256-bit random
    /// values, so a fast hash is enough (no dictionary to guess from).
    pub token_hash: Option<Vec<u8>>,
    /// When the token was redeemed, if it was.
    pub token_used_at: Option<UnixTime>,
    /// When the device was registered.
    pub created_at: UnixTime,
    /// When the record last changed.
    pub updated_at: UnixTime,
}

/// A device to pre-register in a batch ([`Store::insert_device_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDevice {
    /// The device id.
    pub id: DeviceId,
    /// SHA-256 of its one-time enrollment token, if it gets one.
    pub token_hash: Option<Vec<u8>>,
    /// Its labels: a JSON object of string to string, as text (`None`: no labels).
    pub labels: Option<String>,
    /// Its enrollment group.
    pub group: Option<String>,
    /// Its own attestation method.
    pub method: Option<String>,
}

/// What a device carries besides its lifecycle ([`Store::device_meta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMeta {
    /// Its labels: a JSON object of string to string, as text.
    pub labels: Option<String>,
    /// The batch that registered it (bulk pre-registration).
    pub batch_id: Option<String>,
    /// Its enrollment group.
    pub group: Option<String>,
    /// Its own attestation method (`None`: what its group allows).
    pub method: Option<String>,
    /// Its own secret (the derived-key method's device key), sealed by the key manager.
    pub secret: Option<Vec<u8>>,
}

/// Which devices a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Only devices of this group.
    pub group: Option<String>,
    /// Only devices in this state.
    pub status: Option<DeviceStatus>,
    /// Only devices carrying this label (key, value).
    pub label: Option<(String, String)>,
}

/// Which certificates a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFilter {
    /// Only this device's.
    pub device: Option<DeviceId>,
    /// Only certificates in this state.
    pub status: Option<CertStatus>,
    /// Only certificates whose notAfter is before this.
    pub expiring_before: Option<UnixTime>,
    /// Only certificates of devices of this group.
    pub group: Option<String>,
}

/// An enrollment group: the policy a factory line defines for the devices it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Its name.
    pub name: String,
    /// The attestation methods it allows (`token`, `x509`, `tpm`, `symmetric`).
    pub methods: Vec<String>,
    /// `required` (devices must be pre-registered) or `optional` (any device the group's
    /// evidence proves may enroll; it is registered then).
    pub registration: String,
    /// How the device id is taken from the evidence (see `devid_attest::x509::IdSource`).
    pub id_source: String,
    /// Maximum certificate lifetime in seconds (`None`: the service default).
    pub validity_secs: Option<i64>,
    /// Trust anchors (manufacturer or TPM vendor CA certificates), DER.
    pub trust_anchors: Vec<Vec<u8>>,
    /// Manufacturer CRLs, DER.
    pub crls: Vec<Vec<u8>>,
    /// The derived-key method's master key, sealed by the key manager.
    pub master_key: Option<Vec<u8>>,
    /// Enrollments per minute the group allows (`None`: the service default).
    pub rate_per_minute: Option<i64>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it last changed.
    pub updated_at: UnixTime,
}

/// An enrollment challenge (a single-use nonce), by the SHA-256 of the nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// SHA-256 of the nonce.
    pub nonce_hash: Vec<u8>,
    /// The group it was issued for.
    pub group: String,
    /// The method it was issued for.
    pub method: String,
    /// What the method keeps between challenge and enrollment (JSON text; never a secret).
    pub state: Option<String>,
    /// When it stops being accepted.
    pub expires_at: UnixTime,
    /// When it was redeemed, if it was.
    pub redeemed_at: Option<UnixTime>,
}

/// What step 4 redeems in the same transaction as it records the intent: nothing, a
/// device's one-time token (by hash), or a challenge nonce (by hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeem<'a> {
    /// Nothing (a renewal, a retry).
    Nothing,
    /// The device's one-time enrollment token, by SHA-256.
    Token(&'a [u8]),
    /// A stored challenge's nonce, by SHA-256.
    Nonce(&'a [u8]),
    /// A stateless challenge's nonce (authenticated by the caller, which read its group,
    /// method and expiry from the nonce itself): redeemed by inserting its hash into
    /// `challenges`, which it must not be in yet.
    Sealed(SealedNonce<'a>),
}

/// A stateless challenge being redeemed ([`Redeem::Sealed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedNonce<'a> {
    /// SHA-256 of the nonce.
    pub hash: &'a [u8],
    /// The group it was made for.
    pub group: &'a str,
    /// The method it was made for.
    pub method: &'a str,
    /// When it stops being accepted.
    pub expires_at: UnixTime,
}

/// One item of [`Store::record_intents`]: an intent, what it redeems, and the device it
/// registers.
#[derive(Debug, Clone, Copy)]
pub struct Intent<'a> {
    /// The certificate to be signed.
    pub pending: &'a PendingCert,
    /// What is redeemed with it.
    pub redeem: Redeem<'a>,
    /// A device seen for the first time (a group with optional registration), with its
    /// metadata and the audit entry of its registration: inserted, enrolled, in the same
    /// transaction before the intent, unless a device with its id exists by then.
    pub register: Option<(&'a DeviceMeta, &'a AuditEvent)>,
}

impl<'a> Intent<'a> {
    /// An intent that registers no device.
    pub fn new(pending: &'a PendingCert, redeem: Redeem<'a>) -> Intent<'a> {
        Intent { pending, redeem, register: None }
    }
}

/// One signed certificate for [`Store::complete_issuances`].
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The pending serial.
    pub serial: &'a Serial,
    /// The signed certificate, DER.
    pub cert_der: &'a [u8],
    /// The audit entry written when this certificate is stored as issued.
    pub audit: &'a AuditEvent,
}

/// Rows per `INSERT` statement of [`Store::insert_device_batch`] (8 bind parameters a row:
/// well inside SQLite's 32,766 and PostgreSQL's 65,535).
pub const BATCH_STATEMENT_ROWS: usize = 1000;

/// A certificate's state in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// The intent is recorded (serial and TBS), the signature not yet stored.
    Pending,
    /// Signed and stored.
    Issued,
    /// Revoked.
    Revoked,
}

/// A certificate row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// The serial number.
    pub serial: Serial,
    /// The issuing CA.
    pub issuer: CaId,
    /// The device it was issued to.
    pub device: DeviceId,
    /// Its state.
    pub status: CertStatus,
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// SHA-256 of the CSR it was issued for (enrollment is idempotent per device and CSR).
    pub csr_sha256: Vec<u8>,
    /// The DER TBSCertificate that was (or will be) signed, byte for byte.
    pub tbs_der: Vec<u8>,
    /// The DER certificate, once signed.
    pub cert_der: Option<Vec<u8>>,
    /// When the intent was recorded.
    pub created_at: UnixTime,
    /// Revocation time and reason, if revoked.
    pub revocation: Option<(UnixTime, RevocationReason)>,
    /// The certificate this one renewed (lineage).
    pub predecessor: Option<Serial>,
}

/// What [`Store::device_for_csr`] answers: a device, its metadata, and the newest
/// certificate or intent of that device for the CSR (`None`: none).
pub type DeviceForCsr = (DeviceRecord, DeviceMeta, Option<CertRecord>);

/// What [`Store::renewal_context`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalContext {
    /// The certificate presented.
    pub current: CertRecord,
    /// Its device.
    pub device: DeviceRecord,
    /// The device's metadata.
    pub meta: DeviceMeta,
    /// The newest certificate or intent of that device for the CSR.
    pub prior: Option<CertRecord>,
}

/// What step 4 of the issuance cycle records: a certificate that is about to be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCert {
    /// The serial number.
    pub serial: Serial,
    /// The issuing CA.
    pub issuer: CaId,
    /// The device.
    pub device: DeviceId,
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// SHA-256 of the CSR.
    pub csr_sha256: Vec<u8>,
    /// The DER TBSCertificate to be signed.
    pub tbs_der: Vec<u8>,
    /// Now.
    pub created_at: UnixTime,
    /// The certificate this one renews.
    pub predecessor: Option<Serial>,
}

/// A page of a list, with the cursor for the next page (`None` at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Pass this as the cursor to get the next page.
    pub next: Option<String>,
}

/// What happened to a certificate (the `cert_events` change log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertEventKind {
    /// Issued (step 6 completed).
    Issued,
    /// Revoked.
    Revoked,
}

/// One entry of the change log that every node polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEvent {
    /// Position in the log (grows; may have gaps).
    pub seq: i64,
    /// The certificate.
    pub serial: Serial,
    /// Its issuer.
    pub issuer: CaId,
    /// What happened.
    pub kind: CertEventKind,
    /// When.
    pub at: UnixTime,
}

/// The newest CRL of an issuer (and shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// The issuing CA.
    pub issuer: CaId,
    /// The shard (0 when the CRL is not partitioned).
    pub shard: u16,
    /// cRLNumber (RFC 5280 §5.2.3), monotonically increasing per issuer and shard.
    pub crl_number: u64,
    /// thisUpdate.
    pub this_update: UnixTime,
    /// nextUpdate.
    pub next_update: UnixTime,
    /// The DER CertificateList.
    pub der: Vec<u8>,
}

/// A delegated OCSP responder certificate and where its key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspResponderRecord {
    /// Its id.
    pub id: String,
    /// The CA that issued it (and whose certificates it answers for).
    pub issuer: CaId,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The key reference.
    pub key_ref: String,
    /// notBefore.
    pub not_before: UnixTime,
    /// notAfter.
    pub not_after: UnixTime,
    /// When it was recorded.
    pub created_at: UnixTime,
}

/// Receives a CRL's entries as the store streams them, and produces the signed CRL. The
/// store knows nothing of encoding or signing; the sink knows nothing of SQL.
pub trait CrlSink: Send {
    /// The CRL number the new CRL gets (one more than the stored one), and how many
    /// revoked, unexpired certificates of the issuer the store counted just before, over
    /// all shards: a size hint, so that the encoder can allocate its buffer once. (A
    /// certificate revoked in between may add an entry or two.)
    fn begin(&mut self, crl_number: u64, expected_entries: u64) -> Result<(), String>;
    /// One revoked, unexpired certificate of the issuer. A sharded sink skips the entries
    /// of other shards.
    fn entry(
        &mut self,
        serial: &Serial,
        revoked_at: UnixTime,
        reason: RevocationReason,
    ) -> Result<(), String>;
    /// The signed CRL: (thisUpdate, nextUpdate, DER).
    fn finish(&mut self) -> Result<(UnixTime, UnixTime, Vec<u8>), String>;
}

/// An API client credential (RFC 6749 §2.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// The client id.
    pub client_id: String,
    /// The secret's Argon2id PHC string (never the secret).
    pub secret_hash: String,
    /// `admin`, `factory`, `operator` or `auditor`.
    pub role: String,
    /// A human label.
    pub name: String,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
    /// The enrollment groups a factory credential is limited to (`None`: all).
    pub groups: Option<Vec<String>>,
}

/// A public key that signs access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyRecord {
    /// The JWS key id (`kid`).
    pub kid: String,
    /// Where the private key is (on the node that made it).
    pub key_ref: String,
    /// The public key, DER SubjectPublicKeyInfo.
    pub public_spki: Vec<u8>,
    /// When it was made.
    pub created_at: UnixTime,
    /// Tokens it signed are not accepted after this.
    pub not_after: UnixTime,
}

/// The store. Methods are shaped after the use cases so that each is one transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// What the operator should change in the database's settings, one sentence each
    /// (PostgreSQL: `autovacuum` off); empty when nothing. The server logs them at start.
    async fn advisories(&self) -> Result<Vec<String>, StoreError>;

    // --- CAs ---

    /// Record a new CA hierarchy (root then issuing). If `replace` is false and any CA
    /// exists, fails with [`ErrorKind::Conflict`]; if true, the existing CAs are marked
    /// inactive (never deleted: their certificates stay verifiable) in the same transaction.
    async fn put_ca_hierarchy(
        &self,
        root: &CaRecord,
        issuing: &CaRecord,
        replace: bool,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// A CA by id.
    async fn get_ca(&self, id: &CaId) -> Result<Option<CaRecord>, StoreError>;
    /// The active CA of a kind.
    async fn active_ca(&self, kind: CaKind) -> Result<Option<CaRecord>, StoreError>;
    /// Every CA, oldest first.
    async fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError>;

    // --- devices ---

    /// Register a device with its group, method, secret and labels (`meta`).
    /// [`ErrorKind::Conflict`] if the id exists.
    async fn insert_device(
        &self,
        device: &DeviceRecord,
        meta: &DeviceMeta,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Register a device unless its id exists (a group with optional registration); returns
    /// whether this call created it (and appended `audit`).
    async fn ensure_device(
        &self,
        device: &DeviceRecord,
        meta: &DeviceMeta,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    /// [`Store::ensure_device`] for many devices in one transaction: for each item, whether
    /// this call created it (and appended its audit entry; entries in item order). An id
    /// named twice is created by its first item. On PostgreSQL the commit does not wait for
    /// the WAL flush: a registration is acted on only by a later durable transaction of the
    /// same enrollment (its completion, see [`Store::record_intents`]), whose flush covers
    /// it (the WAL is written in order), so a crash loses a registration only together with
    /// an enrollment that never answered.
    async fn ensure_devices(
        &self,
        items: &[(&DeviceRecord, &DeviceMeta, &AuditEvent)],
    ) -> Result<Vec<bool>, StoreError>;
    /// A device by id.
    async fn get_device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// The device holding this token hash (redeemed or not).
    async fn device_by_token_hash(&self, token_hash: &[u8]) -> Result<Option<DeviceRecord>, StoreError>;
    /// [`Store::device_by_token_hash`] for many hashes in one read: the devices holding any
    /// of them, in no particular order (a hash no device holds has no row). The token
    /// enrollments of one moment look their devices up together (group lookup): one
    /// statement for the batch instead of one round trip each.
    async fn devices_by_token_hashes(
        &self,
        token_hashes: &[Vec<u8>],
    ) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Devices in id order, after `cursor` (an id), at most `limit`.
    async fn list_devices(&self, cursor: Option<&str>, limit: u32) -> Result<Page<DeviceRecord>, StoreError> {
        self.list_devices_filtered(&DeviceFilter::default(), cursor, limit).await
    }
    /// Devices matching `filter`, in id order, after `cursor`, at most `limit`.
    async fn list_devices_filtered(
        &self,
        filter: &DeviceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeviceRecord>, StoreError>;
    /// Pre-register devices (status registered) in one transaction, recording `batch_id`
    /// and each device's labels; a device whose id exists already is left untouched
    /// (`INSERT … ON CONFLICT (id) DO NOTHING`). Returns the ids this call created, so the
    /// caller knows which tokens to hand out. Callers keep a call to about
    /// [`BATCH_STATEMENT_ROWS`] devices: each call is one commit, so a large import that
    /// fails midway keeps what it committed and a retry continues from there.
    async fn insert_device_batch(
        &self,
        batch_id: &str,
        devices: &[BatchDevice],
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<Vec<DeviceId>, StoreError>;
    /// A device, its metadata and what [`Store::certificate_for_csr`] answers for it and
    /// `csr_sha256`, in one read (`None`: no such device): what enrollment and renewal check
    /// before they issue.
    async fn device_for_csr(
        &self,
        id: &DeviceId,
        csr_sha256: &[u8],
    ) -> Result<Option<DeviceForCsr>, StoreError>;
    /// [`Store::device_for_csr`] for many (device, CSR hash) pairs in one read: an answer
    /// per pair, in the pairs' order (the attested enrollments of one moment read together).
    async fn device_for_csrs(
        &self,
        keys: &[(DeviceId, Vec<u8>)],
    ) -> Result<Vec<Option<DeviceForCsr>>, StoreError>;
    /// What renewal checks before it issues, in one read: the certificate `serial` (the one
    /// the device presented), its device and metadata, and what
    /// [`Store::certificate_for_csr`] answers for that device and `csr_sha256` (`None`: no
    /// such certificate).
    async fn renewal_context(
        &self,
        serial: &Serial,
        csr_sha256: &[u8],
    ) -> Result<Option<RenewalContext>, StoreError>;
    /// [`Store::renewal_context`] for many (serial, CSR hash) pairs in one read: an answer
    /// per pair, in the pairs' order. The renewals of one moment read their contexts
    /// together (one statement instead of a round trip each).
    async fn renewal_contexts(
        &self,
        keys: &[(Serial, Vec<u8>)],
    ) -> Result<Vec<Option<RenewalContext>>, StoreError>;
    /// A device's labels, batch id, group, method and sealed secret (`None`: no such device).
    async fn device_meta(&self, id: &DeviceId) -> Result<Option<DeviceMeta>, StoreError>;

    // --- the issuance cycle ---
    //
    // An intent (step 4) is a row of its own (`issuance_intents`); step 6 deletes it and
    // writes the certificate once, with its indexes, in the same transaction. Readers see
    // an intent as a certificate with status `Pending` and no DER.

    /// Step 4: record the intent. What `redeem` names is redeemed in the same transaction:
    /// the device's token only if it was unused and the device is not quarantined (the
    /// device then becomes enrolled, in the same update); a challenge only if it was
    /// unredeemed and unexpired at the intent's time. Otherwise
    /// nothing is written and [`ErrorKind::Conflict`] is returned. A serial collision is
    /// also [`ErrorKind::Conflict`].
    async fn record_intent(&self, pending: &PendingCert, redeem: Redeem<'_>) -> Result<(), StoreError>;
    /// Step 6: store the signed certificate for a pending serial and mark the device
    /// enrolled. If the device was quarantined meanwhile, the certificate is stored revoked
    /// (privilegeWithdrawn) and [`ErrorKind::Forbidden`] is returned: it must not be handed
    /// out. A quarantine that overlaps this call either commits first, and is seen here, or
    /// revokes this certificate with the device's others: never a quarantined device with
    /// a valid certificate. Returns the stored certificate: if another caller completed the
    /// same serial first, theirs is returned and `cert_der` is discarded (a serial is
    /// handed out once).
    async fn complete_issuance(
        &self,
        serial: &Serial,
        cert_der: &[u8],
        now: UnixTime,
        audit: &AuditEvent,
    ) -> Result<CertRecord, StoreError>;
    /// Step 4 for many certificates in one transaction (group commit: one WAL flush for all).
    ///
    /// Each item gets what [`Store::record_intent`] would have answered; a refused item
    /// (token or nonce already used, device quarantined) writes nothing and does not stop the
    /// others. An admitted item that registers its device ([`Intent::register`]) inserts it
    /// enrolled, with its audit entry, unless a device with that id exists (then the intent
    /// is recorded for the existing device, whose status step 6 checks as for any other); a
    /// device named by several items is inserted by the first. The outer error means the
    /// transaction as a whole failed (nothing was written); the caller may then retry the
    /// items one by one.
    ///
    /// Unless `wait_for_flush`, the commit does not wait for the WAL flush on PostgreSQL:
    /// the intent is recorded (committed, seen by every node) before the certificate is
    /// signed, and it is made durable by the completion of step 6, whose commit waits for
    /// the flush of all WAL written before it (the WAL is written in order). A certificate
    /// leaves only after that commit, so a database crash loses an intent only together
    /// with a certificate that never left, and its token or nonce is unredeemed again (the
    /// device retries). Callers that sign with a key outside the process (an HSM, whose own
    /// log records each signature) ask for the flush, so that every signature it makes has
    /// a durable record. ([`Store::record_intent`] always waits.)
    async fn record_intents(
        &self,
        items: &[Intent<'_>],
        wait_for_flush: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Step 6 for many certificates in one transaction, with one audit-chain append for
    /// all. Each item gets what [`Store::complete_issuance`] would have answered; the outer
    /// error means nothing was written.
    async fn complete_issuances(
        &self,
        items: &[Completion<'_>],
        now: UnixTime,
    ) -> Result<Vec<Result<CertRecord, StoreError>>, StoreError>;
    /// Signed certificates (issued or revoked) by serial, in no particular order; serials
    /// not stored, and pending ones, are left out.
    async fn certificates_by_serial(&self, serials: &[Serial]) -> Result<Vec<CertRecord>, StoreError>;
    /// A certificate by serial.
    async fn get_certificate(&self, serial: &Serial) -> Result<Option<CertRecord>, StoreError>;
    /// The newest certificate issued (or pending) for this device and CSR hash.
    async fn certificate_for_csr(
        &self,
        device: &DeviceId,
        csr_sha256: &[u8],
    ) -> Result<Option<CertRecord>, StoreError>;
    /// Certificates, optionally of one device, in serial order after `cursor` (hex serial).
    async fn list_certificates(
        &self,
        device: Option<&DeviceId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertRecord>, StoreError> {
        let filter = CertFilter { device: device.cloned(), ..CertFilter::default() };
        self.list_certificates_filtered(&filter, cursor, limit).await
    }
    /// Certificates matching `filter`, in serial order after `cursor`, at most `limit`.
    async fn list_certificates_filtered(
        &self,
        filter: &CertFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CertRecord>, StoreError>;

    // --- revocation ---

    /// Revoke an issued certificate: status, time and reason, and a row in `revocations`.
    /// Idempotent: revoking a revoked certificate returns it unchanged.
    /// [`ErrorKind::NotFound`] for an unknown serial.
    async fn revoke(
        &self,
        serial: &Serial,
        reason: RevocationReason,
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<CertRecord, StoreError>;
    /// Revoke every issued certificate of a device; returns the serials this call revoked.
    /// [`ErrorKind::NotFound`] for an unknown device.
    async fn revoke_device_certificates(
        &self,
        device: &DeviceId,
        reason: RevocationReason,
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<Vec<Serial>, StoreError>;
    /// Quarantine a device: its status becomes quarantined (enrollment and renewal are
    /// refused) and every issued certificate of it is revoked, in one transaction.
    /// Idempotent; returns the serials this call revoked. [`ErrorKind::NotFound`] for an
    /// unknown device.
    async fn quarantine_device(
        &self,
        device: &DeviceId,
        reason: RevocationReason,
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<Vec<Serial>, StoreError>;
    /// Release a quarantined device (back to registered: it must enroll again). Returns
    /// whether it was quarantined. [`ErrorKind::NotFound`] for an unknown device.
    async fn release_device(
        &self,
        device: &DeviceId,
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;

    // --- publishing (OCSP, CRL) ---

    /// Change events after `after_seq`, in sequence order, at most `limit`.
    async fn events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<CertEvent>, StoreError>;
    /// The highest event sequence number (0 when the log is empty).
    async fn last_event_seq(&self) -> Result<i64, StoreError>;
    /// Record a delegated OCSP responder certificate.
    async fn put_ocsp_responder(&self, r: &OcspResponderRecord) -> Result<(), StoreError>;
    /// Responders of an issuer still valid at `at`, newest notAfter first.
    async fn ocsp_responders(
        &self,
        issuer: &CaId,
        at: UnixTime,
    ) -> Result<Vec<OcspResponderRecord>, StoreError>;
    /// The responder of an issuer with the latest notAfter.
    async fn latest_ocsp_responder(&self, issuer: &CaId) -> Result<Option<OcspResponderRecord>, StoreError>;
    /// The stored CRL of an issuer and shard.
    async fn get_crl(&self, issuer: &CaId, shard: u16) -> Result<Option<CrlRecord>, StoreError>;
    /// (issuer, shard, crl_number) of every stored CRL: a cheap poll for newer CRLs.
    async fn crl_versions(&self) -> Result<Vec<(CaId, u16, u64)>, StoreError>;
    /// Build the next CRL of an issuer and shard: under a lock that one node holds at a time
    /// (a PostgreSQL advisory transaction lock; SQLite's write transaction), stream every
    /// revoked certificate of the issuer whose notAfter is after `now` into `sink`, and store
    /// what it produces with the next CRL number. Returns `None` when another node holds the
    /// lock (it is building the same CRL right now).
    async fn rebuild_crl(
        &self,
        issuer: &CaId,
        shard: u16,
        now: UnixTime,
        sink: &mut dyn CrlSink,
    ) -> Result<Option<CrlRecord>, StoreError>;

    // --- API credentials and access tokens ---

    /// Record a credential. [`ErrorKind::Conflict`] if the client id exists.
    async fn insert_credential(&self, c: &CredentialRecord, audit: &AuditEvent) -> Result<(), StoreError>;
    /// A credential by client id.
    async fn get_credential(&self, client_id: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// Every credential, oldest first.
    async fn list_credentials(&self) -> Result<Vec<CredentialRecord>, StoreError>;
    /// Revoke a credential (idempotent: the first revocation time stands).
    /// [`ErrorKind::NotFound`] for an unknown client id.
    async fn revoke_credential(
        &self,
        client_id: &str,
        at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<CredentialRecord, StoreError>;
    /// Record a token signing public key.
    async fn put_token_key(&self, k: &TokenKeyRecord) -> Result<(), StoreError>;
    /// Token keys valid at `at`, newest first.
    async fn token_keys(&self, at: UnixTime) -> Result<Vec<TokenKeyRecord>, StoreError>;
    /// Revoke an access token by its `jti` (idempotent).
    async fn revoke_token(
        &self,
        jti: &str,
        expires_at: UnixTime,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Whether a token was revoked.
    async fn is_token_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    // --- enrollment groups and challenges ---

    /// Record a group; with `replace`, an existing group of that name is updated (its
    /// creation time kept). [`ErrorKind::Conflict`] if it exists and `replace` is false.
    async fn put_group(&self, g: &GroupRecord, replace: bool, audit: &AuditEvent) -> Result<(), StoreError>;
    /// A group by name.
    async fn get_group(&self, name: &str) -> Result<Option<GroupRecord>, StoreError>;
    /// Every group, by name.
    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError>;
    /// Delete a group. [`ErrorKind::NotFound`] if there is none; [`ErrorKind::Conflict`]
    /// while devices belong to it.
    async fn delete_group(&self, name: &str, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Record a challenge (and, given `purge_before`, delete challenges that expired before it).
    async fn insert_challenge(
        &self,
        c: &ChallengeRecord,
        purge_before: Option<UnixTime>,
    ) -> Result<(), StoreError>;
    /// Record many challenges in one transaction (all or none). On PostgreSQL the commit
    /// does not wait for the WAL flush: a challenge lost in a crash only makes its device
    /// ask for another one, and a challenge is redeemed only by a later, durable
    /// transaction, whose flush covers the challenge too (the WAL is written in order).
    /// Given `purge_before`, challenges that expired before it are deleted first (callers
    /// purge now and then, not on every batch: the purge is a scan of the table); with no
    /// challenges, only that purge runs.
    async fn insert_challenges(
        &self,
        items: &[ChallengeRecord],
        purge_before: Option<UnixTime>,
    ) -> Result<(), StoreError>;
    /// The service secret stored under `name`, as sealed by the caller's key manager (the
    /// store never sees it in clear): if there is none yet, `candidate` is stored first and
    /// returned. Concurrent callers (nodes) all get the one that was stored first.
    async fn service_secret(
        &self,
        name: &str,
        candidate: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, StoreError>;
    /// A challenge by nonce hash.
    async fn get_challenge(&self, nonce_hash: &[u8]) -> Result<Option<ChallengeRecord>, StoreError>;
    /// [`Store::get_challenge`] for many nonce hashes in one read: the challenges found, in
    /// no particular order (the attested enrollments of one moment read theirs together).
    async fn get_challenges(&self, nonce_hashes: &[Vec<u8>]) -> Result<Vec<ChallengeRecord>, StoreError>;

    // --- nodes ---

    /// Record that `node` is alive at `now`, forget nodes not seen for an hour, and return
    /// how many nodes were seen after `live_after` (this one included).
    async fn node_heartbeat(
        &self,
        node: &str,
        now: UnixTime,
        live_after: UnixTime,
    ) -> Result<u64, StoreError>;

    // --- audit log ---

    /// Append an act that has no transaction of its own (an authentication failure, a
    /// refused enrollment). Every other act is appended by its own method, in its own
    /// transaction (the `audit` parameters).
    async fn append_audit(&self, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Entries after `after_seq`, in sequence order, at most `limit` (clamped to 1000).
    async fn audit_entries(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// The newest entry's sequence number and hash ((0, 32 zero bytes) for an empty log).
    async fn audit_head(&self) -> Result<(i64, Vec<u8>), StoreError>;
}

/// How many connections a store's pool may open: on PostgreSQL all of them (default 16), on
/// SQLite the read connections of a file database (default 4; SQLite always has exactly one
/// write connection, and an in-memory database only that one). `None`: the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolSize(pub Option<std::num::NonZeroU32>);

/// Open the store named by a database URL (`sqlite:PATH`, `sqlite::memory:`,
/// `postgres://…`), run its migrations, and return it.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    connect_with(url, PoolSize::default()).await
}

/// [`connect`] with a pool size of its own (see [`PoolSize`]).
pub async fn connect_with(url: &str, pool: PoolSize) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect_with(url, pool).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect_with(url, pool).await?))
    } else {
        Err(StoreError::new(
            ErrorKind::InvalidInput,
            "database URL must start with sqlite: or postgres://".to_string(),
        ))
    }
}
