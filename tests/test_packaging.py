"""contrib/ and packaging: the alert rules (promtool), the Grafana dashboard, the systemd unit, the .deb."""

import json
import os
import re
import shutil
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks as defer_inline
from twisted.trial import unittest

from stilgar import metrics

from .processes import ROOT

CONTRIB = os.path.join(ROOT, "contrib")
_METRIC_RE = re.compile(r"\b((?:stilgar|process|python)_[a-z_]+)\b")


def exported_names():
    """Every series name /metrics can show (histogram and counter suffixes included)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        for s in family.samples:
            names.add(s.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def referenced(expr):
    return set(_METRIC_RE.findall(expr))


class AlertRulesTests(unittest.TestCase):
    path = os.path.join(CONTRIB, "prometheus", "alerts.yml")

    def test_every_metric_referenced_exists(self):
        import yaml
        with open(self.path) as f:
            doc = yaml.safe_load(f)
        names = exported_names()
        alerts = [rule for group in doc["groups"] for rule in group["rules"]]
        self.assertTrue({"StilgarSpoolFilling", "StilgarDestinationDown", "StilgarDiscardsRising",
                         "StilgarServerErrors", "StilgarBacklogNotDraining"} <= {a["alert"] for a in alerts})
        for rule in alerts:
            missing = referenced(rule["expr"]) - names
            self.assertEqual(missing, set(), rule["alert"])

    def promtool(self, *args):
        promtool = shutil.which("promtool")
        if promtool is None:
            raise unittest.SkipTest("promtool not installed (Debian: apt-get install prometheus)")
        return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)

    def test_promtool_check_rules(self):
        result = self.promtool("check", "rules", self.path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)

    def test_promtool_unit_tests_of_the_rules(self):
        result = self.promtool("test", "rules", os.path.join(CONTRIB, "prometheus", "alerts_test.yml"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class DashboardTests(unittest.TestCase):
    """A schema-ish check of contrib/grafana/stilgar.json (Grafana's dashboard JSON model)."""

    PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text", "heatmap"}

    def setUp(self):
        with open(os.path.join(CONTRIB, "grafana", "stilgar.json")) as f:
            self.dashboard = json.load(f)

    def test_top_level(self):
        d = self.dashboard
        for key, kind in (("title", str), ("uid", str), ("panels", list), ("schemaVersion", int),
                          ("templating", dict), ("time", dict), ("tags", list)):
            self.assertIsInstance(d.get(key), kind, key)
        self.assertLessEqual(len(d["uid"]), 40)
        variables = {v["name"] for v in d["templating"]["list"]}
        self.assertEqual(variables, {"datasource", "instance"})

    def test_panels(self):
        ids, cells = set(), set()
        for panel in self.dashboard["panels"]:
            self.assertIn(panel["type"], self.PANEL_TYPES, panel.get("title"))
            self.assertNotIn(panel["id"], ids)
            ids.add(panel["id"])
            self.assertTrue(panel.get("title"))
            grid = panel["gridPos"]
            self.assertTrue(all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"])
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    self.assertNotIn((x, y), cells, f"{panel['title']} overlaps another panel")
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": "${datasource}"})
            self.assertTrue(panel["targets"], panel["title"])
            refs = [t["refId"] for t in panel["targets"]]
            self.assertEqual(len(refs), len(set(refs)), panel["title"])

    def test_every_metric_referenced_exists(self):
        names = exported_names()
        seen = set()
        for panel in self.dashboard["panels"]:
            for target in panel.get("targets", []):
                missing = referenced(target["expr"]) - names
                self.assertEqual(missing, set(), f"{panel['title']}: {target['expr']}")
                seen |= referenced(target["expr"])
        for name in ("stilgar_spool_max_bytes", "stilgar_http_request_duration_seconds_bucket",
                     "stilgar_build_info", "process_resident_memory_bytes"):
            self.assertIn(name, seen)


def _run(argv, env=None, path=None):
    """(out, err, exit code) of a command, without blocking the reactor. Not
    with the test runner's PYTHONPATH (trial -j2 sets one for its workers):
    the installed programs must run as a user runs them, on their own files."""
    from twisted.internet import utils
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    d = utils.getProcessOutputAndValue(argv[0], argv[1:], env=dict(base, **(env or {})), path=path)
    return d.addCallback(lambda r: (r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace"), r[2]))


def _unit_value(unit_text, key):
    for line in unit_text.splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise KeyError(key)


class DebianPackageTests(unittest.TestCase):
    """The .deb round trip (doc/operations.md, "Debian package"): build, install, check the
    installed config, verify the unit, run the unit's ExecStart as the stilgar user (no
    systemd in CI), send an event, purge. Needs root and dpkg; STILGAR_TEST_DEB=0 skips it."""

    timeout = 1200

    def setUp(self):
        if os.environ.get("STILGAR_TEST_DEB") == "0":
            raise unittest.SkipTest("STILGAR_TEST_DEB=0")
        if os.geteuid() != 0:
            raise unittest.SkipTest("installing a .deb needs root")
        for tool in ("dpkg", "dpkg-deb", "setpriv"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest(f"{tool} is missing")
        if subprocess.run(["dpkg", "-s", "stilgar"], capture_output=True).returncode == 0:
            raise unittest.SkipTest("a stilgar package is installed on this machine: not touching it")

    def notify_socket(self):
        import socket
        import tempfile
        directory = tempfile.mkdtemp(prefix="stl-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        os.chmod(path, 0o777)       # the stilgar user sends to it
        sock.setblocking(False)
        self.addCleanup(sock.close)
        return sock, path

    def drop_database(self, database):
        import treq
        url = os.environ["STILGAR_TEST_CLICKHOUSE_URL"]
        d = treq.post(url + "/", data=f"DROP DATABASE IF EXISTS {database}".encode(), headers={
            "X-ClickHouse-User": os.environ.get("STILGAR_TEST_CLICKHOUSE_USER", "default"),
            "X-ClickHouse-Key": os.environ.get("STILGAR_TEST_CLICKHOUSE_PASSWORD", "")}, persistent=False)
        return d.addCallback(treq.content)

    @defer_inline
    def test_build_install_run_purge(self):
        from twisted.internet import reactor

        from .processes import _Watcher, fetch, free_port, wait_for
        out_dir = os.path.abspath(self.mktemp())
        # with this process's sys.path as PYTHONPATH (as trial -j2 gives its workers): the package's
        # virtualenv must not take Stilgar or its dependencies as installed from it (it did once:
        # no console scripts)
        out, err, code = yield _run(["/bin/bash", os.path.join(ROOT, "scripts", "build-deb"), out_dir],
                                    env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        self.assertEqual(code, 0, out[-3000:] + err[-3000:])
        deb = out.strip().splitlines()[-1]
        self.assertTrue(deb.endswith("_amd64.deb") or deb.endswith(".deb"), deb)

        self.addCleanup(_run, ["dpkg", "--purge", "stilgar"])
        out, err, code = yield _run(["dpkg", "-i", deb])
        self.assertEqual(code, 0, out + err)
        self.assertEqual(subprocess.run(["id", "-u", "stilgar"], capture_output=True).returncode, 0)

        # the installed config, checked by the installed command, as root and as the service user
        out, err, code = yield _run(["/usr/bin/stilgar", "check"])
        self.assertEqual((code, out), (0, "/etc/stilgar/stilgar.yml: OK (1 destination(s): clickhouse:stilgar)\n"),
                         err)
        with open("/lib/systemd/system/stilgar.service") as f:
            unit = f.read()
        pre = _unit_value(unit, "ExecStartPre").split()
        out, err, code = yield _run(["setpriv", "--reuid=stilgar", "--regid=stilgar", "--init-groups", *pre])
        self.assertEqual(code, 0, out + err)
        if shutil.which("systemd-analyze"):
            out, err, code = yield _run(["systemd-analyze", "verify", "/lib/systemd/system/stilgar.service"])
            self.assertEqual(code, 0, out + err)

        # the unit's ExecStart, by hand, with what systemd would give it
        port = free_port()
        sock, notify_path = self.notify_socket()
        env = {"STATE_DIRECTORY": "/var/lib/stilgar", "STILGAR_PORT": str(port), "STILGAR_IP": "127.0.0.1",
               "STILGAR_WRITE_KEY": "deb-write-key", "NOTIFY_SOCKET": notify_path}
        database = None
        if os.environ.get("STILGAR_TEST_CLICKHOUSE_URL"):
            database = f"stilgar_deb_{os.getpid()}"
            self.addCleanup(self.drop_database, database)
            env.update(STILGAR_CLICKHOUSE_URL=os.environ["STILGAR_TEST_CLICKHOUSE_URL"],
                       STILGAR_CLICKHOUSE_USER=os.environ.get("STILGAR_TEST_CLICKHOUSE_USER", "default"),
                       STILGAR_CLICKHOUSE_PASSWORD=os.environ.get("STILGAR_TEST_CLICKHOUSE_PASSWORD", ""),
                       STILGAR_CLICKHOUSE_DATABASE=database)
        argv = ["setpriv", "--reuid=stilgar", "--regid=stilgar", "--init-groups",
                *_unit_value(unit, "ExecStart").split()]
        watcher = _Watcher(b"listening on")
        transport = reactor.spawnProcess(watcher, "/usr/bin/setpriv", argv, env={**{
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}, **env},
            path=_unit_value(unit, "WorkingDirectory"))
        self.addCleanup(lambda: watcher.ended.called or transport.signalProcess("KILL"))
        ready = []

        def notified():
            try:
                ready.append(sock.recv(4096).decode())
            except BlockingIOError:
                pass
            return any(m.startswith("READY=1") for m in ready)
        yield wait_for(notified, timeout=60)
        base = f"http://127.0.0.1:{port}"
        import base64
        auth = {b"Authorization": [b"Basic " + base64.b64encode(b"deb-write-key:")]}
        event = {"type": "track", "event": "Deb Installed", "anonymousId": "deb-1", "messageId": "deb-m-1"}
        status, body, _ = yield fetch("POST", base + "/v1/track", data=json.dumps(event).encode(), headers=auth)
        self.assertEqual((status, body), (200, b"OK"), watcher.text())
        status, body, _ = yield fetch("GET", base + "/health")
        self.assertTrue(json.loads(body)["acceptingEvents"], body)
        if database is not None:
            def forwarded():
                d = fetch("GET", base + "/status")
                return d.addCallback(lambda r: json.loads(r[1])["events"]["forwarded"].get("tracks") == 1)
            yield wait_for(forwarded, timeout=60)
        transport.signalProcess("TERM")
        code = yield watcher.ended
        self.assertEqual(code, 0, watcher.text())
        self.assertIn("stopped cleanly", watcher.text())
        self.assertNotIn("Traceback", watcher.text())
        out, err, code = yield _run(["/usr/bin/stilgar", "spool", "/var/lib/stilgar/spool"])
        self.assertEqual(code, 0, err)
        self.assertIn("1 event(s)", out)

        out, err, code = yield _run(["dpkg", "--purge", "stilgar"])
        self.assertEqual(code, 0, out + err)
        self.assertNotEqual(subprocess.run(["id", "-u", "stilgar"], capture_output=True).returncode, 0)
        for gone in ("/opt/stilgar", "/var/lib/stilgar", "/etc/stilgar", "/usr/bin/stilgar"):
            self.assertFalse(os.path.lexists(gone), gone)
