-- tenantd: compatible
-- Rate limits shared by every tenantd on this database (issue 14, item 2;
-- src/auth/sharedlimit.c): one token bucket per (limit, key) row, taken from
-- with one INSERT .. ON CONFLICT DO UPDATE, so any number of instances
-- together allow the configured budget, not one budget each.
--
-- * UNLOGGED: a bucket is worth nothing after a crash (at worst a client gets
--   a fresh budget), and skipping the WAL keeps a take cheap. A standby does
--   not see it either; after a failover the limits start empty.
-- * key: SHA-256 of the limit's key (a client address, an account, an org
--   id), so the table holds no emails or addresses.
-- * The clock is the database's (clock_timestamp), the one clock all
--   instances share. Fixed point as in src/auth/ratelimit.c: one token is
--   period_ms units and a bucket gains n units a millisecond.
-- * full_at: when the bucket is full again (a full bucket says nothing, so
--   tenantd_rate_sweep deletes rows past it); for a mark (login_known) the
--   mark's end. Not indexed (see below).
--
-- Compatible: binaries before it never read what it adds.
CREATE UNLOGGED TABLE public.rate_limits (
    name       text NOT NULL,
    key        bytea NOT NULL,
    level      bigint NOT NULL,
    updated_ms bigint NOT NULL,
    granted    integer NOT NULL DEFAULT 0, -- what the last take granted (RETURNING sees only the new row)
    full_at    timestamptz NOT NULL,
    PRIMARY KEY (name, key)
) WITH (fillfactor = 50);
-- No index but the key's: a take changes level, updated_ms and full_at, and
-- an index on any of them would make takes non-HOT updates, leaving dead
-- index entries that the next take of a busy key (one org, one address)
-- steps over (measured over 5,000 takes of one key: with an index on
-- full_at 1,292 HOT updates and 9 buffers a take after; without, 4,999 and
-- 4). fillfactor leaves room on the page for the new row version. The sweep reads the whole table instead, once a
-- minute per instance.

-- The level of a bucket (level units at updated_ms) at now_ms, capped at
-- n * period. A full period refills any bucket (and spares the multiply
-- after long idleness from overflowing).
CREATE FUNCTION public.tenantd_rate_refill(level bigint, updated_ms bigint, now_ms bigint,
                                          n bigint, period_ms bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN now_ms - updated_ms >= period_ms THEN n * period_ms
                ELSE least(n * period_ms, level + greatest(now_ms - updated_ms, 0) * n) END
$$;

-- Takes up to p_want tokens (>= 1) from the bucket (p_name, p_key) of p_n
-- tokens per p_period_ms. Returns what it granted (0 = refused) and the
-- level left, from which the caller derives RateLimit-Remaining / -Reset
-- and Retry-After.
CREATE FUNCTION public.tenantd_rate_take(p_name text, p_key bytea, p_n bigint, p_period_ms bigint,
                                        p_want integer)
RETURNS TABLE (granted integer, level bigint)
-- plpgsql rather than sql: its plan is cached per connection (pgbench: 0.14
-- vs 0.61 ms a take when a sql function planned its INSERT at every call).
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    INSERT INTO public.rate_limits AS r (name, key, level, updated_ms, granted, full_at)
    SELECT p_name, p_key, p_n * p_period_ms - g * p_period_ms, now_ms, g,
           to_timestamp((now_ms + (g * p_period_ms + p_n - 1) / p_n) / 1000.0)
    FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms,
                 least(p_want, p_n)::integer AS g) c
    ON CONFLICT (name, key) DO UPDATE SET (granted, level, updated_ms, full_at) = (
        SELECT t.g, t.refilled - t.g * p_period_ms, t.at,
               to_timestamp((t.at + (p_n * p_period_ms - (t.refilled - t.g * p_period_ms)
                                     + p_n - 1) / p_n) / 1000.0)
        FROM (SELECT least(p_want, f.refilled / p_period_ms)::integer AS g, f.refilled,
                     -- A clock that went back keeps the later time: no refill counts twice.
                     greatest(r.updated_ms, f.now_ms) AS at
              FROM (SELECT public.tenantd_rate_refill(r.level, r.updated_ms, n.now_ms, p_n,
                                                      p_period_ms) AS refilled, n.now_ms
                    FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                                 AS now_ms) n) f) t)
    RETURNING r.granted, r.level;
END $$;

-- A login attempt on an account (src/auth/auth.c login_key_take, shared):
-- the account's bucket first; when it is empty, a client that logged in to
-- the account before (a live login_known mark on p_path, "<account>|<client>")
-- draws from a bucket of its own, so guesses from elsewhere cannot lock the
-- owner out.
CREATE FUNCTION public.tenantd_login_key_take(p_key bytea, p_path bytea, p_n bigint,
                                             p_period_ms bigint)
RETURNS TABLE (granted integer, level bigint)
LANGUAGE plpgsql AS $$
DECLARE
    g integer;
    l bigint;
