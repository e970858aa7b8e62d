"""Tests for stilgar.config: finding, reading and checking the configuration file."""

import ipaddress
import json
import os

import attr
from twisted.trial import unittest

from stilgar import config as C
from stilgar.config import (
    AdminConfig, Config, ConfigError, DestinationConfig, ForwarderConfig, LoggingConfig,
    PrivacyConfig, ServerConfig, SpoolConfig, SyslogConfig,
    find_config_file, load_config, parse_config, read_config_file,
)

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "stilgar.sample.yml")
MINIMAL_YAML = "destinations:\n  - type: fake\n    write_keys: [k1]\n"


@attr.s(frozen=True)
class FakeSettings:
    type = attr.ib()
    option = attr.ib(default=None)


@attr.s
class FakeType:
    """A stand-in IDestinationType: accepts ``option``, warns about other keys."""
    type_name = attr.ib()
    calls = attr.ib(factory=list)
    accept_all = attr.ib(default=False)

    def parse_settings(self, settings, where, warn):
        self.calls.append((where, dict(settings)))
        if "bad" in settings:
            raise ConfigError(f"{where}.bad", "is bad")
        for key in settings:
            if key not in ("type", "name", "write_keys", "option") and not self.accept_all:
                warn(f"{where}.{key}: unknown key, ignored")
        return FakeSettings(self.type_name, settings.get("option"))

    def default_name(self, settings):
        return f"{self.type_name}:{settings.option or 'default'}"


def fake_types(**extra):
    types = {"fake": FakeType("fake"), "other": FakeType("other"), **extra}
    return types.__getitem__


def fake_with_clickhouse():
    """Fake clickhouse (its module may not exist yet) plus the real blackhole."""
    from stilgar.destinations import destination_type

    clickhouse = FakeType("clickhouse", accept_all=True)
    clickhouse.default_name = lambda settings: "clickhouse:stilgar"

    def lookup(name):
        return clickhouse if name == "clickhouse" else destination_type(name)
    return lookup


def minimal(**sections):
    data = {"destinations": [{"type": "fake", "write_keys": ["k1"]}]}
    data.update(sections)
    return data


