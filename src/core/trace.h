#ifndef TENANTD_CORE_TRACE_H
#define TENANTD_CORE_TRACE_H
#include <stdbool.h>

#include "core/http.h"

/*
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) for requests.
 *
 * A request with one valid `traceparent` header continues the caller's
 * trace: same trace id, and this server's span is a child of the caller's
 * (a new span id). A missing, repeated or malformed one (wrong length or
 * separators, upper-case or non-hex digits, version ff, an all-zero trace
 * or parent id, a version-00 header with anything after the flags) is
 * ignored and a new trace starts, as the specification asks. `tracestate`
 * is kept only beside a valid traceparent, and only when it is one header
 * of at most 512 printable characters.
 *
 * The server's span is answered as `traceresponse` (Trace Context Level 2),
 * logged as trace_id on the access line, and handed to work the request
 * starts (webhook deliveries) so their calls out continue the trace.
 */

#define TRACE_ID_HEX 32
#define TRACE_SPAN_HEX 16
#define TRACEPARENT_LEN 55 /* "00-" trace "-" span "-" flags */

struct trace {
    char trace_id[TRACE_ID_HEX + 1];
    char span_id[TRACE_SPAN_HEX + 1];   /* this server's span */
    char parent_id[TRACE_SPAN_HEX + 1]; /* the caller's span; "" for a new trace */
    unsigned flags;                     /* trace-flags: bit 0 sampled */
    const char *tracestate;             /* the caller's, or NULL */
    char traceparent[TRACEPARENT_LEN + 1]; /* this server's span as a traceparent */
};

/*
 * Parses a traceparent value strictly. On success fills trace_id, parent_id
 * (the header's parent-id) and flags and returns true; false for anything
 * the specification says to ignore.
 */
bool trace_parse(const char *value, char trace_id[TRACE_ID_HEX + 1],
                 char parent_id[TRACE_SPAN_HEX + 1], unsigned *flags);

/* The request's trace, made on first use from its headers (in the arena). */
const struct trace *trace_of(struct request *req);

/* A child span of t for a call out (a webhook delivery): the traceparent
 * value into out. */
void trace_child(const char *trace_id, unsigned flags, char out[TRACEPARENT_LEN + 1]);

#endif
