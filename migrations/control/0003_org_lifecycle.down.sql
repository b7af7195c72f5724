DROP FUNCTION public.tenantd_delete_org(uuid);
DROP FUNCTION public.tenantd_create_org(text, text, text, text, text, bigint, text, bigint,
                                        text[], int[], text[], text[]);
