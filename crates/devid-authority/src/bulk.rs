//! Bulk pre-registration: a factory line sends a batch of up to [`MAX_BATCH_ROWS`] devices
//! (JSON lines or CSV) under a batch id it chooses, and gets one result per row.
//!
//! - **Parsing** ([`parse_batch`]) checks every row on its own: a malformed row is rejected
//!   with a reason and the rest of the batch still applies. Only a body that is not a batch
//!   at all (not UTF-8, no CSV header, no JSON line that parses, too many rows, no rows) is
//!   refused as a whole.
//! - **Registering** ([`import_batch`]) inserts the valid rows in chunks of [`CHUNK_ROWS`],
//!   one transaction each, with `ON CONFLICT (id) DO NOTHING`: a device that exists already
//!   (from an earlier submission of the same batch, or otherwise) is reported as present and
//!   left untouched. So a resubmission creates no duplicates, and a batch that failed midway
//!   is resumed by sending it again: the chunks that committed are present, the rest is
//!   created.
//! - **Tokens**: each created device gets a one-time enrollment token, returned once in
//!   the report; only its SHA-256 is stored. A present device gets no new token: a client
//!   that lost the first answer cannot get those tokens back and must give the devices new
//!   tokens.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use devid_core::{Clock, DeviceId, Entropy};
use devid_store::{BatchDevice, Store};

use crate::{Authority, AuthorityError, EnrollToken};

/// The most rows a batch may have.
pub const MAX_BATCH_ROWS: usize = 100_000;
/// Rows per store transaction: the unit of progress, and of resumption after a failure.
pub const CHUNK_ROWS: usize = 1000;
/// The most labels a device may have.
pub const MAX_LABELS: usize = 64;
/// The longest label key, in characters.
pub const MAX_LABEL_KEY: usize = 128;
/// The longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 256;
/// The CSV columns a header may name (`id` is required).
pub const CSV_COLUMNS: [&str; 4] = ["id", "method", "group", "labels"];

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    /// One JSON object per line: `{"id", "method"?, "group"?, "labels"?}`.
    JsonLines,
    /// RFC 4180 CSV with a header row naming the columns (`id,method,group,labels`);
    /// labels are `key=value;key=value`.
    Csv,
}

impl BatchFormat {
    /// The format of a media type (`application/x-ndjson`, `application/jsonl`,
    /// `text/csv`; parameters such as `charset` are ignored).
    pub fn from_media_type(content_type: &str) -> Option<BatchFormat> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => Some(BatchFormat::JsonLines),
            "text/csv" => Some(BatchFormat::Csv),
            _ => None,
        }
    }
}

impl FromStr for BatchFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json-lines" => Ok(BatchFormat::JsonLines),
            "csv" => Ok(BatchFormat::Csv),
            other => Err(format!("unknown batch format '{other}' (jsonl or csv)")),
        }
    }
}

/// A client-chosen batch id: 1–64 characters of `A–Z a–z 0–9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId(String);

impl BatchId {
    /// Check a batch id.
    pub fn new(s: &str) -> Result<BatchId, AuthorityError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(BatchId(s.to_string()))
        } else {
            Err(AuthorityError::Invalid(format!(
                "invalid batch id '{}': 1-64 characters of A-Z a-z 0-9 . _ -",
                truncate(s, 80)
            )))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid row: what gets registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDevice {
    /// The device id.
    pub id: DeviceId,
    /// Its labels (empty: none).
    pub labels: BTreeMap<String, String>,
    /// Its own method (`None`: a token, and whatever its group allows).
    pub method: Option<crate::groups::Method>,
    /// Its enrollment group.
    pub group: Option<String>,
}

/// One row of a batch, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The line of the body where the row starts (1-based; the CSV header is a line too).
    pub line: u64,
    /// The id as written (empty when there was none), for the report.
    pub id: String,
    /// The device, or why the row is rejected.
    pub device: Result<RowDevice, String>,
}

