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

-- The kept days a job's result names: retention keeps a day (and its CSV object) while a
-- kept job names it.
CREATE TABLE job_days (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key_hash text NOT NULL,
    device_id varchar(100) NOT NULL,
    day date NOT NULL,
    CONSTRAINT job_days_pkey PRIMARY KEY (job_id, key_hash, device_id, day)
);
CREATE INDEX job_days_day_idx ON job_days (key_hash, device_id, day);
