"""Enrichment at the door (doc/enrichment.md): GeoIP, user agents, bots.

Fixture databases are built at test time (tests/mmdb_fixture.py); user agents
are real ones. The ClickHouse tests need the real server of tests/chserver.py."""

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from stilgar import metrics
from stilgar.config import GEO_FIELDS, ConfigError, parse_config
from stilgar.events import normalise_payload
from stilgar.enrichment import Enrichment, GeoDatabase, GeoDatabaseError, open_mmdb
from stilgar.events.enrich import GEO_GETTERS, BoundedCache, Enricher, geo_from_record
from stilgar.service import check_enrich_files

from . import mmdb_fixture
from .helpers import OTHER_KEY, WRITE_KEY, FakeIntake, answer, basic, make_app, make_config, stub
from .mmdb_fixture import BERLIN, PARIS, write_mmdb

# real user agents: (name, text, browser, os, deviceType)
HUMANS = [
    ("chrome-windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", "Chrome", "Windows", "desktop"),
    ("firefox-linux", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
     "Firefox", "Linux", "desktop"),
    ("safari-mac", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/18.1 Safari/605.1.15", "Safari", "Mac OS X", "desktop"),
    ("chrome-android", "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36", "Chrome Mobile", "Android", "mobile"),
    ("safari-iphone", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "Mobile Safari", "iOS", "mobile"),
    ("safari-ipad", "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/18.1 Mobile/15E148 Safari/604.1", "Mobile Safari", "iOS", "tablet"),
    ("firefox-android", "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
     "Firefox Mobile", "Android", "mobile"),
]
BOTS = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
                            "(KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; "
                            "Googlebot/2.1; +http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
               "+http://www.bing.com/bingbot.htm) Chrome/131.0.0.0 Safari/537.36",
    "curl": "curl/8.5.0",
    "headless-chrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "HeadlessChrome/131.0.0.0 Safari/537.36",
    "uptimerobot": "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "pingdom": "Mozilla/5.0 (compatible; Pingdom.com_bot_version_1.4; http://www.pingdom.com/)",
}
CHROME = HUMANS[0][1]


def sync_thread(f, *args):
    """Runs 'in a thread' synchronously, so that a Clock drives the reload checks."""
    return defer.maybeDeferred(f, *args)


def enrich_config(**enrich):
    return parse_config({"enrich": enrich, "destinations": [{"type": "blackhole", "write_keys": ["k"]}]})


class LogCapture:
    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "stilgar.enrich"]


class GeoRecordTests(unittest.TestCase):
    def test_rudderstack_keys(self):
        self.assertEqual(set(GEO_GETTERS), set(GEO_FIELDS))
        self.assertEqual(geo_from_record(PARIS, GEO_FIELDS), {
            "country": "FR", "region": "Île-de-France", "city": "Paris", "postal": "75001",
            "location": "48.856600,2.352200", "timezone": "Europe/Paris"})

    def test_only_the_fields_asked(self):
        self.assertEqual(geo_from_record(BERLIN, ("country", "region")), {"country": "DE", "region": "Land Berlin"})

    def test_partial_or_odd_records(self):
        self.assertEqual(geo_from_record({"country": {"iso_code": "ZZ"}}, GEO_FIELDS), {"country": "ZZ"})
        self.assertIsNone(geo_from_record(None, GEO_FIELDS))
        self.assertIsNone(geo_from_record({}, GEO_FIELDS))
        odd = {"country": "FR", "subdivisions": [], "city": {"names": []}, "location": {"latitude": "x"}}
        self.assertIsNone(geo_from_record(odd, GEO_FIELDS))


