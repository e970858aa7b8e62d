"""Enrichment at the door: location from the IP, device from the user agent,
bots (what each stores: doc/enrichment.md).

It runs once per event, after normalisation and before the privacy step, so
that ``privacy.ip: drop`` with ``geoip`` stores the country and no address.

* ``geo_from_record``, ``ua_fields``, ``device_type`` are pure functions.
* :class:`Enricher` applies one ``enrich`` configuration; its caches (user
  agents by text, locations by address within one request) are its only state.
* :class:`GeoDatabase` is the operator's ``.mmdb`` file, memory-mapped,
  reopened when it is replaced (checked every ``check_interval`` seconds, or
  on :meth:`GeoDatabase.check` with ``force``, which SIGHUP calls); the check
  and the opening run in a thread, the swap on the reactor thread.
* :class:`Enrichment` holds an :class:`Enricher` per write key and the
  databases they share.
"""

import os
import re
from collections import OrderedDict

import maxminddb
from crawlerdetect import CrawlerDetect
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from ua_parser import BestAvailableResolver, Parser, load_builtins

from .privacy import canonical_ip, event_ip

__all__ = ["GEO_GETTERS", "geo_from_record", "ua_fields", "device_type", "BoundedCache",
           "GeoDatabase", "GeoDatabaseError", "Enricher", "Enrichment", "MAX_USER_AGENT"]

log = Logger(namespace="stilgar.enrich")

# a user agent is looked at up to this many characters (real ones are under 500;
# it bounds the work and the cache's memory against made-up ones)
MAX_USER_AGENT = 1024
UA_CACHE_BYTES = 4 * 1024 * 1024
UA_ENTRY_BYTES = 600  # besides the key: its str object, the OrderedDict slot, a shared result dict
GEO_CACHE_BYTES = 8 * 1024 * 1024
GEO_ENTRY_BYTES = 800  # besides the key: the slot and the entry's own context.geo dict

# the memory-mapped C reader when the extension is built, else the pure-Python mmap one
_MMDB_MODE = maxminddb.MODE_MMAP_EXT if getattr(maxminddb, "extension", None) else maxminddb.MODE_MMAP


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def _en_name(record, key):
    part = record.get(key)
    if isinstance(part, dict):
        names = part.get("names")
        if isinstance(names, dict):
            return names.get("en")
    return None


def _country(record):
    country = record.get("country")
    return country.get("iso_code") if isinstance(country, dict) else None


def _region(record):
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
        names = subdivisions[0].get("names")
        if isinstance(names, dict):
            return names.get("en")
    return None


def _postal(record):
    postal = record.get("postal")
    return postal.get("code") if isinstance(postal, dict) else None


def _location(record):
    location = record.get("location")
    if not isinstance(location, dict):
        return None
    lat, lon = location.get("latitude"), location.get("longitude")
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
        return f"{lat:f},{lon:f}"
    return None


def _timezone(record):
    location = record.get("location")
    return location.get("time_zone") if isinstance(location, dict) else None


# the keys RudderStack's geolocation enrichment writes in context.geo, from a
# GeoLite2/GeoIP2/DB-IP City record (names in English)
GEO_GETTERS = {
    "country": _country,        # ISO 3166-1 alpha-2, e.g. FR
    "region": _region,          # first subdivision's name, e.g. Île-de-France
    "city": lambda r: _en_name(r, "city"),
    "postal": _postal,
    "location": _location,      # "latitude,longitude"
    "timezone": _timezone,      # IANA, e.g. Europe/Paris
}


def geo_from_record(record, fields):
    """The ``context.geo`` object for a MaxMind record (``fields``: keys of
    ``GEO_GETTERS``), or None when the record gives none of them."""
    if not isinstance(record, dict):
        return None
    geo = {}
    for field in fields:
        value = GEO_GETTERS[field](record)
        if isinstance(value, str) and value:
            geo[field] = value
    return geo or None


def _version(part):
    numbers = []
    for n in (part.major, part.minor, part.patch, getattr(part, "patch_minor", None)):
        if not n:
            break
        numbers.append(n)
    return ".".join(numbers) or None


_DESKTOP_OS = frozenset(["Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Debian", "Chrome OS",
                         "FreeBSD", "OpenBSD", "NetBSD", "Solaris", "Red Hat", "SUSE", "Arch Linux"])
_MOBILE_OS = frozenset(["iOS", "Android", "Windows Phone", "KaiOS", "BlackBerry OS", "Symbian OS",
                        "Firefox OS", "HarmonyOS", "Tizen"])
