-- Credits: the ledger's operations as SQL functions (each one statement for
-- the caller, so a balance change and its ledger row commit together or not
-- at all), and the storage of Idempotency-Key answers (issue 4).
--
-- Invariants: credit_accounts.balance >= 0 (CHECK); balance == sum(amount)
-- of the org's credit_transactions, because every change goes through
-- public.tenantd_credit_apply, which updates the account row and appends
-- the ledger row in one transaction, the account row lock serialising the
-- org's changes.

-- The ledger's order within an org. Drawn by the INSERT while the account
-- row is locked, so for one org seq follows the order of balance changes
-- (balance_after chains along seq); pagination cursors are a seq.
ALTER TABLE public.credit_transactions ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE INDEX credit_transactions_org_seq_idx ON public.credit_transactions (org_id, seq DESC);

-- Amounts carry their direction: grants and refunds add, spends and
-- deductions take away, adjustments go either way (tenantd_credit_apply
-- also refuses a zero adjustment; the table lets one through for audit
-- rows written by hand).
ALTER TABLE public.credit_transactions ADD CONSTRAINT credit_transactions_amount_sign CHECK (
    CASE type WHEN 'grant' THEN amount > 0
              WHEN 'refund' THEN amount > 0
              WHEN 'spend' THEN amount < 0
              WHEN 'deduction' THEN amount < 0
              ELSE true END);

-- A job is charged once and refunded at most once: a second deduction or
-- refund for one job_id is a unique violation (23505), whatever the code
-- that tries it.
CREATE UNIQUE INDEX credit_transactions_job_deduction_key
    ON public.credit_transactions (job_id) WHERE type = 'deduction';
CREATE UNIQUE INDEX credit_transactions_job_refund_key
    ON public.credit_transactions (job_id) WHERE type = 'refund';

-- Append-only: rows are never deleted, and only org_deleted may change
-- (tenantd_delete_org flags a deleted org's rows).
CREATE FUNCTION public.tenantd_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (to_jsonb(NEW) - 'org_deleted') IS DISTINCT FROM (to_jsonb(OLD) - 'org_deleted') THEN
        RAISE EXCEPTION 'credit_transactions is append-only' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_transactions_append_only BEFORE UPDATE OR DELETE ON public.credit_transactions
    FOR EACH ROW EXECUTE FUNCTION public.tenantd_ledger_append_only();

-- The API's Transaction resource.
CREATE FUNCTION public.tenantd_credit_tx_json(t public.credit_transactions) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', t.id, 'amount', t.amount, 'type', t.type,
                             'balance_after', t.balance_after, 'job_id', t.job_id,
                             'description', t.description, 'reference', t.reference,
                             'created_at', public.tenantd_ts(t.created_at))
$$;

-- THE way to change a balance (spend, grant, deduction, refund, adjustment).
-- Adds p_amount (signed) to the org's balance and appends the ledger row
-- with the balance after it, atomically; returns that row.
--   SQLSTATE TD402 (insufficient credits): the balance would go below zero;
--            nothing changed.
--   22023: amount zero, unknown type, or a sign the type does not allow.
--   23505: a second deduction or refund for one job_id.
--   23503: no such org.
--   22003: the balance would overflow bigint.
-- An org without an account row gets one on its first credit.
-- created_at is clock_timestamp() read after the account row is locked, so
-- an org's ledger times follow its balance changes.
CREATE FUNCTION public.tenantd_credit_apply(
    p_org_id uuid, p_amount bigint, p_type text, p_job_id uuid DEFAULT NULL,
    p_description text DEFAULT NULL, p_reference text DEFAULT NULL)
RETURNS public.credit_transactions
LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
    v_at      timestamptz;
    v_tx      public.credit_transactions;
