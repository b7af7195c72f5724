"""Shared helpers for the end-to-end tests: a real PostgreSQL (deps/pg.sh),
a fresh database per test class, the real tenantd binary, and HTTP spoken
over plain sockets. Standard library only.

Environment: TENANTD_BIN (the binary under test), TENANTD_SOURCE_DIR (the
checkout). ctest sets both; run by hand with them set too.
"""
import atexit
import http.client
import json
import os
import signal
import signal as _signal  # Server.signal() shadows the module inside the class body
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

SOURCE_DIR = os.environ.get(
    "TENANTD_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN = os.environ.get("TENANTD_BIN", os.path.join(SOURCE_DIR, "build", "dev", "tenantd"))
PG_SH = os.path.join(SOURCE_DIR, "deps", "pg.sh")
PSQL = "/usr/lib/postgresql/15/bin/psql"


class PgCluster:
    """A PostgreSQL cluster run by deps/pg.sh. The default one is shared by
    every test (each test class gets its own database in it); fault tests
    that stop PostgreSQL make a private one with their own dir and port."""

    def __init__(self, data_dir=None, port=None):
        self.private = data_dir is not None
        self.env = dict(os.environ)
        if data_dir:
            self.env["TENANTD_PG_DIR"] = data_dir
        if port:
            self.env["TENANTD_PG_PORT"] = str(port)
        # Without a port asked for, deps/pg.sh picks one (55432 or the next
        # free one) and says which once the cluster runs.
        self.port = port or (int(os.environ["TENANTD_PG_PORT"])
                             if os.environ.get("TENANTD_PG_PORT") else None)

    def _run(self, *args):
        return subprocess.run([PG_SH, *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def start(self):
        self._run("start")
        if self.port is None:
            self.port = int(self._run("port"))
        if self.private and self not in _private_clusters:
            _private_clusters.append(self)

    def stop(self):
        self._run("stop")

    def url(self, db="tenantd"):
        return f"postgresql://tenantd@127.0.0.1:{self.port}/{db}"

    def psql(self, sql, db="tenantd"):
        """Runs SQL, returns stdout rows as a list of '|'-joined strings."""
        out = subprocess.run(
            [PSQL, self.url(db), "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line]

    def create_db(self):
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_db(self, name):
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_default = None
_private_clusters = []


@atexit.register
def _stop_private_clusters():
    """A test that failed before its tearDown must not leave its private
    PostgreSQL running after the test process ends."""
    for c in _private_clusters:
        try:
            c.stop()
        except Exception:
            pass


def cluster():
    """The shared cluster, started on first use."""
    global _default
    if _default is None:
        _default = PgCluster()
        _default.start()
    return _default


_reserved_ports = []


def free_port():
    """A port of 127.0.0.1 that stays this process's: a socket bound to it
    (SO_REUSEADDR and SO_REUSEPORT, never listening) is kept open until the
    process ends. No other bind to port 0 and no outgoing connection can
    then be given the port in the gap before tenantd or PostgreSQL binds it
    (both may bind beside a socket that does not listen: both set
    SO_REUSEADDR, tenantd SO_REUSEPORT too), and a port used as "nothing
    listens there" stays closed: connecting to it is refused."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    _reserved_ports.append(s)
    return s.getsockname()[1]


# ---- secrets must never reach a log ----
#
# Every password, token and key a test sends or receives through Server
# (and every secret setting it starts tenantd with) is collected here; each
# server's log is scanned for all of them when it stops.

_secrets = set()
SECRET_FIELDS = {"password", "new_password", "current_password", "access_token",
                 "refresh_token", "key", "token", "secret"}
SECRET_SETTINGS = ("TENANTD_JWT_SECRET", "TENANTD_OPERATOR_TOKEN", "TENANTD_WEBHOOK_SECRET")


def secret(value):
    """Registers a string that must never appear in a server log (a
    password, token, key, or a canary in a body)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) >= 12 and len(set(value)) > 4:
        _secrets.add(value)


def _collect(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and k.lower() in SECRET_FIELDS:
                secret(v)
            else:
                _collect(v)
    elif isinstance(obj, list):
        for v in obj:
            _collect(v)


def _collect_headers(headers):
    for k, v in (headers or {}).items():
        if isinstance(v, str) and k.lower() == "authorization":
            secret(v.split(" ", 1)[-1])


def leaked_secrets(log):
    """The registered secrets that appear in log text."""
    return sorted(x for x in _secrets if x in log)


def run_tenantd(args, db_url, env=None, timeout=60):
    """Runs a tenantd command to completion; returns CompletedProcess."""
    e = dict(os.environ)
    e["DATABASE_URL"] = db_url
    e.update(env or {})
    return subprocess.run([BIN, *args], env=e, capture_output=True, text=True, timeout=timeout)


class Server:
    """The real binary serving on a free port of 127.0.0.1."""

    def __init__(self, db_url, env=None, args=("serve", "--migrate"), threads=1):
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update({
            "DATABASE_URL": db_url,
            "TENANTD_LISTEN": f"127.0.0.1:{self.port}",
            "TENANTD_THREADS": str(threads),
            "TENANTD_DEV": "1",
            "TENANTD_LOG_LEVEL": "info",
            # Tests sign up many orgs from 127.0.0.1; test_orgs tests the limit.
            "TENANTD_SIGNUP_LIMIT": "0",
        })
        self.env.update(env or {})
        for name in SECRET_SETTINGS:
            secret(self.env.get(name))
        self.args = list(args)
        self.proc = None
        self.stderr = tempfile.NamedTemporaryFile(prefix="tenantd-", suffix=".log", delete=False)

    def start(self, wait=True):
        self.proc = subprocess.Popen([BIN, *self.args], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr)
        if wait:
            deadline = time.time() + 30
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"tenantd exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if self.get("/health").status == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            raise AssertionError("tenantd did not answer /health in 30 s:\n" + self.log())
        return self

    def log(self):
        with open(self.stderr.name, errors="replace") as f:
            return f.read()

    def log_lines(self):
        """Parsed JSON log lines (other lines, e.g. sanitizer output, skipped)."""
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, sig=_signal.SIGTERM, timeout=30):
        """Stops the server; returns its exit code. A sanitizer report fails."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tenantd did not stop in time:\n" + self.log())
        log = self.log()
        if "ERROR: AddressSanitizer" in log or "runtime error:" in log or "ERROR: LeakSanitizer" in log:
            raise AssertionError("sanitizer report:\n" + log)
        leaked = leaked_secrets(log)
        if leaked:
            raise AssertionError(f"secrets in the server log {self.stderr.name}: {leaked}")
        return self.proc.returncode

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=10):
        """One request on a new connection; returns (response, body bytes)."""
        c = self.conn(timeout)
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            _collect(body)
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        _collect_headers(h)
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        r.body = data
        if "json" in (r.getheader("Content-Type") or "") and len(data) < (1 << 20):
            try:
                _collect(json.loads(data))
            except ValueError:
                pass
        return r

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def json(self, method, path, body=None, headers=None):
        r = self.request(method, path, body, headers)
        return r.status, (json.loads(r.body) if r.body else None), r

    def raw(self, data, timeout=5, read_until_close=True):
        """Sends raw bytes on a new connection and returns everything read
        until the server closes or the timeout passes."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            chunks = []
            while True:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                if not b:
                    break
                chunks.append(b)
                if not read_until_close:
                    break
            return b"".join(chunks)
        finally:
            s.close()


class DbTestCase(unittest.TestCase):
    """A test class with its own database in the shared cluster, and one
    server on it (started in setUpClass, stopped in tearDownClass; a
    non-zero exit or sanitizer report fails the class)."""

    server_env = {}
    start_server = True

    @classmethod
    def setUpClass(cls):
        cls.pg = cluster()
        cls.dbname = cls.pg.create_db()
        cls.db_url = cls.pg.url(cls.dbname)
        cls.server = None
        if cls.start_server:
            cls.server = Server(cls.db_url, env=cls.server_env).start()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.server:
                rc = cls.server.stop()
                if rc != 0:
                    raise AssertionError(f"tenantd exited with {rc}:\n{cls.server.log()}")
        finally:
            cls.pg.drop_db(cls.dbname)


def process_cpu_ms(pid):
    """CPU time used so far by process pid's live threads, in ms: each
    thread's time on a CPU in nanoseconds (/proc/PID/task/TID/schedstat),
    or utime + stime in clock ticks (10 ms) where the kernel has no
    schedstat. Tests that compare what two requests cost read this, not
    wall time, which other work on a busy machine moves."""
    total, exact = 0, True
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:  # the thread ended meanwhile
                pass
            except (OSError, ValueError, IndexError):
                exact = False
                break
    except OSError:
        exact = False
    if exact:
        return total / 1e6
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


# ---- identity helpers (auth tests; usable before signup exists) ----

def argon2id_phc(password, m_kib=1024, t=1, p=1):
    """An argon2id PHC string for password, computed by libargon2 through
    ctypes (the same library tenantd links), so tests can seed users
    directly in the database."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("argon2") or "libargon2.so.1")
    pw = password.encode() if isinstance(password, str) else password
    salt = os.urandom(16)
    out = ctypes.create_string_buffer(256)
    rc = lib.argon2id_hash_encoded(ctypes.c_uint32(t), ctypes.c_uint32(m_kib), ctypes.c_uint32(p),
                                   pw, ctypes.c_size_t(len(pw)), salt, ctypes.c_size_t(len(salt)),
                                   ctypes.c_size_t(32), out, ctypes.c_size_t(len(out)))
    if rc != 0:
        raise AssertionError(f"argon2id_hash_encoded failed: {rc}")
    return out.value.decode()


def sql_quote(s):
    """A SQL string literal (for test seeding through psql only)."""
    return "NULL" if s is None else "'" + str(s).replace("'", "''") + "'"


def seed_org(pg, db, slug, users=(), status="active"):
    """Inserts an org row (no tenant schema) and its users straight into the
    database. users: (email, password, role) tuples. Returns
    {"id", "slug", "users": {email: id}}. For auth tests that must not
    depend on the signup route."""
    org_id = pg.psql(
        "INSERT INTO public.orgs (name, slug, schema_name, status) VALUES "
        f"({sql_quote(slug)}, {sql_quote(slug)}, 'tenant_' || md5(random()::text), "
        f"{sql_quote(status)}) RETURNING id", db=db)[0]
    out = {"id": org_id, "slug": slug, "users": {}}
    for email, password, role in users:
        uid = pg.psql(
            "INSERT INTO public.users (org_id, email, role, password_hash) VALUES "
            f"({sql_quote(org_id)}, {sql_quote(email.lower())}, {sql_quote(role)}, "
            f"{sql_quote(argon2id_phc(password))}) RETURNING id", db=db)[0]
        out["users"][email.lower()] = uid
    return out


def check_paging(tc, get, path, ids):
    """Checks the list rule on `path` (API.md conventions), whose items are
    exactly `ids` in order (oldest first, at least 3): pages of 2 follow
    next_cursor to the end and together give the list; bad limits and a
    cursor this server did not hand out are 422. get(path) -> (status, body)."""
    tc.assertGreaterEqual(len(ids), 3)
    sep = "&" if "?" in path else "?"
    seen, cursor = [], None
    for _ in range(len(ids)):
        q = f"{path}{sep}limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = get(q)
        tc.assertEqual(status, 200, page)
        tc.assertLessEqual(len(page["data"]), 2)
        seen += [x["id"] for x in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    tc.assertEqual(seen, ids)
    status, page = get(path)
    tc.assertEqual((status, [x["id"] for x in page["data"]], page["next_cursor"]),
                   (200, ids, None))
    for bad in ("limit=0", "limit=101", "limit=+5", "limit=05", "cursor=not-a-cursor"):
        status, answer = get(f"{path}{sep}{bad}")
        tc.assertEqual(status, 422, (bad, answer))
        tc.assertEqual([e["field"] for e in answer["errors"]], [bad.split("=")[0]], answer)
