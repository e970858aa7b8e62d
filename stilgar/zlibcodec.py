"""The one place that picks the deflate and CRC-32 library: ISA-L's, else the standard zlib.

``python-isal`` (``isal``, Intel's ISA-L) reads and writes the same streams as
zlib, with zlib's API, several times faster: on a batch of 100 server events
inflating the request body took 0.28 µs per event instead of 0.70, gzip of the
INSERT bodies at level 1 0.55 µs instead of 2.25 with a smaller output (0.227
of the TSV instead of 0.254), and its CRC-32 (the spool's record checksum) uses
the CPU's carry-less multiply (doc/performance.md). The values are the same
(CRC-32 is one function; deflate is a format). Without it (PyPy, a platform
without a wheel) everything uses the standard library, unchanged.

Other modules import these names from here, never ``zlib`` or ``isal`` on
their own.
"""

import gzip as _std_gzip
import zlib as _std_zlib

try:  # pragma: no cover - depends on the platform
    from isal import igzip as _isal_gzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover
    _isal_gzip = _isal_zlib = None

__all__ = ["ISAL", "MAX_WBITS", "error", "crc32", "decompressobj", "gzip_compress"]

#: True when ISA-L does the work.
ISAL = _isal_zlib is not None

MAX_WBITS = _std_zlib.MAX_WBITS

if ISAL:
    #: What a corrupt stream raises (catch this, not ``zlib.error``).
    error = (_std_zlib.error, _isal_zlib.error)
    crc32 = _isal_zlib.crc32
    decompressobj = _isal_zlib.decompressobj

    def gzip_compress(data, level=1):
        """A gzip member of ``data`` (mtime 0: the same bytes for the same data).
        ISA-L's levels are 0-3; its 1 compresses better than zlib's 1, 4x faster."""
        return _isal_gzip.compress(data, min(level, 3), mtime=0)
else:  # pragma: no cover
    error = (_std_zlib.error,)
    crc32 = _std_zlib.crc32
    decompressobj = _std_zlib.decompressobj

    def gzip_compress(data, level=1):
        return _std_gzip.compress(data, level, mtime=0)
