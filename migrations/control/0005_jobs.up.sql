-- Jobs: background work an org pays for in credits (issue 4). The queue is
-- this table; workers (src/job/worker.c) claim rows with FOR UPDATE SKIP
-- LOCKED and hold them by a lease (locked_by, locked_until) that a dead
-- worker loses. Every state change is one of the functions below, so each
-- is one statement for the caller and commits with its credit effect.
--
-- Needs control migration "credits" (tenantd_credit_apply,
-- tenantd_credit_refund_job, tenantd_idem_begin/finish, and the unique
-- indexes that make a second deduction or refund of one job impossible).

CREATE TABLE public.jobs (
    id           uuid PRIMARY KEY,
    -- Orgs are never deleted as rows; tenantd_delete_org deletes their jobs.
    org_id       uuid NOT NULL REFERENCES public.orgs (id),
    -- Listing order and cursor: strictly increasing, stable under inserts.
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    type         text NOT NULL,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    payload      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    result       jsonb,
    error        text,
    priority     smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 25),
    cost         bigint NOT NULL CHECK (cost >= 0),
    run_at       timestamptz NOT NULL DEFAULT now(),  -- the next attempt's earliest start
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    locked_by    text,          -- the worker process holding the lease
    locked_until timestamptz,   -- lease end; renewed while the job runs
    CHECK ((status = 'running') = (locked_by IS NOT NULL AND locked_until IS NOT NULL))
);

-- Claiming: a skip scan over the orgs that have queued jobs, then each org's
-- next job by priority, run_at, seq. Partial: only queued rows are indexed.
CREATE INDEX jobs_claim_idx ON public.jobs (org_id, priority DESC, run_at, seq)
    WHERE status = 'queued';
-- Reaping expired leases and renewing this process's leases.
CREATE INDEX jobs_lease_idx ON public.jobs (locked_until) WHERE status = 'running';
-- Listing, newest first.
CREATE INDEX jobs_org_seq_idx ON public.jobs (org_id, seq DESC);

-- The API's Job resource. A webhook's signing secret is never shown back.
CREATE FUNCTION public.tenantd_job_json(j public.jobs) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', j.id, 'type', j.type, 'status', j.status,
        'payload', CASE WHEN j.type = 'webhook.deliver' THEN j.payload - 'secret'
                        ELSE j.payload END,
        'result', j.result, 'error', j.error, 'priority', j.priority,
        'attempts', j.attempts, 'max_attempts', j.max_attempts, 'cost', j.cost,
        'run_at', public.tenantd_ts(j.run_at), 'created_at', public.tenantd_ts(j.created_at),
        'started_at', public.tenantd_ts(j.started_at),
        'finished_at', public.tenantd_ts(j.finished_at))
$$;

-- POST /v1/jobs as one statement: the Idempotency-Key (when given), the
-- deduction of the job's cost (with the job's id, so the ledger names it),
-- the job row, the NOTIFY that wakes workers (sent at commit) and the stored
-- answer commit together. Short of credits raises TD402 and rolls it all
-- back (the key stays unused). p_run_at NULL: now. o_outcome 'executed'
-- (o_body the Job), or a tenantd_idem_begin outcome other than 'proceed'.
CREATE FUNCTION public.tenantd_job_enqueue(
    p_org_id uuid, p_type text, p_payload jsonb, p_priority integer, p_run_at timestamptz,
    p_max_attempts integer, p_cost bigint, p_key text DEFAULT NULL, p_hash text DEFAULT NULL,
    OUT o_outcome text, OUT o_status integer, OUT o_headers json, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id  uuid := gen_random_uuid();
    v_job public.jobs;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT b.o_outcome, b.o_status, b.o_headers, b.o_body
          INTO o_outcome, o_status, o_headers, o_body
          FROM public.tenantd_idem_begin(p_org_id, 'org', p_key, p_hash) b;
        IF o_outcome <> 'proceed' THEN
            RETURN;
        END IF;
    END IF;
    IF p_cost > 0 THEN
        PERFORM public.tenantd_credit_apply(p_org_id, -p_cost, 'deduction', v_id,
                                            'job ' || p_type, NULL);
    END IF;
    INSERT INTO public.jobs (id, org_id, type, payload, priority, run_at, max_attempts, cost)
    VALUES (v_id, p_org_id, p_type, coalesce(p_payload, '{}'), p_priority,
            coalesce(p_run_at, now()), p_max_attempts, p_cost)
    RETURNING * INTO v_job;
    PERFORM pg_notify('tenantd_jobs', '');
    o_outcome := 'executed';
    o_status := 202;
    o_headers := json_build_array(json_build_array('Content-Type', 'application/json'),
                                  json_build_array('Location', '/v1/jobs/' || v_id));
    o_body := public.tenantd_job_json(v_job)::text;
    IF p_key IS NOT NULL THEN
        PERFORM public.tenantd_idem_finish(p_org_id, 'org', p_key, p_hash, o_status, o_headers,
                                           o_body);
    END IF;
END $$;

-- Claims up to p_batch runnable jobs for worker p_worker, fairly between
-- orgs: a skip scan visits the orgs that have a runnable job in org_id
-- order after p_after (the caller's rotating cursor; the nil uuid starts at
-- the beginning), at most p_batch of them, takes each one's next jobs (by
-- priority, run_at, seq), and deals them out round-robin: every visited
-- org's first job, then every org's second, ... So a flood in one org
-- delays another org's job by at most one batch per worker. Rows another
-- worker holds are skipped (SKIP LOCKED), never waited for. Claimed jobs
-- become 'running' with attempts + 1 and a lease of p_lease_ms.
-- plpgsql rather than sql: its plan is cached per connection (planning this
-- statement costs more than running it).
CREATE FUNCTION public.tenantd_job_claim(p_worker text, p_after uuid, p_batch integer,
                                         p_lease_ms integer)
