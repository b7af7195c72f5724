-- Organisations (tenants). Each live org owns one PostgreSQL schema,
-- `schema_name`, that holds its data; the tenant migrations run there.
CREATE TABLE public.orgs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL,
    schema_name text NOT NULL UNIQUE,
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A slug names one live org, case-insensitively; a deleted org frees its slug.
CREATE UNIQUE INDEX orgs_slug_live_key ON public.orgs (lower(slug)) WHERE status <> 'deleted';
