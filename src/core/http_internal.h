#ifndef TENANTD_CORE_HTTP_INTERNAL_H
#define TENANTD_CORE_HTTP_INTERNAL_H
/*
 * Private between core/http.c (which builds responses) and the server
 * (core/respond.c writes them, core/http1.c owns connections). Nothing
 * outside core/ includes this.
 */
#include <stdbool.h>
#include <stddef.h>

#include "core/http.h"

/* True when the response to req must carry "Connection: close": the client
 * asked for it, an error ends the connection, the server is draining, or
 * the client is already gone. */
bool server_must_close(const struct request *req);

/* True when the client spoke HTTP/1.0 and asked to keep the connection
 * (the response then says "Connection: keep-alive"). */
bool server_http10_keep_alive(const struct request *req);

/*
 * Hands a serialized response to the connection: the head (head, head_len)
 * and, when body is not NULL, the body after it, both valid until
 * req->arena is freed (neither is copied). The server writes them, then
 * logs the access line, counts metrics with `status`, and frees req->arena.
 * If the client is gone it does the same without writing.
 */
void server_send(struct request *req, int status, char *head, size_t head_len, char *body,
                 size_t body_len);

/* Streamed answers (http_stream_*): prepare decides the framing before the
 * head is built (true: chunked; false: HTTP/1.0, the connection is closed
 * after the body); head hands over the head, sent with the first chunk;
 * end sends the last chunk (or, `ok` false, closes without it) and
 * finishes the request like server_send. */
bool server_stream_prepare(struct request *req);
void server_stream_head(struct request *req, char *head, size_t len, bool chunked);
void server_stream_end(struct request *req, int status, bool ok);

#endif
