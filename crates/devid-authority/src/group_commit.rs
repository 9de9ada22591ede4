//! Group commit of the issuance cycle's writes.
//!
//! Every enrollment writes twice (step 4, the intent; step 6, the certificate and its audit
//! entry), and each write must be durable before the cycle goes on. One transaction per
//! write means one WAL flush per write, and step 6 also holds the audit chain's head row
//! until its commit, so under load the flushes line up one behind the other. Here the
//! writes of concurrent enrollments are queued and written together: one transaction, one
//! flush and one audit-head update for a whole batch, each caller answered only after that
//! commit. Nothing waits for a batch to fill: a batch is whatever queued while the previous
//! one was being written, so a lone request costs what it did before and the batches grow
//! with the load.
//!
//! Each queue has one writer at a time. With two (the earlier design), the second wrote the
//! next batch while the first waited for its flush, but the batches were half the size: one
//! writer cut PostgreSQL's CPU per token enrollment by about a quarter (issue #6 note).
//! Completions append to the audit chain on the head row's lock, so their batches went one
//! after the other anyway, and intents signed in-process no longer wait for a flush
//! ([`Store::record_intents`]).
//!
//! The same queues also batch the reads of step 1, each a round trip per request before:
//! the device of a token enrollment; the challenge (a stored one: stateless challenges need
//! no read) and the device with a prior answer for the CSR, of an attested one; what a
//! renewal checks. One statement by a list of keys
//! reads everything queued (a lone key: the single-row statement). Each read starts after
//! its request was queued, so it sees every write committed before.
//!
//! If a batch's transaction fails as a whole (a serial collision, the database going away),
//! its items are retried one by one, so one bad item answers for itself only.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use devid_core::{DeviceId, Serial, UnixTime};
use devid_store::{
    AuditEvent, CertRecord, ChallengeRecord, Completion, DeviceForCsr, DeviceMeta, DeviceRecord, Intent,
    PendingCert, Redeem, RenewalContext, SealedNonce, Store, StoreError,
};
use tokio::sync::oneshot;

/// The most items one transaction carries (bind parameters stay far below both databases'
/// limits: 12 a row for intents, 8 for audit entries).
pub(crate) const MAX_BATCH: usize = 256;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// One transaction for the items: an answer per item, or the error that failed it whole.
type Answers<O> = Result<Vec<Result<O, StoreError>>, StoreError>;
type Runner<I, O> = Box<dyn for<'a> Fn(&'a [I]) -> BoxFuture<'a, Answers<O>> + Send + Sync>;
type Job<I, O> = (I, oneshot::Sender<Result<O, StoreError>>);

/// A queue of writes drained by one task at a time, which takes everything queued (up to
/// [`MAX_BATCH`]) into one call of the runner.
pub(crate) struct Batcher<I, O> {
    inner: Arc<Inner<I, O>>,
}

struct Inner<I, O> {
    state: Mutex<State<I, O>>,
    run: Runner<I, O>,
    /// Whether its batches are writes, counted in [`crate::metrics::GROUP_COMMITS`].
    writes: bool,
}

struct State<I, O> {
    queue: VecDeque<Job<I, O>>,
    /// Whether a drainer is running.
    running: bool,
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    fn new(run: Runner<I, O>) -> Self {
        Self::with(run, true)
    }

    /// A queue of reads: batched the same way, not counted as commits.
    fn reads(run: Runner<I, O>) -> Self {
        Self::with(run, false)
    }

    fn with(run: Runner<I, O>, writes: bool) -> Self {
        Batcher {
            inner: Arc::new(Inner {
                state: Mutex::new(State { queue: VecDeque::new(), running: false }),
                run,
                writes,
            }),
        }
    }

    /// Queue `item` and wait for its own answer (after its batch committed). If the caller
    /// goes away meanwhile, the write still happens.
    pub(crate) async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = lock(&self.inner.state);
            st.queue.push_back((item, tx));
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(drain(self.inner.clone()));
        }
        rx.await.unwrap_or_else(|_| Err(no_answer()))
    }
}

