//! Variable-length lists in SQL, bound the way each backend does best.
//!
//! The batched statements of the group commit (intents, completions, challenges,
//! registrations, audit entries) carry one value per item, and the number of items changes
//! from batch to batch. Bound one placeholder per value, every batch size is its own SQL
//! text: on PostgreSQL each new text is parsed, analysed and planned again, and the driver
//! prepares it with an extra round trip and evicts another from its statement cache (a
//! token-enrollment run showed 721 distinct statements). So on PostgreSQL a list is **one
//! array parameter** (`= ANY($n)`, `INSERT … SELECT * FROM UNNEST($1, $2, …)`), and the text
//! of a statement no longer depends on the batch: it is prepared once per connection and
//! the driver keeps it. PostgreSQL then keeps a generic plan, which cannot see an array's
//! length, so the statements that look rows up by a list run where only index paths are
//! planned (transactions from `begin_keyed`, and `keyed_read`: sessions set up so, of the
//! PostgreSQL store). SQLite has no array type and prepares in-process, at no round trip:
//! it keeps one placeholder per value.

use sqlx::QueryBuilder;

/// One column of the rows of a multi-row `INSERT`, one value per row.
#[derive(Debug)]
pub(crate) enum Column {
    /// `TEXT NOT NULL`.
    Text(Vec<String>),
    /// `TEXT NULL`.
    OptText(Vec<Option<String>>),
    /// `BIGINT NOT NULL`.
    Int(Vec<i64>),
    /// `BIGINT NULL`.
    OptInt(Vec<Option<i64>>),
    /// `BYTEA NOT NULL` (SQLite: `BLOB`).
    Bytes(Vec<Vec<u8>>),
    /// `BYTEA NULL`.
    OptBytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::OptText(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::OptInt(v) => v.len(),
            Column::Bytes(v) => v.len(),
            Column::OptBytes(v) => v.len(),
        }
    }
}

/// How a backend binds a list (see the module documentation).
pub(crate) trait Lists: sqlx::Database + Sized {
    /// Whether `WITH a AS (INSERT …) UPDATE …` runs as one statement (PostgreSQL; SQLite
    /// allows no data-modifying statement in a `WITH`).
    const WRITABLE_CTE: bool;

    /// Whether a read can lock rows (`SELECT … FOR UPDATE`: PostgreSQL; SQLite has one
    /// writer at a time and no such clause).
    const ROW_LOCKS: bool;

    /// Append `{column}` matching any of `values` (`values` must not be empty).
    fn push_any_text(q: &mut QueryBuilder<Self>, column: &str, values: Vec<String>);

    /// As [`Lists::push_any_text`], for a binary column.
    fn push_any_bytes(q: &mut QueryBuilder<Self>, column: &str, values: Vec<Vec<u8>>);

    /// Append the rows of an `INSERT INTO t (c1, c2, …) `, given column by column in the
    /// order of the column list. Every column must hold as many values as the first.
    fn push_rows(q: &mut QueryBuilder<Self>, columns: Vec<Column>);
}

impl Lists for sqlx::Postgres {
    const WRITABLE_CTE: bool = true;
    const ROW_LOCKS: bool = true;

    fn push_any_text(q: &mut QueryBuilder<Self>, column: &str, values: Vec<String>) {
        q.push(column).push(" = ANY(").push_bind(values).push(")");
    }

    fn push_any_bytes(q: &mut QueryBuilder<Self>, column: &str, values: Vec<Vec<u8>>) {
        q.push(column).push(" = ANY(").push_bind(values).push(")");
    }

