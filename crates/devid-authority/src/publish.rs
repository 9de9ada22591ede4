//! Revocation publishing: the OCSP responder (RFC 6960, RFC 5019 profile) and CRLs
//! (RFC 5280 §5), both fed from the store.
//!
//! - **OCSP.** Each issuing CA has a delegated responder certificate (EKU OCSPSigning,
//!   id-pkix-ocsp-nocheck) whose key is a software key of this node, issued by the CA and
//!   rotated before it expires, so the CA key is not used per request. Answers for one
//!   CertID without a nonce come from an in-memory cache of pre-signed DER responses,
//!   keyed by the CertID bytes as received; they are signed when a certificate is issued
//!   or changes status, and again when half their validity has passed. A request with a
//!   nonce (RFC 9654) or several CertIDs is signed afresh.
//! - **CRL.** One CRL per issuing CA (or per shard, when partitioned by serial), rebuilt
//!   shortly after revocations (debounced) and when half its validity has passed; one
//!   node builds at a time (the store's lock) and every node serves the newest stored one.
//! - **Propagation.** Every node polls the store's change log; a revocation made by any
//!   path (REST, the CLI on the same database, another node) reaches this node's OCSP
//!   answers within one poll interval and its CRL within the debounce after that.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use devid_ca::crl::{CrlBuilder, CrlEntry, CrlParams, IssuingDistributionPoint};
use devid_ca::ocsp::{ErrorStatus, HashAlgorithm, IssuerHashes, Responder, SingleStatus, Status};
use devid_ca::profile::{IssuerInfo, PublicUrls};
use devid_core::{CaId, Clock, Entropy, KeyRef, RevocationReason, Serial, UnixTime};
use devid_kms::{KeyAlgorithm, KeyManager, Signer};
use devid_store::{
    CaKind, CertEventKind, CertRecord, CertStatus, CrlRecord, CrlSink, OcspResponderRecord, Store,
};
use tokio::sync::Notify;

use crate::AuthorityError;

/// Settings of revocation publishing.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// The public base URL (the CRL distribution point of sharded CRLs).
    pub public_url: url::Url,
    /// How long an OCSP response is valid (nextUpdate − thisUpdate).
    pub ocsp_validity_secs: i64,
    /// Lifetime of a delegated OCSP responder certificate.
    pub responder_validity_secs: i64,
    /// How long a CRL is valid (nextUpdate − thisUpdate).
    pub crl_validity_secs: i64,
    /// Number of CRL shards per issuer (1: not partitioned).
    pub crl_shards: u16,
    /// Wait this long after a revocation before rebuilding, to batch bursts.
    pub crl_debounce: Duration,
    /// How often the change log is polled.
    pub poll_interval: Duration,
    /// Most OCSP responses kept in memory; beyond it, entries are evicted and a miss is
    /// answered from the store and signed.
    pub ocsp_cache_capacity: usize,
}

impl PublishConfig {
    /// Defaults: OCSP responses valid 4 h, responder certificates 7 days, CRLs 24 h, one
    /// CRL per issuer, 500 ms debounce, 200 ms poll, 1,000,000 cached responses.
    pub fn new(public_url: url::Url) -> PublishConfig {
        PublishConfig {
            public_url,
            ocsp_validity_secs: 4 * 3600,
            responder_validity_secs: 7 * 86400,
            crl_validity_secs: 86400,
            crl_shards: 1,
            crl_debounce: Duration::from_millis(500),
            poll_interval: Duration::from_millis(200),
            ocsp_cache_capacity: 1_000_000,
        }
    }
}

/// An OCSP answer for the HTTP layer: always an OCSPResponse to send with HTTP 200.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The DER OCSPResponse (shared, not copied, between the cache and responses).
    pub der: bytes::Bytes,
    /// For successful responses that may be cached by HTTP caches (no nonce): thisUpdate,
    /// nextUpdate and an entity tag.
    pub caching: Option<Caching>,
}

/// HTTP caching facts of a response (RFC 5019 §6), with the header values that do not
/// change while it is served, formatted once (a cached answer serves many requests) into one
/// buffer: `Last-Modified` and `Expires` (IMF-fixdate, RFC 9110 §5.6.7, always 29 bytes),
/// then the quoted entity tag (RFC 9110 §8.8.3).
#[derive(Debug, Clone)]
pub struct Caching {
    /// When the response was produced (Last-Modified).
    pub this_update: UnixTime,
    /// When it stops being valid (bounds max-age; Expires).
    pub next_update: UnixTime,
    values: bytes::Bytes,
}

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const HTTP_DATE_LEN: usize = 29;

impl Caching {
    /// The caching facts of an answer valid from `this_update` to `next_update`, with a
    /// strong entity tag (characters allowed in an entity tag, without the quotes).
    pub fn new(this_update: UnixTime, next_update: UnixTime, etag: &str) -> Caching {
        let mut v = String::with_capacity(2 * HTTP_DATE_LEN + etag.len() + 2);
        v.push_str(&httpdate::fmt_http_date(this_update.to_system_time()));
        v.push_str(&httpdate::fmt_http_date(next_update.to_system_time()));
        debug_assert_eq!(v.len(), 2 * HTTP_DATE_LEN);
        v.push('"');
        v.push_str(etag);
        v.push('"');
        Caching { this_update, next_update, values: bytes::Bytes::from(v) }
    }