/// What happened to a row.
#[derive(Debug)]
pub enum RowResult {
    /// Registered now, with this one-time enrollment token (shown once).
    Created(Option<EnrollToken>),
    /// The device exists already (no new token).
    Present,
    /// Not registered, with the reason.
    Rejected(String),
}

/// A row's outcome.
#[derive(Debug)]
pub struct RowOutcome {
    /// The line of the body where the row starts.
    pub line: u64,
    /// The id as written.
    pub id: String,
    /// What happened.
    pub result: RowResult,
}

/// The answer to a batch: counts and one outcome per row, in body order.
#[derive(Debug)]
pub struct BatchReport {
    /// The batch id.
    pub batch_id: String,
    /// Rows registered now.
    pub created: usize,
    /// Rows whose device existed already.
    pub present: usize,
    /// Rows rejected.
    pub rejected: usize,
    /// Every row.
    pub rows: Vec<RowOutcome>,
}

/// Progress after a committed chunk.
#[derive(Debug)]
pub struct ChunkDone<'a> {
    /// Valid rows stored so far (created or present).
    pub done: usize,
    /// Valid rows in the batch.
    pub total: usize,
    /// The outcomes of this chunk's rows (created or present), tokens included: a caller
    /// that writes them out now keeps them even if a later chunk fails.
    pub rows: &'a [RowOutcome],
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn too_many() -> AuthorityError {
    AuthorityError::Invalid(format!("the batch has more than {MAX_BATCH_ROWS} rows"))
}

/// Parse a batch body. Row problems are rejected rows; only a body that is not a batch at
/// all is an error ([`AuthorityError::Invalid`]).
pub fn parse_batch(body: &[u8], format: BatchFormat) -> Result<Vec<BatchRow>, AuthorityError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| AuthorityError::Invalid(format!("the batch is not UTF-8 text: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rows = match format {
        BatchFormat::JsonLines => parse_jsonl(text)?,
        BatchFormat::Csv => parse_csv(text)?,
    };
    if rows.is_empty() {
        return Err(AuthorityError::Invalid("the batch has no rows".into()));
    }
    Ok(rows)
}

fn parse_jsonl(text: &str) -> Result<Vec<BatchRow>, AuthorityError> {
    let mut rows = Vec::new();
    let mut any_json = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if rows.len() == MAX_BATCH_ROWS {
            return Err(too_many());
        }
        let line_no = n as u64 + 1;
        let row = match serde_json::from_str::<serde_json::Value>(line) {
            Err(e) => BatchRow { line: line_no, id: String::new(), device: Err(format!("bad JSON: {e}")) },
            Ok(v) => {
                any_json = true;
                json_row(line_no, v)
            }
        };
        rows.push(row);
    }
    if !rows.is_empty() && !any_json {
        return Err(AuthorityError::Invalid("the batch is not JSON lines: no line is JSON".into()));
    }
    Ok(rows)
}

fn json_row(line: u64, v: serde_json::Value) -> BatchRow {
    let serde_json::Value::Object(map) = v else {
        return BatchRow { line, id: String::new(), device: Err("a row must be a JSON object".into()) };
    };
    let id = match map.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return BatchRow { line, id: String::new(), device: Err("id must be a string".into()) };
        }
        None => return BatchRow { line, id: String::new(), device: Err("id is missing".into()) },
    };
    let device = (|| {
        if let Some(k) = map.keys().find(|k| !CSV_COLUMNS.contains(&k.as_str())) {
            return Err(format!("unknown field '{}'", truncate(k, 64)));
        }
        let text = |name: &str| -> Result<Option<&str>, String> {
            match map.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("{name} must be a string")),
            }
        };
        let method = text("method")?;
        let group = text("group")?;
        let labels = match map.get("labels") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(m)) => {
                let mut labels = BTreeMap::new();
                for (k, v) in m {
                    let serde_json::Value::String(v) = v else {
                        return Err(format!("label '{}' must be a string", truncate(k, 64)));
                    };
                    labels.insert(k.clone(), v.clone());
                }
                labels
            }
            Some(_) => return Err("labels must be a JSON object of strings".into()),
        };
        check_row(&id, method, group, labels)
    })();
    BatchRow { line, id: truncate(&id, 200), device }
}

