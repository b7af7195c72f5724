"""Schedules: five-field cron in a time zone (DST: a skipped local time
does not run, a repeated one runs once), each tick enqueued and charged
exactly once with three serve processes ticking, missed ticks not replayed
in bulk (one catch-up), a tick short of credits skipped and recorded, and
the routes' validation.

Time is sped up instead of waited for: TENANTD_TEST_CLOCK_SPEED=600 makes
schedules see ten minutes pass every real second (the same fake clock in
every process, from TENANTD_TEST_CLOCK_BASE)."""
import datetime
import re
import time
import unittest
import uuid

import harness
from test_users import bearer, signup

OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
JWT = "jwt-" + uuid.uuid4().hex + uuid.uuid4().hex  # one key: tokens work on every process
harness.secret(OPERATOR)
SPEED = 600


def env(base):
    return {
        "TENANTD_OPERATOR_TOKEN": OPERATOR,
        "TENANTD_JWT_SECRET": JWT,
        "TENANTD_SIGNUP_CREDITS": "1000",
        "TENANTD_LOGIN_LIMIT": "0",
        "TENANTD_JOB_WORKERS": "0",
        "TENANTD_SCHEDULE_TICK_MS": "50",
        "TENANTD_TEST_CLOCK_SPEED": str(SPEED),
        "TENANTD_TEST_CLOCK_BASE": str(base),
    }


def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


def tick_counters(servers):
    """tenantd_schedule_ticks_total summed over the processes, by outcome."""
    out = {}
    for server in servers:
        for line in server.get("/metrics").body.decode().splitlines():
            if line.startswith("tenantd_schedule_ticks_total{outcome="):
                outcome = line.split('"')[1]
                out[outcome] = out.get(outcome, 0) + int(line.rsplit(" ", 1)[1])
    return out


class CronNextTest(harness.DbTestCase):
    """tenantd_cron_next, the SQL that plans runs, straight from SQL."""
    server_env = env(0)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.org_id = signup(cls.server)["org"]["id"]

    def next_runs(self, cron_sets, tz, after, n=3):
        """The n runs after `after` (ISO UTC) of a schedule with these
        expanded sets (minute, hour, dom, month, dow, dom_any, dow_any)."""
        m, h, dom, mon, dow, dom_any, dow_any = cron_sets
        sid = self.pg.psql(
            "INSERT INTO public.schedules (org_id, type, cron, timezone, c_minute, c_hour, c_dom,"
            " c_month, c_dow, c_dom_any, c_dow_any, paused) VALUES"
            f" ('{self.org_id}', 'x', 'test', '{tz}', '{m}', '{h}', '{dom}', '{mon}', '{dow}',"
            f" {dom_any}, {dow_any}, true) RETURNING id", db=self.dbname)[0]
        out, t = [], after
        for _ in range(n):
            t = self.pg.psql(
                "SELECT to_char(public.tenantd_cron_next(s, '" + t + "') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD\"T\"HH24:MI\"Z\"') FROM public.schedules s"
                f" WHERE id = '{sid}'", db=self.dbname)[0]
            out.append(t)
        return out

    ALL_DAYS = ("{" + ",".join(map(str, range(1, 32))) + "}", "{" + ",".join(
        map(str, range(1, 13))) + "}", "{0,1,2,3,4,5,6}")

    def daily(self, minute, hour):
        dom, mon, dow = self.ALL_DAYS
        return (f"{{{minute}}}", f"{{{hour}}}", dom, mon, dow, "true", "true")

    def hourly(self, minute):
        dom, mon, dow = self.ALL_DAYS
        hours = "{" + ",".join(map(str, range(24))) + "}"
        return (f"{{{minute}}}", hours, dom, mon, dow, "true", "true")

    def test_spring_forward_skips_the_missing_local_time(self):
        # New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 never exists.
        runs = self.next_runs(self.daily(30, 2), "America/New_York", "2026-03-07T12:00Z")
        self.assertEqual(runs, ["2026-03-09T06:30Z", "2026-03-10T06:30Z", "2026-03-11T06:30Z"])
        runs = self.next_runs(self.hourly(0), "America/New_York", "2026-03-08T06:30Z", 2)
        self.assertEqual(runs, ["2026-03-08T07:00Z", "2026-03-08T08:00Z"])  # 03:00, 04:00 EDT

    def test_fall_back_runs_the_repeated_local_time_once(self):
        # New York, 2026-11-01: 01:00-02:00 happens twice (EDT, then EST).
        runs = self.next_runs(self.daily(30, 1), "America/New_York", "2026-10-31T12:00Z")
        self.assertIn(runs[0], ("2026-11-01T05:30Z", "2026-11-01T06:30Z"))
        self.assertEqual(runs[1:], ["2026-11-02T06:30Z", "2026-11-03T06:30Z"])
        runs = self.next_runs(self.hourly(0), "America/New_York", "2026-11-01T04:30Z", 2)
        self.assertIn(runs[0], ("2026-11-01T05:00Z", "2026-11-01T06:00Z"))
        self.assertEqual(runs[1], "2026-11-01T07:00Z")  # 02:00 EST: 01:00 ran once

    def test_day_fields_either_matches_and_impossible_dates(self):
        dom, mon, _ = self.ALL_DAYS
        # "0 0 13 * 5": the 13th or any Friday (2026-02-06 is a Friday).
        runs = self.next_runs(("{0}", "{0}", "{13}", mon, "{5}", "false", "false"), "UTC",
                              "2026-02-01T00:00Z", 3)
        self.assertEqual(runs, ["2026-02-06T00:00Z", "2026-02-13T00:00Z", "2026-02-20T00:00Z"])
        never = self.pg.psql(
            "INSERT INTO public.schedules (org_id, type, cron, timezone, c_minute, c_hour, c_dom,"
            f" c_month, c_dow, c_dom_any, c_dow_any) VALUES ('{self.org_id}', 'x', '0 0 30 2 *',"
            " 'UTC', '{0}', '{0}', '{30}', '{2}', '{0,1,2,3,4,5,6}', false, true) RETURNING"
            " public.tenantd_cron_next(schedules, now()) IS NULL", db=self.dbname)
        self.assertEqual(never, ["t"])


