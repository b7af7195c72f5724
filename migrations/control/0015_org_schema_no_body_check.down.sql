-- Undoes 0015_org_schema_no_body_check: org schemas are created with the
-- function-body check on again.
ALTER FUNCTION public.tenantd_create_org(text, text, text, text, text, bigint, text, bigint,
                                         text[], int[], text[], text[])
    RESET check_function_bodies;
ALTER FUNCTION public.tenantd_import_org(text, text[], int[], text[], text[], text, text, text,
                                         text)
    RESET check_function_bodies;
