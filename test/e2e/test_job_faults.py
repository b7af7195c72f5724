"""Job workers under faults: a `tenantd worker` killed with SIGKILL in the
middle of a job (its lease lapses, another worker runs the job again; it is
charged once and refunded at most once), and graceful shutdown (SIGTERM:
a running job finishes within the drain time, or is released unharmed)."""
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import unittest

import harness
from test_jobs import FAST, Ledger, LedgerAudit, enqueue, wait_job
from test_users import signup

# One JWT secret for every process, so a token works on a second server.
LEASE = dict(FAST, TENANTD_JOB_LEASE_MS="800", TENANTD_JOB_POLL_MS="100",
             TENANTD_JWT_SECRET="jobs-fault-tests-" + "k" * 32)


def start_worker(db_url, **env):
    e = dict(LEASE, TENANTD_JOB_WORKERS="1", TENANTD_LOG_LEVEL="debug")
    e.update(env)
    return harness.Server(db_url, env=e, args=("worker",)).start(wait=False)


class CuttingProxy:
    """A TCP relay to PostgreSQL that, once, passes on the first client bytes
    holding `marker`, then drops the server's answer and, once `committed()`
    says the statement's work is in (or after 20 s), closes both sides: the
    statement commits, and its client sees only its connection fail."""

    def __init__(self, pg_port, marker, committed):
        self.pg_port, self.marker, self.committed = pg_port, marker, committed
        self.cut = threading.Event()
        self.victim = None  # the server side whose answer is dropped
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.pg_port))
            self.socks += [client, server]
            threading.Thread(target=self.up, args=(client, server), daemon=True).start()
            threading.Thread(target=self.down, args=(server, client), daemon=True).start()

    @staticmethod
    def close(*socks):
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def up(self, client, server):
        try:
            while data := client.recv(65536):
                if not self.cut.is_set() and self.marker in data:
                    self.victim = server  # before the answer can come
                    self.cut.set()
                    server.sendall(data)
                    deadline = time.time() + 20
                    while not self.committed() and time.time() < deadline:
                        time.sleep(0.05)
                    break
                server.sendall(data)
        except OSError:
            pass
        self.close(client, server)

    def down(self, server, client):
        try:
            while data := server.recv(65536):
                if server is not self.victim:
                    client.sendall(data)
        except OSError:
            pass
        self.close(client, server)

    def stop(self):
        self.listener.close()
        self.close(*self.socks)


