"""stilgar.zlibcodec: ISA-L (when installed) must read and write exactly what zlib does."""

import gzip
import os
import zlib

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from stilgar import zlibcodec
from stilgar.spool import fileformat
from stilgar.web.body import decode_body


class Crc32Tests(unittest.TestCase):
    """The spool's record checksums: a spool written before (zlib) must read back."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=5000), st.integers(min_value=0, max_value=2 ** 32 - 1))
    def test_same_values_as_zlib(self, data, start):
        self.assertEqual(zlibcodec.crc32(data), zlib.crc32(data))
        self.assertEqual(zlibcodec.crc32(data, start), zlib.crc32(data, start))

    def test_a_record_framed_with_zlib_reads_back(self):
        payload = os.urandom(70_000)
        length = fileformat.LEN.pack(len(payload))
        header = fileformat.REC.pack(len(payload), zlib.crc32(payload, zlib.crc32(length)))
        self.assertEqual(fileformat.frame_header(payload), header)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(header + payload)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        [(off, got, damage)] = list(fileformat.iter_records(fd, 0, len(header) + len(payload)))
        self.assertEqual((off, got, damage), (0, payload, None))


class GzipTests(unittest.TestCase):
    """INSERT bodies: standard gzip (ClickHouse reads them), the same bytes each time."""

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=20_000) | st.text(max_size=5000).map(str.encode))
    def test_round_trips_through_the_standard_library(self, data):
        body = zlibcodec.gzip_compress(data)
        self.assertEqual(gzip.decompress(body), data)
        self.assertEqual(zlibcodec.gzip_compress(data), body)

    def test_tsv_compresses(self):
        tsv = b"".join(b"%d\tOrder Completed\t2026-12-01 12:00:00\tUSD\t12.5\n" % i for i in range(10_000))
        self.assertLess(len(zlibcodec.gzip_compress(tsv)), len(tsv) // 5)


class InflateTests(unittest.TestCase):
    """Request bodies compressed by the standard library's zlib, inflated by the codec."""

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=100_000), st.sampled_from([b"gzip", b"deflate-zlib", b"deflate-raw"]))
    def test_whatever_zlib_wrote(self, data, kind):
        if kind == b"gzip":
            body, encoding = gzip.compress(data), b"gzip"
        elif kind == b"deflate-zlib":
            body, encoding = zlib.compress(data), b"deflate"
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            body, encoding = c.compress(data) + c.flush(), b"deflate"
        self.assertEqual(decode_body(body, encoding, 1 << 20), data)

    def test_uses_isal_when_installed(self):
        try:
            import isal  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("python-isal is not installed")
        self.assertTrue(zlibcodec.ISAL)
