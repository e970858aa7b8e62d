"""End to end: Stilgar under ``twistd -n`` (plugin and .tac), real HTTP, SIGTERM."""

import base64
import gzip
import json
import os
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from .processes import ROOT, TWISTD, StilgarProcess, fetch, free_port

KEY = "e2e-blackhole-key"
AUTH = {b"Authorization": [b"Basic " + base64.b64encode(KEY.encode() + b":")]}


def write_config(directory, port, extra=""):
    path = os.path.join(directory, "stilgar.yml")
    with open(path, "w") as f:
        f.write(f"""
server:
  ip: 127.0.0.1
  port: {port}
  origins: ["http://localhost:9999"]
spool:
  path: {os.path.join(directory, "spool")}
logging:
  level: info
destinations:
  - type: blackhole
    write_keys: [{KEY}]
{extra}""")
    return path


def event(kind, **fields):
    e = {"type": kind, "anonymousId": "a-1", "messageId": f"m-{kind}", "userId": "u-1",
         "event": "Clicked", "previousId": "p", "groupId": "g"}
    e.update(fields)
    return e


class ProcessTestCase(unittest.TestCase):
    """A directory and a free port for one collector process."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"


class TwistdTests(ProcessTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def exercise(self, process):
        self.addCleanup(lambda: process.kill() if process.watcher and not process.watcher.ended.called else None)
        try:
            yield process.start()
        except Exception:
            self.fail("stilgar did not start:\n" + process.output())
        batch = gzip.compress(json.dumps({"batch": [event("track"), event("page")]}).encode())
        status, body, _ = yield fetch("POST", self.base + "/v1/batch", data=batch,
                                      headers={**AUTH, b"Content-Encoding": [b"gzip"]})
        self.assertEqual((status, body), (200, b"OK"))
        for kind in ("identify", "track", "page", "screen", "group", "alias"):
            status, body, _ = yield fetch("POST", f"{self.base}/v1/{kind}",
                                          data=json.dumps(event(kind)).encode(), headers=AUTH)
            self.assertEqual((status, body), (200, b"OK"), kind)
        status, body, _ = yield fetch("POST", f"{self.base}/beacon/v1/batch?writeKey={KEY}",
                                      data=json.dumps({"batch": [event("track")]}).encode(),
                                      headers={b"Content-Type": [b"text/plain"]})
        self.assertEqual((status, body), (200, b"OK"))
        status, body, _ = yield fetch("GET", f"{self.base}/pixel/v1/page?writeKey={KEY}&anonymousId=px")
        self.assertEqual((status, len(body)), (200, 43))
        status, body, _ = yield fetch("POST", f"{self.base}/v1/track", data=b"{", headers=AUTH)
        self.assertEqual((status, body), (400, b"invalid json\n"))

        def forwarded():
            d = fetch("GET", self.base + "/status?with_destinations=true")
            d.addCallback(lambda r: json.loads(r[1]))
            return d
        from .processes import wait_for
        status_doc = yield wait_for(lambda: forwarded().addCallback(
            lambda doc: doc if sum(doc["events"]["forwarded"].values()) == 10 else None), timeout=20)
        self.assertEqual(status_doc["events"]["forwarded"],
                         {"aliases": 1, "groups": 1, "identifies": 1, "pages": 3, "screens": 1, "tracks": 3})
        self.assertEqual(status_doc["blackhole"]["accepted"], 10)
        status, body, _ = yield fetch("GET", self.base + "/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "UP"))
        code = yield process.stop()
        self.assertEqual(code, 0, process.output())
        self.assertIn("stopped cleanly", process.output())
        self.assertNotIn("Traceback", process.output())
        # the spool is closed last, after the forwarder: its close is the last thing before the end
        closed = process.output().index("/worker-0 closed")
        self.assertLess(closed, process.output().index("stopped cleanly"))

    def test_plugin(self):
        config = write_config(self.dir, self.port)
        return self.exercise(StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=self.dir))

    def test_tac(self):
        config = write_config(self.dir, self.port)
        return self.exercise(StilgarProcess(["-n", "--pidfile=", "-y", os.path.join(ROOT, "stilgar.tac")],
                                            cwd=self.dir, env={"STILGAR_CONFIG": config}))

    def test_bad_config_is_one_line_and_exit_78(self):
        config = write_config(self.dir, self.port, extra="    bogus: [")
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", config],
                                capture_output=True, text=True, cwd=self.dir, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 78)   # EX_CONFIG
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("stilgar.yml", result.stderr)
        path = write_config(self.dir, self.port).replace("stilgar.yml", "bad.yml")
        with open(path, "w") as f:
            f.write("server: {port: 99999}\ndestinations: [{type: blackhole, write_keys: [k]}]\n")
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", path],
                                capture_output=True, text=True, cwd=self.dir, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 78)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("server.port", result.stderr)

    def test_unknown_keys_stop_a_daemon_before_it_forks(self):
        """Every problem on stderr, before twistd daemonises and before anything listens."""
        path = os.path.join(self.dir, "typo.yml")
        with open(path, "w") as f:
            f.write(f"server:\n  ip: 127.0.0.1\n  prot: {self.port}\nspool:\n  fsnyc: false\n"
                    "destinations: [{type: blackhole, write_keys: [k]}]\n")
        logfile = os.path.join(self.dir, "daemon.log")
        result = subprocess.run(TWISTD + ["--pidfile", os.path.join(self.dir, "d.pid"), "--logfile", logfile,
                                          "stilgar", "--config", path],
                                capture_output=True, text=True, cwd=self.dir, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 78, result.stderr)
        self.assertEqual(result.stderr.splitlines(), [
            f"stilgar: configuration error: {path}:3: server.prot: unknown key; did you mean 'port'?",
            f"stilgar: configuration error: {path}:5: spool.fsnyc: unknown key; did you mean 'fsync'?"])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "d.pid")))


class DaemonTests(unittest.TestCase):
    """twistd's default mode forks: nothing (threads!) may be started before that."""

    timeout = 60

    @defer.inlineCallbacks
    def daemon_delivers_and_stops(self, args, env=None):
        """Start ``twistd --pidfile P --logfile L <args>`` (it forks), deliver an event, SIGTERM it;
        what it logged is in L."""
        from .processes import wait_for
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = write_config(directory, port)
        pidfile, logfile = os.path.join(directory, "twistd.pid"), os.path.join(directory, "stilgar.log")
        args = [a.replace("{config}", config) for a in args]
        result = subprocess.run(TWISTD + ["--pidfile", pidfile, "--logfile", logfile] + args,
                                capture_output=True, text=True, cwd=directory, timeout=30,
                                env=dict(os.environ, PYTHONPATH=ROOT, STILGAR_CONFIG=config))
        self.assertEqual(result.returncode, 0, result.stderr)
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: os.kill(pid, 9) if os.path.exists(f"/proc/{pid}") else None)
        ping = lambda: fetch("GET", base + "/ping").addCallbacks(lambda r: r[0] == 200, lambda f: False)
        yield wait_for(ping, timeout=20)
        status, body, _ = yield fetch("POST", base + "/v1/track", data=json.dumps(event("track")).encode(),
                                      headers=AUTH)
        self.assertEqual((status, body), (200, b"OK"))

        def forwarded():
            return fetch("GET", base + "/status").addCallback(
                lambda r: json.loads(r[1])["events"]["forwarded"]["tracks"] == 1)
        yield wait_for(forwarded, timeout=20)
        os.kill(pid, 15)
        yield wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                       open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=20)
        with open(logfile) as f:
            logged = f.read()
        self.assertIn("listening on", logged)
        self.assertIn("stopped cleanly", logged)

    def test_daemonised_collector_delivers_and_stops(self):
        return self.daemon_delivers_and_stops(["stilgar", "--config", "{config}"])

    def test_daemonised_tac_logs_to_its_logfile(self):
        # a .tac cannot see twistd's options: its --logfile was ignored, the log went to
        # the daemon's stdout (/dev/null)
        return self.daemon_delivers_and_stops(["-y", os.path.join(ROOT, "stilgar.tac")])


