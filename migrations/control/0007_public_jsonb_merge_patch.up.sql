-- RFC 7396 JSON merge patch in public, called schema-qualified: the pool runs
-- tenant statements with the org's schema named in their text and never sets
-- search_path, so PATCH needs a function that resolves without it. Same
-- semantics as the per-org copy of tenant migration 0002 (which stays, for
-- the migration runner and older binaries):
--
--   a patch that is not an object replaces the target;
--   else the target (taken as {} when it is not an object) gets every member
--   of the patch: null removes the key, an object is merged recursively into
--   the target's value, anything else (arrays, scalars) replaces it.
CREATE FUNCTION public.jsonb_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN patch IS NULL THEN target
        WHEN pg_catalog.jsonb_typeof(patch) <> 'object' THEN patch
        ELSE (
            SELECT coalesce(pg_catalog.jsonb_object_agg(key,
                       CASE WHEN p.value IS NULL THEN t.value
                            ELSE public.jsonb_merge_patch(t.value, p.value) END),
                       '{}'::jsonb)
            FROM pg_catalog.jsonb_each(CASE WHEN pg_catalog.jsonb_typeof(target) = 'object'
                                            THEN target ELSE '{}'::jsonb END) t
            FULL JOIN pg_catalog.jsonb_each(patch) p USING (key)
            WHERE p.value IS NULL OR pg_catalog.jsonb_typeof(p.value) <> 'null')
    END
$$;
