"""The configuration file: where it is found, how it is read, what every key means.

Pure: no reactor, no Twisted. :func:`parse_config` turns the mapping read from
YAML into frozen objects, raising :class:`~stilgar.units.ConfigError` (one line
naming the dotted key) for a bad value and collecting a warning for an unknown
key. The reference for operators is ``doc/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Optional, Tuple, Union

import attr
import yaml

from .units import ConfigError, parse_duration, parse_size

__all__ = [
    "AdminConfig", "SyslogConfig", "ServerConfig", "LoggingConfig", "ForwarderConfig",
    "PrivacyConfig", "SpoolConfig", "DestinationConfig", "Config",
    "GeoipConfig", "BotsConfig", "EnrichConfig", "GEO_FIELDS", "BOT_ACTIONS",
    "find_config_file", "config_search_path", "load_config", "read_config_file", "parse_config",
    "ConfigError", "LOG_LEVELS", "SYSLOG_FACILITIES", "IP_MODES",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DEFAULT_PAYLOAD_SIZE_LIMIT = 4 * MIB
SMALL_PAYLOAD_SIZE_LIMIT = 512 * KIB
DEFAULT_TRUSTED_PROXIES = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
SYSLOG_PROTOCOLS = ("udp", "tcp")
# name -> RFC 5424 facility code (the original's names, flexi_logger's codes)
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12,
    "security": 13, "console": 14, "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
IP_MODES = ("drop", "truncate", "hash", "keep")
SHORT_HASH_SECRET = 16  # bytes; a shorter privacy.hash_secret is warned about
# enrich.geoip.fields: the keys RudderStack's geolocation enrichment writes in context.geo
GEO_FIELDS = ("country", "region", "city", "postal", "location", "timezone")
DEFAULT_GEO_FIELDS = ("country", "region", "city", "timezone")
BOT_ACTIONS = ("flag", "drop", "keep")

SYSTEM_CONFIG_DIR = "/etc/withings"
CONFIG_FILE_NAMES = ("stilgar.yml", "stilgar.yaml")


# --------------------------------------------------------------------------
# The configuration objects
# --------------------------------------------------------------------------

@attr.s(frozen=True, auto_attribs=True)
class AdminConfig:
    """``server.admin``: who may read /status and /metrics."""
    username: Optional[str] = None  # None: no credential check
    password: str = attr.ib(default="", repr=False)
    allowed_networks: Optional[Tuple[Network, ...]] = None  # None: the trusted_proxies ranges


@attr.s(frozen=True, auto_attribs=True)
class SyslogConfig:
    """``logging.syslog``: send the log to a syslog server (RFC 3164 header)."""
    protocol: str  # 'udp' or 'tcp'
    host: str
    port: int = 514
    facility: str = "user"  # a key of SYSLOG_FACILITIES
    process: str = "stilgar"

    @property
    def facility_code(self) -> int:
        return SYSLOG_FACILITIES[self.facility]


@attr.s(frozen=True, auto_attribs=True)
class ServerConfig:
    """``server``: the HTTP listener and its limits."""
    ip: str = "0.0.0.0"
    port: int = 8080
    listen: Optional[str] = None  # a Twisted server endpoint string; wins over ip/port
    payload_size_limit: int = DEFAULT_PAYLOAD_SIZE_LIMIT
    max_events_per_request: int = 5000
    origins: Tuple[str, ...] = ()
    read_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 10000
    trusted_proxies: Tuple[Network, ...] = DEFAULT_TRUSTED_PROXIES
    path_prefix: str = ""  # '' or '/a/b' (no trailing slash)
    workers: int = 1
    admin: Optional[AdminConfig] = None

    def endpoint_description(self) -> str:
        """The Twisted server endpoint string to listen on."""
        if self.listen:
            return self.listen
        interface = self.ip.replace(":", "\\:")
        return f"tcp:port={self.port}:interface={interface}"


@attr.s(frozen=True, auto_attribs=True)
class LoggingConfig:
    """``logging``."""
    level: str = "info"  # one of LOG_LEVELS
    format: str = "text"  # 'text' or 'json'
    syslog: Optional[SyslogConfig] = None


@attr.s(frozen=True, auto_attribs=True)
class ForwarderConfig:
    """``forwarder``."""
    max_queue_size: int = 65536
    shutdown_timeout: float = 10.0


@attr.s(frozen=True, auto_attribs=True)
class PrivacyConfig:
    """``privacy``: what personal data reaches storage."""
    ip: str = "drop"  # one of IP_MODES
    hash_secret: Optional[bytes] = attr.ib(default=None, repr=False)
    drop_fields: Tuple[Tuple[str, ...], ...] = ()  # ('context', 'traits', 'email'), ...


@attr.s(frozen=True, auto_attribs=True)
class GeoipConfig:
    """``enrich.geoip``: location from the client IP (doc/enrichment.md)."""
    database: str  # a MaxMind-format .mmdb file
    fields: Tuple[str, ...] = DEFAULT_GEO_FIELDS  # of GEO_FIELDS
    check_interval: float = 5.0  # seconds between checks that the file was replaced


@attr.s(frozen=True, auto_attribs=True)
class BotsConfig:
    """``enrich.bots``: crawlers and automated clients, from the user agent."""
    action: str = "flag"  # one of BOT_ACTIONS
    extra_patterns: Tuple[str, ...] = ()  # regular expressions, case-insensitive


@attr.s(frozen=True, auto_attribs=True)
class EnrichConfig:
    """``enrich`` (or a destination's ``enrich``): what is added to each event at the door."""
    geoip: Optional[GeoipConfig] = None
    user_agent: bool = False
    bots: Optional[BotsConfig] = None

    @property
    def enabled(self) -> bool:
        return self.geoip is not None or self.user_agent or self.bots is not None


@attr.s(frozen=True, auto_attribs=True)
class SpoolConfig:
    """``spool``: the local append-only log behind every 200."""
    enabled: bool = True
    path: str = "./stilgar-spool"
    fsync: bool = True
    max_size: int = 1 * GIB
    segment_size: int = 64 * MIB
    commit_window: float = 0.002


@attr.s(frozen=True, auto_attribs=True)
class DestinationConfig:
    """One block of ``destinations``."""
    type: str
    name: str
    write_keys: frozenset
    settings: object  # what the destination type's parse_settings returned
    enrich: Optional[EnrichConfig] = None  # this block's enrich, merged over the global one


@attr.s(frozen=True, auto_attribs=True)
class Config:
    server: ServerConfig = attr.Factory(ServerConfig)
    logging: LoggingConfig = attr.Factory(LoggingConfig)
    forwarder: ForwarderConfig = attr.Factory(ForwarderConfig)
    privacy: PrivacyConfig = attr.Factory(PrivacyConfig)
    spool: SpoolConfig = attr.Factory(SpoolConfig)
    destinations: Tuple[DestinationConfig, ...] = ()
    path: Optional[str] = None  # the file it was read from
    warnings: Tuple[str, ...] = ()
    enrich: EnrichConfig = attr.Factory(EnrichConfig)

    def all_write_keys(self) -> frozenset:
        """Every write key routed to at least one destination."""
        return frozenset().union(*(d.write_keys for d in self.destinations))

    def enrich_by_write_key(self) -> dict:
        """write key -> the :class:`EnrichConfig` applied to its events (the
        global one unless its destinations override it; parse_config has
        checked that they agree)."""
        return {key: d.enrich or self.enrich for d in self.destinations for key in d.write_keys}

    def geoip_databases(self) -> frozenset:
        """The paths of every GeoIP database the enrich sections name."""
        sections = [self.enrich, *(d.enrich for d in self.destinations)]
        return frozenset(s.geoip.database for s in sections if s is not None and s.geoip is not None)


# --------------------------------------------------------------------------
# Finding and reading the file
# --------------------------------------------------------------------------

def config_search_path(environ=os.environ, cwd=None, system_dir=SYSTEM_CONFIG_DIR):
    """The files tried, in order, when neither --config nor $STILGAR_CONFIG is given."""
    xdg = environ.get("XDG_CONFIG_HOME") or ""
    if not os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        home = environ.get("HOME") or os.path.expanduser("~")
        xdg = os.path.join(home, ".config")
    directories = (system_dir, os.path.join(xdg, "stilgar"), cwd or os.getcwd())
    return [os.path.join(d, name) for d in directories for name in CONFIG_FILE_NAMES]


def find_config_file(explicit=None, environ=os.environ, cwd=None, system_dir=SYSTEM_CONFIG_DIR):
    """Return the configuration file's path: ``explicit``, else ``$STILGAR_CONFIG``,
    else the first existing file of :func:`config_search_path`.

    An explicit or environment path is returned as is (reading it reports a
    missing file). Nothing found raises :class:`ConfigError`."""
    if explicit:
        return explicit
    if environ.get("STILGAR_CONFIG"):
        return environ["STILGAR_CONFIG"]
    candidates = config_search_path(environ, cwd, system_dir)
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise ConfigError("config", "no configuration file found (looked in: "
                      + ", ".join(candidates) + "); give one with --config or $STILGAR_CONFIG")


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader refusing duplicate keys (the later one would silently win)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _one_line(text):
    return " ".join(str(text).split())


def _yaml_problem(error):
    """A one-line description of a YAML error, with line and column."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return _one_line(error)
    mark = error.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context = f"{error.context}: " if error.context else ""
    return _one_line(f"{context}{error.problem} at {where}")


def read_config_file(path):
    """Read and YAML-decode ``path``; any failure is a one-line ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read the configuration file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML: {_yaml_problem(e)}") from None


def load_config(path=None, environ=os.environ, destination_types=None, listen=None):
    """Find, read and check the configuration; return a :class:`Config`."""
    path = find_config_file(path, environ)
    return parse_config(read_config_file(path), destination_types, path=path, listen=listen)


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------

def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where, key):
    return f"{where}.{key}" if where else str(key)


