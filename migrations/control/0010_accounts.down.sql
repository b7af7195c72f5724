DROP FUNCTION public.tenantd_oidc_exchange(text, text, bigint, text, text);
DROP FUNCTION public.tenantd_oidc_sign_in(text, text, text, text, boolean, text, text, text, text, text);
DROP TABLE public.oidc_codes;
DROP TABLE public.user_identities;
DROP TABLE public.oidc_flows;
CREATE OR REPLACE FUNCTION public.tenantd_org_json(o public.orgs) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', o.id, 'name', o.name, 'slug', o.slug,
                             'status', o.status,
                             'created_at', public.tenantd_ts(o.created_at),
                             'updated_at', public.tenantd_ts(o.updated_at))
$$;
ALTER TABLE public.orgs DROP COLUMN join_policy, DROP COLUMN domains;
DROP FUNCTION public.tenantd_refresh_grace(text, text, bigint, bigint);
DROP FUNCTION public.tenantd_account_token_use(text, text, text, text, text);
DROP FUNCTION public.tenantd_account_token_request(text, uuid, text, text, text, bigint, text, text, text, text, text);
DROP TABLE public.account_tokens;
DROP FUNCTION public.tenantd_invitation_accept(text, text, text, text, bigint, text, text);
DROP FUNCTION public.tenantd_invitation_create(uuid, text, text, text, bigint, text, text, text, text, text, text, text);
DROP FUNCTION public.tenantd_invitation_json(public.invitations);
DROP TABLE public.invitations;
DROP FUNCTION public.tenantd_audit_json(public.audit_events);
DROP FUNCTION public.tenantd_audit(uuid, text, text, text, text, text, text, text, jsonb);
DROP TABLE public.audit_events;
DROP FUNCTION public.tenantd_audit_append_only();
DROP FUNCTION public.tenantd_mail_enqueue(uuid, text, text, text, text, text);
DELETE FROM public.jobs WHERE type = 'email.send';
DROP TABLE public.mail_outbox;
DROP TRIGGER users_email_unverify ON public.users;
DROP FUNCTION public.tenantd_user_email_unverify();
CREATE OR REPLACE FUNCTION public.tenantd_user_json(u public.users) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', u.id, 'email', u.email, 'name', u.name,
                             'role', u.role, 'avatar_url', u.avatar_url,
                             'created_at', public.tenantd_ts(u.created_at),
                             'updated_at', public.tenantd_ts(u.updated_at))
$$;
ALTER TABLE public.users DROP COLUMN email_verified_at;
