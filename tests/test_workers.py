"""``server.workers: 2`` for real: twistd, two workers on one socket, kill -9, restart, SIGTERM."""

import base64
import json
import os
import re
import signal

from twisted.internet import defer
from twisted.trial import unittest

from .processes import StilgarProcess, fetch, free_port, wait_for

KEY = "workers-test-key"
AUTH = {b"Authorization": [b"Basic " + base64.b64encode(KEY.encode() + b":")]}


def write_config(directory, port, workers=2):
    path = os.path.join(directory, "stilgar.yml")
    with open(path, "w") as f:
        f.write(f"""
server:
  ip: 127.0.0.1
  port: {port}
  workers: {workers}
spool:
  path: {os.path.join(directory, "spool")}
forwarder:
  shutdown_timeout: 5s
logging:
  level: info
destinations:
  - type: blackhole
    write_keys: [{KEY}]
""")
    return path


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkersTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config",
                                       write_config(self.dir, self.port)], cwd=self.dir)
        self.sent = 0
        self.addCleanup(self._cleanup)

    @defer.inlineCallbacks
    def _cleanup(self):
        pids = list(self.serving().values())
        if self.process.watcher is not None and not self.process.watcher.ended.called:
            self.process.signal("KILL")
            yield self.process.watcher.ended
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def serving(self):
        """{worker index: pid} of the workers that said they are serving, latest first."""
        found = {}
        for index, pid in re.findall(r"worker (\d+) \(pid (\d+)\) serving", self.process.output()):
            found[int(index)] = int(pid)
        return found

    @defer.inlineCallbacks
    def start(self):
        try:
            yield self.process.start(timeout=60)
            yield wait_for(lambda: len(self.serving()) == 2, timeout=60)
        except Exception:
            self.fail("stilgar did not start two workers:\n" + self.process.output())

    @defer.inlineCallbacks
    def send(self, count):
        """``count`` track events, each on a new connection; every answer must be 200 OK."""
        for i in range(count):
            body = json.dumps({"type": "track", "event": "Clicked", "anonymousId": f"a-{i}",
                               "messageId": f"m-{self.sent}"}).encode()
            status, answer, _ = yield fetch("POST", self.base + "/v1/track", data=body, headers=AUTH)
            self.assertEqual((status, answer), (200, b"OK"), self.process.output()[-3000:])
            self.sent += 1

    @defer.inlineCallbacks
    def accepted_metric(self):
        status, body, _ = yield fetch("GET", self.base + "/metrics")
        self.assertEqual(status, 200, body)
        m = re.search(rb"^stilgar_events_accepted_total\s+(\S+)$", body, re.M)
        return float(m.group(1)) if m else None

    @defer.inlineCallbacks
    def test_two_workers_restart_and_stop(self):
        yield self.start()
        first = self.serving()
        self.assertEqual(sorted(first), [0, 1])
        self.assertNotEqual(first[0], first[1])
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "spool"))), ["worker-0", "worker-1"])
        yield self.send(20)

        # kill -9 one worker: the other keeps answering, the parent starts a new worker 0
        os.kill(first[0], signal.SIGKILL)
        yield self.send(10)
        yield wait_for(lambda: self.serving().get(0) not in (None, first[0]), timeout=60)
        second = self.serving()
        self.assertEqual(second[1], first[1])
        self.assertFalse(alive(first[0]))
        self.assertIn(f"worker 0 (pid {first[0]}) died", self.process.output())
        yield self.send(20)

        # metrics are aggregated over the workers, the dead one included
        accepted = yield self.accepted_metric()
        self.assertEqual(accepted, self.sent, "stilgar_events_accepted_total is not the sum of all workers")

        # SIGTERM to the parent: workers stop (spools closed), then the parent, cleanly
        code = yield self.process.stop(timeout=60)
        output = self.process.output()
        # twistd ends a clean SIGTERM stop by re-raising the signal: no exit code then
        self.assertIn(code, (0, None), output)
        self.assertIn("[stilgar.workers] stopped cleanly", output)
        self.assertEqual(output.count("[stilgar] stopped cleanly"), 2, output)
        self.assertNotIn("Traceback", output)
        for pid in second.values():
            self.assertFalse(alive(pid), f"worker {pid} outlived its parent")

    @defer.inlineCallbacks
    def test_workers_stop_when_the_parent_is_killed(self):
        yield self.start()
        pids = self.serving()
        yield self.send(4)
        yield self.process.kill()
        yield wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=30)
        self.assertIn("the parent process is gone", self.process.output())


# -- the supervisor, on a Clock -------------------------------------------------------

class FakeSocket:
    def __init__(self, fd):
        self.fd = fd
        self.closed = False

    def fileno(self):
        return self.fd

    def getsockname(self):
        return ("127.0.0.1", 8080)

    def close(self):
        self.closed = True


