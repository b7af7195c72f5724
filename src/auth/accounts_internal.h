/* Internal to accounts_module (src/auth/accounts.c, accountmail.c,
 * resetverify.c; audit.c adds its routes): what the routes that mail links
 * share. */
#ifndef TENANTD_AUTH_ACCOUNTS_INTERNAL_H
#define TENANTD_AUTH_ACCOUNTS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/password.h"
#include "core/http.h"
#include "db/db.h"

/* ---- accountmail.c ---- */

enum acct_mail_kind { ACCT_MAIL_INVITATION, ACCT_MAIL_PASSWORD_RESET, ACCT_MAIL_VERIFY_EMAIL };

struct acct_mail {
    const char *subject, *text, *html;
};

/* The mail of `kind` for org (its slug) and token (role: invitations
 * only, else NULL), into the arena. */
struct acct_mail acct_mail_render(struct arena *a, enum acct_mail_kind kind, const char *org,
                                  const char *token, const char *role);

/* ---- accounts.c: the link routes' helpers ---- */

/* A new link token and its hash. False after answering 500. */
bool acct_link_token_new(struct request *req, char **token, char **hash);
/* 400 token_invalid for a token function's status (used, expired, ...). */
void acct_respond_token_invalid(struct request *req, const char *status);
/* A string field of body (core/body.h's body_string, any length) and its
 * length in bytes: NULL when absent (an error when required), an error when
 * not a string or holding a NUL. */
const char *acct_str_field(json_t *body, const char *name, bool required, json_t **errors,
                           size_t *len);
const char *acct_lower_dup(struct arena *a, const char *s);
/* The per-client budget of logins (shared by all instances) also covers
 * these unauthenticated routes (each costs an argon2 hash or a mail): go
 * runs when it allows, else 429. */
void acct_client_budget(struct request *req, void (*go)(struct request *req, void *ud), void *ud);
/* The common gate of the routes that take a link's token: the fields'
 * errors (422), then the token's shape (400 token_invalid, no query). False
 * when answered; the caller then asks acct_client_budget. */
bool acct_link_request_ok(struct request *req, json_t *errors, const char *token, size_t tlen);
/* stmt on the caller's org's pool (503 when there is none). */
void acct_org_query(struct request *req, const struct db_stmt *stmt, int n,
                    const char *const *values, db_cb cb, void *ud);
const char *acct_ttl_text(struct request *req, int64_t s);
/* Starts hashing pw (password_hash_async), or answers (503 busy, 500). */
void acct_hash_start(struct request *req, const char *pw, size_t len, password_hash_cb cb,
                     void *ud);
/* A password_hash_cb's status: false when it is a hash to store, true
 * after answering (503 busy for a full or stopping pool, else 500). */
bool acct_hash_failed(struct request *req, int status, const char *phc);

/* ---- resetverify.c: routes of password reset and email verification ---- */

void acct_reset_request(struct request *req);
void acct_reset_confirm(struct request *req);
void acct_verify_request(struct request *req);
void acct_verify_confirm(struct request *req);

#endif
