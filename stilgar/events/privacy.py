"""The privacy step of normalisation: ``context.ip`` policy and ``drop_fields``.

``privacy`` is any object with the attributes of
``stilgar.config.PrivacyConfig``:

* ``ip``: ``'drop'`` (remove ``context.ip``; the default, and what any
  unknown value means), ``'keep'`` (the address as sent), ``'truncate'``
  (IPv4: last octet zeroed, ``a.b.c.0``; IPv6: last 80 bits zeroed, i.e.
  the /48 network, written compressed), ``'hash'`` (lower-case hex
  HMAC-SHA256 keyed by ``hash_secret`` over ``'YYYY-MM-DD' + address``,
  the UTC date of ``receivedAt`` and the canonical address text, so the
  value agrees across workers and replays and changes daily).
  With ``truncate`` and ``hash`` a value that is not an IP address is
  removed. Addresses are read leniently (surrounding spaces, ``[v6]``,
  ``%zone``, ``v4:port``, ``[v6]:port``); an IPv4-mapped IPv6 address is
  treated as the IPv4 address.
* ``hash_secret``: ``bytes`` (a ``str`` is UTF-8 encoded; ``None`` is an
  empty key, which the configuration should refuse).
* ``drop_fields``: paths (tuples of keys; a dotted string is split) removed
  from each normalised event. Only dicts are walked; a missing path is
  ignored; the input is never modified (dicts along the path are copied).
  Fields the normalised format guarantees cannot disappear: ``context``
  becomes ``{}``, ``anonymousId``, ``userId``, ``channel``, ``sentAt``,
  ``originalTimestamp``, ``event``, ``groupId``, ``previousId`` become
  ``None``, and ``type``, ``messageId``, ``receivedAt``, ``timestamp`` are
  left alone.
"""

import hmac
from functools import lru_cache
from hashlib import sha256
from ipaddress import IPv4Address, IPv6Address, ip_address

__all__ = ["IpPolicy", "compile_drop_fields", "drop_paths", "truncate_ip", "hash_ip", "canonical_ip",
           "event_ip"]

_MAX_IP_LEN = 100
_V4_HOST_MASK = 0xFFFFFF00
_V6_HOST_MASK = ((1 << 128) - 1) ^ ((1 << 80) - 1)

# Top-level keys that must stay in a normalised event: the value a drop
# leaves (_KEEP: the drop is ignored).
_KEEP = object()
_MISSING = object()
_GUARDED = {
    "type": _KEEP,
    "messageId": _KEEP,
    "receivedAt": _KEEP,
    "timestamp": _KEEP,
    "context": dict,
    "anonymousId": None,
    "userId": None,
    "channel": None,
    "sentAt": None,
    "originalTimestamp": None,
    "event": None,
    "groupId": None,
    "previousId": None,
}


@lru_cache(maxsize=4096)
def _parse_ip(text):
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


def canonical_ip(text):
    """The ``ipaddress`` object for ``text``, or ``None`` if it is not one."""
    if type(text) is not str or len(text) > _MAX_IP_LEN:
        return None
    return _parse_ip(text)


@lru_cache(maxsize=4096)
def _truncate(addr):
    if addr.version == 4:
        return str(IPv4Address(int(addr) & _V4_HOST_MASK))
    return str(IPv6Address(int(addr) & _V6_HOST_MASK))


def truncate_ip(text):
    """``text`` with the host part zeroed, or ``None`` if not an address."""
    addr = canonical_ip(text)
    return None if addr is None else _truncate(addr)


@lru_cache(maxsize=4096)
def _hash(secret, day, addr):
    return hmac.new(secret, (day + str(addr)).encode("ascii"), sha256).hexdigest()


def hash_ip(secret, day, text):
    """HMAC-SHA256 hex of ``day + canonical address``, or ``None``."""
    addr = canonical_ip(text)
    return None if addr is None else _hash(secret, day, addr)


def event_ip(context, client_ip):
    """The event's address: a non-blank ``context.ip`` as sent (a server-side
    SDK reports its user's), else the request's client IP; None if neither."""
    ip = context.get("ip")
    if type(ip) is not str or not ip.strip():
        ip = client_ip if type(client_ip) is str and client_ip else None
    return ip


class IpPolicy:
    """The ``context.ip`` policy of one request (precomputed once)."""

    __slots__ = ("mode", "secret", "day")

    def __init__(self, privacy, day):
        mode = getattr(privacy, "ip", "drop")
        self.mode = mode if mode in ("keep", "truncate", "hash") else "drop"
        secret = getattr(privacy, "hash_secret", None)
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        elif not isinstance(secret, bytes):
            secret = b""
        self.secret = secret
        self.day = day

    def apply(self, context, client_ip):
        """Set or remove ``context['ip']`` (``context`` is our own copy)."""
        mode = self.mode
        if mode == "drop":
            context.pop("ip", None)
            return
        ip = event_ip(context, client_ip)
        if ip is not None:
            if mode == "truncate":
                ip = truncate_ip(ip)
            elif mode == "hash":
                ip = hash_ip(self.secret, self.day, ip)
        if ip is None:
            context.pop("ip", None)
        else:
            context["ip"] = ip


def compile_drop_fields(privacy):
    """``privacy.drop_fields`` as a tuple of non-empty tuples of str keys."""
    fields = getattr(privacy, "drop_fields", None) or ()
    paths = []
    try:
        for path in fields:
            if isinstance(path, str):
                path = path.split(".")
            try:
                path = tuple(path)
            except TypeError:
                continue
            if path and all(type(p) is str for p in path):
                paths.append(path)
    except TypeError:
        return ()
    return tuple(paths)


def drop_paths(event, paths):
    """Remove each path from ``event`` (our own dict), copying the dicts
    along a path before changing them. Never fails."""
    for path in paths:
        first = path[0]
        if len(path) == 1:
            if first in event:
                guard = _GUARDED.get(first, _MISSING)
                if guard is _MISSING:
                    del event[first]
                elif guard is dict:
                    event[first] = {}
                elif guard is not _KEEP:
                    event[first] = guard
            continue
        # Walk first: copy only if the leaf exists.
        node = event
        for key in path[:-1]:
            node = node.get(key)
            if not isinstance(node, dict):
                break
        else:
            if path[-1] not in node:
                continue
            node = event
            for key in path[:-1]:
                child = dict(node[key])
                node[key] = child
                node = child
            del node[path[-1]]