fn no_answer() -> StoreError {
    StoreError::new(devid_core::ErrorKind::Internal, "the group commit ended without an answer".to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock is held cannot leave the queue half-changed (push/drain are
    // single calls), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives the drainer's slot back if its task ends by a panic.
struct Slot<'a, I, O> {
    inner: &'a Inner<I, O>,
    held: bool,
}

impl<I, O> Drop for Slot<'_, I, O> {
    fn drop(&mut self) {
        if self.held {
            lock(&self.inner.state).running = false;
        }
    }
}

async fn drain<I, O>(inner: Arc<Inner<I, O>>) {
    let mut slot = Slot { inner: &inner, held: true };
    loop {
        let batch: Vec<Job<I, O>> = {
            let mut st = lock(&inner.state);
            if st.queue.is_empty() {
                // Under the lock: a submitter that saw `running` set queued its item before
                // this check, so it is never left without a drainer.
                st.running = false;
                slot.held = false;
                return;
            }
            let n = st.queue.len().min(MAX_BATCH);
            st.queue.drain(..n).collect()
        };
        let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        if inner.writes {
            crate::metrics::GROUP_COMMITS.inc();
            crate::metrics::GROUP_COMMIT_ITEMS.add(items.len() as u64);
        }
        let results = match (inner.run)(&items).await {
            Ok(results) => results,
            Err(e) if items.len() > 1 => {
                tracing::warn!(error = %e, items = items.len(), "a group commit failed; writing its items one by one");
                let mut out = Vec::with_capacity(items.len());
                for item in &items {
                    out.push(match (inner.run)(std::slice::from_ref(item)).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| Err(no_answer())),
                        Err(e) => Err(e),
                    });
                }
                out
            }
            Err(e) => vec![Err(e)],
        };
        for (answer, result) in answers.into_iter().zip(results) {
            // The caller may have gone away; its write is done regardless.
            let _ = answer.send(result);
        }
    }
}

/// What an intent redeems, owned (it crosses into the batch's task).
#[derive(Debug, Clone)]
pub(crate) enum RedeemKey {
    Nothing,
    Token(Vec<u8>),
    Nonce(Vec<u8>),
    Sealed { hash: Vec<u8>, group: String, method: String, expires_at: UnixTime },
}

impl RedeemKey {
    pub(crate) fn of(r: Redeem<'_>) -> RedeemKey {
        match r {
            Redeem::Nothing => RedeemKey::Nothing,
            Redeem::Token(h) => RedeemKey::Token(h.to_vec()),
            Redeem::Nonce(h) => RedeemKey::Nonce(h.to_vec()),
            Redeem::Sealed(n) => RedeemKey::Sealed {
                hash: n.hash.to_vec(),
                group: n.group.to_string(),
                method: n.method.to_string(),
                expires_at: n.expires_at,
            },
        }
    }

    fn as_redeem(&self) -> Redeem<'_> {
        match self {
            RedeemKey::Nothing => Redeem::Nothing,
            RedeemKey::Token(h) => Redeem::Token(h),
            RedeemKey::Nonce(h) => Redeem::Nonce(h),
            RedeemKey::Sealed { hash, group, method, expires_at } => {
                Redeem::Sealed(SealedNonce { hash, group, method, expires_at: *expires_at })
            }
        }
    }
}

/// A signed certificate waiting for step 6.
pub(crate) struct Signed {
    pub serial: Serial,
    pub cert_der: Vec<u8>,
    pub audit: AuditEvent,
    pub now: UnixTime,
}

/// A device registered by its first enrollment (a group with optional registration): its
/// metadata and the audit entry of its registration, written with the intent.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub meta: DeviceMeta,
    pub audit: AuditEvent,
}

/// One intent for step 4.
pub(crate) struct IntentItem {
    pub pending: PendingCert,
    pub redeem: RedeemKey,
    /// The device this enrollment registers, inserted in the intent's transaction.
    pub register: Option<Registration>,
    /// Whether the commit must wait for the WAL flush (see [`Store::record_intents`]); a
    /// batch waits if any of its intents must.
    pub wait_for_flush: bool,
}

