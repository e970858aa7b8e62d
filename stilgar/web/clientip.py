"""Which address a request comes from: the peer, or what trusted proxies say."""

import ipaddress

__all__ = ["normalise_ip", "client_ip", "in_networks"]


def normalise_ip(text):
    """Return an ``ip_address`` for text (IPv4-mapped IPv6 becomes IPv4), or None."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = text.strip()
    if text.startswith("[") and "]" in text:       # "[::1]:1234" from some proxies
        text = text[1:text.index("]")]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(ip, networks):
    """True when the address is in one of the networks."""
    return ip is not None and any(ip.version == n.version and ip in n for n in networks)


def _peer(peer_host, trusted):
    peer = normalise_ip(peer_host) if peer_host is not None else None
    return peer, peer is not None and in_networks(peer, trusted)


_peer_cache = {}


def _cached_peer(peer_host, trusted):
    # the same few peers (proxies, SDK hosts) come again and again: parse each once
    key = (peer_host, id(trusted))
    found = _peer_cache.get(key)
    if found is None:
        if len(_peer_cache) > 4096:
            _peer_cache.clear()
        found = _peer_cache[key] = _peer(peer_host, trusted)
    return found


def client_ip(peer_host, forwarded_for, real_ip, trusted):
    """The client address (doc/configuration.md, `trusted_proxies`).

    ``forwarded_for`` is the list of raw ``X-Forwarded-For`` header values (or
    None), ``real_ip`` the ``X-Real-IP`` value (or None). Headers are only
    believed when the peer itself is a trusted proxy; the right-most entry that
    is not a trusted proxy wins (proxies append, so left-most entries are
    whatever the client wrote). When every entry is in a trusted range, the
    right-most one: the peer wrote it, so the client cannot have; an entry
    further left may be client-written whenever a client's own address lies in
    a trusted range (SNAT, Kubernetes, Docker), so it is never believed
    (doc/security.md).
    """
    peer, peer_trusted = _cached_peer(peer_host, trusted)
    if not peer_trusted:
        return peer
    if forwarded_for:
        entries = []
        for value in forwarded_for:
            for part in value.split(b"," if isinstance(value, bytes) else ","):
                ip = normalise_ip(part)
                if ip is not None:
                    entries.append(ip)
        if entries:
            for ip in reversed(entries):
                if not in_networks(ip, trusted):
                    return ip
            return entries[-1]
    if real_ip:
        ip = normalise_ip(real_ip)
        if ip is not None:
            return ip
    return peer
