"""Org export (GET /v1/org/export): NDJSON streamed with chunked transfer
encoding, a version line first, then the org, credits, users, API keys,
records, the ledger and jobs; no secrets; admins only; and the server's
memory stays flat while a large org streams out."""
import http.client
import json
import os
import uuid

import harness

OPERATOR = "op-" + uuid.uuid4().hex
PASSWORD = "correct horse battery"
ENV = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1", "TENANTD_LOGIN_LIMIT": "0",
       "TENANTD_OPERATOR_TOKEN": OPERATOR, "TENANTD_TEST_JOBS": "1",
       # Under ASan, freed memory waits in a quarantine (256 MiB by default)
       # before reuse, which would count every page ever sent; a small one
       # keeps RSS about what a normal build holds. No effect otherwise.
       "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=8"]))}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def vm_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


class ExportTestCase(harness.DbTestCase):
    server_env = ENV

    def sql(self, q):
        return self.pg.psql(q, self.dbname)

    def signup(self):
        tag = uuid.uuid4().hex[:10]
        body = {"name": f"Org {tag}", "admin": {"email": f"a-{tag}@example.com", "password": PASSWORD}}
        status, doc, _ = self.server.json("POST", "/v1/orgs", body)
        self.assertEqual(status, 201, doc)
        doc["schema"] = self.sql(
            f"SELECT schema_name FROM public.orgs WHERE id = '{doc['org']['id']}'")[0]
        return doc

    def export(self, tok):
        r = self.server.request("GET", "/v1/org/export", headers=bearer(tok), timeout=60)
        return r

    def test_export_content(self):
        org = self.signup()
        tok = org["access_token"]
        st, key, _ = self.server.json("POST", "/v1/api-keys", {"name": "ci"}, bearer(tok))
        self.assertEqual(st, 201, key)
        for k in range(3):
            st, batch, _ = self.server.json("POST", "/v1/collections/items/records/batch",
                                            {"records": [{"n": 1000 * k + i} for i in range(1000)][:900]},
                                            bearer(tok))
            self.assertEqual(st, 201, batch)
        st, _, _ = self.server.json("POST", "/v1/users", {"email": "m@example.com", "password": PASSWORD,
                                                          "role": "member"}, bearer(tok))
        self.assertEqual(st, 201)
        st, grant, _ = self.server.json("POST", f"/v1/admin/orgs/{org['org']['slug']}/credits",
                                        {"amount": 500, "description": "welcome"}, bearer(OPERATOR))
        self.assertEqual(st, 201, grant)
        st, job, _ = self.server.json("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 1}},
                                      bearer(tok))
        self.assertEqual(st, 202, job)

        r = self.export(tok)
        self.assertEqual(r.status, 200, r.body[:500])
        self.assertEqual(r.getheader("Content-Type"), "application/x-ndjson")
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertIsNone(r.getheader("Content-Length"))
        text = r.body.decode()
        self.assertTrue(text.endswith("\n"))
        lines = [json.loads(line) for line in text.splitlines()]
        kinds = [line["kind"] for line in lines]
        self.assertEqual(lines[0]["kind"], "tenantd-export")
        self.assertEqual(lines[0]["version"], 1)
        self.assertEqual(kinds[1:3], ["org", "credits"])
        # Sections in order, each whole.
        order = ["user", "api_key", "record", "credit_transaction", "job"]
        seen = [k for i, k in enumerate(kinds[3:]) if i == 0 or k != kinds[3 + i - 1]]
        self.assertEqual(seen, order)
        self.assertEqual(lines[1]["id"], org["org"]["id"])
        st, credits, _ = self.server.json("GET", "/v1/credits", headers=bearer(tok))
        self.assertEqual(lines[2]["balance"], credits["balance"])
        users = {u["email"] for u in lines if u["kind"] == "user"}
        self.assertEqual(users, {org["user"]["email"], "m@example.com"})
        keys = [k for k in lines if k["kind"] == "api_key"]
        self.assertEqual([k["id"] for k in keys], [key["id"]])
        records = [x for x in lines if x["kind"] == "record"]
        self.assertEqual(len(records), 2700)
        self.assertEqual(len({x["id"] for x in records}), 2700)
        self.assertEqual(sorted(x["data"]["n"] for x in records), sorted(1000 * k + i for k in range(3) for i in range(900)))
        tx = [x for x in lines if x["kind"] == "credit_transaction"]
        self.assertEqual(sum(t["amount"] for t in tx), lines[2]["balance"])
        self.assertIn(grant["id"], [t["id"] for t in tx])
        st, txs, _ = self.server.json("GET", "/v1/credits/transactions?limit=100", headers=bearer(tok))
        self.assertEqual(sorted(t["id"] for t in tx), sorted(t["id"] for t in txs["data"]))
        jobs = [x for x in lines if x["kind"] == "job"]
        self.assertEqual([j["id"] for j in jobs], [job["id"]])
        # No secrets: no hashes, no key, no refresh token.
        for secret in [key["key"], org["refresh_token"], "argon2id", "key_hash", "password_hash",
                       "token_hash"]:
            self.assertNotIn(secret, text)

    def test_admins_only_and_other_orgs_invisible(self):
        a, b = self.signup(), self.signup()
        st, _, _ = self.server.json("POST", "/v1/users", {"email": "mem@example.com", "password": PASSWORD,
                                                          "role": "member"}, bearer(a["access_token"]))
        st, login, _ = self.server.json("POST", "/v1/auth/login", {"email": "mem@example.com",
                                                                   "password": PASSWORD})
        self.assertEqual(st, 200, login)
        r = self.export(login["access_token"])
        self.assertEqual(r.status, 403)
        self.assertEqual(self.export(OPERATOR).status, 403)
        r = self.server.request("GET", "/v1/org/export",
                                headers=dict(bearer(b["access_token"]), **{"X-Org-Name": a["org"]["slug"]}))
        self.assertEqual(r.status, 403)
        text = self.export(b["access_token"]).body.decode()
        self.assertNotIn(a["org"]["id"], text)
        self.assertNotIn(a["user"]["email"], text)

    def test_http10_and_keep_alive(self):
        org = self.signup()
        tok = org["access_token"]
        # Two exports and another request on one keep-alive connection.
        c = self.server.conn(30)
        for _ in range(2):
            c.request("GET", "/v1/org/export", headers=bearer(tok))
            r = c.getresponse()
            body = r.read()
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(body.splitlines()[0])["kind"], "tenantd-export")
        c.request("GET", "/v1/org", headers=bearer(tok))
        r = c.getresponse()
        self.assertEqual(json.loads(r.read())["id"], org["org"]["id"])
        c.close()
        raw = self.server.raw(("GET /v1/org/export HTTP/1.0\r\nAuthorization: Bearer " + tok +
                               "\r\n\r\n").encode(), timeout=10)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(json.loads(body.splitlines()[1])["kind"], "org")

    def test_large_export_keeps_memory_flat(self):
        org = self.signup()
        # ~115 MiB of records, put straight into the org's table.
        self.sql(f"INSERT INTO {org['schema']}.records (collection, data) SELECT 'big', "
                 "jsonb_build_object('i', g, 'pad', repeat('x', 60000)) FROM generate_series(1, 2000) g")
        pid = self.server.proc.pid
        before = vm_kib(pid, "VmRSS")
        peak = before
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        c.request("GET", "/v1/org/export", headers=bearer(org["access_token"]))
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        marker = b'"kind" : "record"'
        total, records, tail = 0, 0, b""
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            total += len(b)
            data = tail + b
            records += data.count(marker)
            # Keep less than one marker, so a marker split across reads is
            # counted once and a whole one in the tail is not counted again.
            tail = data[-(len(marker) - 1):]
            peak = max(peak, vm_kib(pid, "VmRSS"))
        c.close()
        self.assertEqual(records, 2000)
        self.assertGreater(total, 110 << 20)
        # An export held in memory would grow RSS by more than its size
        # (115 MiB); a streamed one holds about one 1 MiB page at a time.
        print(f"export: {total} bytes, RSS {before} -> peak {peak} KiB")
        self.assertLess(peak - before, 40 << 10, (before, peak, total))


if __name__ == "__main__":
    import unittest
    unittest.main()
