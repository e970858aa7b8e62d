"""Logging: text and JSON lines, level filtering, syslog over UDP."""

import io
import json

import attr
from twisted.internet import defer, protocol, reactor
from twisted.logger import LogLevel, Logger
from twisted.trial import unittest

from stilgar.logs import make_observer


@attr.s
class LoggingConfig:
    level = attr.ib(default="info")
    format = attr.ib(default="text")
    syslog = attr.ib(default=None)


def syslog_config(port, facility="local3"):
    from stilgar.config import SyslogConfig
    return SyslogConfig(protocol="udp", host="127.0.0.1", port=port, facility=facility)


def emit(observer, level, fmt, **kw):
    Logger(namespace="stilgar.test", observer=observer).emit(level, fmt, **kw)


class LogFormatTests(unittest.TestCase):
    def test_text_line(self):
        out = io.StringIO()
        obs = make_observer(LoggingConfig(), out)
        emit(obs, LogLevel.warn, "[rejected] {request_id} {reason}", request_id="r-1", reason="invalid json")
        line = out.getvalue()
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN \[stilgar.test\] "
                               r"\[rejected\] r-1 invalid json\n$")

    def test_json_line_keeps_fields(self):
        out = io.StringIO()
        obs = make_observer(LoggingConfig(format="json"), out)
        emit(obs, LogLevel.info, "hello {who}", who="world", request_id="r-9")
        doc = json.loads(out.getvalue())
        self.assertEqual((doc["level"], doc["message"], doc["who"], doc["request_id"]),
                         ("info", "hello world", "world", "r-9"))

    def test_level_filter_and_off(self):
        out = io.StringIO()
        obs = make_observer(LoggingConfig(level="warn"), out)
        emit(obs, LogLevel.info, "quiet")
        emit(obs, LogLevel.error, "loud")
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud", out.getvalue())
        out = io.StringIO()
        obs = make_observer(LoggingConfig(level="off"), out)
        emit(obs, LogLevel.critical, "nothing")
        self.assertEqual(out.getvalue(), "")


class LogEscapingTests(unittest.TestCase):
    """Client-sent values cannot forge lines or reach a terminal raw."""

    hostile = "r-1\x1b[31m\r\n2026-01-01T00:00:00.000Z ERROR [stilgar] forged\x9b\u2028\x00"

    def test_text_line_escapes_client_values(self):
        out = io.StringIO()
        obs = make_observer(LoggingConfig(), out)
        emit(obs, LogLevel.warn, "[rejected] {request_id} {method} {path}: {status}",
             request_id=self.hostile, method="P\tOST", path="/v1/\x85x", status=400)
        line = out.getvalue()
        self.assertEqual(line.count("\n"), 1)
        self.assertTrue(line.isprintable() or line[:-1].isprintable(), repr(line))
        self.assertIn("[rejected] r-1\\x1b[31m\\r\\n2026-01-01T00:00:00.000Z ERROR [stilgar] forged"
                      "\\x9b\\u2028\\x00 P\\tOST /v1/\\x85x: 400\n", line)

    def test_json_fields_escaped(self):
        out = io.StringIO()
        obs = make_observer(LoggingConfig(format="json"), out)
        emit(obs, LogLevel.warn, "{request_id}", request_id=self.hostile)
        doc = json.loads(out.getvalue())
        self.assertTrue(doc["request_id"].isprintable())
        self.assertTrue(doc["message"].isprintable())
        self.assertEqual(doc["request_id"], doc["message"])

    def test_printable_text_unchanged(self):
        out = io.StringIO()
        emit(make_observer(LoggingConfig(), out), LogLevel.info, "{who}", who="ключ \\ é")
        self.assertTrue(out.getvalue().endswith("] ключ \\ é\n"))


class _Collector(protocol.DatagramProtocol):
    def __init__(self):
        self.got = defer.Deferred()

    def datagramReceived(self, data, addr):
        if not self.got.called:
            self.got.callback(data)


