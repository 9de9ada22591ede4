-- devid schema, SQLite. Times are Unix seconds (INTEGER, i.e. 64-bit) and ids are TEXT, as
-- in the PostgreSQL schema, so that both backends run the same SQL text and use the same
-- index shapes. Tables are STRICT: a value of the wrong type is refused, not coerced.
-- Booleans are INTEGER 0/1 (STRICT tables have no BOOLEAN type). Text compares with the
-- BINARY collation (byte order), as the PostgreSQL key columns do with "C".

-- CA certificates. Rows are never deleted: certificates reference their issuer for as long
-- as they exist. A hierarchy is replaced by marking the old rows inactive and inserting new
-- rows under new ids.
CREATE TABLE cas (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('root', 'issuing')),
    parent_id   TEXT NULL REFERENCES cas (id),
    cert_der    BLOB NOT NULL,
    key_ref     TEXT NULL,
    ski         BLOB NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at  INTEGER NOT NULL
) STRICT;
-- At most one active CA of each kind.
CREATE UNIQUE INDEX cas_one_active_per_kind ON cas (kind) WHERE active;

CREATE TABLE devices (
    id             TEXT PRIMARY KEY NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('registered', 'enrolled', 'quarantined')),
    -- SHA-256 of the one-time enrollment token.
    token_hash     BLOB NULL UNIQUE,
    token_used_at  INTEGER NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE certificates (
    -- Lowercase hex of the serial's magnitude (Serial::to_hex).
    serial      TEXT PRIMARY KEY NOT NULL,
    issuer_id   TEXT NOT NULL REFERENCES cas (id),
    device_id   TEXT NOT NULL REFERENCES devices (id),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked')),
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    csr_sha256  BLOB NOT NULL,
    -- The TBSCertificate recorded before signing (step 4), byte for byte.
    tbs_der     BLOB NOT NULL,
    -- The signed certificate (step 6); present exactly when the certificate is not pending.
    cert_der    BLOB NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CONSTRAINT certificates_signed_unless_pending CHECK ((status = 'pending') = (cert_der IS NULL))
) STRICT;
CREATE INDEX certificates_device_serial ON certificates (device_id, serial);
CREATE INDEX certificates_device_csr ON certificates (device_id, csr_sha256);
CREATE INDEX certificates_status_not_after ON certificates (status, not_after);
CREATE INDEX certificates_issuer_status_not_after ON certificates (issuer_id, status, not_after);

CREATE TABLE revocations (
    serial      TEXT PRIMARY KEY NOT NULL REFERENCES certificates (serial),
    -- The RFC 5280 CRLReason code.
    reason      INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL,
    -- Copied from the certificate, so that a CRL is one index range scan of this table:
    -- every revoked, unexpired certificate of an issuer (RFC 5280 §5: expired ones drop off).
    issuer_id   TEXT NOT NULL REFERENCES cas (id),
    not_after   INTEGER NOT NULL
) STRICT;
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);
CREATE INDEX revocations_issuer_not_after ON revocations (issuer_id, not_after, serial, reason, revoked_at);

-- Every change of a certificate's status, in commit order (SQLite has one writer).
-- Each node polls it to refresh its OCSP answers and CRLs.
CREATE TABLE cert_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    serial     TEXT NOT NULL,
    issuer_id  TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('issued', 'revoked')),
    at         INTEGER NOT NULL
) STRICT;

-- The newest CRL of each issuer (and shard), served by every node. crl_number only grows.
CREATE TABLE crls (
    issuer_id    TEXT NOT NULL REFERENCES cas (id),
    shard        INTEGER NOT NULL,
    crl_number   INTEGER NOT NULL,
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    der          BLOB NOT NULL,
    PRIMARY KEY (issuer_id, shard)
) STRICT;

-- Delegated OCSP responder certificates (RFC 6960 §4.2.2.2), newest first per issuer.
CREATE TABLE ocsp_responders (
    id          TEXT PRIMARY KEY NOT NULL,
    issuer_id   TEXT NOT NULL REFERENCES cas (id),
    cert_der    BLOB NOT NULL,
    key_ref     TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX ocsp_responders_issuer_not_after ON ocsp_responders (issuer_id, not_after);

-- API clients (RFC 6749 §2.3.1 client credentials). The secret is stored as an Argon2id
-- PHC string; role is one of admin, factory, operator, auditor.
CREATE TABLE credentials (
    client_id    TEXT PRIMARY KEY NOT NULL,
    secret_hash  TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'factory', 'operator', 'auditor')),
    name         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER NULL
) STRICT;

-- Public keys that sign access tokens (JWS ES256, RFC 7515/7518). Every node verifies with
-- any key still valid here; each node signs with the newest key it holds.
CREATE TABLE token_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    key_ref     TEXT NOT NULL,
    public_spki BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL
) STRICT;

-- Revoked access tokens (RFC 7009), kept until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