class ConfigTestCase(unittest.TestCase):
    def parse(self, data, **kw):
        kw.setdefault("destination_types", fake_types())
        return parse_config(data, **kw)

    def assertError(self, data, key, fragment="", **kw):
        """parse_config(data) fails with a one-line error naming ``key``."""
        e = self.assertRaises(ConfigError, self.parse, data, **kw)
        self.assertEqual(e.key, key, str(e))
        self.assertIn(fragment, e.problem)
        self.assertTrue(str(e).startswith(f"{key}: "))
        self.assertNotIn("\n", str(e))
        return e

    def assertSectionError(self, section, values, key, fragment=""):
        return self.assertError(minimal(**{section: values}), key, fragment)

    def write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class DefaultsTests(ConfigTestCase):
    def test_minimal_file_gives_defaults(self):
        config = self.parse(minimal(), path="/x.yml")
        self.assertEqual(config.server, ServerConfig())
        self.assertEqual(config.logging, LoggingConfig())
        self.assertEqual(config.forwarder, ForwarderConfig())
        self.assertEqual(config.privacy, PrivacyConfig())
        self.assertEqual(config.spool, SpoolConfig())
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.path, "/x.yml")

    def test_default_values(self):
        s = ServerConfig()
        self.assertEqual((s.ip, s.port, s.listen), ("0.0.0.0", 8080, None))
        self.assertEqual(s.payload_size_limit, 4 * 1024 * 1024)
        self.assertEqual(s.max_events_per_request, 5000)
        self.assertEqual(s.origins, ())
        self.assertEqual((s.read_timeout, s.idle_timeout), (30.0, 75.0))
        self.assertEqual(s.max_connections, 10000)
        self.assertEqual([str(n) for n in s.trusted_proxies], [
            "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])
        self.assertEqual((s.path_prefix, s.workers, s.admin), ("", 1, None))
        self.assertEqual(LoggingConfig(), LoggingConfig("info", "text", None))
        self.assertEqual(ForwarderConfig(), ForwarderConfig(65536, 10.0))
        self.assertEqual(PrivacyConfig(), PrivacyConfig("drop", None, ()))
        self.assertEqual(SpoolConfig(), SpoolConfig(
            True, "./stilgar-spool", True, 1024 ** 3, 64 * 1024 ** 2, 0.002))
        self.assertEqual(AdminConfig(), AdminConfig(None, "", None))

    def test_empty_sections_give_defaults(self):
        config = self.parse(minimal(server=None, logging={}, forwarder=None, privacy={}, spool=None))
        self.assertEqual(config.server, ServerConfig())
        self.assertEqual(config.warnings, ())

    def test_null_value_means_default(self):
        config = self.parse(minimal(server={"port": None, "trusted_proxies": None}))
        self.assertEqual(config.server, ServerConfig())

    def test_objects_are_frozen(self):
        config = self.parse(minimal())
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, config.server, "port", 1)

    def test_secrets_are_not_in_repr(self):
        admin = AdminConfig("admin", "s3cret")
        privacy = PrivacyConfig("hash", b"t0psecret")
        self.assertNotIn("s3cret", repr(admin))
        self.assertNotIn("t0psecret", repr(privacy))


class FileShapeTests(ConfigTestCase):
    def test_whole_file_must_be_a_mapping(self):
        for data in ([1, 2], "text", 42):
            self.assertError(data, "config", "expected a mapping of sections")
            self.assertError(data, "/x.yml", "expected a mapping of sections", path="/x.yml")

    def test_empty_file(self):
        self.assertError(None, "config", "empty")

    def test_section_must_be_a_mapping(self):
        for section in ("server", "logging", "forwarder", "privacy", "spool"):
            self.assertError(minimal(**{section: 5}), section, "expected a mapping")
        self.assertError(minimal(server={"admin": "x"}), "server.admin", "expected a mapping")
        self.assertError(minimal(logging={"syslog": ["x"]}), "logging.syslog", "expected a mapping")

    def test_unknown_keys_are_errors_all_reported(self):
        e = self.assertRaises(ConfigError, self.parse, minimal(
            beanstalk=1,
            server={"foo": 1, "admin": {"bar": 2}},
            logging={"baz": 3, "syslog": {"host": "h", "qux": 4}},
            forwarder={"beanstalk": "127.0.0.1:11300"},
            privacy={"x": 1},
            spool={"y": 2},
        ))
        self.assertEqual(sorted(str(p) for p in e.problems), sorted([
            "beanstalk: unknown key",
            "server.foo: unknown key",
            "server.admin.bar: unknown key",
            "logging.baz: unknown key",
            "logging.syslog.qux: unknown key",
            "forwarder.beanstalk: unknown key",
            "privacy.x: unknown key",
            "spool.y: unknown key",
        ]))
        self.assertEqual(len(str(e).splitlines()), 8)

    def test_unknown_key_suggests_the_nearest(self):
        self.assertError(minimal(server={"prot": 9000}), "server.prot",
                         "unknown key; did you mean 'port'?")
        self.assertError(minimal(spool={"fsnyc": False}), "spool.fsnyc",
                         "did you mean 'fsync'?")
        self.assertError(minimal(servre={}), "servre", "did you mean 'server'?")
        e = self.assertError(minimal(server={"zzzzzz": 1}), "server.zzzzzz")
        self.assertEqual(e.problem, "unknown key")

    def test_extension_keys_at_top_level_are_the_operators(self):
        self.assertEqual(self.parse(minimal(**{"x-defaults": {"a": 1}})).warnings, ())

    def test_non_string_keys_are_unknown(self):
        e = self.assertRaises(ConfigError, self.parse, minimal(server={1: "x", None: "y"}))
        self.assertEqual(sorted(str(p) for p in e.problems),
                         ["server.1: unknown key", "server.None: unknown key"])

    def test_every_problem_at_once(self):
        e = self.assertRaises(ConfigError, self.parse, {
            "server": {"port": 0, "ip": "nowhere"}, "spool": {"fsync": "maybe"},
            "destinations": [{"type": "fake", "write_keys": ["k"], "bad": 1},
                             {"type": "fake", "name": "", "write_keys": []}]})
        self.assertEqual(sorted(p.key for p in e.problems), [
            "destinations[0].bad", "destinations[1].name", "destinations[1].write_keys",
            "server.ip", "server.port", "spool.fsync"])


class ServerTests(ConfigTestCase):
    def server(self, **values):
        config = self.parse(minimal(server=values))
        return config.server, config.warnings

    def bad(self, key, value, fragment=""):
        return self.assertSectionError("server", {key: value}, f"server.{key}", fragment)

    def test_ip(self):
        self.assertEqual(self.server(ip="127.0.0.1")[0].ip, "127.0.0.1")
        self.assertEqual(self.server(ip="::")[0].ip, "::")
        self.assertEqual(self.server(ip="[::1]")[0].ip, "::1")
        self.assertEqual(self.server(ip="0:0:0:0:0:0:0:1")[0].ip, "::1")

    def test_bad_ip(self):
        for value in ("localhost", "1.2.3.4.5", "", "10.0.0.0/8"):
            self.bad("ip", value)
        self.bad("ip", 0, "not an IP address")
        self.bad("ip", True, "expected a string")

    def test_port(self):
        self.assertEqual(self.server(port=9000)[0].port, 9000)
        self.assertEqual(self.server(port="9000")[0].port, 9000)
        self.assertEqual(self.server(port=1)[0].port, 1)
        self.assertEqual(self.server(port=65535)[0].port, 65535)

    def test_bad_port(self):
        self.bad("port", 0, "at least 1")
        self.bad("port", 65536, "at most 65535")
        self.bad("port", -1)
        self.bad("port", "http", "expected an integer")
        self.bad("port", True, "expected an integer")
        self.bad("port", 80.5, "expected an integer")
        self.bad("port", [80])

    def test_payload_size_limit(self):
        server, warnings = self.server(payload_size_limit="1MiB")
        self.assertEqual(server.payload_size_limit, 1024 ** 2)
        self.assertEqual(warnings, ())
        server, warnings = self.server(payload_size_limit="1MiB")
        self.assertEqual((server.payload_size_limit, warnings), (1024 * 1024, ()))
        self.assertEqual(self.server(payload_size_limit=2000000)[0].payload_size_limit, 2000000)

    def test_payload_size_limit_zero_is_default(self):
        server, warnings = self.server(payload_size_limit=0)
        self.assertEqual((server.payload_size_limit, warnings), (4 * 1024 ** 2, ()))
        self.assertEqual(self.server(payload_size_limit="0")[0].payload_size_limit, 4 * 1024 ** 2)

    def test_small_payload_size_limit_is_honoured_with_a_warning(self):
        server, warnings = self.server(payload_size_limit="64KiB")
        self.assertEqual(server.payload_size_limit, 65536)
        self.assertEqual(len(warnings), 1)
        self.assertIn("server.payload_size_limit", warnings[0])
        self.assertIn("under 1MiB", warnings[0])
        self.assertTrue(warnings[0].startswith("WARNING"))
        # a Kotlin/Swift batch reaches ~532KiB: 512KiB is not enough any more
        server, warnings = self.server(payload_size_limit="512KiB")
        self.assertEqual(server.payload_size_limit, 512 * 1024)
        self.assertIn("DELETED", warnings[0])

    def test_bad_payload_size_limit(self):
        self.bad("payload_size_limit", "lots", "cannot read 'lots' as a size")
        self.bad("payload_size_limit", -5)
        self.bad("payload_size_limit", "4 XB", "unknown size unit")

    def test_max_events_per_request(self):
        self.assertEqual(self.server(max_events_per_request=100)[0].max_events_per_request, 100)
        self.bad("max_events_per_request", 0, "at least 1")
        self.bad("max_events_per_request", "many", "expected an integer")

    def test_origins(self):
        server, _ = self.server(origins=["*", "https://www.example.com", "http://localhost:8082"])
        self.assertEqual(server.origins, ("*", "https://www.example.com", "http://localhost:8082"))

    def test_origins_are_normalised(self):
        server, _ = self.server(origins=["HTTPS://WWW.Example.com/", " http://a.com ", "http://a.com"])
        self.assertEqual(server.origins, ("https://www.example.com", "http://a.com"))

    def test_bad_origins(self):
        e = self.assertSectionError("server", {"origins": ["*", "https://ok.com", "www.example.com"]},
                                    "server.origins[2]", "is not an origin")
        self.assertIn("'www.example.com'", str(e))

    def bad_origin(self, value, fragment=""):
        return self.assertSectionError("server", {"origins": [value]}, "server.origins[0]", fragment)

    def test_bad_origin_values(self):
        self.bad_origin("www.example.com", "scheme://host")
        self.bad_origin("https://", "scheme://host")
        self.bad_origin("://host")
        self.bad_origin("https://a.com/path", "no path")
        self.bad_origin("https://a.com?x=1")
        self.bad_origin("https://a b.com")
        self.bad_origin("", "must not be empty")
        self.bad_origin(42, "not an origin")
        self.bad_origin(None, "expected a string")
        self.bad_origin("null")

    def test_origins_must_be_a_list(self):
        self.bad("origins", "*", "expected a list")

    def test_timeouts(self):
        server, _ = self.server(read_timeout="1m", idle_timeout="1h 30m")
        self.assertEqual((server.read_timeout, server.idle_timeout), (60, 5400))
        self.assertAlmostEqual(self.server(read_timeout="500ms")[0].read_timeout, 0.5)

    def test_bad_timeouts(self):
        for key in ("read_timeout", "idle_timeout"):
            e = self.bad(key, "abc")
            self.assertEqual(
                str(e), f"server.{key}: cannot read 'abc' as a duration (e.g. 5s, 1m, 1h 30m)")
            self.bad(key, "0s", "more than 0s")
            self.bad(key, 30, "expected a duration")
            self.bad(key, "30", "cannot read")

    def test_max_connections(self):
        self.assertEqual(self.server(max_connections=50)[0].max_connections, 50)
        self.bad("max_connections", 0)
        self.bad("max_connections", "x")

    def test_trusted_proxies(self):
        server, _ = self.server(trusted_proxies=["10.1.2.3", "2001:db8::1", "192.168.0.0/16",
                                                 "10.0.0.1/8"])
        self.assertEqual(server.trusted_proxies, (
            ipaddress.ip_network("10.1.2.3/32"), ipaddress.ip_network("2001:db8::1/128"),
            ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("10.0.0.0/8")))

    def test_trusted_proxies_empty_trusts_nobody(self):
        self.assertEqual(self.server(trusted_proxies=[])[0].trusted_proxies, ())

    def test_bad_trusted_proxies(self):
        self.assertSectionError("server", {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]},
                                "server.trusted_proxies[1]", "not an IP network")
        self.assertSectionError("server", {"trusted_proxies": ["10.0.0.0/33"]},
                                "server.trusted_proxies[0]")
        self.assertSectionError("server", {"trusted_proxies": [10]}, "server.trusted_proxies[0]")
        self.bad("trusted_proxies", "10.0.0.0/8", "expected a list")

    def test_path_prefix(self):
        for value, expected in [("", ""), ("/", ""), ("collect", "/collect"),
                                ("/collect/", "/collect"), ("a//b/", "/a/b"), ("/a/b", "/a/b"),
                                ("/v-1.2_x~", "/v-1.2_x~")]:
            self.assertEqual(self.server(path_prefix=value)[0].path_prefix, expected, value)

    def test_bad_path_prefix(self):
        for value in ("/a?b", "/a#b", "/a b", "/../x", "/./x", "/%41"):
            self.bad("path_prefix", value, "plain URL path")
        self.bad("path_prefix", True, "expected a string")

    def test_workers(self):
        self.assertEqual(self.server(workers=4)[0].workers, 4)
        self.bad("workers", 0, "at least 1")
        self.bad("workers", 1.5)

    def test_admin(self):
        server, warnings = self.server(admin={
            "username": "admin", "password": "p4ssw0rd",
            "allowed_networks": ["127.0.0.0/8", "10.0.0.7", "::1"]})
        self.assertEqual(server.admin, AdminConfig("admin", "p4ssw0rd", (
            ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.7/32"),
            ipaddress.ip_network("::1/128"))))
        self.assertEqual(warnings, ())

    def test_admin_defaults(self):
        self.assertEqual(self.server(admin={})[0].admin, AdminConfig(None, "", None))
        self.assertEqual(self.server(admin={"username": "a"})[0].admin, AdminConfig("a", "", None))
        self.assertIsNone(self.server(admin=None)[0].admin)

    def test_admin_password_without_username_warns(self):
        server, warnings = self.server(admin={"password": "x"})
        self.assertEqual(len(warnings), 1)
        self.assertIn("server.admin.username", warnings[0])

    def test_bad_admin(self):
        self.assertSectionError("server", {"admin": {"password": False}}, "server.admin.password",
                                "quote it")
        self.assertSectionError("server", {"admin": {"username": ""}}, "server.admin.username")
        self.assertSectionError("server", {"admin": {"allowed_networks": ["x"]}},
                                "server.admin.allowed_networks[0]")
        self.assertSectionError("server", {"admin": {"allowed_networks": "10.0.0.0/8"}},
                                "server.admin.allowed_networks", "expected a list")

    def test_listen_key(self):
        self.assertEqual(self.server(listen="unix:/tmp/s.sock")[0].listen, "unix:/tmp/s.sock")
        self.bad("listen", "", "must not be empty")
        self.bad("listen", True, "expected a string")