class SyslogTests(unittest.TestCase):
    timeout = 10

    @defer.inlineCallbacks
    def test_udp_rfc3164(self):
        collector = _Collector()
        port = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        obs = make_observer(LoggingConfig(syslog=syslog_config(port.getHost().port)))
        self.addCleanup(lambda: obs._observer._udp and obs._observer._udp.stopListening())
        emit(obs, LogLevel.error, "boom {n}", n=3)
        data = yield collector.got
        # local3 (19) * 8 + error (3) = 155
        self.assertRegex(data.decode(), r"^<155>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ stilgar\[\d+\]: "
                                        r"\[stilgar.test\] boom 3$")

    @defer.inlineCallbacks
    def test_facility_sent_is_the_one_validated(self):
        """security and console were accepted by the config and sent as user (1)."""
        for facility, code in (("security", 13), ("console", 14), ("solaris-cron", 15), ("audit", 13)):
            collector = _Collector()
            port = reactor.listenUDP(0, collector, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            obs = make_observer(LoggingConfig(syslog=syslog_config(port.getHost().port, facility)))
            self.addCleanup(lambda obs=obs: obs._observer._udp and obs._observer._udp.stopListening())
            emit(obs, LogLevel.error, "x")
            data = yield collector.got
            self.assertTrue(data.startswith(b"<%d>" % (code * 8 + 3)), (facility, data))


class RotatingLogFileTests(unittest.TestCase):
    def setUp(self):
        import os
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "stilgar.log")

    def files(self):
        import os
        return sorted(os.listdir(self.dir))

    def test_size_rotation_keeps_a_bounded_number(self):
        from stilgar.logs import RotatingLogFile
        f = RotatingLogFile(self.path, max_size=100, keep=2)
        self.addCleanup(f.close)
        for i in range(20):
            f.write("x" * 60 + "\n")
        self.assertEqual(self.files(), ["stilgar.log", "stilgar.log.1", "stilgar.log.2"])

    def test_no_size_rotation_when_logrotate_owns_the_file(self):
        from stilgar.logs import RotatingLogFile
        f = RotatingLogFile(self.path, max_size=0, keep=2)
        self.addCleanup(f.close)
        for i in range(50):
            f.write("x" * 60 + "\n")
        self.assertEqual(self.files(), ["stilgar.log"])

    def test_signal_rotates_or_reopens(self):
        import os
        from stilgar.logs import RotatingLogFile
        f = RotatingLogFile(self.path, max_size=10 ** 6, keep=3)
        self.addCleanup(f.close)
        f.write("one\n")
        self.assertEqual(f.signalled(), "rotated")
        f.write("two\n")
        f.flush()
        self.assertEqual(self.files(), ["stilgar.log", "stilgar.log.1"])
        os.rename(self.path, self.path + ".moved")   # what logrotate does, then kill -USR1
        self.assertEqual(f.signalled(), "reopened")
        f.write("three\n")
        f.flush()
        with open(self.path) as g:
            self.assertEqual(g.read(), "three\n")
        with open(self.path + ".moved") as g:
            self.assertEqual(g.read(), "two\n")
        managed = RotatingLogFile(os.path.join(self.dir, "managed.log"), max_size=0, keep=3)
        self.addCleanup(managed.close)
        self.assertEqual(managed.signalled(), "reopened")

    def test_config_keys(self):
        from stilgar.config import parse_config
        data = {"logging": {"rotate_size": "1MiB", "rotate_keep": 3},
                "destinations": [{"type": "blackhole", "write_keys": ["k"]}]}
        logging = parse_config(data).logging
        self.assertEqual((logging.rotate_size, logging.rotate_keep), (1024 ** 2, 3))
        data["logging"] = {"rotate_size": 0}
        self.assertEqual(parse_config(data).logging.rotate_size, 0)
        from stilgar.units import ConfigError
        data["logging"] = {"rotate_keep": 0}
        self.assertRaises(ConfigError, parse_config, data)
