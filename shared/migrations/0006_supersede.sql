-- Results that stay true. A completed job whose figures late fixes moved is superseded by
-- a new job for the same request: `superseded_by` names it on the old job, `supersedes`
-- names the old one on the new. `figures_checked_at` is when the late-fix check last found
-- the job's figures still true (it is not checked again until a kept day of it changes).
ALTER TABLE jobs ADD COLUMN superseded_by uuid;
ALTER TABLE jobs ADD COLUMN supersedes uuid;
ALTER TABLE jobs ADD COLUMN figures_checked_at timestamptz;
-- One successor per job: two checks racing make one superseding job, never two.
CREATE UNIQUE INDEX jobs_supersedes_key ON jobs (supersedes);

-- The nightly day summaries announced: one `day.summarized` event per device, local day
-- and key, sent again only when the day's fingerprint changed (its event id changes too),
-- with the time zone and parameters the late-fix check needs to summarise it again.
CREATE TABLE day_summaries (
    key_hash text NOT NULL,
    device_id varchar(100) NOT NULL,
    day date NOT NULL,
    timezone text NOT NULL,
    parameters jsonb NOT NULL,
    fingerprint text NOT NULL,
    event_id text NOT NULL,
    published_at timestamptz,
    CONSTRAINT day_summaries_pkey PRIMARY KEY (key_hash, device_id, day)
);
