/*
 * The mails of accounts_module: invitations, password resets and email
 * verifications, rendered from constant templates (plain text and HTML,
 * every value HTML-escaped there) into a request's arena. Apart from the
 * routes because it is content, not control flow; the mail goes out as an
 * email.send job (job/email.c).
 */
#include <string.h>

#include "auth/accounts_internal.h"
#include "core/arena.h"
#include "core/config.h"

/* The templates: %1$s is the organization, %2$s the link, %3$s the role
 * (invitations). In the HTML part every value is HTML-escaped. Each
 * plain-text part has its link on a line of its own. */
static const struct mail_template {
    const char *path; /* the frontend page, under TENANTD_PUBLIC_URL */
    const char *subject, *text, *html;
} templates[] = {
    [ACCT_MAIL_INVITATION] =
        {"/invitations/accept", "You are invited to join %1$s",
         "Hello,\n\nYou have been invited to join the organization %1$s as %3$s.\n\n"
         "Accept the invitation here (the link works once):\n\n%2$s\n\n"
         "If you did not expect this invitation, you can ignore this mail.\n",
         "<!doctype html><html><body><p>Hello,</p><p>You have been invited to join the "
         "organization <b>%1$s</b> as %3$s.</p><p><a href=\"%2$s\">Accept the invitation</a> "
         "(the link works once).</p><p>If you did not expect this invitation, you can ignore "
         "this mail.</p></body></html>"},
    [ACCT_MAIL_PASSWORD_RESET] =
        {"/password-reset", "Reset your password for %1$s",
         "Hello,\n\nSomeone asked to reset the password of your account in %1$s.\n\n"
         "Choose a new password here (the link works once, for a short time):\n\n%2$s\n\n"
         "If you did not ask for this, ignore this mail: your password stays as it is.\n",
         "<!doctype html><html><body><p>Hello,</p><p>Someone asked to reset the password of "
         "your account in <b>%1$s</b>.</p><p><a href=\"%2$s\">Choose a new password</a> (the "
         "link works once, for a short time).</p><p>If you did not ask for this, ignore this "
         "mail: your password stays as it is.</p></body></html>"},
    [ACCT_MAIL_VERIFY_EMAIL] =
        {"/verify-email", "Confirm your email address for %1$s",
         "Hello,\n\nPlease confirm that this is your email address for %1$s:\n\n%2$s\n\n"
         "If you did not ask for this, you can ignore this mail.\n",
         "<!doctype html><html><body><p>Hello,</p><p>Please confirm that this is your email "
         "address for <b>%1$s</b>:</p><p><a href=\"%2$s\">Confirm my email address</a></p>"
         "<p>If you did not ask for this, you can ignore this mail.</p></body></html>"},
};

static const char *html_escape(struct arena *a, const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += strchr("<>&\"'", *p) ? 6 : 1;
    char *out = arena_alloc(a, n + 1), *o = out;
    for (const char *p = s; *p; p++) {
        const char *e = *p == '<'    ? "&lt;"
                        : *p == '>'  ? "&gt;"
                        : *p == '&'  ? "&amp;"
                        : *p == '"'  ? "&quot;"
                        : *p == '\'' ? "&#39;"
                                     : NULL;
        if (e) {
            memcpy(o, e, strlen(e));
            o += strlen(e);
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

struct acct_mail acct_mail_render(struct arena *a, enum acct_mail_kind kind, const char *org,
                                  const char *token, const char *role)
{
    const struct mail_template *t = &templates[kind];
    const char *base = g_config->public_url ? g_config->public_url : "";
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    const char *link = arena_printf(a, "%.*s%s?token=%s", (int)blen, base, t->path, token);
    const char *r = role ? role : "";
    /* The formats are the constant templates above. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    struct acct_mail m = {
        .subject = arena_printf(a, t->subject, org, link, r),
        .text = arena_printf(a, t->text, org, link, r),
        .html =
            arena_printf(a, t->html, html_escape(a, org), html_escape(a, link), html_escape(a, r)),
    };
#pragma GCC diagnostic pop
    return m;
}