class UserAgentTests(unittest.TestCase):
    def setUp(self):
        self.enricher = Enricher(enrich_config(user_agent=True, bots={"action": "flag"}).enrich)

    def test_real_browsers(self):
        for name, text, browser, os_name, kind in HUMANS:
            ua, bot = self.enricher.ua_cache.get(text)
            self.assertEqual((ua["browser"], ua["os"], ua["deviceType"]), (browser, os_name, kind), name)
            self.assertFalse(bot, name)
        ua, _ = self.enricher.ua_cache.get(HUMANS[4][1])
        self.assertEqual(ua, {"browser": "Mobile Safari", "browserVersion": "18.1", "os": "iOS",
                              "osVersion": "18.1", "deviceFamily": "iPhone", "deviceBrand": "Apple",
                              "deviceModel": "iPhone", "deviceType": "mobile"})
        ua, _ = self.enricher.ua_cache.get(CHROME)
        self.assertEqual((ua["browserVersion"], ua["osVersion"]), ("131.0.0.0", "10"))

    def test_real_bots(self):
        for name, text in BOTS.items():
            _, bot = self.enricher.ua_cache.get(text)
            self.assertTrue(bot, name)

    def test_extra_patterns(self):
        enricher = Enricher(enrich_config(bots={"extra_patterns": ["acme-?probe/\\d"]}).enrich)
        self.assertTrue(enricher.is_bot("Mozilla/5.0 (compatible; ACME-Probe/3)"))
        self.assertFalse(enricher.is_bot(CHROME))
        self.assertTrue(enricher.is_bot(BOTS["curl"]))

    def test_unknown_agent(self):
        ua, bot = self.enricher.ua_cache.get("something/1 odd")
        self.assertFalse(bot)
        self.assertNotIn("browser", ua or {})


class CacheTests(unittest.TestCase):
    def test_bounded_in_bytes_lru(self):
        calls = []
        cache = BoundedCache(lambda t: calls.append(t) or t.upper(), max_bytes=3 * (600 + 3), entry_bytes=600)
        for text in ("aaa", "bbb", "ccc", "aaa"):
            cache.get(text)
        self.assertEqual((cache.hits, cache.misses, len(cache)), (1, 3, 3))
        cache.get("ddd")             # evicts the least recently used: bbb
        self.assertEqual(len(cache), 3)
        self.assertLessEqual(cache.bytes, cache.max_bytes)
        cache.get("aaa")
        self.assertEqual(cache.hits, 2)
        cache.get("bbb")
        self.assertEqual(calls, ["aaa", "bbb", "ccc", "ddd", "bbb"])
        self.assertAlmostEqual(cache.hit_rate(), 2 / 7)

    def test_none_is_cached_too(self):
        calls = []
        cache = BoundedCache(lambda t: calls.append(t), max_bytes=10_000, entry_bytes=100)
        self.assertIsNone(cache.get("203.0.113.9"))
        self.assertIsNone(cache.get("203.0.113.9"))
        self.assertEqual((calls, cache.hits), (["203.0.113.9"], 1))


class GeoDatabaseTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = write_mmdb(os.path.join(self.dir, "city.mmdb"))
        self.clock = Clock()
        self.db = GeoDatabase(self.path, self.clock, check_interval=5, in_thread=sync_thread)
        self.db.open()
        self.addCleanup(self.db.stop)
        self.logs = LogCapture(self)

    def country(self, ip):
        from ipaddress import ip_address
        record = self.db.lookup(ip_address(ip))
        return record["country"]["iso_code"] if record else None

    def test_lookups(self):
        self.assertEqual(self.country("192.0.2.1"), "FR")
        self.assertEqual(self.country("198.51.100.200"), "US")
        self.assertEqual(self.country("2001:db8::5"), "DE")
        self.assertEqual(self.country("127.0.0.1"), "ZZ")
        self.assertIsNone(self.country("203.0.113.9"))

    def test_missing_or_unreadable_at_start(self):
        with self.assertRaises(GeoDatabaseError) as e:
            GeoDatabase(os.path.join(self.dir, "nope.mmdb"), self.clock).open()
        self.assertIn("no such file", str(e.exception))
        garbage = os.path.join(self.dir, "garbage.mmdb")
        with open(garbage, "wb") as f:
            f.write(b"not a database" * 100)
        with self.assertRaises(GeoDatabaseError) as e:
            GeoDatabase(garbage, self.clock).open()
        self.assertIn("not a readable MaxMind database", str(e.exception))

    def test_replaced_file_is_picked_up_at_the_next_check(self):
        self.db.start()
        write_mmdb(self.path, mmdb_fixture.SECOND)
        self.clock.advance(4)
        self.assertEqual(self.country("192.0.2.1"), "FR")  # not checked yet
        self.clock.advance(1)
        self.assertEqual(self.country("192.0.2.1"), "BE")
        self.assertEqual(self.db.state, "open")
        self.assertTrue(any("reloaded" in t for t in self.logs.texts()))

    def test_unchanged_file_is_not_reopened(self):
        opened = []
        db = GeoDatabase(self.path, self.clock, 5, in_thread=sync_thread,
                         opener=lambda p: opened.append(p) or open_mmdb(p))
        db.open()
        self.addCleanup(db.stop)
        db.start()
        self.clock.advance(20)
        self.assertEqual(len(opened), 1)
        db.check(force=True)  # SIGHUP
        self.assertEqual(len(opened), 2)

    def test_disappearing_file_means_no_geo_then_comes_back(self):
        self.db.start()
        os.remove(self.path)
        self.clock.advance(5)
        self.assertEqual(self.db.state, "missing")
        self.assertIsNone(self.country("192.0.2.1"))
        self.clock.advance(5)  # logged once, not at every check
        gone = [t for t in self.logs.texts() if "no such file" in t]
        self.assertEqual(len(gone), 1)
        self.assertIn(self.path, gone[0])
        write_mmdb(self.path, mmdb_fixture.SECOND)
        self.clock.advance(5)
        self.assertEqual((self.db.state, self.country("192.0.2.1")), ("open", "BE"))
        self.assertTrue(any("is back" in t for t in self.logs.texts()))

    def test_broken_replacement_keeps_the_previous_database(self):
        self.db.start()
        tmp = self.path + ".new"
        with open(tmp, "wb") as f:
            f.write(b"\x00" * 4096)
        os.replace(tmp, self.path)
        self.clock.advance(5)
        self.assertEqual(self.country("192.0.2.1"), "FR")
        self.clock.advance(5)
        broken = [t for t in self.logs.texts() if "not a readable MaxMind database" in t]
        self.assertEqual(len(broken), 1)
        self.assertIn("previous database goes on serving", broken[0])
        write_mmdb(self.path, mmdb_fixture.SECOND)
        self.clock.advance(5)
        self.assertEqual(self.country("192.0.2.1"), "BE")

    @defer.inlineCallbacks
    def test_check_in_a_real_thread(self):
        from twisted.internet import reactor
        db = GeoDatabase(self.path, reactor, 5)
        db.open()
        self.addCleanup(db.stop)
        write_mmdb(self.path, mmdb_fixture.SECOND)
        yield db.check()
        from ipaddress import ip_address
        self.assertEqual(db.lookup(ip_address("192.0.2.1"))["country"]["iso_code"], "BE")