class ListenAndEndpointTests(ConfigTestCase):
    def test_ipv4(self):
        self.assertEqual(ServerConfig().endpoint_description(), "tcp:port=8080:interface=0.0.0.0")
        self.assertEqual(ServerConfig(ip="127.0.0.1", port=9).endpoint_description(),
                         "tcp:port=9:interface=127.0.0.1")

    def test_ipv6_colons_are_escaped(self):
        self.assertEqual(ServerConfig(ip="::").endpoint_description(),
                         "tcp:port=8080:interface=\\:\\:")
        self.assertEqual(ServerConfig(ip="2001:db8::1", port=80).endpoint_description(),
                         "tcp:port=80:interface=2001\\:db8\\:\\:1")

    def test_listen_wins(self):
        server = ServerConfig(ip="::", listen="ssl:443:privateKey=k.pem")
        self.assertEqual(server.endpoint_description(), "ssl:443:privateKey=k.pem")

    def test_twisted_reads_the_description(self):
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        for ip in ("::", "2001:db8::1", "127.0.0.1"):
            endpoint = serverFromString(
                MemoryReactor(), ServerConfig(ip=ip, port=81).endpoint_description())
            self.assertEqual((endpoint._port, endpoint._interface), (81, ip))

    def test_listen_argument_overrides(self):
        config = self.parse(minimal(server={"ip": "10.0.0.1", "listen": "tcp:1"}),
                            listen="tcp:port=9999")
        self.assertEqual(config.server.listen, "tcp:port=9999")
        self.assertEqual(config.server.ip, "10.0.0.1")
        self.assertEqual(config.server.endpoint_description(), "tcp:port=9999")

    def test_bad_listen_argument(self):
        self.assertError(minimal(), "--listen", "must not be empty", listen=" ")

    def test_file_values_are_still_checked_with_listen(self):
        self.assertError(minimal(server={"port": "x"}), "server.port", listen="tcp:1")


class LoggingTests(ConfigTestCase):
    def logging(self, **values):
        return self.parse(minimal(logging=values)).logging

    def test_level(self):
        for value, expected in [("off", "off"), ("ERROR", "error"), ("warn", "warn"),
                                ("Warning", "warn"), ("info", "info"), ("Debug", "debug"),
                                ("trace", "trace"), (False, "off")]:
            self.assertEqual(self.logging(level=value).level, expected, value)

    def test_yaml_off_is_a_boolean(self):
        import yaml
        data = yaml.safe_load("logging: {level: off}\n" + MINIMAL_YAML)
        self.assertEqual(self.parse(data).logging.level, "off")

    def test_bad_level(self):
        for value in ("verbose", "", True, 3):
            self.assertSectionError("logging", {"level": value}, "logging.level",
                                    "expected one of off, error, warn, info, debug, trace")

    def test_format(self):
        self.assertEqual(self.logging(format="JSON").format, "json")
        self.assertEqual(self.logging(format="text").format, "text")
        self.assertSectionError("logging", {"format": "xml"}, "logging.format")

    def test_syslog(self):
        syslog = self.logging(syslog={"host": "logs.local"}).syslog
        self.assertEqual(syslog, SyslogConfig("udp", "logs.local", 514, "user", "stilgar"))
        self.assertEqual(syslog.facility_code, 1)
        syslog = self.logging(syslog={"protocol": "TCP", "host": "h", "port": "1514",
                                      "facility": "local3", "process": "collector"}).syslog
        self.assertEqual(syslog, SyslogConfig("tcp", "h", 1514, "local3", "collector"))
        self.assertEqual(syslog.facility_code, 19)

    def test_syslog_facilities(self):
        names = ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
                 "cron", "authpriv", "ftp", "solaris-cron"] + [f"local{i}" for i in range(8)]
        for name in names:
            self.assertEqual(self.logging(syslog={"host": "h", "facility": name}).syslog.facility,
                             name)
        self.assertEqual(self.logging(syslog={"host": "h", "facility": "LOCAL7"}).syslog.facility,
                         "local7")
        self.assertEqual(C.SYSLOG_FACILITIES["solaris-cron"], 15)
        self.assertEqual(C.SYSLOG_FACILITIES["local7"], 23)

    def bad_syslog(self, values, key, fragment=""):
        return self.assertSectionError("logging", {"syslog": values}, f"logging.syslog.{key}",
                                       fragment)

    def test_bad_syslog(self):
        self.bad_syslog({}, "host", "required")
        self.bad_syslog({"protocol": "udp"}, "host", "required")
        self.bad_syslog({"host": ""}, "host", "must not be empty")
        self.bad_syslog({"host": "h", "protocol": "sctp"}, "protocol", "udp, tcp")
        self.bad_syslog({"host": "h", "facility": "local8"}, "facility")
        self.bad_syslog({"host": "h", "facility": 3}, "facility")
        self.bad_syslog({"host": "h", "port": 0}, "port")
        self.bad_syslog({"host": "h", "port": "syslog"}, "port")
        self.bad_syslog({"host": "h", "process": ""}, "process")


