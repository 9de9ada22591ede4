-- Secrets of the service itself, shared by every node on this database, each sealed by the
-- key manager (KeyManager::seal, with the row's name as its context): never in clear here.
-- The first is the key that authenticates stateless enrollment challenges (issue #6), so
-- that a challenge made by one node is redeemed on any other. The first node that needs a
-- secret inserts it; every other node reads that one.
CREATE TABLE service_secrets (
    name        TEXT COLLATE "C" PRIMARY KEY,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
