-- tenantd: compatible
-- A job is found by its id, never through the index of running jobs.
--
-- These functions looked a job up by id and also tested status = 'running'
-- (or 'queued'), which the partial indexes jobs_lease_idx and the claim
-- indexes answer. Once a backend switches a function's statement to its
-- generic plan (the sixth call), the planner may price a scan of
-- jobs_lease_idx, filtered on id, as cheaply as the primary key: it does
-- whenever the statistics saw few running jobs (ANALYZE while the queue was
-- queued, then a burst of claims). Every completion, heartbeat and release
-- then read every running job: 0.86 ms each with 10,000 running, measured.
-- A lease or worker match implies running (jobs_check: running exactly when
-- locked_by is set), so the status test goes; cancel reads the row by id
-- first and decides in PL/pgSQL.

CREATE OR REPLACE FUNCTION public.tenantd_job_ext_finish(p_id uuid, p_lease uuid, p_org uuid, p_ok boolean, p_result jsonb, p_error text, p_retry boolean, p_base_ms bigint, p_max_ms bigint, OUT o_outcome text, OUT o_body text)
 RETURNS record
 LANGUAGE plpgsql
AS $$
DECLARE
    j public.jobs;
BEGIN
    IF p_ok THEN
        UPDATE public.jobs x SET status = 'succeeded', result = p_result, error = NULL,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id AND x.external AND (p_org IS NULL OR x.org_id = p_org)
           AND x.locked_by = 'lease:' || p_lease
        RETURNING * INTO j;
        IF FOUND THEN
            o_outcome := 'ok';
            o_body := public.tenantd_job_json(j)::text;
            RETURN;
        END IF;
    END IF;
    SELECT * INTO j FROM public.jobs x
     WHERE x.id = p_id AND x.external AND (p_org IS NULL OR x.org_id = p_org)
       FOR UPDATE;
    IF NOT FOUND THEN
        o_outcome := 'not_found';
        RETURN;
    END IF;
    IF j.status <> 'running' OR j.locked_by <> 'lease:' || p_lease THEN
        o_outcome := 'stale';
        RETURN;
    END IF;
    IF j.cancel_requested AND NOT p_ok THEN
        UPDATE public.jobs x SET status = 'cancelled', error = p_error,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id;
        PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job cancelled');
    ELSE
        PERFORM public.tenantd_job_finish(p_id, j.locked_by, j.attempts, p_ok, p_result, p_error,
                                          p_retry AND NOT j.cancel_requested, p_base_ms,
                                          p_max_ms, true);
    END IF;
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id;
    o_outcome := 'ok';
    o_body := public.tenantd_job_json(j)::text;
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_ext_heartbeat(p_id uuid, p_lease uuid, p_org uuid, p_progress integer, p_lease_ms integer, OUT o_outcome text, OUT o_lease_expires_at text, OUT o_cancel_requested boolean)
 RETURNS record
 LANGUAGE plpgsql
AS $$
DECLARE
    j public.jobs;
BEGIN
    UPDATE public.jobs x
       SET locked_until = least(
               clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0),
               x.leased_at + make_interval(secs => coalesce(
                   (SELECT t.timeout_s FROM public.job_types t WHERE t.type = x.type), 86400))),
           progress = coalesce(p_progress, x.progress)
     WHERE x.id = p_id AND x.external AND (p_org IS NULL OR x.org_id = p_org)
       AND x.locked_by = 'lease:' || p_lease
    RETURNING * INTO j;
    IF FOUND THEN
        o_outcome := 'ok';
        o_lease_expires_at := public.tenantd_ts(j.locked_until);
        o_cancel_requested := j.cancel_requested;
    ELSIF EXISTS (SELECT 1 FROM public.jobs x WHERE x.id = p_id AND x.external
                     AND (p_org IS NULL OR x.org_id = p_org)) THEN
        o_outcome := 'stale';
    ELSE
        o_outcome := 'not_found';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_finish(p_id uuid, p_worker text, p_attempt integer, p_ok boolean, p_result jsonb, p_error text, p_retry boolean, p_base_ms bigint, p_max_ms bigint)
 RETURNS text
 LANGUAGE plpgsql
