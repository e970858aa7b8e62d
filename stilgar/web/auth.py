"""Write keys and admin credentials from Basic auth, compared in constant time."""

import base64
import functools
import binascii
import hmac
from urllib.parse import unquote_to_bytes

__all__ = ["parse_basic", "KeyRing", "query_value"]

# SDKs send the same few small values again and again: those are cached. Anyone
# can send large ones (up to a 64 KiB header, no valid key needed), so a large
# value is parsed each time and never kept: the cache holds at most
# 4096 x 256 bytes of header text.
_CACHED_HEADER_BYTES = 256


def parse_basic(header):
    """Return ``(user, password)`` from an Authorization header value, or None.

    Lenient like RudderStack's clients need: extra spaces, missing padding,
    a user without ``:`` (empty password), case-insensitive scheme.
    """
    if not header:
        return None
    if len(header) <= _CACHED_HEADER_BYTES:
        return _parse_basic_cached(header)
    return _parse_basic(header)


@functools.lru_cache(maxsize=4096)
def _parse_basic_cached(header):
    return _parse_basic(header)


def _parse_basic(header):
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    parts = header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"basic":
        return None
    token = b"".join(parts[1].split())
    token += b"=" * (-len(token) % 4)
    try:
        raw = base64.b64decode(token, altchars=None, validate=False)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    user, _, password = text.partition(":")
    if not user:
        return None
    return user, password


class KeyRing:
    """The set of known write keys, looked up without leaking timing."""

    def __init__(self, keys):
        self._keys = [k.encode("utf-8") for k in sorted(keys)]
        self._set = frozenset(keys)

    def __contains__(self, key):
        candidate = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
        found = False
        # compare against every key: the time does not depend on which (if any) matched
        for known in self._keys:
            found |= hmac.compare_digest(candidate, known)
        return found


def credentials_match(given, username, password):
    """Constant-time check of admin credentials."""
    if given is None:
        return False
    user_ok = hmac.compare_digest(given[0].encode("utf-8", "replace"), username.encode("utf-8"))
    pass_ok = hmac.compare_digest(given[1].encode("utf-8", "replace"), password.encode("utf-8"))
    return user_ok and pass_ok


def query_value(uri, name):
    """The last ``name=`` value of ``uri``'s query (bytes), percent-decoded as
    UTF-8 but *not* form-decoded: a ``+`` stays a ``+`` (the Kotlin and Swift
    SDKs put the write key in the query unencoded). '' when absent."""
    value = None
    for part in uri.partition(b"?")[2].split(b"&"):
        key, _, raw = part.partition(b"=")
        if unquote_to_bytes(key) == name:
            value = raw
    return unquote_to_bytes(value).decode("utf-8", "replace") if value else ""
