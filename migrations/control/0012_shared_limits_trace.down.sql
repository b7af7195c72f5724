-- Undoes 0012_shared_limits_trace: limits go back to each process's own, and
-- jobs forget their trace context.
DROP FUNCTION public.tenantd_job_enqueue_traced(text, text, uuid, text, jsonb, integer,
                                                 timestamptz, integer, bigint, text, text);
DROP TRIGGER jobs_trace ON public.jobs;
DROP FUNCTION public.tenantd_job_trace();
ALTER TABLE public.jobs DROP COLUMN traceparent, DROP COLUMN tracestate;
DROP FUNCTION public.tenantd_rate_sweep(integer);
DROP FUNCTION public.tenantd_login_take(bytea, bytea, bytea, bigint, bigint);
DROP FUNCTION public.tenantd_login_succeeded(bytea, bytea, bigint);
DROP FUNCTION public.tenantd_login_key_take(bytea, bytea, bigint, bigint);
DROP FUNCTION public.tenantd_rate_take(text, bytea, bigint, bigint, integer);
DROP FUNCTION public.tenantd_rate_refill(bigint, bigint, bigint, bigint, bigint);
DROP TABLE public.rate_limits;
