-- A completion records where the attempt's time went: the result gains `timings_ms`, the
-- phases compute measured, completed in the same statement so that they add up to
-- completed_at - started_at. What that interval holds beyond the measured phases is the
-- claim (as measured, at most all of it: a claim's round trip starts before started_at)
-- and p_rest (the completing statement itself, or for an assembled range the days computed
-- elsewhere). Without p_timings the result is stored as given.
DROP FUNCTION job_complete(uuid, uuid, jsonb, text, text, bigint, text);

CREATE FUNCTION job_complete(p_id uuid, p_token uuid, p_result jsonb, p_csv_key text,
                             p_summary_key text, p_csv_bytes bigint, p_csv_sha256 text,
                             p_timings jsonb, p_claim double precision, p_rest text,
                             OUT held boolean, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    measured numeric := (SELECT coalesce(sum(value::numeric), 0)
                         FROM jsonb_each_text(coalesce(p_timings, '{}')));
BEGIN
    UPDATE jobs SET status = 'completed', completed_at = now(), error_message = NULL,
        result = CASE WHEN p_timings IS NULL THEN p_result ELSE p_result || jsonb_build_object(
            'timings_ms', p_timings || timings.rest || timings.claim) END,
        csv_key = p_csv_key, summary_key = p_summary_key,
        csv_bytes = p_csv_bytes, csv_sha256 = p_csv_sha256,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now()
    FROM (
        SELECT jsonb_build_object(p_rest, beyond - least(coalesce(p_claim::numeric, 0), beyond))
                   AS rest,
               CASE WHEN p_claim IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('claim', least(p_claim::numeric, beyond)) END AS claim
        FROM (SELECT round((extract(epoch FROM now() - j.started_at) * 1000)::numeric
                           - measured, 2) AS beyond
              FROM jobs j WHERE j.id = p_id) clock
    ) timings
    WHERE jobs.id = p_id AND jobs.status = 'processing' AND jobs.lease_token = p_token
    RETURNING jobs.* INTO job;
    held := FOUND;
    IF NOT held THEN
        SELECT * INTO job FROM jobs WHERE id = p_id;
    END IF;
END
$$;
