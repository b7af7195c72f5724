DROP FUNCTION IF EXISTS jsonb_merge_patch(jsonb, jsonb);