class SchedulesTest(harness.DbTestCase):
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.base = int(time.time())
        cls.servers = [harness.Server(cls.db_url, env(cls.base)).start()]
        for _ in range(2):
            cls.servers.append(harness.Server(cls.db_url, env(cls.base), args=("serve",)).start())
        cls.server = cls.servers[0]
        for name, cost in (("report.tick", 1), ("report.dear", 5000)):
            status, body, _ = cls.server.json("PUT", f"/v1/admin/job-types/{name}", {
                "cost": cost, "payload_schema": {"type": "object",
                                                 "properties": {"n": {"type": "integer"}}}},
                bearer(OPERATOR))
            assert status == 200, body

    @classmethod
    def tearDownClass(cls):
        try:
            for s in cls.servers:
                rc = s.stop()
                if rc != 0:
                    raise AssertionError(f"tenantd exited with {rc}:\n{s.log()}")
        finally:
            cls.server = None
            super().tearDownClass()

    def setUp(self):
        o = signup(self.server)
        self.token, self.org_id = o["access_token"], o["org"]["id"]

    def call(self, method, path, body=None, server=None):
        return (server or self.server).json(method, path, body, bearer(self.token))[:2]

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def ticks(self, sid):
        return self.sql("SELECT to_char(tick_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || '|'"
                        " || outcome || '|' || coalesce(job_id::text, '')"
                        f" FROM public.schedule_ticks WHERE schedule_id = '{sid}' ORDER BY tick_at")

    def test_validation(self):
        for body, field in (({"type": "report.tick", "cron": "* * *"}, "cron"),
                            ({"type": "report.tick", "cron": "61 * * * *"}, "cron"),
                            ({"type": "nope", "cron": "* * * * *"}, "type"),
                            ({"type": "report.tick", "cron": "* * * * *",
                              "timezone": "Mars/Olympus"}, "timezone"),
                            ({"type": "report.tick", "cron": "* * * * *",
                              "payload": {"n": "x"}}, "payload.n"),
                            ({"type": "report.tick", "cron": "* * * * *", "x": 1}, "x")):
            status, answer = self.call("POST", "/v1/schedules", body)
            self.assertEqual(status, 422, (body, answer))
            self.assertIn(field, [e["field"] for e in answer["errors"]], answer)
        status, _ = self.call("GET", f"/v1/schedules/{uuid.uuid4()}")
        self.assertEqual(status, 404)
        status, _ = self.call("PATCH", f"/v1/schedules/{uuid.uuid4()}", {"paused": True})
        self.assertEqual(status, 404)
        # paused is a boolean; null means "not given", as for every optional field.
        status, answer = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "* * * * *", "paused": "yes"})
        self.assertEqual((status, [e["field"] for e in answer["errors"]]), (422, ["paused"]))
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "0 0 1 1 *", "paused": None})
        self.assertEqual((status, s["paused"]), (201, False), s)
        status, s2 = self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": None})
        self.assertEqual((status, s2["paused"]), (200, False), s2)
        status, answer = self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": 1})
        self.assertEqual((status, [e["field"] for e in answer["errors"]]), (422, ["paused"]))

    def test_list_is_paged(self):
        ids = []
        for i in range(3):
            status, s = self.call("POST", "/v1/schedules", {
                "type": "report.tick", "cron": f"{i} 0 1 1 *", "paused": True})
            self.assertEqual(status, 201, s)
            ids.append(s["id"])
        harness.check_paging(self, lambda path: self.call("GET", path), "/v1/schedules", ids)

    def test_ticks_exactly_once_across_three_processes(self):
        before = tick_counters(self.servers)
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "payload": {"n": 1}, "cron": "*/10 * * * *",
            "timezone": "Europe/Paris"})
        self.assertEqual(status, 201, s)
        self.assertEqual((s["cron"], s["timezone"], s["paused"]),
                         ("*/10 * * * *", "Europe/Paris", False))
        time.sleep(6.5)  # about six ticks, every process trying each one
        status, s = self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": True},
                              self.servers[2])
        self.assertEqual((status, s["paused"]), (200, True), s)
        ticks = self.ticks(s["id"])
        self.assertGreaterEqual(len(ticks), 4, ticks)
        times = [ts(t.split("|")[0].replace(" ", "T") + ":00.0Z") for t in ticks]
        gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:])}
        self.assertEqual(gaps, {600.0}, ticks)  # none lost, none twice
        self.assertTrue(all(t.split("|")[1] == "enqueued" for t in ticks), ticks)
        jobs = self.sql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{self.org_id}'")
        charged = self.sql("SELECT count(*) FROM public.credit_transactions"
                           f" WHERE org_id = '{self.org_id}' AND type = 'deduction'")
        self.assertEqual((int(jobs[0]), int(charged[0])), (len(ticks), len(ticks)))
        # Each process counts the ticks it fired (tenantd_schedule_ticks_total):
        # together, each tick once (this class's other schedules are paused).
        deadline = time.time() + 5
        while True:
            after = tick_counters(self.servers)
            fired = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
            if fired == {"enqueued": len(ticks)} or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(fired, {"enqueued": len(ticks)})
        status, listed = self.call("GET", "/v1/schedules")
        self.assertEqual([x["id"] for x in listed["data"]], [s["id"]])
        self.assertEqual(listed["data"][0]["last_outcome"], "enqueued")
        status, _ = self.call("DELETE", f"/v1/schedules/{s['id']}")
        self.assertEqual(status, 204)

    def test_tick_records_past_the_retention_are_pruned(self):
        # TENANTD_SCHEDULE_TICK_KEEP_DAYS (30 by default): a tick deletes its
        # schedule's records older than that before it, and only those.
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "*/10 * * * *"})
        self.assertEqual(status, 201, s)
        sid = s["id"]
        status, other = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "0 0 1 1 *", "paused": True})
        self.assertEqual(status, 201, other)
        self.sql("INSERT INTO public.schedule_ticks (schedule_id, tick_at, outcome) VALUES"
                 f" ('{sid}', now() - interval '60 days', 'enqueued'),"
                 f" ('{sid}', now() - interval '10 days', 'enqueued'),"
                 f" ('{other['id']}', now() - interval '60 days', 'enqueued')")
        deadline = time.time() + 10
        while len(self.ticks(sid)) < 4 and time.time() < deadline:
            time.sleep(0.1)  # two ticks at least
        self.call("PATCH", f"/v1/schedules/{sid}", {"paused": True})
        kept = self.sql("SELECT (now() - tick_at > interval '30 days')::text || '|'"
                        " || (now() - tick_at > interval '5 days')::text"
                        f" FROM public.schedule_ticks WHERE schedule_id = '{sid}' ORDER BY tick_at")
        self.assertGreaterEqual(len(kept), 3, kept)
        self.assertEqual(kept[0], "false|true", kept)  # the 10-day-old record stays
        self.assertNotIn("true|true", kept)  # the 60-day-old one went
        # Another schedule's old records are not a tick's to prune.
        self.assertEqual(len(self.ticks(other["id"])), 1)

    def test_tick_short_of_credits_is_skipped_and_recorded(self):
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.dear", "cron": "*/10 * * * *"})
        self.assertEqual(status, 201, s)
        deadline = time.time() + 5
        while not self.ticks(s["id"]) and time.time() < deadline:
            time.sleep(0.1)
        self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": True})
        ticks = self.ticks(s["id"])
        self.assertTrue(ticks)
        self.assertTrue(all(t.split("|")[1:] == ["skipped: insufficient credits", ""]
                            for t in ticks), ticks)
        status, s = self.call("GET", f"/v1/schedules/{s['id']}")
        self.assertEqual(s["last_outcome"], "skipped: insufficient credits")
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.jobs"
                                  f" WHERE org_id = '{self.org_id}'"), ["0"])

    def test_suspended_org_skips_deleted_org_loses_its_schedules(self):
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "*/10 * * * *"})
        self.assertEqual(status, 201, s)
        slug = self.sql(f"SELECT slug FROM public.orgs WHERE id = '{self.org_id}'")[0]
        status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{slug}/suspend", {},
                                           bearer(OPERATOR))
        self.assertEqual(status, 200, body)
        deadline = time.time() + 5
        while not self.ticks(s["id"]) and time.time() < deadline:
            time.sleep(0.1)
        ticks = self.ticks(s["id"])
        self.assertTrue(ticks)
        self.assertTrue(all(t.split("|")[1] == "skipped: organization suspended" for t in ticks),
                        ticks)
        status, body, _ = self.server.json("DELETE", f"/v1/admin/orgs/{slug}", None,
                                           bearer(OPERATOR))
        self.assertIn(status, (200, 204), body)
        deadline = time.time() + 5
        while self.sql(f"SELECT count(*) FROM public.schedules WHERE id = '{s['id']}'") != ["0"] \
                and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.schedules"
                                  f" WHERE id = '{s['id']}'"), ["0"])
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.jobs"
                                  f" WHERE org_id = '{self.org_id}'"), ["0"])

    def test_missed_ticks_are_not_replayed(self):
        status, s = self.call("POST", "/v1/schedules", {
            "type": "report.tick", "cron": "*/10 * * * *"})
        self.assertEqual(status, 201, s)
        # Ticking is stopped (as if every process were down) by moving the
        # schedule's next run 20 ticks into the past: that is 20 missed ticks.
        self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": True})
        self.sql("UPDATE public.schedules SET paused = false,"
                 " next_run_at = next_run_at - interval '200 minutes'"
                 f" WHERE id = '{s['id']}'")
        time.sleep(1.5)
        self.call("PATCH", f"/v1/schedules/{s['id']}", {"paused": True})
        ticks = self.ticks(s["id"])
        times = [ts(t.split("|")[0].replace(" ", "T") + ":00.0Z") for t in ticks]
        # One catch-up for the 20 missed, then on time again.
        self.assertGreaterEqual(len(times), 2, ticks)
        self.assertLessEqual(len(times), 4, ticks)
        self.assertGreaterEqual((times[1] - times[0]).total_seconds(), 190 * 60, ticks)