BEGIN
    SELECT t.granted, t.level INTO g, l
    FROM public.tenantd_rate_take('login_key', p_key, p_n, p_period_ms, 1) t;
    IF g = 0 AND EXISTS (SELECT 1 FROM public.rate_limits k
                         WHERE k.name = 'login_known' AND k.key = p_path
                           AND k.full_at > clock_timestamp()) THEN
        SELECT t.granted, t.level INTO g, l
        FROM public.tenantd_rate_take('login_known_key', p_path, p_n, p_period_ms, 1) t;
    END IF;
    granted := g;
    level := l;
    RETURN NEXT;
END $$;

-- A login (or password change) attempt in one round trip: the client's
-- bucket, then, when it had a token, the account's (tenantd_login_key_take).
-- Returns the tighter level of the two and which limit refused, if one did
-- (the client's token stays spent when the account refuses, as before).
CREATE FUNCTION public.tenantd_login_take(p_client bytea, p_key bytea, p_path bytea, p_n bigint,
                                         p_period_ms bigint)
RETURNS TABLE (granted integer, level bigint, refused text)
LANGUAGE plpgsql AS $$
DECLARE
    g integer;
    l bigint;
    kg integer;
    kl bigint;
BEGIN
    SELECT t.granted, t.level INTO g, l
    FROM public.tenantd_rate_take('login_ip', p_client, p_n, p_period_ms, 1) t;
    IF g = 0 THEN
        granted := 0;
        level := l;
        refused := 'login_ip';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT t.granted, t.level INTO kg, kl
    FROM public.tenantd_login_key_take(p_key, p_path, p_n, p_period_ms) t;
    granted := kg;
    level := CASE WHEN kg = 0 THEN kl ELSE least(l, kl) END;
    refused := CASE WHEN kg = 0 THEN 'login_key' END;
    RETURN NEXT;
END $$;

-- A successful login: the account's budget is full again and the client is
-- a known path of it for p_known_ms.
CREATE FUNCTION public.tenantd_login_succeeded(p_key bytea, p_path bytea, p_known_ms bigint)
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM public.rate_limits WHERE name = 'login_key' AND key = p_key;
    INSERT INTO public.rate_limits (name, key, level, updated_ms, granted, full_at)
    VALUES ('login_known', p_path, 0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0,
            clock_timestamp() + p_known_ms * interval '1 millisecond')
    ON CONFLICT (name, key) DO UPDATE SET
        updated_ms = excluded.updated_ms, full_at = excluded.full_at;
$$;

-- Deletes up to p_max rows that carry nothing any more (full buckets, ended
-- marks); the number deleted.
CREATE FUNCTION public.tenantd_rate_sweep(p_max integer) RETURNS integer
LANGUAGE sql AS $$
    WITH d AS (
        DELETE FROM public.rate_limits WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM public.rate_limits WHERE full_at < clock_timestamp() LIMIT p_max))
        RETURNING 1)
    SELECT count(*)::integer FROM d
$$;

-- W3C trace context of the request that enqueued a job (issue 14, item 7):
-- its server span as a traceparent, and the caller's tracestate, so that the
-- calls the job makes (webhook.deliver) continue the trace as child spans.
-- The request's statement sets tenantd.traceparent / tenantd.tracestate for
-- its own transaction (tenantd_job_enqueue_traced); the trigger stamps every
-- job inserted in it (events fanned out by the same statement included).
ALTER TABLE public.jobs
    ADD COLUMN traceparent text CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'),
    ADD COLUMN tracestate text CHECK (length(tracestate) <= 512);

CREATE FUNCTION public.tenantd_job_trace() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.traceparent IS NULL THEN
        NEW.traceparent := nullif(current_setting('tenantd.traceparent', true), '');
        NEW.tracestate := nullif(current_setting('tenantd.tracestate', true), '');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_trace BEFORE INSERT ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_job_trace();

-- tenantd_job_enqueue (0005) with the request's trace context.
CREATE FUNCTION public.tenantd_job_enqueue_traced(
    p_traceparent text, p_tracestate text,
    p_org_id uuid, p_type text, p_payload jsonb, p_priority integer, p_run_at timestamptz,
    p_max_attempts integer, p_cost bigint, p_key text DEFAULT NULL, p_hash text DEFAULT NULL,
    OUT o_outcome text, OUT o_status integer, OUT o_headers json, OUT o_body text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('tenantd.traceparent', coalesce(p_traceparent, ''), true),
            set_config('tenantd.tracestate', coalesce(p_tracestate, ''), true);
    SELECT e.o_outcome, e.o_status, e.o_headers, e.o_body
      INTO o_outcome, o_status, o_headers, o_body
      FROM public.tenantd_job_enqueue(p_org_id, p_type, p_payload, p_priority, p_run_at,
                                      p_max_attempts, p_cost, p_key, p_hash) e;
    -- Later statements of this connection must not inherit the trace.
    PERFORM set_config('tenantd.traceparent', '', true),
            set_config('tenantd.tracestate', '', true);
END $$;
