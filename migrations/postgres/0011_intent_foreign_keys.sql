-- Issuance intents no longer carry foreign keys (issue #6).
--
-- An intent lives from step 4 of the issuance cycle to step 6, where it is deleted and its
-- certificate inserted in the same transaction; `certificates` keeps both of its foreign
-- keys, so every certificate still names a device and a CA that exist. Devices and CAs are
-- never deleted, and the store records an intent only for a device and CA it has just
-- read. The two keys made each intent insert look up and row-lock its device and CA
-- (`FOR KEY SHARE`), a second time for the same certificate.
-- (SQLite keeps the keys: dropping one there rebuilds the table, and its checks are cheap.)
ALTER TABLE issuance_intents
    DROP CONSTRAINT IF EXISTS issuance_intents_device_id_fkey,
    DROP CONSTRAINT IF EXISTS issuance_intents_issuer_id_fkey;
