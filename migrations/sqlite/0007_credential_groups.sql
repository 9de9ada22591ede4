-- A factory credential may be scoped to enrollment groups (comma-separated names): it then
-- registers devices into those groups only and sees only their devices. NULL: unscoped.
ALTER TABLE credentials ADD COLUMN groups TEXT NULL;