class WorkerCrashTest(LedgerAudit, harness.DbTestCase):
    server_env = dict(LEASE, TENANTD_JOB_WORKERS="0")

    def setUp(self):
        self.org = signup(self.server)
        self.token = self.org["access_token"]
        self.org_id = self.org["org"]["id"]
        self.ledger = Ledger(self.pg, self.dbname)

    def job_row(self, job_id):
        return self.pg.psql(f"SELECT status, attempts, coalesce(locked_by, '') FROM public.jobs"
                            f" WHERE id = '{job_id}'", db=self.dbname)[0].split("|")

    def wait_running(self, job_id, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, attempts, locked_by = self.job_row(job_id)
            if status == "running":
                return locked_by
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} never ran")

    def kill_mid_job(self, max_attempts):
        before = self.ledger.balance(self.org_id)
        job = enqueue(self.server, self.token, "sleep", {"ms": 1500}, max_attempts=max_attempts)
        victim = start_worker(self.db_url)
        holder = self.wait_running(job["id"])
        time.sleep(0.3)  # well inside the sleep
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self.assertEqual(self.job_row(job["id"])[0], "running")  # held by a dead worker
        rescuer = start_worker(self.db_url)
        try:
            done = wait_job(self.server, self.token, job["id"], timeout=20)
        finally:
            self.assertEqual(rescuer.stop(), 0, rescuer.log())
        return before, job, holder, done

    def test_killed_worker_job_runs_again_after_the_lease(self):
        before, job, holder, done = self.kill_mid_job(max_attempts=3)
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["attempts"], 2)  # the lost attempt counts
        self.assertEqual(done["result"], {"slept_ms": 1500})
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])  # charged once
        self.assertEqual(self.ledger.balance(self.org_id), before - 1)
        self.assertTrue(self.ledger.check_sum(self.org_id))

    def test_killed_on_last_attempt_fails_and_refunds_once(self):
        before, job, holder, done = self.kill_mid_job(max_attempts=1)
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("lease", done["error"])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])
        self.assertEqual(self.ledger.balance(self.org_id), before)
        # a second reaper pass, or a refund by hand, changes nothing
        self.pg.psql("SELECT public.tenantd_job_reap()", db=self.dbname)
        self.pg.psql(f"SELECT public.tenantd_credit_refund_job('{self.org_id}', '{job['id']}')",
                     db=self.dbname)
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])
        self.assertTrue(self.ledger.check_sum(self.org_id))

    def test_stale_worker_cannot_finish_a_taken_over_attempt(self):
        """A worker whose lease lapsed (e.g. it was paused) and whose job was
        taken over cannot write its outcome over the new attempt's."""
        job = enqueue(self.server, self.token, "sleep", {"ms": 1200}, max_attempts=3)
        slow = start_worker(self.db_url)
        self.wait_running(job["id"])
        slow.proc.send_signal(signal.SIGSTOP)  # no lease renewal from here on
        try:
            time.sleep(1.0)  # lease (0.8 s) lapses
            self.pg.psql("SELECT public.tenantd_job_reap()", db=self.dbname)
            self.assertEqual(self.job_row(job["id"])[:2], ["queued", "1"])
            rescuer = start_worker(self.db_url)
            self.wait_running(job["id"])
        finally:
            slow.proc.send_signal(signal.SIGCONT)
        try:
            done = wait_job(self.server, self.token, job["id"], timeout=20)
        finally:
            self.assertEqual(rescuer.stop(), 0)
            self.assertEqual(slow.stop(), 0)
        self.assertEqual(done["status"], "succeeded")
        self.assertEqual(done["attempts"], 2)
        self.assertIn("lost-lease", slow.log())  # its finish found the attempt gone
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])

    def test_a_set_whose_answer_was_lost_counts_its_jobs_completed(self):
        # The completer's statement commits but its connection fails before
        # the answer arrives; it tries the set again on a new connection,
        # which finds the job already ended. That try ended it (succeeded at
        # the attempt this worker held): it is counted completed, not a lost
        # lease, and the job ran once.
        port = int(re.search(r":(\d+)/", self.db_url).group(1))
        succeeded = (f"SELECT count(*) FROM public.jobs WHERE org_id = '{self.org_id}'"
                     " AND status = 'succeeded'")
        proxy = CuttingProxy(port, b"tenantd_job_finish_succeeded",
                             lambda: self.pg.psql(succeeded, db=self.dbname)[0] == "1")
        self.addCleanup(proxy.stop)
        url = re.sub(r":\d+/", f":{proxy.port}/", self.db_url, count=1)
        url += ("&" if "?" in url else "?") + "sslmode=disable"  # the relay reads the bytes
        worker = start_worker(url, TENANTD_JOB_LEASE_MS="60000")
        self.addCleanup(lambda: worker.proc.poll() is None and worker.proc.kill())
        job = enqueue(self.server, self.token, "sleep", {"ms": 1})
        deadline = time.time() + 30
        want = f"job {job['id']} attempt 1 end status="
        while not any(x.get("msg", "").startswith(want) for x in worker.log_lines()):
            self.assertLess(time.time(), deadline, worker.log()[-4000:])
            time.sleep(0.05)
        self.assertTrue(proxy.cut.is_set(), "the completer's statement never went through")
        msgs = [x.get("msg", "") for x in worker.log_lines()]
        self.assertIn(want + "succeeded (a set of 1, ended by a try whose answer was lost)",
                      msgs, worker.log()[-4000:])
        self.assertEqual(self.job_row(job["id"])[:2], ["succeeded", "1"])
        self.assertEqual(worker.stop(), 0, worker.log())
        stopped = [m for m in (x.get("msg", "") for x in worker.log_lines())
                   if m.startswith("worker: stopped")]
        self.assertEqual(len(stopped), 1, worker.log()[-4000:])
        self.assertIn("sleep(in_process) claimed=1 completed=1 ", stopped[0])
        self.assertIn("failed_lease_lost=0", stopped[0])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])  # charged once


