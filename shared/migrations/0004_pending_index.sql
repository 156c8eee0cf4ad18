-- Admission in one round trip, the job transitions as functions, finished jobs announced.

-- The pending work submit sums on every admission (queued and processing jobs). The
-- predicate is `completed_at IS NULL`, which jobs_finished_check makes the same rows as
-- `status IN ('queued', 'processing')`: an index whose predicate named status would make
-- every status change a non-HOT update, while completed_at changes once, when the job
-- finishes, so claims, publish marks and re-queues stay HOT. The dates ride along for an
-- index-only sum.
CREATE INDEX jobs_pending_idx ON jobs (id) INCLUDE (date_from, date_to)
    WHERE completed_at IS NULL;

-- The transitions of a job's life, one call each. Their plans are kept per server
-- connection (a function's statements are prepared inside PostgreSQL, which works through
-- PgBouncer's transaction pooling, unlike client-side prepared statements). Each runs
-- with the search_path of this migration, so its unqualified names are the jobs schema's
-- whatever the caller's. Each returns the job as it now stands, with what happened.

-- Create a queued job, or find the one the idempotency key already names. With
-- p_max_pending, admission comes first, in the same call: a request whose key names no job
-- yet and whose p_days would take the pending work (the days of every unfinished job)
-- above p_max_pending creates nothing and returns job NULL with the pending work.
CREATE FUNCTION job_create(
    p_date_from date, p_date_to date, p_device_id varchar, p_timezone text,
    p_parameters jsonb, p_key text, p_source text, p_requester text, p_traceparent text,
    p_max_attempts integer, p_max_pending bigint,
    OUT created boolean, OUT pending bigint, OUT job jobs
) LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    created := false;
    IF p_max_pending IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE idempotency_key = p_key) THEN
        SELECT coalesce(sum(date_to - date_from + 1), 0) INTO pending
        FROM jobs WHERE completed_at IS NULL;
        IF pending + (p_date_to - p_date_from + 1) > p_max_pending THEN
            RETURN;
        END IF;
    END IF;
    LOOP
        -- A losing insert waits for the winner's commit, then sees its row; should that
        -- row vanish in between (pruned), inserting again is right.
        INSERT INTO jobs (date_from, date_to, device_id, timezone, parameters,
                          idempotency_key, requester_source, requester_id, traceparent,
                          max_attempts)
        VALUES (p_date_from, p_date_to, p_device_id, p_timezone, p_parameters, p_key,
                p_source, p_requester, p_traceparent, p_max_attempts)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING * INTO job;
        IF FOUND THEN
            created := true;
            RETURN;
        END IF;
        SELECT * INTO job FROM jobs WHERE idempotency_key = p_key;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- Take the job for one attempt: 'claimed', 'exhausted' (no attempts left: failed now),
-- 'finished', 'busy' (a live lease elsewhere) or 'not_found'. Only a successful claim
-- commits without waiting for the WAL flush: a claim lost in a crash leaves the job queued
-- and its attempt's fenced completion refused. Failing the job stays durable.
CREATE FUNCTION job_claim(p_id uuid, p_worker text, p_lease double precision,
                          OUT outcome text, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET status = 'processing', attempts = attempts + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease),
        claimed_by = p_worker, started_at = now(), updated_at = now()
    WHERE id = p_id AND attempts < max_attempts
      AND (status = 'queued' OR (status = 'processing' AND lease_expires_at <= now()))
    RETURNING * INTO job;
    IF FOUND THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        outcome := 'claimed';
        RETURN;
    END IF;
    UPDATE jobs SET status = 'failed',
        error_message = 'gave up after ' || attempts || ' attempt(s): ' ||
            CASE WHEN status = 'processing'
                THEN 'the lease of the last attempt (worker '
                     || coalesce(claimed_by, 'unknown') || ') expired'
                ELSE coalesce(error_message, 'no attempts left') END,
        completed_at = now(), updated_at = now(), lease_token = NULL, lease_expires_at = NULL
    WHERE id = p_id AND status IN ('queued', 'processing') AND attempts >= max_attempts
      AND (status = 'queued' OR lease_expires_at <= now())
    RETURNING * INTO job;
    IF FOUND THEN
        outcome := 'exhausted';
        RETURN;
    END IF;
    SELECT * INTO job FROM jobs WHERE id = p_id;
    outcome := CASE WHEN NOT FOUND THEN 'not_found'
                    WHEN job.status IN ('completed', 'failed', 'cancelled') THEN 'finished'
                    ELSE 'busy' END;
END
$$;

-- The fenced ends of an attempt: each applies only while p_token is the job's lease
-- token (held is then true); otherwise it changes nothing and returns the job as it
-- stands (NULL when it no longer exists), so the caller can say why.
CREATE FUNCTION job_complete(p_id uuid, p_token uuid, p_result jsonb, p_csv_key text,
                             p_summary_key text, p_csv_bytes bigint, p_csv_sha256 text,
                             OUT held boolean, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET status = 'completed', completed_at = now(), error_message = NULL,
        result = p_result, csv_key = p_csv_key, summary_key = p_summary_key,
        csv_bytes = p_csv_bytes, csv_sha256 = p_csv_sha256,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE id = p_id AND status = 'processing' AND lease_token = p_token
    RETURNING * INTO job;
    held := FOUND;
    IF NOT held THEN
        SELECT * INTO job FROM jobs WHERE id = p_id;
    END IF;
END
$$;

CREATE FUNCTION job_fail(p_id uuid, p_token uuid, p_message text,
                         OUT held boolean, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET status = 'failed', completed_at = now(), error_message = p_message,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE id = p_id AND status = 'processing' AND lease_token = p_token
    RETURNING * INTO job;
    held := FOUND;
    IF NOT held THEN
        SELECT * INTO job FROM jobs WHERE id = p_id;
    END IF;
END
$$;

-- Give the lease back after a transient failure: queued again with attempts left, else
-- failed naming the attempts.
CREATE FUNCTION job_release(p_id uuid, p_token uuid, p_error text,
                            OUT held boolean, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET
        status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,
        error_message = CASE WHEN attempts < max_attempts THEN p_error
                        ELSE 'gave up after ' || attempts || ' attempt(s): ' || p_error END,
        completed_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE id = p_id AND status = 'processing' AND lease_token = p_token
    RETURNING * INTO job;
    held := FOUND;
    IF NOT held THEN
        SELECT * INTO job FROM jobs WHERE id = p_id;
    END IF;
END
$$;

-- Cancel a queued or processing job (cancelled is true), else return it as it stands.
CREATE FUNCTION job_cancel(p_id uuid, p_message text, OUT cancelled boolean, OUT job jobs)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET status = 'cancelled', completed_at = now(), updated_at = now(),
        error_message = p_message, lease_token = NULL, lease_expires_at = NULL
    WHERE id = p_id AND status IN ('queued', 'processing')
    RETURNING * INTO job;
    cancelled := FOUND;
    IF NOT cancelled THEN
        SELECT * INTO job FROM jobs WHERE id = p_id;
    END IF;
END
$$;

-- Every finish (completed, failed, cancelled: by compute, a claim, the sweep or a caller)
-- is announced on the channel '<schema>.job_finished' with the job id as payload, sent at
-- commit, so a status process waiting for a job (LISTEN on a direct connection) learns of
-- it without reading the table in a loop. NOTIFY itself works through PgBouncer.
CREATE FUNCTION job_finished_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.job_finished', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_finished_notify AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (NEW.completed_at IS NOT NULL AND OLD.completed_at IS NULL)
    EXECUTE FUNCTION job_finished_notify();
