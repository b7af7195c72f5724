-- Undoes 0014_job_event_when_subscribed: the trigger renders every ended
-- job and lets tenantd_event_emit find no subscription (0011's body).
CREATE OR REPLACE FUNCTION public.tenantd_event_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.type = 'webhook.deliver' AND NEW.payload ? 'event_id') THEN
        PERFORM public.tenantd_event_emit(NEW.org_id, 'job.' || NEW.status,
                                          public.tenantd_job_json(NEW));
    END IF;
    RETURN NULL;
END $$;