class FakeProcess:
    """The transport of a spawned worker: records the signals it is sent."""

    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class FakeSpawner:
    """Stands in for ``reactor.spawnProcess``: every worker it starts, in order."""

    def __init__(self):
        self.started = []      # (index, protocol, argv, childFDs)

    def __call__(self, proto, executable, argv, env=None, childFDs=None):
        transport = FakeProcess(1000 + len(self.started))
        proto.makeConnection(transport)
        self.started.append((proto.index, proto, argv, childFDs))
        return transport

    def indexes(self):
        return [index for index, _, _, _ in self.started]

    def die(self, index, code=1):
        """The latest worker ``index`` exits with ``code``."""
        from twisted.internet.error import ProcessTerminated
        from twisted.python.failure import Failure
        proto = [p for i, p, _, _ in self.started if i == index][-1]
        proto.processEnded(Failure(ProcessTerminated(exitCode=code)))


class SupervisorTests(unittest.TestCase):
    def setUp(self):
        from twisted.internet.task import Clock

        from .helpers import make_config
        self.clock = Clock()
        self.stops = []
        self.clock.stop = lambda: self.stops.append(self.clock.seconds())
        self.spawner = FakeSpawner()
        self.sockets = []
        self.config = make_config(server={"workers": 2}, forwarder={"shutdown_timeout": "3s"})

    def parent(self):
        from stilgar.workers import ParentService

        def bind(family, host, port, backlog):
            self.sockets = [FakeSocket(10), FakeSocket(11)]
            return self.sockets
        parent = ParentService(self.config, "/etc/stilgar/stilgar.yml", self.clock,
                               spawn_process=self.spawner, bind=bind)
        parent.startService()
        self.addCleanup(self.stop, parent)
        return parent

    def stop(self, parent):
        if parent.running:
            parent.stopService()
        for index in list(parent.workers):
            self.spawner.die(index, code=0)
        self.clock.advance(100)

    def test_each_worker_gets_its_socket_and_index(self):
        self.parent()
        self.assertEqual(self.spawner.indexes(), [0, 1])
        argv = self.spawner.started[1][2]
        self.assertEqual(argv[-4:], ["--worker", "1", "--worker-fd", "11"])
        self.assertEqual(self.spawner.started[1][3][11], 11)

    def test_restart_delay_doubles_and_resets_after_a_healthy_life(self):
        parent = self.parent()
        self.clock.advance(20)                       # a worker that lived: not a failed start
        delays = []
        for _ in range(8):
            started = len(self.spawner.started)
            self.spawner.die(0)
            call = parent.pending[0]
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1] - 0.001)
            self.assertEqual(len(self.spawner.started), started)      # not before its delay
            self.clock.advance(0.001)
            self.assertEqual(len(self.spawner.started), started + 1)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        self.clock.advance(60)                       # healthy for a minute: back to the first delay
        self.spawner.die(0)
        self.assertEqual(parent.pending[0].getTime() - self.clock.seconds(), 0.5)
        self.assertEqual(parent.restarts, 9)
        self.assertEqual(self.stops, [])

    def fail_start(self, parent, index):
        """Worker ``index`` dies at once, and is started again after its delay."""
        self.spawner.die(index)
        if index in parent.pending:
            self.clock.advance(parent.pending[index].getTime() - self.clock.seconds())

    def test_gives_up_when_every_worker_fails_to_start_five_times(self):
        parent = self.parent()
        for _ in range(5):
            self.fail_start(parent, 0)          # quick deaths of worker 0 alone: kept going
        self.assertEqual(self.stops, [])
        self.assertEqual(self.spawner.indexes().count(0), 6)
        self.assertEqual(parent.failed_starts[0], 5)
        for _ in range(5):
            self.fail_start(parent, 1)          # the first after a long life is not a failed start
        self.assertEqual((self.stops, parent.failed_starts[1]), ([], 4))
        self.spawner.die(1)                     # the fifth failed start of every worker: stop
        self.assertNotIn(1, parent.pending)     # no restart scheduled once given up
        self.clock.advance(0)
        self.assertEqual(len(self.stops), 1)
        self.assertTrue(parent.stopping)
        self.clock.advance(100)
        self.assertEqual(self.spawner.indexes().count(1), 6)

    def test_only_consecutive_failed_starts_count(self):
        parent = self.parent()
        for _ in range(4):
            self.fail_start(parent, 0)
            self.fail_start(parent, 1)
        self.assertEqual(parent.failed_starts, {0: 4, 1: 4})
        self.clock.advance(61)                  # both live a minute: counts and delays reset
        self.spawner.die(0)
        self.assertEqual(parent.pending[0].getTime() - self.clock.seconds(), 0.5)
        self.clock.advance(0.5)
        self.fail_start(parent, 1)
        self.assertEqual(parent.failed_starts, {0: 0, 1: 0})
        for _ in range(4):
            self.fail_start(parent, 0)
            self.fail_start(parent, 1)
        self.assertEqual(parent.failed_starts, {0: 4, 1: 4})
        self.assertEqual(self.stops, [])

    def test_no_restart_while_stopping(self):
        parent = self.parent()
        self.spawner.die(0)                          # a restart is pending...
        self.assertIn(0, parent.pending)
        d = parent.stopService()                     # ...and cancelled by the stop
        self.assertEqual(parent.pending, {})
        alive = self.spawner.started[1][1]
        self.assertEqual(alive.transport.signals, ["TERM"])
        self.assertNoResult(d)
        self.spawner.die(1, code=0)
        self.successResultOf(d)
        self.clock.advance(100)
        self.assertEqual(self.spawner.indexes(), [0, 1])
        self.assertTrue(all(sock.closed for sock in self.sockets))
        self.assertIsNone(parent.metrics_dir)

    def test_a_worker_that_ignores_term_is_killed_after_the_shutdown_timeout(self):
        parent = self.parent()
        d = parent.stopService()
        worker = self.spawner.started[0][1]
        self.clock.advance(3 + parent.stop_margin - 0.01)
        self.assertEqual(worker.transport.signals, ["TERM"])
        self.clock.advance(0.01)
        self.assertEqual(worker.transport.signals, ["TERM", "KILL"])
        self.spawner.die(0)
        self.spawner.die(1)
        self.successResultOf(d)


