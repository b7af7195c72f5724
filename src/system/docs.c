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

struct html {
    char *p;
    size_t len, cap;
};

static void html_add(struct html *h, const char *s, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 16384;
        while (cap < h->len + n + 1)
            cap *= 2;
        char *p = realloc(h->p, cap);
        if (!p)
            abort(); /* start-up only: out of memory is fatal */
        h->p = p;
        h->cap = cap;
    }
    memcpy(h->p + h->len, s, n);
    h->len += n;
    h->p[h->len] = '\0';
}

static void html_raw(struct html *h, const char *s)
{
    html_add(h, s, strlen(s));
}

/* Text from the document, escaped for element content and quoted attributes. */
static void html_text(struct html *h, const char *s)
{
    if (!s)
        return;
    for (; *s; s++) {
        switch (*s) {
        case '&':
            html_raw(h, "&amp;");
            break;
        case '<':
            html_raw(h, "&lt;");
            break;
        case '>':
            html_raw(h, "&gt;");
            break;
        case '"':
            html_raw(h, "&quot;");
            break;
        case '\'':
            html_raw(h, "&#39;");
            break;
        default:
            html_add(h, s, 1);
        }
    }
}

/* An id attribute value: only [A-Za-z0-9_-], other bytes become '-'. */
static void html_id(struct html *h, const char *prefix, const char *s)
{
    html_raw(h, prefix);
    for (; s && *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        html_add(h, ok ? &c : "-", 1);
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

static void html_schema(struct html *h, const json_t *schema)
{
    if (!schema)
        return;
    const char *name = ref_name(schema, "schemas");
    if (name) {
        html_raw(h, "<a href=\"#");
        html_id(h, "schema-", name);
        html_raw(h, "\"><code>");
        html_text(h, name);
        html_raw(h, "</code></a>");
        return;
    }
    char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s)
        return;
    html_raw(h, "<pre>");
    html_text(h, s);
    html_raw(h, "</pre>");
    free(s);
}

static void html_content(struct html *h, const json_t *content)
{
    const char *type;
    const json_t *media;
    json_object_foreach((json_t *)content, type, media)
    {
        html_raw(h, "<div class=\"media\"><code>");
        html_text(h, type);
        html_raw(h, "</code> ");
        html_schema(h, json_object_get(media, "schema"));
        html_raw(h, "</div>");
    }
}

static void html_operation(struct html *h, const json_t *doc, const char *path, const char *method,
                           const json_t *op)
{
    const char *opid = jstr(op, "operationId");
    html_raw(h, "<section class=\"op\" id=\"");
    html_id(h, "op-", opid ? opid : path);
    html_raw(h, "\"><h3><span class=\"m m-");
    html_text(h, method);
    html_raw(h, "\">");
    for (const char *c = method; *c; c++) {
        char u = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        html_add(h, &u, 1);
    }
    html_raw(h, "</span> <code>");
    html_text(h, path);
    html_raw(h, "</code></h3>");
    if (jstr(op, "summary")) {
        html_raw(h, "<p class=\"summary\">");
        html_text(h, jstr(op, "summary"));
        html_raw(h, "</p>");
    }
    html_raw(h, "<p class=\"meta\">operationId <code>");
    html_text(h, opid ? opid : "(none)");
    html_raw(h, "</code> &middot; auth: ");
    const json_t *sec = json_object_get(op, "security");
    if (!sec)
        sec = json_object_get(doc, "security");
    if (!sec || json_array_size(sec) == 0) {
        html_raw(h, "none");
    } else {
        size_t i;
        const json_t *req;
        json_array_foreach((json_t *)sec, i, req)
        {
            const char *scheme;
            const json_t *scopes;
            if (i)
                html_raw(h, " or ");
            json_object_foreach((json_t *)req, scheme, scopes)
            {
                (void)scopes;
                html_raw(h, "<code>");
                html_text(h, scheme);
                html_raw(h, "</code>");
            }
        }
    }
    html_raw(h, "</p>");
    if (jstr(op, "description")) {
        html_raw(h, "<p>");
        html_text(h, jstr(op, "description"));
        html_raw(h, "</p>");
    }

    const json_t *params = json_object_get(op, "parameters");
    if (json_array_size(params) > 0) {
        html_raw(h, "<h4>Parameters</h4><table><tr><th>name</th><th>in</"
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
            html_raw(h, "<tr><td><code>");
            html_text(h, jstr(p, "name"));
            html_raw(h, "</code></td><td>");
            html_text(h, jstr(p, "in"));
            html_raw(h, "</td><td>");
            html_raw(h, json_is_true(json_object_get(p, "required")) ? "yes" : "no");
            html_raw(h, "</td><td>");
            html_schema(h, json_object_get(p, "schema"));
            html_raw(h, "</td><td>");
            html_text(h, jstr(p, "description"));
            html_raw(h, "</td></tr>");
        }
        html_raw(h, "</table>");
    }

    const json_t *body = json_object_get(op, "requestBody");
    if (body) {
        html_raw(h, "<h4>Request body");
        if (json_is_true(json_object_get(body, "required")))
            html_raw(h, " (required)");
        html_raw(h, "</h4>");
        if (jstr(body, "description")) {
            html_raw(h, "<p>");
            html_text(h, jstr(body, "description"));
            html_raw(h, "</p>");
        }
        html_content(h, json_object_get(body, "content"));
    }

    html_raw(h, "<h4>Responses</h4><table><tr><th>status</th><th>description</th>"
                "<th>body</th></tr>");
    const char *status;
    const json_t *resp;
    json_object_foreach(json_object_get(op, "responses"), status, resp)
    {
        const char *rname = ref_name(resp, "responses");
        if (rname)
            resp = json_object_get(json_object_get(json_object_get(doc, "components"), "responses"),
                                   rname);
        html_raw(h, "<tr><td><code>");
        html_text(h, status);
        html_raw(h, "</code></td><td>");
        html_text(h, jstr(resp, "description"));
        html_raw(h, "</td><td>");
        html_content(h, json_object_get(resp, "content"));
        html_raw(h, "</td></tr>");
    }
    html_raw(h, "</table></section>\n");
}

static const char *const path_item_methods[] = {"get",     "put",  "post",  "delete",
                                                "options", "head", "patch", "trace"};
#define NPATH_METHODS (sizeof path_item_methods / sizeof path_item_methods[0])

/* Renders the whole page from the document; returns a malloc'd string. */
char *docs_render(const json_t *doc, size_t *len)
{
    struct html h = {0};
    const json_t *info = json_object_get(doc, "info");
    const json_t *paths = json_object_get(doc, "paths");
    html_raw(&h, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width, "
                 "initial-scale=1\"><title>");
    html_text(&h, jstr(info, "title"));
    html_raw(&h, " API</title><style>"
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
    html_raw(&h, " API <small>version ");
    html_text(&h, jstr(info, "version"));
    html_raw(&h, "</small></h1>\n");
    if (jstr(info, "summary")) {
        html_raw(&h, "<p class=\"summary\">");
        html_text(&h, jstr(info, "summary"));
        html_raw(&h, "</p>");
    }
    if (jstr(info, "description")) {
        html_raw(&h, "<p>");
        html_text(&h, jstr(info, "description"));
        html_raw(&h, "</p>");
    }
    html_raw(&h, "<p>Machine-readable description: <a "
                 "href=\"/openapi.json\">/openapi.json</a> "
                 "(OpenAPI ");
    html_text(&h, jstr(doc, "openapi"));
    html_raw(&h, ").</p>\n<nav><h2>Operations</h2><ul>\n");

    const char *path;
    const json_t *item;
    json_object_foreach((json_t *)paths, path, item)
    {
        for (size_t k = 0; k < NPATH_METHODS; k++) {
            const json_t *op = json_object_get(item, path_item_methods[k]);
            if (!op)
                continue;
            const char *opid = jstr(op, "operationId");
            html_raw(&h, "<li><a href=\"#");
            html_id(&h, "op-", opid ? opid : path);
            html_raw(&h, "\"><span class=\"m m-");
            html_raw(&h, path_item_methods[k]);
            html_raw(&h, "\">");
            for (const char *c = path_item_methods[k]; *c; c++) {
                char u = (char)(*c - 32);
                html_add(&h, &u, 1);
            }
            html_raw(&h, "</span> <code>");
            html_text(&h, path);
            html_raw(&h, "</code></a> ");
            html_text(&h, jstr(op, "summary"));
            html_raw(&h, "</li>\n");
        }
    }
    html_raw(&h, "</ul></nav>\n<h2>Endpoints</h2>\n");
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
        html_raw(&h, "<h2>Authentication</h2>\n");
        const char *name;
        const json_t *scheme;
        json_object_foreach((json_t *)schemes, name, scheme)
        {
            html_raw(&h, "<p><code>");
            html_text(&h, name);
            html_raw(&h, "</code>: ");
            html_text(&h, jstr(scheme, "type"));
            if (jstr(scheme, "scheme")) {
                html_raw(&h, " ");
                html_text(&h, jstr(scheme, "scheme"));
            }
            if (jstr(scheme, "description")) {
                html_raw(&h, ". ");
                html_text(&h, jstr(scheme, "description"));
            }
            html_raw(&h, "</p>\n");
        }
    }
    const json_t *schemas = json_object_get(components, "schemas");
    if (json_object_size(schemas) > 0) {
        html_raw(&h, "<h2>Schemas</h2>\n");
        const char *name;
        const json_t *schema;
        json_object_foreach((json_t *)schemas, name, schema)
        {
            html_raw(&h, "<section id=\"");
            html_id(&h, "schema-", name);
            html_raw(&h, "\"><h3><code>");
            html_text(&h, name);
            html_raw(&h, "</code></h3>");
            if (jstr(schema, "description")) {
                html_raw(&h, "<p>");
                html_text(&h, jstr(schema, "description"));
                html_raw(&h, "</p>");
            }
            char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            if (s) {
                html_raw(&h, "<pre>");
                html_text(&h, s);
                html_raw(&h, "</pre>");
                free(s);
            }
            html_raw(&h, "</section>\n");
        }
    }
    html_raw(&h, "</body></html>\n");
    *len = h.len;
    return h.p;
}
