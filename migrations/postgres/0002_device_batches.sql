-- Bulk pre-registration: labels (a JSON object of string to string, as text) and the
-- client-chosen id of the batch that registered a device. Both are NULL for devices
-- registered one at a time.
ALTER TABLE devices ADD COLUMN labels TEXT NULL;
ALTER TABLE devices ADD COLUMN batch_id TEXT COLLATE "C" NULL;
CREATE INDEX devices_batch_id ON devices (batch_id, id) WHERE batch_id IS NOT NULL;