def _mapping(value, key):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping of keys, got {_show(value)}")
    return value


def _list(value, key):
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, got {_show(value)}")
    return value


def _string(value, key, allow_empty=False):
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, (int, float)) else ""
        raise ConfigError(key, f"expected a string{hint}, got {_show(value)}")
    if not allow_empty and not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def _int(value, key, minimum=None, maximum=None):
    """An integer, also given as a numeric string."""
    if isinstance(value, str) and _INT_RE.match(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum}, got {value}")
    return value


def _positive_int(value, key):
    return _int(value, key, minimum=1)


def _port(value, key):
    return _int(value, key, minimum=1, maximum=65535)


_BOOL_TEXTS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _bool(value, key):
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXTS:
        return _BOOL_TEXTS[value.strip().lower()]
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_show(value)}")
    return value


def _duration(value, key, allow_zero=False):
    seconds = parse_duration(value, key)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'at least' if allow_zero else 'more than'} 0s, got {value!r}")
    return seconds


def _positive_duration(value, key):
    return _duration(value, key)


def _duration_or_zero(value, key):
    return _duration(value, key, allow_zero=True)


def _positive_size(value, key):
    size = parse_size(value, key)
    if size <= 0:
        raise ConfigError(key, f"must be more than 0 bytes, got {value!r}")
    return size


