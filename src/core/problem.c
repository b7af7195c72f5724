#include "core/problem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    int status;
    const char *code, *title;
} problems[] = {
#define PROBLEM_ROW(name, status, code, title) {status, code, title},
    PROBLEM_MAP(PROBLEM_ROW)
#undef PROBLEM_ROW
};

int problem_status(enum problem p)
{
    return problems[p].status;
}

const char *problem_code(enum problem p)
{
    return problems[p].code;
}

const char *problem_title(enum problem p)
{
    return problems[p].title;
}

json_t *problem_body(enum problem p, const char *detail, const char *request_id, json_t *errors)
{
    char type[128];
    snprintf(type, sizeof type, "https://tenantd.dev/problems/%s", problems[p].code);
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "title", json_string(problems[p].title));
    json_object_set_new(o, "status", json_integer(problems[p].status));
    json_object_set_new(o, "detail", json_string(detail ? detail : problems[p].title));
    json_object_set_new(o, "code", json_string(problems[p].code));
    if (request_id)
        json_object_set_new(o, "request_id", json_string(request_id));
    if (errors)
        json_object_set_new(o, "errors", errors);
    return o;
}

static void respond(struct request *req, enum problem p, const char *detail, json_t *errors)
{
    json_t *body = problem_body(p, detail, req->request_id, errors);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        abort();
    http_respond(req, problems[p].status, "application/problem+json", text, strlen(text));
    free(text);
}

void problem_respond(struct request *req, enum problem p, const char *detail)
{
    respond(req, p, detail, NULL);
}

void problem_respond_errors(struct request *req, const char *detail, json_t *errors)
{
    respond(req, PROBLEM_VALIDATION_FAILED, detail ? detail : "Some fields are not valid.",
            errors ? errors : json_array());
}

void problem_add_error(json_t **errors, const char *field, const char *message)
{
    if (!*errors)
        *errors = json_array();
    json_t *e = json_object();
    json_object_set_new(e, "field", json_string(field));
    json_object_set_new(e, "message", json_string(message));
    json_array_append_new(*errors, e);
}
