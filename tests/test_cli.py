"""The ``stilgar`` command: check, version, spool; and twistd's own options."""

import io
import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from stilgar import cli
from stilgar.forwarder import Record
from stilgar.spool import Spool

from .processes import ROOT, TWISTD

STILGAR = [sys.executable, "-m", "stilgar.cli"]
GOOD = "server:\n  port: 8080\ndestinations:\n  - type: blackhole\n    write_keys: [k]\n"
BAD = ("server:\n  prot: 8080\n  read_timeout: abc\n"
       "destinations:\n  - type: blackhole\n    write_keys: [k]\n    nmae: x\n")


def run(*args, env=None, cwd=None):
    return subprocess.run(STILGAR + list(args), capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


class CheckTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, *argv, environ=None):
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["check", *argv], out, err, environ=environ or {})
        return code, out.getvalue(), err.getvalue()

    def test_valid(self):
        path = self.write("stilgar.yml", GOOD)
        self.assertEqual(self.check(path), (0, f"{path}: OK (1 destination(s): blackhole)\n", ""))

    def test_invalid_prints_every_problem_with_its_line(self):
        path = self.write("stilgar.yml", BAD)
        code, out, err = self.check(path)
        self.assertEqual((code, out), (78, ""))
        self.assertEqual(err.splitlines(), [
            f"{path}:2: server.prot: unknown key; did you mean 'port'?",
            f"{path}:3: server.read_timeout: cannot read 'abc' as a duration (e.g. 5s, 1m, 1h 30m)",
            f"{path}:7: destinations[0].nmae: unknown key; did you mean 'name'?"])

    def test_warnings_do_not_fail(self):
        path = self.write("stilgar.yml", GOOD + "spool:\n  enabled: false\n")
        code, out, err = self.check(path)
        self.assertEqual(code, 0)
        self.assertIn("warning: spool.enabled is false", err)

    def test_search_order_is_the_servers(self):
        """No argument: $STILGAR_CONFIG, then the search path, as twistd stilgar."""
        env_file = self.write("env.yml", GOOD)
        self.assertEqual(self.check(environ={"STILGAR_CONFIG": env_file})[1],
                         f"{env_file}: OK (1 destination(s): blackhole)\n")
        from stilgar.config import config_search_path
        if any(os.path.exists(p) for p in config_search_path({}, "/")[:4]):
            raise unittest.SkipTest("a real /etc/stilgar or /etc/withings configuration exists")
        xdg = self.write(os.path.join("xdg", "stilgar", "stilgar.yaml"), BAD)
        code, _, err = self.check(environ={"XDG_CONFIG_HOME": os.path.join(self.dir, "xdg"),
                                           "HOME": self.dir})
        self.assertEqual(code, 78)
        self.assertTrue(err.startswith(f"{xdg}:2: server.prot"), err)

    def test_nothing_found(self):
        from stilgar.config import config_search_path
        if any(os.path.exists(p) for p in config_search_path({}, "/")[:4]):
            raise unittest.SkipTest("a real /etc/stilgar or /etc/withings configuration exists")
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty)
        result = run("check", env={"HOME": empty, "XDG_CONFIG_HOME": empty, "STILGAR_CONFIG": ""}, cwd=empty)
        self.assertEqual(result.returncode, 78, result.stderr)
        self.assertIn("no configuration file found", result.stderr)

    def test_command_line_exit_codes(self):
        self.assertEqual(run("check", self.write("good.yml", GOOD)).returncode, 0)
        result = run("check", self.write("bad.yml", BAD))
        self.assertEqual(result.returncode, 78)
        self.assertEqual(len(result.stderr.splitlines()), 3, result.stderr)
        self.assertEqual(run("frobnicate").returncode, 64)
        self.assertEqual(run().returncode, 64)

    def clickhouse_config(self, url):
        return self.write("ch.yml", (
            "destinations:\n  - type: clickhouse\n    url: ${CH_URL}\n    user: ${CH_USER}\n"
            "    password_file: ${PW_FILE}\n    database: stilgar_ops_cli\n    write_keys: [k]\n"
            "    query_timeout: 5s\n  - type: blackhole\n    write_keys: [b]\n"))

    def test_connect_unreachable_is_69(self):
        path = self.clickhouse_config(None)
        pw = self.write("pw", "x\n")
        result = run("check", "--connect", path, env={"CH_URL": "http://127.0.0.1:9", "CH_USER": "u",
                                                        "PW_FILE": pw})
        self.assertEqual(result.returncode, 69, result.stdout + result.stderr)
        self.assertIn("clickhouse:stilgar_ops_cli: cannot connect", result.stderr)
        self.assertIn("blackhole: nothing to connect to", result.stdout)

    def test_connect_to_real_clickhouse(self):
        url = os.environ.get("STILGAR_TEST_CLICKHOUSE_URL")
        if not url:
            raise unittest.SkipTest("STILGAR_TEST_CLICKHOUSE_URL is not set")
        path = self.clickhouse_config(url)
        pw = self.write("pw", os.environ.get("STILGAR_TEST_CLICKHOUSE_PASSWORD", "") + "\n")
        env = {"CH_URL": url, "CH_USER": os.environ.get("STILGAR_TEST_CLICKHOUSE_USER", "default"), "PW_FILE": pw}
        result = run("check", "--connect", path, env=env)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"clickhouse:stilgar_ops_cli: connected: ClickHouse \d+\.\d+")
        self.write("pw", "wrong-password\n")
        result = run("check", "--connect", path, env=env)
        self.assertEqual(result.returncode, 69, result.stdout + result.stderr)


