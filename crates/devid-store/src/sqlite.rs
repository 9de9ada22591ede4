//! The SQLite store.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreError;
use crate::common::impl_store;
use crate::error::from_sqlx;

/// How long SQLite waits on a lock held by another connection (or process) before giving up
/// with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections on a file database, unless [`PoolSize`](crate::PoolSize) says.
pub(crate) const DEFAULT_READERS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The store on SQLite, for single-node installations and tests.
///
/// SQLite has one writer at a time, so the store has exactly **one write connection** (a
/// pool of one): writers queue in the pool, in process, instead of racing for the database
/// lock and failing with `SQLITE_BUSY`, and a write transaction is never upgraded from a
/// read lock. Write transactions start with `BEGIN IMMEDIATE`, so that a writer in another
/// process (a `devid` command run next to the server) makes them wait up to the 5-second
/// `busy_timeout` instead of failing. Single-statement reads go to a separate pool of
/// read-only (`query_only`) connections: in WAL mode readers never block the writer nor
/// wait for it, and see everything committed before they start.
///
/// Every connection runs with `journal_mode=WAL`, `synchronous=NORMAL` (durable across a
/// process crash; the last transactions may be lost on power failure), `foreign_keys=ON`
/// and `busy_timeout=5s`. The file is created if missing.
///
/// An in-memory database (`sqlite::memory:`) lives as long as its connection, so it gets
/// one connection that serves both reads and writes, and is never closed while the store
/// lives.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// `SQLite database PATH` or `SQLite in-memory database`: names the database in errors.
    target: String,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("target", &self.target).finish_non_exhaustive()
    }
}

/// Whether a SQLite URL names an in-memory database (`sqlite::memory:`,
/// `sqlite:file:x?mode=memory`).
fn is_in_memory(url: &str) -> bool {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory")
}

impl SqliteStore {
    /// Open the database at `url` (`sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`),
    /// creating the file if it is missing, run the migrations in `migrations/sqlite`, and
    /// return the store.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, crate::PoolSize::default()).await
    }

    /// [`Self::connect`] with at most `pool` read connections (4 when unset). There is
    /// always exactly one write connection, and an in-memory database has only that one.
    pub async fn connect_with(url: &str, pool: crate::PoolSize) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::new(devid_core::ErrorKind::InvalidInput, format!("invalid SQLite URL: {e}"))
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = is_in_memory(url);
        let target = if in_memory {
            "SQLite in-memory database".to_string()
        } else {
            format!("SQLite database {}", options.get_filename().display())
        };

        let writer_options = SqlitePoolOptions::new().max_connections(1).acquire_timeout(ACQUIRE_TIMEOUT);
        let writer_options = if in_memory {
            // The database goes away with its last connection: keep this one forever.
            writer_options.min_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            writer_options
        };
        let writer = writer_options.connect_with(options.clone()).await.map_err(|e| from_sqlx(e, &target))?;
        MIGRATOR.run(&writer).await.map_err(|e| from_sqlx(e.into(), &target))?;

        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(pool.0.map_or(DEFAULT_READERS, std::num::NonZeroU32::get))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.pragma("query_only", "ON"))
                .await
                .map_err(|e| from_sqlx(e, &target))?
        };
        tracing::debug!(database = %target, "store connected and migrated");
        Ok(SqliteStore { writer, reader, target })
    }

    /// Close both pools: wait for checked-out connections to come back, then close them all
    /// (which checkpoints the WAL). Calls after this fail with
    /// [`ErrorKind::Unavailable`](devid_core::ErrorKind::Unavailable).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// The single-row forms of the group commit's step-1 reads: the read connections, as
    /// every read (`PgStore` keeps them on its keyed connections).
    fn issuance_reader(&self) -> &SqlitePool {
        self.reader()
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.db_err(e))
    }

    /// [`Self::begin`]: SQLite's durability is the connection's (`synchronous`), not the
    /// transaction's.
    async fn begin_relaxed(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.begin().await
    }

    /// [`Self::begin`] (the PostgreSQL store plans these differently).
    async fn begin_keyed(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.begin().await
    }

    /// [`Self::begin`] (see [`Self::begin_keyed`] and [`Self::begin_relaxed`]).
    async fn begin_keyed_relaxed(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.begin().await
    }

    /// Where a read by a list of keys runs: a connection of the reader pool (SQLite plans
    /// each statement for its own values).
    async fn keyed_read(&self) -> Result<crate::common::KeyedRead<sqlx::Sqlite>, StoreError> {
        self.reader.acquire().await.map(crate::common::KeyedRead::Session).map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: sqlx::Error) -> StoreError {
        from_sqlx(e, &self.target)
    }

    /// [`crate::Store::advisories`]: none.
    async fn settings_advice(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Nothing to do: SQLite reuses a deleted row's space (its free-page list) without a
    /// VACUUM, unlike PostgreSQL (`PgStore::intents_deleted`).
    fn intents_deleted(&self, _n: u64) {}

    /// Nothing to do, as [`Self::intents_deleted`].
    fn challenges_deleted(&self, _n: u64) {}
}

impl_store!(SqliteStore, "sqlite");

impl SqliteStore {
    /// [`crate::Store::renewal_contexts`]: SQLite runs in this process (no round trips to
    /// save), so each pair is read as [`crate::Store::renewal_context`] reads one.
    async fn renewal_contexts_batch(
        &self,
        keys: &[(devid_core::Serial, Vec<u8>)],
    ) -> Result<Vec<Option<crate::RenewalContext>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (serial, csr) in keys {
            out.push(crate::Store::renewal_context(self, serial, csr).await?);
        }
        Ok(out)
    }

    /// [`crate::Store::device_for_csrs`], pair by pair, as `renewal_contexts_batch`.
    async fn device_for_csrs_batch(
        &self,
        keys: &[(devid_core::DeviceId, Vec<u8>)],
    ) -> Result<Vec<Option<crate::DeviceForCsr>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (id, csr) in keys {
            out.push(crate::Store::device_for_csr(self, id, csr).await?);
        }
        Ok(out)
    }

    /// SQLite has one writer: the write transaction the CRL is built in is the lock.
    async fn try_crl_lock(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _issuer: &devid_core::CaId,
        _shard: u16,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Store a CRL unless a newer one is stored (one bound parameter: SQLite runs in this
    /// process, there is no wire copy).
    async fn store_crl(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        crl: &crate::common::NewCrl<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO crls (issuer_id, shard, crl_number, this_update, next_update, der) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (issuer_id, shard) DO UPDATE SET crl_number = excluded.crl_number, \
             this_update = excluded.this_update, next_update = excluded.next_update, der = excluded.der \
             WHERE crls.crl_number < excluded.crl_number",
        )
        .bind(crl.issuer.as_str())
        .bind(i64::from(crl.shard))
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(crl.der)
        .execute(&mut **tx)
        .await
        .map_err(|e| self.db_err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_in_memory;

    #[test]
    fn in_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite:file:x?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite:/tmp/devid.db"));
        assert!(!is_in_memory("sqlite:///tmp/devid.db?mode=rwc"));
    }
}
