//! A fresh, empty database per test, on SQLite or PostgreSQL.
//!
//! PostgreSQL: a new database `devid_t_<16 hex>` is created through the admin URL in
//! `DEVID_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! dropped by [`TestDb::cleanup`] (or, if a test fails before that, when the [`TestDb`] is
//! dropped). An unreachable server fails the test with the command that fixes it: tests
//! never skip silently.
//!
//! SQLite: `sqlite:<tempdir>/devid.db`; the directory goes away with the [`TestDb`].

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The environment variable naming the PostgreSQL admin URL.
pub const ADMIN_URL_ENV: &str = "DEVID_TEST_DATABASE_URL";
/// The admin URL used when [`ADMIN_URL_ENV`] is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, in a temporary directory.
    Sqlite,
    /// PostgreSQL, a fresh database on the test server.
    Postgres,
}

/// Both backends, for looping in tests: `for b in BACKENDS { ... }`
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A fresh, empty database (no migrations run: the store runs them).
#[derive(Debug)]
pub struct TestDb {
    /// The URL to give to the store (`sqlite:…` or `postgres://…`).
    pub url: String,
    backend: Backend,
    /// SQLite: the directory holding the database file.
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the admin URL and the database name, until dropped.
    pg: Option<PgDb>,
}

#[derive(Debug)]
struct PgDb {
    admin_url: String,
    name: String,
}

impl TestDb {
    /// A fresh, empty database of this backend (no migrations run: the store runs them).
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("devid-test-db-")
                    .tempdir()
                    .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
                let url = format!("sqlite:{}", dir.path().join("devid.db").display());
                TestDb { url, backend, _dir: Some(dir), pg: None }
            }
            Backend::Postgres => {
                let admin_url = admin_url();
                let mut conn = admin_connect(&admin_url).await;
                let mut id = [0u8; 8];
                getrandom::fill(&mut id).unwrap_or_else(|e| panic!("getrandom failed: {e}"));
                let name = format!("devid_t_{}", hex::encode(id));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot CREATE DATABASE {name} at {}: {e}", redact(&admin_url))
                    });
                let _ = conn.close().await;
                let url = with_database(&admin_url, &name);
                TestDb { url, backend, _dir: None, pg: Some(PgDb { admin_url, name }) }
            }
        }
    }

    /// Which backend this database is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Drop the PostgreSQL database (`WITH (FORCE)`: open connections are terminated);
    /// SQLite: the temporary directory goes with `Drop`.
    pub async fn cleanup(mut self) {
        if let Some(pg) = self.pg.take() {
            drop_database(&pg).await;
        }
    }
}

impl Drop for TestDb {
    /// A test that failed before [`TestDb::cleanup`] still drops its database: on a thread
    /// of its own, with its own runtime (this may run inside an async test). Errors are
    /// ignored here, since this may run while a panic unwinds.
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            let handle = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(async move {
                        if let Ok(mut conn) = PgConnection::connect(&pg.admin_url).await {
                            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name);
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                            let _ = conn.close().await;
                        }
                    });
                }
            });
            let _ = handle.join();
        }
    }
}

async fn drop_database(pg: &PgDb) {
    let mut conn = admin_connect(&pg.admin_url).await;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name);
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot DROP DATABASE {} at {}: {e}", pg.name, redact(&pg.admin_url)));
    let _ = conn.close().await;
}

/// The admin URL: `DEVID_TEST_DATABASE_URL`, or the default.
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string())
}

async fn admin_connect(admin_url: &str) -> PgConnection {
    let shown = redact(admin_url);
    let options = PgConnectOptions::from_str(admin_url)
        .unwrap_or_else(|e| panic!("{ADMIN_URL_ENV} is not a PostgreSQL URL ({shown}): {e}"));
    let connect = PgConnection::connect_with(&options);
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
    result.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {shown}: {e}. Run the tests with `bash tests/run.sh` (it starts a \
             throwaway cluster), or start one (Debian: `apt-get install -y postgresql && pg_ctlcluster 15 main \
             start`) and set {ADMIN_URL_ENV}."
        )
    })
}

/// `url` with its database (path) replaced by `name`, keeping any `?query`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..].find('/').map(|i| authority_start + i).unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` without the password: `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _password)) => {
                format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_swap_and_redaction() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