AS $$
DECLARE
    j public.jobs;
BEGIN
    SELECT * INTO j FROM public.jobs x
     WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_ok THEN
        UPDATE public.jobs x SET status = 'succeeded', result = p_result, error = NULL,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id;
        RETURN 'succeeded';
    ELSIF p_retry AND j.attempts < j.max_attempts THEN
        UPDATE public.jobs x SET status = 'queued', error = p_error, locked_by = NULL,
               locked_until = NULL,
               run_at = clock_timestamp() + make_interval(secs =>
                   least(p_max_ms, p_base_ms * power(2, j.attempts - 1))
                   * (0.5 + random() * 0.5) / 1000.0)
         WHERE x.id = p_id;
        RETURN 'queued';
    END IF;
    UPDATE public.jobs x SET status = 'failed', error = p_error, result = p_result,
           finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
     WHERE x.id = p_id;
    PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job failed');
    RETURN 'failed';
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_finish(p_id uuid, p_worker text, p_attempt integer, p_ok boolean, p_result jsonb, p_error text, p_retry boolean, p_base_ms bigint, p_max_ms bigint, p_refund boolean)
 RETURNS text
 LANGUAGE plpgsql
AS $$
DECLARE
    j public.jobs;
BEGIN
    SELECT * INTO j FROM public.jobs x
     WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_ok THEN
        UPDATE public.jobs x SET status = 'succeeded', result = p_result, error = NULL,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id;
        RETURN 'succeeded';
    ELSIF p_retry AND j.attempts < j.max_attempts THEN
        UPDATE public.jobs x SET status = 'queued', error = p_error, locked_by = NULL,
               locked_until = NULL,
               run_at = clock_timestamp() + make_interval(secs =>
                   least(p_max_ms, p_base_ms * power(2, j.attempts - 1))
                   * (0.5 + random() * 0.5) / 1000.0)
         WHERE x.id = p_id;
        RETURN 'queued';
    END IF;
    UPDATE public.jobs x SET status = 'failed', error = p_error, result = p_result,
           finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL,
           cost_kept = NOT p_refund AND x.cost > 0
     WHERE x.id = p_id;
    IF p_refund THEN
        PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job failed');
    END IF;
    RETURN 'failed';
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_release(p_id uuid, p_worker text, p_attempt integer)
 RETURNS boolean
 LANGUAGE sql
AS $$
    WITH r AS (
        UPDATE public.jobs x SET status = 'queued', attempts = x.attempts - 1,
               locked_by = NULL, locked_until = NULL,
               started_at = CASE WHEN x.attempts = 1 THEN NULL ELSE x.started_at END
         WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
        RETURNING 1)
    SELECT count(*) > 0 FROM r
$$;

CREATE OR REPLACE FUNCTION public.tenantd_job_cancel(p_org_id uuid, p_id uuid, OUT o_outcome text, OUT o_body text)
 RETURNS record
 LANGUAGE plpgsql
AS $$
DECLARE
    j public.jobs;
BEGIN
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id AND x.org_id = p_org_id FOR UPDATE;
    IF NOT FOUND THEN
        o_outcome := 'not_found';
        RETURN;
    END IF;
    IF j.status = 'queued' THEN
        UPDATE public.jobs x SET status = 'cancelled', finished_at = clock_timestamp()
         WHERE x.id = p_id
        RETURNING * INTO j;
        PERFORM public.tenantd_credit_refund_job(p_org_id, p_id, 'refund: job cancelled');
        o_outcome := 'cancelled';
    ELSIF j.status = 'running' AND j.external THEN
        UPDATE public.jobs x SET cancel_requested = true WHERE x.id = p_id
        RETURNING * INTO j;
        o_outcome := 'cancel_requested';
    ELSE
        o_outcome := 'conflict';
    END IF;
    o_body := public.tenantd_job_json(j)::text;
END $$;
