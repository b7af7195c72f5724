-- tenantd: compatible
-- An accept takes the invitation's row lock first. It used to read the row,
-- check for an existing member, and only then wait at the UPDATE; a loser
-- whose member check ran after the winner's commit answered 409 (member
-- exists) instead of 400 (the link was used), depending on timing. Now every
-- concurrent accept of one link waits at its first read and then finds the
-- link used.
CREATE OR REPLACE FUNCTION public.tenantd_invitation_accept(
    p_hash text, p_phc text, p_name text, p_refresh_hash text, p_ttl_s bigint,
    p_ip text, p_request_id text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    i public.invitations;
    o public.orgs;
    u public.users;
BEGIN
    -- The arbiter: a concurrent accept of the same link waits here for the
    -- winner's commit and then reads the row as the winner left it (used).
    SELECT * INTO i FROM public.invitations WHERE token_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'invalid');
    ELSIF i.accepted_at IS NOT NULL THEN
        RETURN json_build_object('status', 'used');
    ELSIF i.revoked_at IS NOT NULL THEN
        RETURN json_build_object('status', 'revoked');
    ELSIF i.expires_at <= now() THEN
        RETURN json_build_object('status', 'expired');
    END IF;
    SELECT * INTO o FROM public.orgs WHERE id = i.org_id;
    IF o.status = 'suspended' THEN
        RETURN json_build_object('status', 'suspended');
    ELSIF o.status <> 'active' THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    IF EXISTS (SELECT 1 FROM public.users WHERE org_id = i.org_id AND email = i.email) THEN
        RETURN json_build_object('status', 'member_exists');
    END IF;
    -- Held by the lock above; the conditions stay as a second guard.
    UPDATE public.invitations SET accepted_at = now()
     WHERE id = i.id AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
    RETURNING * INTO i;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'used');
    END IF;
    INSERT INTO public.users (org_id, email, name, role, password_hash, email_verified_at)
    VALUES (i.org_id, i.email, p_name, i.role, p_phc, now()) RETURNING * INTO u;
    UPDATE public.invitations SET user_id = u.id WHERE id = i.id;
    INSERT INTO public.refresh_tokens (org_id, user_id, family_id, token_hash, expires_at)
    VALUES (u.org_id, u.id, gen_random_uuid(), p_refresh_hash,
            now() + make_interval(secs => p_ttl_s));
    PERFORM public.tenantd_audit(i.org_id, 'user', u.id::text, 'invitation.accepted',
                                 'user', u.id::text, p_ip, p_request_id,
                                 jsonb_build_object('invitation_id', i.id, 'email', i.email,
                                                    'role', i.role));
    RETURN json_build_object('status', 'ok', 'user', public.tenantd_user_json(u),
                             'org', public.tenantd_org_json(o), 'role', u.role,
                             'token_version', u.token_version);
END $$;

