-- Org lifecycle: creation and deletion as one statement each, so the HTTP
-- handlers make one round trip and a failure at any step leaves nothing
-- behind (the statement's transaction rolls back as a whole).

-- Creates an org with everything it needs, atomically:
--   the orgs row (id generated; schema 'tenant_' || id without dashes, never
--   from user text), its schema with schema_migrations and every tenant
--   migration applied (the server passes the migrations built into its binary,
--   the same ones `tenantd migrate up` applies), the admin user, the credit
--   account (with a 'grant' ledger row when p_signup_credits > 0, so the
--   balance equals the ledger's sum from the start) and a refresh token (a new
--   family) stored as its hash.
-- A taken slug (case-insensitive, live orgs) raises unique_violation (23505).
-- Returns the org and user JSON plus what the server needs to sign the access
-- token.
CREATE FUNCTION public.tenantd_create_org(
    p_name text, p_slug text, p_email text, p_password_hash text, p_user_name text,
    p_signup_credits bigint, p_refresh_hash text, p_refresh_ttl_s bigint,
    p_tenant_sql text[], p_tenant_versions int[], p_tenant_names text[],
    p_tenant_checksums text[],
    OUT o_org json, OUT o_user json, OUT o_user_id uuid, OUT o_org_id uuid,
    OUT o_token_version integer)
LANGUAGE plpgsql SET client_min_messages = warning AS $$
DECLARE
    v_org    public.orgs;
    v_user   public.users;
    v_id     uuid := gen_random_uuid();
    v_schema text := 'tenant_' || replace(v_id::text, '-', '');
    v_path   text := current_setting('search_path');
    v_n      int := coalesce(array_length(p_tenant_sql, 1), 0);
BEGIN
    IF coalesce(array_length(p_tenant_versions, 1), 0) <> v_n
       OR coalesce(array_length(p_tenant_names, 1), 0) <> v_n
       OR coalesce(array_length(p_tenant_checksums, 1), 0) <> v_n THEN
        RAISE EXCEPTION 'tenant migration arrays differ in length';
    END IF;
    IF p_signup_credits < 0 THEN
        RAISE EXCEPTION 'signup credits must not be negative';
    END IF;

    INSERT INTO public.orgs (id, name, slug, schema_name)
    VALUES (v_id, p_name, lower(p_slug), v_schema)
    RETURNING * INTO v_org;

    EXECUTE format('CREATE SCHEMA %I', v_schema);
    EXECUTE format('CREATE TABLE %I.schema_migrations (version int PRIMARY KEY,'
                   ' name text NOT NULL, checksum text NOT NULL,'
                   ' applied_at timestamptz NOT NULL DEFAULT now())', v_schema);
    -- Tenant migrations use unqualified names: run them with the new schema
    -- first on the path, as the migration runner does; put the caller's path
    -- back afterwards (everything below is schema-qualified anyway).
    PERFORM pg_catalog.set_config('search_path', format('%I, public', v_schema), true);
    FOR i IN 1 .. v_n LOOP
        EXECUTE p_tenant_sql[i];
        EXECUTE format('INSERT INTO %I.schema_migrations (version, name, checksum)'
                       ' VALUES ($1, $2, $3)', v_schema)
            USING p_tenant_versions[i], p_tenant_names[i], p_tenant_checksums[i];
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', v_path, true);

    INSERT INTO public.users (org_id, email, name, role, password_hash)
    VALUES (v_id, lower(p_email), p_user_name, 'admin', p_password_hash)
    RETURNING * INTO v_user;

    INSERT INTO public.credit_accounts (org_id, balance) VALUES (v_id, p_signup_credits);
    IF p_signup_credits > 0 THEN
        INSERT INTO public.credit_transactions (org_id, amount, type, balance_after, description)
        VALUES (v_id, p_signup_credits, 'grant', p_signup_credits, 'signup credits');
    END IF;

    INSERT INTO public.refresh_tokens (org_id, user_id, family_id, token_hash, expires_at)
    VALUES (v_id, v_user.id, gen_random_uuid(), p_refresh_hash,
            now() + make_interval(secs => p_refresh_ttl_s));

    o_org := public.tenantd_org_json(v_org);
    o_user := public.tenantd_user_json(v_user);
    o_user_id := v_user.id;
    o_org_id := v_id;
    o_token_version := v_user.token_version;
END $$;

-- Deletes a live org: drops its schema (records and any other tenant data),
-- deletes its users, API keys and refresh tokens (and jobs and idempotency
-- keys, once those tables exist), flags its ledger rows org_deleted and marks
-- the row 'deleted' (kept, so the ledger's org_id still points at a row; the
-- slug is free again). The triggers on orgs/users/api_keys NOTIFY every
-- server's auth cache. Returns false when there is no such live org.
-- client_min_messages: DROP ... CASCADE's NOTICE would otherwise reach the
-- server's stderr through libpq's default notice processor.
CREATE FUNCTION public.tenantd_delete_org(p_org_id uuid) RETURNS boolean
LANGUAGE plpgsql SET client_min_messages = warning AS $$
DECLARE
    v_schema text;
BEGIN
    SELECT schema_name INTO v_schema FROM public.orgs
     WHERE id = p_org_id AND status <> 'deleted'
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Marked first: from here on no credential of the org authenticates,
    -- even on a server whose cache has not heard the NOTIFY yet (which is
    -- sent at commit anyway).
    UPDATE public.orgs SET status = 'deleted', updated_at = now() WHERE id = p_org_id;
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', v_schema);
    -- Tables of later issues: deleted here when they exist, so this function
    -- need not change when they land.
    IF to_regclass('public.jobs') IS NOT NULL THEN
        EXECUTE 'DELETE FROM public.jobs WHERE org_id = $1' USING p_org_id;
    END IF;
    IF to_regclass('public.idempotency_keys') IS NOT NULL THEN
        EXECUTE 'DELETE FROM public.idempotency_keys WHERE org_id = $1' USING p_org_id;
    END IF;
    DELETE FROM public.refresh_tokens WHERE org_id = p_org_id;
    DELETE FROM public.api_keys WHERE org_id = p_org_id;
    DELETE FROM public.users WHERE org_id = p_org_id;
    UPDATE public.credit_transactions SET org_deleted = true WHERE org_id = p_org_id;
    RETURN true;
END $$;
