"""End to end with the REAL RudderStack client libraries (issue 4).

One Stilgar (``twistd -n stilgar``, a child process) writes to a real ClickHouse (a fresh database
per run, ``cache_idle_timeout: 1s``). The pinned SDKs (``tests/sdk/``, installed by
``scripts/sdk-setup``) send to it: rudder-sdk-python and @rudderstack/rudder-sdk-node in
subprocesses, the browser SDKs v3 and v2 in headless Debian Chromium driven by playwright-core,
from a page on another loopback origin; the pixel routes are fetched like an email client would.
Then ClickHouse is read (``FINAL``, ``FORMAT JSONEachRow``) and every event must be there exactly
once, in the right table, with the right columns. Failure cases: ClickHouse unreachable (the
spool holds, the events arrive after a restart with the right address), a wrong write key, a
browser origin that is not allowed.

A missing SDK, Node or Chromium is a SkipTest naming what to run (``scripts/sdk-setup``); in CI
``scripts/run-tests`` installs them. Versions: tests/sdk/package.json, tests/sdk/requirements.txt.
"""

import atexit
import base64
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid

import treq
from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest

from .processes import ROOT, TWISTD, StilgarProcess, fetch, free_port, wait_for

SDK_DIR = os.path.join(ROOT, "tests", "sdk")
CHROMIUM = "/usr/bin/chromium"
KEY = "sdk-compat-write-key"
WRONG_KEY = "sdk-compat-not-a-key"
RUN = uuid.uuid4().hex[:10]
PYTHON_LIBRARY = ("analytics-python", "2.1.9")          # pinned in tests/sdk/requirements.txt
NODE_LIBRARY = ("analytics-node", "3.0.13")              # pinned in tests/sdk/package.json
BROWSER_LIBRARY = {"v3": ("RudderLabs JavaScript SDK", "3.34.1"), "v2": ("RudderLabs JavaScript SDK", "2.52.21")}
SETUP_HINT = "run scripts/sdk-setup (scripts/run-tests does)"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
ROW_TIMEOUT = 30          # seconds for accepted events to show up in ClickHouse


# -- prerequisites ----------------------------------------------------------------------------

def _node():
    return shutil.which("node")


def need_python_sdk():
    if importlib.util.find_spec("rudderstack") is None or \
            importlib.util.find_spec("rudderstack.analytics") is None:
        raise unittest.SkipTest(f"rudder-sdk-python is not installed: {SETUP_HINT}")


def need_node_package(*names):
    if not _node():
        raise unittest.SkipTest("node is not installed")
    for name in names:
        if not os.path.isfile(os.path.join(SDK_DIR, "node_modules", name, "package.json")):
            raise unittest.SkipTest(f"npm package {name} is not installed in tests/sdk: {SETUP_HINT}")


def need_browser():
    if not os.access(CHROMIUM, os.X_OK):
        raise unittest.SkipTest(f"Debian chromium is not installed ({CHROMIUM}): {SETUP_HINT}")
    need_node_package("playwright-core", "@rudderstack/analytics-js", "rudder-sdk-js")


# -- child processes --------------------------------------------------------------------------

class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out, self.err = [], []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback((b"".join(self.out).decode("utf-8", "replace"),
                             b"".join(self.err).decode("utf-8", "replace"), reason.value.exitCode))


@defer.inlineCallbacks
def run_json(argv, timeout=90, cwd=SDK_DIR):
    """Run a driver script; its last stdout line is JSON. Killed after ``timeout`` seconds."""
    proc = _Collect()
    transport = reactor.spawnProcess(proc, argv[0], argv, env=dict(os.environ), path=cwd)
    killer = reactor.callLater(timeout, lambda: transport.signalProcess("KILL"))
    out, err, code = yield proc.ended
    if killer.active():
        killer.cancel()
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        doc = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"{os.path.basename(argv[1])} exited {code} without a JSON result "
                             f"(killed after {timeout}s?)\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    doc["_stderr"] = err
    return doc


def python_sdk(host, clients, via_file=None):
    """``via_file``: a path to pass the JSON through (big call lists exceed an argument's limit)."""
    arg = json.dumps({"host": host, "clients": clients})
    if via_file is not None:
        with open(via_file, "w") as f:
            f.write(arg)
        arg = "@" + via_file
    return run_json([sys.executable, os.path.join(SDK_DIR, "python_client.py"), arg])


def node_sdk(host, clients):
    return run_json([_node(), os.path.join(SDK_DIR, "node_client.js"),
                     json.dumps({"host": host, "clients": clients})])


def browser(config):
    return run_json([_node(), os.path.join(SDK_DIR, "browser.js"), json.dumps(config)], timeout=120)


