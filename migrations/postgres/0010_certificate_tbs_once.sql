-- A certificate's bytes are written once (issue #6). From this version on, the store
-- writes an empty `tbs_der` for a certificate whose TBSCertificate is the first element of
-- its `cert_der` (RFC 5280 §4.1.1.1), which is every certificate devid signs: the TBS was
-- about 40 % of each row and of the table (11 % of the WAL per certificate). The store reads the
-- TBS back from `cert_der` when the column is empty. Rows written before keep their copy.
-- (SQLite runs the same code; it has no column comments.)
COMMENT ON COLUMN certificates.tbs_der IS
    'The TBSCertificate DER as signed; empty when it is the first element of cert_der';
