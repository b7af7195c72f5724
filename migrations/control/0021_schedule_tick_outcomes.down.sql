-- Undoes 0021_schedule_tick_outcomes: 0011's tenantd_schedule_tick.
DROP FUNCTION public.tenantd_schedule_tick(timestamptz, jsonb, integer);
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

DROP FUNCTION public.tenantd_schedule_tick_outcomes(timestamptz, jsonb, integer, integer);
