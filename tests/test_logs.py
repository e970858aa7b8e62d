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