/// The checks shared by both formats.
fn check_row(
    id: &str,
    method: Option<&str>,
    group: Option<&str>,
    labels: BTreeMap<String, String>,
) -> Result<RowDevice, String> {
    let id = DeviceId::new(id).map_err(|e| format!("invalid id: {e}"))?;
    let method = match method.map(str::trim).filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => Some(
            m.parse::<crate::groups::Method>()
                .map_err(|_| format!("unknown method {} (token, x509, tpm or symmetric)", truncate(m, 64)))?,
        ),
    };
    let group = group.map(str::trim).filter(|g| !g.is_empty()).map(str::to_string);
    if method.is_some_and(|m| m != crate::groups::Method::Token) && group.is_none() {
        return Err(format!("method {} needs a group", method.map(|m| m.as_str()).unwrap_or("")));
    }
    check_labels(&labels)?;
    Ok(RowDevice { id, labels, method, group })
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        let key_ok = (1..=MAX_LABEL_KEY).contains(&k.chars().count())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'));
        if !key_ok {
            return Err(format!(
                "invalid label key '{}': 1-{MAX_LABEL_KEY} characters of A-Z a-z 0-9 . _ - / :",
                truncate(k, 64)
            ));
        }
        if v.chars().count() > MAX_LABEL_VALUE || v.chars().any(|c| c.is_control() || c == ';') {
            return Err(format!(
                "invalid value of label '{k}': at most {MAX_LABEL_VALUE} characters, no control characters or ';'"
            ));
        }
    }
    Ok(())
}

/// `key=value;key=value` (empty: no labels).
fn csv_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("labels: '{}' is not key=value", truncate(part, 64)));
        };
        if labels.insert(k.trim().to_string(), v.trim().to_string()).is_some() {
            return Err(format!("labels: key '{}' given twice", truncate(k.trim(), 64)));
        }
    }
    Ok(labels)
}

/// One CSV record: the line it starts on, and its fields (or why it does not parse).
type CsvRecord = (u64, Result<Vec<String>, String>);

/// RFC 4180 records (quoted fields may hold commas, newlines and doubled quotes; CRLF or
/// LF line ends). Blank lines are skipped.
fn csv_records(text: &str) -> Vec<CsvRecord> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line: u64 = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut error: Option<String> = None;
        let mut quoted = false; // inside quotes
        let mut was_quoted = false; // the current field was quoted (and closed)
        loop {
            let Some(c) = chars.next() else {
                if quoted && error.is_none() {
                    error = Some("unterminated quoted field".into());
                }
                break;
            };
            if c == '\n' {
                line += 1;
            }
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                        was_quoted = true;
                    }
                } else {
                    field.push(c);
                }
                continue;
            }
            match c {
                '\n' => break,
                '\r' if chars.peek() == Some(&'\n') => {}
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '"' if field.is_empty() && !was_quoted => {
                    quoted = true;
                }
                c => {
                    if (was_quoted || c == '"') && error.is_none() {
                        error = Some("a quote in a field must be inside a quoted field, doubled".into());
                    }
                    field.push(c);
                }
            }
        }
        if fields.is_empty() && !was_quoted && field.trim().is_empty() && error.is_none() {
            continue;
        }
        fields.push(field);
        out.push((start, error.map_or(Ok(fields), Err)));
    }
    out
}

