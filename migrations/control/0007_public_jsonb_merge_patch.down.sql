DROP FUNCTION IF EXISTS public.jsonb_merge_patch(jsonb, jsonb);
