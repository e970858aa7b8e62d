"""The ``clickhouse`` destination block (doc/clickhouse.md).

Every value is checked with :mod:`stilgar.validate`, as the core sections are,
and every problem of the block is reported at once.
"""

from urllib.parse import urlsplit

import attr

from ... import validate
from ...units import ConfigError

__all__ = ["ClickHouseSettings", "parse_settings", "KNOWN_KEYS"]

GRPC_PORT = 9100
DEFAULT_REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"


@attr.s(frozen=True, slots=True)
class ClickHouseSettings:
    url = attr.ib()                 # base URL of the HTTP interface, no trailing slash
    user = attr.ib(default="default")
    password = attr.ib(default="", repr=False)
    database = attr.ib(default="default")
    compression = attr.ib(default=True)
    query_timeout = attr.ib(default=5.0)
    insert_timeout = attr.ib(default=60.0)     # an INSERT of max_insert_bytes on a busy server
    alter_timeout = attr.ib(default=600.0)
    cache_threshold = attr.ib(default=10000)
    cache_idle_timeout = attr.ib(default=60.0)
    cache_max_bytes = attr.ib(default=16 * 1024 * 1024)
    max_table_expansion = attr.ib(default=100)
    max_table_width = attr.ib(default=500)
    max_parallel_queries = attr.ib(default=2)
    max_event_tables = attr.ib(default=1000)
    max_schema_changes_per_minute = attr.ib(default=60)
    max_insert_rows = attr.ib(default=100_000)
    max_insert_bytes = attr.ib(default=16 * 1024 * 1024)
    urls = attr.ib(default=(), converter=tuple)   # every node's base URL; url is the first
    cluster = attr.ib(default=None)               # remote_servers cluster name (doc/scaling.md)
    replicated = attr.ib(default=None)            # None: detected from system.clusters
    replica_path = attr.ib(default=DEFAULT_REPLICA_PATH)
    replica_name = attr.ib(default="{replica}")
    insert_quorum = attr.ib(default=0)


KNOWN_KEYS = frozenset([
    "type", "name", "write_keys",
    "host", "port", "secure", "url", "user", "password", "password_file", "database", "compression",
    "query_timeout", "insert_timeout", "alter_timeout", "cache_threshold", "cache_idle_timeout", "cache_max_bytes",
    "max_table_expansion", "max_table_width", "max_parallel_queries", "max_event_tables",
    "max_schema_changes_per_minute", "max_insert_rows", "max_insert_bytes",
    "hosts", "urls", "cluster", "replicated", "replica_path", "replica_name", "insert_quorum",
])


# The block's keys, read with the shared checks (a wrong value is collected in
# block.problems and the default used, so that every problem is reported).

def _str(block, where, key, default=None, required=False, empty_ok=True):
    return block.take(key, lambda v, k: validate.string(v, k, allow_empty=empty_ok), default, required)


def _bool(block, where, key, default):
    return block.take(key, validate.boolean, default)


def _int(block, where, key, default, minimum=0):
    return block.take(key, lambda v, k: validate.integer(v, k, minimum=minimum), default)


def _duration(block, where, key, default):
    return block.take(key, validate.duration, default)


def _size(block, where, key, default):
    return block.take(key, validate.size, default)


def _port(value, key):
    value = validate.port(value, key)
    if value == GRPC_PORT:
        raise ConfigError(key, "9100 is the original Stilgar's gRPC port; this collector speaks ClickHouse's "
                               "HTTP interface (default 8123, 8443 with TLS)")
    return value


def parse_settings(block, where, warn):
    """The block's settings, or :class:`~stilgar.units.ConfigProblems` listing every problem."""
    block = validate.Block(block, where, KNOWN_KEYS - {"password_file"}, secrets=("password",))
    try:
        settings = _parse(block, where)
    except ConfigError as e:   # the url/host checks below stop at their first problem
        block.problems.extend(e.problems)
    block.done()
    return settings