/// The batched writes of enrollment.
pub(crate) struct GroupCommit {
    /// Intents (step 4), with what they redeem and register.
    pub intents: Batcher<IntentItem, ()>,
    pub completions: Batcher<Signed, CertRecord>,
    pub challenges: Batcher<(ChallengeRecord, UnixTime), ()>,
    /// Token enrollments' device lookups (step 1), read together: one statement for the
    /// tokens that arrived while the previous read ran, instead of a round trip each.
    pub token_lookups: Batcher<Vec<u8>, Option<DeviceRecord>>,
    /// Attested enrollments' challenge lookups (step 1), read together in the same way.
    pub challenge_lookups: Batcher<Vec<u8>, Option<ChallengeRecord>>,
    /// Renewals' reads of what they check (the certificate presented, its device, a prior
    /// answer for the CSR), read together in the same way.
    pub renewal_lookups: Batcher<(Serial, Vec<u8>), Option<RenewalContext>>,
    /// Attested enrollments' reads of their device and a prior answer for the CSR, read
    /// together in the same way.
    pub csr_lookups: Batcher<(DeviceId, Vec<u8>), Option<DeviceForCsr>>,
    /// The purge time of the last purge of expired challenges.
    last_purge: Arc<std::sync::atomic::AtomicI64>,
}

/// One answer for one key, through the store.
type PairOne<K, R> = for<'a> fn(&'a dyn Store, &'a K) -> BoxFuture<'a, Result<Option<R>, StoreError>>;
/// An answer per key, in the keys' order, through the store.
type PairMany<K, R> = for<'a> fn(&'a dyn Store, &'a [K]) -> BoxFuture<'a, Result<Vec<Option<R>>, StoreError>>;

/// A read batcher whose store call answers each key in order: a lone key is read by `one`
/// (one round trip, no transaction), several by `many` (one statement for all).
fn pair_lookups<K: Send + Sync + 'static, R: Send + 'static>(
    store: Arc<dyn Store>,
    one: PairOne<K, R>,
    many: PairMany<K, R>,
) -> Batcher<K, Option<R>> {
    Batcher::reads(Box::new(move |keys: &[K]| {
        let store = store.clone();
        Box::pin(async move {
            if let [k] = keys {
                return Ok(vec![one(store.as_ref(), k).await]);
            }
            Ok(many(store.as_ref(), keys).await?.into_iter().map(Ok).collect())
        }) as BoxFuture<'_, _>
    }))
}

/// One row by its key, through the store.
type ReadOne<R> = for<'a> fn(&'a dyn Store, &'a [u8]) -> BoxFuture<'a, Result<Option<R>, StoreError>>;
/// The rows of several keys, in any order, through the store.
type ReadMany<R> = for<'a> fn(&'a dyn Store, &'a [Vec<u8>]) -> BoxFuture<'a, Result<Vec<R>, StoreError>>;

/// A read batcher by a unique binary key: a lone key is read by `one` (a single-row
/// statement: one round trip, no transaction), several by `many` (one statement for all),
/// whose rows are matched back to their keys by `key`.
fn lookups<R: Clone + Send + Sync + 'static>(
    store: Arc<dyn Store>,
    one: ReadOne<R>,
    many: ReadMany<R>,
    key: fn(&R) -> Option<&[u8]>,
) -> Batcher<Vec<u8>, Option<R>> {
    Batcher::reads(Box::new(move |keys: &[Vec<u8>]| {
        let store = store.clone();
        Box::pin(async move {
            if let [k] = keys {
                return Ok(vec![one(store.as_ref(), k).await]);
            }
            let found = many(store.as_ref(), keys).await?;
            let by_key: std::collections::HashMap<&[u8], &R> =
                found.iter().filter_map(|r| key(r).map(|k| (k, r))).collect();
            Ok(keys.iter().map(|k| Ok(by_key.get(k.as_slice()).map(|r| (*r).clone()))).collect())
        }) as BoxFuture<'_, _>
    }))
}

