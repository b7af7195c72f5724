-- tenantd: compatible
-- The worker API's hot path (issue 13's benchmark, test/bench/jobs.sh): the
-- same answers for less of the database's time per job.
--
-- tenantd_ts is STABLE, as to_char is: declared IMMUTABLE it could not be
-- inlined, so every timestamp of every rendered row was a call of its own
-- (nine per job on the worker path; a sizeable share of a claim).
CREATE OR REPLACE FUNCTION public.tenantd_ts(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- Both claims (as in 0011):
-- * the skip scan orders by the whole claim index, so only the partial
--   index of queued jobs can answer it: ordered by org_id alone the planner
--   could take jobs_org_seq_idx and step over every finished job of the
--   orgs on its way (measured: 23 ms for a probe past 15,000 done jobs);
-- * each org found gives its share of the batch plus one spare (for rows a
--   concurrent claim holds) rather than a whole batch: the same jobs are
--   taken, from a tenth of the candidates when ten orgs have work.
CREATE OR REPLACE FUNCTION public.tenantd_job_claim(p_worker text, p_after uuid, p_batch integer,
                                                    p_lease_ms integer)
RETURNS TABLE (id uuid, org_id uuid, schema_name text, type text, payload jsonb,
               attempts integer, max_attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE scan (org_id, n) AS (
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND NOT j.external AND j.run_at <= now()
                   AND j.org_id > p_after
                 ORDER BY j.org_id, j.priority DESC, j.run_at, j.seq LIMIT 1), 0
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND NOT j.external AND j.run_at <= now()
                   AND j.org_id > s.org_id
                 ORDER BY j.org_id, j.priority DESC, j.run_at, j.seq LIMIT 1),
               s.n + (SELECT count(*)::integer FROM public.orgs x
                       WHERE x.id = s.org_id AND x.status = 'active')
          FROM scan s WHERE s.org_id IS NOT NULL AND s.n < p_batch
    ),
    orgs (org_id, n) AS (
        SELECT s.org_id, s.n FROM scan s
          JOIN public.orgs x ON x.id = s.org_id AND x.status = 'active'
    ),
    cand AS (
        SELECT c.id, c.priority, c.rn, o.n
          FROM orgs o
         CROSS JOIN (SELECT greatest(count(*), 1)::integer AS n FROM orgs) m
         CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS rn
                  FROM (SELECT j.id, j.priority FROM public.jobs j
                         WHERE j.org_id = o.org_id AND j.status = 'queued' AND NOT j.external
                           AND j.run_at <= now()
                         ORDER BY j.priority DESC, j.run_at, j.seq
                         LIMIT (p_batch + m.n - 1) / m.n + 1) x) c
         WHERE o.org_id IS NOT NULL
    ),
    picked AS (
        SELECT j.id FROM public.jobs j JOIN cand c ON c.id = j.id
         WHERE j.status = 'queued' AND j.run_at <= now()
         ORDER BY c.rn, c.priority DESC, c.n
         LIMIT p_batch
           FOR UPDATE OF j SKIP LOCKED
    ),
    claimed AS (
        UPDATE public.jobs j
           SET status = 'running', attempts = j.attempts + 1, locked_by = p_worker,
               locked_until = clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0),
               started_at = coalesce(j.started_at, clock_timestamp())
          FROM picked p WHERE j.id = p.id
        RETURNING j.*
    )
    SELECT c.id, c.org_id, o.schema_name, c.type, c.payload, c.attempts, c.max_attempts
      FROM claimed c JOIN public.orgs o ON o.id = c.org_id;
END $$;

-- As above; and the claimed job's JSON is built in one call rather than as
-- the Job (tenantd_job_json) turned into jsonb and merged with the lease.
-- Same fields; their order now is the Job's followed by the lease's.
CREATE OR REPLACE FUNCTION public.tenantd_job_ext_claim(p_org uuid, p_types text[], p_after uuid,
                                             p_batch integer, p_lease_ms integer)