class ForwarderTests(ConfigTestCase):
    def test_values(self):
        forwarder = self.parse(minimal(forwarder={"max_queue_size": 10,
                                                  "shutdown_timeout": "1m"})).forwarder
        self.assertEqual(forwarder, ForwarderConfig(10, 60.0))
        forwarder = self.parse(minimal(forwarder={"shutdown_timeout": "0s"})).forwarder
        self.assertEqual(forwarder.shutdown_timeout, 0)

    def test_bad_values(self):
        for value in (0, -1, "lots", True):
            self.assertSectionError("forwarder", {"max_queue_size": value},
                                    "forwarder.max_queue_size")
        for value in ("soon", 10, "10"):
            self.assertSectionError("forwarder", {"shutdown_timeout": value},
                                    "forwarder.shutdown_timeout")


class PrivacyTests(ConfigTestCase):
    def privacy(self, **values):
        config = self.parse(minimal(privacy=values))
        return config.privacy, config.warnings

    def test_ip_modes(self):
        for mode in ("drop", "truncate", "keep", "KEEP"):
            self.assertEqual(self.privacy(ip=mode)[0].ip, mode.lower())

    def test_hash(self):
        privacy, warnings = self.privacy(ip="hash", hash_secret="0123456789abcdef-long-enough")
        self.assertEqual(privacy.hash_secret, b"0123456789abcdef-long-enough")
        self.assertEqual(warnings, ())

    def test_hash_secret_is_utf8(self):
        self.assertEqual(self.privacy(ip="hash", hash_secret="clé secrète très longue")[0]
                         .hash_secret, "clé secrète très longue".encode())

    def test_short_hash_secret_warns(self):
        privacy, warnings = self.privacy(ip="hash", hash_secret="short")
        self.assertEqual(privacy.hash_secret, b"short")
        self.assertEqual(len(warnings), 1)
        self.assertIn("privacy.hash_secret", warnings[0])

    def test_hash_without_secret(self):
        self.assertSectionError("privacy", {"ip": "hash"}, "privacy.hash_secret", "required")
        self.assertSectionError("privacy", {"ip": "hash", "hash_secret": None},
                                "privacy.hash_secret", "required")
        self.assertSectionError("privacy", {"ip": "hash", "hash_secret": ""},
                                "privacy.hash_secret", "must not be empty")

    def test_secret_without_hash_is_kept(self):
        self.assertEqual(self.privacy(hash_secret="x" * 20)[0].hash_secret, b"x" * 20)

    def test_bad_values(self):
        self.assertSectionError("privacy", {"ip": "anonymise"}, "privacy.ip",
                                "drop, truncate, hash, keep")
        self.assertSectionError("privacy", {"ip": True}, "privacy.ip")
        self.assertSectionError("privacy", {"hash_secret": True},
                                "privacy.hash_secret", "quote it")

    def test_drop_fields(self):
        privacy, _ = self.privacy(drop_fields=["context.traits.email", "properties.phone",
                                               "userId", "context.traits.email"])
        self.assertEqual(privacy.drop_fields, (("context", "traits", "email"),
                                               ("properties", "phone"), ("userId",)))

    def test_bad_drop_fields(self):
        for value in ("a..b", ".a", "a.", ""):
            self.assertSectionError("privacy", {"drop_fields": ["ok", value]},
                                    "privacy.drop_fields[1]")
        self.assertSectionError("privacy", {"drop_fields": "a.b"}, "privacy.drop_fields",
                                "expected a list")


class SpoolTests(ConfigTestCase):
    def spool(self, **values):
        config = self.parse(minimal(spool=values))
        return config.spool, config.warnings

    def test_values(self):
        spool, warnings = self.spool(path="/var/lib/stilgar", fsync=False, max_size="10GiB",
                                     segment_size="16MiB", commit_window="5ms")
        self.assertEqual(spool, SpoolConfig(True, "/var/lib/stilgar", False, 10 * 1024 ** 3,
                                            16 * 1024 ** 2, 0.005))
        self.assertEqual(warnings, ())
        self.assertEqual(self.spool(commit_window="0s")[0].commit_window, 0)
        self.assertEqual(self.spool(fsync="no")[0].fsync, False)

    def test_disabled_warns(self):
        spool, warnings = self.spool(enabled=False)
        self.assertFalse(spool.enabled)
        self.assertEqual(len(warnings), 1)
        self.assertIn("spool.enabled", warnings[0])

    def test_small_max_size_shrinks_the_default_segment(self):
        self.assertEqual(self.spool(max_size="8MiB")[0].segment_size, 8 * 1024 ** 2)

    def test_explicit_segment_over_max_size(self):
        self.assertSectionError("spool", {"max_size": "8MiB", "segment_size": "16MiB"},
                                "spool.segment_size", "spool.max_size")

    def test_bad_values(self):
        for key, value in [("enabled", "maybe"), ("enabled", 1), ("fsync", "sometimes"),
                           ("path", ""), ("path", True), ("max_size", 0), ("max_size", "big"),
                           ("segment_size", "0"), ("commit_window", "x"),
                           ("commit_window", 2)]:
            self.assertSectionError("spool", {key: value}, f"spool.{key}")


