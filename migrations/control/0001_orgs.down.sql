DROP TABLE public.orgs;
