-- Kept device-day results: one local day of one device computed under one key (home,
-- radii, filters, time zone, places, engine and CSV format versions, hashed), with the
-- fingerprint of every row its read covered (context included). A range job reuses a
-- day while its key and fingerprint match, and recomputes it otherwise.
CREATE TABLE day_results (
    key_hash text NOT NULL,
    device_id varchar(100) NOT NULL,
    day date NOT NULL,
    -- count and hash sum of the rows in [read_from, read_to), from the (device_id,
    -- timestamp) index range: changes when a fix is added, removed or edited there.
    fingerprint text NOT NULL,
    read_from timestamptz NOT NULL,
    read_to timestamptz NOT NULL,
    -- The day's part for assembly; NULL when the device had nothing to report that day.
    part jsonb,
    csv_key text NOT NULL,
    csv_rows bigint NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT day_results_pkey PRIMARY KEY (key_hash, device_id, day),
    CONSTRAINT day_results_read_check CHECK (read_from < read_to),
    CONSTRAINT day_results_csv_rows_check CHECK (csv_rows >= 0)
);

-- The device-days of each range job: the ones it reused ('done' from the start) and the
-- ones it announced as day.requested events, each claimed, fenced and retried like a job
-- (attempts, a lease while one compute works on it). Deleted with the job; while a kept
-- job names a kept day here, retention keeps that day and its object.
CREATE TABLE job_days (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    device_id varchar(100) NOT NULL,
    day date NOT NULL,
    key_hash text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    lease_token uuid,
    lease_expires_at timestamptz,
    error_message text,
    CONSTRAINT job_days_pkey PRIMARY KEY (job_id, device_id, day),
    CONSTRAINT job_days_status_check
        CHECK (status IN ('queued', 'processing', 'done', 'failed', 'cancelled')),
    CONSTRAINT job_days_lease_check CHECK (
        (status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT job_days_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX job_days_kept_idx ON job_days (key_hash, device_id, day);

-- Cancelling a job cancels its pending days: a day event delivered later finds its day
-- cancelled and computes nothing.
CREATE FUNCTION cancel_pending_days() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE job_days SET status = 'cancelled', lease_token = NULL, lease_expires_at = NULL
        WHERE job_id = NEW.id AND status IN ('queued', 'processing');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_cancel_pending_days AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'cancelled') EXECUTE FUNCTION cancel_pending_days();