def _choice(value, key, choices, aliases=None):
    if not isinstance(value, str):
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
    text = value.strip().lower()
    text = (aliases or {}).get(text, text)
    if text not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
    return text


def _ip(value, key):
    text = _string(value, key).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP address (e.g. 0.0.0.0 or ::)") from None


def _network(value, key):
    """A CIDR network or a bare IP (a /32 or /128); host bits are allowed."""
    text = _string(value, key).strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP network (e.g. 10.0.0.0/8 or 192.0.2.1)") from None


def _networks(value, key):
    items = [_network(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    return tuple(dict.fromkeys(items))


def _origin(value, key):
    text = _string(value, key).strip()
    if text == "*":
        return text
    scheme, sep, rest = text.partition("://")
    rest = rest.rstrip("/")
    if not sep or not scheme or not rest:
        raise ConfigError(key, f"{text!r} is not an origin: expected * or scheme://host[:port]"
                               " (e.g. https://www.example.com)")
    if any(c in rest for c in "/?#") or any(c.isspace() for c in text):
        raise ConfigError(key, f"{text!r} is not an origin: scheme://host[:port] has no path,"
                               " query or spaces")
    return f"{scheme.lower()}://{rest.lower()}"


def _origins(value, key):
    items = [_origin(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    return tuple(dict.fromkeys(items))


_SEGMENT_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@]+$")


def _path_prefix(value, key):
    """'' or '/a/b': slashes added or removed as needed."""
    segments = [s for s in _string(value, key, allow_empty=True).strip().split("/") if s]
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT_RE.match(segment):
            raise ConfigError(key, f"{value!r} is not a plain URL path (e.g. /collect)")
    return "/" + "/".join(segments) if segments else ""


def _listen(value, key):
    return _string(value, key).strip()


def _level(value, key):
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    return _choice(value, key, LOG_LEVELS, aliases={"warning": "warn"})


def _dotted_path(value, key):
    text = _string(value, key).strip()
    parts = tuple(p.strip() for p in text.split("."))
    if not all(parts):
        raise ConfigError(key, f"{value!r} is not a dotted field path (e.g. context.traits.email)")
    return parts


def _dotted_paths(value, key):
    items = [_dotted_path(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    return tuple(dict.fromkeys(items))


def _secret(value, key):
    return _string(value, key).encode("utf-8")


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

def _fields(data, where, parsers, warn):
    """Check a section's keys: parse the known ones (a null value means the
    default), warn about the others. Returns ``{key: parsed value}``."""
    out = {}
    for key, value in _mapping(data, where).items():
        parse = parsers.get(key) if isinstance(key, str) else None
        if parse is None:
            warn(f"unknown key {_join(where, key)}, ignored")
        elif value is not None:
            out[key] = parse(value, _join(where, key))
    return out


def _parse_admin(data, where, warn):
    fields = _fields(data, where, {
        "username": _string,
        "password": lambda v, k: _string(v, k, allow_empty=True),
        "allowed_networks": _networks,
    }, warn)
    if fields.get("password") and "username" not in fields:
        warn(f"{where}.password is set without {where}.username: no credentials are checked")
    return AdminConfig(**fields)


def _parse_server(data, warn, listen=None):
    where = "server"
    fields = _fields(data, where, {
        "ip": _ip,
        "port": _port,
        "listen": _listen,
        "payload_size_limit": parse_size,
        "max_events_per_request": _positive_int,
        "origins": _origins,
        "read_timeout": _positive_duration,
        "idle_timeout": _positive_duration,
        "max_connections": _positive_int,
        "trusted_proxies": _networks,
        "path_prefix": _path_prefix,
        "workers": _positive_int,
        "admin": lambda v, k: _parse_admin(v, k, warn),
    }, warn)
    limit = fields.get("payload_size_limit")
    if limit == 0:
        fields["payload_size_limit"] = DEFAULT_PAYLOAD_SIZE_LIMIT
    elif limit is not None and limit < SMALL_PAYLOAD_SIZE_LIMIT:
        warn(f"{where}.payload_size_limit is {limit} bytes, under 512KiB: ordinary SDK batches"
             " will be refused with 413 (and mobile SDKs resend a refused batch for ever)")
    if listen is not None:
        fields["listen"] = _listen(listen, "--listen")
    return ServerConfig(**fields)


def _parse_syslog(data, where, warn):
    fields = _fields(data, where, {
        "protocol": lambda v, k: _choice(v, k, SYSLOG_PROTOCOLS),
        "host": lambda v, k: _string(v, k).strip(),
        "port": _port,
        "facility": lambda v, k: _choice(v, k, tuple(SYSLOG_FACILITIES)),
        "process": _string,
    }, warn)
    if "host" not in fields:
        raise ConfigError(f"{where}.host", "required when logging.syslog is given")
    fields.setdefault("protocol", "udp")
    return SyslogConfig(**fields)


def _parse_logging(data, warn):
    where = "logging"
    return LoggingConfig(**_fields(data, where, {
        "level": _level,
        "format": lambda v, k: _choice(v, k, LOG_FORMATS),
        "syslog": lambda v, k: _parse_syslog(v, k, warn),
    }, warn))


def _parse_forwarder(data, warn):
    return ForwarderConfig(**_fields(data, "forwarder", {
        "max_queue_size": _positive_int,
        "shutdown_timeout": _duration_or_zero,
    }, warn))


def _parse_privacy(data, warn):
    where = "privacy"
    fields = _fields(data, where, {
        "ip": lambda v, k: _choice(v, k, IP_MODES),
        "hash_secret": _secret,
        "drop_fields": _dotted_paths,
    }, warn)
    if fields.get("ip") == "hash":
        secret = fields.get("hash_secret")
        if secret is None:
            raise ConfigError(f"{where}.hash_secret", "required when privacy.ip is hash")
        if len(secret) < SHORT_HASH_SECRET:
            warn(f"{where}.hash_secret is shorter than {SHORT_HASH_SECRET} bytes:"
                 " hashed IPs are easy to reverse")
    return PrivacyConfig(**fields)


def _parse_spool(data, warn):
    where = "spool"
    fields = _fields(data, where, {
        "enabled": _bool,
        "path": _string,
        "fsync": _bool,
        "max_size": _positive_size,
        "segment_size": _positive_size,
        "commit_window": _duration_or_zero,
    }, warn)
    spool = SpoolConfig(**fields)
    if spool.segment_size > spool.max_size:
        if "segment_size" in fields:
            raise ConfigError(f"{where}.segment_size", f"{spool.segment_size} bytes is more than"
                              f" spool.max_size ({spool.max_size} bytes)")
        spool = attr.evolve(spool, segment_size=spool.max_size)
    if not spool.enabled:
        warn(f"{where}.enabled is false: accepted events are held in memory only,"
             " and lost if the process stops or crashes before they are delivered")
    return spool


def _regex(value, key):
    text = _string(value, key)
    try:
        re.compile(text, re.IGNORECASE)
    except re.error as e:
        raise ConfigError(key, f"{text!r} is not a regular expression: {e}") from None
    return text


def _regexes(value, key):
    items = [_regex(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    return tuple(dict.fromkeys(items))


def _geo_fields(value, key):
    items = [_choice(v, f"{key}[{i}]", GEO_FIELDS) for i, v in enumerate(_list(value, key))]
    if not items:
        raise ConfigError(key, f"needs at least one of {', '.join(GEO_FIELDS)}")
    return tuple(dict.fromkeys(items))


def _parse_geoip(data, where, warn):
    fields = _fields(data, where, {
        "database": lambda v, k: _string(v, k).strip(),
        "fields": _geo_fields,
        "check_interval": _positive_duration,
    }, warn)
    if "database" not in fields:
        raise ConfigError(f"{where}.database", "required: the path of a MaxMind-format .mmdb file")
    return GeoipConfig(**fields)


def _parse_bots(data, where, warn):
    if data is True:  # `bots: true`: the defaults
        return BotsConfig()
    return BotsConfig(**_fields(data, where, {
        "action": lambda v, k: _choice(v, k, BOT_ACTIONS),
        "extra_patterns": _regexes,
    }, warn))


def _off_or(parse):
    # `geoip: false` / `bots: false` switch a feature off (a destination's enrich overriding the global one)
    def parse_or_off(value, key, warn):
        if value is False:
            return False
        return parse(value, key, warn)
    return parse_or_off


_parse_geoip_or_off = _off_or(_parse_geoip)
_parse_bots_or_off = _off_or(_parse_bots)


def _parse_enrich(data, where, warn, base=None):
    """``enrich`` (``base`` None) or a destination's ``enrich``, whose keys
    replace those of ``base`` (the global section) one by one."""
    fields = _fields(data, where, {
        "geoip": lambda v, k: _parse_geoip_or_off(v, k, warn),
        "user_agent": _bool,
        "bots": lambda v, k: _parse_bots_or_off(v, k, warn),
    }, warn)
    for key in ("geoip", "bots"):
        if fields.get(key) is False:
            fields[key] = None
    if base is not None:
        return attr.evolve(base, **fields)
    return EnrichConfig(**fields)


def _check_enrich_agrees(destinations, enrich):
    # the door enriches an event once, for every destination its write key goes to
    chosen = {}
    for i, d in enumerate(destinations):
        for key in d.write_keys:
            mine = d.enrich or enrich
            if key in chosen and chosen[key][1] != mine:
                raise ConfigError(f"destinations[{i}].enrich", f"write key {key!r} also goes to"
                                  f" destinations[{chosen[key][0]}] with another enrich: events are"
                                  " enriched once at the door, so both must agree")
            chosen.setdefault(key, (i, mine))


# --------------------------------------------------------------------------
# Destinations
# --------------------------------------------------------------------------

def _write_key(value, key):
    text = _string(value, key)
    if ":" in text:
        raise ConfigError(key, f"{text!r}: a write key cannot hold ':' (HTTP Basic auth splits on it)")
    return text


def _write_keys(value, key):
    keys = [_write_key(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    if not keys:
        raise ConfigError(key, "needs at least one write key")
    return frozenset(keys)


def _destination_provider(block, where, destination_types):
    if "type" not in block or block["type"] is None:
        raise ConfigError(f"{where}.type", "required (e.g. clickhouse or blackhole)")
    raw = _string(block["type"], f"{where}.type")
    type_name = raw.strip().lower()
    try:
        return type_name, destination_types(type_name)
    except KeyError:
        raise ConfigError(f"{where}.type", f"unknown destination type: {raw}") from None
    except ImportError as e:
        raise ConfigError(f"{where}.type", f"destination type {type_name} cannot be loaded:"
                          f" {_one_line(e)}") from None


def _parse_destination(block, where, destination_types, warn, enrich=None):
    if not isinstance(block, dict):
        raise ConfigError(where, f"expected a destination block (a mapping with type and"
                                 f" write_keys), got {_show(block)}")
    block = dict(block)
    own_enrich = block.pop("enrich", None)
    if own_enrich is not None:
        own_enrich = _parse_enrich(own_enrich, f"{where}.enrich", warn, enrich or EnrichConfig())
    type_name, provider = _destination_provider(block, where, destination_types)
    if block.get("write_keys") is None:
        raise ConfigError(f"{where}.write_keys", "required: a list of write keys")
    write_keys = _write_keys(block["write_keys"], f"{where}.write_keys")
    name = None
    if block.get("name") is not None:
        name = _string(block["name"], f"{where}.name").strip()
    settings = provider.parse_settings(dict(block), where, warn)
    if name is None:
        name = provider.default_name(settings)
    return DestinationConfig(type=type_name, name=name, write_keys=write_keys, settings=settings,
                             enrich=own_enrich)


def _parse_destinations(value, destination_types, warn, enrich=None):
    key = "destinations"
    if value is None:
        raise ConfigError(key, "required: a list of at least one destination block")
    blocks = _list(value, key)
    if not blocks:
        raise ConfigError(key, "needs at least one destination block")
    destinations, seen = [], {}
    for i, block in enumerate(blocks):
        where = f"{key}[{i}]"
        destination = _parse_destination(block, where, destination_types, warn, enrich)
        if destination.name in seen:
            raise ConfigError(f"{where}.name", f"duplicate destination name {destination.name!r}"
                              f" (also {key}[{seen[destination.name]}]); give each one a distinct name")
        seen[destination.name] = i
        destinations.append(destination)
    return tuple(destinations)


# --------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------

_SECTIONS = ("server", "logging", "forwarder", "privacy", "spool", "enrich", "destinations")


def parse_config(data, destination_types=None, path=None, listen=None):
    """Check the decoded YAML ``data`` and return a :class:`Config`.

    ``destination_types``: ``type name -> IDestinationType provider`` raising
    KeyError for an unknown type (default: :func:`stilgar.destinations.destination_type`).
    ``listen``: the --listen endpoint string, which overrides server.ip/port."""
    if destination_types is None:
        from .destinations import destination_type as destination_types
    if data is None:
        raise ConfigError(path or "config", "the file is empty (it needs at least a"
                                            " destinations list)")
    if not isinstance(data, dict):
        raise ConfigError(path or "config", f"expected a mapping of sections"
                                            f" ({', '.join(_SECTIONS)}), got {_show(data)}")
    warnings = []
    warn = warnings.append
    for key in data:
        if key not in _SECTIONS:
            warn(f"unknown key {key}, ignored")
    server = _parse_server(data.get("server"), warn, listen)
    logging = _parse_logging(data.get("logging"), warn)
    forwarder = _parse_forwarder(data.get("forwarder"), warn)
    privacy = _parse_privacy(data.get("privacy"), warn)
    spool = _parse_spool(data.get("spool"), warn)
    enrich = _parse_enrich(data.get("enrich"), "enrich", warn)
    destinations = _parse_destinations(data.get("destinations"), destination_types, warn, enrich)
    _check_enrich_agrees(destinations, enrich)
    return Config(server=server, logging=logging, forwarder=forwarder, privacy=privacy,
                  spool=spool, destinations=destinations, path=path, warnings=tuple(warnings),
                  enrich=enrich)