RETURNS TABLE (org_id uuid, type text, job json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE scan (org_id, n) AS (
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.external AND j.run_at <= now()
                   AND j.type = ANY (p_types) AND (p_org IS NULL OR j.org_id = p_org)
                   AND j.org_id > p_after
                 ORDER BY j.org_id, j.priority DESC, j.run_at, j.seq LIMIT 1), 0
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.external AND j.run_at <= now()
                   AND j.type = ANY (p_types) AND (p_org IS NULL OR j.org_id = p_org)
                   AND j.org_id > s.org_id
                 ORDER BY j.org_id, j.priority DESC, j.run_at, j.seq LIMIT 1),
               s.n + (SELECT count(*)::integer FROM public.orgs x
                       WHERE x.id = s.org_id AND x.status = 'active')
          FROM scan s WHERE s.org_id IS NOT NULL AND s.n < p_batch
    ),
    orgs (org_id, n) AS (
        SELECT s.org_id, s.n FROM scan s
          JOIN public.orgs x ON x.id = s.org_id AND x.status = 'active'
    ),
    cand AS (
        SELECT c.id, c.priority, c.rn, o.n
          FROM orgs o
         CROSS JOIN (SELECT greatest(count(*), 1)::integer AS n FROM orgs) m
         CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS rn
                  FROM (SELECT j.id, j.priority FROM public.jobs j
                         WHERE j.org_id = o.org_id AND j.status = 'queued' AND j.external
                           AND j.run_at <= now() AND j.type = ANY (p_types)
                         ORDER BY j.priority DESC, j.run_at, j.seq
                         LIMIT (p_batch + m.n - 1) / m.n + 1) x) c
         WHERE o.org_id IS NOT NULL
    ),
    picked AS (
        SELECT j.id FROM public.jobs j JOIN cand c ON c.id = j.id
         WHERE j.status = 'queued' AND j.run_at <= now()
         ORDER BY c.rn, c.priority DESC, c.n
         LIMIT p_batch
           FOR UPDATE OF j SKIP LOCKED
    ),
    claimed AS (
        UPDATE public.jobs j
           SET status = 'running', attempts = j.attempts + 1,
               locked_by = 'lease:' || gen_random_uuid(),
               locked_until = clock_timestamp() + make_interval(secs => least(
                   p_lease_ms / 1000.0,
                   coalesce((SELECT t.timeout_s FROM public.job_types t WHERE t.type = j.type),
                            86400))),
               leased_at = clock_timestamp(), progress = NULL,
               started_at = coalesce(j.started_at, clock_timestamp())
          FROM picked p WHERE j.id = p.id
        RETURNING j.*
    )
    SELECT c.org_id, c.type, json_build_object(
        'id', c.id, 'type', c.type, 'status', c.status,
        'payload', CASE WHEN c.type = 'webhook.deliver' THEN c.payload - 'secret'
                        ELSE c.payload END,
        'result', c.result, 'error', c.error, 'priority', c.priority,
        'attempts', c.attempts, 'max_attempts', c.max_attempts, 'cost', c.cost,
        'progress', c.progress, 'cancel_requested', c.cancel_requested,
        'run_at', public.tenantd_ts(c.run_at), 'created_at', public.tenantd_ts(c.created_at),
        'started_at', public.tenantd_ts(c.started_at),
        'finished_at', public.tenantd_ts(c.finished_at),
        'org_id', c.org_id, 'lease_id', substr(c.locked_by, 7),
        'lease_expires_at', public.tenantd_ts(c.locked_until))
      FROM claimed c;
END $$;

-- A completion (p_ok) is one UPDATE guarded by the lease, as the common
-- case: it was a locking read, tenantd_job_finish's own locking read and
-- UPDATE, then a read of the result. Anything else (a failure, a stale or
-- unknown lease) takes 0011's way unchanged.
CREATE OR REPLACE FUNCTION public.tenantd_job_ext_finish(
    p_id uuid, p_lease uuid, p_org uuid, p_ok boolean, p_result jsonb, p_error text,
    p_retry boolean, p_base_ms bigint, p_max_ms bigint,
    OUT o_outcome text, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
    IF p_ok THEN
        UPDATE public.jobs x SET status = 'succeeded', result = p_result, error = NULL,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id AND x.external AND (p_org IS NULL OR x.org_id = p_org)
           AND x.status = 'running' AND x.locked_by = 'lease:' || p_lease
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