class DestinationTests(ConfigTestCase):
    def test_destination(self):
        types = fake_types()
        config = self.parse({"destinations": [
            {"type": "fake", "write_keys": ["k1", "k2"], "option": "a"},
            {"type": "other", "name": "second", "write_keys": ["k2", "k3"]},
        ]}, destination_types=types)
        first, second = config.destinations
        self.assertEqual(first, DestinationConfig(
            "fake", "fake:a", frozenset(["k1", "k2"]), FakeSettings("fake", "a")))
        self.assertEqual(second, DestinationConfig(
            "other", "second", frozenset(["k2", "k3"]), FakeSettings("other")))
        self.assertEqual(config.all_write_keys(), frozenset(["k1", "k2", "k3"]))
        self.assertEqual(types("fake").calls, [("destinations[0]", {
            "type": "fake", "write_keys": ["k1", "k2"], "option": "a"})])

    def test_type_is_case_insensitive(self):
        config = self.parse({"destinations": [{"type": " Fake ", "write_keys": ["k"]}]})
        self.assertEqual(config.destinations[0].type, "fake")

    def test_destination_warnings_are_collected(self):
        config = self.parse({"destinations": [{"type": "fake", "write_keys": ["k"], "zzz": 1}]})
        self.assertEqual(config.warnings, ("destinations[0].zzz: unknown key, ignored",))

    def test_destination_errors_propagate(self):
        self.assertError({"destinations": [{"type": "fake", "write_keys": ["k"]},
                                           {"type": "fake", "write_keys": ["k"], "bad": 1}]},
                         "destinations[1].bad", "is bad")

    def test_destinations_required(self):
        self.assertError({}, "destinations", "required")
        self.assertError({"destinations": None}, "destinations", "required")
        self.assertError({"destinations": []}, "destinations", "at least one")
        self.assertError({"destinations": {"type": "fake"}}, "destinations", "expected a list")

    def test_block_must_be_a_mapping(self):
        self.assertError({"destinations": ["fake"]}, "destinations[0]", "destination block")

    def test_type(self):
        self.assertError({"destinations": [{"write_keys": ["k"]}]}, "destinations[0].type",
                         "required")
        self.assertError({"destinations": [{"type": True, "write_keys": ["k"]}]},
                         "destinations[0].type", "expected a string")
        e = self.assertError({"destinations": [{"type": "fake", "write_keys": ["k"]},
                                               {"type": "kafka", "write_keys": ["k"]}]},
                             "destinations[1].type")
        self.assertEqual(str(e), "destinations[1].type: unknown destination type: kafka")

    def test_type_that_cannot_be_imported(self):
        def lookup(name):
            raise ImportError("No module named 'stilgar.destinations.nope'")
        self.assertError({"destinations": [{"type": "nope", "write_keys": ["k"]}]},
                         "destinations[0].type", "cannot be loaded", destination_types=lookup)

    def bad_keys(self, value, key, fragment=""):
        return self.assertError({"destinations": [{"type": "fake", "write_keys": value}]},
                                key, fragment)

    def test_write_keys(self):
        self.assertError({"destinations": [{"type": "fake"}]}, "destinations[0].write_keys",
                         "required")
        self.bad_keys(None, "destinations[0].write_keys", "required")
        self.bad_keys([], "destinations[0].write_keys", "at least one")
        self.bad_keys("k1", "destinations[0].write_keys", "expected a list")
        self.bad_keys(["k1", False], "destinations[0].write_keys[1]", "quote it")
        self.bad_keys(["k1", ""], "destinations[0].write_keys[1]", "must not be empty")
        self.bad_keys(["k1", None], "destinations[0].write_keys[1]", "expected a string")
        self.bad_keys(["a:b"], "destinations[0].write_keys[0]", "':'")

    def test_duplicate_write_keys_in_a_block_are_merged(self):
        config = self.parse({"destinations": [{"type": "fake", "write_keys": ["k", "k"]}]})
        self.assertEqual(config.destinations[0].write_keys, frozenset(["k"]))

    def test_one_key_may_feed_several_destinations(self):
        config = self.parse({"destinations": [{"type": "fake", "write_keys": ["k"]},
                                              {"type": "other", "write_keys": ["k"]}]})
        self.assertEqual(config.all_write_keys(), frozenset(["k"]))

    def test_name(self):
        config = self.parse({"destinations": [{"type": "fake", "name": " main ",
                                               "write_keys": ["k"]}]})
        self.assertEqual(config.destinations[0].name, "main")
        self.assertError({"destinations": [{"type": "fake", "name": "", "write_keys": ["k"]}]},
                         "destinations[0].name", "must not be empty")
        self.assertError({"destinations": [{"type": "fake", "name": [5], "write_keys": ["k"]}]},
                         "destinations[0].name", "expected a string")

    def test_duplicate_default_names(self):
        e = self.assertError({"destinations": [
            {"type": "fake", "write_keys": ["a"]},
            {"type": "other", "write_keys": ["b"]},
            {"type": "fake", "write_keys": ["c"]}]}, "destinations[2].name", "duplicate")
        self.assertIn("fake:default", str(e))
        self.assertIn("destinations[0]", str(e))

    def test_duplicate_explicit_names(self):
        self.assertError({"destinations": [
            {"type": "fake", "name": "x", "write_keys": ["a"]},
            {"type": "other", "name": "x", "write_keys": ["b"]}]}, "destinations[1].name",
            "duplicate")

    def test_real_blackhole_type(self):
        config = parse_config({"destinations": [
            {"type": "blackhole", "write_keys": ["bk"]}]})
        destination = config.destinations[0]
        self.assertEqual((destination.type, destination.name, destination.write_keys),
                         ("blackhole", "blackhole", frozenset(["bk"])))
        self.assertEqual(config.warnings, ())
        e = self.assertRaises(ConfigError, parse_config, {"destinations": [
            {"type": "blackhole", "write_keys": ["bk"], "nmae": "x"}]})
        self.assertEqual(str(e), "destinations[0].nmae: unknown key; did you mean 'name'?")
        self.assertEqual(
            parse_config({"destinations": [{"type": "blackhole", "write_keys": ["bk"]},
                                           {"type": "blackhole", "name": "bh2",
                                            "write_keys": ["bk2"]}]}).all_write_keys(),
            frozenset(["bk", "bk2"]))

    def test_real_types_unknown(self):
        e = self.assertRaises(ConfigError, parse_config,
                              {"destinations": [{"type": "kafka", "write_keys": ["k"]}]})
        self.assertEqual(str(e), "destinations[0].type: unknown destination type: kafka")

    def test_config_all_write_keys_empty(self):
        self.assertEqual(Config().all_write_keys(), frozenset())


