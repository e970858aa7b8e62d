"""Enrichment at the door: location from the IP, device from the user agent,
bots (what each stores: doc/enrichment.md). No I/O: the GeoIP database file
is ``stilgar.enrichment.GeoDatabase``, handed in as any object with
``lookup(address)`` and ``generation``.

It runs once per event, after normalisation and before the privacy step, so
that ``privacy.ip: drop`` with ``geoip`` stores the country and no address.

* ``geo_from_record``, ``ua_fields``, ``device_type`` are pure functions.
* :class:`Enricher` applies one ``enrich`` configuration; its caches (user
  agents by text, locations by address, both bounded in bytes) are its only
  state.
"""

import functools
import re
from collections import OrderedDict

from crawlerdetect import CrawlerDetect
from ua_parser import BestAvailableResolver, Parser, load_builtins

from .privacy import canonical_ip, event_ip

__all__ = ["GEO_GETTERS", "geo_from_record", "ua_fields", "device_type", "BoundedCache", "Enricher",
           "MAX_USER_AGENT"]

# a user agent is looked at up to this many characters (real ones are under 500;
# it bounds the work and the cache's memory against made-up ones)
MAX_USER_AGENT = 1024
UA_CACHE_BYTES = 4 * 1024 * 1024
UA_ENTRY_BYTES = 600  # besides the key: its str object, the OrderedDict slot, a shared result dict
GEO_CACHE_BYTES = 8 * 1024 * 1024
GEO_ENTRY_BYTES = 800  # besides the key: the slot and the entry's own context.geo dict


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def _english(part):
    """The English name of a MaxMind record part (``{"names": {"en": ...}}``), or None."""
    names = part.get("names") if isinstance(part, dict) else None
    return names.get("en") if isinstance(names, dict) else None


def _en_name(record, key):
    return _english(record.get(key))


def _country(record):
    country = record.get("country")
    return country.get("iso_code") if isinstance(country, dict) else None


def _region(record):
    subdivisions = record.get("subdivisions")
    return _english(subdivisions[0]) if isinstance(subdivisions, list) and subdivisions else None


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
    for part, name in ((result.user_agent, "browser"), (result.os, "os")):
        if part is not None and part.family != "Other":
            out[name] = part.family
            version = _version(part)
            if version:
                out[name + "Version"] = version
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

_ABSENT = object()


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
        self._move_to_end = self._entries.move_to_end

    def __len__(self):
        return len(self._entries)

    def get(self, text):
        hit = self._entries.get(text, _ABSENT)
        if hit is not _ABSENT:  # None is a value too (an address without a record)
            self.hits += 1
            self._move_to_end(text)
            return hit
        return self._miss(text)

    def _miss(self, text):
        self.misses += 1
        entries = self._entries
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
# The enricher
# --------------------------------------------------------------------------

_NO_UA = (None, None)


@functools.lru_cache(maxsize=None)
def _ua_parser():
    # one per process (0.2 s and a few MiB to build), shared by every Enricher
    return Parser(BestAvailableResolver(load_builtins()))


@functools.lru_cache(maxsize=None)
def _crawler_detect():
    # one per process; used from the reactor thread only (it keeps its last matches)
    return CrawlerDetect()


class Enricher:
    """Applies one ``enrich`` configuration (``stilgar.config.EnrichConfig``)
    to events. ``geo``: its ``stilgar.enrichment.GeoDatabase`` (None without geoip);
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
        self._parser = _ua_parser() if self.parse_ua else None
        self._crawlers = _crawler_detect() if bots is not None else None
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
                    ua, bot = self.last_ua = self.ua_get(
                        text if len(text) <= MAX_USER_AGENT else text[:MAX_USER_AGENT])
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
                    geo = self.last_geo = self.geo_get(ip if len(ip) <= 100 else ip[:100])
                    self.last_ip = ip
                if geo is not None:
                    # shared by the events from this address, never modified afterwards
                    context["geo"] = geo
        return True
