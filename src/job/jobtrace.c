/* The trace headers of a job's calls out (see job/internal.h). */
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "core/trace.h"
#include "job/internal.h"

void job_trace_headers(struct job_run *run, char *out, size_t n)
{
    out[0] = '\0';
    const char *v[] = {run->id};
    PGresult *r = PQexecParams(run->conn,
                               "SELECT traceparent, tracestate FROM public.jobs WHERE id = $1::uuid",
                               1, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQgetisnull(r, 0, 0)) {
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            log_msg(LOG_WARN, "job %s: reading its trace context failed: %s", run->id,
                    PQresultErrorMessage(r));
        PQclear(r);
        return; /* enqueued before traces were kept, or by a statement without one */
    }
    char trace_id[TRACE_ID_HEX + 1], parent[TRACE_SPAN_HEX + 1], child[TRACEPARENT_LEN + 1];
    unsigned flags = 0;
    /* The column's CHECK holds the shape; parsed again all the same, since
     * it goes into a request head. */
    if (trace_parse(PQgetvalue(r, 0, 0), trace_id, parent, &flags)) {
        trace_child(trace_id, flags, child);
        int w = snprintf(out, n, "traceparent: %s\r\n", child);
        const char *state = PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1);
        bool printable = state && *state;
        for (const char *p = state; printable && *p; p++)
            printable = *p >= 0x20 && *p <= 0x7e;
        if (w > 0 && (size_t)w < n && printable)
            snprintf(out + w, n - (size_t)w, "tracestate: %s\r\n", state);
    }
    PQclear(r);
}