class SearchTests(ConfigTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.system = os.path.join(self.root, "etc", "withings")
        self.home = os.path.join(self.root, "home")
        self.xdg = os.path.join(self.root, "xdg")
        self.cwd = os.path.join(self.root, "cwd")
        for d in (self.system, self.home, self.xdg, self.cwd):
            os.makedirs(d)
        self.environ = {"HOME": self.home, "XDG_CONFIG_HOME": self.xdg}

    def find(self, explicit=None, environ=None):
        return find_config_file(explicit, environ if environ is not None else self.environ,
                                cwd=self.cwd, system_dir=self.system)

    def test_search_path(self):
        self.assertEqual(C.config_search_path(self.environ, self.cwd, self.system), [
            os.path.join(self.system, "stilgar.yml"), os.path.join(self.system, "stilgar.yaml"),
            os.path.join(self.xdg, "stilgar", "stilgar.yml"),
            os.path.join(self.xdg, "stilgar", "stilgar.yaml"),
            os.path.join(self.cwd, "stilgar.yml"), os.path.join(self.cwd, "stilgar.yaml")])

    def test_default_system_dir(self):
        self.assertEqual(C.config_search_path(self.environ, self.cwd)[:4],
                         ["/etc/stilgar/stilgar.yml", "/etc/stilgar/stilgar.yaml",
                          "/etc/withings/stilgar.yml", "/etc/withings/stilgar.yaml"])

    def test_stilgar_system_dir_wins_over_the_originals(self):
        new, old = os.path.join(self.root, "etc", "stilgar"), self.system
        os.makedirs(new)
        self.write(os.path.join(old, "stilgar.yml"), MINIMAL_YAML)
        self.write(os.path.join(new, "stilgar.yaml"), MINIMAL_YAML)
        found = find_config_file(None, self.environ, cwd=self.cwd, system_dir=(new, old))
        self.assertEqual(found, os.path.join(new, "stilgar.yaml"))
        os.remove(found)
        found = find_config_file(None, self.environ, cwd=self.cwd, system_dir=(new, old))
        self.assertEqual(found, os.path.join(old, "stilgar.yml"))

    def test_xdg_default_is_home_config(self):
        for environ in ({"HOME": self.home}, {"HOME": self.home, "XDG_CONFIG_HOME": ""},
                        {"HOME": self.home, "XDG_CONFIG_HOME": "relative/dir"}):
            path = C.config_search_path(environ, self.cwd, self.system)[2]
            self.assertEqual(path, os.path.join(self.home, ".config", "stilgar", "stilgar.yml"))

    def test_order(self):
        files = C.config_search_path(self.environ, self.cwd, self.system)
        for path in files:
            self.write(path, MINIMAL_YAML)
        for path in files:  # each file wins over those after it
            self.assertEqual(self.find(), path)
            os.remove(path)

    def test_cwd(self):
        path = self.write(os.path.join(self.cwd, "stilgar.yaml"), MINIMAL_YAML)
        self.assertEqual(self.find(), path)

    def test_home_config(self):
        path = self.write(os.path.join(self.home, ".config", "stilgar", "stilgar.yml"),
                          MINIMAL_YAML)
        self.assertEqual(self.find(environ={"HOME": self.home}), path)

    def test_environment_wins_over_search(self):
        self.write(os.path.join(self.system, "stilgar.yml"), MINIMAL_YAML)
        environ = dict(self.environ, STILGAR_CONFIG="/some/where.yml")
        self.assertEqual(self.find(environ=environ), "/some/where.yml")

    def test_explicit_wins_over_environment(self):
        environ = dict(self.environ, STILGAR_CONFIG="/some/where.yml")
        self.assertEqual(self.find("/explicit.yml", environ), "/explicit.yml")

    def test_empty_environment_value_is_unset(self):
        path = self.write(os.path.join(self.cwd, "stilgar.yml"), MINIMAL_YAML)
        self.assertEqual(self.find(environ=dict(self.environ, STILGAR_CONFIG="")), path)

    def test_nothing_found(self):
        e = self.assertRaises(ConfigError, self.find)
        self.assertEqual(e.key, "config")
        self.assertIn("no configuration file found (looked in: ", str(e))
        self.assertIn(os.path.join(self.xdg, "stilgar", "stilgar.yaml"), str(e))
        self.assertIn(os.path.join(self.cwd, "stilgar.yml"), str(e))
        self.assertNotIn("\n", str(e))

    def test_unparsable_file_on_search_path_is_an_error(self):
        bad = self.write(os.path.join(self.xdg, "stilgar", "stilgar.yml"), "server: [\n")
        self.write(os.path.join(self.cwd, "stilgar.yml"), MINIMAL_YAML)
        self.assertEqual(self.find(), bad)
        e = self.assertRaises(ConfigError, read_config_file, bad)
        self.assertEqual(e.key, bad)

    def test_load_config_does_not_skip_a_bad_file(self):
        if any(os.path.exists(p) for p in C.config_search_path({}, "/")[:4]):
            raise unittest.SkipTest("a real /etc/stilgar or /etc/withings stilgar.y(a)ml exists")
        bad = self.write(os.path.join(self.xdg, "stilgar", "stilgar.yml"), "server: {port: 1\n")
        e = self.assertRaises(ConfigError, load_config, environ=self.environ,
                              destination_types=fake_types())
        self.assertEqual(e.key, bad)
        self.assertIn("invalid YAML", str(e))

    def test_load_config_from_search_path(self):
        if any(os.path.exists(p) for p in C.config_search_path({}, "/")[:4]):
            raise unittest.SkipTest("a real /etc/stilgar or /etc/withings stilgar.y(a)ml exists")
        path = self.write(os.path.join(self.xdg, "stilgar", "stilgar.yaml"), MINIMAL_YAML)
        config = load_config(environ=self.environ, destination_types=fake_types())
        self.assertEqual(config.path, path)


class LoadTests(ConfigTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def load(self, text, **kw):
        path = self.write(os.path.join(self.dir, "stilgar.yml"), text)
        kw.setdefault("destination_types", fake_types())
        return load_config(path, environ={}, **kw)

    def assertLoadError(self, text, fragment):
        e = self.assertRaises(ConfigError, self.load, text)
        self.assertEqual(e.key, os.path.join(self.dir, "stilgar.yml"))
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        return e

    def test_load(self):
        config = self.load("server:\n  port: 9090\n  payload_size_limit: 1MiB\n" + MINIMAL_YAML,
                           listen="tcp:1234")
        self.assertEqual(config.path, os.path.join(self.dir, "stilgar.yml"))
        self.assertEqual(config.server.port, 9090)
        self.assertEqual(config.server.listen, "tcp:1234")

    def test_environment_path(self):
        path = self.write(os.path.join(self.dir, "other.yml"), MINIMAL_YAML)
        config = load_config(environ={"STILGAR_CONFIG": path}, destination_types=fake_types())
        self.assertEqual(config.path, path)

    def test_missing_file(self):
        path = os.path.join(self.dir, "missing.yml")
        e = self.assertRaises(ConfigError, load_config, path, environ={},
                              destination_types=fake_types())
        self.assertEqual(str(e), f"{path}: cannot read the configuration file: "
                                 "No such file or directory")

    def test_directory(self):
        e = self.assertRaises(ConfigError, load_config, self.dir, environ={},
                              destination_types=fake_types())
        self.assertIn("cannot read the configuration file", str(e))

    def test_yaml_syntax_error(self):
        e = self.assertLoadError("server:\n  port: 8080\n bad: [\n", "invalid YAML")
        self.assertIn("line 3", str(e))

    def test_tab_indentation(self):
        self.assertLoadError("server:\n\tport: 8080\n", "invalid YAML")

    def test_duplicate_keys(self):
        e = self.assertLoadError("server:\n  port: 1\n  port: 2\n" + MINIMAL_YAML,
                                 "duplicate key 'port'")
        self.assertIn("line 3", str(e))
        self.assertLoadError(MINIMAL_YAML + MINIMAL_YAML, "duplicate key 'destinations'")

    def test_merge_keys_are_not_duplicates(self):
        config = self.load("x-base: &b {port: 1, ip: 127.0.0.1}\nserver:\n  <<: *b\n  port: 2\n"
                           + MINIMAL_YAML)
        self.assertEqual((config.server.port, config.server.ip), (2, "127.0.0.1"))
        self.assertEqual(config.warnings, ())

    def test_empty_file(self):
        self.assertLoadError("", "empty")
        self.assertLoadError("# only a comment\n", "empty")

    def test_not_a_mapping(self):
        self.assertLoadError("- a\n- b\n", "expected a mapping of sections")

    def test_not_utf8(self):
        path = os.path.join(self.dir, "latin1.yml")
        with open(path, "wb") as f:
            f.write(b"server:\n  ip: caf\xe9\n")
        e = self.assertRaises(ConfigError, load_config, path, environ={},
                              destination_types=fake_types())
        self.assertIn("UTF-8", str(e))

    def test_utf8_bom(self):
        self.assertEqual(self.load("\ufeff" + MINIMAL_YAML).destinations[0].name, "fake:default")

    def test_python_tags_are_refused(self):
        self.assertLoadError("x: !!python/object/apply:os.getcwd []\n" + MINIMAL_YAML,
                             "invalid YAML")

    def test_value_error_names_the_key(self):
        e = self.assertRaises(ConfigError, self.load,
                              "server:\n  read_timeout: abc\n" + MINIMAL_YAML)
        self.assertEqual(str(e), "server.read_timeout: cannot read 'abc' as a duration"
                                 " (e.g. 5s, 1m, 1h 30m)")

    def test_yaml_syntax_of_sizes_and_durations(self):
        config = self.load(
            "server:\n  payload_size_limit: 1MB\n  idle_timeout: 1h 30m\n"
            "spool:\n  max_size: 2GiB\n  commit_window: 2ms\n" + MINIMAL_YAML)
        self.assertEqual(config.server.payload_size_limit, 1000000)
        self.assertEqual(config.server.idle_timeout, 5400)
        self.assertEqual(config.spool.max_size, 2 * 1024 ** 3)
        self.assertAlmostEqual(config.spool.commit_window, 0.002)

    def test_original_dev_config(self):
        """The original's stilgar.dev.yml still loads (its sizes, networks, admin)."""
        config = self.load(
            "server:\n  ip: 0.0.0.0\n  port: 8080\n  payload_size_limit: 1MiB\n"
            "  origins:\n    - http://localhost:8082\n"
            "  admin:\n    username: admin\n    password: p4ssw0rd\n    allowed_networks:\n"
            "      - 127.0.0.0/8\n      - 10.0.0.0/8\n      - 172.16.0.0/12\n"
            "      - 192.168.0.0/16\n"
            "logging:\n  level: debug\n"
            "forwarder:\n  max_queue_size: 10\n"
            "destinations:\n  - type: fake\n    write_keys:\n      - blackhole-write-key\n")
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.server.origins, ("http://localhost:8082",))
        self.assertEqual(config.server.admin.username, "admin")
        self.assertEqual(len(config.server.admin.allowed_networks), 4)
        self.assertEqual(config.forwarder.max_queue_size, 10)


class SampleFileTests(ConfigTestCase):
    def test_sample_parses_without_warnings(self):
        config = load_config(SAMPLE, environ={}, destination_types=fake_with_clickhouse())
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.server, ServerConfig())
        self.assertEqual(config.logging, LoggingConfig())
        self.assertEqual(config.forwarder, ForwarderConfig())
        self.assertEqual(config.privacy, PrivacyConfig())
        self.assertEqual(config.spool, SpoolConfig())
        clickhouse, blackhole = config.destinations
        self.assertEqual((clickhouse.type, clickhouse.name), ("clickhouse", "clickhouse:stilgar"))
        self.assertEqual((blackhole.type, blackhole.name), ("blackhole", "blackhole"))
        self.assertEqual(config.all_write_keys(),
                         frozenset(["clickhouse-write-key", "blackhole-write-key"]))

    def test_sample_clickhouse_block(self):
        lookup = fake_with_clickhouse()
        load_config(SAMPLE, environ={}, destination_types=lookup)
        [(where, block)] = lookup("clickhouse").calls
        self.assertEqual(where, "destinations[0]")
        self.assertEqual((block["host"], block["port"]), ("127.0.0.1", 8123))
        self.assertEqual((block["user"], block["password"], block["database"]),
                         ("default", "", "stilgar"))

    def test_sample_with_the_real_clickhouse_type(self):
        try:
            from stilgar.destinations import destination_type
            destination_type("clickhouse")
        except (ImportError, AttributeError):
            raise unittest.SkipTest("the clickhouse destination type is not there yet")
        config = load_config(SAMPLE, environ={})
        self.assertEqual([d.type for d in config.destinations], ["clickhouse", "blackhole"])



