-- The services' role gets the kept device-day tables too (day_results, job_days,
-- day_summaries: compute keeps and claims days, the late-fix check and the nightly run read
-- and write them, cancelling a job cancels its days through a trigger run as that role), on
-- top of what migration 0005 granted. Still no DDL and no other table.
CREATE OR REPLACE FUNCTION grant_service_role(service name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    kept text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), service);
    FOREACH kept IN ARRAY ARRAY['jobs', 'day_results', 'job_days', 'day_summaries'] LOOP
        EXECUTE format(
            'GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I', current_schema(), kept, service
        );
    END LOOP;
    IF to_regclass('public.locations') IS NOT NULL
        AND has_table_privilege('public.locations', 'SELECT WITH GRANT OPTION') THEN
        EXECUTE format('GRANT SELECT ON public.locations TO %I', service);
    END IF;
END
$$;