# -- ClickHouse -------------------------------------------------------------------------------

def _clickhouse_settings():
    """(url, user, password): $STILGAR_TEST_CLICKHOUSE_URL, else tests/chserver.py (blocking)."""
    url = os.environ.get("STILGAR_TEST_CLICKHOUSE_URL")
    if url:
        return (url.rstrip("/"), os.environ.get("STILGAR_TEST_CLICKHOUSE_USER", "default"),
                os.environ.get("STILGAR_TEST_CLICKHOUSE_PASSWORD", ""))
    try:
        from . import chserver
    except ImportError:
        raise unittest.SkipTest("no ClickHouse: set STILGAR_TEST_CLICKHOUSE_URL (scripts/run-tests does)")
    server = chserver.clickhouse()
    return server.url, server.user, server.password


def quote(value):
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouse:
    def __init__(self, url, user, password, database):
        self.url, self.user, self.password, self.database = url, user, password, database

    @defer.inlineCallbacks
    def query(self, sql):
        response = yield treq.post(self.url + "/", data=sql.encode("utf-8"), persistent=False,
                                   headers={"X-ClickHouse-User": self.user,
                                            "X-ClickHouse-Key": self.password})
        body = (yield response.content()).decode("utf-8", "replace")
        if response.code != 200:
            raise ClickHouseError(response.code, body)
        return body

    @defer.inlineCallbacks
    def rows(self, table, column, values):
        """Rows of ``table`` (FINAL) whose ``column`` is one of ``values``; [] if no such table."""
        sql = (f"SELECT * FROM `{self.database}`.`{table}` FINAL WHERE `{column}` IN "
               f"({', '.join(quote(v) for v in values)}) FORMAT JSONEachRow")
        try:
            text = yield self.query(sql)
        except ClickHouseError as e:
            if "Code: 60," in e.body or "Code: 81," in e.body:     # no table / database yet
                return []
            raise
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def drop_blocking(self):
        request = urllib.request.Request(
            self.url + "/", data=f"DROP DATABASE IF EXISTS `{self.database}`".encode(),
            headers={"X-ClickHouse-User": self.user, "X-ClickHouse-Key": self.password})
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except Exception:
            pass


class ClickHouseError(Exception):
    def __init__(self, code, body):
        super().__init__(f"ClickHouse answered {code}: {body.strip()[:500]}")
        self.code, self.body = code, body


# -- Stilgar ----------------------------------------------------------------------------------

def stilgar_config(directory, port, ch, database, origins, ch_port=None, extra=""):
    """Write stilgar.yml; ``port`` 0 leaves it to ``--listen``."""
    parts = urllib.parse.urlsplit(ch.url)
    path = os.path.join(directory, "stilgar.yml")
    with open(path, "w") as f:
        f.write(f"""
server:
  ip: 127.0.0.1{f"{chr(10)}  port: {port}" if port else ""}
  origins: {json.dumps(origins)}
spool:
  path: {json.dumps(os.path.join(directory, "spool"))}
forwarder:
  shutdown_timeout: 3s
logging:
  level: info
destinations:
  - type: clickhouse
    name: {json.dumps("sdk:" + database)}
    write_keys: [{json.dumps(KEY)}]
    host: {json.dumps(parts.hostname)}
    port: {ch_port or parts.port or (443 if parts.scheme == "https" else 8123)}
    secure: {"true" if parts.scheme == "https" else "false"}
    user: {json.dumps(ch.user)}
    password: {json.dumps(ch.password)}
    database: {json.dumps(database)}
    cache_idle_timeout: 1s
    query_timeout: 5s
{extra}""")
    return path


def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class SharedStilgar:
    """The one Stilgar of this module: started by the first test that needs it, stopped at exit.

    Started with subprocess.Popen (not reactor.spawnProcess) so that it outlives a single test
    without leaving the reactor dirty; readiness is polled on the reactor.
    """

    def __init__(self):
        self.directory = os.path.abspath(f"sdk-stilgar-{RUN}")     # under trial's temp directory
        self.port = None           # Stilgar listens on an ephemeral port (--listen tcp:0), read from its log
        self.base = None
        self.page_port = free_port()
        self.page_origin = f"http://127.0.0.1:{self.page_port}"
        self.proc = None
        self.ch = None
        self.log_path = os.path.join(self.directory, "stilgar.log")

    @defer.inlineCallbacks
    def start(self):
        url, user, password = yield threads.deferToThread(_clickhouse_settings)
        self.ch = ClickHouse(url, user, password, f"sdk_{RUN}")
        os.makedirs(self.directory, exist_ok=True)
        config = stilgar_config(self.directory, 0, self.ch, self.ch.database, [self.page_origin])
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", config,
                                                   "--listen", "tcp:0:interface=127.0.0.1"],
                                         cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        atexit.register(self.stop)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"stilgar exited with {self.proc.returncode}:\n{self.log()}")
            if self.base is None:
                found = LISTENING.search(self.log(tail=None))
                if not found:
                    return False
                self.port = int(found.group(1))
                self.base = f"http://127.0.0.1:{self.port}"
            d = fetch("GET", self.base + "/ping")
            d.addCallbacks(lambda r: r[:2] == (200, b"pong"), lambda f: False)
            return d
        try:
            yield wait_for(ready, timeout=30, interval=0.1)
        except AssertionError:
            raise RuntimeError("stilgar did not answer /ping in 30s:\n" + self.log())

    def log(self, tail=6000):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-tail:] if tail else f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.ch is not None and not os.environ.get("STILGAR_TEST_KEEP_DB"):
            self.ch.drop_blocking()


