-- Secrets of the service itself, shared by every node on this database, each sealed by the
-- key manager (KeyManager::seal, with the row's name as its context): never in clear here.
-- The first is the key that authenticates stateless enrollment challenges (issue #6). The
-- first node that needs a secret inserts it; every other node reads that one.
CREATE TABLE service_secrets (
    name        TEXT PRIMARY KEY NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
