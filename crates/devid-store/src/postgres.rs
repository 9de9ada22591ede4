//! The PostgreSQL store.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::StoreError;
use crate::common::impl_store;
use crate::error::from_sqlx;

/// How many connections the pool opens at most, unless [`PoolSize`](crate::PoolSize) says.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a connection (including the first connect) before the
/// database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle for longer than this is checked (a round trip) before use.
///
/// sqlx checks every connection it hands out by default: one more round trip for every read
/// and every transaction. Under token enrollment load that was one in four of the server's
/// sends to PostgreSQL (4.0 against 2.9 per enrollment, counted with perf). A connection
/// in steady use is known to be alive; one that sat idle may have been closed by the
/// server or a proxy meanwhile, and is replaced if the check fails.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How many of the store's connections serve the issuance path at most (the keyed pool):
/// half of the pool size, at least 1 (none with a pool of 1). Their callers are the group
/// commit's queues, one batch of each kind at a time: the reads of step 1 (batched or a
/// lone key) and, with 3 connections or more ([`KEYED_WRITE_CONNECTIONS`]), the intents'
/// and completions' transactions.
///
/// sqlx hands out its idle connections in turn (first in, first out), so a pool spreads
/// its work over every connection it ever opened. Under token enrollment at 2,000/s the
/// issuance path's statements ran on 13 PostgreSQL backends in turn (8 for the writes, 5
/// for the lookups), each with cold caches for them. Confined to these connections,
/// PostgreSQL's CPU per x509 enrollment at saturation fell from 126–144 to 112–120 µs,
/// and per token enrollment below saturation by a few per cent (issue #6 note,
/// `bench/RESULTS.md`, twenty-second machine).
const KEYED_CONNECTIONS: u32 = 6;
/// The least keyed connections for the group commit's write transactions to run there too:
/// the step-1 reads, the intents and the completions each have a batch in flight at once.
const KEYED_WRITE_CONNECTIONS: u32 = 3;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// The store on PostgreSQL: up to 16 connections (or the configured
/// [`PoolSize`](crate::PoolSize)), of which half, at most [`KEYED_CONNECTIONS`], serve
/// the issuance path (see [`PgStore::keyed_read`] and [`PgStore::begin_keyed`]).
///
/// Transactions run at READ COMMITTED; the single-use and idempotency rules are conditional
/// writes (`UPDATE … WHERE token_used_at IS NULL`, `DELETE FROM issuance_intents …`), so
/// concurrent callers serialize on the row and all but the first see no matching row.
pub struct PgStore {
    pool: PgPool,
    /// Connections whose session plans as `begin_keyed` plans a transaction, read only
    /// unless a transaction says otherwise: see [`PgStore::keyed_read`]. `None` with a pool
    /// size of 1.
    keyed: Option<PgPool>,
    /// Whether the group commit's write transactions run on `keyed` too (it has at least
    /// [`KEYED_WRITE_CONNECTIONS`]).
    keyed_writes: bool,
    /// `PostgreSQL at host:port/database`: names the database in errors, without credentials.
    target: String,
    /// The vacuuming of the tables whose rows are deleted soon after they are written.
    intents: Arc<Churn>,
    challenges: Arc<Churn>,
}

/// How many rows of a churning table this store deletes before it vacuums that table.
///
/// Every issuance inserts an intent (about 1 KB with its TBSCertificate) and deletes it
/// once the certificate is stored; an attested enrollment leaves a redeemed nonce in
/// `challenges`, deleted in bulk an hour later. PostgreSQL keeps a deleted row until a
/// VACUUM, and until then an insert cannot reuse its space. Autovacuum looks at a table at
/// most once a minute (`autovacuum_naptime`), and not at all where it is off: measured with
/// it off (`ROUNDS=6 bench/enroll.sh 100000 256 token`), `issuance_intents` held 945 live
/// rows in 561 MB after 600,000 certificates, growing by about 1 KB with each. Vacuumed after
/// every 10,000 deletions it stays at about that many rows' pages, and the VACUUM reads
/// only those pages.
const VACUUM_AFTER_DELETED: u64 = 10_000;