class WorkerTicksTest(harness.DbTestCase):
    """`tenantd worker` processes tick schedules too: the one serve process
    here does not tick (TENANTD_SCHEDULE_TICK_MS=0), three worker processes
    do, and each tick still happens exactly once."""
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = env(int(time.time()))
        cls.server = harness.Server(cls.db_url, dict(cls.env, TENANTD_SCHEDULE_TICK_MS="0"))
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.server.stop()
            if rc != 0:
                raise AssertionError(f"tenantd exited with {rc}:\n{cls.server.log()}")
        finally:
            cls.server = None
            super().tearDownClass()

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def test_three_worker_processes_tick_exactly_once(self):
        status, body, _ = self.server.json("PUT", "/v1/admin/job-types/report.worker", {
            "cost": 1}, bearer(OPERATOR))
        self.assertEqual(status, 200, body)
        o = signup(self.server)
        auth, org_id = bearer(o["access_token"]), o["org"]["id"]
        status, s, _ = self.server.json("POST", "/v1/schedules", {
            "type": "report.worker", "cron": "*/10 * * * *"}, auth)
        self.assertEqual(status, 201, s)
        path = f"/v1/schedules/{s['id']}"
        ticks_q = ("SELECT to_char(tick_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || '|' ||"
                   f" outcome FROM public.schedule_ticks WHERE schedule_id = '{s['id']}'"
                   " ORDER BY tick_at")
        time.sleep(2.5)  # 25 sped-up minutes: two ticks due, and serve fires none
        self.assertEqual(self.sql(ticks_q), [])
        status, _, _ = self.server.json("PATCH", path, {"paused": True}, auth)
        self.assertEqual(status, 200)
        wenv = dict(self.env, TENANTD_JOB_WORKERS="1")
        workers = [harness.Server(self.db_url, wenv, args=("worker",)).start(wait=False)
                   for _ in range(3)]
        try:
            deadline = time.time() + 20
            while not all("job workers: 1 started" in w.log() for w in workers):
                self.assertLess(time.time(), deadline, [w.log() for w in workers])
                time.sleep(0.05)
            # A resume plans from now: the ticks from here on are on time.
            status, _, _ = self.server.json("PATCH", path, {"paused": False}, auth)
            self.assertEqual(status, 200)
            time.sleep(6.5)  # about six ticks, every worker process trying each one
            status, _, _ = self.server.json("PATCH", path, {"paused": True}, auth)
            self.assertEqual(status, 200)
        finally:
            rcs = [w.stop() for w in workers]
        self.assertEqual(rcs, [0, 0, 0], [w.log() for w in workers])
        ticks = self.sql(ticks_q)
        self.assertGreaterEqual(len(ticks), 4, ticks)
        times = [ts(t.split("|")[0].replace(" ", "T") + ":00.0Z") for t in ticks]
        gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:])}
        self.assertEqual(gaps, {600.0}, ticks)  # none lost, none twice
        self.assertTrue(all(t.split("|")[1] == "enqueued" for t in ticks), ticks)
        jobs = self.sql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{org_id}'")
        charged = self.sql("SELECT count(*) FROM public.credit_transactions"
                           f" WHERE org_id = '{org_id}' AND type = 'deduction'")
        self.assertEqual((int(jobs[0]), int(charged[0])), (len(ticks), len(ticks)))
        # Each worker process logs at its stop the ticks it fired: together,
        # each tick once.
        logged = [re.findall(r"schedule_ticks\(enqueued\)=(\d+)", x.get("msg", ""))
                  for w in workers for x in w.log_lines()
                  if x.get("msg", "").startswith("worker: stopped")]
        self.assertEqual(len(logged), 3, [w.log() for w in workers])
        self.assertEqual(sum(int(n) for found in logged for n in found), len(ticks), logged)

if __name__ == "__main__":
    unittest.main()
