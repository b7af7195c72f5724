"""The audit log covers every audited action of API.md's list that the
accounts tests (test_accounts.py) do not: jobs created, cancelled (queued:
refunded; running external: cancel requested) and retried, the org's
creation, a password change, an email change and users imported. Each
leaves exactly one event with the right actor, org and target; a refused or
replayed request leaves none; an org never sees another org's events."""
import unittest
import uuid

import harness
from test_users import bearer, create_key, create_user, login, signup

OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
harness.secret(OPERATOR)
EXT = "audit.ext"


class AuditCoverageTest(harness.DbTestCase):
    server_env = {"TENANTD_OPERATOR_TOKEN": OPERATOR, "TENANTD_SIGNUP_CREDITS": "1000",
                  "TENANTD_LOGIN_LIMIT": "0", "TENANTD_ARGON2_M_KIB": "1024",
                  "TENANTD_ARGON2_T": "1", "TENANTD_JOB_WORKERS": "0"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        st, b, _ = cls.server.json("PUT", f"/v1/admin/job-types/{EXT}", {"cost": 7},
                                   bearer(OPERATOR))
        assert st == 200, (st, b)

    def setUp(self):
        self.org = signup(self.server)
        self.admin, self.admin_id = self.org["access_token"], self.org["user"]["id"]
        self.org_id = self.org["org"]["id"]
        self.other = signup(self.server)

    def call(self, method, path, body=None, token=None, **headers):
        st, b, _ = self.server.json(method, path, body, bearer(token or self.admin, **headers))
        return st, b

    def events(self, token=None, action=None):
        q = f"?limit=200&action={action}" if action else "?limit=200"
        st, b = self.call("GET", "/v1/audit-events" + q, None, token)
        self.assertEqual(st, 200, b)
        return b["data"]

    def one(self, action, token=None):
        ev = self.events(token, action)
        self.assertEqual(len(ev), 1, (action, ev))
        return ev[0]

    def in_db(self, action):
        """The events of `action` of this org straight from the table (org
        column included), to check what the API shows."""
        out = self.pg.psql(
            "SELECT org_id || ' ' || coalesce(target_id, '-') FROM public.audit_events"
            f" WHERE action = '{action}' ORDER BY seq", db=self.dbname)
        return [line.split(" ") for line in out]

    def enqueue(self, token=None, key=None, typ=EXT, **extra):
        body = {"type": typ, "payload": extra.pop("payload", {}), **extra}
        hdr = {"Idempotency-Key": key} if key else {}
        st, b = self.call("POST", "/v1/jobs", body, token, **hdr)
        self.assertIn(st, (200, 201, 202), b)
        return b

    def test_jobs_created_cancelled_retried(self):
        later = "2099-01-01T00:00:00Z"
        # Created by an admin user, once even when replayed with its key.
        job = self.enqueue(key="k-1", typ=EXT, payload={}, run_at=later)
        again = self.enqueue(key="k-1", typ=EXT, payload={}, run_at=later)
        self.assertEqual(again["id"], job["id"])
        ev = self.one("job.created")
        self.assertEqual(ev["actor"], {"type": "user", "id": self.admin_id})
        self.assertEqual(ev["target"], {"type": "job", "id": job["id"]})
        self.assertEqual(ev["details"], {"type": EXT, "cost": 7})
        self.assertEqual(ev["ip"], "127.0.0.1")
        self.assertEqual(self.in_db("job.created"), [[self.org_id, job["id"]]])
        # Created by an API key: the key is the actor.
        key = create_key(self.server, self.admin, role="admin")
        harness.secret(key["key"])
        kjob = self.enqueue(token=key["key"], typ=EXT, payload={}, run_at=later)
        ev = [e for e in self.events(action="job.created") if e["target"]["id"] == kjob["id"]]
        self.assertEqual([e["actor"] for e in ev], [{"type": "api_key", "id": key["id"]}])
        # Refused (422, short of credits): no event.
        st, _ = self.call("POST", "/v1/jobs", {"type": EXT, "payload": [], "run_at": later})
        self.assertEqual(st, 422)
        st, b = self.call("POST", "/v1/jobs", {"type": EXT, "payload": {}, "run_at": later,
                                               "priority": 99})
        self.assertEqual(st, 422, b)
        self.assertEqual(len(self.events(action="job.created")), 2)
        # Short of credits (402): the statement rolls back, event and all.
        st, b = self.server.json("PUT", "/v1/admin/job-types/audit.dear", {"cost": 10 ** 9},
                                 bearer(OPERATOR))[:2]
        self.assertEqual(st, 200, b)
        st, b = self.call("POST", "/v1/jobs", {"type": "audit.dear", "payload": {}})
        self.assertEqual(st, 402, b)
        self.assertEqual(len(self.events(action="job.created")), 2)

        # Cancelled while queued: refunded; a second cancel (409) adds nothing.
        st, b = self.call("POST", f"/v1/jobs/{job['id']}/cancel")
        self.assertEqual((st, b["status"]), (200, "cancelled"), b)
        st, _ = self.call("POST", f"/v1/jobs/{job['id']}/cancel")
        self.assertEqual(st, 409)
        st, _ = self.call("POST", f"/v1/jobs/{uuid.uuid4()}/cancel")
        self.assertEqual(st, 404)
        ev = self.one("job.cancelled")
        self.assertEqual((ev["actor"], ev["target"], ev["details"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "job", "id": job["id"]},
                          {"type": EXT, "refunded": 7}))
        self.assertEqual(self.in_db("job.cancelled"), [[self.org_id, job["id"]]])

        # Running external job: cancel requested (by the key); then failed,
        # and retried (charged again).
        run = self.enqueue(typ=EXT, payload={})
        wkey = create_key(self.server, self.admin, name="w", role="worker")["key"]
        harness.secret(wkey)
        st, b = self.call("POST", "/v1/worker/claim", {"types": [EXT], "max": 10}, wkey)
        self.assertEqual(st, 200, b)
        lease = {c["id"]: c["lease_id"] for c in b["data"]}
        self.assertIn(run["id"], lease)
        st, b = self.call("POST", f"/v1/jobs/{run['id']}/cancel", None, key["key"])
        self.assertEqual(st, 202, b)
        ev = self.one("job.cancel_requested")
        self.assertEqual((ev["actor"], ev["target"], ev["details"]),
                         ({"type": "api_key", "id": key["id"]}, {"type": "job", "id": run["id"]},
                          {"type": EXT, "refunded": 0}))
        st, b = self.call("POST", f"/v1/worker/jobs/{run['id']}/fail",
                          {"lease_id": lease[run["id"]], "error": "boom", "retry": False}, wkey)
        self.assertEqual(st, 200, b)
        st, b = self.call("GET", f"/v1/jobs/{run['id']}")
        self.assertEqual(b["status"], "cancelled", b)  # cancel requested, then failed
        st, _ = self.call("POST", f"/v1/jobs/{run['id']}/retry")
        self.assertEqual(st, 409)
        self.assertEqual(self.events(action="job.retried"), [])

        # The other org sees none of it, and its own job events only.
        self.assertEqual([e for e in self.events(self.other["access_token"])
                          if e["action"].startswith("job.")], [])
        ojob = self.enqueue(token=self.other["access_token"], typ=EXT, payload={}, run_at=later)
        mine = {e["target"]["id"] for e in self.events(action="job.created")}
        theirs = {e["target"]["id"] for e in self.events(self.other["access_token"], "job.created")}
        self.assertEqual(theirs, {ojob["id"]})
        self.assertNotIn(ojob["id"], mine)
        # Nor can it cancel A's job (404, no event in either org).
        st, _ = self.call("POST", f"/v1/jobs/{kjob['id']}/cancel", None, self.other["access_token"])
        self.assertEqual(st, 404)
        self.assertEqual(len(self.events(action="job.cancelled")), 1)
        self.assertEqual(self.events(self.other["access_token"], "job.cancelled"), [])

    def test_retry_of_failed_job(self):
        job = self.enqueue(typ=EXT, payload={})
        wkey = create_key(self.server, self.admin, name="w", role="worker")["key"]
        harness.secret(wkey)
        st, b = self.call("POST", "/v1/worker/claim", {"types": [EXT]}, wkey)
        self.assertEqual(st, 200, b)
        c = next(c for c in b["data"] if c["id"] == job["id"])
        st, b = self.call("POST", f"/v1/worker/jobs/{job['id']}/fail",
                          {"lease_id": c["lease_id"], "error": "boom", "retry": False}, wkey)
        self.assertEqual(st, 200, b)
        st, b = self.call("POST", f"/v1/jobs/{job['id']}/retry")
        self.assertEqual(st, 202, b)
        st, _ = self.call("POST", f"/v1/jobs/{job['id']}/retry")
        self.assertEqual(st, 409)
        ev = self.one("job.retried")
        self.assertEqual((ev["actor"], ev["target"], ev["details"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "job", "id": job["id"]},
                          {"type": EXT, "cost": 7}))
        self.assertEqual(self.events(self.other["access_token"], "job.retried"), [])

    def test_org_created_password_email_import(self):
        ev = self.one("org.created")
        self.assertEqual((ev["actor"], ev["target"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "org", "id": self.org_id}))
        self.assertEqual(ev["details"]["slug"], self.org["slug"])
        self.assertEqual(self.in_db("org.created").count([self.org_id, self.org_id]), 1)
        # Password change: by the user, for the user; a wrong current
        # password changes nothing and logs nothing.
        st, _ = self.call("POST", "/v1/auth/password",
                          {"current_password": "not it at all", "new_password": "another pass 123"})
        self.assertIn(st, (401, 403, 422))
        self.assertEqual(self.events(action="user.password_changed"), [])
        st, b = self.call("POST", "/v1/auth/password",
                          {"current_password": self.org["password"],
                           "new_password": "another pass 123"})
        self.assertEqual(st, 204, b)
        tok = login(self.server, self.org["email"], "another pass 123", org=self.org["slug"])
        self.admin = tok["access_token"]
        ev = self.one("user.password_changed")
        self.assertEqual((ev["actor"], ev["target"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "user", "id": self.admin_id}))
        # Email change by an admin.
        u = create_user(self.server, self.admin, f"e@{self.org['slug']}.example.com")
        st, b = self.call("PATCH", f"/v1/users/{u['id']}", {"name": "Only Name"})
        self.assertEqual(st, 200, b)
        self.assertEqual(self.events(action="user.email_changed"), [])
        new = f"e2@{self.org['slug']}.example.com"
        st, b = self.call("PATCH", f"/v1/users/{u['id']}", {"email": new})
        self.assertEqual(st, 200, b)
        ev = self.one("user.email_changed")
        self.assertEqual((ev["actor"], ev["target"], ev["details"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "user", "id": u["id"]},
                          {"from": u["email"], "to": new}))
        # Import: one user.created per user inserted, none for a skipped one.
        phc = harness.argon2id_phc("imported pw")
        users = [{"email": f"i{n}@{self.org['slug']}.example.com", "password_hash": phc}
                 for n in range(3)] + [{"email": new, "password_hash": phc}]
        st, b = self.call("POST", "/v1/users/import", {"users": users})
        self.assertEqual(st, 201, b)
        self.assertEqual(b["imported"], 3, b)
        ev = [e for e in self.events(action="user.created") if e["details"].get("via") == "import"]
        self.assertEqual(sorted(e["target"]["id"] for e in ev), sorted(x["id"] for x in b["users"]))
        self.assertTrue(all(e["actor"] == {"type": "user", "id": self.admin_id} for e in ev))
        # None of it is the other org's.
        other = self.events(self.other["access_token"])
        self.assertEqual([e["action"] for e in other], ["org.created"])
        self.assertEqual(other[0]["target"]["id"], self.other["org"]["id"])


if __name__ == "__main__":
    unittest.main()