BEGIN
    IF p_amount IS NULL OR p_amount = 0 OR p_type IS NULL
       OR p_type NOT IN ('grant', 'spend', 'deduction', 'refund', 'adjustment')
       OR (p_type IN ('grant', 'refund') AND p_amount < 0)
       OR (p_type IN ('spend', 'deduction') AND p_amount > 0) THEN
        RAISE EXCEPTION 'not a valid ledger entry: % of %', p_type, p_amount
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE public.credit_accounts a
       SET balance = a.balance + p_amount, updated_at = clock_timestamp()
     WHERE a.org_id = p_org_id AND a.balance + p_amount >= 0
    RETURNING a.balance, a.updated_at INTO v_balance, v_at;
    IF NOT FOUND THEN
        IF p_amount < 0 OR EXISTS (SELECT 1 FROM public.credit_accounts a WHERE a.org_id = p_org_id) THEN
            RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'TD402';
        END IF;
        INSERT INTO public.credit_accounts AS a (org_id, balance, updated_at)
        VALUES (p_org_id, p_amount, clock_timestamp())
        ON CONFLICT (org_id) DO UPDATE SET balance = a.balance + excluded.balance,
                                           updated_at = excluded.updated_at
        RETURNING a.balance, a.updated_at INTO v_balance, v_at;
    END IF;
    INSERT INTO public.credit_transactions AS t
           (org_id, amount, type, balance_after, job_id, description, reference, created_at)
    VALUES (p_org_id, p_amount, p_type, v_balance, p_job_id, p_description, p_reference, v_at)
    RETURNING * INTO v_tx;
    RETURN v_tx;
END $$;

-- Refunds a job's deduction exactly once: adds back what the job was
-- charged and returns the refund row; returns NULL (a row of NULLs when
-- selected with *) when the job was never charged or is refunded already.
-- Safe under concurrency: the account row is locked before the check, and
-- every ledger write locks it first; the unique index is the backstop.
CREATE FUNCTION public.tenantd_credit_refund_job(
    p_org_id uuid, p_job_id uuid, p_description text DEFAULT NULL)
RETURNS public.credit_transactions
LANGUAGE plpgsql AS $$
DECLARE
    v_charged bigint;
BEGIN
    PERFORM 1 FROM public.credit_accounts a WHERE a.org_id = p_org_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM public.credit_transactions t
                WHERE t.job_id = p_job_id AND t.type = 'refund') THEN
        RETURN NULL;
    END IF;
    SELECT -t.amount INTO v_charged FROM public.credit_transactions t
     WHERE t.job_id = p_job_id AND t.type = 'deduction' AND t.org_id = p_org_id;
    IF v_charged IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN public.tenantd_credit_apply(p_org_id, v_charged, 'refund', p_job_id,
                                       coalesce(p_description, 'job refund'), NULL);
END $$;

-- ---- Idempotency-Key ------------------------------------------------------

-- One row per (org, scope, key): the first request's hash (method, target,
-- body) and, once done, its answer for replays. scope 'operator' keeps the
-- operator's keys apart from the org's own. Single-transaction users
-- (spend, jobs) write the row 'done' in the transaction of the effect; the
-- two-step API (src/idem/idem.h) commits an 'in_flight' claim with a lease
-- (locked_until) first, so a crashed request frees its key when the lease
-- lapses. Kept 24 h, then purged (tenantd_idem_purge).
CREATE TABLE public.idempotency_keys (
    org_id           uuid NOT NULL REFERENCES public.orgs (id) ON DELETE CASCADE,
    scope            text NOT NULL CHECK (scope IN ('org', 'operator')),
    key              text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_hash     text NOT NULL,
    status           text NOT NULL CHECK (status IN ('in_flight', 'done')),
    claim_id         uuid,
    response_status  integer,
    response_headers json,  -- [[name, value], ...], Content-Type included
    response_body    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    PRIMARY KEY (org_id, scope, key),
    CHECK (status = 'in_flight' OR response_status IS NOT NULL)
);
CREATE INDEX idempotency_keys_created_idx ON public.idempotency_keys (created_at);

