-- tenantd: compatible
-- Creating an org schema (signup, import) runs the tenant migrations without
-- PostgreSQL's function-body check, as pg_dump's restores do. Checking a
-- body resolves every name it calls; a name each org schema defines (tenant
-- 0002's jsonb_merge_patch) is one catalog list over all orgs, so the check
-- cost grew with the number of orgs (17 ms of a signup at 10,000 orgs, 1.3
-- ms without). The bodies are the binary's own, checked by the test suite
-- and by `migrate up` on the first schema of each run; a body still
-- compiles at its first call.
ALTER FUNCTION public.tenantd_create_org(text, text, text, text, text, bigint, text, bigint,
                                         text[], int[], text[], text[])
    SET check_function_bodies = off;
ALTER FUNCTION public.tenantd_import_org(text, text[], int[], text[], text[], text, text, text,
                                         text)
    SET check_function_bodies = off;
