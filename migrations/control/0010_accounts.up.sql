-- Accounts (issue 12): mail outbox, invitations, password-reset and
-- email-verification tokens, the audit log, refresh reuse grace.
--
-- Tokens mailed to people are stored only as hex SHA-256; each is used at
-- most once: the UPDATE ... WHERE used_at IS NULL (accepted_at IS NULL) is
-- the arbiter, so of two concurrent uses exactly one updates the row and
-- the other, after waiting on its row lock, finds it used.

ALTER TABLE public.users ADD COLUMN email_verified_at timestamptz;

CREATE OR REPLACE FUNCTION public.tenantd_user_json(u public.users) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', u.id, 'email', u.email, 'name', u.name,
                             'role', u.role, 'avatar_url', u.avatar_url,
                             'email_verified_at', public.tenantd_ts(u.email_verified_at),
                             'created_at', public.tenantd_ts(u.created_at),
                             'updated_at', public.tenantd_ts(u.updated_at))
$$;

-- A new email is not verified: the verification was of the old address.
CREATE FUNCTION public.tenantd_user_email_unverify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email IS DISTINCT FROM OLD.email THEN
        NEW.email_verified_at := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER users_email_unverify BEFORE UPDATE OF email ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_user_email_unverify();

-- ---- mail ---------------------------------------------------------------

-- A mail waiting for its email.send job. The job's payload names the row
-- only, so the link inside (a secret) never shows in GET /v1/jobs; the row
-- is deleted once the mail is out.
CREATE TABLE public.mail_outbox (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    to_addr    text NOT NULL,
    subject    text NOT NULL,
    text_body  text NOT NULL,
    html_body  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Queues one mail: the outbox row and its email.send job (cost 0: system
-- work is never billed), in the caller's transaction. Workers wake at
-- commit (NOTIFY).
CREATE FUNCTION public.tenantd_mail_enqueue(p_org_id uuid, p_kind text, p_to text,
                                            p_subject text, p_text text, p_html text)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_mail uuid;
BEGIN
    INSERT INTO public.mail_outbox (org_id, kind, to_addr, subject, text_body, html_body)
    VALUES (p_org_id, p_kind, p_to, p_subject, p_text, p_html) RETURNING id INTO v_mail;
    INSERT INTO public.jobs (id, org_id, type, payload, max_attempts, cost)
    VALUES (gen_random_uuid(), p_org_id, 'email.send',
            jsonb_build_object('mail_id', v_mail, 'kind', p_kind), 8, 0);
    PERFORM pg_notify('tenantd_jobs', '');
    RETURN v_mail;
END $$;

-- ---- audit log ----------------------------------------------------------

CREATE TABLE public.audit_events (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Listing order and cursor: strictly increasing.
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    org_id      uuid NOT NULL REFERENCES public.orgs (id),
    at          timestamptz NOT NULL DEFAULT now(),
    actor_type  text NOT NULL CHECK (actor_type IN ('user', 'api_key', 'operator', 'anonymous')),
    actor_id    text,
    action      text NOT NULL,
    target_type text,
    target_id   text,
    ip          text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_org_idx ON public.audit_events (org_id, seq DESC);

-- Append-only: no row is ever changed or removed.
CREATE FUNCTION public.tenantd_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON public.audit_events
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION public.tenantd_audit_append_only();

CREATE FUNCTION public.tenantd_audit(p_org_id uuid, p_actor_type text, p_actor_id text,
                                     p_action text, p_target_type text, p_target_id text,
                                     p_ip text, p_request_id text, p_details jsonb)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,
                                     target_id, ip, request_id, details)
    VALUES (p_org_id, p_actor_type, p_actor_id, p_action, p_target_type, p_target_id,
            p_ip, p_request_id, coalesce(p_details, '{}'))
$$;

CREATE FUNCTION public.tenantd_audit_json(e public.audit_events) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', e.id, 'at', public.tenantd_ts(e.at),
        'actor', json_build_object('type', e.actor_type, 'id', e.actor_id),
        'action', e.action,
        'target', CASE WHEN e.target_type IS NULL THEN NULL
                       ELSE json_build_object('type', e.target_type, 'id', e.target_id) END,
        'ip', e.ip, 'request_id', e.request_id, 'details', e.details)
$$;

