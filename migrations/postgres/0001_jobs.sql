-- Jobs shared by every replica. Columns hold what listings filter on and what the queue
-- needs (owner, attempt, lease); the whole record is one JSON document, so new record
-- fields need no schema change.
CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    "user"           TEXT        NOT NULL,
    state            TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    record           JSONB       NOT NULL,
    -- The replica holding the job, and which attempt of it: a write carrying an older
    -- attempt changes nothing (fencing).
    owner            TEXT,
    attempt          BIGINT      NOT NULL DEFAULT 0,
    -- Renewed by the owner's heartbeat; once it lapses another replica may take the job.
    lease_expires_at TIMESTAMPTZ,
    heartbeat_at     TIMESTAMPTZ,
    -- Set by a cancel sent to any replica; the holder's heartbeat reads it and stops the job.
    cancel_requested_by TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_user ON jobs ("user", id);
