#include "core/proxy.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/arena.h"
#include "core/list.h"

#define MAX_PROXIES 64

struct net {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int bits;
};

static struct net nets[MAX_PROXIES];
static int nnets;

struct ip {
    int family;
    unsigned char addr[16];
};

/* An address as written in a header or the configuration: IPv4, IPv6, or
 * either with a port ("1.2.3.4:80", "[::1]:80"). */
static bool ip_parse(const char *s, size_t n, struct ip *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *p = buf;
    if (*p == '[') {
        char *close = strchr(p, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return false;
        *close = '\0';
        p++;
    } else {
        char *colon = strchr(p, ':');
        if (colon && !strchr(colon + 1, ':')) /* one colon: IPv4 with a port */
            *colon = '\0';
    }
    if (inet_pton(AF_INET, p, out->addr) == 1) {
        out->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, p, out->addr) == 1) {
        out->family = AF_INET6;
        /* An IPv4-mapped address is that IPv4 address (dual-stack sockets). */
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(out->addr, mapped, sizeof mapped) == 0) {
            memmove(out->addr, out->addr + 12, 4);
            out->family = AF_INET;
        }
        return true;
    }
    return false;
}

static bool net_parse(const char *s, size_t n, struct net *out)
{
    const char *slash = memchr(s, '/', n);
    struct ip ip;
    if (!ip_parse(s, slash ? (size_t)(slash - s) : n, &ip))
        return false;
    int max = ip.family == AF_INET ? 32 : 128, bits = max;
    if (slash) {
        const char *d = slash + 1, *end = s + n;
        if (d == end || end - d > 3)
            return false;
        bits = 0;
        for (; d < end; d++) {
            if (*d < '0' || *d > '9')
                return false;
            bits = bits * 10 + (*d - '0');
        }
        if (bits > max)
            return false;
    }
    out->family = ip.family;
    memcpy(out->addr, ip.addr, sizeof ip.addr);
    out->bits = bits;
    return true;
}

static bool in_net(const struct ip *ip, const struct net *net)
{
    if (ip->family != net->family)
        return false;
    int full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(ip->addr, net->addr, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (ip->addr[full] & mask) == (net->addr[full] & mask);
}

static bool trusted(const struct ip *ip)
{
    for (int i = 0; i < nnets; i++)
        if (in_net(ip, &nets[i]))
            return true;
    return false;
}

struct load_ud {
    int n;
    char *bad;
    size_t badlen;
};

/* Adds one entry; true (stop) when it is bad or one too many. */
static bool load_one(const char *s, size_t n, void *ud)
{
    struct load_ud *l = ud;
    if (l->n == MAX_PROXIES) {
        snprintf(l->bad, l->badlen, "more than %d entries", MAX_PROXIES);
        return true;
    }
    if (!net_parse(s, n, &nets[l->n])) {
        snprintf(l->bad, l->badlen, "%.*s", (int)(n > 100 ? 100 : n), s);
        return true;
    }
    l->n++;
    return false;
}

bool proxies_load(const char *list, char *bad, size_t badlen)
{
    struct load_ud l = {0, bad, badlen};
    if (list_each(list, load_one, &l))
        return false;
    if (l.n == 0) {
        snprintf(bad, badlen, "(empty)");
        return false;
    }
    nnets = l.n;
    return true;
}

void proxies_resolve(struct request *req)
{
    struct ip hop;
    if (nnets == 0 || !req->client_ip || !ip_parse(req->client_ip, strlen(req->client_ip), &hop) ||
        !trusted(&hop))
        return;
    /* X-Forwarded-For may come in several header lines: one list, in order.
     * Walk it from the right, from the hop nearest to us. */
    for (size_t h = req->nheaders; h-- > 0;) {
        if (strcasecmp(req->headers[h].name, "X-Forwarded-For") != 0)
            continue;
        const char *v = req->headers[h].value;
        size_t end = strlen(v);
        for (;;) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (b > a) {
                struct ip next;
                if (!ip_parse(v + a, b - a, &next))
                    goto done; /* written by someone we cannot vouch for */
                hop = next;
                if (!trusted(&hop))
                    goto done;
            }
            if (start == 0)
                break;
            end = start - 1;
        }
    }
done:;
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(hop.family, hop.addr, text, sizeof text))
        req->client_ip = arena_strdup(req->arena, text);
}
