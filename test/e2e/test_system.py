"""System routes end to end: /health, /ready, /metrics, /openapi.json, /docs,
the router's 404/405 answers, and the drift check between the compiled
route tables (`tenantd routes`) and the served OpenAPI document."""
import json
import os
import re
import shutil
import tempfile
import time
import unittest

import harness

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# One sample line of the Prometheus text format 0.0.4.
SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})?'
    r' (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value}; fails on a malformed line or
    a sample whose family has no TYPE line."""
    types, samples = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError(f"malformed metrics line: {line!r}")
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and family not in types:
            raise AssertionError(f"no TYPE line for {name}")
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise AssertionError(f"duplicate series: {line!r}")
        samples[key] = float(m.group(3))
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class SystemTest(harness.DbTestCase):

    def test_health(self):
        r = self.server.get("/health")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type", "").startswith("application/json"))
        self.assertEqual(json.loads(r.body), {"status": "ok"})

    def test_head_answers_like_get_without_body(self):
        r = self.server.request("HEAD", "/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")

    def test_ready_after_serve_migrate(self):
        status, body, r = self.server.json("GET", "/ready")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"status": "ready"})
        self.assertTrue(r.getheader("Content-Type", "").startswith("application/json"))

    def test_unknown_route_is_404_problem(self):
        for path in ("/nope", "/health/", "/v1/../health", "//health", "/%2e%2e/health"):
            with self.subTest(path=path):
                r = self.server.get(path)
                self.assertEqual(r.status, 404, path)
                self.assertTrue(r.getheader("Content-Type", "").startswith(
                    "application/problem+json"))
                body = json.loads(r.body)
                self.assertEqual(body["code"], "not_found")
                self.assertEqual(body["status"], 404)

    def test_wrong_method_is_405_with_allow(self):
        for method in ("POST", "DELETE", "PUT", "PATCH"):
            with self.subTest(method=method):
                r = self.server.request(method, "/health", body="{}" if method != "DELETE" else None)
                self.assertEqual(r.status, 405)
                self.assertEqual(r.getheader("Allow"), "GET, HEAD")
                body = json.loads(r.body)
                self.assertEqual(body["code"], "method_not_allowed")

    def test_metrics(self):
        for _ in range(3):
            self.assertEqual(self.server.get("/health").status, 200)
        self.assertEqual(self.server.get("/no-such-route").status, 404)
        r = self.server.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type").split(";")[0].strip(), "text/plain")
        self.assertIn("version=0.0.4", r.getheader("Content-Type"))
        text = r.body.decode()
        s = parse_metrics(text)
        n = sample(s, "tenantd_http_requests_total", route="/health", method="GET", status="200")
        self.assertIsNotNone(n, text)
        self.assertGreaterEqual(n, 3)
        self.assertGreaterEqual(
            sample(s, "tenantd_http_requests_total", route="unmatched", method="GET",
                   status="404") or 0, 1, text)
        inf = sample(s, "tenantd_http_request_duration_seconds_bucket", route="/health", le="+Inf")
        count = sample(s, "tenantd_http_request_duration_seconds_count", route="/health")
        self.assertIsNotNone(inf, text)
        self.assertEqual(inf, count)
        self.assertGreaterEqual(count, 3)
        self.assertIn("# TYPE tenantd_http_request_duration_seconds histogram", text)
        for name, labels in (("tenantd_db_pool_connections", {"state": "in_use"}),
                             ("tenantd_db_pool_connections", {"state": "idle"}),
                             ("tenantd_db_pool_waiting", {}),
                             ("tenantd_db_schema_switches_total", {}),
                             ("tenantd_db_reconnects_total", {}),
                             ("tenantd_http_connections_open", {})):
            with self.subTest(metric=name, **labels):
                v = sample(s, name, **labels)
                self.assertIsNotNone(v, f"{name}{labels} missing:\n{text}")
                self.assertGreaterEqual(v, 0)
        # The scrape's own connection is open while it is rendered.
        self.assertGreaterEqual(sample(s, "tenantd_http_connections_open"), 1)
        # After /ready ran a query, the pool holds a connection.
        self.assertEqual(self.server.get("/ready").status, 200)
        s = parse_metrics(self.server.get("/metrics").body.decode())
        self.assertGreaterEqual(
            sample(s, "tenantd_db_pool_connections", state="in_use")
            + sample(s, "tenantd_db_pool_connections", state="idle"), 1)

    def _openapi(self):
        r = self.server.get("/openapi.json")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type", "").startswith("application/json"))
        return json.loads(r.body)

    def test_openapi_document(self):
        doc = self._openapi()
        self.assertTrue(doc["openapi"].startswith("3.1."), doc["openapi"])
        self.assertTrue(doc["info"]["title"])
        self.assertTrue(doc["info"]["version"])
        scheme = doc["components"]["securitySchemes"]["bearerAuth"]
        self.assertEqual(scheme["type"], "http")
        self.assertEqual(scheme["scheme"], "bearer")
        problem = doc["components"]["schemas"]["Problem"]
        for field in ("type", "title", "status", "detail", "code", "request_id", "errors"):
            self.assertIn(field, problem["properties"])
        # The served document is src/system/openapi.json with the modules'
        # fragments (src/<module>/openapi.json) merged in by the build.
        src = os.path.join(harness.SOURCE_DIR, "src", "system", "openapi.json")
        with open(src) as f:
            base = json.load(f)
        for path, item in base["paths"].items():
            self.assertEqual(doc["paths"].get(path), item, path)
        for name, schema in base["components"]["schemas"].items():
            self.assertEqual(doc["components"]["schemas"].get(name), schema, name)

    def test_openapi_matches_route_tables(self):
        """THE DRIFT CHECK: every compiled route is documented, with the same
        operationId, and the document describes no route that does not exist."""
        doc = self._openapi()
        cp = harness.run_tenantd(["routes"], self.db_url)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        routes = set()
        for line in cp.stdout.splitlines():
            method, path, opid = line.split(" ")
            if method == "HEAD":
                continue  # HEAD is served by every GET route, never documented apart
            self.assertNotIn((method, path, opid), routes, f"route listed twice: {line}")
            routes.add((method, path, opid))
        self.assertTrue(routes)

        documented, opids = set(), []
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method not in HTTP_METHODS or method == "head":
                    continue
                documented.add((method.upper(), path, op.get("operationId")))
                opids.append(op.get("operationId"))
        self.assertEqual(sorted(routes - documented), [],
                         "routes missing from openapi.json (or with another operationId)")
        self.assertEqual(sorted(documented - routes), [],
                         "operations in openapi.json that no route serves")
        self.assertEqual(len(opids), len(set(opids)), "operationIds are not unique")

    def test_openapi_operations_are_complete(self):
        doc = self._openapi()
        schemes = doc["components"]["securitySchemes"]

        def resolve(obj):
            while isinstance(obj, dict) and "$ref" in obj:
                ref = obj["$ref"]
                self.assertTrue(ref.startswith("#/"), ref)
                target = doc
                for part in ref[2:].split("/"):
                    self.assertTrue(part in target, f"dangling $ref {ref}")
                    target = target[part]
                obj = target
            return obj

        def walk_refs(obj):
            if isinstance(obj, dict):
                if "$ref" in obj:
                    resolve(obj)
                for v in obj.values():
                    walk_refs(v)
            elif isinstance(obj, list):
                for v in obj:
                    walk_refs(v)

        walk_refs(doc)
        for path, item in doc["paths"].items():
            declared = set(re.findall(r"\{([^}]+)\}", path))
            for method, op in item.items():
                if method not in HTTP_METHODS:
                    continue
                where = f"{method.upper()} {path}"
                with self.subTest(op=where):
                    self.assertTrue(op.get("operationId"), where)
                    self.assertIn("security", op, f"{where}: no security requirement")
                    for req in op["security"]:
                        for name in req:
                            self.assertIn(name, schemes, f"{where}: unknown scheme {name}")
                    responses = op.get("responses")
                    self.assertTrue(responses, f"{where}: no responses")
                    # A redirect route (OIDC start/callback) succeeds with 302.
                    successes = [c for c in responses if c.startswith("2") or c == "302"]
                    self.assertTrue(successes, f"{where}: no success response")
                    for code in successes:
                        resp = resolve(responses[code])
                        if code in ("204", "302"):
                            self.assertNotIn("content", resp, f"{where}: {code} with a body")
                            continue
                        self.assertIn("content", resp, f"{where} {code}: no content")
                        for media in resp["content"].values():
                            self.assertIn("schema", media, f"{where} {code}: no schema")
                    for code, resp in responses.items():
                        if code[0] in "45":
                            resp = resolve(resp)
                            self.assertIn("application/problem+json", resp.get("content", {}),
                                          f"{where} {code}: not a problem+json response")
                    params = [resolve(p) for p in item.get("parameters", []) + op.get("parameters", [])]
                    in_path = {p["name"] for p in params if p.get("in") == "path"}
                    self.assertEqual(in_path, declared, f"{where}: path parameters")
                    for p in params:
                        if p.get("in") == "path":
                            self.assertTrue(p.get("required"), f"{where}: {p['name']} not required")

    def test_docs_page(self):
        r = self.server.get("/docs")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type", "").startswith("text/html"))
        page = r.body.decode()
        self.assertIn("<!doctype html>", page.lower())
        # Self-contained: no external scripts or stylesheets (no internet here).
        self.assertNotRegex(page, r'<script[^>]+src=|<link[^>]+href="?https?:')
        doc = self._openapi()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method in HTTP_METHODS:
                    self.assertIn(op["operationId"], page)
                    self.assertIn(f"<code>{path}</code>", page)


class ReadyMigrationStateTest(harness.DbTestCase):
    """/ready follows the database's migration state while the server runs."""

    def _ready(self):
        status, body, _ = self.server.json("GET", "/ready")
        return status, body

    def _sql(self, sql):
        return self.pg.psql(sql, self.dbname)

    def _restore(self):
        """Puts back public.schema_migrations as it was after `serve --migrate`."""
        if self._sql("SELECT to_regclass('public.sm_hidden') IS NOT NULL")[0] == "t":
            self._sql("ALTER TABLE public.sm_hidden RENAME TO schema_migrations")
        self._sql("DELETE FROM public.schema_migrations; "
                  "INSERT INTO public.schema_migrations SELECT * FROM public.sm_backup")

    def test_ready_tracks_schema_migrations(self):
        self.assertEqual(self._ready()[0], 200)
        self._sql("CREATE TABLE public.sm_backup AS TABLE public.schema_migrations")
        try:
            # Behind: the newest migration is forgotten.
            self._sql("DELETE FROM public.schema_migrations WHERE version = "
                      "(SELECT max(version) FROM public.schema_migrations)")
            status, body = self._ready()
            self.assertEqual(status, 503, body)
            self.assertEqual(body["code"], "unavailable")
            self.assertIn("behind", body["detail"])
            self._restore()
            self.assertEqual(self._ready()[0], 200)

            # Ahead: a newer binary migrated this database.
            self._sql("UPDATE public.schema_migrations SET version = version + 1000")
            status, body = self._ready()
            self.assertEqual(status, 503, body)
            self.assertIn("newer", body["detail"])
            self._restore()
            self.assertEqual(self._ready()[0], 200)

            # No table at all (sqlstate 42P01).
            self._sql("ALTER TABLE public.schema_migrations RENAME TO sm_hidden")
            status, body = self._ready()
            self.assertEqual(status, 503, body)
            self.assertEqual(body["code"], "unavailable")
            self.assertIn("migrat", body["detail"])
            self.assertNotIn("schema_migrations", body["detail"])  # no SQL details leak
            # /health never looked at any of it.
            self.assertEqual(self.server.get("/health").status, 200)
        finally:
            self._restore()
            self._sql("DROP TABLE public.sm_backup")
        self.assertEqual(self._ready()[0], 200)


