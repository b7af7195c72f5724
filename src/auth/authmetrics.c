/* The auth module's /metrics section: the password hash queue and the
 * rate limits' refusals (see auth.h auth_metrics_text). */
#include <stdio.h>
#include <stdlib.h>

#include "auth/auth.h"
#include "auth/internal.h"
#include "auth/password.h"

char *auth_metrics_text(void)
{
    unsigned waiting, capacity;
    unsigned long refusals;
    password_pool_stats(&waiting, &capacity, &refusals);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    fprintf(f,
            "# HELP tenantd_hash_queue_depth Password hashes (argon2id) waiting for a "
            "hashing thread.\n# TYPE tenantd_hash_queue_depth gauge\n"
            "tenantd_hash_queue_depth %u\n"
            "# HELP tenantd_hash_queue_capacity The bound of that queue (TENANTD_HASH_QUEUE).\n"
            "# TYPE tenantd_hash_queue_capacity gauge\ntenantd_hash_queue_capacity %u\n"
            "# HELP tenantd_hash_queue_refusals_total Password hashes refused because the "
            "queue was full (answered 503).\n# TYPE tenantd_hash_queue_refusals_total counter\n"
            "tenantd_hash_queue_refusals_total %lu\n",
            waiting, capacity, refusals);
    fprintf(f, "# HELP tenantd_rate_limited_total Requests answered 429 by a rate limit, by "
               "limit.\n# TYPE tenantd_rate_limited_total counter\n");
    for (int k = 0; k < LIMIT_KINDS; k++)
        fprintf(f, "tenantd_rate_limited_total{limit=\"%s\"} %lu\n", limit_name(k),
                limit_refusals(k));
    fprintf(f,
            "# HELP tenantd_rate_limit_fallbacks_total Rate-limit takes decided by this "
            "instance's own buckets because the database did not answer.\n"
            "# TYPE tenantd_rate_limit_fallbacks_total counter\n"
            "tenantd_rate_limit_fallbacks_total %lu\n",
            limit_fallbacks());
    unsigned long db, lease;
    limit_take_counts(&db, &lease);
    fprintf(f,
            "# HELP tenantd_rate_limit_takes_total Rate-limit takes by where they were "
            "decided: a round trip to the database, or locally (a token this instance "
            "leased before, or a refusal while the database said the bucket stays empty).\n# TYPE tenantd_rate_limit_takes_total counter\n"
            "tenantd_rate_limit_takes_total{source=\"database\"} %lu\n"
            "tenantd_rate_limit_takes_total{source=\"local\"} %lu\n",
            db, lease);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}