class GracefulShutdownTest(LedgerAudit, harness.DbTestCase):
    server_env = dict(LEASE, TENANTD_JOB_WORKERS="0")

    def setUp(self):
        self.org = signup(self.server)
        self.token = self.org["access_token"]

    def test_sigterm_finishes_a_short_job(self):
        job = enqueue(self.server, self.token, "sleep", {"ms": 600})
        w = start_worker(self.db_url, TENANTD_DRAIN_TIMEOUT_MS="5000")
        wait_job(self.server, self.token, job["id"], ("running",))
        t0 = time.time()
        w.signal(signal.SIGTERM)
        self.assertEqual(w.stop(), 0, w.log())
        self.assertLess(time.time() - t0, 4)
        status, body, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                           {"Authorization": f"Bearer {self.token}"})
        self.assertEqual(body["status"], "succeeded", f"{body}\n{w.log()}")

    def test_sigterm_releases_a_long_job(self):
        job = enqueue(self.server, self.token, "sleep", {"ms": 30000})
        w = start_worker(self.db_url, TENANTD_DRAIN_TIMEOUT_MS="300")
        wait_job(self.server, self.token, job["id"], ("running",))
        t0 = time.time()
        self.assertEqual(w.stop(), 0, w.log())
        self.assertLess(time.time() - t0, 3)
        status, body, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                           {"Authorization": f"Bearer {self.token}"})
        self.assertEqual(body["status"], "queued", f"{body}\n{w.log()}")
        self.assertEqual(body["attempts"], 0)  # released: the attempt does not count
        self.assertIn("released", w.log())
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                          {"Authorization": f"Bearer {self.token}"})[0], 200)

    def test_serve_sigterm_releases_in_process_jobs(self):
        s = harness.Server(self.db_url, env=dict(LEASE, TENANTD_JOB_WORKERS="2",
                                                 TENANTD_DRAIN_TIMEOUT_MS="300")).start()
        try:
            job = enqueue(s, self.token, "sleep", {"ms": 30000})
            wait_job(s, self.token, job["id"], ("running",))
        finally:
            self.assertEqual(s.stop(), 0, s.log())
        status, body, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                           {"Authorization": f"Bearer {self.token}"})
        self.assertEqual((body["status"], body["attempts"]), ("queued", 0), body)
        # cancel it so no later test's worker picks it up
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                          {"Authorization": f"Bearer {self.token}"})[0], 200)


    def test_serve_drains_http_and_jobs_together(self):
        """A stuck request and a long job: SIGTERM ends serve after one drain
        timeout (both drains run at once), not two one after the other."""
        drain = 3.0
        s = harness.Server(self.db_url, env=dict(
            LEASE, TENANTD_JOB_WORKERS="1",
            TENANTD_DRAIN_TIMEOUT_MS=str(int(drain * 1000)))).start()
        stuck = None
        try:
            job = enqueue(s, self.token, "sleep", {"ms": 30000})
            wait_job(s, self.token, job["id"], ("running",))
            stuck = socket.create_connection(("127.0.0.1", s.port))
            stuck.sendall(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel")
            time.sleep(0.2)
            t0 = time.time()
            s.signal(signal.SIGTERM)
            s.proc.wait(30)
            took = time.time() - t0
        finally:
            if stuck:
                stuck.close()
            self.assertEqual(s.stop(), 0, s.log())
        self.assertGreater(took, drain * 0.8, s.log())  # the stuck request was waited for
        self.assertLess(took, drain * 1.6, s.log())     # ... and the job alongside it
        self.assertIn("drain timeout", s.log())
        status, body, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                           {"Authorization": f"Bearer {self.token}"})
        self.assertEqual((body["status"], body["attempts"]), ("queued", 0), body)
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                          {"Authorization": f"Bearer {self.token}"})[0], 200)

