//! The store's error type, and the one place where sqlx errors are classified.

use std::fmt;

use devid_core::ErrorKind;

/// An error from the store: a coarse [`ErrorKind`] and a detail for the logs.
///
/// The detail never contains a secret (no password from a database URL, no token); it may
/// name the database that could not be reached, a constraint, or a serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: ErrorKind,
    detail: String,
}

impl StoreError {
    /// An error of `kind` with a detail for the logs.
    pub fn new(kind: ErrorKind, detail: String) -> Self {
        StoreError { kind, detail }
    }

    /// The coarse kind (the HTTP layer maps it to a status code).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The detail, as shown by `Display`.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        StoreError::new(ErrorKind::Internal, detail.into())
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        StoreError::new(ErrorKind::Conflict, detail.into())
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        StoreError::new(ErrorKind::NotFound, detail.into())
    }

    /// A device insert named an enrollment group that does not exist (deleted between the
    /// caller's check and the insert): [`ErrorKind::NotFound`].
    pub(crate) fn group_gone() -> Self {
        StoreError::not_found("the enrollment group named by the device does not exist (deleted meanwhile)")
    }

    /// Replace the detail of a [`ErrorKind::Conflict`] with a message that says what
    /// collided (the database's own message names only a constraint); other kinds pass.
    pub(crate) fn on_conflict(self, detail: impl FnOnce() -> String) -> Self {
        if self.kind == ErrorKind::Conflict {
            StoreError::new(ErrorKind::Conflict, format!("{} ({})", detail(), self.detail))
        } else {
            self
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for StoreError {}

/// Whether `e` is a foreign-key violation. The only parent row that is ever deleted is an
/// enrollment group (`Store::delete_group`, which refuses while devices name it), so on
/// inserting a device this means its group was deleted meanwhile, and on deleting a group
/// that a device named it meanwhile: callers at those sites say so ([`StoreError::group_gone`],
/// [`StoreError::conflict`]); elsewhere it stays [`ErrorKind::Internal`].
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.kind(), sqlx::error::ErrorKind::ForeignKeyViolation))
}

/// The error of a device insert: [`StoreError::group_gone`] for a foreign-key violation,
/// else `classify(e)`.
pub(crate) fn device_insert_error(
    e: sqlx::Error,
    classify: impl FnOnce(sqlx::Error) -> StoreError,
) -> StoreError {
    if is_foreign_key_violation(&e) { StoreError::group_gone() } else { classify(e) }
}

/// Classify a sqlx error. `target` names the database without credentials, e.g.
/// `PostgreSQL at 127.0.0.1:5432/devid` or `SQLite database /var/lib/devid/devid.db`.
///
/// - unique (and primary key) violations: [`ErrorKind::Conflict`];
/// - the database cannot be reached (pool timeout, I/O, TLS, a closed pool, a crashed SQLite
///   worker, SQLite `CANTOPEN`) or is transiently refusing work (PostgreSQL
///   connection-exception class `08`, shutdown/`cannot_connect_now` `57P0x`,
///   `too_many_connections`, serialization failures and deadlocks; SQLite `BUSY`/`LOCKED`):
///   [`ErrorKind::Unavailable`];
/// - `RowNotFound`: [`ErrorKind::NotFound`];
/// - everything else (other constraint violations, decoding errors, migration errors):
///   [`ErrorKind::Internal`].
pub(crate) fn from_sqlx(err: sqlx::Error, target: &str) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => from_database(db.as_ref(), target),
        E::RowNotFound => StoreError::not_found(format!("{target}: no such row")),
        E::PoolTimedOut => StoreError::new(
            ErrorKind::Unavailable,
            format!("{target} could not be reached: timed out waiting for a connection"),
        ),
        E::PoolClosed => {
            StoreError::new(ErrorKind::Unavailable, format!("{target}: the connection pool is closed"))
        }
        e @ (E::Io(_) | E::Tls(_) | E::WorkerCrashed) => {
            StoreError::new(ErrorKind::Unavailable, format!("{target} could not be reached: {e}"))
        }
        E::Migrate(m) => match *m {
            sqlx::migrate::MigrateError::Execute(inner) => {
                let e = from_sqlx(inner, target);
                StoreError::new(e.kind, format!("while running migrations: {}", e.detail))
            }
            sqlx::migrate::MigrateError::ExecuteMigration(inner, version) => {
                let e = from_sqlx(inner, target);
                StoreError::new(e.kind, format!("while running migration {version}: {}", e.detail))
            }
            other => StoreError::internal(format!("{target}: migrations: {other}")),
        },
        other => StoreError::internal(format!("{target}: {other}")),
    }
}

fn from_database(db: &dyn sqlx::error::DatabaseError, target: &str) -> StoreError {
    let message = db.message();
    if matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
        return StoreError::conflict(message.to_string());
    }
    if is_unavailable(db) {
        return StoreError::new(ErrorKind::Unavailable, format!("{target} is unavailable: {message}"));
    }
    StoreError::internal(format!("{target}: {message}"))
}

/// Whether a database error says "try again later" (or "cannot open the database") rather
/// than "this is wrong".
fn is_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        return code.starts_with("08") // connection_exception
            || matches!(
                code,
                "57P01" // admin_shutdown
                    | "57P02" // crash_shutdown
                    | "57P03" // cannot_connect_now
                    | "53300" // too_many_connections
                    | "40001" // serialization_failure
                    | "40P01" // deadlock_detected
            );
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes: the primary code is the low byte.
        // SQLITE_BUSY = 5, SQLITE_LOCKED = 6, SQLITE_CANTOPEN = 14.
        let primary = db.code().and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff);
        return matches!(primary, Some(5 | 6 | 14));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = from_sqlx(sqlx::Error::PoolTimedOut, "PostgreSQL at h:1/db");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("PostgreSQL at h:1/db"));
        assert_eq!(from_sqlx(sqlx::Error::RowNotFound, "x").kind(), ErrorKind::NotFound);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(from_sqlx(sqlx::Error::Io(io), "x").kind(), ErrorKind::Unavailable);
        assert_eq!(from_sqlx(sqlx::Error::Protocol("bad".into()), "x").kind(), ErrorKind::Internal);
    }

    #[test]
    fn on_conflict_rewrites_only_conflicts() {
        let e = StoreError::conflict("already exists").on_conflict(|| "device d exists".into());
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.detail().starts_with("device d exists"));
        let e = StoreError::internal("boom").on_conflict(|| "nope".into());
        assert_eq!(e.detail(), "boom");
    }
}
