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

-- As in 0005, and a running external job gets cancel_requested (o_outcome
-- 'cancel_requested', o_body the Job): its worker learns it at its next
-- heartbeat; the job ends cancelled (refunded) unless it succeeds first.
-- In-process handlers cannot be told, so their running jobs stay 409.
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
     WHERE x.id = p_id AND x.org_id = p_org_id AND x.status = 'running' AND x.external
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

-- ---- Schedules -------------------------------------------------------------
--
-- A schedule enqueues (and charges) a job at each tick of a five-field cron
-- in a time zone. Every serve process ticks (tenantd_schedule_tick): due
-- schedules are locked FOR UPDATE SKIP LOCKED, and the tick's job, its
-- record and the schedule's next_run_at commit together, so each tick
-- happens exactly once whichever process gets it (the primary key of
-- schedule_ticks is the backstop). The cron sets are expanded by the C
-- parser (src/job/cron.c); cron keeps the text as given.
CREATE TABLE public.schedules (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id       uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    type         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    cron         text NOT NULL,
    timezone     text NOT NULL,
    c_minute     integer[] NOT NULL,
    c_hour       integer[] NOT NULL,
    c_dom        integer[] NOT NULL,
    c_month      integer[] NOT NULL,
    c_dow        integer[] NOT NULL,
    c_dom_any    boolean NOT NULL,
    c_dow_any    boolean NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    next_run_at  timestamptz,          -- NULL: the cron never matches again
    last_tick_at timestamptz,
    last_outcome text,                 -- 'enqueued', 'skipped: ...'
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON public.schedules (next_run_at) WHERE NOT paused;
CREATE INDEX schedules_org_idx ON public.schedules (org_id, created_at);

CREATE TABLE public.schedule_ticks (
    schedule_id uuid NOT NULL REFERENCES public.schedules (id) ON DELETE CASCADE,
    tick_at     timestamptz NOT NULL,  -- the cron time this tick is for
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome     text NOT NULL,         -- 'enqueued', 'skipped: insufficient credits', ...
    job_id      uuid,
    PRIMARY KEY (schedule_id, tick_at)
);

-- The first cron time after p_after, in time zone p_tz. Local times a DST
-- gap skips do not exist, so they do not run; a local time that a DST fold
-- repeats is one candidate, so it runs once. NULL when nothing matches in
-- four years (e.g. 30 February).
CREATE FUNCTION public.tenantd_cron_next(s public.schedules, p_after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    la timestamp := date_trunc('minute', p_after AT TIME ZONE s.timezone);
    d  date := la::date;
    c  timestamp;
    u  timestamptz;
    h  integer;
    m  integer;
BEGIN
    FOR i IN 0 .. 1461 LOOP
        IF extract(month FROM d)::int = ANY (s.c_month) AND
           (CASE WHEN s.c_dom_any AND s.c_dow_any THEN true
                 WHEN s.c_dom_any THEN extract(dow FROM d)::int = ANY (s.c_dow)
                 WHEN s.c_dow_any THEN extract(day FROM d)::int = ANY (s.c_dom)
                 ELSE extract(day FROM d)::int = ANY (s.c_dom)
                      OR extract(dow FROM d)::int = ANY (s.c_dow) END) THEN
            FOREACH h IN ARRAY s.c_hour LOOP
                FOREACH m IN ARRAY s.c_minute LOOP
                    c := d + make_interval(hours => h, mins => m);
                    IF c > la THEN
                        u := c AT TIME ZONE s.timezone;
                        IF (u AT TIME ZONE s.timezone) = c AND u > p_after THEN
                            RETURN u;
                        END IF;
                    END IF;
                END LOOP;
            END LOOP;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION public.tenantd_schedule_json(s public.schedules) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', s.id, 'type', s.type, 'payload', s.payload, 'cron', s.cron,
        'timezone', s.timezone, 'paused', s.paused,
        'next_run_at', public.tenantd_ts(s.next_run_at),
        'last_tick_at', public.tenantd_ts(s.last_tick_at), 'last_outcome', s.last_outcome,
        'created_at', public.tenantd_ts(s.created_at),
        'updated_at', public.tenantd_ts(s.updated_at))
$$;

-- Fires the due ticks (at most p_max schedules) as of p_now (the caller's
-- clock: now(), or a test's fake clock). Each due schedule enqueues one job
-- for the tick next_run_at, charged like POST /v1/jobs: p_costs maps the
-- built-in types to their configured cost, declared types cost what
-- job_types says. A tick short of credits (or of an unknown type) is
-- skipped and recorded. The next run is the first cron time after
-- max(tick, p_now): ticks missed while nothing ran are not replayed, the
-- late one fires once. Returns the ticks fired.
CREATE FUNCTION public.tenantd_schedule_tick(p_now timestamptz, p_costs jsonb,
                                             p_max integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    s public.schedules;
    v_cost bigint;
    v_body text;
    v_outcome text;
    v_status text;
    v_job uuid;
    v_n integer := 0;
BEGIN
    FOR s IN SELECT * FROM public.schedules x
              WHERE NOT x.paused AND x.next_run_at <= p_now
              ORDER BY x.next_run_at LIMIT p_max
                FOR UPDATE SKIP LOCKED
    LOOP
        v_job := NULL;
        v_cost := coalesce((p_costs ->> s.type)::bigint,
                           (SELECT t.cost FROM public.job_types t WHERE t.type = s.type));
        v_status := (SELECT o.status FROM public.orgs o WHERE o.id = s.org_id);
        IF v_status = 'deleted' THEN
            -- The org is gone (tenantd_delete_org predates schedules).
            DELETE FROM public.schedules x WHERE x.id = s.id;
            CONTINUE;
        ELSIF v_status <> 'active' THEN
            v_outcome := 'skipped: organization suspended'; -- suspension stops spending
        ELSIF v_cost IS NULL THEN
            v_outcome := 'skipped: unknown job type';
        ELSE
            BEGIN
                SELECT e.o_body INTO v_body
                  FROM public.tenantd_job_enqueue(
                           s.org_id, s.type, s.payload, 0, NULL,
                           coalesce((SELECT t.max_attempts FROM public.job_types t
                                      WHERE t.type = s.type), 3),
                           v_cost) e;
                v_job := (v_body::json ->> 'id')::uuid;
                v_outcome := 'enqueued';
            EXCEPTION WHEN SQLSTATE 'TD402' THEN
                v_outcome := 'skipped: insufficient credits';
            END;
        END IF;
        INSERT INTO public.schedule_ticks (schedule_id, tick_at, outcome, job_id)
        VALUES (s.id, s.next_run_at, v_outcome, v_job);
        UPDATE public.schedules x
           SET last_tick_at = s.next_run_at, last_outcome = v_outcome,
               next_run_at = public.tenantd_cron_next(s, greatest(s.next_run_at, p_now))
         WHERE x.id = s.id;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END $$;

-- POST /v1/schedules: the schedule with its first run after p_now. An
-- unknown time zone raises 22023 (the caller answers 422).
CREATE FUNCTION public.tenantd_schedule_create(
    p_org uuid, p_type text, p_payload jsonb, p_cron text, p_tz text, p_min integer[],
    p_hour integer[], p_dom integer[], p_month integer[], p_dow integer[], p_dom_any boolean,
    p_dow_any boolean, p_paused boolean, p_now timestamptz)
RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    s public.schedules;
BEGIN
    PERFORM now() AT TIME ZONE p_tz;
    INSERT INTO public.schedules (org_id, type, payload, cron, timezone, c_minute, c_hour, c_dom,
                                  c_month, c_dow, c_dom_any, c_dow_any, paused)
    VALUES (p_org, p_type, coalesce(p_payload, '{}'), p_cron, p_tz, p_min, p_hour, p_dom,
            p_month, p_dow, p_dom_any, p_dow_any, coalesce(p_paused, false))
    RETURNING * INTO s;
    UPDATE public.schedules x SET next_run_at = public.tenantd_cron_next(s, p_now)
     WHERE x.id = s.id RETURNING * INTO s;
    RETURN public.tenantd_schedule_json(s);
END $$;

-- PATCH /v1/schedules/{id}: NULL arguments keep their value; a new cron or
-- time zone, or a resume, plans the next run from p_now (a paused
-- schedule's missed ticks are not replayed). NULL when no such schedule.
CREATE FUNCTION public.tenantd_schedule_update(
    p_org uuid, p_id uuid, p_paused boolean, p_cron text, p_tz text, p_min integer[],
    p_hour integer[], p_dom integer[], p_month integer[], p_dow integer[], p_dom_any boolean,
    p_dow_any boolean, p_now timestamptz)
RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    s public.schedules;
    v_replan boolean;
BEGIN
    IF p_tz IS NOT NULL THEN
        PERFORM now() AT TIME ZONE p_tz;
    END IF;
    SELECT * INTO s FROM public.schedules x WHERE x.id = p_id AND x.org_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_replan := p_cron IS NOT NULL OR p_tz IS NOT NULL OR (s.paused AND p_paused = false);
    UPDATE public.schedules x
       SET paused = coalesce(p_paused, x.paused), cron = coalesce(p_cron, x.cron),
           timezone = coalesce(p_tz, x.timezone), c_minute = coalesce(p_min, x.c_minute),
           c_hour = coalesce(p_hour, x.c_hour), c_dom = coalesce(p_dom, x.c_dom),
           c_month = coalesce(p_month, x.c_month), c_dow = coalesce(p_dow, x.c_dow),
           c_dom_any = coalesce(p_dom_any, x.c_dom_any),
           c_dow_any = coalesce(p_dow_any, x.c_dow_any), updated_at = now()
     WHERE x.id = p_id RETURNING * INTO s;
    IF v_replan THEN
        UPDATE public.schedules x SET next_run_at = public.tenantd_cron_next(s, p_now)
         WHERE x.id = p_id RETURNING * INTO s;
    END IF;
    RETURN public.tenantd_schedule_json(s);
END $$;

-- ---- Event webhooks ---------------------------------------------------------
--
-- An org subscribes a URL to events. Each event is delivered once per
-- subscription as a webhook.deliver job (the signed, retried machinery:
-- X-Tenantd-Signature, backoff, allow list), free of charge, with the
-- event's id in the payload (the worker sends it as X-Tenantd-Event, so a
-- receiver drops a retried delivery it already has). Events are raised by
-- triggers, in the transaction of the change itself: an event is delivered
-- if and only if its change committed.
CREATE TABLE public.webhook_subscriptions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id            uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    url               text NOT NULL,
    events            text[] NOT NULL CHECK (cardinality(events) >= 1 AND events <@ ARRAY[
                          'job.succeeded', 'job.failed', 'credits.low', 'user.created',
                          'user.removed', 'invitation.accepted']::text[]),
    secret            text NOT NULL,
    -- credits.low fires when the balance falls below this.
    credits_low_below bigint NOT NULL DEFAULT 100 CHECK (credits_low_below >= 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions_org_idx ON public.webhook_subscriptions (org_id, created_at);

CREATE FUNCTION public.tenantd_webhook_json(w public.webhook_subscriptions) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', w.id, 'url', w.url, 'events', w.events,
                             'credits_low_below', w.credits_low_below,
                             'created_at', public.tenantd_ts(w.created_at))
$$;

-- Queues one delivery of event p_type (p_data its object) to every
-- subscription of the org to it (p_low: only those whose credits_low_below
-- the balance crossed, for credits.low). Returns the deliveries queued.
CREATE FUNCTION public.tenantd_event_emit(p_org uuid, p_type text, p_data json,
                                          p_low bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    w public.webhook_subscriptions;
    v_event uuid := gen_random_uuid();
    v_n integer := 0;
BEGIN
    FOR w IN SELECT * FROM public.webhook_subscriptions x
              WHERE x.org_id = p_org AND p_type = ANY (x.events)
                AND EXISTS (SELECT 1 FROM public.orgs o WHERE o.id = p_org
                               AND o.status <> 'deleted')
                AND (p_low IS NULL OR (x.credits_low_below <= p_low[1]
                                       AND x.credits_low_below > p_low[2]))
    LOOP
        INSERT INTO public.jobs (id, org_id, type, payload, max_attempts, cost)
        VALUES (gen_random_uuid(), p_org, 'webhook.deliver',
                jsonb_build_object('url', w.url, 'secret', w.secret, 'event_id', v_event,
                                   'body', jsonb_build_object(
                                       'id', v_event, 'type', p_type,
                                       'created_at', public.tenantd_ts(clock_timestamp()),
                                       'data', p_data)),
                5, 0);
        v_n := v_n + 1;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('tenantd_jobs', '');
    END IF;
    RETURN v_n;
END $$;

-- job.succeeded / job.failed: when a job ends so. Deliveries of events are
-- jobs too; their own outcome raises nothing (no loops).
CREATE FUNCTION public.tenantd_event_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.type = 'webhook.deliver' AND NEW.payload ? 'event_id') THEN
        PERFORM public.tenantd_event_emit(NEW.org_id, 'job.' || NEW.status,
                                          public.tenantd_job_json(NEW));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_event AFTER UPDATE OF status ON public.jobs
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed') AND OLD.status <> NEW.status)
    EXECUTE FUNCTION public.tenantd_event_job();

-- credits.low: a ledger row that takes the balance from at or above a
-- subscription's threshold to below it.
CREATE FUNCTION public.tenantd_event_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount < 0 THEN
        PERFORM public.tenantd_event_emit(
            NEW.org_id, 'credits.low',
            json_build_object('balance', NEW.balance_after, 'transaction_id', NEW.id),
            ARRAY[NEW.balance_after - NEW.amount, NEW.balance_after]);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER credit_transactions_event AFTER INSERT ON public.credit_transactions
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_event_credits();

CREATE FUNCTION public.tenantd_event_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM public.tenantd_event_emit(NEW.org_id, 'user.created',
                                          public.tenantd_user_json(NEW));
    ELSE
        PERFORM public.tenantd_event_emit(OLD.org_id, 'user.removed',
                                          public.tenantd_user_json(OLD));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER users_event AFTER INSERT OR DELETE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_event_user();

-- invitation.accepted: on public.invitations (control migration 0010), when
-- accepted_at is set.
CREATE FUNCTION public.tenantd_event_invitation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.tenantd_event_emit(
        NEW.org_id, 'invitation.accepted',
        (to_jsonb(NEW) - 'token_hash')::json);
    RETURN NULL;
END $$;
DO $$
BEGIN
    IF to_regclass('public.invitations') IS NOT NULL THEN
        CREATE TRIGGER invitations_event AFTER UPDATE OF accepted_at ON public.invitations
            FOR EACH ROW WHEN (OLD.accepted_at IS NULL AND NEW.accepted_at IS NOT NULL)
            EXECUTE FUNCTION public.tenantd_event_invitation();
    END IF;
END $$;