fn parse_csv(text: &str) -> Result<Vec<BatchRow>, AuthorityError> {
    let mut records = csv_records(text).into_iter();
    let Some((_, header)) = records.next() else { return Ok(Vec::new()) };
    let header = header.map_err(|e| AuthorityError::Invalid(format!("CSV header: {e}")))?;
    let header: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let mut col: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        let Some(name) = CSV_COLUMNS.iter().find(|c| **c == h.as_str()) else {
            return Err(AuthorityError::Invalid(format!(
                "CSV header: unknown column '{}' (the header row names the columns: id,method,group,labels)",
                truncate(h, 64)
            )));
        };
        if col.insert(name, i).is_some() {
            return Err(AuthorityError::Invalid(format!("CSV header: column '{name}' given twice")));
        }
    }
    let Some(&id_col) = col.get("id") else {
        return Err(AuthorityError::Invalid(
            "CSV header: no 'id' column (the header row names the columns: id,method,group,labels)".into(),
        ));
    };
    let mut rows = Vec::new();
    for (line, fields) in records {
        if rows.len() == MAX_BATCH_ROWS {
            return Err(too_many());
        }
        let fields = match fields {
            Ok(f) => f,
            Err(e) => {
                rows.push(BatchRow { line, id: String::new(), device: Err(format!("bad CSV: {e}")) });
                continue;
            }
        };
        let id = fields.get(id_col).map(|s| truncate(s.trim(), 200)).unwrap_or_default();
        if fields.len() != header.len() {
            let reason = format!("bad CSV: expected {} fields, found {}", header.len(), fields.len());
            rows.push(BatchRow { line, id, device: Err(reason) });
            continue;
        }
        let get = |name: &str| col.get(name).map(|&i| fields[i].as_str());
        let device = csv_labels(get("labels").unwrap_or(""))
            .and_then(|labels| check_row(fields[id_col].trim(), get("method"), get("group"), labels));
        rows.push(BatchRow { line, id, device });
    }
    Ok(rows)
}