/// A table that this store vacuums itself after [`VACUUM_AFTER_DELETED`] deletions.
struct Churn {
    table: &'static str,
    /// `VACUUM (…) <table>`.
    vacuum: &'static str,
    /// Rows deleted since the last VACUUM began.
    deleted: AtomicU64,
    /// A VACUUM of this table from this store is running.
    running: AtomicBool,
}

impl Churn {
    fn new(table: &'static str, vacuum: &'static str) -> Arc<Self> {
        Arc::new(Churn { table, vacuum, deleted: AtomicU64::new(0), running: AtomicBool::new(false) })
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

/// A row of a batched read with the 1-based position of its key (`k_i`).
struct Keyed<R> {
    i: i64,
    row: R,
}

impl<'r, R: sqlx::FromRow<'r, sqlx::postgres::PgRow>> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Keyed<R> {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Keyed { i: row.try_get("k_i")?, row: R::from_row(row)? })
    }
}

/// The planner settings of a transaction by lists of keys (see `PgStore::begin_keyed`).
macro_rules! keyed_settings {
    () => {
        "SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan"
    };
    // The same for a whole session (the keyed pool's connections).
    (session) => {
        "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan"
    };
}

/// The options of both pools: at most `max` connections, each checked only after it sat
/// idle ([`CHECK_IDLE_AFTER`]).
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl PgStore {
    /// Connect to `url` (`postgres://user:password@host:port/database?…`), run the
    /// migrations in `migrations/postgres`, and return the store.
    ///
    /// Fails with [`ErrorKind::Unavailable`](devid_core::ErrorKind::Unavailable) when the
    /// server cannot be reached within 5 seconds, and
    /// [`ErrorKind::InvalidInput`](devid_core::ErrorKind::InvalidInput) for a malformed URL.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, crate::PoolSize::default()).await
    }

    /// [`Self::connect`] with a pool of at most `pool` connections (16 when unset).
    pub async fn connect_with(url: &str, pool: crate::PoolSize) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::new(devid_core::ErrorKind::InvalidInput, format!("invalid PostgreSQL URL: {e}"))
        })?;
        let target = format!(
            "PostgreSQL at {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_else(|| options.get_username())
        );
        // The configured size bounds both pools together.
        let max = pool.0.map_or(DEFAULT_MAX_CONNECTIONS, std::num::NonZeroU32::get);
        let keyed_max = if max < 2 { 0 } else { (max / 2).clamp(1, KEYED_CONNECTIONS) };
        let pool = pool_options(max - keyed_max)
            .connect_with(options.clone())
            .await
            .map_err(|e| from_sqlx(e, &target))?;
        MIGRATOR.run(&pool).await.map_err(|e| from_sqlx(e.into(), &target))?;
        // Connected on first use: a store that never reads by lists opens none.
        let keyed = (keyed_max > 0).then(|| {
            pool_options(keyed_max)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(
                            conn,
                            concat!("SET default_transaction_read_only = on; ", keyed_settings!(session)),
                        )
                        .await
                        .map(|_| ())
                    })
                })
                .connect_lazy_with(options)
        });
        tracing::debug!(database = %target, "store connected and migrated");
        Ok(PgStore {
            pool,
            keyed,
            keyed_writes: keyed_max >= KEYED_WRITE_CONNECTIONS,
            target,
            intents: Churn::new("issuance_intents", "VACUUM (SKIP_LOCKED, TRUNCATE false) issuance_intents"),
            challenges: Churn::new("challenges", "VACUUM (SKIP_LOCKED, TRUNCATE false) challenges"),
        })
    }

    /// Close the pools: wait for checked-out connections to come back, then close them all.
    /// Calls after this fail with [`ErrorKind::Unavailable`](devid_core::ErrorKind::Unavailable).
    pub async fn close(&self) {
        if let Some(keyed) = &self.keyed {
            keyed.close().await;
        }
        self.pool.close().await;
    }

    /// Where a read by a list of keys (`key = ANY($1)`, one statement per chunk of keys)
    /// runs: a connection of the keyed pool, whose session has the planner settings that
    /// [`Self::begin_keyed`] gives a transaction, and is read only. One round trip a
    /// statement: such a read was a transaction with those settings before, whose `BEGIN`
    /// and `COMMIT` were two round trips more per batch. With a pool of one connection
    /// there is no keyed pool, and the read is still such a transaction.
    async fn keyed_read(&self) -> Result<crate::common::KeyedRead<sqlx::Postgres>, StoreError> {
        use crate::common::KeyedRead;
        match &self.keyed {
            Some(keyed) => keyed.acquire().await.map(KeyedRead::Session),
            None => {
                self.pool.begin_with(concat!("BEGIN READ ONLY; ", keyed_settings!())).await.map(KeyedRead::Tx)
            }
        }
        .map_err(|e| self.db_err(e))
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// Where the single-row forms of the group commit's step-1 reads run (a lone key of a
    /// batch): the keyed pool, beside the batched forms, so that the issuance path's
    /// statements stay on few backends (see [`KEYED_CONNECTIONS`]).
    fn issuance_reader(&self) -> &PgPool {
        self.keyed.as_ref().unwrap_or(&self.pool)
    }

    /// The pool and the target description, for bulk seeding (`crate::seed`).
    pub(crate) fn seed_access(&self) -> (&PgPool, &str) {
        (&self.pool, &self.target)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(|e| self.db_err(e))
    }

    /// A write transaction for statements that look rows up by a list of keys
    /// (`key = ANY($1)`, `crate::lists`), each of which a primary key serves.
    ///
    /// Sequential scans are off in it (`enable_seqscan = off`, for this transaction only).
    /// Such a statement is prepared once per connection, and after five executions
    /// PostgreSQL may keep a generic plan, which cannot see the array's length: planned while
    /// a table is nearly empty (a fresh store), that plan is a sequential scan, and it stays
    /// for the connection's life. Measured on an x509 enrollment run from an empty store:
    /// 231 buffer reads per `devices` lookup of a batch instead of about 5 a device, and
    /// 4 ms a call. Planning every call instead (`plan_cache_mode = force_custom_plan`)
    /// cost about 50 µs of PostgreSQL CPU per enrollment.
    ///
    /// The generic plan is also kept whatever the planner would prefer
    /// (`plan_cache_mode = force_generic_plan`): with sequential scans off it is the index
    /// plan, and the planner otherwise made custom plans anew for some of these statements
    /// on many calls (pg_stat_statements, a token enrollment and renewal run: 441 plans in
    /// 1,983 calls of the token redemption, 816 in 4,840 of the completion's device read;
    /// the batched renewal read, 2,736 plans in 3,389 calls, 0.54 ms each, more than its
    /// execution). The settings travel with the `BEGIN`: no extra round trip.
    ///
    /// With enough keyed connections ([`KEYED_WRITE_CONNECTIONS`]) the transaction runs on
    /// one of them, whose session has these settings already (`BEGIN READ WRITE` overrides
    /// its read-only default); otherwise on the main pool, with them set for it.
    async fn begin_keyed(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        match &self.keyed {
            Some(keyed) if self.keyed_writes => keyed.begin_with("BEGIN READ WRITE").await,
            _ => self.pool.begin_with(concat!("BEGIN; ", keyed_settings!())).await,
        }
        .map_err(|e| self.db_err(e))
    }

    /// [`Self::begin_keyed`] whose commit does not wait for its WAL flush, as
    /// [`Self::begin_relaxed`].
    async fn begin_keyed_relaxed(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        match &self.keyed {
            Some(keyed) if self.keyed_writes => {
                keyed.begin_with("BEGIN READ WRITE; SET LOCAL synchronous_commit = off").await
            }
            _ => {
                self.pool
                    .begin_with(concat!("BEGIN; ", keyed_settings!(), "; SET LOCAL synchronous_commit = off"))
                    .await
            }
        }
        .map_err(|e| self.db_err(e))
    }

    /// A write transaction for writes that a crash may lose at no harm: the commit does
    /// not wait for its WAL flush (`synchronous_commit = off`, for this transaction only;
    /// the setting travels with the `BEGIN`).
    async fn begin_relaxed(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await.map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: sqlx::Error) -> StoreError {
        from_sqlx(e, &self.target)
    }

    /// [`crate::Store::advisories`]: autovacuum off.
    async fn settings_advice(&self) -> Result<Vec<String>, StoreError> {
        let autovacuum: Option<(String,)> =
            sqlx::query_as("SELECT setting FROM pg_settings WHERE name = 'autovacuum'")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.db_err(e))?;
        Ok(match autovacuum {
            Some((s,)) if s == "off" => vec![format!(
                "autovacuum is off on {}: the space of updated and deleted rows is never reclaimed, except in \
                 issuance_intents and challenges, which devid vacuums itself; turn it on (autovacuum = on, \
                 PostgreSQL's default) or run VACUUM regularly",
                self.target
            )],
            _ => Vec::new(),
        })
    }

    /// `n` rows of `issuance_intents` were deleted (their certificates stored): see
    /// [`VACUUM_AFTER_DELETED`].
    fn intents_deleted(&self, n: u64) {
        self.deleted(&self.intents, n);
    }

    /// `n` expired rows of `challenges` were deleted: see [`VACUUM_AFTER_DELETED`].
    fn challenges_deleted(&self, n: u64) {
        self.deleted(&self.challenges, n);
    }

    /// Count `n` deletions from `churn`'s table and, past [`VACUUM_AFTER_DELETED`], vacuum it
    /// in a task of its own, one VACUUM at a time per table and store.
    ///
    /// `SKIP_LOCKED`: a VACUUM of the table that is already running (another replica's, or
    /// autovacuum's) makes this one a no-op instead of a wait. `TRUNCATE false`: giving the
    /// emptied pages at the table's end back to the file system takes an ACCESS EXCLUSIVE
    /// lock, during which every issuance would wait; the pages are reused instead. A VACUUM
    /// takes only a lock that inserts and deletes do not wait for. The deleted rows that a
    /// transaction still running may see stay until a later VACUUM.
    fn deleted(&self, churn: &Arc<Churn>, n: u64) {
        if n == 0 || churn.deleted.fetch_add(n, Ordering::Relaxed) + n < VACUUM_AFTER_DELETED {
            return;
        }
        if churn.running.swap(true, Ordering::AcqRel) {
            return;
        }
        churn.deleted.store(0, Ordering::Relaxed);
        let (pool, churn, target) = (self.pool.clone(), churn.clone(), self.target.clone());
        tokio::spawn(async move {
            match sqlx::raw_sql(churn.vacuum).execute(&pool).await {
                Ok(_) => tracing::debug!(table = churn.table, "vacuumed"),
                Err(e) if pool.is_closed() => {
                    tracing::debug!(table = churn.table, error = %e, "no VACUUM: store closed")
                }
                Err(e) => {
                    tracing::warn!(table = churn.table, error = %from_sqlx(e, &target), "VACUUM failed")
                }
            }
            churn.running.store(false, Ordering::Release);
        });
    }
}

