"""The configuration file: where it is found, how it is read, what every key means.

Pure: no reactor, no Twisted. :func:`parse_config` turns the mapping read from
YAML into frozen objects. Every problem (a bad value, an unknown key, a missing
environment variable) is collected, and all of them are raised at once as one
:class:`~stilgar.units.ConfigProblems` (one line each, naming the dotted key and,
for a file, its line). The value checks are :mod:`stilgar.validate`'s, shared
with the destinations. The reference for operators is ``doc/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Optional, Tuple, Union

import attr
import yaml

from . import validate
from .units import ConfigError, ConfigProblems, parse_size

__all__ = [
    "AdminConfig", "SyslogConfig", "ServerConfig", "LoggingConfig", "ForwarderConfig",
    "PrivacyConfig", "SpoolConfig", "DestinationConfig", "SourceDocument", "Config",
    "GeoipConfig", "BotsConfig", "EnrichConfig", "GEO_FIELDS", "BOT_ACTIONS",
    "find_config_file", "config_search_path", "load_config", "read_config_file", "parse_config",
    "ConfigError", "ConfigProblems", "format_problems", "LOG_LEVELS", "SYSLOG_FACILITIES", "IP_MODES",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DEFAULT_PAYLOAD_SIZE_LIMIT = 4 * MIB
SMALL_PAYLOAD_SIZE_LIMIT = 1 * MIB  # under it, Kotlin/Swift batches (up to ~532KiB) are refused
DEFAULT_TRUSTED_PROXIES = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
# who may read /status and /metrics without server.admin.allowed_networks: this host only
DEFAULT_ADMIN_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128"))
LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
SPOOL_WRITERS = ("process", "thread")
LOG_FORMATS = ("text", "json")
SYSLOG_PROTOCOLS = ("udp", "tcp")
# name -> RFC 5424 facility code: the original's names (flexi_logger's codes),
# and RFC 5424's own names for 13-15. The one table: stilgar.logs sends these codes.
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12,
    "security": 13, "console": 14, "solaris-cron": 15,
    "audit": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
IP_MODES = ("drop", "truncate", "hash", "keep")
SHORT_HASH_SECRET = 16  # bytes; a shorter privacy.hash_secret is warned about
# enrich.geoip.fields: the keys RudderStack's geolocation enrichment writes in context.geo
GEO_FIELDS = ("country", "region", "city", "postal", "location", "timezone")
DEFAULT_GEO_FIELDS = ("country", "region", "city", "timezone")
BOT_ACTIONS = ("flag", "drop", "keep")

# /etc/stilgar first; the original's /etc/withings still read after it
SYSTEM_CONFIG_DIRS = ("/etc/stilgar", "/etc/withings")
SYSTEM_CONFIG_DIR = SYSTEM_CONFIG_DIRS
CONFIG_FILE_NAMES = ("stilgar.yml", "stilgar.yaml")


# --------------------------------------------------------------------------
# The configuration objects
# --------------------------------------------------------------------------

@attr.s(frozen=True, auto_attribs=True)
class AdminConfig:
    """``server.admin``: who may read /status and /metrics."""
    username: Optional[str] = None  # None: no credential check
    password: str = attr.ib(default="", repr=False)
    allowed_networks: Optional[Tuple[Network, ...]] = None  # None: DEFAULT_ADMIN_NETWORKS (loopback)


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
    max_connections_per_ip: int = 1000  # peers in trusted_proxies are not counted
    max_body_buffer: int = 256 * 1024 * 1024  # bytes all bodies being read may hold together
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
    rotate_size: int = 10 * MIB  # twistd --logfile: rotate past this size; 0: never (logrotate)
    rotate_keep: int = 5  # rotated files kept (name.1 ... name.N)


@attr.s(frozen=True, auto_attribs=True)
class ForwarderConfig:
    """``forwarder``."""
    max_queue_size: int = 65536
    shutdown_timeout: float = 10.0
    max_queue_bytes: int = 64 * MIB


@attr.s(frozen=True, auto_attribs=True)
class PrivacyConfig:
    """``privacy``: what personal data reaches storage."""
    ip: str = "drop"  # one of IP_MODES
    hash_secret: Optional[bytes] = attr.ib(default=None, repr=False)
    drop_fields: Tuple[Tuple[str, ...], ...] = ()  # ('context', 'traits', 'email'), ...
    # regulations (doc/privacy.md): the HMAC key of subject ids, the same on every instance
    regulations_secret: Optional[bytes] = attr.ib(default=None, repr=False)
    regulations_sync_interval: float = 10.0
    regulations_settle: Optional[float] = None  # None: computed from the destinations

    @property
    def subject_secret(self) -> Optional[bytes]:
        """The key subject ids are hashed with (regulations_secret, else hash_secret)."""
        return self.regulations_secret if self.regulations_secret is not None else self.hash_secret


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
    writer: str = "process"        # process | thread: where the disk work runs (doc/durability.md)


@attr.s(frozen=True, auto_attribs=True)
class DebugConfig:
    """``debug``: the live view at /debug/ (doc/debugging.md)."""
    enabled: bool = True
    max_rate: int = 50             # items a second per subscriber; the rest are counted as skipped
    buffer_size: int = 1 * MIB     # bytes a subscriber may fall behind before it is cut off
    ring_size: int = 200           # recent items replayed to a new subscriber
    max_subscribers: int = 16


@attr.s(frozen=True, auto_attribs=True)
class DestinationConfig:
    """One block of ``destinations``."""
    type: str
    name: str
    write_keys: frozenset
    settings: object  # what the destination type's parse_settings returned
    consent: tuple = ()  # stilgar.events.consent.ConsentRule, for every destination type
    retention: Optional[float] = None  # seconds of data kept (doc/privacy.md)
    enrich: Optional[EnrichConfig] = None  # this block's enrich, merged over the global one


@attr.s(frozen=True, auto_attribs=True)
class SourceDocument:
    """One write key's ``source_config`` entry: what /sourceConfig serves
    for it besides the collector's own fields (doc/sdks.md)."""
    destinations: tuple = ()                       # JSON objects, served verbatim
    consent_management: Optional[dict] = None      # consentManagementMetadata; None: {"providers": []}
    dataplanes: Optional[dict] = None              # served only when configured