_shared = None
_shared_failure = None


@defer.inlineCallbacks
def shared_stilgar():
    global _shared, _shared_failure
    if _shared_failure is not None:
        raise _shared_failure
    if _shared is None:
        candidate = SharedStilgar()
        try:
            yield candidate.start()
        except unittest.SkipTest as e:
            _shared_failure = e
            raise
        except Exception as e:           # fail every later test at once, with the same reason
            candidate.stop()
            _shared_failure = RuntimeError(f"the shared stilgar could not start: {e}")
            raise
        _shared = candidate
    elif _shared.proc.poll() is not None:
        raise RuntimeError(f"the shared stilgar died ({_shared.proc.returncode}):\n{_shared.log()}")
    return _shared


# -- what is sent, what must land -------------------------------------------------------------

class Either:
    """An expected value that may be any of several (e.g. '' or NULL)."""

    def __init__(self, *values):
        self.values = values

    def __repr__(self):
        return " or ".join(map(repr, self.values))


class Recent:
    """A DateTime column holding a time within a day of now (any server time zone)."""

    def __repr__(self):
        return "a date-time within a day of now"

    def matches(self, actual):
        if not isinstance(actual, str):
            return False
        try:
            when = datetime.datetime.strptime(actual[:19], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return False
        return abs((when - datetime.datetime.utcnow()).total_seconds()) < 86400


RECENT = Recent()


def matches(expected, actual):
    if isinstance(expected, Recent):
        return expected.matches(actual)
    if isinstance(expected, Either):
        return any(matches(e, actual) for e in expected.values)
    if expected is None or actual is None:
        return expected is actual
    if isinstance(expected, bool):
        return str(actual).lower() in (("1", "true") if expected else ("0", "false"))
    if isinstance(expected, int):                 # Int64 comes quoted in JSONEachRow
        return str(actual) == str(expected)
    if isinstance(expected, float):
        try:
            return float(actual) == expected
        except (TypeError, ValueError):
            return False
    return actual == expected


def six_events(label):
    """identify, track, page, screen, group, alias in a neutral form (camelCase wire names)."""
    user, anon, group = f"{label}-user-{RUN}", f"{label}-anon-{RUN}", f"{label}-group-{RUN}"
    ids = {kind: str(uuid.uuid4()) for kind in ("identify", "track", "page", "screen", "group", "alias")}
    common = {"userId": user, "anonymousId": anon}
    return [
        dict(type="identify", messageId=ids["identify"], **common,
             traits={"sdk_label": label, "email": f"{user}@example.com", "plan": "pro", "logins": 7}),
        dict(type="track", messageId=ids["track"], **common, event="Product Viewed",
             properties={"sdk_label": label, "product_id": "P-42", "price": 12.5, "quantity": 3}),
        dict(type="page", messageId=ids["page"], **common, category="Docs", name="Install Guide",
             properties={"sdk_label": label, "section": "setup"}),
        dict(type="screen", messageId=ids["screen"], **common, category="Onboarding", name="Welcome",
             properties={"sdk_label": label, "step": 2}),
        dict(type="group", messageId=ids["group"], **common, groupId=group,
             traits={"sdk_label": label, "name": "Acme Inc", "employees": 42}),
        dict(type="alias", messageId=ids["alias"], previousId=user, userId=user + "-new"),
    ]


_PY_ARGS = {"messageId": "message_id", "userId": "user_id", "anonymousId": "anonymous_id",
            "groupId": "group_id", "previousId": "previous_id"}


def python_calls(events):
    calls = []
    for e in events:
        kwargs = {_PY_ARGS.get(k, k): v for k, v in e.items() if k != "type"}
        calls.append({"method": e["type"], "kwargs": kwargs})
    return calls


def node_calls(events):
    return [{"method": e["type"], "message": {k: v for k, v in e.items() if k != "type"}} for e in events]


def track_table(name):
    """The collector's per-event table name for the simple ASCII names used here."""
    out = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "track_" + out if out[:1].isdigit() else out


def expected_rows(events, library, channel):
    """{table: {key: {column: value}}} for events as sent (``traits`` = identify's context traits).

    ``library`` is (context.library.name, context.library.version). Every SDK here sends a time of
    the call and a sentAt, so the four time columns must all be filled."""
    tables = {}
    library_name, library_version = library

    def add(table, key, columns):
        tables.setdefault(table, {})[key] = columns

    for e in events:
        kind, mid = e["type"], e["messageId"]
        base = {"anonymous_id": e.get("anonymousId"), "channel": channel,
                "context_library_name": library_name, "context_library_version": library_version,
                "received_at": RECENT, "sent_at": RECENT, "original_timestamp": RECENT, "timestamp": RECENT}
        user = e.get("userId")
        if kind == "identify":
            traits = {f"context_traits_{k}": v for k, v in e["traits"].items()}
            add("identifies", mid, {**base, "user_id": user, **traits})
            add("users", user, dict(traits))
        elif kind == "track":
            add("tracks", mid, {**base, "user_id": user, "event": e["event"]})
            add(track_table(e["event"]), mid, {**base, "user_id": user, "event": e["event"],
                                               **e["properties"]})
        elif kind in ("page", "screen"):
            add(kind + "s", mid, {**base, "user_id": user, "name": e.get("name"),
                                  "category": e.get("category"), **e["properties"]})
        elif kind == "group":
            add("groups", mid, {**base, "user_id": user, "group_id": e["groupId"],
                                **{f"context_traits_{k}": v for k, v in e["traits"].items()}})
        elif kind == "alias":
            add("aliases", mid, {**base, "user_id": user, "previous_id": e["previousId"]})
    return tables


class SDKTestCase(unittest.TestCase):
    timeout = 120

    def setUp(self):
        # the shared Stilgar must log no traceback and nothing critical while a test runs
        start = len(_shared.log(tail=None)) if _shared is not None else 0

        def clean_log():
            if _shared is None:
                return
            text = _shared.log(tail=None)[start:]
            bad = [line for line in text.splitlines() if "Traceback" in line or " CRITICAL " in line]
            if bad:
                raise AssertionError("the shared stilgar logged problems during this test:\n" + text[-4000:])
        self.addCleanup(clean_log)

    @defer.inlineCallbacks
    def assert_landed(self, ch, tables):
        """Wait until every expected row is in ClickHouse, then check each is there once, right.

        ``tables``: {table: {id: {column: expected value}}} (for ``users`` the id is the userId)."""
        def fetch_all():
            return defer.gatherResults([ch.rows(t, "id", list(rows)) for t, rows in tables.items()],
                                       consumeErrors=True)
        found = {}

        @defer.inlineCallbacks
        def complete():
            try:
                results = yield fetch_all()
            except defer.FirstError as e:
                e.subFailure.raiseException()
            found.clear()
            for (table, rows), got in zip(tables.items(), results):
                found[table] = got
            return all({r["id"] for r in found[t]} >= set(rows) for t, rows in tables.items())
        try:
            yield wait_for(complete, timeout=ROW_TIMEOUT, interval=0.25)
        except AssertionError:
            pass
        problems = []
        for table, rows in sorted(tables.items()):
            got = found.get(table, [])
            for key, columns in rows.items():
                mine = [r for r in got if r["id"] == key]
                if len(mine) != 1:
                    problems.append(f"{table}: id {key!r} found {len(mine)} times (expected once)")
                    continue
                for column, value in columns.items():
                    actual = mine[0].get(column, "<no such column>")
                    if not matches(value, actual):
                        problems.append(f"{table}.{column} for id {key!r}: expected {value!r}, got {actual!r}")
        if problems:
            raise AssertionError(f"{len(problems)} problem(s) in ClickHouse database {ch.database}:\n  "
                                 + "\n  ".join(problems))


# -- the tests --------------------------------------------------------------------------------

class ServerSDKTests(SDKTestCase):
    """rudder-sdk-python and @rudderstack/rudder-sdk-node, gzip on and off."""

    @defer.inlineCallbacks
    def python(self, gzip):
        need_python_sdk()
        s = yield shared_stilgar()
        label = f"python-{'gzip' if gzip else 'plain'}"
        events = six_events(label)
        out = yield python_sdk(s.base, [{"writeKey": KEY, "gzip": gzip, "calls": python_calls(events)}])
        self.assertEqual(out["version"], PYTHON_LIBRARY[1])
        self.assertEqual(out["errors"], [], "the Python SDK reported errors:\n" + out["_stderr"][-2000:])
        self.assertTrue(all(q["ok"] for q in out["queued"]))
        yield self.assert_landed(s.ch, expected_rows(events, PYTHON_LIBRARY, "server"))

    def test_python_gzip(self):
        return self.python(True)

    def test_python_plain(self):
        return self.python(False)

    @defer.inlineCallbacks
    def node(self, gzip):
        need_node_package("@rudderstack/rudder-sdk-node")
        s = yield shared_stilgar()
        label = f"node-{'gzip' if gzip else 'plain'}"
        events = six_events(label)
        out = yield node_sdk(s.base, [{"writeKey": KEY, "gzip": gzip, "calls": node_calls(events)}])
        self.assertEqual(out["version"], NODE_LIBRARY[1])
        self.assertFalse(out.get("timedOut"), out)
        errors = [c for c in out["callbacks"] if c["error"]] + out["flushErrors"]
        self.assertEqual(errors, [], "the Node SDK reported errors:\n" + out["_stderr"][-2000:])
        self.assertEqual(len(out["callbacks"]), 6)
        yield self.assert_landed(s.ch, expected_rows(events, NODE_LIBRARY, "server"))

    def test_node_gzip(self):
        return self.node(True)

    def test_node_plain(self):
        return self.node(False)


# Chromium's own background services (update checks, account lookups) try to reach these even
# on about:blank; the test proxy refuses them (nothing leaves the machine), and they are not
# the SDK's doing. Anything else refused by the proxy fails the test.
BROWSER_OWN_HOSTS = (".google.com", ".googleapis.com", ".gstatic.com", ".gvt1.com")


def proxied_host(line):
    method, _, target = line.partition(" ")
    if method == "CONNECT":
        return target.rsplit(":", 1)[0]
    return urllib.parse.urlsplit(target).hostname or target


class BrowserProxySinkTests(unittest.TestCase):
    """The test proxy Chromium is given: it refuses, and outlives, tunnels Chromium resets."""

    @defer.inlineCallbacks
    def test_survives_reset_tunnels(self):
        if not _node():
            raise unittest.SkipTest("node is not installed")
        # a reset tunnel used to be an unhandled 'error' that ended browser.js mid-test
        out = yield run_json([_node(), os.path.join(SDK_DIR, "sink_check.js")], timeout=30)
        self.assertEqual(out["answers"], ["HTTP/1.1 403 Forbidden"] * 3)
        self.assertEqual(out["proxied"], [f"CONNECT {h}.example:443" for h in "abc"])


class BrowserSDKTests(SDKTestCase):
    """The browser SDKs in headless Chromium, on another origin, Stilgar as data and control plane."""

    @defer.inlineCallbacks
    def run_page(self, sdk, mode):
        need_browser()
        s = yield shared_stilgar()
        label = f"browser-{sdk}-{mode}"
        uid, gid = f"{label}-user-{RUN}", f"{label}-group-{RUN}"
        out = yield browser({"stilgar": s.base, "writeKey": KEY, "sdk": sdk, "mode": mode,
                             "pagePort": s.page_port, "uid": uid, "gid": gid, "label": label,
                             "expect": 5, "timeoutMs": 25000})
        summary = json.dumps({k: out.get(k) for k in ("result", "timedOut", "error", "console")}, indent=1)
        self.assertIsNone(out.get("error"), summary)
        # nothing but the loopback servers: every request the browser made, and the proxy sink
        self.assertEqual(out["foreign"], [], "requests to other hosts")
        stray = [p for p in out["proxied"] if not proxied_host(p).endswith(BROWSER_OWN_HOSTS)]
        self.assertEqual(stray, [], "requests refused by the test proxy")
        self.assertEqual([p for p in out["served"] if "/no-cdn" in p], [], "plugins/integrations loaded")
        # the control plane answered (its CORS preflight too), the SDK started
        config_requests = sorted((r["method"], r["status"]) for r in out["requests"] if "/sourceConfig" in r["url"])
        self.assertEqual(config_requests, [("GET", 200), ("OPTIONS", 204)], summary)
        self.assertTrue(out["result"].get("ready"), summary)
        self.assertFalse(out.get("timedOut"), summary)
        # the data plane requests, by transport (Chromium's log: preflights included)
        data_plane = [r for r in out["requests"] if r["url"].startswith(s.base) and "/sourceConfig" not in r["url"]]
        posts = [r for r in data_plane if r["method"] == "POST"]
        preflights = [r for r in data_plane if r["method"] == "OPTIONS"]
        paths = {urllib.parse.urlsplit(r["url"]).path for r in posts}
        if mode == "beacon":
            self.assertEqual(paths, {"/beacon/v1/batch"}, data_plane)
            self.assertEqual(preflights, [], "a beacon is a simple request")
            self.assertEqual({r["contentType"] for r in posts}, {"text/plain"})
        elif mode == "batch":
            self.assertEqual(paths, {"/v1/batch"}, data_plane)
        else:
            self.assertEqual(paths, {f"/v1/{t}" for t in ("page", "track", "identify", "group", "alias")},
                             data_plane)
        if mode != "beacon":   # Stilgar itself answered the preflights (no interception in the driver)
            self.assertTrue(preflights, data_plane)
            self.assertEqual({r["status"] for r in preflights}, {204}, preflights)
        failed = [r for r in data_plane if r["failure"] or r["status"] not in (200, 204)]
        self.assertEqual(failed, [], "data-plane requests that failed:\n" + summary)
        if mode != "beacon":
            self.assertEqual(len(posts), 1 if mode == "batch" else 5, "retries or extra requests")
        # what the SDK sent, as recorded by Chromium, must be in ClickHouse exactly once
        by_id = {}
        for e in out["events"]:
            by_id.setdefault(e["messageId"], e)
        sent = list(by_id.values())
        self.assertEqual(sorted(e["type"] for e in sent), ["alias", "group", "identify", "page", "track"])
        neutral = []
        for e in sent:
            n = {k: e.get(k) for k in ("type", "messageId", "userId", "anonymousId", "event", "name",
                                       "category", "groupId", "previousId")}
            if e["type"] == "identify":
                n["traits"] = e["context"]["traits"]
                self.assertEqual(n["userId"], uid)
            elif e["type"] == "group":
                n["traits"] = e["traits"]
            elif e["type"] == "alias":
                self.assertEqual((e["previousId"], e["userId"]), (uid, uid + "-alias"))
            elif e["type"] == "page":
                keep = ("sdk_label", "section", "path", "url", "title", "name", "category")
                n["properties"] = {k: v for k, v in e["properties"].items() if k in keep}
                self.assertEqual(n["properties"]["sdk_label"], label)
            elif e["type"] == "track":
                n["properties"] = e["properties"]
            if n["userId"] == "":
                n["userId"] = Either("", None)
            neutral.append(n)
        tables = expected_rows(neutral, BROWSER_LIBRARY[sdk], "web")
        for table, rows in tables.items():        # the browser's context columns
            if table != "users":
                for columns in rows.values():
                    columns.update(context_page_path=f"/pages/{sdk}.html", context_screen_width=1280,
                                   context_app_name=BROWSER_LIBRARY[sdk][0])
        self.assertEqual(tables["product_viewed"][by_type(sent, "track")]["price"], 12.5)
        yield self.assert_landed(s.ch, tables)

    def test_v3_xhr(self):
        return self.run_page("v3", "xhr")

    def test_v3_batch(self):
        return self.run_page("v3", "batch")

    def test_v3_beacon(self):
        return self.run_page("v3", "beacon")

    def test_v2_xhr(self):
        return self.run_page("v2", "xhr")

    def test_v2_beacon(self):
        return self.run_page("v2", "beacon")

    @defer.inlineCallbacks
    def test_disallowed_origin(self):
        """A page on an origin not in server.origins: the browser sees network errors, Stilgar 403s."""
        need_browser()
        s = yield shared_stilgar()
        label = f"browser-origin-{RUN}"
        other_port = free_port()
        out = yield browser({"stilgar": s.base, "writeKey": KEY, "sdk": "v3", "mode": "xhr",
                             "pagePort": other_port, "uid": "u-" + label, "gid": "g-" + label,
                             "label": label, "probe": True, "timeoutMs": 15000})
        self.assertIsNone(out.get("error"), out)
        self.assertEqual(out["foreign"], [])
        result = out["result"]
        self.assertTrue(result.get("probed"), out)
        self.assertFalse(result.get("ready"), "the SDK must not start without its source config")
        for name in ("xhr", "simple"):
            self.assertTrue(result["probes"][name].startswith("error TypeError"), result["probes"])
        # Chromium's log: Stilgar refused each preflight (403), so the requests failed CORS
        stilgar_requests = [r for r in out["requests"] if r["url"].startswith(s.base)]
        preflights = [r for r in stilgar_requests if r["method"] == "OPTIONS"]
        others = [r for r in stilgar_requests if r["method"] != "OPTIONS"]
        self.assertEqual(sorted(urllib.parse.urlsplit(r["url"]).path for r in others),
                         ["/beacon/v1/batch", "/sourceConfig/", "/v1/track"], stilgar_requests)
        self.assertTrue(preflights and all(r["status"] == 403 for r in preflights), stilgar_requests)
        for r in others:
            self.assertEqual((r["status"], r["failure"]), (None, "net::ERR_FAILED"), r)
            self.assertIn("AllowOriginHeader", r["cors"] or "", r)
        # what Stilgar answered to that origin
        origin = out["pageOrigin"]
        status, body, headers = yield fetch(
            "OPTIONS", s.base + "/v1/track",
            headers={"Origin": [origin], "Access-Control-Request-Method": ["POST"],
                     "Access-Control-Request-Headers": ["authorization,content-type"]})
        self.assertEqual((status, body), (403, b"origin not allowed\n"))
        status, body, headers = yield fetch(
            "POST", f"{s.base}/beacon/v1/batch?writeKey={KEY}", headers={"Origin": [origin], "Content-Type": ["text/plain"]},
            data=json.dumps({"batch": [{"type": "track", "event": "Probe", "anonymousId": "x"}]}).encode())
        self.assertEqual((status, body), (403, b"origin not allowed\n"))
        self.assertFalse(headers.hasHeader("Access-Control-Allow-Origin"))
        # and nothing was stored: a sentinel sent afterwards lands, the probes do not
        sentinel = str(uuid.uuid4())
        status, body, _ = yield fetch("POST", s.base + "/v1/track", headers=auth(KEY), data=json.dumps(
            {"type": "track", "event": "Origin Sentinel", "anonymousId": label, "messageId": sentinel}).encode())
        self.assertEqual((status, body), (200, b"OK"))
        yield self.assert_landed(s.ch, {"tracks": {sentinel: {"anonymous_id": label}}})
        probes = yield s.ch.rows("tracks", "anonymous_id", ["probe-" + label, "x"])
        self.assertEqual(probes, [])


def by_type(events, kind):
    return next(e["messageId"] for e in events if e["type"] == kind)


def auth(key):
    return {"Authorization": [b"Basic " + base64.b64encode(key.encode() + b":")]}


class PixelTests(SDKTestCase):
    @defer.inlineCallbacks
    def test_pixel_like_an_email_client(self):
        """GET /pixel/v1/{track,page} with an image Accept header and no Origin: a GIF, and rows."""
        s = yield shared_stilgar()
        anon_track, anon_page = f"pixel-track-{RUN}", f"pixel-page-{RUN}"
        headers = {"Accept": ["image/avif,image/webp,image/apng,image/*,*/*;q=0.8"],
                   "User-Agent": ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) Microsoft Outlook 16.0"]}
        for route, params in (("track", {"writeKey": KEY, "anonymousId": anon_track, "event": "Email Opened",
                                         "properties.x": "campaign-7"}),
                              ("page", {"writeKey": KEY, "anonymousId": anon_page, "name": "Newsletter",
                                        "properties.x": "issue-12"})):
            status, body, h = yield fetch("GET", f"{s.base}/pixel/v1/{route}?{urllib.parse.urlencode(params)}",
                                          headers=headers)
            self.assertEqual(status, 200, body)
            self.assertEqual(len(body), 43)
            self.assertTrue(body.startswith(b"GIF89a") or body.startswith(b"GIF87a"), body)
            self.assertEqual(h.getRawHeaders("Content-Type"), ["image/gif"])
            self.assertIn("no-store", h.getRawHeaders("Cache-Control")[0])

        def find(table, anon):
            return s.ch.rows(table, "anonymous_id", [anon])
        rows = {}

        @defer.inlineCallbacks
        def landed():
            for table, anon in (("tracks", anon_track), ("email_opened", anon_track), ("pages", anon_page)):
                rows[table] = yield find(table, anon)
            return all(rows.values())
        try:
            yield wait_for(landed, timeout=ROW_TIMEOUT, interval=0.25)
        except AssertionError:
            self.fail(f"pixel events not in ClickHouse after {ROW_TIMEOUT}s: {rows}")
        self.assertEqual([r["event"] for r in rows["tracks"]], ["Email Opened"])
        self.assertEqual([(r["event"], r["x"]) for r in rows["email_opened"]], [("Email Opened", "campaign-7")])
        self.assertEqual(rows["email_opened"][0]["id"], rows["tracks"][0]["id"])
        self.assertEqual([(r["name"], r["x"]) for r in rows["pages"]], [("Newsletter", "issue-12")])


class FailureTests(SDKTestCase):
    """What the real SDKs see when things go wrong."""

    @defer.inlineCallbacks
    def test_wrong_write_key_python(self):
        need_python_sdk()
        s = yield shared_stilgar()
        bad, good = str(uuid.uuid4()), str(uuid.uuid4())
        out = yield python_sdk(s.base, [
            {"writeKey": WRONG_KEY, "gzip": True, "maxRetries": 2, "calls": [
                {"method": "track", "kwargs": {"user_id": "wk-py", "event": "Wrong Key", "message_id": bad}}]},
            {"writeKey": KEY, "gzip": True, "calls": [
                {"method": "track", "kwargs": {"user_id": "wk-py", "event": "Right Key", "message_id": good}}]}])
        errors = out["errors"]
        self.assertEqual(len(errors), 1, errors)
        # 401 as rudder-server answers (doc/sdks.md); the SDK drops any 4xx but 429 at once
        self.assertEqual((errors[0]["client"], errors[0]["status"], errors[0]["messageIds"]), (0, 401, [bad]))
        self.assertEqual(errors[0]["message"].strip().lower(), "invalid write key")
        yield self.assert_landed(s.ch, {"tracks": {good: {"event": "Right Key"}}})
        self.assertEqual((yield s.ch.rows("tracks", "id", [bad])), [])

    @defer.inlineCallbacks
    def test_wrong_write_key_node(self):
        need_node_package("@rudderstack/rudder-sdk-node")
        s = yield shared_stilgar()
        bad, good = str(uuid.uuid4()), str(uuid.uuid4())
        out = yield node_sdk(s.base, [
            {"writeKey": WRONG_KEY, "gzip": True, "calls": [
                {"method": "track", "message": {"userId": "wk-node", "event": "Wrong Key", "messageId": bad}}]},
            {"writeKey": KEY, "gzip": False, "calls": [
                {"method": "track", "message": {"userId": "wk-node", "event": "Right Key", "messageId": good}}]}])
        self.assertFalse(out.get("timedOut"), out)
        by_id = {c["messageId"]: c["error"] for c in out["callbacks"]}
        self.assertIsNone(by_id[good])
        self.assertEqual(by_id[bad]["status"], 401, by_id)
        self.assertEqual(by_id[bad]["body"].strip().lower(), "invalid write key")
        yield self.assert_landed(s.ch, {"tracks": {good: {"event": "Right Key"}}})
        self.assertEqual((yield s.ch.rows("tracks", "id", [bad])), [])

    @defer.inlineCallbacks
    def test_clickhouse_unreachable_then_back(self):
        """ClickHouse down: the SDK still gets 200s (the spool holds); after a restart with the right
        address, on the same spool, every event arrives."""
        need_python_sdk()
        s = yield shared_stilgar()           # for the ClickHouse settings
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        closed = free_port()       # nothing listens there: ClickHouse is "down"
        database = f"sdk_{RUN}_down"
        ch = ClickHouse(s.ch.url, s.ch.user, s.ch.password, database)
        self.addCleanup(threads.deferToThread, ch.drop_blocking)
        args = ["-n", "--pidfile=", "stilgar", "--config", os.path.join(directory, "stilgar.yml"),
                "--listen", "tcp:0:interface=127.0.0.1"]
        stilgar_config(directory, 0, ch, database, [], ch_port=closed)
        first = StilgarProcess(args, cwd=directory)
        self.addCleanup(lambda: first.kill() if first.watcher and not first.watcher.ended.called else None)
        try:
            yield first.start()
        except Exception:
            self.fail("stilgar did not start with ClickHouse down:\n" + first.output())
        base = f"http://127.0.0.1:{LISTENING.search(first.output()).group(1)}"
        events = six_events("python-chdown")
        out = yield python_sdk(base, [{"writeKey": KEY, "gzip": True, "maxRetries": 1,
                                       "calls": python_calls(events)}])
        self.assertEqual(out["errors"], [], "the SDK must get 200s while the spool holds:\n" + first.output())
        status, body, _ = yield fetch("GET", base + "/health")
        health = json.loads(body)
        self.assertTrue(health["acceptingEvents"], health)
        self.assertEqual(health["destinations"]["sdk:" + database]["status"], "DOWN", health)
        self.assertEqual((yield ch.rows("tracks", "id", [by_type(events, "track")])), [])
        code = yield first.stop()
        self.assertEqual(code, 0, first.output())
        # the operator fixes the address and restarts on the same spool
        stilgar_config(directory, 0, ch, database, [])
        second = StilgarProcess(args, cwd=directory)
        self.addCleanup(lambda: second.stop() if second.watcher and not second.watcher.ended.called else None)
        try:
            yield second.start()
        except Exception:
            self.fail("stilgar did not restart:\n" + second.output())
        try:
            yield self.assert_landed(ch, expected_rows(events, PYTHON_LIBRARY, "server"))
        except AssertionError as e:
            raise AssertionError(f"{e}\nfirst run:\n{first.output()[-3000:]}\nsecond run:\n{second.output()[-3000:]}")
        for run in (first, second):
            self.assertNotIn("Traceback", run.output(), run.output()[-4000:])
