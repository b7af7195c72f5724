-- RFC 7396 JSON merge patch as a SQL function, so that PATCH on a record is
-- one UPDATE (one round trip) instead of read, merge in C, write.
--
--   a patch that is not an object replaces the target;
--   else the target (taken as {} when it is not an object) gets every member
--   of the patch: null removes the key, an object is merged recursively into
--   the target's value, anything else (arrays, scalars) replaces it.
--
-- It lives in each org's schema (a tenant migration) rather than in public
-- so that it ships with the records table it serves and needs no control
-- migration slot. The recursive call is unqualified on purpose: it runs with
-- the org's schema first on search_path (the pool binds connections so, and
-- the migration runner too), which names this very function.
CREATE FUNCTION jsonb_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN patch IS NULL THEN target
        WHEN jsonb_typeof(patch) <> 'object' THEN patch
        ELSE (
            SELECT coalesce(jsonb_object_agg(key,
                       CASE WHEN p.value IS NULL THEN t.value
                            ELSE jsonb_merge_patch(t.value, p.value) END),
                       '{}'::jsonb)
            FROM jsonb_each(CASE WHEN jsonb_typeof(target) = 'object' THEN target
                                 ELSE '{}'::jsonb END) t
            FULL JOIN jsonb_each(patch) p USING (key)
            WHERE p.value IS NULL OR jsonb_typeof(p.value) <> 'null')
    END
$$;
