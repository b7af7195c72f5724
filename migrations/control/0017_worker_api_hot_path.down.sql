-- Undoes 0017_worker_api_hot_path: 0011's claims and finish, 0002's tenantd_ts.
CREATE OR REPLACE FUNCTION public.tenantd_ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

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
                 ORDER BY j.org_id LIMIT 1), 0
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND NOT j.external AND j.run_at <= now()
                   AND j.org_id > s.org_id
                 ORDER BY j.org_id LIMIT 1),
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
         CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS rn
                  FROM (SELECT j.id, j.priority FROM public.jobs j
                         WHERE j.org_id = o.org_id AND j.status = 'queued' AND NOT j.external
                           AND j.run_at <= now()
                         ORDER BY j.priority DESC, j.run_at, j.seq LIMIT p_batch) x) c
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
                 ORDER BY j.org_id LIMIT 1), 0
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.external AND j.run_at <= now()
                   AND j.type = ANY (p_types) AND (p_org IS NULL OR j.org_id = p_org)
                   AND j.org_id > s.org_id
                 ORDER BY j.org_id LIMIT 1),
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
         CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS rn
                  FROM (SELECT j.id, j.priority FROM public.jobs j
                         WHERE j.org_id = o.org_id AND j.status = 'queued' AND j.external
                           AND j.run_at <= now() AND j.type = ANY (p_types)
                         ORDER BY j.priority DESC, j.run_at, j.seq LIMIT p_batch) x) c
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
    SELECT c.org_id, c.type,
           (public.tenantd_job_json(c)::jsonb
            || jsonb_build_object('org_id', c.org_id,
                                  'lease_id', substr(c.locked_by, 7),
                                  'lease_expires_at', public.tenantd_ts(c.locked_until)))::json
      FROM claimed c;
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_ext_finish(
    p_id uuid, p_lease uuid, p_org uuid, p_ok boolean, p_result jsonb, p_error text,
    p_retry boolean, p_base_ms bigint, p_max_ms bigint,
    OUT o_outcome text, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
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