class ReadyDatabaseDownTest(unittest.TestCase):
    """With PostgreSQL stopped, /ready is 503 and /health stays 200; when it
    comes back, /ready recovers. Uses a private cluster (never stop the
    shared one)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tenantd-sys-")
        os.chmod(self.tmp, 0o755)  # the postgres user must reach the data folder when root
        self.pg = harness.PgCluster(data_dir=os.path.join(self.tmp, "pg"), port=harness.free_port())
        self.pg.start()
        self.server = harness.Server(self.pg.url(), env={
            "TENANTD_DB_WAIT_TIMEOUT_MS": "1000",
            "TENANTD_DB_RECONNECT_MAX_MS": "200",
        }).start()

    def tearDown(self):
        try:
            rc = self.server.stop()
            self.assertEqual(rc, 0, self.server.log())
        finally:
            try:
                self.pg.stop()
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _wait_ready(self, want, deadline_s=20):
        deadline = time.time() + deadline_s
        status = body = None
        while time.time() < deadline:
            status, body, _ = self.server.json("GET", "/ready")
            if status == want:
                return body
            time.sleep(0.2)
        self.fail(f"/ready stayed {status} {body}, wanted {want}")

    def test_ready_follows_database(self):
        self._wait_ready(200)
        self.pg.stop()
        body = self._wait_ready(503)
        self.assertEqual(body["code"], "unavailable")
        self.assertIn("unreachable", body["detail"])
        # The fastest of three: one slow answer on a loaded machine is not
        # the bug (waiting for the database, TENANTD_DB_WAIT_TIMEOUT_MS =
        # 1 s here, would make every one slow).
        took = []
        for _ in range(3):
            t = time.time()
            self.assertEqual(self.server.get("/health").status, 200)
            took.append(time.time() - t)
        self.assertLess(min(took), 0.9, f"/health must not wait for the database: {took}")
        self.pg.start()
        self._wait_ready(200)


if __name__ == "__main__":
    unittest.main()