impl_store!(PgStore, "postgres");

impl PgStore {
    /// [`crate::Store::renewal_contexts`]: one statement for all the pairs. Each pair is a
    /// row of `UNNEST … WITH ORDINALITY`; LATERAL joins read, per pair, the certificate by
    /// its primary key and the newest certificate or intent of its device for the CSR hash,
    /// as [`crate::Store::renewal_context`] does for one.
    async fn renewal_contexts_batch(
        &self,
        keys: &[(devid_core::Serial, Vec<u8>)],
    ) -> Result<Vec<Option<crate::RenewalContext>>, StoreError> {
        use crate::common::{cert_select, device_csr_columns, for_csr_select};
        const SQL: &str = concat!(
            "SELECT k.i AS k_i, ",
            device_csr_columns!(),
            ", cur.serial AS c_serial, cur.issuer_id AS c_issuer_id, cur.device_id AS c_device_id, \
             cur.status AS c_status, cur.not_before AS c_not_before, cur.not_after AS c_not_after, \
             cur.csr_sha256 AS c_csr_sha256, cur.tbs_der AS c_tbs_der, cur.cert_der AS c_cert_der, \
             cur.created_at AS c_created_at, cur.reason AS c_reason, cur.revoked_at AS c_revoked_at, \
             cur.predecessor AS c_predecessor \
             FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS k (serial, csr, i) \
             JOIN LATERAL (",
            cert_select!(),
            " WHERE c.serial = k.serial) AS cur ON TRUE JOIN devices d ON d.id = cur.device_id \
             LEFT JOIN LATERAL (",
            for_csr_select!("cur.device_id", "k.csr"),
            ") AS p ON TRUE"
        );
        let pairs: Vec<(String, Vec<u8>)> = keys.iter().map(|(s, c)| (s.to_hex(), c.clone())).collect();
        self.read_by_pairs(SQL, &pairs, crate::common::RenewalRow::split).await
    }

