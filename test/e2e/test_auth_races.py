"""Revocation against a concurrent refresh (SECURITY.md, finding 10.3): a
refresh loop racing POST /v1/auth/password, an email change or a logout
must never keep a live token family. Each trial runs tight refresh loops
(several families, so some rotation is in flight at the moment of the
revocation) and then checks that the last token each loop got is dead."""
import json
import threading
import time

import harness

FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
PW = "correct horse battery"
LOOPS = 4       # concurrent refresh loops (families) per trial
TRIALS = 12


class RefreshRaceTest(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0", TENANTD_THREADS="2")

    def login(self, email, password=PW):
        st, b, _ = self.server.json("POST", "/v1/auth/login",
                                    {"email": email, "password": password})
        self.assertEqual(st, 200, b)
        return b

    def refresh(self, rt):
        return self.server.json("POST", "/v1/auth/refresh", {"refresh_token": rt})

    def race(self, email, password, revoke):
        """Starts LOOPS refresh loops on fresh sessions, runs revoke() while
        they spin, lets them run a little longer, and returns the last
        refresh token each loop was issued (and whether the loop stopped by
        itself, i.e. saw its family die)."""
        sessions = [self.login(email, password)["refresh_token"] for _ in range(LOOPS)]
        last = list(sessions)
        stopped = [False] * LOOPS
        stop = threading.Event()
        started = threading.Barrier(LOOPS + 1)

        def spin(i):
            c = self.server.conn(10)
            started.wait()
            while not stop.is_set():
                c.request("POST", "/v1/auth/refresh",
                          body=('{"refresh_token":"%s"}' % last[i]).encode(),
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                body = r.read()
                if r.status != 200:
                    stopped[i] = True
                    break
                last[i] = json.loads(body)["refresh_token"]
            c.close()

        threads = [threading.Thread(target=spin, args=(i,)) for i in range(LOOPS)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.03)
        revoke(last)
        time.sleep(0.3)  # a surviving family keeps rotating meanwhile
        stop.set()
        for t in threads:
            t.join(20)
        return last, stopped

    def assert_all_dead(self, last, what):
        alive = [rt for rt in last if self.refresh(rt)[0] == 200]
        self.assertEqual(alive, [], f"{len(alive)} token families survived {what}")

    def test_password_change_beats_refresh_loops(self):
        org = harness.seed_org(self.pg, self.dbname, "pwrace", [("pia@race.io", PW, "admin")])
        pw = PW
        for trial in range(TRIALS):
            access = self.login("pia@race.io", pw)["access_token"]
            new = f"new password number {trial}"

            def revoke(_last, access=access, cur=pw, new=new):
                st, b, _ = self.server.json(
                    "POST", "/v1/auth/password",
                    {"current_password": cur, "new_password": new},
                    {"Authorization": "Bearer " + access})
                self.assertEqual(st, 204, b)

            last, _ = self.race("pia@race.io", pw, revoke)
            pw = new
            self.assert_all_dead(last, f"a password change (trial {trial})")
        self.assertEqual(
            self.pg.psql("SELECT count(*) FROM public.refresh_tokens WHERE revoked_at IS NULL "
                         f"AND used_at IS NULL AND user_id = '{org['users']['pia@race.io']}'",
                         self.dbname)[0], "0")

    def test_email_change_beats_refresh_loops(self):
        org = harness.seed_org(self.pg, self.dbname, "emrace", [("eve@race.io", PW, "admin")])
        uid = org["users"]["eve@race.io"]
        email = "eve@race.io"
        for trial in range(TRIALS):
            access = self.login(email)["access_token"]
            new = f"eve{trial}@race.io"

            def revoke(_last, access=access, new=new):
                st, b, _ = self.server.json("PATCH", f"/v1/users/{uid}", {"email": new},
                                            {"Authorization": "Bearer " + access})
                self.assertEqual(st, 200, b)

            last, _ = self.race(email, PW, revoke)
            email = new
            self.assert_all_dead(last, f"an email change (trial {trial})")

    def test_logout_beats_refresh_loop(self):
        harness.seed_org(self.pg, self.dbname, "lorace", [("lou@race.io", PW, "admin")])
        for trial in range(TRIALS):
            def revoke(last):
                # Log out every session with whatever token of it we hold
                # now (maybe already rotated: logout ends the family).
                for rt in list(last):
                    st, b, _ = self.server.json("POST", "/v1/auth/logout", {"refresh_token": rt})
                    self.assertEqual(st, 204, b)

            last, _ = self.race("lou@race.io", PW, revoke)
            self.assert_all_dead(last, f"a logout (trial {trial})")