def destination_entry(**fields):
    entry = {"id": "d1", "name": "Braze Android", "enabled": True, "config": {"apiKey": "x"},
             "destinationDefinitionId": "dd1", "updatedAt": "2024-08-28T12:53:34.870Z",
             "destinationDefinition": {"name": "BRAZE", "displayName": "Braze"},
             "shouldApplyDeviceModeTransformation": False, "propagateEventsUntransformedOnError": False}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


class SourceConfigTests(ConfigTestCase):
    def test_absent_means_nothing_configured(self):
        self.assertEqual(self.parse(minimal()).source_config, {})

    def test_inline_entry(self):
        consent = {"providers": [{"provider": "ketch", "resolutionStrategy": "or"}]}
        config = self.parse(minimal(source_config={"k1": {"destinations": [destination_entry()],
                                                          "consentManagementMetadata": consent}}))
        served = config.source_config["k1"]
        self.assertEqual(served.destinations, (destination_entry(),))
        self.assertEqual(served.consent_management, consent)
        self.assertIsNone(served.dataplanes)
        self.assertEqual(config.warnings, ())

    def test_unknown_write_key(self):
        self.assertError(minimal(source_config={"k2": {"destinations": []}}), "source_config.k2",
                         "not a write key of any destination")

    def test_each_field_the_sdks_require(self):
        for field, bad in [("id", None), ("id", 5), ("name", None), ("enabled", "true"), ("enabled", None),
                           ("destinationDefinitionId", None), ("updatedAt", None), ("config", None),
                           ("config", []), ("destinationDefinition", None),
                           ("shouldApplyDeviceModeTransformation", 0),
                           ("propagateEventsUntransformedOnError", None)]:
            self.assertError(minimal(source_config={"k1": {"destinations": [destination_entry(**{field: bad})]}}),
                             f"source_config.k1.destinations[0].{field}", "Kotlin and Swift")
        self.assertError(minimal(source_config={"k1": {"destinations": [destination_entry(
            destinationDefinition={"name": "BRAZE"})]}}),
            "source_config.k1.destinations[0].destinationDefinition.displayName")
        self.assertError(minimal(source_config={"k1": {"destinations": {"a": 1}}}),
                         "source_config.k1.destinations", "expected a list")
        self.assertError(minimal(source_config={"k1": {"destinations": [1]}}),
                         "source_config.k1.destinations[0]", "expected a destination object")

    def test_values_must_be_json(self):
        import datetime
        entry = destination_entry(config={"since": datetime.date(2024, 1, 1)})
        self.assertError(minimal(source_config={"k1": {"destinations": [entry]}}),
                         "source_config.k1.destinations[0].config.since", "quote it")

    def test_dataplanes_only_when_given_and_warned(self):
        planes = {"US": [{"url": "https://dp.example.com", "default": True}]}
        config = self.parse(minimal(source_config={"k1": {"dataplanes": planes}}))
        self.assertEqual(config.source_config["k1"].dataplanes, planes)
        self.assertIn("dataplanes is served", config.warnings[0])
        self.assertError(minimal(source_config={"k1": {"dataplanes": {"APAC": []}}}),
                         "source_config.k1.dataplanes.APAC", "US and EU")
        self.assertError(minimal(source_config={"k1": {"dataplanes": {"US": [{"default": True}]}}}),
                         "source_config.k1.dataplanes.US[0]")

    def test_file_holding_a_copied_control_plane_answer(self):
        path = os.path.join(self.mktemp(), "braze.json")
        answer = {"source": {"id": "s", "enabled": True, "destinations": [destination_entry()],
                             "dataplanes": {"EU": [{"url": "https://rudderstack.example", "default": True}]}},
                  "consentManagementMetadata": {"providers": []}}
        self.write(path, json.dumps(answer))
        config = self.parse(minimal(source_config={"k1": path}))
        served = config.source_config["k1"]
        self.assertEqual(served.destinations, (destination_entry(),))
        self.assertIsNone(served.dataplanes)      # never taken from a copy
        self.assertIn("source.dataplanes of the copied answer is not served", config.warnings[0])
        yaml_path = self.write(os.path.join(os.path.dirname(path), "d.yml"),
                               "destinations:\n  - " + json.dumps(destination_entry()) + "\n")
        self.assertEqual(self.parse(minimal(source_config={"k1": yaml_path})).source_config["k1"].destinations,
                         (destination_entry(),))

    def test_bad_files(self):
        missing = os.path.join(self.mktemp(), "none.json")
        self.assertError(minimal(source_config={"k1": missing}), "source_config.k1", "cannot read")
        bad = self.write(os.path.join(self.mktemp(), "bad.json"), "{nope")
        self.assertError(minimal(source_config={"k1": bad}), "source_config.k1", "not JSON")
        self.assertError(minimal(source_config={"k1": 5}), "source_config.k1", "expected a mapping")