_TABLET_RE = re.compile(r"iPad|Tablet|Kindle|Silk/|PlayBook|\bTab\b", re.IGNORECASE)


def device_type(result, text):
    """``bot``, ``tablet``, ``mobile``, ``desktop`` or None (unknown), from a
    ua-parser result and the user agent text (ua-parser has no device type)."""
    device = result.device
    family = device.family if device is not None else None
    if family == "Spider":
        return "bot"
    os_family = result.os.family if result.os is not None else None
    if _TABLET_RE.search(text) or (os_family == "Android" and "Mobile" not in text):
        return "tablet"
    if os_family in _MOBILE_OS or "Mobi" in text or family in ("iPhone", "iPod"):
        return "mobile"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return None


def ua_fields(result, text):
    """The ``context.ua`` object for a ua-parser ``Result`` of ``text``, or None.

    Keys (absent when unknown; ua-parser's ``Other`` is unknown): ``browser``,
    ``browserVersion``, ``os``, ``osVersion``, ``deviceFamily``,
    ``deviceBrand``, ``deviceModel``, ``deviceType``."""
    out = {}
    agent = result.user_agent
    if agent is not None and agent.family != "Other":
        out["browser"] = agent.family
        version = _version(agent)
        if version:
            out["browserVersion"] = version
    os_ = result.os
    if os_ is not None and os_.family != "Other":
        out["os"] = os_.family
        version = _version(os_)
        if version:
            out["osVersion"] = version
    device = result.device
    if device is not None and device.family != "Other":
        out["deviceFamily"] = device.family
        if device.brand:
            out["deviceBrand"] = device.brand
        if device.model:
            out["deviceModel"] = device.model
    kind = device_type(result, text)
    if kind is not None:
        out["deviceType"] = kind
    return out or None


# --------------------------------------------------------------------------
# The caches
# --------------------------------------------------------------------------

class BoundedCache:
    """Least-recently-used map of text -> ``compute(text)``, bounded in bytes
    (the key's length plus ``entry_bytes`` per entry); counts hits and misses."""

    def __init__(self, compute, max_bytes=UA_CACHE_BYTES, entry_bytes=UA_ENTRY_BYTES):
        self.compute = compute
        self.max_bytes = max_bytes
        self.entry_bytes = entry_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def get(self, text):
        entries = self._entries
        hit = entries.get(text)
        if hit is not None:
            self.hits += 1
            entries.move_to_end(text)
            return hit
        self.misses += 1
        value = self.compute(text)
        entries[text] = value
        self.bytes += len(text) + self.entry_bytes
        while self.bytes > self.max_bytes and entries:
            old, _ = entries.popitem(last=False)
            self.bytes -= len(old) + self.entry_bytes
        return value

    def clear(self):
        self._entries.clear()
        self.bytes = 0

    def hit_rate(self):
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


# --------------------------------------------------------------------------
# The GeoIP database
# --------------------------------------------------------------------------

class GeoDatabaseError(Exception):
    """The database file cannot be opened (message names the file and why)."""


def _identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_mmdb(path):
    """(identity, reader) for ``path``; raises GeoDatabaseError."""
    try:
        st = os.stat(path)
        reader = maxminddb.open_database(path, _MMDB_MODE)
    except FileNotFoundError:
        raise GeoDatabaseError(f"{path}: no such file") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise GeoDatabaseError(f"{path}: not a readable MaxMind database ({reason})") from None
    return _identity(st), reader


