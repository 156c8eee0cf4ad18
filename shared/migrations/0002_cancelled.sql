-- A job may be cancelled: `cancelled` is a final status like completed and failed, and
-- completed_at (the finishing time) is set for it too.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled'));
ALTER TABLE jobs DROP CONSTRAINT jobs_finished_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_finished_check
    CHECK ((status IN ('completed', 'failed', 'cancelled')) = (completed_at IS NOT NULL));
