-- Jobs your own code runs (issue 13): job types declared by the operator and
-- run by external workers over HTTP (src/job/external.c, workerapi.c), a
-- running job's progress and cancel request, and retrying a failed job.
--
-- In-process workers never claim an external job (jobs.external, set from
-- public.job_types when the job is inserted); external workers claim only
-- external jobs, each with its own lease id (locked_by = 'lease:<uuid>'),
-- renewed by the worker's heartbeats rather than by a process. Reaping,
-- retries, refunds and org fairness are those of the internal jobs.

CREATE TABLE public.job_types (
    type           text PRIMARY KEY CHECK (type ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    cost           bigint NOT NULL CHECK (cost BETWEEN 0 AND 1000000000),
    description    text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    timeout_s      integer NOT NULL DEFAULT 300 CHECK (timeout_s BETWEEN 1 AND 86400),
    max_attempts   integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 25),
    payload_schema jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.jobs
    ADD COLUMN external boolean NOT NULL DEFAULT false,
    ADD COLUMN progress smallint CHECK (progress BETWEEN 0 AND 100),
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false,
    -- When the current external lease began: heartbeats never extend it
    -- past leased_at + the type's timeout_s.
    ADD COLUMN leased_at timestamptz,
    -- 1 + the retries of a failed job (POST /v1/jobs/{id}/retry): each run
    -- is charged, and refunded, at most once.
    ADD COLUMN runs integer NOT NULL DEFAULT 1 CHECK (runs >= 1);

CREATE FUNCTION public.tenantd_job_set_external() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.external := EXISTS (SELECT 1 FROM public.job_types t WHERE t.type = NEW.type);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_set_external BEFORE INSERT ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_job_set_external();

DROP INDEX public.jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON public.jobs (org_id, priority DESC, run_at, seq)
    WHERE status = 'queued' AND NOT external;
CREATE INDEX jobs_ext_claim_idx ON public.jobs (org_id, priority DESC, run_at, seq)
    WHERE status = 'queued' AND external;

-- The ledger names the run of a job a deduction or refund belongs to.
ALTER TABLE public.credit_transactions ADD COLUMN job_run integer NOT NULL DEFAULT 1;
CREATE FUNCTION public.tenantd_ledger_job_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.job_id IS NOT NULL THEN
        -- A job's first deduction precedes its row: run 1.
        NEW.job_run := coalesce((SELECT j.runs FROM public.jobs j WHERE j.id = NEW.job_id), 1);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_transactions_job_run BEFORE INSERT ON public.credit_transactions
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_ledger_job_run();
DROP INDEX public.credit_transactions_job_deduction_key;
DROP INDEX public.credit_transactions_job_refund_key;
CREATE UNIQUE INDEX credit_transactions_job_deduction_key
    ON public.credit_transactions (job_id, job_run) WHERE type = 'deduction';
CREATE UNIQUE INDEX credit_transactions_job_refund_key
    ON public.credit_transactions (job_id, job_run) WHERE type = 'refund';

-- As in 0004, per run: the current run's deduction is refunded once.
CREATE OR REPLACE FUNCTION public.tenantd_credit_refund_job(
    p_org_id uuid, p_job_id uuid, p_description text DEFAULT NULL)
RETURNS public.credit_transactions
LANGUAGE plpgsql AS $$
DECLARE
    v_charged bigint;
    v_run integer;
BEGIN
    PERFORM 1 FROM public.credit_accounts a WHERE a.org_id = p_org_id FOR UPDATE;
    v_run := coalesce((SELECT j.runs FROM public.jobs j WHERE j.id = p_job_id), 1);
    IF EXISTS (SELECT 1 FROM public.credit_transactions t
                WHERE t.job_id = p_job_id AND t.job_run = v_run AND t.type = 'refund') THEN
        RETURN NULL;
    END IF;
    SELECT -t.amount INTO v_charged FROM public.credit_transactions t
     WHERE t.job_id = p_job_id AND t.job_run = v_run AND t.type = 'deduction'
       AND t.org_id = p_org_id;
    IF v_charged IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.tenantd_credit_apply(p_org_id, v_charged, 'refund', p_job_id,
                                       coalesce(p_description, 'job refund'), NULL);
END $$;

-- api_keys may have the role worker (the worker API of its org only).
ALTER TABLE public.api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE public.api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'member', 'worker'));

-- The Job resource gains progress and cancel_requested.
CREATE OR REPLACE FUNCTION public.tenantd_job_json(j public.jobs) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', j.id, 'type', j.type, 'status', j.status,
        'payload', CASE WHEN j.type = 'webhook.deliver' THEN j.payload - 'secret'
                        ELSE j.payload END,
        'result', j.result, 'error', j.error, 'priority', j.priority,
        'attempts', j.attempts, 'max_attempts', j.max_attempts, 'cost', j.cost,
        'progress', j.progress, 'cancel_requested', j.cancel_requested,
        'run_at', public.tenantd_ts(j.run_at), 'created_at', public.tenantd_ts(j.created_at),
        'started_at', public.tenantd_ts(j.started_at),
        'finished_at', public.tenantd_ts(j.finished_at))
$$;

-- As in 0006 (fair, SKIP LOCKED, suspended orgs wait), internal jobs only.
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