    /// The entity tag, without the quotes.
    pub fn etag(&self) -> &str {
        self.values
            .get(2 * HTTP_DATE_LEN + 1..self.values.len().saturating_sub(1))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The `Last-Modified` value (a shared slice, not a copy).
    pub fn last_modified_value(&self) -> bytes::Bytes {
        self.values.slice(..HTTP_DATE_LEN)
    }

    /// The `Expires` value.
    pub fn expires_value(&self) -> bytes::Bytes {
        self.values.slice(HTTP_DATE_LEN..2 * HTTP_DATE_LEN)
    }

    /// The `ETag` value, with its quotes.
    pub fn etag_value(&self) -> bytes::Bytes {
        self.values.slice(2 * HTTP_DATE_LEN..)
    }
}

/// A cached answer, packed so that a full cache stays small (it held each answer as an
/// [`OcspAnswer`] and its CertID apart, about 1.45 KB an entry; `bench/RESULTS.md`,
/// eighteenth machine):
/// - one buffer holds the DER response up to its responder certificate, then its HTTP
///   caching header values ([`Caching`]); the CertID it answers is read from the response,
///   which echoes it byte for byte (`SingleResponse.certID`, RFC 6960 §4.2.1);
/// - the responder certificate itself is shared between every answer it signed: it ends
///   each of them, since `certs` is the last field of the BasicOCSPResponse, which is the
///   last thing in the OCSPResponse (RFC 6960 §4.2.1).
///
/// A hit copies the two parts into one response (about 800 bytes).
struct Cached {
    buf: bytes::Bytes,
    head_len: u32,
    cert_id_at: u32,
    cert_id_len: u32,
    values_at: u32,
    /// The responder certificate's DER, shared (empty when the answer does not end with it).
    tail: bytes::Bytes,
    this_update: UnixTime,
    next_update: UnixTime,
    refresh_at: UnixTime,
    /// The status the answer states; current, because entries are evicted on every change.
    status: Status,
}

impl Cached {
    /// Pack a DER answer and its HTTP caching facts; `responder_cert` signed it.
    fn new(
        der: &[u8],
        caching: &Caching,
        cert_id: &[u8],
        responder_cert: &bytes::Bytes,
        refresh_at: UnixTime,
        status: Status,
    ) -> Option<Cached> {
        let shared = !responder_cert.is_empty() && der.ends_with(responder_cert);
        let head = if shared { &der[..der.len() - responder_cert.len()] } else { der };
        let found = (!cert_id.is_empty()).then(|| head.windows(cert_id.len()).position(|w| w == cert_id));
        let found = found.flatten();
        let apart = if found.is_some() { 0 } else { cert_id.len() };
        // Exactly the size it needs: `Bytes` keeps a vector's spare capacity.
        let mut buf = Vec::with_capacity(head.len() + apart + caching.values.len());
        buf.extend_from_slice(head);
        let cert_id_at = match found {
            Some(at) => at,
            None => {
                buf.extend_from_slice(cert_id);
                head.len()
            }
        };
        let values_at = buf.len();
        buf.extend_from_slice(&caching.values);
        Some(Cached {
            buf: buf.into(),
            head_len: u32::try_from(head.len()).ok()?,
            cert_id_at: u32::try_from(cert_id_at).ok()?,
            cert_id_len: u32::try_from(cert_id.len()).ok()?,
            values_at: u32::try_from(values_at).ok()?,
            tail: if shared { responder_cert.clone() } else { bytes::Bytes::new() },
            this_update: caching.this_update,
            next_update: caching.next_update,
            refresh_at,
            status,
        })
    }

    fn cert_id(&self) -> &[u8] {
        let start = self.cert_id_at as usize;
        self.buf.get(start..start + self.cert_id_len as usize).unwrap_or_default()
    }

    /// The answer, whole again: the DER in one buffer, the caching values shared.
    fn answer(&self) -> OcspAnswer {
        let head = self.head_len as usize;
        let der = if self.tail.is_empty() {
            self.buf.slice(..head)
        } else {
            let mut der = bytes::BytesMut::with_capacity(head + self.tail.len());
            der.extend_from_slice(&self.buf[..head]);
            der.extend_from_slice(&self.tail);
            der.freeze()
        };
        let values = self.buf.slice(self.values_at as usize..);
        OcspAnswer {
            der,
            caching: Some(Caching { this_update: self.this_update, next_update: self.next_update, values }),
        }
    }
}

/// An issuer's current delegated responder.
struct ActiveResponder {
    responder: Responder,
    /// Its certificate, DER, shared by the cached answers it signed (their common tail).
    cert: bytes::Bytes,
    not_after: UnixTime,
}

/// One issuing CA as the publisher sees it.
struct IssuerCtx {
    id: CaId,
    info: IssuerInfo,
    hashes: IssuerHashes,
    signer: Arc<dyn Signer>,
    responder: RwLock<Option<Arc<ActiveResponder>>>,
    urls: PublicUrls,
}

/// The revocation publisher of one node.
pub struct Publisher {
    store: Arc<dyn Store>,
    kms: Arc<dyn KeyManager>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Entropy>,
    config: PublishConfig,
    issuers: RwLock<Vec<Arc<IssuerCtx>>>,
    cache: RwLock<HashMap<Serial, Vec<Cached>>>,
    cache_len: std::sync::atomic::AtomicUsize,
    /// Bumped on every eviction: a response signed from a status read before an eviction
    /// is not cached (it may predate the change that caused the eviction).
    evictions: std::sync::atomic::AtomicU64,
    crls: RwLock<HashMap<(CaId, u16), Arc<CrlRecord>>>,
    crl_dirty: std::sync::Mutex<Vec<CaId>>,
    crl_wake: Notify,
    /// The runtime the publisher was loaded on (`None`: loaded outside one). A store lookup
    /// made while answering runs there, so that a database connection it opens is driven
    /// by that runtime and not by the event loop the request came in on: the responder
    /// listener's loops are single-threaded runtimes of their own, busy with answers.
    home: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("config", &self.config).finish_non_exhaustive()
    }
}