    /// [`crate::Store::device_for_csrs`]: one statement for all the pairs, each a row of
    /// `UNNEST … WITH ORDINALITY` joined with its device by primary key and, LATERAL, with
    /// the newest certificate or intent of that device for the CSR hash, as
    /// [`crate::Store::device_for_csr`] does for one.
    async fn device_for_csrs_batch(
        &self,
        keys: &[(devid_core::DeviceId, Vec<u8>)],
    ) -> Result<Vec<Option<crate::DeviceForCsr>>, StoreError> {
        use crate::common::{device_csr_columns, for_csr_select};
        const SQL: &str = concat!(
            "SELECT k.i AS k_i, ",
            device_csr_columns!(),
            " FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS k (id, csr, i) \
             JOIN devices d ON d.id = k.id LEFT JOIN LATERAL (",
            for_csr_select!("k.id", "k.csr"),
            ") AS p ON TRUE"
        );
        let pairs: Vec<(String, Vec<u8>)> =
            keys.iter().map(|(d, c)| (d.as_str().to_string(), c.clone())).collect();
        self.read_by_pairs(SQL, &pairs, crate::common::DeviceCsrRow::split).await
    }

    /// Run `sql`, a read of `(text, bytea)` pairs bound as two arrays (`$1`, `$2`) whose
    /// rows carry the 1-based position of their pair (`k_i`), over `pairs` in chunks of
    /// 1,000, by [`Self::keyed_read`] (the index plan, kept: see `begin_keyed`); an answer
    /// per pair, in the pairs' order (`None`: no row).
    async fn read_by_pairs<R, T>(
        &self,
        sql: &'static str,
        pairs: &[(String, Vec<u8>)],
        split: fn(R) -> Result<T, StoreError>,
    ) -> Result<Vec<Option<T>>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        const CHUNK: usize = 1000;
        let mut out: Vec<Option<T>> = pairs.iter().map(|_| None).collect();
        let mut reader = self.keyed_read().await?;
        for (n, chunk) in pairs.chunks(CHUNK).enumerate() {
            let (texts, bytes): (Vec<String>, Vec<Vec<u8>>) = chunk.iter().cloned().unzip();
            let rows: Vec<Keyed<R>> = sqlx::query_as(sql)
                .bind(texts)
                .bind(bytes)
                .fetch_all(reader.conn())
                .await
                .map_err(|e| self.db_err(e))?;
            for Keyed { i, row } in rows {
                let at = usize::try_from(i - 1)
                    .ok()
                    .map(|i| n * CHUNK + i)
                    .filter(|&at| at < pairs.len())
                    .ok_or_else(|| StoreError::internal(format!("a row for pair {i} of {}", pairs.len())))?;
                out[at] = Some(split(row)?);
            }
        }
        reader.finish().await.map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    /// The CRL build lock of (issuer, shard): a transaction-scoped advisory lock, so that one
    /// node builds a CRL at a time and the lock goes with the transaction however it ends.
    async fn try_crl_lock(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        issuer: &devid_core::CaId,
        shard: u16,
    ) -> Result<bool, StoreError> {
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("devid-crl:{issuer}:{shard}"))
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| self.db_err(e))?;
        Ok(got)
    }

    /// Store a CRL without a full-size copy in this process: the row is streamed to the
    /// server with `COPY crls … FROM STDIN (FORMAT binary)`, the DER in 1 MiB messages,
    /// once the older CRL of (issuer, shard) is deleted in the same transaction. (A bound
    /// parameter would be copied twice by the driver: for 1,000,000 revoked certificates
    /// that is 2 × 47 MiB more resident memory. A temporary table and an upsert from it,
    /// as before, wrote those 47 MiB twice: 160 ms for the COPY, then 235 ms for the
    /// upsert, `bench/RESULTS.md`, eighteenth machine.)
    ///
    /// Only [`crate::Store::rebuild_crl`] writes CRLs, under the build lock, with the
    /// number after the one it read: a newer CRL cannot be there. If one were, it is not
    /// deleted, and the COPY fails on the primary key instead of replacing it.
    async fn store_crl(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        crl: &crate::common::NewCrl<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM crls WHERE issuer_id = $1 AND shard = $2 AND crl_number < $3")
            .bind(crl.issuer.as_str())
            .bind(i64::from(crl.shard))
            .bind(crl.number)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.db_err(e))?;
        let len = i32::try_from(crl.der.len()).map_err(|_| StoreError::internal("CRL larger than 2 GiB"))?;
        let issuer = crl.issuer.as_str().as_bytes();
        let issuer_len =
            i32::try_from(issuer.len()).map_err(|_| StoreError::internal("issuer id too long"))?;
        // Binary COPY (PostgreSQL's COPY "Binary Format"): signature, flags, header
        // extension length, then one tuple: its field count, and each field as its length
        // and its bytes (text as UTF-8, bigint as 8 octets big-endian, bytea as is); then
        // the trailer (-1).
        let mut head = Vec::with_capacity(96 + issuer.len());
        head.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        head.extend_from_slice(&0i32.to_be_bytes());
        head.extend_from_slice(&0i32.to_be_bytes());
        head.extend_from_slice(&6i16.to_be_bytes());
        head.extend_from_slice(&issuer_len.to_be_bytes());
        head.extend_from_slice(issuer);
        for v in [i64::from(crl.shard), crl.number, crl.this_update, crl.next_update] {
            head.extend_from_slice(&8i32.to_be_bytes());
            head.extend_from_slice(&v.to_be_bytes());
        }
        head.extend_from_slice(&len.to_be_bytes());
        let conn: &mut sqlx::PgConnection = tx;
        let mut copy = conn
            .copy_in_raw(
                "COPY crls (issuer_id, shard, crl_number, this_update, next_update, der) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(|e| self.db_err(e))?;
        copy.send(head.as_slice()).await.map_err(|e| self.db_err(e))?;
        for chunk in crl.der.chunks(1 << 20) {
            copy.send(chunk).await.map_err(|e| self.db_err(e))?;
        }
        copy.send((-1i16).to_be_bytes().as_slice()).await.map_err(|e| self.db_err(e))?;
        copy.finish().await.map_err(|e| self.db_err(e))?;
        Ok(())
    }
}
