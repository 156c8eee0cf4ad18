-- The jobs store: one row per requested analysis, with its lease and its outcome.
-- Runs with search_path set to the jobs schema (JOBS_SCHEMA), so names are unqualified.

CREATE TABLE jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status text NOT NULL DEFAULT 'queued',
    -- The request: inclusive local dates, one device or all (NULL), the home time zone
    -- and the analysis parameters captured at submission.
    date_from date NOT NULL,
    date_to date NOT NULL,
    device_id varchar(100),
    timezone text NOT NULL,
    parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text NOT NULL,
    requester_source text,
    requester_id text,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    lease_token uuid,
    lease_expires_at timestamptz,
    claimed_by text,
    queued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    result jsonb,
    csv_key text,
    summary_key text,
    csv_bytes bigint,
    csv_sha256 text,
    error_message text,
    traceparent text,
    -- The outbox mark: when the job.queued event for the current queued state was sent.
    published_at timestamptz,
    CONSTRAINT jobs_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT jobs_status_check
        CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    CONSTRAINT jobs_dates_check CHECK (date_from <= date_to),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    -- A lease exists exactly while a worker processes the job.
    CONSTRAINT jobs_lease_check CHECK (
        (status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    -- completed_at is the finishing time of completed and failed jobs alike.
    CONSTRAINT jobs_finished_check
        CHECK ((status IN ('completed', 'failed')) = (completed_at IS NOT NULL)),
    CONSTRAINT jobs_csv_bytes_check CHECK (csv_bytes >= 0),
    CONSTRAINT jobs_csv_sha256_check CHECK (csv_sha256 ~ '^[0-9a-f]{64}$')
) WITH (fillfactor = 70);

-- Listing, newest first. No other index: the table stays small (finished jobs are pruned
-- after JOB_RETENTION_DAYS), so the sweep's scans are cheap, and with no index on a column
-- that changes (status, times, lease) an update can be HOT, which the free space the fill
-- factor leaves in each page makes likely: a job's few updates then write no index entry.
CREATE INDEX jobs_newest_idx ON jobs (queued_at DESC, id DESC);