class ConfigTests(unittest.TestCase):
    def parse(self, enrich, destinations=None):
        return parse_config({"enrich": enrich, "destinations": destinations or [
            {"type": "blackhole", "write_keys": ["k"]}]})

    def test_defaults(self):
        config = self.parse(None)
        self.assertFalse(config.enrich.enabled)
        config = self.parse({"geoip": {"database": "/x.mmdb"}, "user_agent": True, "bots": True})
        self.assertEqual(config.enrich.geoip.fields, ("country", "region", "city", "timezone"))
        self.assertEqual(config.enrich.geoip.check_interval, 5.0)
        self.assertEqual(config.enrich.bots.action, "flag")
        config = self.parse({"geoip": {"database": "/x.mmdb", "fields": ["country", "postal"],
                                       "check_interval": "1m"}, "bots": {"action": "drop"}})
        self.assertEqual((config.enrich.geoip.fields, config.enrich.geoip.check_interval,
                          config.enrich.bots.action), (("country", "postal"), 60.0, "drop"))

    def test_errors(self):
        for enrich, key in [
            ({"geoip": {}}, "enrich.geoip.database"),
            ({"geoip": {"database": "/x", "fields": ["country", "street"]}}, "enrich.geoip.fields[1]"),
            ({"geoip": {"database": "/x", "fields": []}}, "enrich.geoip.fields"),
            ({"bots": {"action": "block"}}, "enrich.bots.action"),
            ({"bots": {"extra_patterns": ["("]}}, "enrich.bots.extra_patterns[0]"),
            ({"user_agent": "maybe"}, "enrich.user_agent"),
        ]:
            with self.assertRaises(ConfigError) as e:
                self.parse(enrich)
            self.assertIn(key, str(e.exception))

    def test_destination_override(self):
        config = self.parse({"user_agent": True, "bots": {"action": "flag"}}, [
            {"type": "blackhole", "name": "a", "write_keys": ["k1"]},
            {"type": "blackhole", "name": "b", "write_keys": ["k2"],
             "enrich": {"bots": {"action": "drop"}, "user_agent": False}},
            {"type": "blackhole", "name": "c", "write_keys": ["k3"], "enrich": {"bots": False}},
        ])
        by_key = config.enrich_by_write_key()
        self.assertEqual(by_key["k1"].bots.action, "flag")
        self.assertEqual((by_key["k2"].bots.action, by_key["k2"].user_agent), ("drop", False))
        self.assertEqual((by_key["k3"].bots, by_key["k3"].user_agent), (None, True))
        self.assertEqual(config.warnings, ())

    def test_shared_write_key_must_agree(self):
        with self.assertRaises(ConfigError) as e:
            self.parse({"user_agent": True}, [
                {"type": "blackhole", "name": "a", "write_keys": ["k"]},
                {"type": "blackhole", "name": "b", "write_keys": ["k"], "enrich": {"user_agent": False}}])
        self.assertIn("destinations[1].enrich", str(e.exception))

    def test_missing_database_is_a_config_error_at_start(self):
        config = self.parse({"geoip": {"database": "/nonexistent/city.mmdb"}})
        with self.assertRaises(ConfigError) as e:
            check_enrich_files(config)
        self.assertIn("enrich.geoip.database", str(e.exception))
        self.assertIn("/nonexistent/city.mmdb", str(e.exception))


