-- When a lockout after too many wrong passwords lifts by itself ([auth] lockout_secs); NULL for
-- locks set by an administrator, which never expire.
ALTER TABLE dh_user ADD COLUMN locked_until INTEGER NULL;
