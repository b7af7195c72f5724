-- tenantd: compatible
-- Expand/contract deploys and one-query schema checks (README, "Deploys").
--
-- * schema_migrations.compatible: the binary that applied a control
--   migration whose .up.sql starts with the line `-- tenantd: compatible`
--   records true here, so that older binaries (up to
--   TENANTD_COMPATIBLE_AHEAD migrations behind) keep serving on it.
-- * tenant_migrations: the tenant track's migrations as the newest binary
--   that ran `migrate up` knows them, with the same mark, for the same
--   judgement about tenant schemas ahead of a binary.
-- * tenant_schema_versions: each org schema's tenant version, written by the
--   migration runner in the schema's own transaction and, for orgs created
--   by signup, by a deferred trigger at commit, so that `migrate status` and
--   the start-up check read one table instead of every schema.
--
-- This migration is itself compatible: binaries before it never read what it
-- adds.
ALTER TABLE public.schema_migrations
    ADD COLUMN IF NOT EXISTS compatible boolean NOT NULL DEFAULT false;

CREATE TABLE public.tenant_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    compatible boolean NOT NULL DEFAULT false
);

CREATE TABLE public.tenant_schema_versions (
    schema_name text PRIMARY KEY,
    version     int NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The version of one org schema, read from its own schema_migrations; NULL
-- when it has none (yet).
CREATE FUNCTION public.tenantd_tenant_version_of(p_schema text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v int;
BEGIN
    IF pg_catalog.to_regclass(format('%I.schema_migrations', p_schema)) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT coalesce(max(version), 0) FROM %I.schema_migrations', p_schema)
        INTO v;
    RETURN v;
END $$;

-- Deferred to commit: tenantd_create_org inserts the org row first and
-- creates its schema and applies the tenant migrations afterwards, in the
-- same transaction.
CREATE FUNCTION public.tenantd_record_tenant_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v int := public.tenantd_tenant_version_of(NEW.schema_name);
BEGIN
    IF v IS NOT NULL THEN
        INSERT INTO public.tenant_schema_versions (schema_name, version)
        VALUES (NEW.schema_name, v)
        ON CONFLICT (schema_name) DO UPDATE SET version = EXCLUDED.version, updated_at = now();
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER orgs_record_tenant_version
    AFTER INSERT ON public.orgs DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_record_tenant_version();

INSERT INTO public.tenant_schema_versions (schema_name, version)
SELECT o.schema_name, public.tenantd_tenant_version_of(o.schema_name)
  FROM public.orgs o
 WHERE public.tenantd_tenant_version_of(o.schema_name) IS NOT NULL
ON CONFLICT (schema_name) DO NOTHING;
