#ifndef TENANTD_DB_LISTEN_H
#define TENANTD_DB_LISTEN_H

#include <libpq-fe.h>

/* Waiting on a LISTEN connection (blocking; for the listener threads).
 *
 * libpq queues a notification that arrives while the connection runs any
 * other statement (PQexec reads it off the socket with the statement's
 * answer). It then sits in libpq's queue, the socket stays quiet, and a
 * poll on the socket alone would not see it until the next notification:
 * a job enqueued at that moment waited for the next NOTIFY. So the queue is
 * looked at before the socket. */

enum {
    DB_LISTEN_NOTIFIED = 1, /* fn was called at least once */
    DB_LISTEN_WOKEN = 2,    /* wake_fd is readable (the caller reads it) */
    DB_LISTEN_LOST = 4,     /* the connection is gone: reconnect */
};

/* Calls fn (may be NULL) for each notification already queued or arriving
 * within timeout_ms (-1: no limit), and returns a mix of the flags above;
 * 0 when the time ran out or what arrived was no notification (call again).
 * wake_fd < 0: none. */
int db_listen_wait(PGconn *c, int wake_fd, int timeout_ms, void (*fn)(const PGnotify *n, void *ud),
                   void *ud);

#endif
