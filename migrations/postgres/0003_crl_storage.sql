-- CRLs are large (about 47 bytes per revoked certificate) and do not compress well: store
-- them uncompressed. pglz spent about 0.5 s per 47 MiB CRL for a 2x saving.
ALTER TABLE crls ALTER COLUMN der SET STORAGE EXTERNAL;