@attr.s(frozen=True, auto_attribs=True)
class Config:
    server: ServerConfig = attr.Factory(ServerConfig)
    logging: LoggingConfig = attr.Factory(LoggingConfig)
    forwarder: ForwarderConfig = attr.Factory(ForwarderConfig)
    privacy: PrivacyConfig = attr.Factory(PrivacyConfig)
    spool: SpoolConfig = attr.Factory(SpoolConfig)
    destinations: Tuple[DestinationConfig, ...] = ()
    source_config: dict = attr.Factory(dict)  # write key -> SourceDocument
    debug: DebugConfig = attr.Factory(DebugConfig)
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
    """The files tried, in order, when neither --config nor $STILGAR_CONFIG is given.

    ``system_dir``: one directory or a sequence of them (default /etc/stilgar, /etc/withings)."""
    xdg = environ.get("XDG_CONFIG_HOME") or ""
    if not os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        home = environ.get("HOME") or os.path.expanduser("~")
        xdg = os.path.join(home, ".config")
    system_dirs = (system_dir,) if isinstance(system_dir, str) else tuple(system_dir)
    directories = (*system_dirs, os.path.join(xdg, "stilgar"), cwd or os.getcwd())
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


class _Mapping(dict):
    """A YAML mapping that remembers the line of each key (``lines``: key -> line, from 1)."""
    lines = {}


class _Sequence(list):
    """A YAML sequence that remembers the line of each item."""
    lines = []