-- POST /v1/worker/claim: up to p_batch external jobs of the types p_types,
-- of org p_org (an org's worker key) or of every org (NULL: the operator's
-- worker token), fairly between orgs exactly as tenantd_job_claim (the
-- caller keeps the rotating cursor p_after). Each claimed job gets its own
-- lease id; the lease lasts p_lease_ms, never past the type's timeout_s.
-- Returns the Job JSON with lease_id and lease_expires_at added.
CREATE FUNCTION public.tenantd_job_ext_claim(p_org uuid, p_types text[], p_after uuid,
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

-- A worker's heartbeat: extends its lease (up to p_lease_ms, never past
-- the attempt's timeout) and records progress (NULL: unchanged).
-- o_outcome 'ok', 'stale' (the job is not running under this lease) or
-- 'not_found' (no such external job, in p_org when given).
CREATE FUNCTION public.tenantd_job_ext_heartbeat(
    p_id uuid, p_lease uuid, p_org uuid, p_progress integer, p_lease_ms integer,
    OUT o_outcome text, OUT o_lease_expires_at text, OUT o_cancel_requested boolean)
LANGUAGE plpgsql AS $$
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
       AND x.status = 'running' AND x.locked_by = 'lease:' || p_lease
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

-- A worker ends its attempt: p_ok with p_result, or failed with p_error
-- (p_retry: queued again while attempts remain, as tenantd_job_finish). A
-- job whose cancel was requested and that did not succeed ends
-- 'cancelled' and is refunded (once). o_outcome 'ok' (o_body the Job),
-- 'stale' or 'not_found' as for the heartbeat.
CREATE FUNCTION public.tenantd_job_ext_finish(
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

-- As in 0005, and a lapsed job whose cancel was requested ends cancelled
-- (refunded once) instead of running again.
CREATE OR REPLACE FUNCTION public.tenantd_job_reap(p_max integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
    v_requeued integer := 0;
BEGIN
    FOR j IN SELECT * FROM public.jobs x
              WHERE x.status = 'running' AND x.locked_until < clock_timestamp()
              ORDER BY x.locked_until LIMIT p_max
                FOR UPDATE SKIP LOCKED
    LOOP
        IF j.cancel_requested THEN
            UPDATE public.jobs x SET status = 'cancelled', locked_by = NULL, locked_until = NULL,
                   error = 'lease expired (worker lost)', finished_at = clock_timestamp()
             WHERE x.id = j.id;
            PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job cancelled');
        ELSIF j.attempts < j.max_attempts THEN
            UPDATE public.jobs x SET status = 'queued', locked_by = NULL, locked_until = NULL,
                   error = 'lease expired (worker lost)', run_at = clock_timestamp()
             WHERE x.id = j.id;
            v_requeued := v_requeued + 1;
        ELSE
            UPDATE public.jobs x SET status = 'failed', locked_by = NULL, locked_until = NULL,
                   error = 'lease expired (worker lost)', finished_at = clock_timestamp()
             WHERE x.id = j.id;
            PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job failed');
        END IF;
    END LOOP;
    IF v_requeued > 0 THEN
        PERFORM pg_notify('tenantd_jobs', '');
    END IF;
    RETURN v_requeued;
END $$;

-- As in 0005, and a running job gets cancel_requested (o_outcome
-- 'cancel_requested', o_body the Job): its worker learns it at its next
-- heartbeat; the job ends cancelled (refunded) unless it succeeds first.
CREATE OR REPLACE FUNCTION public.tenantd_job_cancel(p_org_id uuid, p_id uuid,
                                                     OUT o_outcome text, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
    UPDATE public.jobs x SET status = 'cancelled', finished_at = clock_timestamp()
     WHERE x.id = p_id AND x.org_id = p_org_id AND x.status = 'queued'
    RETURNING * INTO j;
    IF FOUND THEN
        PERFORM public.tenantd_credit_refund_job(p_org_id, p_id, 'refund: job cancelled');
        o_outcome := 'cancelled';
        o_body := public.tenantd_job_json(j)::text;
        RETURN;
    END IF;
    UPDATE public.jobs x SET cancel_requested = true
     WHERE x.id = p_id AND x.org_id = p_org_id AND x.status = 'running'
    RETURNING * INTO j;
    IF FOUND THEN
        o_outcome := 'cancel_requested';
        o_body := public.tenantd_job_json(j)::text;
        RETURN;
    END IF;
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id AND x.org_id = p_org_id;
    IF FOUND THEN
        o_outcome := 'conflict';
        o_body := public.tenantd_job_json(j)::text;
    ELSE
        o_outcome := 'not_found';
    END IF;
END $$;

-- POST /v1/jobs/{id}/retry: a failed job of the org is queued again as a
-- new run (attempts from 0) and charged its cost again, in one
-- transaction (TD402 when short: nothing changes). o_outcome 'queued'
-- (o_body the Job), 'conflict' (not failed) or 'not_found'.
CREATE FUNCTION public.tenantd_job_retry(p_org_id uuid, p_id uuid,
                                         OUT o_outcome text, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
    UPDATE public.jobs x
       SET status = 'queued', runs = x.runs + 1, attempts = 0, error = NULL, result = NULL,
           progress = NULL, cancel_requested = false, cost_kept = false, started_at = NULL,
           finished_at = NULL, run_at = now()
     WHERE x.id = p_id AND x.org_id = p_org_id AND x.status = 'failed'
    RETURNING * INTO j;
    IF FOUND THEN
        IF j.cost > 0 THEN
            PERFORM public.tenantd_credit_apply(p_org_id, -j.cost, 'deduction', j.id,
                                                'job ' || j.type || ' (retry)', NULL);
        END IF;
        PERFORM pg_notify('tenantd_jobs', '');
        o_outcome := 'queued';
        o_body := public.tenantd_job_json(j)::text;
        RETURN;
    END IF;
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id AND x.org_id = p_org_id;
    IF FOUND THEN
        o_outcome := 'conflict';
        o_body := public.tenantd_job_json(j)::text;
    ELSE
        o_outcome := 'not_found';
    END IF;
END $$;