class ProblemReportTests(ConfigTestCase):
    """Every problem at once, each with its YAML line (doc/configuration.md)."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def load(self, text, environ=None, **kw):
        path = self.write(os.path.join(self.dir, "stilgar.yml"), text)
        kw.setdefault("destination_types", fake_types())
        return load_config(path, environ=environ or {}, **kw), path

    def test_lines_and_suggestions(self):
        text = ("server:\n  prot: 9000\n  ip: nowhere\nspool:\n  fsync: '1'\n"
                "destinations:\n  - type: fake\n    write_keys: [k]\n  - type: fake\n")
        path = self.write(os.path.join(self.dir, "stilgar.yml"), text)
        e = self.assertRaises(ConfigError, load_config, path, environ={},
                              destination_types=fake_types())
        self.assertEqual(C.format_problems(e).splitlines(), [
            f"{path}:2: server.prot: unknown key; did you mean 'port'?",
            f"{path}:3: server.ip: 'nowhere' is not an IP address (e.g. 0.0.0.0 or ::)",
            f"{path}:5: spool.fsync: expected true or false, got '1'",
            f"{path}:9: destinations[1].write_keys: required: a list of write keys",
        ])

    def test_yaml_error_is_located_once(self):
        path = self.write(os.path.join(self.dir, "stilgar.yml"), "server: [\n")
        e = self.assertRaises(ConfigError, load_config, path, environ={})
        self.assertTrue(C.format_problems(e).startswith(f"{path}: invalid YAML"), C.format_problems(e))


class StringScalarTests(ConfigTestCase):
    def test_number_keeps_its_written_text(self):
        """YAML 1.1 reads 0123 as octal 83: a string-typed key takes the text as written."""
        path = self.write(os.path.join(os.path.abspath(self.mktemp()), "s.yml"),
                          "server:\n  admin:\n    username: 007\n    password: 0123\n"
                          "destinations:\n  - type: clickhouse\n    host: ch\n    database: 2024\n"
                          "    password: 0123\n    user: 1.50\n    write_keys: [0x1F]\n")
        config = load_config(path, environ={})
        self.assertEqual((config.server.admin.username, config.server.admin.password), ("007", "0123"))
        settings = config.destinations[0].settings
        self.assertEqual((settings.password, settings.database, settings.user), ("0123", "2024", "1.50"))
        self.assertEqual(config.destinations[0].write_keys, frozenset(["0x1F"]))

    def test_numbers_still_count_as_numbers(self):
        path = self.write(os.path.join(os.path.abspath(self.mktemp()), "s.yml"),
                          "server:\n  port: 0x1F90\n" + MINIMAL_YAML)
        self.assertEqual(load_config(path, environ={}, destination_types=fake_types()).server.port, 8080)


class OneBoolRuleTests(ConfigTestCase):
    def clickhouse(self, **values):
        block = {"type": "clickhouse", "host": "ch", "database": "db", "write_keys": ["k"], **values}
        return parse_config({"destinations": [block]}).destinations[0].settings

    def test_same_rule_in_core_and_clickhouse(self):
        for text, value in (("yes", True), ("Off", False), ("true", True), (False, False)):
            self.assertEqual(self.parse(minimal(spool={"fsync": text})).spool.fsync, value)
            self.assertEqual(self.clickhouse(compression=text).compression, value)
        for wrong in ("1", "0", 1, "maybe"):
            self.assertSectionError("spool", {"fsync": wrong}, "spool.fsync", "expected true or false")
            e = self.assertRaises(ConfigError, self.clickhouse, compression=wrong)
            self.assertEqual((e.key, e.problem), ("destinations[0].compression",
                                                  f"expected true or false, got {wrong!r}"))

    def test_clickhouse_reports_every_problem(self):
        e = self.assertRaises(ConfigError, self.clickhouse, port=9100, query_timeout="5",
                              compression="1", colour="blue")
        self.assertEqual(sorted(p.key for p in e.problems), [
            "destinations[0].colour", "destinations[0].compression", "destinations[0].port",
            "destinations[0].query_timeout"])


class InterpolationTests(ConfigTestCase):
    def clickhouse(self, environ, **values):
        block = {"type": "clickhouse", "host": "ch", "database": "db", "write_keys": ["k"], **values}
        return parse_config({"destinations": [block]}, environ=environ).destinations[0].settings

    def test_set_default_and_escape(self):
        env = {"CH_PASSWORD": "s3cret", "CH_HOST": "ch.internal", "EMPTY": ""}
        s = self.clickhouse(env, password="${CH_PASSWORD}", host="${CH_HOST}",
                            user="${CH_USER:-collector}", database="db_${EMPTY:-main}")
        self.assertEqual((s.password, s.url, s.user, s.database),
                         ("s3cret", "http://ch.internal:8123", "collector", "db_main"))
        s = self.clickhouse({}, password="a$$b$c${x")
        self.assertEqual(s.password, "a$b$c${x")

    def test_numbers_from_the_environment(self):
        config = self.parse(minimal(server={"port": "${PORT}"}), environ={"PORT": "9090"})
        self.assertEqual(config.server.port, 9090)

    def test_unset_variable_is_an_error_naming_it(self):
        e = self.assertRaises(ConfigError, self.clickhouse, {}, password="${CH_PASSWORD}")
        self.assertEqual(e.key, "destinations[0].password")
        self.assertIn("environment variable CH_PASSWORD is not set", e.problem)
        e = self.assertRaises(ConfigError, self.parse,
                              minimal(server={"admin": {"username": "${A}", "password": "${B}"}}),
                              environ={})
        self.assertEqual(sorted(p.key for p in e.problems),
                         ["server.admin.password", "server.admin.username"])

    def test_load_config_reads_the_given_environment(self):
        path = self.write(os.path.join(os.path.abspath(self.mktemp()), "s.yml"),
                          "spool:\n  path: ${STATE_DIRECTORY:-/tmp}/spool\n" + MINIMAL_YAML)
        config = load_config(path, environ={"STATE_DIRECTORY": "/var/lib/stilgar"},
                             destination_types=fake_types())
        self.assertEqual(config.spool.path, "/var/lib/stilgar/spool")


class SecretFileTests(ConfigTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.secret = self.write(os.path.join(self.dir, "secret"), "from-a-file\n")

    def test_admin_password_file(self):
        config = self.parse(minimal(server={"admin": {"username": "a", "password_file": self.secret}}))
        self.assertEqual(config.server.admin.password, "from-a-file")

    def test_clickhouse_password_file_with_interpolated_path(self):
        config = parse_config({"destinations": [{
            "type": "clickhouse", "host": "ch", "database": "db", "write_keys": ["k"],
            "password_file": "${CREDENTIALS_DIRECTORY}/secret"}]},
            environ={"CREDENTIALS_DIRECTORY": self.dir})
        self.assertEqual(config.destinations[0].settings.password, "from-a-file")

    def test_hash_secret_file(self):
        self.write(self.secret, "0123456789abcdef0123")
        config = self.parse(minimal(privacy={"ip": "hash", "hash_secret_file": self.secret}))
        self.assertEqual(config.privacy.hash_secret, b"0123456789abcdef0123")

    def test_both_or_missing_file(self):
        self.assertSectionError("server", {"admin": {"password": "x", "password_file": self.secret}},
                                "server.admin.password", "not both")
        self.assertSectionError("server", {"admin": {"password_file": "/nonexistent/pw"}},
                                "server.admin.password_file", "cannot read /nonexistent/pw")