class _Int(int):
    """A YAML integer that remembers how it was written: a string-typed key takes
    the text (``password: 0123`` is ``"0123"``, not YAML 1.1's octal 83)."""

    def __new__(cls, value, yaml_text):
        self = super().__new__(cls, value)
        self.yaml_text = yaml_text
        return self


class _Float(float):
    def __new__(cls, value, yaml_text):
        self = super().__new__(cls, value)
        self.yaml_text = yaml_text
        return self


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader refusing duplicate keys (the later one would silently win),
    keeping the line numbers of keys and the written text of numbers."""

    def construct_tracked_map(self, node):
        data = _Mapping()
        yield data
        data.update(self.construct_mapping(node))
        lines = {}
        for key_node, _ in node.value:   # flattened by construct_mapping (merge keys)
            try:
                lines.setdefault(self.construct_object(key_node), key_node.start_mark.line + 1)
            except TypeError:
                pass
        data.lines = lines

    def construct_tracked_seq(self, node):
        data = _Sequence()
        yield data
        data.extend(self.construct_sequence(node))
        data.lines = [item.start_mark.line + 1 for item in node.value]

    def construct_tracked_int(self, node):
        return _Int(self.construct_yaml_int(node), node.value)

    def construct_tracked_float(self, node):
        return _Float(self.construct_yaml_float(node), node.value)

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


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_tracked_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_tracked_seq)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_tracked_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_tracked_float)


def _line_index(data, where=""):
    """``{dotted key: line}`` for every key and item of a document read by :func:`read_config_file`."""
    index = {}
    if isinstance(data, dict):
        lines = getattr(data, "lines", {})
        for key, value in data.items():
            path = _join(where, key)
            if key in lines:
                index[path] = lines[key]
            index.update(_line_index(value, path))
    elif isinstance(data, list):
        lines = getattr(data, "lines", [])
        for i, value in enumerate(data):
            path = f"{where}[{i}]"
            if i < len(lines):
                index[path] = lines[i]
            index.update(_line_index(value, path))
    return index


_LAST_PART_RE = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def _line_of(key, index):
    """The line of ``key``, else of the nearest enclosing key (a missing key's block)."""
    while key:
        if key in index:
            return index[key]
        shorter = _LAST_PART_RE.sub("", key)
        if shorter == key:
            return None
        key = shorter
    return None


def format_problems(error, path=None):
    """The lines an operator reads for a ConfigError: ``path:line: key: problem`` each."""
    path = path or error.path
    return error.located(path if error.key != path else None)


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
    text = validate.read_text(path, path, "the configuration file", "utf-8-sig")
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML: {_yaml_problem(e)}") from None


def load_config(path=None, environ=os.environ, destination_types=None, listen=None):
    """Find, read and check the configuration; return a :class:`Config`."""
    path = find_config_file(path, environ)
    return parse_config(read_config_file(path), destination_types, path=path, listen=listen,
                        environ=environ)


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------

# The checks are stilgar.validate's (one set for every section, destinations included);
# the short names below keep the section tables readable.
_show = validate.show
_join = validate.join
_mapping = validate.mapping
_list = validate.sequence
_string = validate.string
_int = validate.integer
_positive_int = validate.positive_int
_port = validate.port
_bool = validate.boolean
_duration = validate.duration
_choice = validate.choice
_ip = validate.ip_address
_network = validate.network
_networks = validate.networks


def _positive_duration(value, key):
    return _duration(value, key)


def _duration_or_zero(value, key):
    return _duration(value, key, allow_zero=True)


def _positive_size(value, key):
    return validate.size(value, key)


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

_WRONG = object()


def _fields(data, where, parsers, warn, secrets=()):
    """Check a section's keys: parse the known ones (a null value means the
    default); an unknown key is a problem. Returns ``{key: parsed value}``, or
    raises every problem of the section at once. A key of ``secrets`` may also
    be given as ``<key>_file`` (see :class:`stilgar.validate.Block`)."""
    block = validate.Block(data, where, parsers, secrets)
    out = {}
    for key, parse in parsers.items():
        if block.given(key):
            value = block.take(key, parse, default=_WRONG)
            if value is not _WRONG:
                out[key] = value
    block.done()
    return out


def _parse_admin(data, where, warn):
    fields = _fields(data, where, {
        "username": _string,
        "password": lambda v, k: _string(v, k, allow_empty=True),
        "allowed_networks": _networks,
    }, warn, secrets=("password",))
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
        "max_connections_per_ip": _positive_int,
        "max_body_buffer": _positive_size,
        "trusted_proxies": _networks,
        "path_prefix": _path_prefix,
        "workers": _positive_int,
        "admin": lambda v, k: _parse_admin(v, k, warn),
    }, warn)
    limit = fields.get("payload_size_limit")
    if limit == 0:
        fields["payload_size_limit"] = DEFAULT_PAYLOAD_SIZE_LIMIT
    elif limit is not None and limit < SMALL_PAYLOAD_SIZE_LIMIT:
        warn(f"WARNING {where}.payload_size_limit is {limit} bytes, under 1MiB: mobile batches"
             " will be refused with 413 (Kotlin/Swift batches reach ~532KiB uncompressed and are"
             " DELETED by the app on 413; Android/iOS classic resend the refused batch for ever,"
             " blocking every later event); see doc/sdks.md")
    budget = fields.get("max_body_buffer")
    if budget is not None and budget < fields.get("payload_size_limit", DEFAULT_PAYLOAD_SIZE_LIMIT):
        warn(f"{where}.max_body_buffer is {budget} bytes, under payload_size_limit: requests of the"
             " largest allowed size will always be answered 503")
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
        "rotate_size": lambda v, k: validate.size(v, k, allow_zero=True),
        "rotate_keep": _positive_int,
    }, warn))


