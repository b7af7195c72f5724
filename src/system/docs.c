/*
 * The /docs page: a plain HTML rendering of the OpenAPI document (paths,
 * operations, parameters, bodies, answers, schemas), built once at start-up
 * so a browser needs no script and no third-party asset.
 */
#include "system/docs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/strbuf.h"

/* Text from the document, escaped for element content and quoted attributes. */
static void html_text(struct strbuf *h, const char *s)
{
    if (!s)
        return;
    for (; *s; s++) {
        switch (*s) {
        case '&':
            sb_puts(h, "&amp;");
            break;
        case '<':
            sb_puts(h, "&lt;");
            break;
        case '>':
            sb_puts(h, "&gt;");
            break;
        case '"':
            sb_puts(h, "&quot;");
            break;
        case '\'':
            sb_puts(h, "&#39;");
            break;
        default:
            sb_put(h, s, 1);
        }
    }
}

/* An id attribute value: only [A-Za-z0-9_-], other bytes become '-'. */
static void html_id(struct strbuf *h, const char *prefix, const char *s)
{
    sb_puts(h, prefix);
    for (; s && *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        sb_put(h, ok ? &c : "-", 1);
    }
}

static const char *jstr(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* "#/components/<kind>/<Name>" -> Name, else NULL. */
static const char *ref_name(const json_t *o, const char *kind)
{
    const char *ref = jstr(o, "$ref");
    if (!ref)
        return NULL;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "#/components/%s/", kind);
    size_t n = strlen(prefix);
    return strncmp(ref, prefix, n) == 0 ? ref + n : NULL;
}

static void html_schema(struct strbuf *h, const json_t *schema)
{
    if (!schema)
        return;
    const char *name = ref_name(schema, "schemas");
    if (name) {
        sb_puts(h, "<a href=\"#");
        html_id(h, "schema-", name);
        sb_puts(h, "\"><code>");
        html_text(h, name);
        sb_puts(h, "</code></a>");
        return;
    }
    char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s)
        return;
    sb_puts(h, "<pre>");
    html_text(h, s);
    sb_puts(h, "</pre>");
    free(s);
}

static void html_content(struct strbuf *h, const json_t *content)
{
    const char *type;
    const json_t *media;
    json_object_foreach((json_t *)content, type, media)
    {
        sb_puts(h, "<div class=\"media\"><code>");
        html_text(h, type);
        sb_puts(h, "</code> ");
        html_schema(h, json_object_get(media, "schema"));
        sb_puts(h, "</div>");
    }
}

