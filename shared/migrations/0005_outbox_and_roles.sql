-- The outcome outbox: a job the sweep fails (out of attempts) is owed a job.failed event.
-- The flag is set in the same statement that fails the job and cleared once the event is
-- sent, so an announcement lost to a broker outage is sent by a later sweep, as a queued
-- job's job.queued is (published_at).
ALTER TABLE jobs ADD COLUMN outcome_pending boolean NOT NULL DEFAULT false;
