-- Undoes 0012_shared_rate_limits: limits go back to each process's own.
DROP FUNCTION public.tenantd_rate_sweep(integer);
DROP FUNCTION public.tenantd_login_succeeded(bytea, bytea, bigint);
DROP FUNCTION public.tenantd_login_key_take(bytea, bytea, bigint, bigint);
DROP FUNCTION public.tenantd_rate_take(text, bytea, bigint, bigint, integer);
DROP FUNCTION public.tenantd_rate_refill(bigint, bigint, bigint, bigint, bigint);
DROP TABLE public.rate_limits;
