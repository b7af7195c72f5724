-- Back to 0002's refresh (no user row lock) and the in-statement revocations.
DROP TRIGGER users_revoke_refresh ON public.users;
DROP FUNCTION public.tenantd_revoke_user_refresh();
DROP FUNCTION public.tenantd_logout(text);
DROP FUNCTION public.tenantd_job_finish(uuid, text, integer, boolean, jsonb, text, boolean,
                                        bigint, bigint, boolean);
ALTER TABLE public.jobs DROP COLUMN cost_kept;
-- Rotates a refresh token in one statement. The UPDATE ... WHERE used_at IS
-- NULL is the arbiter: of concurrent calls with one token exactly one
-- updates the row; the others wait on its row lock, then see it used and
-- count as reuse. Reuse of a used token revokes the whole family.
-- Returns {"status":"ok", user, org, role, token_version} or a status of
-- "reused" | "suspended" | "invalid" (unknown, expired, revoked, org gone).
CREATE OR REPLACE FUNCTION public.tenantd_refresh(p_old_hash text, p_new_hash text, p_ttl_s bigint)
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