static void html_operation(struct strbuf *h, const json_t *doc, const char *path,
                           const char *method, const json_t *op)
{
    const char *opid = jstr(op, "operationId");
    sb_puts(h, "<section class=\"op\" id=\"");
    html_id(h, "op-", opid ? opid : path);
    sb_puts(h, "\"><h3><span class=\"m m-");
    html_text(h, method);
    sb_puts(h, "\">");
    for (const char *c = method; *c; c++) {
        char u = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        sb_put(h, &u, 1);
    }
    sb_puts(h, "</span> <code>");
    html_text(h, path);
    sb_puts(h, "</code></h3>");
    if (jstr(op, "summary")) {
        sb_puts(h, "<p class=\"summary\">");
        html_text(h, jstr(op, "summary"));
        sb_puts(h, "</p>");
    }
    sb_puts(h, "<p class=\"meta\">operationId <code>");
    html_text(h, opid ? opid : "(none)");
    sb_puts(h, "</code> &middot; auth: ");
    const json_t *sec = json_object_get(op, "security");
    if (!sec)
        sec = json_object_get(doc, "security");
    if (!sec || json_array_size(sec) == 0) {
        sb_puts(h, "none");
    } else {
        size_t i;
        const json_t *req;
        json_array_foreach((json_t *)sec, i, req)
        {
            const char *scheme;
            const json_t *scopes;
            if (i)
                sb_puts(h, " or ");
            json_object_foreach((json_t *)req, scheme, scopes)
            {
                (void)scopes;
                sb_puts(h, "<code>");
                html_text(h, scheme);
                sb_puts(h, "</code>");
            }
        }
    }
    sb_puts(h, "</p>");
    if (jstr(op, "description")) {
        sb_puts(h, "<p>");
        html_text(h, jstr(op, "description"));
        sb_puts(h, "</p>");
    }

    const json_t *params = json_object_get(op, "parameters");
    if (json_array_size(params) > 0) {
        sb_puts(h, "<h4>Parameters</h4><table><tr><th>name</th><th>in</"
                   "th><th>required</th>"
                   "<th>schema</th><th>description</th></tr>");
        size_t i;
        const json_t *p;
        json_array_foreach((json_t *)params, i, p)
        {
            const char *pname = ref_name(p, "parameters");
            if (pname)
                p = json_object_get(
                    json_object_get(json_object_get(doc, "components"), "parameters"), pname);
            sb_puts(h, "<tr><td><code>");
            html_text(h, jstr(p, "name"));
            sb_puts(h, "</code></td><td>");
            html_text(h, jstr(p, "in"));
            sb_puts(h, "</td><td>");
            sb_puts(h, json_is_true(json_object_get(p, "required")) ? "yes" : "no");
            sb_puts(h, "</td><td>");
            html_schema(h, json_object_get(p, "schema"));
            sb_puts(h, "</td><td>");
            html_text(h, jstr(p, "description"));
            sb_puts(h, "</td></tr>");
        }
        sb_puts(h, "</table>");
    }

    const json_t *body = json_object_get(op, "requestBody");
    if (body) {
        sb_puts(h, "<h4>Request body");
        if (json_is_true(json_object_get(body, "required")))
            sb_puts(h, " (required)");
        sb_puts(h, "</h4>");
        if (jstr(body, "description")) {
            sb_puts(h, "<p>");
            html_text(h, jstr(body, "description"));
            sb_puts(h, "</p>");
        }
        html_content(h, json_object_get(body, "content"));
    }

    sb_puts(h, "<h4>Responses</h4><table><tr><th>status</th><th>description</th>"
               "<th>body</th></tr>");
    const char *status;
    const json_t *resp;
    json_object_foreach(json_object_get(op, "responses"), status, resp)
    {
        const char *rname = ref_name(resp, "responses");
        if (rname)
            resp = json_object_get(json_object_get(json_object_get(doc, "components"), "responses"),
                                   rname);
        sb_puts(h, "<tr><td><code>");
        html_text(h, status);
        sb_puts(h, "</code></td><td>");
        html_text(h, jstr(resp, "description"));
        sb_puts(h, "</td><td>");
        html_content(h, json_object_get(resp, "content"));
        sb_puts(h, "</td></tr>");
    }
    sb_puts(h, "</table></section>\n");
}

static const char *const path_item_methods[] = {"get",     "put",  "post",  "delete",
                                                "options", "head", "patch", "trace"};
#define NPATH_METHODS (sizeof path_item_methods / sizeof path_item_methods[0])

