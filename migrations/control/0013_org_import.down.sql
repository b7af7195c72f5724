DROP FUNCTION public.tenantd_import_org(text, text[], int[], text[], text[], text, text, text, text);

-- As 0011 left them.
CREATE OR REPLACE FUNCTION public.tenantd_ledger_job_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.job_id IS NOT NULL THEN
        -- A job's first deduction precedes its row: run 1.
        NEW.job_run := coalesce((SELECT j.runs FROM public.jobs j WHERE j.id = NEW.job_id), 1);
    END IF;
    RETURN NEW;
END $$;
ALTER TABLE public.credit_transactions ALTER COLUMN job_run SET DEFAULT 1;