def _parse_forwarder(data, warn):
    return ForwarderConfig(**_fields(data, "forwarder", {
        "max_queue_size": _positive_int,
        "max_queue_bytes": _positive_size,
        "shutdown_timeout": _duration_or_zero,
    }, warn))


def _parse_privacy(data, warn):
    where = "privacy"
    fields = _fields(data, where, {
        "ip": lambda v, k: _choice(v, k, IP_MODES),
        "hash_secret": _secret,
        "drop_fields": _dotted_paths,
        "regulations_secret": _secret,
        "regulations_sync_interval": _positive_duration,
        "regulations_settle": _duration_or_zero,
    }, warn, secrets=("hash_secret", "regulations_secret"))
    secret = fields.get("regulations_secret")
    if secret is not None and len(secret) < SHORT_HASH_SECRET:
        warn(f"{where}.regulations_secret is shorter than {SHORT_HASH_SECRET} bytes:"
             " hashed subject ids are easy to reverse")
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
        "writer": lambda value, key: _choice(value, key, SPOOL_WRITERS),
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


def _parse_debug(data, warn):
    return DebugConfig(**_fields(data, "debug", {
        "enabled": _bool,
        "max_rate": _positive_int,
        "buffer_size": _positive_size,
        "ring_size": lambda v, k: _int(v, k, minimum=0, maximum=100_000),
        "max_subscribers": _positive_int,
    }, warn))


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
    """One destination block; its problems (core keys and the type's settings) all at once."""
    if not isinstance(block, dict):
        raise ConfigError(where, f"expected a destination block (a mapping with type and"
                                 f" write_keys), got {_show(block)}")
    block = dict(block)
    own_enrich = block.pop("enrich", None)
    if own_enrich is not None:
        own_enrich = _parse_enrich(own_enrich, f"{where}.enrich", warn, enrich or EnrichConfig())
    type_name, provider = _destination_provider(block, where, destination_types)
    problems = []
    write_keys = name = settings = None
    # keys every destination type takes (doc/privacy.md), checked here, not by the type
    consent = block.pop("consent", None)
    retention = block.pop("retention", None)
    try:
        if block.get("write_keys") is None:
            raise ConfigError(f"{where}.write_keys", "required: a list of write keys")
        write_keys = _write_keys(block["write_keys"], f"{where}.write_keys")
    except ConfigError as e:
        problems.extend(e.problems)
    try:
        if block.get("name") is not None:
            name = _string(block["name"], f"{where}.name").strip()
    except ConfigError as e:
        problems.extend(e.problems)
    try:
        settings = provider.parse_settings(block, where, warn)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigProblems(problems)
    if name is None:
        name = provider.default_name(settings)
    if consent is not None:
        from .events.consent import parse_consent
        consent = parse_consent(consent, f"{where}.consent")
    if retention is not None:
        raw, retention = retention, _positive_duration(retention, f"{where}.retention")
        if retention < 86400:
            raise ConfigError(f"{where}.retention", f"must be at least 1d (data is dropped by day),"
                                                    f" got {raw!r}")
    return DestinationConfig(type=type_name, name=name, write_keys=write_keys, settings=settings,
                             consent=consent or (), retention=retention,
                             enrich=own_enrich)


