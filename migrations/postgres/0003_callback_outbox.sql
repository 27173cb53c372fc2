-- The webhook outbox: a finished job's callback is delivered by whoever claims it here
-- first (the replica that finished the job, or, when that one stopped before or during
-- the delivery, another one once the claim lapsed), so it is sent once per job.
ALTER TABLE jobs ADD COLUMN callback_by TEXT;
ALTER TABLE jobs ADD COLUMN callback_until TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN callback_done BOOLEAN NOT NULL DEFAULT false;
-- Jobs that ended before the outbox existed had their webhook sent (or not) already.
UPDATE jobs SET callback_done = true WHERE state IN ('succeeded', 'failed', 'cancelled');
