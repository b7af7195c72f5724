-- tenantd: compatible
-- Schedule ticks are counted by the process that fires them.
--
-- /metrics showed tenantd_schedule_ticks{outcome} by counting the whole of
-- schedule_ticks every 5 s in every process, a table that gains a row per
-- tick of every schedule (1,000 minute schedules: 1.4 million a day): a
-- full scan that grew for good. tenantd_schedule_tick_outcomes fires the
-- due ticks as tenantd_schedule_tick did and says how many ended how; each
-- process adds them to its own counters (tenantd_schedule_ticks_total).
-- tenantd_schedule_tick keeps its contract for binaries that call it.
--
-- That table also grew for good. With p_keep_days > 0
-- (TENANTD_SCHEDULE_TICK_KEEP_DAYS) each tick deletes its schedule's
-- records older than that many days before it, through the primary key:
-- a row or two per tick once steady. Exactly once does not need them: a
-- schedule's next run only moves forward, past every record pruned.
CREATE FUNCTION public.tenantd_schedule_tick_outcomes(p_now timestamptz, p_costs jsonb,
                                                      p_max integer DEFAULT 100,
                                                      p_keep_days integer DEFAULT 0)
RETURNS TABLE (outcome text, ticks integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_counts jsonb := '{}';
    s public.schedules;
    v_cost bigint;
    v_body text;
    v_outcome text;
    v_status text;
    v_job uuid;
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
        IF p_keep_days > 0 THEN
            DELETE FROM public.schedule_ticks t
             WHERE t.schedule_id = s.id
               AND t.tick_at < s.next_run_at - make_interval(days => p_keep_days);
        END IF;
        UPDATE public.schedules x
           SET last_tick_at = s.next_run_at, last_outcome = v_outcome,
               next_run_at = public.tenantd_cron_next(s, greatest(s.next_run_at, p_now))
         WHERE x.id = s.id;
        v_counts := jsonb_set(v_counts, ARRAY[v_outcome],
                              to_jsonb(coalesce((v_counts ->> v_outcome)::integer, 0) + 1));
    END LOOP;
    RETURN QUERY SELECT e.key, e.value::integer FROM jsonb_each_text(v_counts) e;
END $$;

CREATE OR REPLACE FUNCTION public.tenantd_schedule_tick(p_now timestamptz, p_costs jsonb,
                                                        p_max integer DEFAULT 100)
RETURNS integer
LANGUAGE sql AS $$
    SELECT coalesce(sum(o.ticks), 0)::integer
      FROM public.tenantd_schedule_tick_outcomes(p_now, p_costs, p_max) o
$$;
