-- The operator's org import (POST /v1/admin/orgs/import, src/org/import.c):
-- an org export (GET /v1/admin/orgs/{slug}/export) re-created in one
-- statement, ids kept, all or nothing.

-- A ledger row names the run of its job (0011). The import writes the runs
-- of a job's past rows itself (its first deduction was run 1, its second
-- run 2, ...), so the trigger fills job_run only when the insert left it
-- out; every other writer leaves it out, as before.
ALTER TABLE public.credit_transactions ALTER COLUMN job_run DROP DEFAULT;
CREATE OR REPLACE FUNCTION public.tenantd_ledger_job_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.job_run IS NULL THEN
        -- A job's first deduction precedes its row: run 1.
        NEW.job_run := CASE WHEN NEW.job_id IS NULL THEN 1
                            ELSE coalesce((SELECT j.runs FROM public.jobs j WHERE j.id = NEW.job_id), 1)
                       END;
    END IF;
    RETURN NEW;
END $$;

-- Imports an export (p_doc: its NDJSON text, every line already checked by
-- the server for its kind, fields and types; line 1 the version, 2 the org,
-- 3 the credits). First the checks that need the database, before any
-- write, each answering o_outcome with the 1-based line it is about:
--   'slug_taken'  a live org has the slug
--   'conflict'    an id (org, user, API key, API key prefix, job, ledger
--                 row) exists in this database already
--   'invalid'     the document contradicts itself: an id (or a user's
--                 email) repeats, a ledger row's balance_after is not the
--                 running sum of the amounts, or the sum is not the balance
-- then the org: its row (a deleted org of the same id, whose row and ledger
-- this database keeps, comes back to life: its kept ledger rows must be the
-- export's, and what else it left is deleted), its schema with every tenant migration (p_tenant_*: the
-- server's embedded ones, as tenantd_create_org takes them), users with
-- their password hashes and sign-in identities, API keys (listed, but
-- their secrets were never exported: a key_hash no key hashes to), records,
-- the credit account and ledger rows as they were, jobs (a job that was
-- running is queued again: its lease died with the old database), an audit
-- event. o_outcome 'executed' with o_body the Org; or a tenantd_idem_begin
-- outcome (p_key: the operator's Idempotency-Key, scoped to the org id).
CREATE FUNCTION public.tenantd_import_org(
    p_doc text, p_tenant_sql text[], p_tenant_versions int[], p_tenant_names text[],
    p_tenant_checksums text[], p_key text, p_hash text, p_ip text, p_request_id text,
    OUT o_outcome text, OUT o_line bigint, OUT o_detail text,
    OUT o_status integer, OUT o_headers json, OUT o_body text)
LANGUAGE plpgsql SET client_min_messages = warning AS $$
DECLARE
    v_org     jsonb;
    v_credits jsonb;
    v_id      uuid;
    v_old     public.orgs;
    v_new     public.orgs;
    v_schema  text;
    v_path    text := current_setting('search_path');
    v_n       int := coalesce(array_length(p_tenant_sql, 1), 0);
    v_sum     numeric;
    v_count   bigint;
BEGIN
    IF coalesce(array_length(p_tenant_versions, 1), 0) <> v_n
       OR coalesce(array_length(p_tenant_names, 1), 0) <> v_n
       OR coalesce(array_length(p_tenant_checksums, 1), 0) <> v_n THEN
        RAISE EXCEPTION 'tenant migration arrays differ in length';
    END IF;

    -- The lines, parsed once. Dropped at commit (and with a rollback).
    CREATE TEMP TABLE tenantd_import_lines ON COMMIT DROP AS
        SELECT u.n AS line, u.l::jsonb AS j, (u.l::jsonb)->>'kind' AS kind, (u.l::jsonb)->>'id' AS id
          FROM unnest(string_to_array(p_doc, E'\n')) WITH ORDINALITY AS u(l, n)
         WHERE u.l !~ '^\s*$';
    SELECT j INTO v_org FROM pg_temp.tenantd_import_lines WHERE line = 2 AND kind = 'org';
    SELECT j INTO v_credits FROM pg_temp.tenantd_import_lines WHERE line = 3 AND kind = 'credits';
    IF v_org IS NULL OR v_credits IS NULL THEN
        RAISE EXCEPTION 'the server checks the head lines before calling tenantd_import_org';
    END IF;
    v_id := (v_org->>'id')::uuid;

    IF p_key IS NOT NULL THEN
        SELECT b.o_outcome, b.o_status, b.o_headers, b.o_body
          INTO o_outcome, o_status, o_headers, o_body
          FROM public.tenantd_idem_begin(v_id, 'operator', p_key, p_hash) b;
        IF o_outcome <> 'proceed' THEN
            RETURN;
        END IF;
    END IF;

    -- ---- checks: nothing is written before they all pass ----
    SELECT * INTO v_old FROM public.orgs o WHERE o.id = v_id FOR UPDATE;
    IF FOUND AND v_old.status <> 'deleted' THEN
        o_outcome := 'conflict'; o_line := 2;
        o_detail := 'an organization with this id exists in this database';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM public.orgs o WHERE lower(o.slug) = lower(v_org->>'slug')
                                            AND o.status <> 'deleted') THEN
        o_outcome := 'slug_taken'; o_line := 2;
        o_detail := 'a live organization has this slug';
        RETURN;
    END IF;

    -- Repeats within the document: ids per kind, users' emails, keys' prefixes.
    SELECT x.line, 'repeats the ' || x.what || ' of line ' || x.first INTO o_line, o_detail
      FROM (SELECT l.line, w.what,
                   min(l.line) OVER (PARTITION BY l.kind, w.what, w.v) AS first
              FROM pg_temp.tenantd_import_lines l
             CROSS JOIN LATERAL (VALUES ('id', l.id),
                                        ('email', CASE WHEN l.kind = 'user' THEN l.j->>'email' END),
                                        ('prefix', CASE WHEN l.kind = 'api_key' THEN l.j->>'prefix' END)) w(what, v)
             WHERE l.line > 3 AND w.v IS NOT NULL) x
     WHERE x.line <> x.first ORDER BY x.line LIMIT 1;
    IF FOUND THEN
        o_outcome := 'invalid';
        RETURN;
    END IF;

    -- The ledger: balance_after chains along the rows, and the balance is their sum.
    SELECT x.line INTO o_line
      FROM (SELECT l.line, (l.j->>'balance_after')::numeric AS after,
                   sum((l.j->>'amount')::numeric) OVER (ORDER BY l.line) AS running
              FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'credit_transaction') x
     WHERE x.after <> x.running ORDER BY x.line LIMIT 1;
    IF FOUND THEN
        o_outcome := 'invalid';
        o_detail := 'balance_after is not the sum of the amounts of this and the earlier '
                    'ledger rows';
        RETURN;
    END IF;
    SELECT coalesce(sum((l.j->>'amount')::numeric), 0) INTO v_sum
      FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'credit_transaction';
    IF v_sum <> (v_credits->>'balance')::numeric THEN
        o_outcome := 'invalid'; o_line := 3;
        o_detail := 'the balance is ' || (v_credits->>'balance') || ' but the ledger rows sum to '
                    || v_sum;
        RETURN;
    END IF;

    -- Ids this database holds already.
    SELECT l.line, 'a ' || replace(l.kind, '_', ' ') || ' with this ' ||
           CASE WHEN l.kind = 'api_key' AND k.id <> l.id::uuid THEN 'prefix' ELSE 'id' END ||
           ' exists in this database'
      INTO o_line, o_detail
      FROM pg_temp.tenantd_import_lines l
      LEFT JOIN public.users u ON l.kind = 'user' AND u.id = l.id::uuid
      LEFT JOIN public.api_keys k ON l.kind = 'api_key'
                                 AND (k.id = l.id::uuid OR k.prefix = l.j->>'prefix')
      LEFT JOIN public.jobs jb ON l.kind = 'job' AND jb.id = l.id::uuid
      LEFT JOIN public.credit_transactions t ON l.kind = 'credit_transaction' AND t.id = l.id::uuid
     WHERE u.id IS NOT NULL OR k.id IS NOT NULL OR jb.id IS NOT NULL
        OR (t.id IS NOT NULL AND NOT (t.org_id = v_id AND t.org_deleted
            AND public.tenantd_credit_tx_json(t)::jsonb = l.j - 'kind'))
     ORDER BY l.line LIMIT 1;
    IF FOUND THEN
        o_outcome := 'conflict';
        RETURN;
    END IF;
    -- A deleted org's kept ledger comes back whole or not at all.
    IF v_old.id IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM public.credit_transactions t
         WHERE t.org_id = v_id AND t.org_deleted
           AND NOT EXISTS (SELECT 1 FROM pg_temp.tenantd_import_lines l
                            WHERE l.kind = 'credit_transaction' AND l.id::uuid = t.id);
        IF v_count > 0 THEN
            o_outcome := 'conflict'; o_line := 3;
            o_detail := 'this database kept ' || v_count || ' ledger rows of the deleted '
                        'organization that the export lacks (it is older than they are)';
            RETURN;
        END IF;
    END IF;

    -- ---- writes ----
    IF v_old.id IS NOT NULL THEN
        -- What the deleted org left that no export carries goes first, so
        -- the org comes back as it would into an empty database: no old
        -- invitation or sign-in flow becomes usable again, no schedule
        -- ticks again, and no webhook hears of the imported rows.
        DELETE FROM public.webhook_subscriptions x WHERE x.org_id = v_id;
        DELETE FROM public.schedules x WHERE x.org_id = v_id;
        DELETE FROM public.invitations x WHERE x.org_id = v_id;
        DELETE FROM public.account_tokens x WHERE x.org_id = v_id;
        DELETE FROM public.oidc_flows x WHERE x.org_id = v_id;
        DELETE FROM public.oidc_codes x WHERE x.org_id = v_id;
        DELETE FROM public.mail_outbox x WHERE x.org_id = v_id;
        v_schema := v_old.schema_name;
        UPDATE public.orgs o
           SET name = v_org->>'name', slug = lower(v_org->>'slug'), status = v_org->>'status',
               join_policy = v_org->>'join_policy',
               domains = ARRAY(SELECT jsonb_array_elements_text(v_org->'domains')),
               created_at = (v_org->>'created_at')::timestamptz,
               updated_at = (v_org->>'updated_at')::timestamptz
         WHERE o.id = v_id RETURNING * INTO v_new;
    ELSE
        v_schema := 'tenant_' || replace(v_id::text, '-', '');
        INSERT INTO public.orgs (id, name, slug, schema_name, status, join_policy, domains,
                                 created_at, updated_at)
        VALUES (v_id, v_org->>'name', lower(v_org->>'slug'), v_schema, v_org->>'status',
                v_org->>'join_policy', ARRAY(SELECT jsonb_array_elements_text(v_org->'domains')),
                (v_org->>'created_at')::timestamptz, (v_org->>'updated_at')::timestamptz)
        RETURNING * INTO v_new;
    END IF;

    -- The schema, as tenantd_create_org makes it.
    EXECUTE format('CREATE SCHEMA %I', v_schema);
    EXECUTE format('CREATE TABLE %I.schema_migrations (version int PRIMARY KEY,'
                   ' name text NOT NULL, checksum text NOT NULL,'
                   ' applied_at timestamptz NOT NULL DEFAULT now())', v_schema);
    PERFORM pg_catalog.set_config('search_path', format('%I, public', v_schema), true);
    FOR i IN 1 .. v_n LOOP
        EXECUTE p_tenant_sql[i];
        EXECUTE format('INSERT INTO %I.schema_migrations (version, name, checksum)'
                       ' VALUES ($1, $2, $3)', v_schema)
            USING p_tenant_versions[i], p_tenant_names[i], p_tenant_checksums[i];
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', v_path, true);

    -- token_version is not exported, and access tokens carry it: a random
    -- one far above any a user reached (1 + password changes) refuses every
    -- token minted before the import, including those a password change
    -- had revoked, however often the org is moved.
    INSERT INTO public.users (id, org_id, email, name, avatar_url, role, password_hash,
                              token_version, email_verified_at, created_at, updated_at)
    SELECT l.id::uuid, v_id, l.j->>'email', l.j->>'name', l.j->>'avatar_url', l.j->>'role',
           l.j->>'password_hash', 1000000 + floor(random() * 1000000000)::int,
           (l.j->>'email_verified_at')::timestamptz,
           (l.j->>'created_at')::timestamptz, (l.j->>'updated_at')::timestamptz
      FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'user' ORDER BY l.line;
    -- Identities are listed by (created_at, id): a microsecond apart keeps their order.
    INSERT INTO public.user_identities (org_id, user_id, provider, subject, created_at)
    SELECT v_id, l.id::uuid, i.v->>'provider', i.v->>'subject',
           (l.j->>'created_at')::timestamptz + i.n * interval '1 microsecond'
      FROM pg_temp.tenantd_import_lines l
     CROSS JOIN LATERAL jsonb_array_elements(coalesce(l.j->'identities', '[]')) WITH ORDINALITY
           AS i(v, n)
     WHERE l.kind = 'user';

    -- '-' is no hex SHA-256: no key authenticates as these.
    INSERT INTO public.api_keys (id, org_id, name, role, prefix, key_hash, created_at,
                                 last_used_at, revoked_at)
    SELECT l.id::uuid, v_id, l.j->>'name', l.j->>'role', l.j->>'prefix', '-',
           (l.j->>'created_at')::timestamptz, (l.j->>'last_used_at')::timestamptz,
           (l.j->>'revoked_at')::timestamptz
      FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'api_key' ORDER BY l.line;

    EXECUTE format(
        'INSERT INTO %I.records (id, collection, data, version, created_at, updated_at)'
        ' SELECT l.id::uuid, l.j->>''collection'', l.j->''data'', (l.j->>''version'')::bigint,'
        ' (l.j->>''created_at'')::timestamptz, (l.j->>''updated_at'')::timestamptz'
        ' FROM pg_temp.tenantd_import_lines l WHERE l.kind = ''record''', v_schema);

    INSERT INTO public.credit_accounts AS a (org_id, balance, updated_at)
    VALUES (v_id, (v_credits->>'balance')::bigint, (v_credits->>'updated_at')::timestamptz)
    ON CONFLICT (org_id) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at;
    UPDATE public.credit_transactions t SET org_deleted = false
     WHERE t.org_id = v_id AND t.org_deleted;
    -- New rows in the export's order (seq follows it). A job's n-th
    -- deduction was its run n; a refund belongs to the run charged last.
    INSERT INTO public.credit_transactions (id, org_id, amount, type, balance_after, job_id,
                                            job_run, description, reference, created_at)
    SELECT x.id::uuid, v_id, (x.j->>'amount')::bigint, x.j->>'type',
           (x.j->>'balance_after')::bigint, (x.j->>'job_id')::uuid, greatest(x.run, 1),
           x.j->>'description', x.j->>'reference', (x.j->>'created_at')::timestamptz
      FROM (SELECT l.line, l.id, l.j,
                   count(*) FILTER (WHERE l.j->>'type' = 'deduction')
                       OVER (PARTITION BY l.j->>'job_id' ORDER BY l.line) AS run
              FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'credit_transaction') x
     WHERE NOT EXISTS (SELECT 1 FROM public.credit_transactions t WHERE t.id = x.id::uuid)
     ORDER BY x.line;

    INSERT INTO public.jobs (id, org_id, type, status, payload, result, error, priority, attempts,
                             max_attempts, cost, progress, cancel_requested, run_at, created_at,
                             started_at, finished_at, runs)
    SELECT l.id::uuid, v_id, l.j->>'type',
           CASE WHEN l.j->>'status' = 'running' THEN 'queued' ELSE l.j->>'status' END,
           l.j->'payload', CASE WHEN jsonb_typeof(l.j->'result') = 'null' THEN NULL
                                ELSE l.j->'result' END,
           l.j->>'error', (l.j->>'priority')::smallint, (l.j->>'attempts')::int,
           (l.j->>'max_attempts')::int, (l.j->>'cost')::bigint, (l.j->>'progress')::smallint,
           coalesce((l.j->>'cancel_requested')::boolean, false),
           (l.j->>'run_at')::timestamptz, (l.j->>'created_at')::timestamptz,
           (l.j->>'started_at')::timestamptz, (l.j->>'finished_at')::timestamptz,
           greatest(1, (SELECT count(*) FROM public.credit_transactions t
                         WHERE t.job_id = l.id::uuid AND t.org_id = v_id AND t.type = 'deduction'))
      FROM pg_temp.tenantd_import_lines l WHERE l.kind = 'job' ORDER BY l.line;

    PERFORM public.tenantd_audit(v_id, 'operator', NULL, 'org.imported', 'org', v_id::text, p_ip,
                                 p_request_id,
                                 (SELECT jsonb_object_agg(c.kind, c.n) FROM
                                    (SELECT l.kind, count(*) AS n FROM pg_temp.tenantd_import_lines l
                                      WHERE l.line > 3 GROUP BY l.kind) c));

    o_outcome := 'executed';
    o_line := NULL;
    o_status := 201;
    o_headers := '[["Content-Type","application/json"]]';
    o_body := public.tenantd_org_json(v_new)::text;
    IF p_key IS NOT NULL THEN
        PERFORM public.tenantd_idem_finish(v_id, 'operator', p_key, p_hash, o_status, o_headers,
                                           o_body);
    END IF;
END $$;
