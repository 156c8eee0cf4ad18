-- The outcome outbox: a job the sweep fails (out of attempts) is owed a job.failed event.
-- The flag is set in the same statement that fails the job and cleared once the event is
-- sent, so an announcement lost to a broker outage is sent by a later sweep, as a queued
-- job's job.queued is (published_at).
ALTER TABLE jobs ADD COLUMN outcome_pending boolean NOT NULL DEFAULT false;

-- The services' role (DB_SERVICE_ROLE: submit, compute, status and the sweep log in as it)
-- may use the jobs table and read public.locations, nothing more: no DDL, no other table.
-- The role that runs the migrations owns the schema. `otel-worker migrate` calls this on
-- every run when DB_SERVICE_ROLE is set (GRANT is idempotent), with search_path set to the
-- jobs schema. public.locations belongs to the recorder: it is granted only when the
-- migrating role may pass the right on (its owner granted it SELECT WITH GRANT OPTION).
CREATE FUNCTION grant_service_role(service name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), service);
    EXECUTE format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON %I.jobs TO %I', current_schema(), service
    );
    IF to_regclass('public.locations') IS NOT NULL
        AND has_table_privilege('public.locations', 'SELECT WITH GRANT OPTION') THEN
        EXECUTE format('GRANT SELECT ON public.locations TO %I', service);
    END IF;
END
$$;
