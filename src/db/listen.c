/* Waiting on a LISTEN connection: see listen.h for why the queue comes
 * before the socket. */
#include "db/listen.h"

#include <errno.h>
#include <poll.h>

static int drain(PGconn *c, void (*fn)(const PGnotify *n, void *ud), void *ud)
{
    int flags = 0;
    PGnotify *n;
    while ((n = PQnotifies(c))) {
        if (fn)
            fn(n, ud);
        PQfreemem(n);
        flags = DB_LISTEN_NOTIFIED;
    }
    return flags;
}

int db_listen_wait(PGconn *c, int wake_fd, int timeout_ms, void (*fn)(const PGnotify *n, void *ud),
                   void *ud)
{
    struct pollfd p[2] = {{.fd = PQsocket(c), .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};
    if (p[0].fd < 0)
        return DB_LISTEN_LOST;
    int queued = drain(c, fn, ud);
    if (queued)
        return queued;
    if (poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms) < 0)
        return errno == EINTR ? 0 : DB_LISTEN_LOST;
    int flags = 0;
    if (wake_fd >= 0 && (p[1].revents & POLLIN))
        flags |= DB_LISTEN_WOKEN;
    if (p[0].revents) {
        if (!PQconsumeInput(c))
            return flags | DB_LISTEN_LOST;
        flags |= drain(c, fn, ud);
    }
    if (PQstatus(c) != CONNECTION_OK)
        flags |= DB_LISTEN_LOST;
    return flags;
}
