DROP FUNCTION public.tenantd_job_cancel(uuid, uuid);
DROP FUNCTION public.tenantd_job_reap(integer);
DROP FUNCTION public.tenantd_job_renew(text, integer);
DROP FUNCTION public.tenantd_job_release(uuid, text, integer);
DROP FUNCTION public.tenantd_job_finish(uuid, text, integer, boolean, jsonb, text, boolean, bigint, bigint);
DROP FUNCTION public.tenantd_job_claim(text, uuid, integer, integer);
DROP FUNCTION public.tenantd_job_enqueue(uuid, text, jsonb, integer, timestamptz, integer, bigint, text, text);
DROP FUNCTION public.tenantd_job_json(public.jobs);
DROP TABLE public.jobs;