fn lock_err<T>(_: T) -> AuthorityError {
    AuthorityError::Internal("a publisher lock was poisoned".into())
}

impl Publisher {
    /// Load every issuing CA whose key this node can use, make sure each has a current
    /// responder certificate and CRLs, and return the publisher. Start [`Publisher::run`]
    /// to keep it current.
    pub async fn start(
        store: Arc<dyn Store>,
        kms: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Entropy>,
        config: PublishConfig,
    ) -> Result<Arc<Publisher>, AuthorityError> {
        let p = Publisher::load(store, kms, clock, rng, config).await?;
        p.refresh_responders().await?;
        p.reload_crls().await?;
        p.rebuild_due_crls().await;
        Ok(p)
    }

    /// A publisher for one-off work (e.g. `devid crl build`): the issuers are loaded, but
    /// no responder is made and nothing runs in the background.
    pub async fn load(
        store: Arc<dyn Store>,
        kms: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Entropy>,
        config: PublishConfig,
    ) -> Result<Arc<Publisher>, AuthorityError> {
        let p = Arc::new(Publisher {
            store,
            kms,
            clock,
            rng,
            config,
            issuers: RwLock::new(Vec::new()),
            cache: RwLock::new(HashMap::new()),
            cache_len: std::sync::atomic::AtomicUsize::new(0),
            evictions: std::sync::atomic::AtomicU64::new(0),
            crls: RwLock::new(HashMap::new()),
            crl_dirty: std::sync::Mutex::new(Vec::new()),
            crl_wake: Notify::new(),
            home: tokio::runtime::Handle::try_current().ok(),
        });
        p.load_issuers().await?;
        Ok(p)
    }

