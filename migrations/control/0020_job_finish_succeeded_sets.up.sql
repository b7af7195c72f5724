-- tenantd: compatible
-- In-process workers end their succeeded attempts in sets.
--
-- A worker used to end each attempt with its own tenantd_job_finish call, a
-- statement and a commit per job, which made a queue of short jobs cost the
-- database about twice what its claims did. Succeeded attempts now go to a
-- completer (src/job/worker.c) that ends all it holds in one statement, the
-- next set while the previous one runs. Failures, retries and refunds keep
-- tenantd_job_finish, one at a time.
--
-- The guard is tenantd_job_finish's: this worker's lock and this attempt
-- (a lapsed lease taken over by another worker no longer matches). The job
-- is found by its primary key, never through jobs_lease_idx (see 0018).
-- p_results is a JSON array, one result per id (null: none). Returns the
-- ids that ended; an id missing from them had lost its lease.
CREATE FUNCTION public.tenantd_job_finish_succeeded(p_worker text, p_ids uuid[],
                                                    p_attempts integer[], p_results jsonb)
RETURNS SETOF uuid
LANGUAGE sql AS $$
    UPDATE public.jobs x SET status = 'succeeded',
           result = nullif(p_results -> (r.i - 1)::integer, 'null'::jsonb), error = NULL,
           finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
      FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS r (id, attempt, i)
     WHERE x.id = r.id AND x.locked_by = p_worker AND x.attempts = r.attempt
    RETURNING x.id
$$;
