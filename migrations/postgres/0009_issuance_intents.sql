-- Issuance intents (step 4 of the issuance cycle) get a table of their own (issue #6).
--
-- Before, an intent was a `certificates` row with status 'pending' that step 6 updated to
-- 'issued'. `status` is in two of that table's indexes, so the update could never be a HOT
-- update: every certificate put seven index entries and two full row versions into the
-- WAL. Now step 4 inserts a small row here, and step 6 deletes it and inserts the
-- certificate once, in one transaction; a certificate is written one time, with its
-- indexes, when it is signed. Readers see an intent as a pending certificate.
--
-- `certificates` keeps accepting status 'pending' (its CHECK constraints are unchanged,
-- so that SQLite needs no table rebuild), but the store no longer writes it.
CREATE TABLE issuance_intents (
    -- Lowercase hex of the serial's magnitude (Serial::to_hex); unique across this table
    -- and `certificates` (the store checks the other table in the same transaction).
    serial       TEXT COLLATE "C" PRIMARY KEY,
    issuer_id    TEXT COLLATE "C" NOT NULL REFERENCES cas (id),
    device_id    TEXT COLLATE "C" NOT NULL REFERENCES devices (id),
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    csr_sha256   BYTEA NOT NULL,
    -- The TBSCertificate to be signed, byte for byte.
    tbs_der      BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    predecessor  TEXT COLLATE "C" NULL
);
CREATE INDEX issuance_intents_device_csr ON issuance_intents (device_id, csr_sha256);

INSERT INTO issuance_intents
    (serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, created_at, predecessor)
SELECT serial, issuer_id, device_id, not_before, not_after, csr_sha256, tbs_der, created_at, predecessor
FROM certificates WHERE status = 'pending';
DELETE FROM certificates WHERE status = 'pending';

-- Every index is paid for on each certificate written. These three serve no query of the
-- store (tests/scale.rs checks the plan of every one on a seeded PostgreSQL store):
-- revocation lists read `revocations`, a device's certificates are found through
-- (device_id, csr_sha256), and no query filters certificates on status first.
DROP INDEX certificates_status_not_after;
DROP INDEX certificates_issuer_status_not_after;
DROP INDEX certificates_device_serial;
