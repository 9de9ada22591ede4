-- Nothing to do on SQLite (BLOBs are stored as they are); kept so that both folders
-- number their migrations alike.
SELECT 1;