    fn push_rows(q: &mut QueryBuilder<Self>, columns: Vec<Column>) {
        debug_assert!(columns.windows(2).all(|w| w[0].len() == w[1].len()));
        // UNNEST of several arrays zips them into rows; the parameter types come from the
        // binds (TEXT[], INT8[], BYTEA[]), so the text needs no casts.
        q.push("SELECT * FROM UNNEST(");
        let mut sep = q.separated(", ");
        for c in columns {
            match c {
                Column::Text(v) => sep.push_bind(v),
                Column::OptText(v) => sep.push_bind(v),
                Column::Int(v) => sep.push_bind(v),
                Column::OptInt(v) => sep.push_bind(v),
                Column::Bytes(v) => sep.push_bind(v),
                Column::OptBytes(v) => sep.push_bind(v),
            };
        }
        q.push(")");
    }
}

impl Lists for sqlx::Sqlite {
    const WRITABLE_CTE: bool = false;
    const ROW_LOCKS: bool = false;

    fn push_any_text(q: &mut QueryBuilder<Self>, column: &str, values: Vec<String>) {
        sqlite_in(q, column, values);
    }

    fn push_any_bytes(q: &mut QueryBuilder<Self>, column: &str, values: Vec<Vec<u8>>) {
        sqlite_in(q, column, values);
    }

    fn push_rows(q: &mut QueryBuilder<Self>, mut columns: Vec<Column>) {
        debug_assert!(columns.windows(2).all(|w| w[0].len() == w[1].len()));
        let rows = columns.first().map_or(0, Column::len);
        q.push("VALUES ");
        for row in 0..rows {
            if row > 0 {
                q.push(", ");
            }
            q.push("(");
            let mut sep = q.separated(", ");
            // Each value is moved out of its column (left empty behind), not copied. A
            // column shorter than the first (a caller's bug, asserted above) binds NULL,
            // which the NOT NULL columns refuse, rather than panicking.
            for c in &mut columns {
                match c {
                    Column::Text(v) => sep.push_bind(v.get_mut(row).map(std::mem::take)),
                    Column::OptText(v) => sep.push_bind(v.get_mut(row).and_then(Option::take)),
                    Column::Int(v) => sep.push_bind(v.get(row).copied()),
                    Column::OptInt(v) => sep.push_bind(v.get(row).copied().flatten()),
                    Column::Bytes(v) => sep.push_bind(v.get_mut(row).map(std::mem::take)),
                    Column::OptBytes(v) => sep.push_bind(v.get_mut(row).and_then(Option::take)),
                };
            }
            q.push(")");
        }
    }
}

/// `column IN (?, ?, …)`, one placeholder per value.
fn sqlite_in<T>(q: &mut QueryBuilder<sqlx::Sqlite>, column: &str, values: Vec<T>)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    q.push(column).push(" IN (");
    let mut sep = q.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    q.push(")");
}

/// Append `column` matching any of `values`, as the backend `DB` binds a list.
pub(crate) fn any_text<DB: Lists>(q: &mut QueryBuilder<DB>, column: &str, values: Vec<String>) {
    DB::push_any_text(q, column, values);
}

/// As [`any_text`], for a binary column.
pub(crate) fn any_bytes<DB: Lists>(q: &mut QueryBuilder<DB>, column: &str, values: Vec<Vec<u8>>) {
    DB::push_any_bytes(q, column, values);
}

/// Append the rows of a multi-row `INSERT`, as the backend `DB` binds them.
pub(crate) fn rows<DB: Lists>(q: &mut QueryBuilder<DB>, columns: Vec<Column>) {
    DB::push_rows(q, columns);
}

/// [`Lists::WRITABLE_CTE`] of the backend `q` is built for.
pub(crate) fn writable_cte<DB: Lists>(_q: &QueryBuilder<DB>) -> bool {
    DB::WRITABLE_CTE
}

/// [`Lists::WRITABLE_CTE`] of the backend of the transaction `tx`.
pub(crate) fn writable_cte_in<DB: Lists>(_tx: &sqlx::Transaction<'_, DB>) -> bool {
    DB::WRITABLE_CTE
}

/// [`Lists::ROW_LOCKS`] of the backend of the transaction `tx`.
pub(crate) fn row_locks_in<DB: Lists>(_tx: &sqlx::Transaction<'_, DB>) -> bool {
    DB::ROW_LOCKS
}
