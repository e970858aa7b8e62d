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