class WorkerPiecesTests(unittest.TestCase):
    def test_tcp_address_of_a_listen_description(self):
        import socket

        from twisted.internet.task import Clock

        from stilgar.workers import tcp_address

        from .helpers import make_config

        def address(**server):
            return tcp_address(make_config(server=server), Clock())
        self.assertEqual(address(ip="127.0.0.1", port=8080), (socket.AF_INET, "127.0.0.1", 8080, 1024))
        self.assertEqual(address(listen="tcp:8081:interface=127.0.0.2"),
                         (socket.AF_INET, "127.0.0.2", 8081, 1024))
        self.assertEqual(address(listen="tcp:port=80:backlog=4096"), (socket.AF_INET, "0.0.0.0", 80, 4096))
        self.assertEqual(address(listen=r"tcp6:port=0:interface=\:\:1"), (socket.AF_INET6, "::1", 0, 1024))
        self.assertEqual(address(listen="tcp6:9000"), (socket.AF_INET6, "::", 9000, 1024))
        self.assertRaises(ValueError, address, listen="unix:/tmp/s.sock")

    def test_a_worker_runs_its_parents_plugin(self):
        import sys
        import types

        from stilgar.workers import worker_command
        plugin = types.ModuleType("twisted.plugins.stilgar_plugin")
        plugin.__file__ = "/src/stilgar/twisted_plugins/stilgar_plugin.py"
        self.patch(sys, "modules", {**sys.modules, "twisted.plugins.stilgar_plugin": plugin})
        argv = worker_command("/etc/s.yml", 1, 7, executable="/usr/bin/python3", logfile="/var/log/s.log")
        self.assertIn("['/src/stilgar/twisted_plugins']", argv[2])
        self.assertEqual(argv[3:], ["-n", "--pidfile=", "--logfile=/var/log/s.log", "stilgar", "--config",
                                    "/etc/s.yml", "--worker", "1", "--worker-fd", "7"])

    @defer.inlineCallbacks
    def test_adopted_socket_endpoint_serves_the_inherited_socket(self):
        import socket

        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        from stilgar.workers import AdoptedSocketEndpoint, listen_socket
        sock = listen_socket(socket.AF_INET, "127.0.0.1", 0)
        self.addCleanup(sock.close)
        fd = os.dup(sock.fileno())
        port = yield AdoptedSocketEndpoint(reactor, fd).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().port, sock.getsockname()[1])
        self.assertRaises(OSError, os.fstat, fd)     # the inherited descriptor is closed, a copy serves
        failed = AdoptedSocketEndpoint(reactor, fd).listen(Factory.forProtocol(Protocol))
        self.failureResultOf(failed, OSError)

    def test_a_worker_tree_listens_on_its_socket_and_watches_its_parent(self):
        from twisted.internet import reactor

        import attr

        from stilgar.launch import make_process_service
        from stilgar.workers import AdoptedSocketEndpoint, ParentService

        from .helpers import make_config
        path = os.path.abspath(self.mktemp())
        config = attr.evolve(make_config(server={"workers": 2}, spool={"path": path}),
                             path="/etc/stilgar/stilgar.yml")
        worker = make_process_service(config, reactor, worker=1, worker_fd=99)
        self.addCleanup(worker.spool.close)
        self.assertIsInstance(worker.web.endpoint.endpoint, AdoptedSocketEndpoint)
        self.assertEqual(worker.web.endpoint.endpoint.fd, 99)
        self.assertEqual([child.name for child in worker][-2:], ["web", "parent-watch"])
        self.assertEqual(worker.spool.path, os.path.join(path, "worker-1"))
        parent = make_process_service(config, reactor)
        self.assertEqual([type(child) for child in parent], [ParentService])