def _parse_destinations(value, destination_types, warn, enrich=None):
    key = "destinations"
    if value is None:
        raise ConfigError(key, "required: a list of at least one destination block")
    blocks = _list(value, key)
    if not blocks:
        raise ConfigError(key, "needs at least one destination block")
    destinations, seen, problems = [], {}, []
    for i, block in enumerate(blocks):
        where = f"{key}[{i}]"
        try:
            destination = _parse_destination(block, where, destination_types, warn, enrich)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if destination.name in seen:
            problems.append(ConfigError(
                f"{where}.name", f"duplicate destination name {destination.name!r}"
                f" (also {key}[{seen[destination.name]}]); give each one a distinct name"))
            continue
        seen[destination.name] = i
        destinations.append(destination)
    if problems:
        raise ConfigProblems(problems)
    return tuple(destinations)


# --------------------------------------------------------------------------
# source_config: device-mode destinations served by /sourceConfig
# --------------------------------------------------------------------------

# What the SDKs' models need in each destination (doc/sdks.md): Kotlin and
# Swift refuse the whole document when one of these is missing or mistyped
# (and then keep their cached or initial state), Android's Gson when a type
# is wrong (then it retries and never saves the answer).
_DESTINATION_FIELDS = (
    ("id", str), ("name", str), ("enabled", bool), ("destinationDefinitionId", str),
    ("destinationDefinition", dict), ("updatedAt", str), ("config", dict),
    ("shouldApplyDeviceModeTransformation", bool), ("propagateEventsUntransformedOnError", bool),
)
_DEFINITION_FIELDS = (("name", str), ("displayName", str))
_JSON_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "an array"}
_DATA_RESIDENCY = ("US", "EU")


