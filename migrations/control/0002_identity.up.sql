-- Identity: users, API keys, refresh tokens, and the credit account and
-- ledger every org gets at signup (issue 4 extends the last two).

-- RFC 3339 UTC text for API answers, whatever the session's TimeZone.
CREATE FUNCTION public.tenantd_ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE TABLE public.users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id        uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (email = lower(email)),
    name          text,
    avatar_url    text,
    role          text NOT NULL CHECK (role IN ('admin', 'member')),
    password_hash text NOT NULL,
    -- Bumped to revoke every access token of the user at once (password
    -- change); access tokens carry it as the `ver` claim.
    token_version integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, email)
);
-- Login looks a user up by email across orgs.
CREATE INDEX users_email_idx ON public.users (email);

CREATE TABLE public.api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id       uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'member')),
    prefix       text NOT NULL UNIQUE,   -- the 8 chars after "tdk_", for lookup
    key_hash     text NOT NULL,          -- hex SHA-256 of the whole key
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_org_idx ON public.api_keys (org_id, created_at DESC, id DESC);

-- Opaque refresh tokens, stored as hex SHA-256. Each use marks the token
-- used and issues a successor in the same family; a used token presented
-- again revokes the whole family (someone holds a copy).
CREATE TABLE public.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    family_id  uuid NOT NULL,
    token_hash text NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_user_idx ON public.refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family_idx ON public.refresh_tokens (family_id);

-- Orgs are never deleted as rows (status 'deleted'), so the account and the
-- ledger keep pointing at one.
CREATE TABLE public.credit_accounts (
    org_id     uuid PRIMARY KEY REFERENCES public.orgs (id),
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Append-only ledger: balance == sum(amount) per org. No cascade: rows of a
-- deleted org stay for audit, flagged org_deleted.
CREATE TABLE public.credit_transactions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id        uuid NOT NULL REFERENCES public.orgs (id),
    org_deleted   boolean NOT NULL DEFAULT false,
    amount        bigint NOT NULL,
    type          text NOT NULL
                  CHECK (type IN ('grant', 'spend', 'deduction', 'refund', 'adjustment')),
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    job_id        uuid,
    description   text,
    reference     text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_transactions_org_idx
    ON public.credit_transactions (org_id, created_at DESC, id DESC);

-- The API's JSON for an org and a user, in one place so every route
-- renders them the same way.
CREATE FUNCTION public.tenantd_org_json(o public.orgs) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', o.id, 'name', o.name, 'slug', o.slug,
                             'status', o.status,
                             'created_at', public.tenantd_ts(o.created_at),
                             'updated_at', public.tenantd_ts(o.updated_at))
$$;

CREATE FUNCTION public.tenantd_user_json(u public.users) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', u.id, 'email', u.email, 'name', u.name,
                             'role', u.role, 'avatar_url', u.avatar_url,
                             'created_at', public.tenantd_ts(u.created_at),
                             'updated_at', public.tenantd_ts(u.updated_at))
$$;

