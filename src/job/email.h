#ifndef TENANTD_JOB_EMAIL_H
#define TENANTD_JOB_EMAIL_H
/*
 * email.send: the system job that sends one mail of public.mail_outbox
 * (queued by public.tenantd_mail_enqueue, never by POST /v1/jobs; cost 0).
 * Over SMTP with libcurl when TENANTD_SMTP_URL is set, else written as a
 * file under TENANTD_MAIL_DIR (development). The outbox row (which holds
 * the link, a secret) is deleted once the mail is out. Failures to reach
 * the server retry with the job's backoff.
 */
#include "job/internal.h"

int64_t email_cost(void);
/* Refuses every payload: only the server queues mails. */
void email_validate(json_t *payload, json_t **errors);
enum job_outcome email_run(struct job_run *run);
/* The folder mails go to without SMTP (TENANTD_MAIL_DIR, or in development
 * mode <TMPDIR>/tenantd-mail); NULL when TENANTD_SMTP_URL is set, or
 * outside development mode without TENANTD_MAIL_DIR (then mails wait,
 * retried, for a server). */
const char *email_dir(void);

#endif