-- ---- invitations --------------------------------------------------------

CREATE TABLE public.invitations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    email       text NOT NULL CHECK (email = lower(email)),
    role        text NOT NULL CHECK (role IN ('admin', 'member')),
    token_hash  text NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    revoked_at  timestamptz,
    user_id     uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitations_org_idx ON public.invitations (org_id, created_at, id);

CREATE FUNCTION public.tenantd_invitation_json(i public.invitations) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', i.id, 'email', i.email, 'role', i.role,
                             'expires_at', public.tenantd_ts(i.expires_at),
                             'created_at', public.tenantd_ts(i.created_at))
$$;

-- POST /v1/invitations: an earlier pending invitation of the same email is
-- revoked (one live link per person). {"status":"ok","invitation"} or
-- {"status":"member_exists"}.
CREATE FUNCTION public.tenantd_invitation_create(
    p_org_id uuid, p_email text, p_role text, p_hash text, p_ttl_s bigint,
    p_actor_type text, p_actor_id text, p_ip text, p_request_id text,
    p_subject text, p_text text, p_html text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    i public.invitations;
BEGIN
    IF EXISTS (SELECT 1 FROM public.users WHERE org_id = p_org_id AND email = p_email) THEN
        RETURN json_build_object('status', 'member_exists');
    END IF;
    UPDATE public.invitations SET revoked_at = now()
     WHERE org_id = p_org_id AND email = p_email AND accepted_at IS NULL
       AND revoked_at IS NULL;
    INSERT INTO public.invitations (org_id, email, role, token_hash, expires_at)
    VALUES (p_org_id, p_email, p_role, p_hash, now() + make_interval(secs => p_ttl_s))
    RETURNING * INTO i;
    PERFORM public.tenantd_mail_enqueue(p_org_id, 'invitation', p_email, p_subject, p_text, p_html);
    PERFORM public.tenantd_audit(p_org_id, p_actor_type, p_actor_id, 'invitation.created',
                                 'invitation', i.id::text, p_ip, p_request_id,
                                 jsonb_build_object('email', p_email, 'role', p_role));
    RETURN json_build_object('status', 'ok', 'invitation', public.tenantd_invitation_json(i));
END $$;

-- POST /v1/invitations/accept: the user, their first refresh-token family
-- and the audit event, all or nothing. The email is verified (the link
-- came to it). {"status":"ok", user, org, role, token_version} like
-- tenantd_issue_refresh, or "invalid" | "used" | "revoked" | "expired" |
-- "member_exists" | "suspended".
CREATE FUNCTION public.tenantd_invitation_accept(
    p_hash text, p_phc text, p_name text, p_refresh_hash text, p_ttl_s bigint,
    p_ip text, p_request_id text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    i public.invitations;
    o public.orgs;
    u public.users;
BEGIN
    SELECT * INTO i FROM public.invitations WHERE token_hash = p_hash;
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
    -- The arbiter: a concurrent accept waits here for the winner's commit,
    -- then re-checks the row and updates nothing.
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

-- ---- password reset and email verification --------------------------------

CREATE TABLE public.account_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('password_reset', 'verify_email')),
    email      text NOT NULL,   -- the address it was sent to; a changed email voids it
    token_hash text NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_tokens_user_idx ON public.account_tokens (user_id, purpose);

-- POST /v1/auth/password-reset and POST /v1/auth/verify-email: when the
-- user exists in an active org (by id, or by email and org slug), a token,
-- its mail and the audit event; earlier unused tokens of the same purpose
-- stop working. Returns whether a mail was queued (the API never says).
CREATE FUNCTION public.tenantd_account_token_request(
    p_purpose text, p_user_id uuid, p_email text, p_org_slug text, p_hash text, p_ttl_s bigint,
    p_ip text, p_request_id text, p_subject text, p_text text, p_html text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    u public.users;
BEGIN
    SELECT x.* INTO u FROM public.users x JOIN public.orgs o ON o.id = x.org_id
     WHERE o.status = 'active'
       AND CASE WHEN p_user_id IS NOT NULL THEN x.id = p_user_id
                ELSE x.email = p_email AND o.slug = lower(p_org_slug) END;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE public.account_tokens SET used_at = now()
     WHERE user_id = u.id AND purpose = p_purpose AND used_at IS NULL;
    INSERT INTO public.account_tokens (org_id, user_id, purpose, email, token_hash, expires_at)
    VALUES (u.org_id, u.id, p_purpose, u.email, p_hash, now() + make_interval(secs => p_ttl_s));
    PERFORM public.tenantd_mail_enqueue(u.org_id, p_purpose, u.email, p_subject, p_text, p_html);
    PERFORM public.tenantd_audit(u.org_id, CASE WHEN p_user_id IS NULL THEN 'anonymous' ELSE 'user' END,
                                 p_user_id::text,
                                 CASE p_purpose WHEN 'password_reset' THEN 'user.password_reset_requested'
                                      ELSE 'user.email_verification_requested' END,
                                 'user', u.id::text, p_ip, p_request_id, '{}');
    RETURN true;
END $$;

-- POST /v1/auth/password-reset/confirm (p_phc set) and
-- POST /v1/auth/verify-email/confirm (p_phc NULL). A reset sets the
-- password, bumps token_version (every access token dies; the 0008 trigger
-- revokes every refresh token under the user's row lock) and, the mailbox
-- being proven, verifies the email. Returns "ok <user id>" | "invalid" |
-- "used" | "expired".
CREATE FUNCTION public.tenantd_account_token_use(p_purpose text, p_hash text, p_phc text,
                                                 p_ip text, p_request_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t public.account_tokens;
    n integer;
BEGIN
    SELECT * INTO t FROM public.account_tokens WHERE token_hash = p_hash AND purpose = p_purpose;
    IF NOT FOUND THEN
        RETURN 'invalid';
    ELSIF t.used_at IS NOT NULL THEN
        RETURN 'used';
    ELSIF t.expires_at <= now() THEN
        RETURN 'expired';
    END IF;
    UPDATE public.account_tokens SET used_at = now()
     WHERE id = t.id AND used_at IS NULL AND expires_at > now();
    IF NOT FOUND THEN
        RETURN 'used';
    END IF;
    IF p_purpose = 'password_reset' THEN
        UPDATE public.users SET password_hash = p_phc, token_version = token_version + 1,
               email_verified_at = coalesce(email_verified_at, now()), updated_at = now()
         WHERE id = t.user_id AND email = t.email
           AND EXISTS (SELECT 1 FROM public.orgs o WHERE o.id = org_id AND o.status = 'active');
    ELSE
        UPDATE public.users SET email_verified_at = coalesce(email_verified_at, now())
         WHERE id = t.user_id AND email = t.email;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        -- The email changed since the mail went out (or the org is not
        -- active): the token is spent but does nothing.
        RETURN 'invalid';
    END IF;
    PERFORM public.tenantd_audit(t.org_id, 'user', t.user_id::text,
                                 CASE p_purpose WHEN 'password_reset' THEN 'user.password_reset'
                                      ELSE 'user.email_verified' END,
                                 'user', t.user_id::text, p_ip, p_request_id, '{}');
    RETURN 'ok ' || t.user_id;
END $$;

-- ---- refresh reuse grace --------------------------------------------------

-- As 0008's tenantd_refresh (user row lock first), plus a grace: a token
-- used at most p_grace_s seconds ago, presented again with the successor
-- hash it was rotated to (the caller derives the successor from the token
-- itself, so only a holder of the token can name it), answers "ok" again
-- with that same successor, as long as the family is alive: several tabs
-- refreshing at once stay signed in. Reuse after the grace, or naming any
-- other successor, revokes the family as before.
CREATE FUNCTION public.tenantd_refresh_grace(p_old_hash text, p_new_hash text, p_ttl_s bigint,
                                             p_grace_s bigint)
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
    PERFORM 1 FROM public.users WHERE id = uid FOR SHARE;
    UPDATE public.refresh_tokens SET used_at = now()
     WHERE token_hash = p_old_hash AND used_at IS NULL AND revoked_at IS NULL
       AND expires_at > now()
       AND EXISTS (SELECT 1 FROM public.orgs WHERE id = org_id AND status = 'active')
    RETURNING * INTO t;
    IF NOT FOUND THEN
        SELECT * INTO t FROM public.refresh_tokens WHERE token_hash = p_old_hash;
        IF NOT FOUND THEN
            RETURN json_build_object('status', 'invalid');
        END IF;
        IF t.used_at IS NOT NULL AND t.revoked_at IS NULL AND p_grace_s > 0
           AND t.used_at > now() - make_interval(secs => p_grace_s)
           AND EXISTS (SELECT 1 FROM public.refresh_tokens s
                        WHERE s.token_hash = p_new_hash AND s.family_id = t.family_id
                          AND s.revoked_at IS NULL AND s.expires_at > now())
           AND EXISTS (SELECT 1 FROM public.orgs WHERE id = t.org_id AND status = 'active') THEN
            SELECT * INTO u FROM public.users WHERE id = t.user_id;
            SELECT * INTO o FROM public.orgs WHERE id = t.org_id;
            RETURN json_build_object('status', 'ok', 'user', public.tenantd_user_json(u),
                                     'org', public.tenantd_org_json(o), 'role', u.role,
                                     'token_version', u.token_version, 'grace', true);
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

-- ---- sign-in with OIDC ------------------------------------------------------

-- Who may join an org by OIDC without an invitation: with 'domain', a
-- verified email of one of `domains` joins as a member.
ALTER TABLE public.orgs
    ADD COLUMN join_policy text NOT NULL DEFAULT 'invite' CHECK (join_policy IN ('invite', 'domain')),
    ADD COLUMN domains text[] NOT NULL DEFAULT '{}';

-- One sign-in attempt between /start and /callback: `state` (hashed) names
-- it, once; the PKCE verifier and the nonce wait here.
CREATE TABLE public.oidc_flows (
    state_hash      text PRIMARY KEY,
    provider        text NOT NULL,
    org_id          uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    code_verifier   text NOT NULL,
    nonce           text NOT NULL,
    invitation_hash text,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

CREATE TABLE public.user_identities (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    provider   text NOT NULL,
    subject    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, provider, subject)
);
CREATE INDEX user_identities_user_idx ON public.user_identities (user_id);

-- The one-time code /callback hands the frontend, for POST /v1/auth/oidc/exchange.
CREATE TABLE public.oidc_codes (
    code_hash  text PRIMARY KEY,
    org_id     uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE OR REPLACE FUNCTION public.tenantd_org_json(o public.orgs) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', o.id, 'name', o.name, 'slug', o.slug,
                             'status', o.status, 'join_policy', o.join_policy,
                             'domains', to_json(o.domains),
                             'created_at', public.tenantd_ts(o.created_at),
                             'updated_at', public.tenantd_ts(o.updated_at))
$$;

CREATE OR REPLACE FUNCTION public.tenantd_user_json(u public.users) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', u.id, 'email', u.email, 'name', u.name,
                             'role', u.role, 'avatar_url', u.avatar_url,
                             'email_verified_at', public.tenantd_ts(u.email_verified_at),
                             'identities', coalesce((SELECT json_agg(json_build_object(
                                 'provider', i.provider, 'subject', i.subject)
                                 ORDER BY i.created_at, i.id)
                                 FROM public.user_identities i WHERE i.user_id = u.id), '[]'),
                             'created_at', public.tenantd_ts(u.created_at),
                             'updated_at', public.tenantd_ts(u.updated_at))
$$;

-- /callback after the id_token was verified: the flow (used once) gives the
-- org; the user is the one linked to (provider, subject) in that org, else
-- the invited one (the invitation of the flow, for the verified email),
-- else, with join_policy 'domain' and a verified email of a listed domain,
-- a new member. Creates the one-time code. Returns {"status": "ok",
-- "redirect_uri"} or {"status": "invalid" | "refused", "redirect_uri"?}.
CREATE FUNCTION public.tenantd_oidc_sign_in(
    p_state_hash text, p_provider text, p_subject text, p_email text, p_email_verified boolean,
    p_name text, p_unusable_phc text, p_code_hash text, p_ip text, p_request_id text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    f public.oidc_flows;
    o public.orgs;
    u public.users;
    i public.invitations;
    v_how text;
BEGIN
    SELECT * INTO f FROM public.oidc_flows WHERE state_hash = p_state_hash AND provider = p_provider;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    SELECT * INTO o FROM public.orgs WHERE id = f.org_id AND status = 'active';
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'refused', 'redirect_uri', f.redirect_uri);
    END IF;
    SELECT x.* INTO u FROM public.users x JOIN public.user_identities ui ON ui.user_id = x.id
     WHERE ui.org_id = o.id AND ui.provider = p_provider AND ui.subject = p_subject;
    IF FOUND THEN
        v_how := 'identity';
    ELSIF p_email IS NULL OR NOT p_email_verified THEN
        PERFORM public.tenantd_audit(o.id, 'anonymous', NULL, 'auth.login_failed', 'oidc',
                                     p_provider || ':' || p_subject, p_ip, p_request_id,
                                     jsonb_build_object('reason', 'email not verified'));
        RETURN json_build_object('status', 'refused', 'redirect_uri', f.redirect_uri);
    ELSE
        IF f.invitation_hash IS NOT NULL THEN
            UPDATE public.invitations SET accepted_at = now()
             WHERE token_hash = f.invitation_hash AND org_id = o.id AND email = lower(p_email)
               AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
            RETURNING * INTO i;
        END IF;
        IF i.id IS NOT NULL THEN
            v_how := 'invitation';
            INSERT INTO public.users (org_id, email, name, role, password_hash, email_verified_at)
            VALUES (o.id, lower(p_email), p_name, i.role, p_unusable_phc, now())
            ON CONFLICT (org_id, email) DO NOTHING RETURNING * INTO u;
            UPDATE public.invitations SET user_id = u.id WHERE id = i.id;
        ELSIF o.join_policy = 'domain'
              AND split_part(lower(p_email), '@', 2) = ANY (o.domains) THEN
            v_how := 'domain';
            INSERT INTO public.users (org_id, email, name, role, password_hash, email_verified_at)
            VALUES (o.id, lower(p_email), p_name, 'member', p_unusable_phc, now())
            ON CONFLICT (org_id, email) DO NOTHING RETURNING * INTO u;
        ELSE
            PERFORM public.tenantd_audit(o.id, 'anonymous', NULL, 'auth.login_failed', 'oidc',
                                         p_provider || ':' || p_subject, p_ip, p_request_id,
                                         jsonb_build_object('reason', 'not invited'));
            RETURN json_build_object('status', 'refused', 'redirect_uri', f.redirect_uri);
        END IF;
        IF u.id IS NULL THEN
            -- A user with this email exists already: an OIDC identity is
            -- linked to it only by that user (never by the email alone).
            RAISE EXCEPTION 'member exists' USING ERRCODE = '23505';
        END IF;
        INSERT INTO public.user_identities (org_id, user_id, provider, subject)
        VALUES (o.id, u.id, p_provider, p_subject);
    END IF;
    INSERT INTO public.oidc_codes (code_hash, org_id, user_id, expires_at)
    VALUES (p_code_hash, o.id, u.id, now() + interval '2 minutes');
    PERFORM public.tenantd_audit(o.id, 'user', u.id::text,
                                 CASE v_how WHEN 'invitation' THEN 'invitation.accepted'
                                            WHEN 'domain' THEN 'user.created' ELSE 'auth.oidc_callback' END,
                                 'user', u.id::text, p_ip, p_request_id,
                                 jsonb_build_object('provider', p_provider, 'via', v_how));
    RETURN json_build_object('status', 'ok', 'redirect_uri', f.redirect_uri);
END $$;

-- POST /v1/auth/oidc/exchange: the one-time code (once) -> a refresh-token
-- family, like tenantd_issue_refresh, with the sign-in's audit event.
CREATE FUNCTION public.tenantd_oidc_exchange(p_code_hash text, p_refresh_hash text, p_ttl_s bigint,
                                             p_ip text, p_request_id text)
RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    c public.oidc_codes;
    r json;
BEGIN
    UPDATE public.oidc_codes SET used_at = now()
     WHERE code_hash = p_code_hash AND used_at IS NULL AND expires_at > now()
    RETURNING * INTO c;
    IF NOT FOUND THEN
        RETURN json_build_object('status', 'invalid');
    END IF;
    r := public.tenantd_issue_refresh(c.user_id, p_refresh_hash, p_ttl_s);
    IF r->>'status' = 'ok' THEN
        PERFORM public.tenantd_audit(c.org_id, 'user', c.user_id::text, 'auth.login', 'user',
                                     c.user_id::text, p_ip, p_request_id,
                                     jsonb_build_object('method', 'oidc'));
    END IF;
    RETURN r;
END $$;
