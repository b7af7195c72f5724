/* STUB until the HTTP engineer's request/response helpers land; replace wholesale. */
#include "core/http.h"
void http_respond(struct request *req, int status, const char *content_type, const char *body, size_t len) { (void)req; (void)status; (void)content_type; (void)body; (void)len; }
