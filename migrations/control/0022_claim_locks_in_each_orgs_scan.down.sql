-- Undoes 0022_claim_locks_in_each_orgs_scan: 0017's in-process claim and
-- 0019's external claim.
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

CREATE OR REPLACE FUNCTION public.tenantd_job_ext_claim(p_org uuid, p_types text[], p_after uuid,
                                             p_batch integer, p_lease_ms integer)
RETURNS TABLE (org_id uuid, type text, job json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ids uuid[];
BEGIN
    IF p_org IS NOT NULL THEN
        -- One org's worker: its own jobs, straight from the claim index.
        SELECT array_agg(p.id ORDER BY p.priority DESC, p.run_at, p.seq) INTO ids FROM (
            SELECT j.id, j.priority, j.run_at, j.seq FROM public.jobs j
             WHERE j.org_id = p_org AND j.status = 'queued' AND j.external
               AND j.run_at <= now() AND j.type = ANY (p_types)
               AND EXISTS (SELECT 1 FROM public.orgs x WHERE x.id = p_org AND x.status = 'active')
             ORDER BY j.priority DESC, j.run_at, j.seq
             LIMIT p_batch
               FOR UPDATE OF j SKIP LOCKED) p;
    ELSE
        -- The operator's worker: 0017's fair skip scan over the orgs.
        WITH RECURSIVE scan (org_id, n) AS (
            SELECT (SELECT j.org_id FROM public.jobs j
                     WHERE j.status = 'queued' AND j.external AND j.run_at <= now()
                       AND j.type = ANY (p_types) AND j.org_id > p_after
                     ORDER BY j.org_id, j.priority DESC, j.run_at, j.seq LIMIT 1), 0
            UNION ALL
            SELECT (SELECT j.org_id FROM public.jobs j
                     WHERE j.status = 'queued' AND j.external AND j.run_at <= now()
                       AND j.type = ANY (p_types) AND j.org_id > s.org_id
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
            SELECT j.id, c.rn, c.priority, c.n FROM public.jobs j JOIN cand c ON c.id = j.id
             WHERE j.status = 'queued' AND j.run_at <= now()
             ORDER BY c.rn, c.priority DESC, c.n
             LIMIT p_batch
               FOR UPDATE OF j SKIP LOCKED
        )
        SELECT array_agg(p.id ORDER BY p.rn, p.priority DESC, p.n) INTO ids FROM picked p;
    END IF;
    IF ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE public.jobs j
           SET status = 'running', attempts = j.attempts + 1,
               locked_by = 'lease:' || gen_random_uuid(),
               locked_until = clock_timestamp() + make_interval(secs => least(
                   p_lease_ms / 1000.0,
                   coalesce((SELECT t.timeout_s FROM public.job_types t WHERE t.type = j.type),
                            86400))),
               leased_at = clock_timestamp(), progress = NULL,
               started_at = coalesce(j.started_at, clock_timestamp())
         WHERE j.id = ANY (ids)
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
      FROM claimed c
     ORDER BY array_position(ids, c.id); -- the picked order: orgs in turn, priority first
END $$;