/* Renders the whole page from the document; returns a malloc'd string. */
char *docs_render(const json_t *doc, size_t *len)
{
    struct strbuf h = {0};
    const json_t *info = json_object_get(doc, "info");
    const json_t *paths = json_object_get(doc, "paths");
    sb_puts(&h, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, "
                "initial-scale=1\"><title>");
    html_text(&h, jstr(info, "title"));
    sb_puts(&h, " API</title><style>"
                "body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;"
                "padding:0 1em;color:#222}"
                "code,pre{font-family:ui-monospace,monospace;font-size:90%}"
                "pre{background:#f6f6f6;padding:.5em;overflow:auto;margin:.2em 0}"
                "table{border-collapse:collapse;width:100%;margin:.5em 0}"
                "td,th{border:1px solid #ddd;padding:.3em .5em;text-align:left;"
                "vertical-align:top}"
                ".op{border-top:2px solid #eee;padding-top:.5em;margin-top:1.5em}"
                ".m{display:inline-block;min-width:4.5em;color:#fff;border-radius:3px;"
                "padding:0 .4em;text-align:center;background:#555}"
                ".m-get{background:#2a7ae2}.m-post{background:#2e8b57}"
                ".m-put,.m-patch{background:#c77c02}.m-delete{background:#c0392b}"
                ".meta{color:#666;font-size:90%}.summary{font-weight:600}"
                "nav li{list-style:none}"
                "</style></head><body>\n<h1>");
    html_text(&h, jstr(info, "title"));
    sb_puts(&h, " API <small>version ");
    html_text(&h, jstr(info, "version"));
    sb_puts(&h, "</small></h1>\n");
    if (jstr(info, "summary")) {
        sb_puts(&h, "<p class=\"summary\">");
        html_text(&h, jstr(info, "summary"));
        sb_puts(&h, "</p>");
    }
    if (jstr(info, "description")) {
        sb_puts(&h, "<p>");
        html_text(&h, jstr(info, "description"));
        sb_puts(&h, "</p>");
    }
    sb_puts(&h, "<p>Machine-readable description: <a "
                "href=\"/openapi.json\">/openapi.json</a> "
                "(OpenAPI ");
    html_text(&h, jstr(doc, "openapi"));
    sb_puts(&h, ").</p>\n<nav><h2>Operations</h2><ul>\n");

    const char *path;
    const json_t *item;
    json_object_foreach((json_t *)paths, path, item)
    {
        for (size_t k = 0; k < NPATH_METHODS; k++) {
            const json_t *op = json_object_get(item, path_item_methods[k]);
            if (!op)
                continue;
            const char *opid = jstr(op, "operationId");
            sb_puts(&h, "<li><a href=\"#");
            html_id(&h, "op-", opid ? opid : path);
            sb_puts(&h, "\"><span class=\"m m-");
            sb_puts(&h, path_item_methods[k]);
            sb_puts(&h, "\">");
            for (const char *c = path_item_methods[k]; *c; c++) {
                char u = (char)(*c - 32);
                sb_put(&h, &u, 1);
            }
            sb_puts(&h, "</span> <code>");
            html_text(&h, path);
            sb_puts(&h, "</code></a> ");
            html_text(&h, jstr(op, "summary"));
            sb_puts(&h, "</li>\n");
        }
    }
    sb_puts(&h, "</ul></nav>\n<h2>Endpoints</h2>\n");
    json_object_foreach((json_t *)paths, path, item)
    {
        for (size_t k = 0; k < NPATH_METHODS; k++) {
            const json_t *op = json_object_get(item, path_item_methods[k]);
            if (op)
                html_operation(&h, doc, path, path_item_methods[k], op);
        }
    }

    const json_t *components = json_object_get(doc, "components");
    const json_t *schemes = json_object_get(components, "securitySchemes");
    if (json_object_size(schemes) > 0) {
        sb_puts(&h, "<h2>Authentication</h2>\n");
        const char *name;
        const json_t *scheme;
        json_object_foreach((json_t *)schemes, name, scheme)
        {
            sb_puts(&h, "<p><code>");
            html_text(&h, name);
            sb_puts(&h, "</code>: ");
            html_text(&h, jstr(scheme, "type"));
            if (jstr(scheme, "scheme")) {
                sb_puts(&h, " ");
                html_text(&h, jstr(scheme, "scheme"));
            }
            if (jstr(scheme, "description")) {
                sb_puts(&h, ". ");
                html_text(&h, jstr(scheme, "description"));
            }
            sb_puts(&h, "</p>\n");
        }
    }
    const json_t *schemas = json_object_get(components, "schemas");
    if (json_object_size(schemas) > 0) {
        sb_puts(&h, "<h2>Schemas</h2>\n");
        const char *name;
        const json_t *schema;
        json_object_foreach((json_t *)schemas, name, schema)
        {
            sb_puts(&h, "<section id=\"");
            html_id(&h, "schema-", name);
            sb_puts(&h, "\"><h3><code>");
            html_text(&h, name);
            sb_puts(&h, "</code></h3>");
            if (jstr(schema, "description")) {
                sb_puts(&h, "<p>");
                html_text(&h, jstr(schema, "description"));
                sb_puts(&h, "</p>");
            }
            char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            if (s) {
                sb_puts(&h, "<pre>");
                html_text(&h, s);
                sb_puts(&h, "</pre>");
                free(s);
            }
            sb_puts(&h, "</section>\n");
        }
    }
    sb_puts(&h, "</body></html>\n");
    *len = h.len;
    return h.s;
}
