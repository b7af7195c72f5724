"""Tenant scale: records of thousands of orgs through a small pool whose
statement cache holds a fraction of them, so tenant statements are evicted
(DEALLOCATE) and prepared again all the time. Every answer must be the
asking org's own, no request may switch search_path, and another org's ids
stay invisible.

Orgs are signed up through POST /v1/orgs concurrently with cheap argon2
parameters (signup measures schema work here, not hashing)."""
import json
import random
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

import harness

ORGS = 2000
WORKERS = 8

SERVER_ENV = {
    "TENANTD_DB_POOL_SIZE": "2",
    "TENANTD_DB_STATEMENT_CACHE": "16",
    "TENANTD_ARGON2_M_KIB": "64",
    "TENANTD_ARGON2_T": "1",
    "TENANTD_ACCESS_TTL_S": "3600",
    "TENANTD_LOG_LEVEL": "warn",
    "TENANTD_JOB_WORKERS": "0",
}


class Client:
    """One keep-alive connection per thread."""

    local = threading.local()

    def __init__(self, server):
        self.server = server

    def call(self, method, path, token, body=None):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = self.server.conn(timeout=60)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            body = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
        except (OSError, ConnectionError):
            self.local.conn = None
            c.close()
            raise
        return r.status, (json.loads(data) if data else None)


def metric(server, name):
    text = server.get("/metrics").body.decode()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"/metrics has no {name}")
    return total


class TenantScaleTest(harness.DbTestCase):
    server_env = SERVER_ENV

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Two loops: each has its own pool (2 connections x 16 statements).
        cls.server.stop()
        cls.server = harness.Server(cls.db_url, env=SERVER_ENV, threads=2).start()
        cls.client = Client(cls.server)
        run = random.Random(9).getrandbits(32)

        def signup(i):
            st, d = cls.client.call("POST", "/v1/orgs", None, {
                "name": f"Scale {i}", "slug": f"scale-{run:x}-{i}",
                "admin": {"email": f"admin{i}@scale.example.com",
                          "password": "correct-horse-battery"}})
            if st != 201:
                raise AssertionError(f"signup {i}: {st} {d}")
            return d["access_token"]

        with ThreadPoolExecutor(WORKERS) as ex:
            cls.tokens = list(ex.map(signup, range(ORGS)))

    def test_records_of_many_orgs_through_eviction(self):
        c = self.client
        order = list(range(ORGS))
        random.Random(1).shuffle(order)

        def create(i):
            st, d = c.call("POST", "/v1/collections/items/records", self.tokens[i],
                           {"org": i, "n": 0})
            self.assertEqual(st, 201, d)
            return d["id"]

        with ThreadPoolExecutor(WORKERS) as ex:
            ids = dict(zip(order, ex.map(create, order)))

        random.Random(2).shuffle(order)

        def check(i):
            tok, rid = self.tokens[i], ids[i]
            path = f"/v1/collections/items/records/{rid}"
            st, d = c.call("GET", path, tok)
            self.assertEqual((st, d["data"]), (200, {"org": i, "n": 0}), f"org {i}: {d}")
            st, d = c.call("PATCH", path, tok, {"n": i, "patched": True})
            self.assertEqual((st, d["data"]), (200, {"org": i, "n": i, "patched": True}),
                             f"org {i}: {d}")
            st, d = c.call("PUT", path, tok, {"org": i, "n": i + 1})
            self.assertEqual((st, d["data"], d["version"]), (200, {"org": i, "n": i + 1}, 3))
            st, d = c.call("GET", "/v1/collections/items/records?filter="
                           + '{"org":%d}' % i, tok)
            self.assertEqual(st, 200, d)
            self.assertEqual([r["id"] for r in d["data"]], [rid], f"org {i}: {d}")
            # Another org's record is not there for this org.
            other = (i + 1) % ORGS
            st, d = c.call("GET", f"/v1/collections/items/records/{ids[other]}", tok)
            self.assertEqual(st, 404, f"org {i} sees org {other}'s record: {d}")
            return True

        with ThreadPoolExecutor(WORKERS) as ex:
            self.assertTrue(all(ex.map(check, order)))

        def delete(i):
            st, _ = c.call("DELETE", f"/v1/collections/items/records/{ids[i]}", self.tokens[i])
            self.assertEqual(st, 204)
            st, _ = c.call("GET", f"/v1/collections/items/records/{ids[i]}", self.tokens[i])
            self.assertEqual(st, 404)
            return True

        with ThreadPoolExecutor(WORKERS) as ex:
            self.assertTrue(all(ex.map(delete, order[:200])))

        evictions = metric(self.server, 'tenantd_db_statement_cache_total{result="eviction"}')
        hits = metric(self.server, 'tenantd_db_statement_cache_total{result="hit"}')
        self.assertGreater(evictions, ORGS, "a cache of 16 per connection must evict")
        self.assertGreater(hits, 0)
        self.assertEqual(metric(self.server, "tenantd_db_schema_switches_total"), 0)
        most = metric(self.server, 'tenantd_db_connection_schemas{stat="max"}')
        self.assertGreater(most, 0)
        # Two loops: an org's statements run on its home loop's pool, so the
        # backends together saw each org about once, not once per loop.
        self.assertGreater(metric(self.server, "tenantd_db_handed_over_total"), 0)
        # 2 loops x 2 connections; without home loops the sum is about twice.
        mean = metric(self.server, 'tenantd_db_connection_schemas{stat="mean"}')
        self.assertLessEqual(mean * 4, 1.25 * ORGS, "orgs are cached by more than one backend")


class RecycleSettingTest(harness.DbTestCase):
    """TENANTD_DB_RECYCLE_SCHEMAS reaches the pool: connections that may see
    4 schemas are replaced while 12 orgs are served, their orgs meanwhile
    served by their next slot (a spill), and every answer is still the
    asking org's."""
    server_env = dict(SERVER_ENV, TENANTD_DB_POOL_SIZE="2", TENANTD_DB_RECYCLE_SCHEMAS="4")

    def test_backend_replaced_after_its_schema_budget(self):
        c = Client(self.server)
        run = random.Random().getrandbits(32)
        orgs = []
        for i in range(12):
            st, d = c.call("POST", "/v1/orgs", None, {
                "name": f"Recycle {i}", "slug": f"recycle-{run:x}-{i}",
                "admin": {"email": f"admin{i}@recycle.example.com",
                          "password": "correct-horse-battery"}})
            self.assertEqual(st, 201, d)
            tok = d["access_token"]
            st, d = c.call("POST", "/v1/collections/items/records", tok, {"org": i})
            self.assertEqual(st, 201, d)
            orgs.append((tok, d["id"]))
        for _ in range(2):
            for i, (tok, rid) in enumerate(orgs):
                st, d = c.call("GET", f"/v1/collections/items/records/{rid}", tok)
                self.assertEqual((st, d["data"]), (200, {"org": i}), f"org {i}: {d}")
        self.assertGreaterEqual(metric(self.server, "tenantd_db_recycles_total"), 2)
        self.assertGreater(metric(self.server, "tenantd_db_spills_total"), 0)


if __name__ == "__main__":
    unittest.main()
