-- The replicas whose run of the job was cut off (each stopped renewing its lease while the
-- job ran: it died, was killed or lost the database). A job cut off too often is failed
-- instead of taken over again: it may be what kills its replicas.
ALTER TABLE jobs ADD COLUMN interrupted_by TEXT[] NOT NULL DEFAULT '{}';