/// Register the valid rows of a parsed batch, in chunks of [`CHUNK_ROWS`] (one transaction
/// each), and report every row. `on_chunk` is called after each committed chunk.
///
/// A store failure stops the import with the error; the chunks committed before it stay,
/// and sending the batch again continues from there.
pub async fn import_batch(
    store: &dyn Store,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    batch_id: &BatchId,
    rows: Vec<BatchRow>,
    actor: &crate::Actor,
    on_chunk: &mut (dyn FnMut(&ChunkDone<'_>) + Send),
) -> Result<BatchReport, AuthorityError> {
    if rows.len() > MAX_BATCH_ROWS {
        return Err(too_many());
    }
    let mut outcomes: Vec<Option<RowOutcome>> = Vec::with_capacity(rows.len());
    let mut valid: Vec<(usize, u64, String, RowDevice)> = Vec::new();
    let mut first_line: HashMap<DeviceId, u64> = HashMap::new();
    for (i, row) in rows.into_iter().enumerate() {
        let rejected = |reason: String, line: u64, id: String| {
            Some(RowOutcome { line, id, result: RowResult::Rejected(reason) })
        };
        match row.device {
            Err(reason) => outcomes.push(rejected(reason, row.line, row.id)),
            Ok(device) => {
                if let Some(first) = first_line.get(&device.id) {
                    outcomes.push(rejected(
                        format!("duplicate id (first on line {first})"),
                        row.line,
                        row.id,
                    ));
                } else {
                    first_line.insert(device.id.clone(), row.line);
                    outcomes.push(None);
                    valid.push((i, row.line, row.id, device));
                }
            }
        }
    }
    // Groups must exist and allow the row's method; looked up once per group.
    let mut groups: HashMap<String, Option<Vec<crate::groups::Method>>> = HashMap::new();
    let mut checked = Vec::with_capacity(valid.len());
    for (i, line, id, d) in valid {
        if !actor.may_use_group(d.group.as_deref()) {
            let reason = "outside this credential's groups".to_string();
            outcomes[i] = Some(RowOutcome { line, id, result: RowResult::Rejected(reason) });
            continue;
        }
        if let Some(g) = &d.group {
            if !groups.contains_key(g) {
                let methods = store.get_group(g).await?.map(|r| crate::groups::methods_of(&r));
                groups.insert(g.clone(), methods);
            }
            let reason = match (groups.get(g).and_then(|m| m.as_ref()), d.method) {
                (None, _) => Some(format!("unknown group {}", truncate(g, 64))),
                (Some(allowed), Some(m)) if !allowed.contains(&m) => {
                    Some(format!("group {} does not allow method {}", truncate(g, 64), m))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                outcomes[i] = Some(RowOutcome { line, id, result: RowResult::Rejected(reason) });
                continue;
            }
        }
        checked.push((i, line, id, d));
    }
    let valid = checked;
    let total = valid.len();
    let mut done = 0;
    for chunk in valid.chunks(CHUNK_ROWS) {
        let mut tokens: Vec<Option<EnrollToken>> = Vec::with_capacity(chunk.len());
        let mut devices = Vec::with_capacity(chunk.len());
        for (_, _, _, d) in chunk {
            // A token unless the device attests another way.
            let token = matches!(d.method, None | Some(crate::groups::Method::Token))
                .then(|| EnrollToken::generate(rng));
            let labels = if d.labels.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&d.labels).map_err(|e| AuthorityError::Internal(e.to_string()))?)
            };
            devices.push(BatchDevice {
                id: d.id.clone(),
                token_hash: token.as_ref().map(|t| t.hash().to_vec()),
                labels,
                group: d.group.clone(),
                method: d.method.map(|m| m.as_str().to_string()),
            });
            tokens.push(token);
        }
        let now = clock.now();
        let audit = crate::audit::event(
            now,
            actor,
            "device.batch-register",
            batch_id.as_str(),
            serde_json::json!({"rows": devices.len(), "first": devices.first().map(|d| d.id.to_string())}),
        );
        let created: HashSet<DeviceId> = store
            .insert_device_batch(batch_id.as_str(), &devices, now, &audit)
            .await
            .map_err(|e| match e.kind() {
                // A group named by the batch was deleted after it was checked. Nothing of
                // this chunk was written; resubmitted, its rows answer "unknown group".
                devid_core::ErrorKind::NotFound => AuthorityError::Invalid(
                    "a group named by the batch was deleted during the import; resubmit the batch".into(),
                ),
                _ => AuthorityError::Store(e),
            })?
            .into_iter()
            .collect();
        let chunk_outcomes: Vec<RowOutcome> = chunk
            .iter()
            .zip(tokens)
            .map(|((_, line, id, d), token)| RowOutcome {
                line: *line,
                id: id.clone(),
                result: if created.contains(&d.id) { RowResult::Created(token) } else { RowResult::Present },
            })
            .collect();
        done += chunk.len();
        on_chunk(&ChunkDone { done, total, rows: &chunk_outcomes });
        for ((i, ..), outcome) in chunk.iter().zip(chunk_outcomes) {
            outcomes[*i] = Some(outcome);
        }
    }
    let rows: Vec<RowOutcome> = outcomes.into_iter().flatten().collect();
    let count = |f: fn(&RowResult) -> bool| rows.iter().filter(|r| f(&r.result)).count();
    let report = BatchReport {
        batch_id: batch_id.to_string(),
        created: count(|r| matches!(r, RowResult::Created(_))),
        present: count(|r| matches!(r, RowResult::Present)),
        rejected: count(|r| matches!(r, RowResult::Rejected(_))),
        rows,
    };
    tracing::info!(
        batch_id = %report.batch_id,
        created = report.created,
        present = report.present,
        rejected = report.rejected,
        "device batch imported"
    );
    Ok(report)
}

