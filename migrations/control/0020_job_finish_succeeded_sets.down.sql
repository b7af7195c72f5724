-- Undoes 0020_job_finish_succeeded_sets.
DROP FUNCTION public.tenantd_job_finish_succeeded(text, uuid[], integer[], jsonb);
