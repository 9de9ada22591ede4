-- The device list's label filter matches `"key":"value"` inside the labels' compact JSON
-- text, anchored on the delimiters: a LIKE '%…%' on the expression below, which no B-tree
-- can serve. A trigram index on that same expression does (no query change): on 10,000,000
-- certificates / 5,000,000 devices a rare label went from a 2.7 s full scan to 0.43 ms.
-- pg_trgm ships with PostgreSQL (Debian: in the server package; elsewhere: the contrib
-- package) and is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX devices_labels_trgm ON devices USING gin
    ((',' || substr(labels, 2, length(labels) - 2) || ',') gin_trgm_ops);