impl Authority {
    /// Parse and import a batch (see [`import_batch`]).
    pub async fn import_device_batch(
        &self,
        batch_id: &str,
        body: &[u8],
        format: BatchFormat,
        actor: &crate::Actor,
    ) -> Result<BatchReport, AuthorityError> {
        let batch_id = BatchId::new(batch_id)?;
        let rows = parse_batch(body, format)?;
        import_batch(
            self.store.as_ref(),
            self.clock.as_ref(),
            self.rng.as_ref(),
            &batch_id,
            rows,
            actor,
            &mut |_: &ChunkDone<'_>| {},
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reasons(rows: &[BatchRow]) -> Vec<(u64, String, Result<String, String>)> {
        rows.iter()
            .map(|r| {
                (r.line, r.id.clone(), r.device.as_ref().map(|d| d.id.to_string()).map_err(Clone::clone))
            })
            .collect()
    }

    #[test]
    fn batch_ids() {
        assert!(BatchId::new("line-7_2026.01").is_ok());
        assert!(BatchId::new(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "ü", &"a".repeat(65)] {
            assert!(BatchId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(BatchFormat::from_media_type("application/x-ndjson"), Some(BatchFormat::JsonLines));
        assert_eq!(BatchFormat::from_media_type("text/csv; charset=utf-8"), Some(BatchFormat::Csv));
        assert_eq!(BatchFormat::from_media_type("application/json"), None);
        assert_eq!("CSV".parse::<BatchFormat>(), Ok(BatchFormat::Csv));
        assert!("xml".parse::<BatchFormat>().is_err());
    }

    #[test]
    fn json_lines() {
        let body = concat!(
            "{\"id\":\"d-1\"}\n",
            "\r\n",
            "{\"id\":\"d-2\",\"method\":\"token\",\"group\":null,\"labels\":{\"site\":\"x\",\"rev\":\"b\"}}\r\n",
            "{\"id\":\"d-3\",\"method\":\"x509\"}\n",
            "{\"id\":\"d-4\",\"group\":\"g\"}\n",
            "{\"id\":\"bad id\"}\n",
            "not json\n",
            "[1]\n",
            "{\"id\":5}\n",
            "{\"method\":\"token\"}\n",
            "{\"id\":\"d-5\",\"labels\":{\"k\":1}}\n",
            "{\"id\":\"d-6\",\"labels\":\"k=v\"}\n",
            "{\"id\":\"d-7\",\"secret\":\"s\"}\n",
            "{\"id\":\"d-8\",\"labels\":{\"bad key\":\"v\"}}\n",
            "{\"id\":\"d-9\",\"method\":\"\"}",
        );
        let rows = parse_batch(body.as_bytes(), BatchFormat::JsonLines).unwrap();
        let r = reasons(&rows);
        assert_eq!(r[0], (1, "d-1".into(), Ok("d-1".into())));
        assert_eq!(r[1], (3, "d-2".into(), Ok("d-2".into())));
        let labels = &rows[1].device.as_ref().unwrap().labels;
        assert_eq!(labels.get("site").map(String::as_str), Some("x"));
        assert_eq!(r[2].2, Err("method x509 needs a group".into()));
        assert_eq!(r[3].2, Ok("d-4".into()));
        assert_eq!(rows[3].device.as_ref().unwrap().group.as_deref(), Some("g"));
        assert!(r[4].2.as_ref().unwrap_err().starts_with("invalid id"), "{:?}", r[4]);
        assert_eq!(r[4].1, "bad id");
        assert!(r[5].2.as_ref().unwrap_err().starts_with("bad JSON"), "{:?}", r[5]);
        assert_eq!(r[5].0, 7);
        assert_eq!(r[6].2, Err("a row must be a JSON object".into()));
        assert_eq!(r[7].2, Err("id must be a string".into()));
        assert_eq!(r[8].2, Err("id is missing".into()));
        assert_eq!(r[9].2, Err("label 'k' must be a string".into()));
        assert_eq!(r[10].2, Err("labels must be a JSON object of strings".into()));
        assert_eq!(r[11].2, Err("unknown field 'secret'".into()));
        assert!(r[12].2.as_ref().unwrap_err().starts_with("invalid label key"), "{:?}", r[12]);
        assert_eq!(r[13], (15, "d-9".into(), Ok("d-9".into())));
        assert_eq!(rows.len(), 14);
    }

    #[test]
    fn csv() {
        let body = concat!(
            "\u{feff}id,method,group,labels\r\n",
            "c-1,,,\r\n",
            "c-2,token,,\"site=x;rev=b\"\n",
            "\"c-3\",token,,\"note=a, b\"\n",
            "c-4,x509,,\n",
            "c-5,,g1,\n",
            "c-6,,\n",
            "c-7,,,novalue\n",
            "\n",
            "c-8,,,\"multi\n",
            "line=\"\"no\"\"\"\n",
            "c-9,,,a=1;a=2\n",
            "c\"10,,,\n",
            "c-11,,,\"unterminated\n",
        );
        let rows = parse_batch(body.as_bytes(), BatchFormat::Csv).unwrap();
        let r = reasons(&rows);
        assert_eq!(r[0], (2, "c-1".into(), Ok("c-1".into())));
        assert!(rows[0].device.as_ref().unwrap().labels.is_empty());
        assert_eq!(r[1], (3, "c-2".into(), Ok("c-2".into())));
        let l = &rows[1].device.as_ref().unwrap().labels;
        assert_eq!((l["site"].as_str(), l["rev"].as_str()), ("x", "b"));
        assert_eq!(r[2], (4, "c-3".into(), Ok("c-3".into())));
        assert_eq!(rows[2].device.as_ref().unwrap().labels["note"], "a, b");
        assert_eq!(r[3].2, Err("method x509 needs a group".into()));
        assert_eq!(r[4].2, Ok("c-5".into()));
        assert_eq!(rows[4].device.as_ref().unwrap().group.as_deref(), Some("g1"));
        assert_eq!(r[5], (7, "c-6".into(), Err("bad CSV: expected 4 fields, found 3".into())));
        assert_eq!(r[6].2, Err("labels: 'novalue' is not key=value".into()));
        // A quoted field across lines; doubled quotes; the blank line is skipped.
        assert_eq!(r[7].0, 10);
        assert!(r[7].2.as_ref().unwrap_err().starts_with("invalid label key"), "{:?}", r[7]);
        assert_eq!(r[8], (12, "c-9".into(), Err("labels: key 'a' given twice".into())));
        assert!(r[9].2.as_ref().unwrap_err().starts_with("bad CSV: a quote"), "{:?}", r[9]);
        assert_eq!(r[10], (14, String::new(), Err("bad CSV: unterminated quoted field".into())));
        assert_eq!(rows.len(), 11);

        // Columns in any order, only id required.
        let rows = parse_batch(b"labels,id\nk=v,c-1\n", BatchFormat::Csv).unwrap();
        assert_eq!(rows[0].device.as_ref().unwrap().labels["k"], "v");
    }

    #[test]
    fn whole_body_errors() {
        let bad: [(&[u8], BatchFormat); 8] = [
            (b"", BatchFormat::JsonLines),
            (b"\n\n", BatchFormat::JsonLines),
            (b"<xml/>\nfoo\n", BatchFormat::JsonLines),
            (b"\xff\xfe", BatchFormat::JsonLines),
            (b"id,method\n", BatchFormat::Csv),
            (b"name,method\nx,token\n", BatchFormat::Csv),
            (b"id,id\nx,y\n", BatchFormat::Csv),
            (b"{\"id\":\"a\"}", BatchFormat::Csv),
        ];
        for (body, format) in bad {
            let e = parse_batch(body, format).err();
            assert!(
                matches!(e, Some(AuthorityError::Invalid(_))),
                "{:?}: {e:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut big = String::from("id\n");
        for i in 0..=MAX_BATCH_ROWS {
            big.push_str(&format!("d-{i}\n"));
        }
        assert!(matches!(parse_batch(big.as_bytes(), BatchFormat::Csv), Err(AuthorityError::Invalid(_))));
        let mut big = String::new();
        for i in 0..MAX_BATCH_ROWS {
            big.push_str(&format!("{{\"id\":\"d-{i}\"}}\n"));
        }
        assert_eq!(parse_batch(big.as_bytes(), BatchFormat::JsonLines).unwrap().len(), MAX_BATCH_ROWS);
    }
}