class DbRestartTest(unittest.TestCase):
    """PostgreSQL restarts under a `tenantd worker`: it reconnects, LISTENs
    again and runs a job enqueued afterwards at once (the poll interval is an
    hour, so only a re-issued LISTEN can wake it). Private cluster: the
    shared one is never stopped."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tenantd-jobs-pg-")
        os.chmod(self.tmp, 0o755)
        self.pg = harness.PgCluster(data_dir=os.path.join(self.tmp, "pg"),
                                    port=harness.free_port())
        self.pg.start()
        self.procs = []

    def tearDown(self):
        try:
            for p in self.procs:
                if p.proc and p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()
        finally:
            try:
                self.pg.stop()
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def test_worker_survives_a_restart(self):
        url = self.pg.url()
        env = dict(LEASE, TENANTD_JOB_POLL_MS="3600000", TENANTD_JOB_WORKERS="0")
        server = harness.Server(url, env=env).start()
        self.procs.append(server)
        org = signup(server)
        token = org["access_token"]
        worker = start_worker(url, TENANTD_JOB_POLL_MS="3600000")
        self.procs.append(worker)
        first = enqueue(server, token, "sleep", {"ms": 1})
        self.assertEqual(wait_job(server, token, first["id"], timeout=10)["status"], "succeeded")

        listening = lambda: sum(1 for line in worker.log_lines()
                                if line.get("msg") == "job listener: listening")
        self.assertEqual(listening(), 1, worker.log())
        self.pg.stop()
        self.pg.start()
        # Wait for the listener to reconnect (its second "listening": the
        # wake-all that follows it is spent) and for the worker thread to
        # have claimed nothing on its new connection and gone idle: from
        # then on only a NOTIFY on the re-issued LISTEN can wake it within
        # the hour.
        deadline = time.time() + 30
        while True:
            idle = self.pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantd worker'"
                " AND state = 'idle' AND query LIKE '%tenantd_job_claim%'")[0]
            if listening() >= 2 and idle == "1":
                break
            self.assertLess(time.time(), deadline, worker.log()[-4000:])
            time.sleep(0.05)
        self.assertEqual(listening(), 2, worker.log())
        # the server's pool reconnects on its own; retry the enqueue until it does
        deadline = time.time() + 20
        while True:
            status, job, _ = server.json("POST", "/v1/jobs", {"type": "sleep"},
                                         {"Authorization": f"Bearer {token}"})
            if status == 202 or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(status, 202, job)
        t0 = time.time()
        done = wait_job(server, token, job["id"], timeout=15)
        self.assertEqual(done["status"], "succeeded", worker.log()[-6000:] + server.log()[-3000:])
        self.assertLess(time.time() - t0, 10)
        self.assertEqual(worker.stop(), 0, worker.log())
        self.assertEqual(server.stop(), 0)

    def test_a_success_while_the_database_is_away_is_recorded_when_it_is_back(self):
        # The handler ends while PostgreSQL is down: the completer keeps the
        # success and records it after the restart; the job is not run again.
        url = self.pg.url()
        server = harness.Server(url, env=dict(LEASE, TENANTD_JOB_WORKERS="0")).start()
        self.procs.append(server)
        token = signup(server)["access_token"]
        worker = start_worker(url, TENANTD_JOB_LEASE_MS="60000")
        self.procs.append(worker)
        job = enqueue(server, token, "sleep", {"ms": 1500})
        self.assertEqual(wait_job(server, token, job["id"], statuses=("running",),
                                  timeout=10)["status"], "running")
        self.pg.stop()
        deadline = time.time() + 20
        while not any(x.get("msg", "").startswith("job completer:") for x in worker.log_lines()):
            self.assertLess(time.time(), deadline, worker.log()[-4000:])
            time.sleep(0.05)
        self.pg.start()
        deadline = time.time() + 30
        while True:
            status, body, _ = server.json("GET", f"/v1/jobs/{job['id']}", None,
                                          {"Authorization": f"Bearer {token}"})
            if status == 200 and body["status"] != "running":
                break
            self.assertLess(time.time(), deadline, worker.log()[-4000:])
            time.sleep(0.1)
        self.assertEqual((body["status"], body["attempts"], body["result"]),
                         ("succeeded", 1, {"slept_ms": 1500}), worker.log()[-4000:])
        msgs = [x.get("msg") for x in worker.log_lines()]
        self.assertIn(f"job {job['id']} attempt 1 end status=succeeded (a set of 1)", msgs)
        # Every connection of the worker plans generically, as the pools'
        # do: with PostgreSQL's default the claim was planned at every call.
        for who in ("worker", "listener", "completer"):
            self.assertIn(f"job {who}: connected (plan_cache_mode force_generic_plan)", msgs)
        self.assertEqual(worker.stop(), 0, worker.log())
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