    async fn load_issuers(&self) -> Result<(), AuthorityError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for ca in self.store.list_cas().await? {
            if ca.kind != CaKind::Issuing || ca.not_after <= now {
                continue;
            }
            let Some(key) = ca.key_ref.as_deref() else { continue };
            let key: KeyRef = match key.parse() {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(ca = %ca.id, error = %e, "skipping a CA with a bad key reference");
                    continue;
                }
            };
            let signer = match self.kms.signer(&key) {
                Ok(s) => s,
                Err(e) => {
                    // An old CA whose key this node does not hold: it cannot sign CRLs or
                    // responder certificates here.
                    tracing::warn!(ca = %ca.id, key = %key, error = %e, "not publishing for this CA");
                    continue;
                }
            };
            let info = IssuerInfo::from_cert_der(&ca.cert_der)?;
            let hashes = IssuerHashes::from_issuer_info(&info)?;
            let urls = PublicUrls::for_issuer(&self.config.public_url, &ca.id);
            out.push(Arc::new(IssuerCtx {
                id: ca.id,
                info,
                hashes,
                signer,
                responder: RwLock::new(None),
                urls,
            }));
        }
        *self.issuers.write().map_err(lock_err)? = out;
        Ok(())
    }

    fn issuers(&self) -> Vec<Arc<IssuerCtx>> {
        self.issuers.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn issuer(&self, id: &CaId) -> Option<Arc<IssuerCtx>> {
        self.issuers().into_iter().find(|i| &i.id == id)
    }

    // --- responder certificates ---

    /// Make sure every issuer has a responder certificate with at least a third of its
    /// lifetime left whose key this node holds; issue a new one otherwise.
    async fn refresh_responders(&self) -> Result<(), AuthorityError> {
        let now = self.clock.now();
        let margin = self.config.responder_validity_secs / 3;
        for ctx in self.issuers() {
            let current = ctx.responder.read().map_err(lock_err)?.as_ref().map(|r| r.not_after);
            if current.is_some_and(|na| na.0 - now.0 > margin) {
                continue;
            }
            let mut chosen = None;
            for r in self.store.ocsp_responders(&ctx.id, now.plus(margin)).await? {
                let Ok(key) = r.key_ref.parse::<KeyRef>() else { continue };
                if let Ok(signer) = self.kms.signer(&key) {
                    chosen = Some((Responder::new(&r.cert_der, signer)?, r.not_after));
                    break;
                }
            }
            let (responder, not_after) = match chosen {
                Some(c) => c,
                None => self.issue_responder(&ctx, now).await?,
            };
            let cert = bytes::Bytes::copy_from_slice(responder.certificate_der());
            *ctx.responder.write().map_err(lock_err)? =
                Some(Arc::new(ActiveResponder { responder, cert, not_after }));
        }
        Ok(())
    }

    async fn issue_responder(
        &self,
        ctx: &IssuerCtx,
        now: UnixTime,
    ) -> Result<(Responder, UnixTime), AuthorityError> {
        let id = crate::ca_init::new_ca_id("ocsp", self.rng.as_ref())?.to_string();
        let key =
            KeyRef::soft(&format!("{id}-{}", ctx.id)).map_err(|e| AuthorityError::Internal(e.to_string()))?;
        let kms = self.kms.clone();
        let k = key.clone();
        let signer = tokio::task::spawn_blocking(move || kms.create_key(&k, KeyAlgorithm::EcdsaP256, false))
            .await
            .map_err(|e| AuthorityError::Internal(format!("key task: {e}")))??;
        let tbs = devid_ca::profile::ocsp_responder_tbs(
            &ctx.info,
            ctx.signer.algorithm(),
            &Serial::random(self.rng.as_ref()),
            signer.public_key_spki_der(),
            "devid OCSP responder",
            now,
            self.config.responder_validity_secs,
        )?;
        let ca_signer = ctx.signer.clone();
        let cert_der =
            tokio::task::spawn_blocking(move || devid_ca::sign::sign_tbs(ca_signer.as_ref(), &tbs))
                .await
                .map_err(|e| AuthorityError::Internal(format!("signing task: {e}")))??;
        let not_after = IssuerInfo::from_cert_der(&cert_der)?.not_after;
        self.store
            .put_ocsp_responder(&OcspResponderRecord {
                id,
                issuer: ctx.id.clone(),
                cert_der: cert_der.clone(),
                key_ref: key.to_string(),
                not_before: now.plus(-60),
                not_after,
                created_at: now,
            })
            .await?;
        tracing::info!(issuer = %ctx.id, key = %key, "issued a delegated OCSP responder certificate");
        Ok((Responder::new(&cert_der, signer)?, not_after))
    }

    // --- OCSP ---

    /// Answer a DER OCSPRequest. Never fails: problems become OCSP error statuses
    /// (malformedRequest, unauthorized, internalError, tryLater).
    pub async fn ocsp(&self, request: &[u8]) -> OcspAnswer {
        match self.try_ocsp(request).await {
            Ok(a) => a,
            Err(status) => {
                crate::metrics::OCSP_ERROR.inc();
                OcspAnswer { der: devid_ca::ocsp::error_response(status).into(), caching: None }
            }
        }
    }

    async fn try_ocsp(&self, request: &[u8]) -> Result<OcspAnswer, ErrorStatus> {
        let req = devid_ca::ocsp::parse_request(request).map_err(|e| e.status())?;
        let now = self.clock.now();
        if req.nonce.is_none()
            && let [one] = req.cert_ids.as_slice()
            && let Some(serial) = &one.serial
            && let Some(hit) = self.cached(serial, &one.der, now)
        {
            crate::metrics::OCSP_CACHE.inc();
            return Ok(hit);
        }
        // All CertIDs must name one issuer of ours: one responder signs the answer.
        let issuers = self.issuers();
        let first = req.cert_ids.first().ok_or(ErrorStatus::MalformedRequest)?;
        let ctx = issuers.iter().find(|i| i.hashes.matches(first)).ok_or(ErrorStatus::Unauthorized)?;
        if !req.cert_ids.iter().all(|c| ctx.hashes.matches(c)) {
            return Err(ErrorStatus::Unauthorized);
        }
        let epoch = self.evictions.load(std::sync::atomic::Ordering::Acquire);
        let mut statuses = Vec::with_capacity(req.cert_ids.len());
        for c in &req.cert_ids {
            let status = match &c.serial {
                // A cached answer of this serial knows its status (entries are evicted on
                // every change): no store round trip for, e.g., a request with a nonce.
                Some(serial) => match self.cached_status(serial) {
                    Some(s) => s,
                    None => self.status_of(&ctx.id, serial).await.map_err(|e| {
                        tracing::warn!(issuer = %ctx.id, serial = %serial, error = %e, "OCSP status lookup failed");
                        ErrorStatus::TryLater
                    })?,
                },
                None => Status::Unknown,
            };
            statuses.push(status);
        }
        let responder = self.responder(ctx).ok_or(ErrorStatus::TryLater)?;
        let next_update = now.plus(self.config.ocsp_validity_secs);
        let singles: Vec<SingleStatus<'_>> = req
            .cert_ids
            .iter()
            .zip(&statuses)
            .map(|(c, s)| SingleStatus { cert_id_der: &c.der, status: *s, this_update: now, next_update })
            .collect();
        if let Some(nonce) = req.nonce.as_deref() {
            // Signed for this request only, never cached.
            let der = responder.responder.sign_response(now, &singles, Some(nonce)).map_err(|e| {
                tracing::error!(issuer = %ctx.id, error = %e, "OCSP signing failed");
                ErrorStatus::InternalError
            })?;
            crate::metrics::OCSP_SIGNED.inc();
            return Ok(OcspAnswer { der: der.into(), caching: None });
        }
        let der = responder.responder.sign_response(now, &singles, None).map_err(|e| {
            tracing::error!(issuer = %ctx.id, error = %e, "OCSP signing failed");
            ErrorStatus::InternalError
        })?;
        crate::metrics::OCSP_SIGNED.inc();
        let der = bytes::Bytes::from(der);
        let answer = OcspAnswer { der: der.clone(), caching: Some(caching(&der, now, next_update)) };
        if let ([one], [status]) = (req.cert_ids.as_slice(), statuses.as_slice())
            && let Some(serial) = &one.serial
            && *status != Status::Unknown
        {
            // Another request or the pre-signer may have cached an answer meanwhile: every
            // client gets that one.
            return Ok(self.insert_cached(
                serial,
                &one.der,
                &responder.cert,
                answer,
                *status,
                now,
                Some(epoch),
            ));
        }
        Ok(answer)
    }

    fn responder(&self, ctx: &IssuerCtx) -> Option<Arc<ActiveResponder>> {
        ctx.responder.read().ok().and_then(|g| g.clone())
    }

    async fn status_of(&self, issuer: &CaId, serial: &Serial) -> Result<Status, AuthorityError> {
        let found = match &self.home {
            Some(home) => {
                let (store, serial) = (self.store.clone(), serial.clone());
                let lookup = async move { store.get_certificate(&serial).await };
                home.spawn(tracing::Instrument::instrument(lookup, tracing::Span::current()))
                    .await
                    .map_err(|e| AuthorityError::Internal(format!("OCSP status lookup task: {e}")))??
            }
            None => self.store.get_certificate(serial).await?,
        };
        Ok(match found {
            Some(c) => record_status(issuer, &c),
            None => Status::Unknown,
        })
    }

    fn cached(&self, serial: &Serial, cert_id: &[u8], now: UnixTime) -> Option<OcspAnswer> {
        let cache = self.cache.read().ok()?;
        let hit = cache.get(serial)?.iter().find(|c| c.cert_id() == cert_id)?;
        (now < hit.refresh_at).then(|| hit.answer())
    }

    fn cached_status(&self, serial: &Serial) -> Option<Status> {
        self.cache.read().ok()?.get(serial)?.first().map(|c| c.status)
    }

    /// Cache an answer and return the one now cached: an answer already cached for this
    /// CertID and not yet due for refresh is kept (it states the current status, since
    /// entries are evicted on every change), so that concurrent signers agree.
    ///
    /// With `epoch`, the answer is cached only if no entry was evicted since that reading
    /// of [`Self::epoch`] (its status may predate the change that caused the eviction).
    /// The test runs under the cache's write lock, which an eviction also takes after
    /// counting itself, so no eviction slips between the test and the insert.
    #[allow(clippy::too_many_arguments)]
    fn insert_cached(
        &self,
        serial: &Serial,
        cert_id: &[u8],
        responder_cert: &bytes::Bytes,
        answer: OcspAnswer,
        status: Status,
        now: UnixTime,
        epoch: Option<u64>,
    ) -> OcspAnswer {
        let Some(c) = &answer.caching else { return answer };
        // Re-sign when half the validity has passed (RFC 5019 §2.2.4: responders pre-produce
        // responses and refresh them before nextUpdate).
        let refresh_at = UnixTime(now.0 + (c.next_update.0 - now.0) / 2);
        let Some(entry) = Cached::new(&answer.der, c, cert_id, responder_cert, refresh_at, status) else {
            return answer;
        };
        let Ok(mut cache) = self.cache.write() else { return answer };
        use std::sync::atomic::Ordering;
        if epoch.is_some_and(|e| self.evictions.load(Ordering::Acquire) != e) {
            return answer;
        }
        if self.cache_len.load(Ordering::Relaxed) >= self.config.ocsp_cache_capacity
            && !cache.contains_key(serial)
            && let Some(victim) = cache.keys().next().cloned()
            && let Some(gone) = cache.remove(&victim)
        {
            self.cache_len.fetch_sub(gone.len(), Ordering::Relaxed);
        }
        let slot = cache.entry(serial.clone()).or_default();
        if let Some(pos) = slot.iter().position(|c| c.cert_id() == cert_id) {
            if now < slot[pos].refresh_at {
                return slot[pos].answer();
            }
            slot[pos] = entry;
        } else {
            // Most serials have one answer (the SHA-1 CertID): no room for more up front.
            slot.reserve_exact(1);
            slot.push(entry);
            self.cache_len.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    fn evict(&self, serial: &Serial) {
        self.evictions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut cache) = self.cache.write()
            && let Some(gone) = cache.remove(serial)
        {
            self.cache_len.fetch_sub(gone.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sign and cache the response for the CertID form clients send by default (SHA-1,
    /// as RFC 5019 §2.1.1 requires of clients and as openssl does).
    async fn presign(&self, issuer: &CaId, serial: &Serial) -> Result<(), AuthorityError> {
        let status = self.status_of(issuer, serial).await?;
        self.presign_status(issuer, serial, status, None)
    }

    /// [`Self::presign`] with the status already read from the store (after `epoch` was
    /// read, when given).
    fn presign_status(
        &self,
        issuer: &CaId,
        serial: &Serial,
        status: Status,
        epoch: Option<u64>,
    ) -> Result<(), AuthorityError> {
        let Some(ctx) = self.issuer(issuer) else { return Ok(()) };
        let Some(responder) = self.responder(&ctx) else { return Ok(()) };
        if status == Status::Unknown {
            return Ok(());
        }
        let cert_id = ctx.hashes.cert_id_der(HashAlgorithm::Sha1, serial)?;
        let now = self.clock.now();
        // A request may have been answered and cached since the change (entries are
        // evicted on every change, so a cached answer states the current status): keep
        // it, so that clients see one answer and the key signs once.
        if self.cached(serial, &cert_id, now).is_some() {
            return Ok(());
        }
        let next_update = now.plus(self.config.ocsp_validity_secs);
        let der: bytes::Bytes = responder
            .responder
            .sign_response(
                now,
                &[SingleStatus { cert_id_der: &cert_id, status, this_update: now, next_update }],
                None,
            )?
            .into();
        let answer = OcspAnswer { der: der.clone(), caching: Some(caching(&der, now, next_update)) };
        self.insert_cached(serial, &cert_id, &responder.cert, answer, status, now, epoch);
        Ok(())
    }

    /// The eviction count: read it before the status of a certificate is read or
    /// committed, and hand it to [`Self::presign_issued`].
    pub fn epoch(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Pre-sign the answer of a certificate this node has just stored, from the record the
    /// store returned, so that neither a first request nor the change-log poll has to read
    /// it back. `epoch` is [`Self::epoch`] read before the store's transaction began: if a
    /// status change was applied since, nothing is cached (the poll signs it from the store).
    pub fn presign_issued(&self, c: &CertRecord, epoch: u64) {
        let status = record_status(&c.issuer, c);
        if let Err(err) = self.presign_status(&c.issuer, &c.serial, status, Some(epoch)) {
            tracing::warn!(serial = %c.serial, error = %err, "pre-signing failed");
        }
    }

    /// Whether the answer for a certificate's SHA-1 CertID (the form pre-signed) is cached
    /// and current.
    fn presigned(&self, issuer: &CaId, serial: &Serial, now: UnixTime) -> bool {
        self.issuer(issuer)
            .and_then(|ctx| ctx.hashes.cert_id_der(HashAlgorithm::Sha1, serial).ok())
            .is_some_and(|cert_id| self.cached(serial, &cert_id, now).is_some())
    }

    /// Number of cached OCSP responses.
    pub fn ocsp_cache_len(&self) -> usize {
        self.cache_len.load(std::sync::atomic::Ordering::Relaxed)
    }

    // --- CRLs ---

    /// The newest CRL of an issuer and shard (`None`: no such CRL).
    pub fn crl(&self, issuer: &str, shard: u16) -> Option<Arc<CrlRecord>> {
        let id = CaId::new(issuer).ok()?;
        self.crls.read().ok()?.get(&(id, shard)).cloned()
    }

    /// Number of CRL shards per issuer.
    pub fn crl_shards(&self) -> u16 {
        self.config.crl_shards.max(1)
    }

    /// Load every stored CRL that is newer than the one in memory.
    async fn reload_crls(&self) -> Result<(), AuthorityError> {
        for (issuer, shard, number) in self.store.crl_versions().await? {
            let have =
                self.crls.read().map_err(lock_err)?.get(&(issuer.clone(), shard)).map(|c| c.crl_number);
            if have.is_none_or(|h| h < number)
                && let Some(crl) = self.store.get_crl(&issuer, shard).await?
            {
                self.crls.write().map_err(lock_err)?.insert((issuer, shard), Arc::new(crl));
            }
        }
        Ok(())
    }

    /// Rebuild the CRLs of one issuer now (all shards).
    pub async fn rebuild_crls(&self, issuer: &CaId) -> Result<(), AuthorityError> {
        let Some(ctx) = self.issuer(issuer) else { return Ok(()) };
        let shards = self.crl_shards();
        for shard in 0..shards {
            let now = self.clock.now();
            let idp =
                (shards > 1).then(|| IssuingDistributionPoint { uri: ctx.urls.crl_shard_url(shard, shards) });
            let mut sink = Sink {
                ctx: ctx.clone(),
                shard: (shards > 1).then_some((shard, shards)),
                idp,
                this_update: now,
                next_update: now.plus(self.config.crl_validity_secs),
                builder: None,
            };
            let started = std::time::Instant::now();
            match self.store.rebuild_crl(&ctx.id, shard, now, &mut sink).await? {
                Some(crl) => {
                    crate::metrics::CRL_BUILD.observe(started.elapsed());
                    crate::metrics::CRL_BUILDS.inc();
                    tracing::info!(issuer = %ctx.id, shard, number = crl.crl_number, bytes = crl.der.len(), "CRL built");
                    self.crls.write().map_err(lock_err)?.insert((ctx.id.clone(), shard), Arc::new(crl));
                }
                None => tracing::debug!(issuer = %ctx.id, shard, "another node is building this CRL"),
            }
        }
        Ok(())
    }

    /// Rebuild every CRL that is missing or past half its validity.
    async fn rebuild_due_crls(&self) {
        let now = self.clock.now();
        for ctx in self.issuers() {
            let due = (0..self.crl_shards()).any(|shard| match self.crl(ctx.id.as_str(), shard) {
                None => true,
                Some(c) => now.0 >= c.this_update.0 + (c.next_update.0 - c.this_update.0) / 2,
            });
            if due && let Err(e) = self.rebuild_crls(&ctx.id).await {
                tracing::error!(issuer = %ctx.id, error = %e, "CRL rebuild failed");
            }
        }
    }

    fn mark_crl_dirty(&self, issuer: &CaId) {
        if let Ok(mut d) = self.crl_dirty.lock()
            && !d.contains(issuer)
        {
            d.push(issuer.clone());
        }
        self.crl_wake.notify_one();
    }

    // --- keeping current ---

    /// Keep OCSP answers and CRLs current until the process ends: poll the change log,
    /// rebuild CRLs after revocations (debounced) and before they expire, and rotate
    /// responder certificates. Runs as two tasks.
    pub fn run(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.poll_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.crl_loop().await });
    }

    async fn poll_loop(self: Arc<Self>) {
        let mut follower = match self.store.last_event_seq().await {
            Ok(seq) => LogFollower::new(seq),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the change log; starting from the beginning");
                LogFollower::new(0)
            }
        };
        let mut tick: u64 = 0;
        loop {
            tokio::time::sleep(self.config.poll_interval).await;
            tick += 1;
            if let Err(e) = self.poll_once(&mut follower).await {
                tracing::warn!(error = %e, "change log poll failed");
            }
            // About once a second: CRLs built by other nodes; once a minute: responders.
            let per_sec = (1000 / self.config.poll_interval.as_millis().max(1) as u64).max(1);
            if tick.is_multiple_of(per_sec)
                && let Err(e) = self.reload_crls().await
            {
                tracing::warn!(error = %e, "CRL reload failed");
            }
            if tick.is_multiple_of(per_sec * 60)
                && let Err(e) = self.refresh_responders().await
            {
                tracing::warn!(error = %e, "responder rotation failed");
            }
        }
    }

    /// Apply the change log entries this node has not seen.
    pub async fn poll_once(&self, follower: &mut LogFollower) -> Result<usize, AuthorityError> {
        let now = self.clock.now();
        let events = self.store.events_after(follower.low(now), 1000).await?;
        let fresh = follower.accept(events, now);
        // The statuses of the newly issued certificates, in one query (not one per event).
        // Those this node issued were pre-signed when it stored them: not read back.
        let issued: Vec<Serial> = fresh
            .iter()
            .filter(|e| e.kind == CertEventKind::Issued && !self.presigned(&e.issuer, &e.serial, now))
            .map(|e| e.serial.clone())
            .collect();
        let mut records: HashMap<Serial, CertRecord> = HashMap::new();
        if !issued.is_empty() {
            match self.store.certificates_by_serial(&issued).await {
                Ok(found) => records = found.into_iter().map(|c| (c.serial.clone(), c)).collect(),
                Err(err) => tracing::warn!(error = %err, "pre-signing: status lookup failed"),
            }
        }
        for e in &fresh {
            match e.kind {
                CertEventKind::Issued => {
                    // Taken out of the map: a serial issued twice in one poll is signed once.
                    let Some(c) = records.remove(&e.serial) else { continue };
                    if let Err(err) =
                        self.presign_status(&e.issuer, &e.serial, record_status(&e.issuer, &c), None)
                    {
                        tracing::warn!(serial = %e.serial, error = %err, "pre-signing failed");
                    }
                }
                CertEventKind::Revoked => {
                    self.evict(&e.serial);
                    if let Err(err) = self.presign(&e.issuer, &e.serial).await {
                        tracing::warn!(serial = %e.serial, error = %err, "pre-signing failed");
                    }
                    self.mark_crl_dirty(&e.issuer);
                }
            }
        }
        Ok(fresh.len())
    }

    async fn crl_loop(self: Arc<Self>) {
        loop {
            // Wake on revocations, or at least every minute to rebuild CRLs past half-life.
            let _ = tokio::time::timeout(Duration::from_secs(60), self.crl_wake.notified()).await;
            tokio::time::sleep(self.config.crl_debounce).await;
            let dirty: Vec<CaId> =
                self.crl_dirty.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
            for issuer in dirty {
                if let Err(e) = self.rebuild_crls(&issuer).await {
                    tracing::error!(issuer = %issuer, error = %e, "CRL rebuild failed");
                }
            }
            self.rebuild_due_crls().await;
        }
    }
}

fn caching(der: &[u8], this_update: UnixTime, next_update: UnixTime) -> Caching {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Caching::new(this_update, next_update, &hex::encode(&d.as_ref()[..16]))
}

/// Streams a CRL's entries into the encoder and signs it with the issuer's key.
struct Sink {
    ctx: Arc<IssuerCtx>,
    shard: Option<(u16, u16)>,
    idp: Option<IssuingDistributionPoint>,
    this_update: UnixTime,
    next_update: UnixTime,
    builder: Option<CrlBuilder>,
}

impl CrlSink for Sink {
    fn begin(&mut self, crl_number: u64, expected_entries: u64) -> Result<(), String> {
        let params = CrlParams {
            crl_number,
            this_update: self.this_update,
            next_update: self.next_update,
            idp: self.idp.clone(),
        };
        let mut builder = CrlBuilder::new(&self.ctx.info, self.ctx.signer.algorithm(), params)
            .map_err(|e| e.to_string())?;
        // The hint counts every shard: a shard gets about its share, plus room for the
        // spread of serials over shards and for a few revoked meanwhile (a shard that
        // still outgrows it just grows its buffer).
        let all = usize::try_from(expected_entries).unwrap_or(usize::MAX);
        let entries = match self.shard {
            None => all,
            Some((_, of)) => {
                let share = all / usize::from(of.max(1));
                share.saturating_add(share / 8).saturating_add(64)
            }
        };
        builder.reserve(entries);
        self.builder = Some(builder);
        Ok(())
    }

    fn entry(
        &mut self,
        serial: &Serial,
        revoked_at: UnixTime,
        reason: RevocationReason,
    ) -> Result<(), String> {
        if let Some((shard, of)) = self.shard
            && devid_ca::crl::shard_of(serial, of) != shard
        {
            return Ok(());
        }
        let b = self.builder.as_mut().ok_or("entry before begin")?;
        b.push(&CrlEntry { serial, revoked_at, reason: Some(reason) }).map_err(|e| e.to_string())
    }

    fn finish(&mut self) -> Result<(UnixTime, UnixTime, Vec<u8>), String> {
        let b = self.builder.take().ok_or("finish before begin")?;
        let der = b.finish(self.ctx.signer.as_ref()).map_err(|e| e.to_string())?;
        Ok((self.this_update, self.next_update, der))
    }
}

/// Follows the change log. A sequence number can become visible after a higher one (two
/// PostgreSQL transactions committing out of order), so numbers skipped over are
/// remembered for a while and read again; one that never appears (a rolled-back
/// transaction) is given up after [`LogFollower::GAP_PATIENCE_SECS`].
#[derive(Debug)]
pub struct LogFollower {
    last: i64,
    gaps: BTreeMap<i64, UnixTime>,
}

impl LogFollower {
    /// How long a missing sequence number is waited for.
    pub const GAP_PATIENCE_SECS: i64 = 10;

    /// Start after `seq` (events up to it are taken as seen).
    pub fn new(seq: i64) -> Self {
        LogFollower { last: seq, gaps: BTreeMap::new() }
    }

    /// Read from after this sequence number.
    pub fn low(&mut self, now: UnixTime) -> i64 {
        self.gaps.retain(|_, since| now.0 - since.0 <= Self::GAP_PATIENCE_SECS);
        self.gaps.keys().next().map(|g| g - 1).unwrap_or(self.last).min(self.last)
    }

    /// Keep the events not seen before, and note the gaps.
    pub fn accept(
        &mut self,
        events: Vec<devid_store::CertEvent>,
        now: UnixTime,
    ) -> Vec<devid_store::CertEvent> {
        let mut fresh = Vec::new();
        for e in events {
            if e.seq <= self.last {
                if self.gaps.remove(&e.seq).is_some() {
                    fresh.push(e);
                }
                continue;
            }
            for missing in (self.last + 1)..e.seq {
                self.gaps.insert(missing, now);
            }
            self.last = e.seq;
            fresh.push(e);
        }
        fresh
    }
}

/// The OCSP status of a stored certificate, as issued by `issuer` (RFC 6960 §2.2).
fn record_status(issuer: &CaId, c: &CertRecord) -> Status {
    if &c.issuer != issuer {
        return Status::Unknown;
    }
    match c.status {
        CertStatus::Issued => Status::Good,
        CertStatus::Revoked => {
            let (at, reason) = c.revocation.unwrap_or((c.created_at, RevocationReason::Unspecified));
            Status::Revoked { at, reason: Some(reason) }
        }
        // Recorded but never signed: it was never handed out.
        CertStatus::Pending => Status::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devid_store::CertEvent;

    fn ev(seq: i64) -> CertEvent {
        CertEvent {
            seq,
            serial: Serial::from_hex("01").expect("serial"),
            issuer: CaId::new("i").expect("id"),
            kind: CertEventKind::Revoked,
            at: UnixTime(0),
        }
    }

    #[test]
    fn caching_header_values_are_formatted_once_and_sliced() {
        // 1994-11-06 08:49:37 UTC, RFC 9110 §5.6.7's example, and 4 hours later.
        let c = Caching::new(UnixTime(784_111_777), UnixTime(784_126_177), "abc-1");
        assert_eq!(&c.last_modified_value()[..], b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&c.expires_value()[..], b"Sun, 06 Nov 1994 12:49:37 GMT");
        assert_eq!(&c.etag_value()[..], b"\"abc-1\"");
        assert_eq!(c.etag(), "abc-1");
        // Far dates keep the fixed width.
        let c = Caching::new(UnixTime(0), UnixTime(253_402_300_799), "");
        assert_eq!(&c.expires_value()[..], b"Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(c.etag(), "");
    }

    #[test]
    fn a_cached_answer_keeps_its_bytes_and_shares_the_responder_certificate() {
        let cert = bytes::Bytes::from_static(b"0\x82\x01\x00 the responder certificate");
        let caching = Caching::new(UnixTime(784_111_777), UnixTime(784_126_177), "e-1");
        let signed = [&b"0\x82 head of the cert-id response"[..], &cert[..]].concat();
        let answer = OcspAnswer { der: signed.clone().into(), caching: Some(caching.clone()) };
        let c =
            Cached::new(&answer.der, &caching, b"cert-id", &cert, UnixTime(5), Status::Good).expect("pack");
        assert_eq!(c.tail.as_ptr(), cert.as_ptr(), "the certificate is shared, not copied");
        // The CertID is read from the response, which echoes it.
        assert_eq!(c.buf.len(), signed.len() - cert.len() + caching.values.len());
        assert_eq!(c.cert_id(), b"cert-id");
        let back = c.answer();
        assert_eq!(&back.der[..], &signed[..]);
        let got = back.caching.expect("caching");
        assert_eq!((got.this_update, got.next_update), (caching.this_update, caching.next_update));
        assert_eq!(got.values, caching.values);
        assert_eq!(got.etag(), "e-1");

        // An answer that does not end with the certificate (another responder's) is kept
        // whole, and a CertID it does not hold is kept beside it.
        let other =
            OcspAnswer { der: bytes::Bytes::from_static(b"0\x03abc"), caching: Some(caching.clone()) };
        let c = Cached::new(&other.der, &caching, b"id", &cert, UnixTime(5), Status::Good).expect("pack");
        assert!(c.tail.is_empty());
        assert_eq!(c.answer().der, other.der);
        assert_eq!(c.cert_id(), b"id");
    }

    #[test]
    fn follower_sees_late_commits_once_and_gives_up_on_rollbacks() {
        let mut f = LogFollower::new(10);
        let t = UnixTime(100);
        assert_eq!(f.low(t), 10);
        // 11 and 13 are visible; 12 is still in flight.
        let got: Vec<i64> = f.accept(vec![ev(11), ev(13)], t).iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![11, 13]);
        assert_eq!(f.low(t), 11, "read again from before the gap");
        // The next read returns 12 (committed late) and 13 again: only 12 is new.
        let got: Vec<i64> = f.accept(vec![ev(12), ev(13)], t).iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![12]);
        assert_eq!(f.low(t), 13);
        // 15 arrives, 14 never does: after the patience, reading resumes after 15.
        f.accept(vec![ev(15)], t);
        assert_eq!(f.low(t), 13);
        assert_eq!(f.low(UnixTime(100 + LogFollower::GAP_PATIENCE_SECS + 1)), 15);
    }
}
