-- devid schema, PostgreSQL. Times are Unix seconds (BIGINT) and ids are TEXT, as in the
-- SQLite schema, so that both backends run the same SQL text and use the same index shapes.
-- Key columns use the "C" collation: byte order, the same order as SQLite's BINARY, so
-- cursor paging is independent of the database's locale.

-- CA certificates. Rows are never deleted: certificates reference their issuer for as long
-- as they exist. A hierarchy is replaced by marking the old rows inactive and inserting new
-- rows under new ids.
CREATE TABLE cas (
    id          TEXT COLLATE "C" PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('root', 'issuing')),
    parent_id   TEXT COLLATE "C" NULL REFERENCES cas (id),
    cert_der    BYTEA NOT NULL,
    key_ref     TEXT NULL,
    ski         BYTEA NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    active      BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL
);
-- At most one active CA of each kind.
CREATE UNIQUE INDEX cas_one_active_per_kind ON cas (kind) WHERE active;

CREATE TABLE devices (
    id             TEXT COLLATE "C" PRIMARY KEY,
    status         TEXT NOT NULL CHECK (status IN ('registered', 'enrolled', 'quarantined')),
    -- SHA-256 of the one-time enrollment token.
    token_hash     BYTEA NULL UNIQUE,
    token_used_at  BIGINT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE certificates (
    -- Lowercase hex of the serial's magnitude (Serial::to_hex).
    serial      TEXT COLLATE "C" PRIMARY KEY,
    issuer_id   TEXT COLLATE "C" NOT NULL REFERENCES cas (id),
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (id),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked')),
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    csr_sha256  BYTEA NOT NULL,
    -- The TBSCertificate recorded before signing (step 4), byte for byte.
    tbs_der     BYTEA NOT NULL,
    -- The signed certificate (step 6); present exactly when the certificate is not pending.
    cert_der    BYTEA NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    CONSTRAINT certificates_signed_unless_pending CHECK ((status = 'pending') = (cert_der IS NULL))
);
CREATE INDEX certificates_device_serial ON certificates (device_id, serial);
CREATE INDEX certificates_device_csr ON certificates (device_id, csr_sha256);
CREATE INDEX certificates_status_not_after ON certificates (status, not_after);
CREATE INDEX certificates_issuer_status_not_after ON certificates (issuer_id, status, not_after);

CREATE TABLE revocations (
    serial      TEXT COLLATE "C" PRIMARY KEY REFERENCES certificates (serial),
    -- The RFC 5280 CRLReason code.
    reason      SMALLINT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    -- Copied from the certificate, so that a CRL is one index range scan of this table:
    -- every revoked, unexpired certificate of an issuer (RFC 5280 §5: expired ones drop off).
    issuer_id   TEXT COLLATE "C" NOT NULL REFERENCES cas (id),
    not_after   BIGINT NOT NULL
);
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);
CREATE INDEX revocations_issuer_not_after ON revocations (issuer_id, not_after) INCLUDE (serial, reason, revoked_at);

-- Every change of a certificate's status, in commit order as far as a sequence allows.
-- Each node polls it to refresh its OCSP answers and CRLs; readers tolerate gaps from
-- transactions that commit out of sequence order.
CREATE TABLE cert_events (
    seq        BIGSERIAL PRIMARY KEY,
    serial     TEXT COLLATE "C" NOT NULL,
    issuer_id  TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('issued', 'revoked')),
    at         BIGINT NOT NULL
);

-- The newest CRL of each issuer (and shard), served by every node. crl_number only grows.
CREATE TABLE crls (
    issuer_id    TEXT COLLATE "C" NOT NULL REFERENCES cas (id),
    shard        BIGINT NOT NULL,
    crl_number   BIGINT NOT NULL,
    this_update  BIGINT NOT NULL,
    next_update  BIGINT NOT NULL,
    der          BYTEA NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);

-- Delegated OCSP responder certificates (RFC 6960 §4.2.2.2), newest first per issuer.
CREATE TABLE ocsp_responders (
    id          TEXT COLLATE "C" PRIMARY KEY,
    issuer_id   TEXT COLLATE "C" NOT NULL REFERENCES cas (id),
    cert_der    BYTEA NOT NULL,
    key_ref     TEXT NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX ocsp_responders_issuer_not_after ON ocsp_responders (issuer_id, not_after);

-- API clients (RFC 6749 §2.3.1 client credentials). The secret is stored as an Argon2id
-- PHC string; role is one of admin, factory, operator, auditor.
CREATE TABLE credentials (
    client_id    TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    secret_hash  TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'factory', 'operator', 'auditor')),
    name         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT NULL
);

-- Public keys that sign access tokens (JWS ES256, RFC 7515/7518). Every node verifies with
-- any key still valid here; each node signs with the newest key it holds.
CREATE TABLE token_keys (
    kid         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    key_ref     TEXT NOT NULL,
    public_spki BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL
);

-- Revoked access tokens (RFC 7009), kept until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    expires_at  BIGINT NOT NULL
);