class TacLogfileTests(unittest.TestCase):
    """``twistd -y stilgar.tac``'s log file, read from its command line."""

    def test_the_log_file_of_a_command_line(self):
        from stilgar.launch import tac_logfile
        cases = [
            (["-y", "stilgar.tac", "--logfile", "/var/log/stilgar.log"], "/var/log/stilgar.log"),
            (["--logfile=x.log", "--pidfile", "p", "-y", "stilgar.tac"], "x.log"),
            (["-lb.log", "-noy", "stilgar.tac"], "b.log"),              # short flags, joined
            (["-y", "stilgar.tac"], "twistd.log"),                     # daemonised: twistd's default
            (["-ny", "stilgar.tac"], None),                            # in the foreground: stdout
            (["--logfile", "-", "-y", "stilgar.tac"], "-"),
            (["--reactor", "epoll", "-l", "a.log", "-y", "s.tac"], "a.log"),   # parsed, not installed
            (["-n", "stilgar", "--config", "c.yml"], None),            # not a .tac
            (["-j2", "tests"], None),                                  # not twistd at all
            ([], None),
        ]
        for argv, expected in cases:
            self.assertEqual(tac_logfile(argv), expected, argv)


class ListenFailureTests(unittest.TestCase):
    timeout = 60

    def test_busy_port_exits_1(self):
        import socket
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            config = write_config(directory, busy.getsockname()[1])
            result = subprocess.run(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", config],
                                    capture_output=True, text=True, cwd=directory, timeout=30,
                                    env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual((result.stdout + result.stderr).count("cannot listen"), 1,
                         result.stdout + result.stderr)

    @defer.inlineCallbacks
    def test_unix_socket_listen_is_logged_with_its_path(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = write_config(directory, free_port())
        import shutil
        import tempfile
        short = tempfile.mkdtemp(prefix="stl-")   # AF_UNIX paths are limited to 107 bytes
        self.addCleanup(shutil.rmtree, short, True)
        socket_path = os.path.join(short, "s.sock")
        process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config,
                                  "--listen", f"unix:{socket_path}"], cwd=directory)
        self.addCleanup(lambda: process.watcher.ended.called or process.kill())
        yield process.start()
        self.assertIn(f"listening on unix:{socket_path}", process.output())
        self.assertNotIn("?:?", process.output())
        code = yield process.stop()
        self.assertEqual(code, 0, process.output())


