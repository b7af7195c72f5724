"""examples/worker.ts, the TypeScript worker: type-checked with
examples/tsconfig.json (strict, Node's types), built, and run end to end
against the real server.

The set-up installs its toolchain with npm (pinned typescript and
@types/node) into the build folder, once. Without node, npm or the npm
registry the test is skipped with "TypeScript toolchain unavailable" in its
output, which ctest reports as Skipped (test/CMakeLists.txt), never as
passed."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import harness
from test_users import bearer, create_key, signup
from test_worker_api import ENV, OPERATOR, SCHEMA

TYPESCRIPT = "typescript@5.9.3"
NODE_TYPES = "@types/node@20"
TOOLS = os.path.join(os.path.dirname(os.path.abspath(harness.BIN)), "ts-tools")
EXAMPLES = os.path.join(harness.SOURCE_DIR, "examples")
UNAVAILABLE = "TypeScript toolchain unavailable"


def toolchain():
    """(node, tsc.js, typeRoots folder), installing them on first use;
    unittest.SkipTest when they cannot be had."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise unittest.SkipTest(f"{UNAVAILABLE}: node or npm is not installed")
    tsc = os.path.join(TOOLS, "node_modules", "typescript", "bin", "tsc")
    types = os.path.join(TOOLS, "node_modules", "@types")
    stamp = os.path.join(TOOLS, "installed")
    want = f"{TYPESCRIPT} {NODE_TYPES}"
    try:
        with open(stamp) as f:
            have = f.read().strip()
    except OSError:
        have = ""
    if have != want or not os.path.exists(tsc):
        os.makedirs(TOOLS, exist_ok=True)
        try:
            p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save",
                                "--prefix", TOOLS, TYPESCRIPT, NODE_TYPES],
                               capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise unittest.SkipTest(f"{UNAVAILABLE}: npm install took over 180 s "
                                    "(is the npm registry reachable?)")
        if p.returncode != 0 or not os.path.exists(tsc):
            raise unittest.SkipTest(f"{UNAVAILABLE}: npm install {want} failed "
                                    f"(is the npm registry reachable?): {p.stderr[-500:]}")
        with open(stamp, "w") as f:
            f.write(want + "\n")
    return node, tsc, types


class TypeScriptWorkerTest(harness.DbTestCase):
    server_env = ENV

    @classmethod
    def setUpClass(cls):
        cls.node, cls.tsc, cls.types = toolchain()  # before the server: a skip starts nothing
        super().setUpClass()
        status, body, _ = cls.server.json("PUT", "/v1/admin/job-types/text.wordcount", {
            "cost": 3, "max_attempts": 2, "payload_schema": SCHEMA}, bearer(OPERATOR))
        assert status == 200, (status, body)

    def tsc_run(self, *args):
        return subprocess.run([self.node, self.tsc, *args, "--typeRoots", self.types],
                              capture_output=True, text=True, timeout=120)

    def test_type_checks_and_a_type_error_is_caught(self):
        p = self.tsc_run("-p", os.path.join(EXAMPLES, "tsconfig.json"), "--noEmit")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # The same settings on a copy with one type error fail: the check is real.
        with open(os.path.join(EXAMPLES, "worker.ts")) as f:
            src = f.read()
        good = "return { words: words.length, top };"
        self.assertIn(good, src)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "worker.ts"), "w") as f:
                f.write(src.replace(good, "return { words: String(words.length), top };"))
            with open(os.path.join(d, "tsconfig.json"), "w") as f:
                json.dump({"extends": os.path.join(EXAMPLES, "tsconfig.json"),
                           "files": ["worker.ts"]}, f)
            p = self.tsc_run("-p", os.path.join(d, "tsconfig.json"), "--noEmit")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("worker.ts", p.stdout)
        self.assertIn("TS2322", p.stdout)  # Type 'string' is not assignable to type 'number'

    def test_built_worker_runs_a_job(self):
        o = signup(self.server)
        token = o["access_token"]
        key = create_key(self.server, token, name="w", role="worker")["key"]
        harness.secret(key)
        status, job, _ = self.server.json("POST", "/v1/jobs", {
            "type": "text.wordcount", "payload": {"text": "b a b"}}, bearer(token))
        self.assertEqual(status, 202, job)
        with tempfile.TemporaryDirectory() as out:
            p = self.tsc_run("-p", os.path.join(EXAMPLES, "tsconfig.json"), "--outDir", out)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            env = dict(os.environ, TENANTD_URL=f"http://127.0.0.1:{self.server.port}",
                       TENANTD_WORKER_CREDENTIAL=key)
            p = subprocess.run([self.node, os.path.join(out, "worker.js"), "--max-jobs", "1"],
                               env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout.splitlines()[-1]),
                         {"job": job["id"], "status": 200, "outcome": "succeeded"})
        status, done, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None, bearer(token))
        self.assertEqual(status, 200, done)
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["result"], {"words": 3, "top": [{"word": "b", "count": 2},
                                                              {"word": "a", "count": 1}]})


if __name__ == "__main__":
    unittest.main()
