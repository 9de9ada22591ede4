-- Live nodes (replicas of devid serve on this database): each writes a heartbeat every few
-- seconds; rate limits are shared among the nodes seen recently.
CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    seen_at  INTEGER NOT NULL
) STRICT;
