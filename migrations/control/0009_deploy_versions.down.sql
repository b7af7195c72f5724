DROP TRIGGER orgs_record_tenant_version ON public.orgs;
DROP FUNCTION public.tenantd_record_tenant_version();
DROP FUNCTION public.tenantd_tenant_version_of(text);
DROP TABLE public.tenant_schema_versions;
DROP TABLE public.tenant_migrations;
ALTER TABLE public.schema_migrations DROP COLUMN compatible;
