"""webhook.deliver against server-side request forgery, and who pays for a
failed delivery (SECURITY.md, findings 10.6 and 10.7). The receivers are on
127.0.0.1, so most classes set TENANTD_WEBHOOK_ALLOW_PRIVATE=1; the first
one shows what happens without it."""
import harness
from test_jobs import (FAST, Ledger, LedgerAudit, Receiver, assert_url_refused, enqueue,
                       signup, wait_job)


class PrivateAddressTest(LedgerAudit, harness.DbTestCase):
    """Without TENANTD_WEBHOOK_ALLOW_PRIVATE a host on the allow list that
    resolves to loopback (or any non-public address: a rebound DNS name, a
    metadata service) is never connected to; the job fails and is refunded
    (no delivery was attempted)."""
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rx = Receiver()
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_TIMEOUT_MS="2000",
            TENANTD_WEBHOOK_ALLOW=f"127.0.0.1:{cls.rx.port},localhost:{cls.rx.port}")).start()
        cls.org = signup(cls.server)
        cls.ledger = Ledger(cls.pg, cls.dbname)

    @classmethod
    def tearDownClass(cls):
        cls.rx.close()
        super().tearDownClass()

    def test_loopback_is_refused(self):
        for host in ("127.0.0.1", "localhost"):
            with self.subTest(host=host):
                job = enqueue(self.server, self.org["access_token"], "webhook.deliver", {
                    "url": f"http://{host}:{self.rx.port}/", "secret": "s" * 16}, max_attempts=3)
                done = wait_job(self.server, self.org["access_token"], job["id"])
                self.assertEqual(done["status"], "failed", done)
                self.assertEqual(done["attempts"], 1)  # policy: retrying cannot help
                self.assertIn("no public address", done["error"])
                self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2), ("refund", 2)])
        self.assertEqual(self.rx.connections, 0)


class AllowListPortTest(LedgerAudit, harness.DbTestCase):
    """An allow-list entry without a port allows 443 and 80 only; other
    ports must be listed."""
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rx = Receiver()
        cls.closed = harness.free_port()
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_TIMEOUT_MS="2000",
            TENANTD_WEBHOOK_ALLOW_PRIVATE="1",
            TENANTD_WEBHOOK_ALLOW=f"127.0.0.1, localhost:{cls.rx.port}, localhost:{cls.closed}"
        )).start()
        cls.org = signup(cls.server)
        cls.ledger = Ledger(cls.pg, cls.dbname)

    @classmethod
    def tearDownClass(cls):
        cls.rx.close()
        super().tearDownClass()

    def test_entry_without_port_is_not_every_port(self):
        token = self.org["access_token"]
        for port in (self.rx.port, 22, 5432, 8080):
            with self.subTest(port=port):
                assert_url_refused(self, self.server, token, f"http://127.0.0.1:{port}/")
        # The web's ports are allowed by the bare entry (checked at enqueue
        # only: nothing listens there).
        for url in ("http://127.0.0.1/", "https://127.0.0.1/", "http://127.0.0.1:443/"):
            st, b, _ = self.server.json("POST", "/v1/jobs", {
                "type": "webhook.deliver", "payload": {"url": url, "secret": "s" * 16},
                "run_at": "2999-01-01T00:00:00Z"}, {"Authorization": "Bearer " + token})
            self.assertEqual(st, 202, (url, b))
            self.assertEqual(self.server.json("POST", f"/v1/jobs/{b['id']}/cancel", None,
                                              {"Authorization": "Bearer " + token})[0], 200)

    def test_connection_errors_are_generic(self):
        """Refused, unreachable and timed out read the same: the error text
        is no port scanner."""
        job = enqueue(self.server, self.org["access_token"], "webhook.deliver", {
            "url": f"http://localhost:{self.closed}/", "secret": "s" * 16}, max_attempts=1)
        done = wait_job(self.server, self.org["access_token"], job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["error"], f"cannot connect to localhost:{self.closed}")
        # The receiver's side: a delivery was attempted, the cost stays.
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])

    def test_receiver_4xx_is_not_refunded(self):
        path = self.rx.new_path()
        self.rx.answers[path] = [404]
        job = enqueue(self.server, self.org["access_token"], "webhook.deliver", {
            "url": f"http://localhost:{self.rx.port}{path}", "secret": "s" * 16}, max_attempts=3)
        done = wait_job(self.server, self.org["access_token"], job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 1)
        self.assertIn("404", done["error"])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])
