"""The deployment files, checked without Docker or Kubernetes: HAProxy's
configuration passes `haproxy -c`; compose.yaml and deploy/kubernetes/*.yaml
parse (PyYAML when installed, else a line check) and hold what README
promises; every TENANTD_* variable they set is a setting of this binary
(`tenantd --help`), so a typo or a renamed setting fails here, not in
production; the Dockerfile's health check needs no curl."""
import glob
import os
import re
import shutil
import subprocess
import unittest

import harness

ROOT = harness.SOURCE_DIR
try:
    import yaml  # python3-yaml; optional
except ImportError:  # pragma: no cover - depends on the machine
    yaml = None


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def settings():
    out = subprocess.run([harness.BIN, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+((?:TENANTD_[A-Z0-9_]+)|DATABASE_URL)\s", out, re.M))


class DeployFilesTest(unittest.TestCase):
    def test_haproxy_config_is_valid(self):
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.assertTrue(os.path.exists(haproxy), "deps/install.sh installs haproxy")
        r = subprocess.run([haproxy, "-c", "-f", os.path.join(ROOT, "deploy", "haproxy.cfg")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        cfg = read("deploy/haproxy.cfg")
        self.assertIn("http-check send meth GET uri /ready", cfg)
        self.assertIn("option forwardfor", cfg)

    def test_yaml_parses(self):
        files = ["compose.yaml"] + sorted(
            os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "deploy", "kubernetes",
                                                                      "*.yaml")))
        self.assertGreaterEqual(len(files), 5)
        for f in files:
            text = read(f)
            self.assertNotIn("\t", text, f"{f}: YAML does not allow tabs")
            if yaml:
                docs = [d for d in yaml.safe_load_all(text) if d is not None]
                self.assertTrue(docs, f)

    @unittest.skipUnless(yaml, "PyYAML not installed; test_yaml_parses did the line check")
    def test_compose_stack(self):
        c = yaml.safe_load(read("compose.yaml"))
        s = c["services"]
        self.assertEqual(set(s), {"postgres", "jwt-secret", "migrate", "tenantd", "haproxy"})
        self.assertIn("pg_isready", s["postgres"]["healthcheck"]["test"])
        self.assertEqual(s["migrate"]["command"], ["migrate", "up"])
        self.assertEqual(s["tenantd"]["deploy"]["replicas"], 2)
        self.assertEqual(s["tenantd"]["depends_on"]["migrate"]["condition"],
                         "service_completed_successfully")
        self.assertEqual(s["tenantd"]["healthcheck"]["test"],
                         ["CMD", "/usr/local/bin/tenantd", "healthcheck"])
        self.assertEqual(s["haproxy"]["ports"], ["8080:8080"])
        self.assertEqual(s["haproxy"]["depends_on"]["tenantd"]["condition"], "service_healthy")
        # HAProxy's fixed address is the one tenantd trusts for X-Forwarded-For.
        self.assertEqual(s["haproxy"]["networks"]["backend"]["ipv4_address"],
                         s["tenantd"]["environment"]["TENANTD_TRUSTED_PROXIES"])
        # Only HAProxy is published.
        self.assertEqual([n for n in s if s[n].get("ports")], ["haproxy"])

    @unittest.skipUnless(yaml, "PyYAML not installed; test_yaml_parses did the line check")
    def test_kubernetes_manifests(self):
        kinds = {}
        for p in glob.glob(os.path.join(ROOT, "deploy", "kubernetes", "*.yaml")):
            with open(p) as f:
                for d in yaml.safe_load_all(f):
                    kinds[d["kind"]] = d
        self.assertTrue({"Deployment", "Service", "Job", "Secret"} <= set(kinds))
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/health")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/health")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertIn("preStop", c["lifecycle"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], 5 + 10)
        self.assertEqual(kinds["Job"]["spec"]["template"]["spec"]["containers"][0]["args"],
                         ["migrate", "up"])
        sel = kinds["Service"]["spec"]["selector"]
        labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(all(labels.get(k) == v for k, v in sel.items()))

    def test_every_variable_is_a_setting(self):
        known = settings()
        self.assertIn("TENANTD_SHUTDOWN_DELAY_MS", known)
        # Read by the image's entrypoint, not by tenantd.
        allowed = {"TENANTD_MIGRATE_ON_START", "TENANTD_COMMIT"}
        files = ["compose.yaml", "Dockerfile"] + [
            os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "deploy", "**", "*"),
                                                        recursive=True) if os.path.isfile(p)]
        for f in files:
            for name in set(re.findall(r"\b(TENANTD_[A-Z0-9_]+|DATABASE_URL(?:_FILE)?)\b",
                                       read(f))):
                base = name[:-5] if name.endswith("_FILE") and name[:-5] in known else name
                self.assertTrue(base in known or name in allowed, f"{f}: {name} is no setting")

    def test_dockerfile_health_check_needs_no_curl(self):
        d = read("Dockerfile")
        self.assertIn('CMD ["/usr/local/bin/tenantd", "healthcheck"]', d)
        code = "\n".join(l for l in d.splitlines() if not l.lstrip().startswith("#"))
        self.assertNotRegex(code, r"\bcurl\b")


if __name__ == "__main__":
    unittest.main()