class LogHandlingTests(ProcessTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sigusr1_rotates_the_log_of_a_daemon(self):
        """SIGUSR1 killed a daemon started with --logfile; now it rotates, then reopens after logrotate."""
        from .processes import wait_for
        config = write_config(self.dir, self.port)
        pidfile, logfile = os.path.join(self.dir, "twistd.pid"), os.path.join(self.dir, "stilgar.log")
        result = subprocess.run(TWISTD + ["--pidfile", pidfile, "--logfile", logfile, "stilgar",
                                          "--config", config], capture_output=True, text=True, cwd=self.dir,
                                timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 0, result.stderr)
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: os.kill(pid, 9) if os.path.exists(f"/proc/{pid}") else None)
        ping = lambda: fetch("GET", self.base + "/ping").addCallbacks(lambda r: r[0] == 200, lambda f: False)
        yield wait_for(ping, timeout=20)
        os.kill(pid, 10)   # SIGUSR1
        yield wait_for(lambda: os.path.exists(logfile + ".1"), timeout=10)
        yield wait_for(lambda: "SIGUSR1: log file" in open(logfile).read(), timeout=10)
        self.assertIn("listening on", open(logfile + ".1").read())
        self.assertIn("rotated", open(logfile).read())
        # logrotate's way: move the file away, then signal
        os.rename(logfile, logfile + ".old")
        os.kill(pid, 10)
        yield wait_for(lambda: os.path.exists(logfile) and "reopened" in open(logfile).read(), timeout=10)
        status, body, _ = yield fetch("POST", self.base + "/v1/track",
                                      data=json.dumps(event("track")).encode(), headers=AUTH)
        self.assertEqual((status, body), (200, b"OK"))
        self.assertTrue(os.path.exists(f"/proc/{pid}"))
        os.kill(pid, 15)
        yield wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                       open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=20)
        self.assertIn("stopped cleanly", open(logfile).read())

    def test_syslog_option_is_refused_clearly(self):
        config = write_config(self.dir, self.port)
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "--syslog", "stilgar", "--config", config],
                                capture_output=True, text=True, cwd=self.dir, timeout=30,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 64, result.stdout + result.stderr)
        self.assertIn("--syslog is not supported: set logging.syslog", result.stderr)

    @defer.inlineCallbacks
    def test_logging_section_is_honoured_under_twist(self):
        from twisted.internet import reactor
        from .processes import _Watcher, _within

        config = write_config(self.dir, self.port).replace("stilgar.yml", "json.yml")
        with open(config, "w") as f:
            f.write(open(os.path.join(self.dir, "stilgar.yml")).read().replace("level: info",
                                                                               "level: info\n  format: json"))
        # `twist` (the newer runner) with this tree's plugin, as TWISTD does for twistd
        twist = TWISTD[:2] + [TWISTD[2].replace("from twisted.scripts.twistd import run; sys.exit(run())",
                                                "from twisted.application.twist._twist import Twist; Twist.main()")]
        process = StilgarProcess(["stilgar", "--config", config], cwd=self.dir)
        process.watcher = _Watcher(b"listening on")
        process.transport = reactor.spawnProcess(process.watcher, sys.executable,
                                                 twist + ["stilgar", "--config", config],
                                                 env=process.env, path=self.dir)
        self.addCleanup(lambda: process.watcher.ended.called or process.kill())
        yield _within(process.watcher.ready, 30)
        code = yield process.stop()
        lines = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
        self.assertTrue(lines, process.output())
        listening = [d for d in lines if d.get("message", "").startswith("listening on")]
        self.assertEqual(len(listening), 1, process.output())
        self.assertEqual((listening[0]["level"], listening[0]["namespace"]), ("info", "stilgar"))
        self.assertEqual(code, 0, process.output())