def _in_thread(reactor):
    def run(f, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    return run


class GeoDatabase:
    """One ``.mmdb`` file. States: ``open`` (a reader serves lookups),
    ``missing`` (the file disappeared: no location until it is back; the old
    reader is closed, as MaxMind's licence wants outdated data deleted), and
    ``broken`` (the file was replaced by one that cannot be read: the previous
    reader, if any, goes on serving)."""

    def __init__(self, path, reactor, check_interval=5.0, in_thread=None, opener=open_mmdb):
        self.path = path
        self.reactor = reactor
        self.check_interval = check_interval
        self._in_thread = in_thread or _in_thread(reactor)
        self._opener = opener
        self._reader = None
        self._identity = None
        self.state = "closed"
        self._loop = None
        self._checking = None
        self.generation = 0  # counts reader changes: caches of lookups compare it

    def open(self):
        """Open the file now (at start, before the reactor runs); raises GeoDatabaseError."""
        self._identity, self._reader = self._opener(self.path)
        self.state = "open"
        self.generation += 1

    def lookup(self, addr):
        """The record for an ``ipaddress`` address, or None."""
        reader = self._reader
        if reader is None:
            return None
        try:
            return reader.get(addr)
        except (ValueError, maxminddb.InvalidDatabaseError) as e:
            log.error("enrich.geoip: lookup in {path} failed: {error}", path=self.path, error=e)
            return None

    # -- reloading ---------------------------------------------------------

    def start(self):
        if self._loop is None:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(self.check_interval, now=False).addErrback(
                lambda f: log.failure("enrich.geoip: the reload check stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        self.state = "closed"

    def check(self, force=False):
        """Reopen the file if it was replaced (or ``force``); a Deferred fired when done."""
        if self._checking is not None:
            return self._checking
        d = self._in_thread(self._probe, force, self._identity)
        d.addCallback(self._swap)
        d.addErrback(lambda f: log.failure("enrich.geoip: checking {path} failed", f, path=self.path))

        def done(_):
            self._checking = None
        d.addBoth(done)
        if not d.called:
            self._checking = d
        return d

    def _probe(self, force, identity):
        # in a thread: stat, and open when the file changed
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ("missing", None, None, f"{self.path}: no such file")
        except OSError as e:
            return ("missing", None, None, f"{self.path}: {e.strerror or e}")
        if not force and _identity(st) == identity:
            return ("same", None, None, None)
        try:
            new_identity, reader = self._opener(self.path)
        except GeoDatabaseError as e:
            return ("broken", _identity(st), None, str(e))
        return ("open", new_identity, reader, None)

    def _swap(self, probe):
        # on the reactor thread: lookups see either the old reader or the new one
        outcome, identity, reader, error = probe
        if self.state == "closed":          # stopped meanwhile
            if reader is not None:
                reader.close()
            return
        if outcome == "same":
            return
        if outcome == "missing":
            if self.state != "missing":
                log.error("enrich.geoip.database {error}: events get no location until it is back",
                          error=error)
            old, self._reader, self._identity = self._reader, None, None
            self.state = "missing"
        elif outcome == "broken":
            if identity != self._identity:
                kept = "the previous database goes on serving" if self._reader is not None \
                    else "events get no location"
                log.error("enrich.geoip.database {error}: {kept}", error=error, kept=kept)
            self._identity = identity
            self.state = "broken" if self._reader is None else "open"
            return
        else:
            old, self._reader, self._identity = self._reader, reader, identity
            was = self.state
            self.state = "open"
            meta = reader.metadata()
            log.info("enrich.geoip.database {path} {how}: {kind}, built {built}", path=self.path,
                     how="reloaded" if was == "open" else "is back",
                     kind=getattr(meta, "database_type", "?"), built=getattr(meta, "build_epoch", "?"))
        self.generation += 1
        if old is not None:
            old.close()


# --------------------------------------------------------------------------
# The enricher
# --------------------------------------------------------------------------

_NO_UA = (None, None)


class Enricher:
    """Applies one ``enrich`` configuration (``stilgar.config.EnrichConfig``)
    to events. ``geo``: its :class:`GeoDatabase` (None without geoip);
    ``on_bot(action)`` is called for each bot seen."""

    def __init__(self, settings, geo=None, on_bot=None, ua_cache_bytes=UA_CACHE_BYTES,
                 geo_cache_bytes=GEO_CACHE_BYTES):
        self.settings = settings
        self.geo = geo if settings.geoip is not None else None
        self.geo_fields = tuple(settings.geoip.fields) if settings.geoip is not None else ()
        self.parse_ua = settings.user_agent
        bots = settings.bots
        self.bot_action = bots.action if bots is not None else None
        self.on_bot = on_bot or (lambda action: None)
        self._parser = Parser(BestAvailableResolver(load_builtins())) if self.parse_ua else None
        self._crawlers = CrawlerDetect() if bots is not None else None
        patterns = tuple(bots.extra_patterns) if bots is not None else ()
        self._extra = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        self.ua_cache = BoundedCache(self._examine, ua_cache_bytes, UA_ENTRY_BYTES)
        # address text -> context.geo: visitors send many events, lookups cost ~7 us
        self.geo_cache = BoundedCache(self._locate, geo_cache_bytes, GEO_ENTRY_BYTES)
        self._geo_generation = None

    def is_bot(self, text):
        """True for a crawler or automated client (crawlerdetect's list, then extra_patterns)."""
        if self._extra is not None and self._extra.search(text):
            return True
        return self._crawlers.isCrawler(text)

    def _examine(self, text):
        # one cache entry per user agent: (context.ua or None, is a bot: None when
        # bots are not looked for or the text is blank)
        if not text.strip():
            return _NO_UA
        ua = ua_fields(self._parser.parse(text), text) if self._parser is not None else None
        bot = self.is_bot(text) if self._crawlers is not None else None
        return (ua, bot)

    def _locate(self, ip):
        addr = canonical_ip(ip)
        return None if addr is None else geo_from_record(self.geo.lookup(addr), self.geo_fields)

    def for_request(self, client_ip):
        """The per-event function for one request: ``enrich(context) -> keep``."""
        geo = self.geo
        if geo is not None and geo.generation != self._geo_generation:
            self.geo_cache.clear()  # the database was reopened
            self._geo_generation = geo.generation
        return _RequestEnricher(self, client_ip)


class _RequestEnricher:
    """One request's events: they share its client IP, and often their user
    agent and address (one visitor's batch), so the last result of each is
    kept at hand."""

    __slots__ = ("enricher", "client_ip", "ua_get", "geo_get", "last_text", "last_ua", "last_ip",
                 "last_geo", "flag", "action")

    def __init__(self, enricher, client_ip):
        self.enricher = enricher
        self.client_ip = client_ip
        examines = enricher.parse_ua or enricher.bot_action is not None
        self.ua_get = enricher.ua_cache.get if examines else None
        self.geo_get = enricher.geo_cache.get if enricher.geo is not None else None
        self.action = enricher.bot_action
        self.flag = self.action == "flag"
        self.last_text = self.last_ua = self.last_ip = self.last_geo = None

    def __call__(self, context):
        """Enrich ``context`` (the event's own copy); False: drop the event (a bot)."""
        if self.ua_get is not None:
            text = context.get("userAgent")
            if type(text) is str and text:
                if text is self.last_text:
                    ua, bot = self.last_ua
                else:
                    ua, bot = self.last_ua = self.ua_get(text[:MAX_USER_AGENT])
                    self.last_text = text
                if bot:
                    self.enricher.on_bot(self.action)
                    if self.action == "drop":
                        return False
                if self.flag and bot is not None:
                    context["bot"] = bot
                if ua is not None:
                    # shared by every event with this user agent: never modified afterwards
                    # (privacy.drop_paths copies what it changes)
                    context["ua"] = ua
        if self.geo_get is not None:
            ip = event_ip(context, self.client_ip)
            if ip is not None:
                if ip == self.last_ip:
                    geo = self.last_geo
                else:
                    geo = self.last_geo = self.geo_get(ip[:100])
                    self.last_ip = ip
                if geo is not None:
                    # shared by the events from this address, never modified afterwards
                    context["geo"] = geo
        return True


class Enrichment:
    """The enrichers of every write key, and the GeoIP databases they share."""

    def __init__(self, by_key, databases):
        self._by_key = by_key
        self.databases = databases

    @classmethod
    def from_config(cls, enrich_by_key, reactor, on_bot=None, in_thread=None, open_now=True):
        """Build from ``Config.enrich_by_write_key()``; opens each database
        (GeoDatabaseError when one cannot be read)."""
        databases, enrichers, by_key = {}, {}, {}
        for key, settings in enrich_by_key.items():
            if settings is None or not settings.enabled:
                continue
            if settings not in enrichers:
                geo = None
                if settings.geoip is not None:
                    path = settings.geoip.database
                    geo = databases.get(path)
                    if geo is None:
                        geo = databases[path] = GeoDatabase(path, reactor, settings.geoip.check_interval,
                                                            in_thread=in_thread)
                        if open_now:
                            geo.open()
                    geo.check_interval = min(geo.check_interval, settings.geoip.check_interval)
                enrichers[settings] = Enricher(settings, geo, on_bot)
            by_key[key] = enrichers[settings]
        return cls(by_key, databases)

    def for_key(self, write_key):
        """The :class:`Enricher` for a write key's events, or None."""
        return self._by_key.get(write_key)

    def enrichers(self):
        return list({id(e): e for e in self._by_key.values()}.values())

    def start(self):
        for db in self.databases.values():
            db.start()

    def stop(self):
        for db in self.databases.values():
            db.stop()

    def reload(self):
        """Reopen every database now (SIGHUP)."""
        return defer.DeferredList([db.check(force=True) for db in self.databases.values()])