-- Looks a key up before the effect. Outcomes:
--   'proceed'   run the request (two-step: o_claim_id names the new claim);
--   'replay'    done before with the same hash: answer o_status/o_headers/o_body;
--   'mismatch'  done before with another request: 422;
--   'in_flight' another request with this key is running: 409.
-- p_lease_s NULL: the caller finishes (tenantd_idem_finish) in this same
-- transaction, so nothing is written here; a transaction-scoped advisory
-- lock on the key makes a concurrent request see 'in_flight' instead of
-- waiting. p_lease_s > 0: two-step; an 'in_flight' row with a lease is
-- written (and must be committed before the effect runs).
-- A lapsed in-flight claim (its request died) is taken over.
CREATE FUNCTION public.tenantd_idem_begin(
    p_org_id uuid, p_scope text, p_key text, p_hash text, p_lease_s integer DEFAULT NULL,
    OUT o_outcome text, OUT o_status integer, OUT o_headers json, OUT o_body text,
    OUT o_claim_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    k public.idempotency_keys;
BEGIN
    IF NOT pg_try_advisory_xact_lock(
            hashtextextended(p_org_id::text || '/' || p_scope || '/' || p_key, 4)) THEN
        o_outcome := 'in_flight';
        RETURN;
    END IF;
    SELECT * INTO k FROM public.idempotency_keys i
     WHERE i.org_id = p_org_id AND i.scope = p_scope AND i.key = p_key;
    IF FOUND THEN
        IF k.status = 'done' THEN
            IF k.request_hash = p_hash THEN
                o_outcome := 'replay';
                o_status := k.response_status;
                o_headers := k.response_headers;
                o_body := k.response_body;
            ELSE
                o_outcome := 'mismatch';
            END IF;
            RETURN;
        ELSIF k.locked_until > clock_timestamp() THEN
            o_outcome := 'in_flight';
            RETURN;
        END IF;
    END IF;
    o_outcome := 'proceed';
    IF p_lease_s IS NOT NULL THEN
        o_claim_id := gen_random_uuid();
        INSERT INTO public.idempotency_keys AS i
               (org_id, scope, key, request_hash, status, claim_id, locked_until)
        VALUES (p_org_id, p_scope, p_key, p_hash, 'in_flight', o_claim_id,
                clock_timestamp() + make_interval(secs => p_lease_s))
        ON CONFLICT (org_id, scope, key) DO UPDATE
           SET request_hash = excluded.request_hash, status = 'in_flight',
               claim_id = excluded.claim_id, locked_until = excluded.locked_until,
               response_status = NULL, response_headers = NULL, response_body = NULL,
               created_at = now();
    END IF;
END $$;

-- Records a request's answer under its key. p_claim_id NULL: the
-- single-transaction form (same transaction as tenantd_idem_begin with
-- p_lease_s NULL): inserts the 'done' row. Otherwise completes that claim;
-- returns false when the claim is no longer this request's (lapsed and
-- taken over).
CREATE FUNCTION public.tenantd_idem_finish(
    p_org_id uuid, p_scope text, p_key text, p_hash text, p_status integer, p_headers json,
    p_body text, p_claim_id uuid DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF p_claim_id IS NULL THEN
        INSERT INTO public.idempotency_keys AS i
               (org_id, scope, key, request_hash, status, response_status, response_headers,
                response_body)
        VALUES (p_org_id, p_scope, p_key, p_hash, 'done', p_status, p_headers, p_body)
        ON CONFLICT (org_id, scope, key) DO UPDATE
           SET request_hash = excluded.request_hash, status = 'done', claim_id = NULL,
               locked_until = NULL, response_status = excluded.response_status,
               response_headers = excluded.response_headers,
               response_body = excluded.response_body, created_at = now();
        RETURN true;
    END IF;
    UPDATE public.idempotency_keys i
       SET status = 'done', locked_until = NULL, response_status = p_status,
           response_headers = p_headers, response_body = p_body
     WHERE i.org_id = p_org_id AND i.scope = p_scope AND i.key = p_key
       AND i.claim_id = p_claim_id AND i.status = 'in_flight';
    RETURN FOUND;
END $$;

-- Gives a two-step claim up (the request failed before any effect), so a
-- retry may run at once.
CREATE FUNCTION public.tenantd_idem_release(
    p_org_id uuid, p_scope text, p_key text, p_claim_id uuid)
RETURNS boolean
LANGUAGE sql AS $$
    WITH d AS (DELETE FROM public.idempotency_keys i
                WHERE i.org_id = p_org_id AND i.scope = p_scope AND i.key = p_key
                  AND i.claim_id = p_claim_id AND i.status = 'in_flight' RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;

-- Deletes keys older than 24 h (an in-flight one only once its lease has
-- lapsed), at most p_max per call; returns how many.
CREATE FUNCTION public.tenantd_idem_purge(p_max integer DEFAULT 10000)
RETURNS integer
LANGUAGE sql AS $$
    WITH old AS (SELECT i.org_id, i.scope, i.key FROM public.idempotency_keys i
                  WHERE i.created_at < now() - interval '24 hours'
                    AND (i.status = 'done' OR i.locked_until < now())
                  ORDER BY i.created_at LIMIT p_max),
         d AS (DELETE FROM public.idempotency_keys i USING old
                WHERE i.org_id = old.org_id AND i.scope = old.scope AND i.key = old.key
                RETURNING 1)
    SELECT count(*)::integer FROM d
$$;

-- ---- the routes' statements ---------------------------------------------

-- POST /v1/credits/spend as one statement: the key (when given), the spend
-- and the stored answer commit together, so a crash never leaves a spend
-- without its key or a key without its spend. Short of credits raises
-- TD402 and rolls everything back: the key stays unused, so a retry after
-- a top-up spends. o_outcome 'executed' (o_body is the new Transaction), or
-- a tenantd_idem_begin outcome other than 'proceed'.
CREATE FUNCTION public.tenantd_credit_spend(
    p_org_id uuid, p_amount bigint, p_description text, p_reference text,
    p_key text DEFAULT NULL, p_hash text DEFAULT NULL,
    OUT o_outcome text, OUT o_status integer, OUT o_headers json, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    v_tx public.credit_transactions;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT b.o_outcome, b.o_status, b.o_headers, b.o_body
          INTO o_outcome, o_status, o_headers, o_body
          FROM public.tenantd_idem_begin(p_org_id, 'org', p_key, p_hash) b;
        IF o_outcome <> 'proceed' THEN
            RETURN;
        END IF;
    END IF;
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'a spend is a positive amount' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_tx := public.tenantd_credit_apply(p_org_id, -p_amount, 'spend', NULL, p_description,
                                        p_reference);
    o_outcome := 'executed';
    o_status := 201;
    o_headers := '[["Content-Type","application/json"]]';
    o_body := public.tenantd_credit_tx_json(v_tx)::text;
    IF p_key IS NOT NULL THEN
        PERFORM public.tenantd_idem_finish(p_org_id, 'org', p_key, p_hash, o_status, o_headers,
                                           o_body);
    END IF;
END $$;

-- POST /v1/admin/orgs/{slug}/credits: a grant (amount > 0) or adjustment
-- (amount < 0) of the live org with that slug, keyed in the 'operator'
-- scope. o_outcome 'not_found' when no live org has the slug; an
-- adjustment below zero raises TD402 (the route answers 409).
CREATE FUNCTION public.tenantd_credit_admin(
    p_slug text, p_amount bigint, p_description text,
    p_key text DEFAULT NULL, p_hash text DEFAULT NULL,
    OUT o_outcome text, OUT o_status integer, OUT o_headers json, OUT o_body text)
LANGUAGE plpgsql AS $$
DECLARE
    v_org uuid;
    v_tx  public.credit_transactions;
BEGIN
    SELECT o.id INTO v_org FROM public.orgs o
     WHERE lower(o.slug) = lower(p_slug) AND o.status <> 'deleted';
    IF NOT FOUND THEN
        o_outcome := 'not_found';
        RETURN;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT b.o_outcome, b.o_status, b.o_headers, b.o_body
          INTO o_outcome, o_status, o_headers, o_body
          FROM public.tenantd_idem_begin(v_org, 'operator', p_key, p_hash) b;
        IF o_outcome <> 'proceed' THEN
            RETURN;
        END IF;
    END IF;
    v_tx := public.tenantd_credit_apply(v_org, p_amount,
                                        CASE WHEN p_amount > 0 THEN 'grant' ELSE 'adjustment' END,
                                        NULL, p_description, NULL);
    o_outcome := 'executed';
    o_status := 201;
    o_headers := '[["Content-Type","application/json"]]';
    o_body := public.tenantd_credit_tx_json(v_tx)::text;
    IF p_key IS NOT NULL THEN
        PERFORM public.tenantd_idem_finish(v_org, 'operator', p_key, p_hash, o_status, o_headers,
                                           o_body);
    END IF;
END $$;