RETURNS TABLE (id uuid, org_id uuid, schema_name text, type text, payload jsonb,
               attempts integer, max_attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE orgs (org_id, n) AS (
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.run_at <= now() AND j.org_id > p_after
                 ORDER BY j.org_id LIMIT 1), 1
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.run_at <= now() AND j.org_id > o.org_id
                 ORDER BY j.org_id LIMIT 1), o.n + 1
          FROM orgs o WHERE o.org_id IS NOT NULL AND o.n < p_batch
    ),
    cand AS (
        SELECT c.id, c.priority, c.rn, o.n
          FROM orgs o
         CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS rn
                  FROM (SELECT j.id, j.priority FROM public.jobs j
                         WHERE j.org_id = o.org_id AND j.status = 'queued' AND j.run_at <= now()
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

-- Ends an attempt of a job that p_worker holds (attempt p_attempt). p_ok:
-- succeeded with p_result. Otherwise the attempt failed with p_error: with
-- p_retry and attempts left the job is queued again after an exponential
-- backoff with jitter (p_base_ms * 2^(attempt-1), at most p_max_ms, times
-- 0.5..1); else it is 'failed' and its cost refunded, exactly once (the
-- refund function and the ledger's unique index see to that). Returns the
-- new status, or NULL when the worker no longer holds this attempt (its
-- lease lapsed and the job was taken over): nothing changes then.
CREATE FUNCTION public.tenantd_job_finish(
    p_id uuid, p_worker text, p_attempt integer, p_ok boolean, p_result jsonb, p_error text,
    p_retry boolean, p_base_ms bigint, p_max_ms bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
    SELECT * INTO j FROM public.jobs x
     WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
       AND x.status = 'running'
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

-- Gives a claimed job back unrun (shutdown): queued again at once, the
-- attempt not counted. Returns false when p_worker no longer holds it.
CREATE FUNCTION public.tenantd_job_release(p_id uuid, p_worker text, p_attempt integer)
RETURNS boolean
LANGUAGE sql AS $$
    WITH r AS (
        UPDATE public.jobs x SET status = 'queued', attempts = x.attempts - 1,
               locked_by = NULL, locked_until = NULL,
               started_at = CASE WHEN x.attempts = 1 THEN NULL ELSE x.started_at END
         WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
           AND x.status = 'running'
        RETURNING 1)
    SELECT count(*) > 0 FROM r
$$;

-- Extends the leases of every job worker process p_worker holds.
CREATE FUNCTION public.tenantd_job_renew(p_worker text, p_lease_ms integer)
RETURNS integer
LANGUAGE sql AS $$
    WITH r AS (
        UPDATE public.jobs x
           SET locked_until = clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0)
         WHERE x.status = 'running' AND x.locked_by = p_worker
        RETURNING 1)
    SELECT count(*)::integer FROM r
$$;

-- Takes back jobs whose lease lapsed (their worker died or lost the
-- database): the lost attempt counts; with attempts left the job is queued
-- again at once, else it fails and is refunded (once). Rows another
-- reaper holds are skipped. Returns how many were queued again (the
-- NOTIFY wakes workers for them).
CREATE FUNCTION public.tenantd_job_reap(p_max integer DEFAULT 1000)
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
        IF j.attempts < j.max_attempts THEN
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

-- POST /v1/jobs/{id}/cancel: a queued job of the org becomes 'cancelled'
-- and its cost is refunded (once), in one transaction. o_outcome
-- 'cancelled' (o_body the Job), 'conflict' (the job is no longer queued;
-- o_body shows it), or 'not_found' (no such job in this org). A worker's
-- claim holds the row locked, so a job being claimed is either claimed or
-- cancelled, never both.
CREATE FUNCTION public.tenantd_job_cancel(p_org_id uuid, p_id uuid,
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
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id AND x.org_id = p_org_id;
    IF FOUND THEN
        o_outcome := 'conflict';
        o_body := public.tenantd_job_json(j)::text;
    ELSE
        o_outcome := 'not_found';
    END IF;
END $$;
