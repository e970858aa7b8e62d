"""The ``console`` destination: one JSON line per event, written off the reactor thread."""

import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from stilgar.config import parse_config
from stilgar.destinations import TransientError, destination_type
from stilgar.destinations.console import Console, ConsoleSettings, ConsoleType, lines
from stilgar.units import ConfigError


def events(n, start=0):
    return [{"type": "track", "messageId": f"m-{i}", "event": "Clicked", "properties": {"é": i}}
            for i in range(start, start + n)]


class Held:
    """A stand-in for the writer thread: runs nothing until told to."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def run_all(self):
        while self.calls:
            f, args, d = self.calls.pop(0)
            try:
                d.callback(f(*args))
            except Exception:
                d.errback()


class ConfigTests(unittest.TestCase):
    def test_registered_and_parsed(self):
        config = parse_config({"destinations": [
            {"type": "console", "write_keys": ["k"]},
            {"type": "console", "write_keys": ["k"], "path": "/tmp/x.jsonl", "max_buffer": "1MiB"}]})
        first, second = config.destinations
        self.assertEqual((first.name, first.settings), ("console", ConsoleSettings()))
        self.assertEqual((second.name, second.settings.path, second.settings.max_buffer),
                         ("console:/tmp/x.jsonl", "/tmp/x.jsonl", 1 << 20))
        self.assertIs(destination_type("console"), ConsoleType)

    def test_bad_values(self):
        for block, key in (({"path": ""}, "destinations[0].path"), ({"max_buffer": "0"}, "destinations[0].max_buffer")):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"destinations": [{"type": "console", "write_keys": ["k"], **block}]})
            self.assertEqual(caught.exception.key, key)
        warnings = parse_config({"destinations": [{"type": "console", "write_keys": ["k"], "colour": 1}]}).warnings
        self.assertEqual(warnings, ("destinations[0].colour: unknown key, ignored",))


class ConsoleTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def read(self):
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    @defer.inlineCallbacks
    def test_lines_in_order_to_a_file_on_a_thread(self):
        console = ConsoleType.build("c", ["k"], ConsoleSettings(path=self.path), reactor)
        yield console.start()
        self.assertTrue(console.health()["up"])
        yield defer.gatherResults([console.write(events(3)), console.write(events(2, start=3))])
        yield console.stop()
        self.assertEqual([e["messageId"] for e in self.read()], [f"m-{i}" for i in range(5)])
        self.assertEqual(self.read()[0]["properties"], {"é": 0})
        self.assertEqual(console.status()["written"], 5)

    @defer.inlineCallbacks
    def test_bounded_buffer_and_write_errors(self):
        clock = task.Clock()
        held = Held()
        console = Console("c", ["k"], ConsoleSettings(path=self.path, max_buffer=len(lines(events(2)))),
                          clock, run=held)
        started = console.start()
        held.run_all()
        yield started
        first = console.write(events(2))
        self.assertEqual(console.buffered(), 2)
        with self.assertRaises(TransientError):
            yield console.write(events(1))            # the writer has not caught up: retry later
        held.run_all()
        yield first
        self.assertEqual(console.buffered(), 0)
        os.close(console._fd)
        console._fd = -1                               # a closed descriptor: EBADF
        failed = console.write(events(1))
        held.run_all()
        with self.assertRaises(TransientError):
            yield failed
        self.assertFalse(console.health()["up"])
        self.assertIn("Bad file descriptor", console.status()["last_error"])
        again = console.write(events(1, start=2))      # opens the file again, and is up again
        held.run_all()
        yield again
        self.assertTrue(console.health()["up"])
        self.assertEqual([e["messageId"] for e in self.read()], ["m-0", "m-1", "m-2"])
        stopped = console.stop()
        held.run_all()
        yield stopped

    @defer.inlineCallbacks
    def test_unwritable_path_is_down_not_fatal(self):
        console = ConsoleType.build("c", ["k"], ConsoleSettings(path="/nonexistent-dir/x.jsonl"), reactor)
        yield console.start()
        self.assertFalse(console.health()["up"])
        with self.assertRaises(TransientError):
            yield console.write(events(1))
        yield console.stop()
