-- Enrollment groups (issue #3): which attestation methods a group allows, its trust anchors
-- (manufacturer or TPM vendor CA certificates) and manufacturer CRLs, whether devices must be
-- registered one by one, how the device id is taken from the evidence, the maximum
-- certificate lifetime, the sealed master key of the derived-key method, and its enrollment
-- rate limit. Certificate lists are stored as u32-big-endian-length-prefixed DER, back to back.
CREATE TABLE enrollment_groups (
    name             TEXT COLLATE "C" PRIMARY KEY,
    methods          TEXT NOT NULL,
    registration     TEXT NOT NULL CHECK (registration IN ('required', 'optional')),
    id_source        TEXT NOT NULL,
    validity_secs    BIGINT NULL,
    trust_anchors    BYTEA NOT NULL,
    crls             BYTEA NOT NULL,
    master_key       BYTEA NULL,
    rate_per_minute  BIGINT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- A device may belong to a group and carry its own method and (sealed) secret.
ALTER TABLE devices ADD COLUMN group_name TEXT COLLATE "C" NULL REFERENCES enrollment_groups (name);
ALTER TABLE devices ADD COLUMN method TEXT NULL;
ALTER TABLE devices ADD COLUMN secret BYTEA NULL;
CREATE INDEX devices_group_id ON devices (group_name, id) WHERE group_name IS NOT NULL;
CREATE INDEX devices_status_id ON devices (status, id);

-- Enrollment challenges: the SHA-256 of the nonce, single use (redeemed_at is set in the
-- same transaction as the certificate's intent), expiring; any node can redeem any nonce.
-- state carries what a method keeps between challenge and enrollment (TPM: the AK and the
-- hash of the credential secret), never a secret in clear.
CREATE TABLE challenges (
    nonce_hash   BYTEA PRIMARY KEY,
    group_name   TEXT COLLATE "C" NOT NULL,
    method       TEXT NOT NULL,
    state        TEXT NULL,
    expires_at   BIGINT NOT NULL,
    redeemed_at  BIGINT NULL
);
CREATE INDEX challenges_expires_at ON challenges (expires_at);

-- Renewal lineage: the certificate a renewed one replaces.
ALTER TABLE certificates ADD COLUMN predecessor TEXT COLLATE "C" NULL;
CREATE INDEX certificates_predecessor ON certificates (predecessor) WHERE predecessor IS NOT NULL;
CREATE INDEX certificates_not_after_serial ON certificates (not_after, serial);
