/* The refresh successor derivation of the reuse grace (internal.h). */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/internal.h"
#include "core/config.h"

int auth_refresh_successor(const char *tok, size_t len, char out[TOKEN_REFRESH_BUFSZ])
{
    const char *key = g_config ? g_config->jwt_secret : NULL;
    if (!key || !*key)
        return -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    /* A label keeps this use of the key apart from token signing. */
    static const char label[] = "tenantd refresh successor\n";
    unsigned char msg[sizeof label - 1 + 256];
    if (len > 256)
        return -1;
    memcpy(msg, label, sizeof label - 1);
    memcpy(msg + sizeof label - 1, tok, len);
    if (!HMAC(EVP_sha256(), key, (int)strlen(key), msg, sizeof label - 1 + len, mac, &maclen) ||
        maclen != 32)
        return -1;
    memcpy(out, TOKEN_REFRESH_PREFIX, 4);
    if (token_b64url_encode(mac, 32, out + 4, TOKEN_REFRESH_BUFSZ - 4) != 43)
        return -1;
    return 0;
}
