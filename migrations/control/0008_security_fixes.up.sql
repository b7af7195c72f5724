-- Security fixes (SECURITY.md): revocation beats a concurrent refresh (10.3),
-- and failed jobs are refunded only for failures on tenantd's side (10.7).
--
-- 10.3 -- revocation always beats a concurrent refresh.
--
-- A refresh inserts the family's next token. A revoking statement that
-- started before that insert committed does not see the new row (its
-- snapshot is older), so the family lived on. Now every refresh first
-- takes a share lock on its user's row, and every revocation holds that
-- row locked (it updates it or locks it) before it revokes, in a statement
-- that starts after the lock is held, so it sees every token a finished
-- refresh inserted; a refresh that comes later waits for the revocation
-- to commit and then finds its token revoked. The user row is always
-- locked before any of the user's token rows: no deadlock between them.

-- A password change (token_version) or an email change revokes the user's
-- refresh tokens here, after the row update: a trigger's statement takes a
-- fresh snapshot, unlike a CTE of the updating statement.
CREATE FUNCTION public.tenantd_revoke_user_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.refresh_tokens SET revoked_at = now()
     WHERE user_id = NEW.id AND revoked_at IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER users_revoke_refresh AFTER UPDATE OF token_version, email ON public.users
    FOR EACH ROW WHEN (OLD.token_version IS DISTINCT FROM NEW.token_version
                       OR OLD.email IS DISTINCT FROM NEW.email)
    EXECUTE FUNCTION public.tenantd_revoke_user_refresh();

-- Logout: the whole family of the token (used or not), under the user's
-- row lock. Returns the number of tokens revoked.
CREATE FUNCTION public.tenantd_logout(p_hash text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t public.refresh_tokens;
    n integer;
BEGIN
    SELECT * INTO t FROM public.refresh_tokens WHERE token_hash = p_hash;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM public.users WHERE id = t.user_id FOR NO KEY UPDATE;
    UPDATE public.refresh_tokens SET revoked_at = now()
     WHERE family_id = t.family_id AND revoked_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- As in 0002, but under the user's row lock (taken before the token row's).
CREATE OR REPLACE FUNCTION public.tenantd_refresh(p_old_hash text, p_new_hash text, p_ttl_s bigint)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t public.refresh_tokens;
    u public.users;
    o public.orgs;
    uid uuid;
BEGIN
    SELECT user_id INTO uid FROM public.refresh_tokens WHERE token_hash = p_old_hash;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    -- Waits for a revocation in progress; the statements below take
    -- snapshots after it committed.
    PERFORM 1 FROM public.users WHERE id = uid FOR SHARE;
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

-- Jobs (SECURITY.md, 10.7): as 0005's tenantd_job_finish, plus p_refund: a
-- job that ends failed is refunded only when the failure was on tenantd's
-- side. A webhook whose receiver answered 4xx, or could not be reached,
-- was a delivery attempt and keeps its cost (else failing receivers get
-- deliveries for free). The 9-argument form stays for workers of the
-- previous version (it always refunds). jobs.cost_kept records the rule's
-- verdict, so audits can tell a kept cost from a missing refund.
ALTER TABLE public.jobs ADD COLUMN cost_kept boolean NOT NULL DEFAULT false;

CREATE FUNCTION public.tenantd_job_finish(
    p_id uuid, p_worker text, p_attempt integer, p_ok boolean, p_result jsonb, p_error text,
    p_retry boolean, p_base_ms bigint, p_max_ms bigint, p_refund boolean)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j public.jobs;
BEGIN
    SELECT * INTO j FROM public.jobs x
     WHERE x.id = p_id AND x.locked_by = p_worker AND x.attempts = p_attempt
       AND x.status = 'running'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_ok THEN
        UPDATE public.jobs x SET status = 'succeeded', result = p_result, error = NULL,
               finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL
         WHERE x.id = p_id;
        RETURN 'succeeded';
    ELSIF p_retry AND j.attempts < j.max_attempts THEN
        UPDATE public.jobs x SET status = 'queued', error = p_error, locked_by = NULL,
               locked_until = NULL,
               run_at = clock_timestamp() + make_interval(secs =>
                   least(p_max_ms, p_base_ms * power(2, j.attempts - 1))
                   * (0.5 + random() * 0.5) / 1000.0)
         WHERE x.id = p_id;
        RETURN 'queued';
    END IF;
    UPDATE public.jobs x SET status = 'failed', error = p_error, result = p_result,
           finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL,
           cost_kept = NOT p_refund AND x.cost > 0
     WHERE x.id = p_id;
    IF p_refund THEN
        PERFORM public.tenantd_credit_refund_job(j.org_id, j.id, 'refund: job failed');
    END IF;
    RETURN 'failed';
END $$;
