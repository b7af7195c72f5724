-- Undoes 0011_external_jobs: the functions, indexes and columns as 0004,
-- 0005 and 0006 left them. External jobs still queued or running are
-- deleted (no worker of the older version could run them); declared types
-- and worker API keys go too.
DO $$
BEGIN
    IF to_regclass('public.invitations') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS invitations_event ON public.invitations;
    END IF;
END $$;
DROP FUNCTION public.tenantd_event_invitation();
DROP TRIGGER users_event ON public.users;
DROP FUNCTION public.tenantd_event_user();
DROP TRIGGER credit_transactions_event ON public.credit_transactions;
DROP FUNCTION public.tenantd_event_credits();
DROP TRIGGER jobs_event ON public.jobs;
DROP FUNCTION public.tenantd_event_job();
DROP FUNCTION public.tenantd_event_emit(uuid, text, json, bigint[]);
DROP FUNCTION public.tenantd_webhook_json(public.webhook_subscriptions);
DROP TABLE public.webhook_subscriptions;
DROP FUNCTION public.tenantd_schedule_update(uuid, uuid, boolean, text, text, integer[], integer[], integer[], integer[], integer[], boolean, boolean, timestamptz);
DROP FUNCTION public.tenantd_schedule_create(uuid, text, jsonb, text, text, integer[], integer[], integer[], integer[], integer[], boolean, boolean, boolean, timestamptz);
DROP FUNCTION public.tenantd_schedule_tick(timestamptz, jsonb, integer);
DROP FUNCTION public.tenantd_schedule_json(public.schedules);
DROP FUNCTION public.tenantd_cron_next(public.schedules, timestamptz);
DROP TABLE public.schedule_ticks;
DROP TABLE public.schedules;
DROP FUNCTION public.tenantd_job_retry(uuid, uuid);
DROP FUNCTION public.tenantd_job_ext_finish(uuid, uuid, uuid, boolean, jsonb, text, boolean, bigint, bigint);
DROP FUNCTION public.tenantd_job_ext_heartbeat(uuid, uuid, uuid, integer, integer);
DROP FUNCTION public.tenantd_job_ext_claim(uuid, text[], uuid, integer, integer);
DELETE FROM public.jobs WHERE external AND status IN ('queued', 'running');
DELETE FROM public.api_keys WHERE role = 'worker';
ALTER TABLE public.api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE public.api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'member'));

DROP INDEX public.credit_transactions_job_deduction_key;
DROP INDEX public.credit_transactions_job_refund_key;
DROP TRIGGER credit_transactions_job_run ON public.credit_transactions;
DROP FUNCTION public.tenantd_ledger_job_run();
-- Retried jobs have several deductions: the older unique indexes cannot
-- hold; keep them non-unique per job in that case rather than lose ledger rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.credit_transactions WHERE job_run > 1) THEN
        CREATE INDEX credit_transactions_job_deduction_key
            ON public.credit_transactions (job_id) WHERE type = 'deduction';
        CREATE INDEX credit_transactions_job_refund_key
            ON public.credit_transactions (job_id) WHERE type = 'refund';
    ELSE
        CREATE UNIQUE INDEX credit_transactions_job_deduction_key
            ON public.credit_transactions (job_id) WHERE type = 'deduction';
        CREATE UNIQUE INDEX credit_transactions_job_refund_key
            ON public.credit_transactions (job_id) WHERE type = 'refund';
    END IF;
END $$;
ALTER TABLE public.credit_transactions DROP COLUMN job_run;

CREATE OR REPLACE FUNCTION public.tenantd_credit_refund_job(
    p_org_id uuid, p_job_id uuid, p_description text DEFAULT NULL)
RETURNS public.credit_transactions
LANGUAGE plpgsql AS $$
DECLARE
    v_charged bigint;
BEGIN
    PERFORM 1 FROM public.credit_accounts a WHERE a.org_id = p_org_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM public.credit_transactions t
                WHERE t.job_id = p_job_id AND t.type = 'refund') THEN
        RETURN NULL;
    END IF;
    SELECT -t.amount INTO v_charged FROM public.credit_transactions t
     WHERE t.job_id = p_job_id AND t.type = 'deduction' AND t.org_id = p_org_id;
    IF v_charged IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.tenantd_credit_apply(p_org_id, v_charged, 'refund', p_job_id,
                                       coalesce(p_description, 'job refund'), NULL);
END $$;

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
                 WHERE j.status = 'queued' AND j.run_at <= now() AND j.org_id > p_after
                 ORDER BY j.org_id LIMIT 1), 0
        UNION ALL
        SELECT (SELECT j.org_id FROM public.jobs j
                 WHERE j.status = 'queued' AND j.run_at <= now() AND j.org_id > s.org_id
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
    SELECT * INTO j FROM public.jobs x WHERE x.id = p_id AND x.org_id = p_org_id;
    IF FOUND THEN
        o_outcome := 'conflict';
        o_body := public.tenantd_job_json(j)::text;
    ELSE
        o_outcome := 'not_found';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_job_json(j public.jobs) RETURNS json
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

DROP INDEX public.jobs_ext_claim_idx;
DROP INDEX public.jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON public.jobs (org_id, priority DESC, run_at, seq)
    WHERE status = 'queued';
DROP TRIGGER jobs_set_external ON public.jobs;
DROP FUNCTION public.tenantd_job_set_external();
ALTER TABLE public.jobs DROP COLUMN external, DROP COLUMN progress,
    DROP COLUMN cancel_requested, DROP COLUMN leased_at, DROP COLUMN runs;
DROP TABLE public.job_types;
