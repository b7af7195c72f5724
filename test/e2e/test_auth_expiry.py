"""Real token expiry with the shortest lifetimes the settings allow: an
access token past TENANTD_ACCESS_TTL_S (plus the 30 s of clock-skew
leeway) and a refresh token past TENANTD_REFRESH_TTL_S (at least 60 s) are
refused. Mostly waiting, so it is a file of its own that ctest runs beside
the others."""
import time
import unittest

import harness
from test_auth import AuthCase, FAST_ARGON2, PW

ACCESS_TTL_S, REFRESH_TTL_S, LEEWAY_S = 1, 60, 30


class TokenExpiryTest(AuthCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0",
                      TENANTD_ACCESS_TTL_S=str(ACCESS_TTL_S),
                      TENANTD_REFRESH_TTL_S=str(REFRESH_TTL_S))

    def test_tokens_expire(self):
        self.seed("ttl", [("tim@ttl.io", PW, "admin")])
        t0 = time.time()
        t = self.tokens("tim@ttl.io")
        spare = self.tokens("tim@ttl.io")
        self.assertEqual(t["expires_in"], ACCESS_TTL_S)
        self.assertEqual(self.me(t["access_token"])[0], 200)
        # The access token: accepted until exp + leeway, refused after.
        while self.me(t["access_token"])[0] == 200:
            self.assertLess(time.time() - t0, ACCESS_TTL_S + LEEWAY_S + 10,
                            "the access token never expired")
            time.sleep(0.25)
        self.assertGreaterEqual(time.time() - t0, ACCESS_TTL_S + LEEWAY_S - 1)
        st, b, _ = self.me(t["access_token"])
        self.assertEqual((st, b["code"]), (401, "unauthorized"), b)
        # A refresh token shortly before its end still works ...
        while time.time() - t0 < REFRESH_TTL_S - 5:
            time.sleep(0.5)
        st, b, _ = self.refresh(spare["refresh_token"])
        self.assertEqual(st, 200, b)
        # ... and is refused once its lifetime is over.
        while time.time() - t0 < REFRESH_TTL_S + 1.5:
            time.sleep(0.25)
        st, b, _ = self.refresh(t["refresh_token"])
        self.assertEqual(st, 401, b)


if __name__ == "__main__":
    unittest.main()
