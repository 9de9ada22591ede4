-- The tamper-evident audit log. Each entry carries the previous entry's hash (prev_hash) and
-- its own SHA-256 chain hash over prev_hash and its fields (devid_store::audit::entry_hash).
-- audit_head holds the last sequence number and hash; its row lock orders appends. Entries
-- are appended in the same transaction as the act they record, so a rolled-back act leaves
-- no entry and no gap.
CREATE TABLE audit_log (
    seq      BIGINT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    details  TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash     BYTEA NOT NULL
);
CREATE TABLE audit_head (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