/// How often, at most, a challenge batch also purges expired challenges (seconds).
const PURGE_EVERY_SECS: i64 = 10;

impl GroupCommit {
    /// One drainer per queue (see the module's documentation).
    pub(crate) fn new(store: Arc<dyn Store>) -> GroupCommit {
        let s = store.clone();
        let intents = Batcher::new(Box::new(move |items: &[IntentItem]| {
            let store = s.clone();
            Box::pin(async move {
                let refs: Vec<Intent<'_>> = items
                    .iter()
                    .map(|it| Intent {
                        pending: &it.pending,
                        redeem: it.redeem.as_redeem(),
                        register: it.register.as_ref().map(|r| (&r.meta, &r.audit)),
                    })
                    .collect();
                let wait_for_flush = items.iter().any(|it| it.wait_for_flush);
                store.record_intents(&refs, wait_for_flush).await
            }) as BoxFuture<'_, _>
        }));
        let s = store.clone();
        let completions = Batcher::new(Box::new(move |items: &[Signed]| {
            let store = s.clone();
            Box::pin(async move {
                let now = items.iter().map(|c| c.now).max().unwrap_or(UnixTime(0));
                let refs: Vec<Completion<'_>> = items
                    .iter()
                    .map(|c| Completion { serial: &c.serial, cert_der: &c.cert_der, audit: &c.audit })
                    .collect();
                store.complete_issuances(&refs, now).await
            }) as BoxFuture<'_, _>
        }));
        let token_lookups = lookups(
            store.clone(),
            |s, h| s.device_by_token_hash(h),
            |s, hs| s.devices_by_token_hashes(hs),
            |d| d.token_hash.as_deref(),
        );
        let challenge_lookups = lookups(
            store.clone(),
            |s, h| s.get_challenge(h),
            |s, hs| s.get_challenges(hs),
            |c| Some(c.nonce_hash.as_slice()),
        );
        let renewal_lookups = pair_lookups(
            store.clone(),
            |s, k: &(Serial, Vec<u8>)| s.renewal_context(&k.0, &k.1),
            |s, ks| s.renewal_contexts(ks),
        );
        let csr_lookups = pair_lookups(
            store.clone(),
            |s, k: &(DeviceId, Vec<u8>)| s.device_for_csr(&k.0, &k.1),
            |s, ks| s.device_for_csrs(ks),
        );
        let s = store;
        // Expired challenges are purged at most every PURGE_EVERY_SECS (by the batch's
        // purge time), not with every batch: the purge scans the table.
        let last_purge = Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
        let purges = last_purge.clone();
        let challenges = Batcher::new(Box::new(move |items: &[(ChallengeRecord, UnixTime)]| {
            let store = s.clone();
            let last_purge = purges.clone();
            Box::pin(async move {
                let before = items.iter().map(|(_, p)| *p).min().unwrap_or(UnixTime(0));
                let purge = purge_due(&last_purge, before).then_some(before);
                let records: Vec<ChallengeRecord> = items.iter().map(|(c, _)| c.clone()).collect();
                store.insert_challenges(&records, purge).await?;
                Ok(items.iter().map(|_| Ok(())).collect())
            }) as BoxFuture<'_, _>
        }));
        GroupCommit {
            intents,
            completions,
            challenges,
            token_lookups,
            challenge_lookups,
            renewal_lookups,
            csr_lookups,
            last_purge,
        }
    }

    /// Whether challenges that expired before `before` are due to be purged (at most every
    /// PURGE_EVERY_SECS): if so, the caller purges them, and the next purge is due later.
    pub(crate) fn purge_due(&self, before: UnixTime) -> bool {
        purge_due(&self.last_purge, before)
    }
}

fn purge_due(last_purge: &std::sync::atomic::AtomicI64, before: UnixTime) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let last = last_purge.load(Relaxed);
    before.0 >= last.saturating_add(PURGE_EVERY_SECS)
        && last_purge.compare_exchange(last, before.0, Relaxed, Relaxed).is_ok()
}