class VersionTests(unittest.TestCase):
    def test_version(self):
        import twisted
        import platform
        for argv in (["version"], ["--version"]):
            out = io.StringIO()
            self.assertEqual(cli.main(argv, out, io.StringIO()), 0)
            self.assertEqual(out.getvalue(), f"Stilgar {cli.__version__}, Python {platform.python_version()}"
                                             f" ({sys.implementation.name}), Twisted {twisted.__version__}\n")

    def test_console_script_is_declared(self):
        with open(os.path.join(ROOT, "setup.cfg")) as f:
            self.assertIn("stilgar = stilgar.cli:run", f.read())


class TwistdOptionsTests(unittest.TestCase):
    def twistd(self, *args):
        return subprocess.run(TWISTD + list(args), capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=ROOT))

    def test_version_is_stilgars(self):
        result = self.twistd("stilgar", "--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, cli.versions() + "\n")

    def test_help_hides_internal_options(self):
        result = self.twistd("stilgar", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--config", result.stdout)
        self.assertNotIn("--worker", result.stdout)
        self.assertNotIn("internal", result.stdout)

    def test_internal_options_still_parse(self):
        from twisted.plugins.stilgar_plugin import Options
        options = Options()
        options.parseOptions(["--worker", "2", "--worker-fd", "5"])
        self.assertEqual((options["worker"], options["worker-fd"]), ("2", "5"))


class SpoolCommandTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def make_spool(self, directory, requests):
        spool = Spool(directory, fsync=False, reactor=reactor)
        spool.open()
        spool.start()
        positions = []
        for i, n in enumerate(requests):
            events = [{"messageId": f"m-{i}-{j}", "receivedAt": f"2024-01-0{i + 1}T00:00:00.000Z"}
                      for j in range(n)]
            payload = Record("k", f"r-{i}", events).encode()
            pos = yield spool.append(payload)
            positions.append((pos, Spool.record_end(pos, len(payload))))
        return spool, positions

    def snapshot(self, directory):
        return {name: (os.stat(os.path.join(directory, name)).st_size,
                       open(os.path.join(directory, name), "rb").read())
                for name in sorted(os.listdir(directory))}

    @defer.inlineCallbacks
    def test_segments_cursors_backlog_and_read_only_while_open(self):
        directory = os.path.abspath(self.mktemp())
        spool, positions = yield self.make_spool(directory, [2, 3, 1])
        self.addCleanup(spool.close)
        # "ch" has confirmed the first request; "bh" nothing yet
        yield spool.save_cursor("ch", positions[0][1])
        yield spool.save_cursor("bh", positions[0][0])
        before = self.snapshot(directory)
        info = cli.inspect_spool(directory)
        self.assertEqual(self.snapshot(directory), before)      # nothing written, nothing locked
        self.assertEqual(sum(s.records for s in info.segments), 3)
        self.assertEqual(sum(s.events for s in info.segments), 6)
        self.assertEqual(info.problems, [])
        self.assertEqual(info.locked_by, str(os.getpid()))
        cursors = {c.name: c for c in info.cursors}
        self.assertEqual((cursors["ch"].backlog_records, cursors["ch"].backlog_events), (2, 4))
        self.assertEqual(cursors["ch"].oldest_received_at, "2024-01-02T00:00:00.000Z")
        self.assertEqual((cursors["bh"].backlog_records, cursors["bh"].backlog_events), (3, 6))
        out = io.StringIO()
        self.assertEqual(cli.main(["spool", directory], out, io.StringIO()), 0)
        text = out.getvalue()
        self.assertIn(f"{directory}: 1 segment(s)", text)
        self.assertIn("destination ch: cursor", text)
        self.assertIn("backlog 4 event(s) in 2 record(s)", text)
        out = io.StringIO()
        cli.main(["spool", "--json", directory], out, io.StringIO())
        self.assertEqual(json.loads(out.getvalue())[0]["path"], directory)

    @defer.inlineCallbacks
    def test_corruption_is_reported(self):
        directory = os.path.abspath(self.mktemp())
        spool, _ = yield self.make_spool(directory, [1, 1])
        yield spool.close()
        segment = [n for n in os.listdir(directory) if n.endswith(".seg")][-1]
        with open(os.path.join(directory, segment), "r+b") as f:
            f.seek(-3, 2)
            f.write(b"XYZ")   # inside the last record's payload: its checksum no longer matches
        with open(os.path.join(directory, "a.cursor"), "w") as f:
            f.write("{not json")
        info = cli.inspect_spool(directory)
        self.assertEqual(sum(s.records for s in info.segments), 1)
        self.assertEqual(len(info.problems), 2, info.problems)
        [damage] = [p for p in info.problems if p.startswith("segment ")]
        self.assertRegex(damage, r"^segment \d+: checksum mismatch at offset \d+ \(nothing good after it\); "
                                 r"the newest segment: normal while the server is writing$")
        self.assertTrue(any("unreadable cursor" in p for p in info.problems), info.problems)

    @defer.inlineCallbacks
    def test_workers_directories_and_missing_path(self):
        root = os.path.abspath(self.mktemp())
        for i in (0, 1):
            spool, _ = yield self.make_spool(os.path.join(root, f"worker-{i}"), [1])
            yield spool.close()
        out = io.StringIO()
        self.assertEqual(cli.main(["spool", root], out, io.StringIO()), 0)
        self.assertIn(os.path.join(root, "worker-0") + ":", out.getvalue())
        self.assertIn(os.path.join(root, "worker-1") + ":", out.getvalue())
        err = io.StringIO()
        self.assertEqual(cli.main(["spool", os.path.join(root, "nope")], io.StringIO(), err), 66)


class RegulationCommandTests(unittest.TestCase):
    """``stilgar regulations`` against a real collector (twistd), its URL and
    admin credentials read from the collector's configuration."""

    timeout = 90

    @defer.inlineCallbacks
    def test_file_show_list_and_journal(self):
        from twisted.internet import utils

        from .processes import StilgarProcess, free_port
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        config = os.path.join(directory, "stilgar.yml")
        with open(config, "w") as f:
            f.write(json.dumps({
                "server": {"ip": "127.0.0.1", "port": port,
                           "admin": {"username": "ops", "password": "ops-secret"}},
                "spool": {"path": os.path.join(directory, "spool")},
                "privacy": {"regulations_secret": "a-secret-of-at-least-16-bytes"},
                "destinations": [{"type": "blackhole", "write_keys": ["k"]}]}))
        server = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory,
                                ping_url=f"http://127.0.0.1:{port}/ping")
        yield server.start()
        self.addCleanup(server.stop)

        @defer.inlineCallbacks
        def stilgar(*args, env=None):
            out, err, code = yield utils.getProcessOutputAndValue(
                sys.executable, ["-m", "stilgar.cli", *args], env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
                path=directory)
            return out.decode(), err.decode(), code

        out, err, code = yield stilgar("regulations", "--config", config, "file", "SUPPRESS", "USER_ID", "u1", "u2")
        self.assertEqual(code, 0, err)
        filed = json.loads(out)
        self.assertEqual(filed["status"], "FINISHED")
        out, err, code = yield stilgar("regulations", "--config", config, "show", filed["id"])
        self.assertEqual((code, json.loads(out)["id"]), (0, filed["id"]), err)
        out, err, code = yield stilgar("regulations", "--config", config, "list")
        self.assertEqual([r["id"] for r in json.loads(out)], [filed["id"]], err)
        out, err, code = yield stilgar("regulations", "--config", config, "journal")
        self.assertEqual(code, 0, err)
        self.assertEqual([r["regulationType"] for r in json.loads(out)], ["SUPPRESS"])
        self.assertNotIn("u1", out)        # the journal holds HMACs, never the ids
        # wrong credentials: the collector refuses (69); a malformed regulation is a usage error (64)
        out, err, code = yield stilgar("regulations", "--config", config, "--user", "ops", "--password-env", "PW",
                                       "list", env={"PW": "wrong"})
        self.assertEqual(code, cli.EX_UNAVAILABLE, err)
        self.assertIn("403", err)
        out, err, code = yield stilgar("regulations", "--config", config, "file", "SUPPRESS", "USER_ID", "")
        self.assertEqual(code, cli.EX_USAGE, err)