def _parse(block, where):
    urls = _node_urls(block, where)
    url = _str(block, where, "url")
    if urls:
        base = urls[0]
    elif url is not None:
        for other in ("host", "port", "secure"):
            if block.get(other) is not None:
                raise ConfigError(f"{where}.{other}", "give either url or host/port/secure, not both")
        base = _base_url(url, f"{where}.url")
    else:
        host = (_str(block, where, "host", required=True, empty_ok=False) or "").strip()
        secure = _bool(block, where, "secure", False)
        port = block.take("port", _port, 8443 if secure else 8123)
        base = _host_url(host, port, secure)
    database = _str(block, where, "database", required=True, empty_ok=False)
    replica_path = _str(block, where, "replica_path", default=DEFAULT_REPLICA_PATH, empty_ok=False)
    if "{shard}" not in replica_path and "{table}" not in replica_path:
        raise ConfigError(f"{where}.replica_path", "must contain {shard} or {table}: every shard's "
                                                   "replicas need their own ZooKeeper path")
    return ClickHouseSettings(
        url=base,
        urls=urls or (base,),
        cluster=_str(block, where, "cluster", empty_ok=False),
        replicated=_bool(block, where, "replicated", None),
        replica_path=replica_path,
        replica_name=_str(block, where, "replica_name", default="{replica}", empty_ok=False),
        insert_quorum=_int(block, where, "insert_quorum", 0),
        user=_str(block, where, "user", default="default", empty_ok=False),
        password=_str(block, where, "password", default=""),
        database=database,
        compression=_bool(block, where, "compression", True),
        query_timeout=_duration(block, where, "query_timeout", 5.0),
        insert_timeout=_duration(block, where, "insert_timeout", 60.0),
        alter_timeout=_duration(block, where, "alter_timeout", 600.0),
        cache_threshold=_int(block, where, "cache_threshold", 10000, minimum=1),
        cache_idle_timeout=_duration(block, where, "cache_idle_timeout", 60.0),
        cache_max_bytes=_size(block, where, "cache_max_bytes", 16 * 1024 * 1024),
        max_table_expansion=_int(block, where, "max_table_expansion", 100),
        max_table_width=_int(block, where, "max_table_width", 500),
        max_parallel_queries=_int(block, where, "max_parallel_queries", 2, minimum=1),
        max_event_tables=_int(block, where, "max_event_tables", 1000),
        max_schema_changes_per_minute=_int(block, where, "max_schema_changes_per_minute", 60),
        max_insert_rows=_int(block, where, "max_insert_rows", 100_000, minimum=1),
        max_insert_bytes=_size(block, where, "max_insert_bytes", 16 * 1024 * 1024),
    )



def _node_urls(block, where):
    """``hosts: [host:port, ...]`` or ``urls: [http(s)://..., ...]``: the nodes of
    one destination (exclusive with url/host/port)."""
    given = [k for k in ("hosts", "urls") if block.get(k) is not None]
    if not given:
        return ()
    if len(given) == 2:
        raise ConfigError(f"{where}.urls", "give either hosts or urls, not both")
    key = given[0]
    for other in ("url", "host", "port"):
        if block.get(other) is not None:
            raise ConfigError(f"{where}.{other}", f"give either {key} or url/host/port, not both")
    items = block[key]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}.{key}", "expected a non-empty list")
    secure = _bool(block, where, "secure", False)
    out = []
    for i, item in enumerate(items):
        k = f"{where}.{key}[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(k, f"expected a string, got {item!r}")
        item = item.strip()
        if key == "urls":
            out.append(_base_url(item, k))
            continue
        host, sep, port = item.rpartition(":")
        if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
            host, port = item, None   # no port, or a bare IPv6 literal
        host = host.strip("[]") if host.startswith("[") else host
        out.append(_host_url(host, _port(port, k) if port else (8443 if secure else 8123), secure))
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}.{key}", "lists a node twice")
    return tuple(out)


def _host_url(host, port, secure):
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"   # IPv6 literal
    return f"{'https' if secure else 'http'}://{host}:{port}"


def _base_url(url, key):
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected http(s)://host[:port], got {url!r}")
    if parts.username or parts.password:
        raise ConfigError(key, "credentials go in user and password, not in the url")
    if parts.query or parts.fragment:
        raise ConfigError(key, "no query string or fragment allowed")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(key, f"bad port in {url!r}") from None
    if port is not None:
        _port(port, key)
    return url.strip().rstrip("/")