-- Cache invalidation: every tenantd process LISTENs on tenantd_cache and
-- drops the named entry. Sent from triggers so no writer can forget; NOTIFY
-- is delivered at commit, and not at all on rollback.
CREATE FUNCTION public.tenantd_notify_org() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantd_cache', 'org:' || OLD.id);
    ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.slug IS DISTINCT FROM OLD.slug
          OR NEW.schema_name IS DISTINCT FROM OLD.schema_name OR NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM pg_notify('tenantd_cache', 'org:' || OLD.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER orgs_notify AFTER UPDATE OR DELETE ON public.orgs
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_notify_org();

CREATE FUNCTION public.tenantd_notify_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantd_cache', 'user:' || OLD.id);
    ELSIF NEW.role IS DISTINCT FROM OLD.role OR NEW.token_version IS DISTINCT FROM OLD.token_version
          OR NEW.org_id IS DISTINCT FROM OLD.org_id OR NEW.email IS DISTINCT FROM OLD.email
          OR NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM pg_notify('tenantd_cache', 'user:' || OLD.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER users_notify AFTER UPDATE OR DELETE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_notify_user();

CREATE FUNCTION public.tenantd_notify_api_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantd_cache', 'key:' || OLD.prefix);
    ELSIF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.role IS DISTINCT FROM OLD.role
          OR NEW.key_hash IS DISTINCT FROM OLD.key_hash OR NEW.org_id IS DISTINCT FROM OLD.org_id
          OR NEW.prefix IS DISTINCT FROM OLD.prefix THEN
        PERFORM pg_notify('tenantd_cache', 'key:' || OLD.prefix);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_notify AFTER UPDATE OR DELETE ON public.api_keys
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_notify_api_key();

-- Starts a new refresh-token family for a user of an active org (login,
-- signup). Returns {"status":"ok","user","org","role","token_version"} or
-- {"status":"suspended"} / {"status":"invalid"} (no such user or org gone).
CREATE FUNCTION public.tenantd_issue_refresh(p_user_id uuid, p_hash text, p_ttl_s bigint)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    u public.users;
    o public.orgs;
BEGIN
    SELECT * INTO u FROM public.users WHERE id = p_user_id;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    SELECT * INTO o FROM public.orgs WHERE id = u.org_id;
    IF o.status = 'suspended' THEN
        RETURN json_build_object('status', 'suspended');
    ELSIF o.status <> 'active' THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    INSERT INTO public.refresh_tokens (org_id, user_id, family_id, token_hash, expires_at)
    VALUES (u.org_id, u.id, gen_random_uuid(), p_hash, now() + make_interval(secs => p_ttl_s));
    RETURN json_build_object('status', 'ok', 'user', public.tenantd_user_json(u),
                             'org', public.tenantd_org_json(o), 'role', u.role,
                             'token_version', u.token_version);
END $$;

-- Rotates a refresh token in one statement. The UPDATE ... WHERE used_at IS
-- NULL is the arbiter: of concurrent calls with one token exactly one
-- updates the row; the others wait on its row lock, then see it used and
-- count as reuse. Reuse of a used token revokes the whole family.
-- Returns {"status":"ok", user, org, role, token_version} or a status of
-- "reused" | "suspended" | "invalid" (unknown, expired, revoked, org gone).
CREATE FUNCTION public.tenantd_refresh(p_old_hash text, p_new_hash text, p_ttl_s bigint)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t public.refresh_tokens;
    u public.users;
    o public.orgs;
BEGIN
    UPDATE public.refresh_tokens SET used_at = now()
     WHERE token_hash = p_old_hash AND used_at IS NULL AND revoked_at IS NULL
       AND expires_at > now()
       AND EXISTS (SELECT 1 FROM public.orgs WHERE id = org_id AND status = 'active')
    RETURNING * INTO t;
    IF NOT FOUND THEN
        -- A fresh snapshot: a concurrent winner's commit is visible here.
        SELECT * INTO t FROM public.refresh_tokens WHERE token_hash = p_old_hash;
        IF NOT FOUND THEN
            RETURN json_build_object('status', 'invalid');
        END IF;
        IF t.used_at IS NOT NULL THEN
            UPDATE public.refresh_tokens SET revoked_at = now()
             WHERE family_id = t.family_id AND revoked_at IS NULL;
            RETURN json_build_object('status', 'reused');
        END IF;
        IF t.revoked_at IS NULL AND t.expires_at > now()
           AND EXISTS (SELECT 1 FROM public.orgs WHERE id = t.org_id AND status = 'suspended') THEN
            RETURN json_build_object('status', 'suspended');
        END IF;
        RETURN json_build_object('status', 'invalid');
    END IF;
    SELECT * INTO u FROM public.users WHERE id = t.user_id;
    SELECT * INTO o FROM public.orgs WHERE id = t.org_id;
    INSERT INTO public.refresh_tokens (org_id, user_id, family_id, token_hash, expires_at)
    VALUES (t.org_id, t.user_id, t.family_id, p_new_hash, now() + make_interval(secs => p_ttl_s));
    RETURN json_build_object('status', 'ok', 'user', public.tenantd_user_json(u),
                             'org', public.tenantd_org_json(o), 'role', u.role,
                             'token_version', u.token_version);
END $$;