class SystemdNotifyTests(unittest.TestCase):
    """Type=notify: READY=1 once the port is bound and the spool open; STOPPING=1 at stop."""

    timeout = 60

    def notify_socket(self):
        import shutil
        import socket
        import tempfile
        directory = tempfile.mkdtemp(prefix="stl-")   # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory, True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(directory, "notify"))
        sock.settimeout(0)
        self.addCleanup(sock.close)
        return sock, os.path.join(directory, "notify")

    def received(self, sock):
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def test_notify_unit(self):
        from stilgar.systemd import notify
        sock, path = self.notify_socket()
        self.assertFalse(notify("READY=1", environ={}))
        self.assertTrue(notify("READY=1\nSTATUS=x", environ={"NOTIFY_SOCKET": path}))
        self.assertEqual(self.received(sock), ["READY=1\nSTATUS=x"])
        self.assertRaises(OSError, notify, "READY=1", environ={"NOTIFY_SOCKET": path + ".gone"})

    @defer.inlineCallbacks
    def test_ready_after_listening_under_twistd(self):
        from .processes import wait_for
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        sock, path = self.notify_socket()
        process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", write_config(directory, port)],
                                 cwd=directory, env={"NOTIFY_SOCKET": path})
        self.addCleanup(lambda: process.watcher.ended.called or process.kill())
        yield process.start()
        messages = []
        yield wait_for(lambda: messages.extend(self.received(sock)) or messages, timeout=10)
        self.assertTrue(messages[0].startswith("READY=1\nSTATUS=listening on 127.0.0.1:%d\nMAINPID=" % port),
                        messages)
        status, _, _ = yield fetch("GET", f"http://127.0.0.1:{port}/ping")   # bound before READY
        self.assertEqual(status, 200)
        code = yield process.stop()
        self.assertEqual(code, 0, process.output())
        self.assertIn("STOPPING=1", self.received(sock))
