/*
 * Event webhooks: an org's subscriptions of a URL to events.
 *
 *   POST   /v1/webhooks          {url, events, credits_low_below?} -> 201, secret shown once
 *   GET    /v1/webhooks[/{id}]
 *   DELETE /v1/webhooks/{id}
 *
 * Events are raised by database triggers (control migration 0011) in the
 * transaction of the change, and each is delivered once per subscription as
 * a webhook.deliver job: signed with the subscription's secret, retried with
 * backoff, only to hosts TENANTD_WEBHOOK_ALLOW lets through (checked here at
 * subscription, and again by the worker), de-duplicated by receivers on the
 * X-Tenantd-Event header. Deliveries of events are not charged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "app/pagelist.h"
#include "job/internal.h"

static const char *const event_names[] = {
    "job.succeeded", "job.failed",          "credits.low", "user.created",
    "user.removed",  "invitation.accepted", NULL};

static const struct db_stmt create_stmt = {
    "webhook_create",
    "INSERT INTO public.webhook_subscriptions AS w (org_id, url, events, secret,"
    " credits_low_below) VALUES ($1::uuid, $2, $3::text[], $4, coalesce($5::bigint, 100))"
    " RETURNING public.tenantd_webhook_json(w)::text",
};

static const struct db_stmt list_stmt = {
    "webhook_list",
    SQL_ORG_PAGE("public.webhook_subscriptions", "w", "public.tenantd_webhook_json(w)", ""),
};

static const struct db_stmt get_stmt = {
    "webhook_get",
    "SELECT public.tenantd_webhook_json(w)::text FROM public.webhook_subscriptions w"
    " WHERE w.id = $1::uuid AND w.org_id = $2::uuid",
};

static const struct db_stmt delete_stmt = {
    "webhook_delete",
    "DELETE FROM public.webhook_subscriptions WHERE id = $1::uuid AND org_id = $2::uuid"
    " RETURNING 1",
};

struct create {
    struct request *req;
    char secret[80];
    const char *values[5];
};

static void secret_wipe(void *p)
{
    struct create *c = p;
    OPENSSL_cleanse(c->secret, sizeof c->secret);
}

static void created(struct db_result *r, void *ud)
{
    struct create *c = ud;
    struct request *req = c->req;
    if (db_failed(req, r, "webhook create"))
        return;
    json_t *w = json_loads(db_result_text(r, 0, 0) ? db_result_text(r, 0, 0) : "", 0, NULL);
    if (!json_is_object(w)) {
        json_decref(w);
        problem_respond(req, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    json_object_set_new(w, "secret", json_string(c->secret));
    http_respond_json(req, 201, w);
}

void job_webhook_create(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    json_t *body = body_object(req, false);
    if (!body)
        return;
    static const char *const fields[] = {"url", "events", "credits_low_below", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    struct create *c = arena_calloc(req->arena, sizeof *c);
    arena_cleanup(req->arena, secret_wipe, c);
    c->req = req;
    memcpy(c->secret, "whsec_", 6);
    if (token_random_b64url(32, c->secret + 6, sizeof c->secret - 6) < 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    /* The URL passes webhook.deliver's own check (form, scheme, allow list). */
    json_t *url = json_object_get(body, "url");
    if (!json_is_string(url)) {
        problem_add_error(&errors, "url", "is required: http(s)://host[:port]/path");
    } else {
        const struct job_type *wd = job_type_find("webhook.deliver");
        json_t *probe = json_pack("{s:O, s:s}", "url", url, "secret", c->secret);
        json_t *perr = NULL;
        if (wd)
            wd->validate(probe, &perr);
        size_t i;
        json_t *e;
        json_array_foreach(perr, i, e)
        {
            const char *f = json_string_value(json_object_get(e, "field"));
            if (f && strstr(f, "url"))
                problem_add_error(&errors, "url", json_string_value(json_object_get(e, "message")));
        }
        json_decref(perr);
        json_decref(probe);
    }
    json_t *events = json_object_get(body, "events");
    char *lit = NULL;
    if (!json_is_array(events) || json_array_size(events) < 1 || json_array_size(events) > 6) {
        problem_add_error(&errors, "events", "must be an array of 1 to 6 event names");
    } else {
        lit = arena_alloc(req->arena, 6 * 24 + 3);
        size_t used = (size_t)sprintf(lit, "{");
        size_t i;
        json_t *e;
        json_array_foreach(events, i, e)
        {
            const char *s = json_string_value(e);
            bool ok = false;
            for (const char *const *n = event_names; s && *n; n++)
                ok = ok || !strcmp(*n, s);
            if (!ok) {
                problem_add_error(&errors, "events",
                                  "must hold job.succeeded, job.failed, credits.low, "
                                  "user.created, user.removed or invitation.accepted");
                break;
            }
            used += (size_t)sprintf(lit + used, "%s\"%s\"", i ? "," : "", s);
        }
        sprintf(lit + used, "}");
    }
    const char *low = NULL;
    json_int_t below;
    if (body_int(body, "credits_low_below", false, 0, 1000000000000LL, NULL, &below, &errors) == 1)
        low = arena_printf(req->arena, "%lld", (long long)below);
    if (errors) {
        problem_respond_errors(req, "The webhook is not valid.", errors);
        return;
    }
    c->values[0] = a->org_id;
    c->values[1] = json_string_value(url);
    c->values[2] = lit;
    c->values[3] = c->secret;
    c->values[4] = low;
    db_query(req->ctx->db, a->schema, &create_stmt, 5, c->values, created, c);
}

static const struct job_rows rows = JOB_ROWS("webhook", &list_stmt, &get_stmt, &delete_stmt);

void job_webhook_list(struct request *req)
{
    job_rows_list(req, &rows);
}

void job_webhook_get(struct request *req)
{
    job_rows_get(req, &rows);
}

void job_webhook_delete(struct request *req)
{
    job_rows_delete(req, &rows);
}