class DoorTests(unittest.TestCase):
    """Through the web app: the client IP as the web layer resolved it, privacy after enrichment."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = write_mmdb(os.path.join(self.dir, "city.mmdb"))

    def app(self, enrich=None, privacy=None, server=None, destinations=None):
        sections = {"enrich": enrich or {"geoip": {"database": self.path}}}
        if privacy:
            sections["privacy"] = privacy
        if server:
            sections["server"] = server
        if destinations:
            sections["destinations"] = destinations
        app, intake, clock = make_app(make_config(**sections))
        self.addCleanup(app.enrichment.stop)
        return app, intake

    @defer.inlineCallbacks
    def post(self, app, body, forwarded=None, path="/v1/batch", key=WRITE_KEY):
        headers = {b"Content-Type": [b"application/json"], b"Authorization": [basic(key)]}
        if forwarded:
            headers[b"X-Forwarded-For"] = [forwarded.encode()]
        response = yield stub(app).post("http://stilgar.test" + path, data=json.dumps(body).encode(),
                                        headers=headers)
        result = yield answer(response)
        return result

    def batch(self, *agents, **context):
        return {"batch": [{"type": "track", "event": "E", "anonymousId": "a", "messageId": f"m{i}",
                           "context": dict(context, **({"userAgent": ua} if ua else {}))}
                          for i, ua in enumerate(agents)]}

    @defer.inlineCallbacks
    def test_geo_from_the_forwarded_address_and_no_ip(self):
        app, intake = self.app(privacy={"ip": "drop"})
        status, _, _ = yield self.post(app, self.batch(None, None), forwarded="192.0.2.44")
        self.assertEqual(status, 200)
        events = intake.events()
        self.assertEqual(len(events), 2)
        for ev in events:
            self.assertEqual(ev["context"]["geo"], {"country": "FR", "region": "Île-de-France", "city": "Paris",
                                                    "timezone": "Europe/Paris"})
            self.assertNotIn("ip", ev["context"])

    @defer.inlineCallbacks
    def test_pixel_events_are_located_too(self):
        app, intake = self.app()
        response = yield stub(app).get(
            f"http://stilgar.test/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=Opened",
            headers={b"X-Forwarded-For": [b"198.51.100.3"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(intake.events()[0]["context"]["geo"]["country"], "US")

    @defer.inlineCallbacks
    def test_truncate_after_geo(self):
        app, intake = self.app(privacy={"ip": "truncate"})
        yield self.post(app, self.batch(None), forwarded="198.51.100.77")
        context = intake.events()[0]["context"]
        self.assertEqual((context["geo"]["country"], context["ip"]), ("US", "198.51.100.0"))

    @defer.inlineCallbacks
    def test_located_before_the_ip_is_truncated_or_hashed(self):
        # 203.0.113.200 is in Tokyo; its truncation 203.0.113.0 has no record
        app, intake = self.app(privacy={"ip": "truncate"})
        yield self.post(app, self.batch(None), forwarded="203.0.113.200")
        context = intake.events()[0]["context"]
        self.assertEqual((context["geo"]["city"], context["ip"]), ("Tokyo", "203.0.113.0"))
        app, intake = self.app(privacy={"ip": "hash", "hash_secret": "s" * 32})
        yield self.post(app, self.batch(None, ip="203.0.113.201"))
        context = intake.events()[0]["context"]
        self.assertEqual((context["geo"]["country"], len(context["ip"])), ("JP", 64))

    @defer.inlineCallbacks
    def test_context_ip_of_a_server_sdk_wins(self):
        app, intake = self.app(privacy={"ip": "keep"})
        yield self.post(app, self.batch(None, ip="2001:db8::7"), forwarded="192.0.2.1")
        context = intake.events()[0]["context"]
        self.assertEqual((context["geo"]["country"], context["ip"]), ("DE", "2001:db8::7"))

    @defer.inlineCallbacks
    def test_untrusted_peer_forwarded_header_ignored(self):
        # no trusted proxies: the StubTreq peer (127.0.0.1) is the client
        app, intake = self.app(server={"trusted_proxies": []})
        yield self.post(app, self.batch(None), forwarded="192.0.2.1")
        self.assertEqual(intake.events()[0]["context"]["geo"], {"country": "ZZ"})

    @defer.inlineCallbacks
    def test_address_without_record_adds_nothing(self):
        app, intake = self.app()
        yield self.post(app, self.batch(None), forwarded="203.0.113.9")
        self.assertNotIn("geo", intake.events()[0]["context"])

    @defer.inlineCallbacks
    def test_user_agent_before_drop_fields(self):
        app, intake = self.app(enrich={"user_agent": True},
                               privacy={"drop_fields": ["context.userAgent", "context.ua.deviceModel"]})
        yield self.post(app, self.batch(HUMANS[4][1], HUMANS[4][1]))
        for ev in intake.events():
            self.assertNotIn("userAgent", ev["context"])
            self.assertEqual(ev["context"]["ua"]["browser"], "Mobile Safari")
            self.assertNotIn("deviceModel", ev["context"]["ua"])
        # the cached object itself was not changed by drop_fields
        self.assertIn("deviceModel", app.enrichment.for_key(WRITE_KEY).ua_cache.get(HUMANS[4][1])[0])

    def bot_count(self, action):
        return metrics.REGISTRY.get_sample_value("stilgar_events_bots_total", {"action": action}) or 0

    @defer.inlineCallbacks
    def test_bots_flag(self):
        app, intake = self.app(enrich={"bots": {"action": "flag"}})
        before = self.bot_count("flag")
        agents = [h[1] for h in HUMANS] + list(BOTS.values())
        yield self.post(app, self.batch(*agents, None))
        flags = [ev["context"].get("bot") for ev in intake.events()]
        self.assertEqual(flags, [False] * len(HUMANS) + [True] * len(BOTS) + [None])
        self.assertEqual(self.bot_count("flag") - before, len(BOTS))

    @defer.inlineCallbacks
    def test_bots_drop(self):
        app, intake = self.app(enrich={"bots": {"action": "drop"}})
        before = self.bot_count("drop")
        status, body, _ = yield self.post(app, self.batch(CHROME, BOTS["googlebot"], BOTS["curl"], HUMANS[1][1]))
        self.assertEqual((status, body), (200, b"OK"))
        self.assertEqual([ev["messageId"] for ev in intake.events()], ["m0", "m3"])
        self.assertNotIn("bot", intake.events()[0]["context"])
        # only bots: 200 (no retry), nothing stored
        for name, ua in BOTS.items():
            status, body, _ = yield self.post(app, {"anonymousId": "a", "event": "E", "context": {"userAgent": ua}},
                                              path="/v1/track")
            self.assertEqual(status, 200, name)
        self.assertEqual(len(intake.accepted), 1)
        self.assertEqual(self.bot_count("drop") - before, 2 + len(BOTS))

    @defer.inlineCallbacks
    def test_bots_keep(self):
        app, intake = self.app(enrich={"bots": {"action": "keep"}})
        before = self.bot_count("keep")
        yield self.post(app, self.batch(BOTS["bingbot"], BOTS["pingdom"], CHROME))
        self.assertEqual(len(intake.events()), 3)
        self.assertTrue(all("bot" not in ev["context"] for ev in intake.events()))
        self.assertEqual(self.bot_count("keep") - before, 2)

    @defer.inlineCallbacks
    def test_per_destination_override(self):
        app, intake = self.app(enrich={"bots": {"action": "flag"}}, destinations=[
            {"type": "blackhole", "name": "a", "write_keys": [WRITE_KEY]},
            {"type": "blackhole", "name": "b", "write_keys": [OTHER_KEY], "enrich": {"bots": {"action": "drop"}}}])
        yield self.post(app, self.batch(BOTS["curl"]), key=WRITE_KEY)
        yield self.post(app, self.batch(BOTS["curl"]), key=OTHER_KEY)
        self.assertEqual([(k, [e["context"].get("bot") for e in evs]) for k, _, evs in intake.accepted],
                         [(WRITE_KEY, [True])])

    @defer.inlineCallbacks
    def test_database_replaced_while_running(self):
        config = make_config(enrich={"geoip": {"database": self.path, "check_interval": "2s"}})
        clock = Clock()
        enrichment = Enrichment.from_config(config.enrich_by_write_key(), clock, in_thread=sync_thread)
        self.addCleanup(enrichment.stop)
        app, intake, _ = make_app(config)
        app.enrichment = enrichment
        enrichment.start()
        yield self.post(app, self.batch(None), forwarded="192.0.2.1")
        write_mmdb(self.path, mmdb_fixture.SECOND)
        clock.advance(2)
        yield self.post(app, self.batch(None), forwarded="192.0.2.1")
        self.assertEqual([e["context"]["geo"]["country"] for e in intake.events()], ["FR", "BE"])
        os.remove(self.path)
        clock.advance(2)
        status, _, _ = yield self.post(app, self.batch(None), forwarded="192.0.2.1")
        self.assertEqual(status, 200)
        self.assertNotIn("geo", intake.events()[-1]["context"])


class NormaliseHookTests(unittest.TestCase):
    def test_without_enrich_unchanged_and_geo_cached(self):
        import datetime
        lookups = []

        class CountingDb:
            generation = 1

            def lookup(self, addr):
                lookups.append(addr)
                return PARIS
        settings = enrich_config(geoip={"database": "/unused"}).enrich
        enricher = Enricher(settings, CountingDb())
        payload = {"batch": [{"type": "track", "event": "E", "anonymousId": "a"}] * 50}
        kw = dict(route_type=None, received_at=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                  client_ip="192.0.2.1", privacy=make_config().privacy, max_events=100)
        plain = normalise_payload(payload, **kw)
        self.assertTrue(all("geo" not in e["context"] for e in plain))
        enriched = normalise_payload(payload, enrich=enricher, **kw)
        self.assertTrue(all(e["context"]["geo"]["country"] == "FR" for e in enriched))
        self.assertEqual(len(lookups), 1)  # one lookup per address
        normalise_payload(payload, enrich=enricher, **kw)
        self.assertEqual(len(lookups), 1)  # cached across requests

    def test_geo_cache_emptied_when_the_database_changes(self):
        lookups = []

        class CountingDb:
            generation = 1

            def lookup(self, addr):
                lookups.append(addr)
                return PARIS if self.generation == 1 else BERLIN
        db = CountingDb()
        enricher = Enricher(enrich_config(geoip={"database": "/unused"}).enrich, db)
        context = {}
        enricher.for_request("192.0.2.1")(context)
        self.assertEqual(context["geo"]["country"], "FR")
        db.generation = 2
        context = {}
        enricher.for_request("192.0.2.1")(context)
        self.assertEqual((context["geo"]["country"], len(lookups)), ("DE", 2))


class ClickHouseTests(unittest.TestCase):
    """Collector -> real ClickHouse: the columns enrichment fills, the IP policy after it."""

    timeout = 60

    def setUp(self):
        from .test_clickhouse_integration import IntegrationBase
        self.base = IntegrationBase(methodName="setUp")
        self.base._testMethodName = self._testMethodName
        self.base.id = self.id
        self.base.setUp()
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = write_mmdb(os.path.join(self.dir, "city.mmdb"))

    def tearDown(self):
        return self.base.tearDown()

    @defer.inlineCallbacks
    def store(self, ip_mode, forwarded, agent):
        config = make_config(enrich={"geoip": {"database": self.path, "fields": ["country", "region", "city"]},
                                     "user_agent": True, "bots": {"action": "flag"}},
                             privacy={"ip": ip_mode})
        app, intake, _ = make_app(config, FakeIntake())
        self.addCleanup(app.enrichment.stop)
        body = {"batch": [{"type": "track", "event": "Bought", "anonymousId": "a", "messageId": f"{ip_mode}-{i}",
                           "context": {"userAgent": ua}} for i, ua in enumerate(agent)]}
        response = yield stub(app).post("http://stilgar.test/v1/batch", data=json.dumps(body).encode(), headers={
            b"Authorization": [basic(WRITE_KEY)], b"Content-Type": [b"application/json"],
            b"X-Forwarded-For": [f"10.1.2.3, {forwarded}".encode()]})
        self.assertEqual(response.code, 200)
        dest = yield self.base.destination()
        yield self.base.write(dest, intake.events())

    @defer.inlineCallbacks
    def test_geo_ua_bot_columns_and_no_ip(self):
        yield self.store("drop", "192.0.2.10", [CHROME, BOTS["googlebot"]])
        rows = yield self.base.select(
            f"SELECT id, context_geo_country, context_geo_region, context_geo_city, context_ip, context_ua_browser,"
            f" context_ua_os, context_ua_device_type, context_bot FROM `{self.base.db}`.tracks ORDER BY id")
        self.assertEqual(rows, [
            ["drop-0", "FR", "Île-de-France", "Paris", None, "Chrome", "Windows", "desktop", "0"],
            ["drop-1", "FR", "Île-de-France", "Paris", None, "Googlebot", None, "bot", "1"],
        ])
        columns = yield self.base.columns("tracks")
        self.assertNotIn("context_geo_postal", columns)  # not among the fields asked

    @defer.inlineCallbacks
    def test_truncated_ip_with_geo(self):
        yield self.store("truncate", "198.51.100.99", [HUMANS[4][1]])
        rows = yield self.base.select(
            f"SELECT context_geo_country, context_geo_region, context_ip, context_ua_device_type"
            f" FROM `{self.base.db}`.tracks")
        self.assertEqual(rows, [["US", "California", "198.51.100.0", "mobile"]])


class SighupTests(unittest.TestCase):
    def test_parent_passes_sighup_to_its_workers(self):
        from stilgar.workers import ParentService

        class Transport:
            def __init__(self):
                self.signals = []

            def signalProcess(self, name):
                self.signals.append(name)

        class Worker:
            def __init__(self):
                self.transport = Transport()
        config = make_config(enrich={"geoip": {"database": "/x.mmdb"}})
        self.assertEqual(config.geoip_databases(), {"/x.mmdb"})
        self.assertEqual(make_config().geoip_databases(), frozenset())
        parent = ParentService(config, "/etc/stilgar.yml", Clock())
        parent.workers = {0: Worker(), 1: Worker()}
        parent._hup()
        self.assertEqual([w.transport.signals for w in parent.workers.values()], [["HUP"], ["HUP"]])

    def test_sighup_reopens_every_database(self):
        from stilgar.service import EnrichService
        reloads = []

        class FakeEnrichment:
            databases = {"x": object()}

            def start(self):
                pass

            def stop(self):
                pass

            def reload(self):
                reloads.append(1)
        clock = Clock()
        clock.callFromThread = lambda f, *a: f(*a)
        service = EnrichService(FakeEnrichment(), clock)
        import signal
        before = signal.getsignal(signal.SIGHUP)
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(reloads, [1])
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class ProcessTests(unittest.TestCase):
    """twistd in a child process: the configuration error at start, SIGHUP while running."""

    timeout = 90

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def config(self, database):
        from .processes import free_port
        from .test_twistd import write_config
        self.port = free_port()
        return write_config(self.dir, self.port, extra=f"enrich:\n  geoip:\n    database: {database}\n"
                                                        f"    check_interval: 1h\n")

    def test_missing_database_exits_78_with_one_line(self):
        import subprocess
        from .processes import ROOT, TWISTD
        config = self.config(os.path.join(self.dir, "missing.mmdb"))
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", config],
                                capture_output=True, text=True, cwd=self.dir, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(result.returncode, 78)   # EX_CONFIG, as every configuration error
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("enrich.geoip.database", result.stderr)
        self.assertIn("missing.mmdb: no such file", result.stderr)

    @defer.inlineCallbacks
    def test_sighup_reopens_the_database(self):
        from .processes import StilgarProcess, wait_for
        path = write_mmdb(os.path.join(self.dir, "city.mmdb"))
        # started: "listening on" is in the log (SIGHUP is caught from before that line)
        proc = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", self.config(path)], self.dir)
        yield proc.start()
        try:
            write_mmdb(path, mmdb_fixture.SECOND)
            proc.signal("HUP")
            yield wait_for(lambda: "reloaded" in proc.output() or proc.watcher.ended.called, timeout=20)
            self.assertIn("reloaded", proc.output())
            os.remove(path)
            proc.signal("HUP")
            yield wait_for(lambda: "no such file" in proc.output(), timeout=20)
            self.assertFalse(proc.watcher.ended.called, proc.output())
        finally:
            code = yield proc.stop()
        self.assertEqual(code, 0, proc.output())
        self.assertNotIn("Traceback", proc.output())