def _json_value(value, key):
    """Refuse what JSON cannot carry (YAML reads an unquoted date as a date)."""
    stack = [(value, key)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ConfigError(where, f"object keys must be strings, got {_show(k)}")
                stack.append((item, f"{where}.{k}"))
        elif isinstance(v, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(v))
        elif not (v is None or isinstance(v, (str, bool, int, float))):
            raise ConfigError(where, f"not a JSON value ({type(v).__name__}): quote it")
    return value


def _typed(obj, fields, where):
    for name, kind in fields:
        value = obj.get(name)
        if value is None or not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            got = "missing" if value is None else _show(value)
            raise ConfigError(f"{where}.{name}", f"must be {_JSON_NAMES[kind]} (the Kotlin and Swift"
                                                 f" SDKs ignore the whole answer otherwise), got {got}")


def _source_destination(value, where):
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a destination object, got {_show(value)}")
    _typed(value, _DESTINATION_FIELDS, where)
    definition = value["destinationDefinition"]
    _typed(definition, _DEFINITION_FIELDS, f"{where}.destinationDefinition")
    if definition.get("updatedAt") is not None and not isinstance(definition["updatedAt"], str):
        raise ConfigError(f"{where}.destinationDefinition.updatedAt", "must be a string")
    return value


def _consent(value, where):
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected an object, got {_show(value)}")
    providers = value.get("providers")
    if providers is not None:
        if not isinstance(providers, list):
            raise ConfigError(f"{where}.providers", f"expected an array, got {_show(providers)}")
        for i, provider in enumerate(providers):
            if not isinstance(provider, dict):
                raise ConfigError(f"{where}.providers[{i}]", f"expected an object, got {_show(provider)}")
    return value


def _dataplanes(value, where):
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected an object of US/EU lists, got {_show(value)}")
    for region, urls in value.items():
        if region not in _DATA_RESIDENCY:
            raise ConfigError(f"{where}.{region}", "the SDKs know only US and EU")
        if not isinstance(urls, list):
            raise ConfigError(f"{where}.{region}", f"expected an array, got {_show(urls)}")
        for i, entry in enumerate(urls):
            at = f"{where}.{region}[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) \
                    or not isinstance(entry.get("default", False), bool):
                raise ConfigError(at, 'expected {"url": "https://...", "default": true|false}')
    return value


def _source_file(path, where):
    if path.endswith(".json"):
        try:
            with open(path, "rb") as f:
                return json.loads(f.read().decode("utf-8-sig"))
        except OSError as e:
            raise ConfigError(where, f"cannot read {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(where, f"{path} is not JSON: {_one_line(e)}") from None
    try:
        return read_config_file(path)
    except ConfigError as e:
        raise ConfigError(where, str(e)) from None


def _source_document(value, where, warn):
    if isinstance(value, str):
        value = _source_file(value.strip(), where)
    if not isinstance(value, dict):
        raise ConfigError(where, "expected a mapping (destinations, consentManagementMetadata,"
                                 f" dataplanes) or the path of a file holding one, got {_show(value)}")
    value = _json_value(value, where)
    source = value.get("source")
    if isinstance(source, dict):
        # a whole /sourceConfig answer copied from RudderStack's control plane
        if source.get("dataplanes"):
            warn(f"{where}: source.dataplanes of the copied answer is not served (it would send the"
                 " classic SDKs' events elsewhere); give dataplanes at the top level to serve it")
        value = {"destinations": source.get("destinations", []),
                 **{k: value[k] for k in ("consentManagementMetadata", "dataplanes") if k in value}}
    known = {"destinations", "consentManagementMetadata", "dataplanes"}
    for key in value:
        if key not in known:
            warn(f"unknown key {where}.{key}, ignored")
    destinations = value.get("destinations")
    if destinations is None:
        destinations = []
    destinations = tuple(_source_destination(d, f"{where}.destinations[{i}]")
                         for i, d in enumerate(_list(destinations, f"{where}.destinations")))
    consent = value.get("consentManagementMetadata")
    if consent is not None:
        consent = _consent(consent, f"{where}.consentManagementMetadata")
    dataplanes = value.get("dataplanes")
    if dataplanes is not None:
        dataplanes = _dataplanes(dataplanes, f"{where}.dataplanes")
        warn(f"{where}.dataplanes is served: the Android and iOS classic SDKs will send their"
             " events to its default URL instead of the configured data plane URL")
    return SourceDocument(destinations=destinations, consent_management=consent, dataplanes=dataplanes)


def _parse_source_config(data, destinations, warn):
    where = "source_config"
    known = frozenset().union(*(d.write_keys for d in destinations))
    out = {}
    for key, value in _mapping(data, where).items():
        at = _join(where, key)
        if not isinstance(key, str) or key not in known:
            raise ConfigError(at, "not a write key of any destination")
        out[key] = _source_document(value, at, warn)
    return out


# --------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------

_SECTIONS = ("server", "logging", "forwarder", "privacy", "spool", "enrich", "destinations", "source_config",
             "debug")


def _interpolated(data, environ, problems, where=""):
    """``data`` with ``${VAR}`` / ``${VAR:-default}`` replaced in every string value."""
    if isinstance(data, dict):
        out = _Mapping((key, _interpolated(value, environ, problems, _join(where, key)))
                       for key, value in data.items())
        out.lines = getattr(data, "lines", {})
        return out
    if isinstance(data, list):
        out = _Sequence(_interpolated(value, environ, problems, f"{where}[{i}]")
                        for i, value in enumerate(data))
        out.lines = getattr(data, "lines", [])
        return out
    if isinstance(data, str):
        try:
            return validate.interpolate(data, where, environ)
        except ConfigError as e:
            problems.append(e)
    return data


def _extension_key(key):
    """Top-level ``x-...`` keys are the operator's own (YAML anchors to merge elsewhere)."""
    return isinstance(key, str) and key.startswith("x-")


def _check_document(data, path):
    """A configuration document is a mapping of sections."""
    if data is None:
        raise ConfigError(path or "config", "the file is empty (it needs at least a"
                                            " destinations list)")
    if not isinstance(data, dict):
        raise ConfigError(path or "config", f"expected a mapping of sections"
                                            f" ({', '.join(_SECTIONS)}), got {_show(data)}")


def _problems_by_line(problems, index, path):
    """One :class:`ConfigProblems` of every problem found, in the order of the file's lines."""
    for problem in problems:
        problem.line = _line_of(problem.key, index)
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    error = ConfigProblems(problems)
    error.path = path
    return error


def parse_config(data, destination_types=None, path=None, listen=None, environ=None):
    """Check the decoded YAML ``data`` and return a :class:`Config`.

    ``destination_types``: ``type name -> IDestinationType provider`` raising
    KeyError for an unknown type (default: :func:`stilgar.destinations.destination_type`).
    ``listen``: the --listen endpoint string, which overrides server.ip/port.
    ``environ``: the variables ``${VAR}`` reads (default: ``os.environ``).
    Raises :class:`ConfigProblems` listing every problem found, with YAML lines
    when ``data`` comes from :func:`read_config_file`."""
    if destination_types is None:
        from .destinations import destination_type as destination_types
    _check_document(data, path)
    index = _line_index(data)
    problems = []
    data = _interpolated(data, os.environ if environ is None else environ, problems)
    warnings = []
    warn = warnings.append
    for key in data:
        if key not in _SECTIONS and not _extension_key(key):
            problems.append(validate.unknown_key("", key, _SECTIONS))

    def section(parse, *args, default=None):
        try:
            return parse(*args)
        except ConfigError as e:
            problems.extend(e.problems)
            return default

    server = section(_parse_server, data.get("server"), warn, listen)
    logging = section(_parse_logging, data.get("logging"), warn)
    forwarder = section(_parse_forwarder, data.get("forwarder"), warn)
    privacy = section(_parse_privacy, data.get("privacy"), warn)
    spool = section(_parse_spool, data.get("spool"), warn)
    enrich = section(_parse_enrich, data.get("enrich"), "enrich", warn)
    destinations = section(_parse_destinations, data.get("destinations"), destination_types, warn, enrich)
    if destinations is not None:
        section(_check_enrich_agrees, destinations, enrich)
    source_config = section(_parse_source_config, data.get("source_config"), destinations or (), warn)
    debug = section(_parse_debug, data.get("debug"), warn)
    if problems:
        raise _problems_by_line(problems, index, path)
    return Config(server=server, logging=logging, forwarder=forwarder, privacy=privacy,
                  spool=spool, destinations=destinations, source_config=source_config, debug=debug,
                  enrich=enrich, path=path, warnings=tuple(warnings))
