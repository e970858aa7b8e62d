"""Request bodies: content decoding with caps on inflated bytes."""

from .. import zlibcodec
from ..events import Rejected

__all__ = ["decode_body", "ENCODINGS"]

ENCODINGS = frozenset([b"", b"identity", b"gzip", b"x-gzip", b"deflate"])
_CHUNK = 64 * 1024


class _Corrupt(Exception):
    """A stream that ends early, or has bytes after its end."""


_ERRORS = zlibcodec.error + (_Corrupt,)


def _inflate(data, wbits, limit, members):
    """Inflate ``data``; ``members``: gzip, where concatenated members are one
    body (RFC 1952), otherwise bytes after the end of the stream are refused.
    ``limit`` bounds the inflated bytes of all members together."""
    out = []
    size = 0
    while True:
        inflater = zlibcodec.decompressobj(wbits)
        # max_length bounds each step, so a bomb never inflates past the limit in memory
        buf = inflater.decompress(data, _CHUNK)
        while True:
            size += len(buf)
            if size > limit:
                raise Rejected(413, "request size exceeds max limit")
            out.append(buf)
            if not inflater.unconsumed_tail:
                break
            buf = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        tail = inflater.flush()
        size += len(tail)
        if size > limit:
            raise Rejected(413, "request size exceeds max limit")
        out.append(tail)
        if not inflater.eof:
            raise _Corrupt("truncated stream")
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if not members:
            raise _Corrupt("data after the end of the stream")


def decode_body(body, encoding, limit):
    """Return the decoded body; ``encoding`` is the lowercased Content-Encoding (bytes).

    Raises :class:`Rejected`: 415 for an unknown encoding, 413 when the
    inflated body passes ``limit``, 400 ``invalid json`` for a corrupt stream
    or bytes after a deflate stream (it can never be stored). Every member of
    a gzip body is decoded.
    """
    encoding = encoding.strip()
    if encoding in (b"", b"identity"):
        return body
    if encoding not in ENCODINGS:
        raise Rejected(415, "unsupported content encoding")
    if not body:
        raise Rejected(400, "invalid json")
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return _inflate(body, 16 + zlibcodec.MAX_WBITS, limit, members=True)
        # 'deflate' is zlib-wrapped per RFC 9110, raw in the original: detect
        if len(body) >= 2 and (body[0] & 0x0F) == 8 and ((body[0] << 8) | body[1]) % 31 == 0:
            try:
                return _inflate(body, zlibcodec.MAX_WBITS, limit, members=False)
            except _ERRORS:
                pass
        return _inflate(body, -zlibcodec.MAX_WBITS, limit, members=False)
    except _ERRORS:
        raise Rejected(400, "invalid json")
