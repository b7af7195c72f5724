-- tenantd: compatible
-- job.succeeded / job.failed events: look for a subscription before building
-- the job's JSON. The trigger runs on every job that ends; most orgs have no
-- webhook subscription, and rendering the job (tenantd_job_json) for nobody
-- was a sizeable part of the database's work per job on the worker API's
-- path (an experiment: 1.29 -> 1.06 CPU ms per job). Same events as before;
-- an older binary is unaffected (compatible).
CREATE OR REPLACE FUNCTION public.tenantd_event_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.type = 'webhook.deliver' AND NEW.payload ? 'event_id')
       AND EXISTS (SELECT 1 FROM public.webhook_subscriptions x
                    WHERE x.org_id = NEW.org_id AND ('job.' || NEW.status) = ANY (x.events)) THEN
        PERFORM public.tenantd_event_emit(NEW.org_id, 'job.' || NEW.status,
                                          public.tenantd_job_json(NEW));
    END IF;
    RETURN NULL;
END $$;
