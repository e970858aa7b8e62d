"""Tests for stilgar.units: the size and duration syntax of the configuration."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from stilgar.units import ConfigError, parse_duration, parse_size


class ParseSizeTests(unittest.TestCase):
    def test_bare_numbers_are_bytes(self):
        self.assertEqual(parse_size(512), 512)
        self.assertEqual(parse_size("512"), 512)
        self.assertEqual(parse_size(0), 0)
        self.assertEqual(parse_size(" 512 "), 512)
        self.assertEqual(parse_size("512B"), 512)

    def test_binary_units(self):
        self.assertEqual(parse_size("64KiB"), 64 * 1024)
        self.assertEqual(parse_size("4MiB"), 4 * 1024 ** 2)
        self.assertEqual(parse_size("1GiB"), 1024 ** 3)
        self.assertEqual(parse_size("1TiB"), 1024 ** 4)
        self.assertEqual(parse_size("2Ki"), 2048)
        self.assertEqual(parse_size("64 KiB"), 64 * 1024)

    def test_decimal_units(self):
        self.assertEqual(parse_size("64KB"), 64000)
        self.assertEqual(parse_size("64kB"), 64000)
        self.assertEqual(parse_size("1MB"), 1000 ** 2)
        self.assertEqual(parse_size("1GB"), 1000 ** 3)
        self.assertEqual(parse_size("3K"), 3000)
        self.assertEqual(parse_size("3M"), 3 * 1000 ** 2)

    def test_lowercase_b_means_bits(self):
        self.assertEqual(parse_size("64kb"), 8000)
        self.assertEqual(parse_size("64Kb"), 8000)
        self.assertEqual(parse_size("8Mb"), 1000 ** 2)
        self.assertEqual(parse_size("64b"), 8)
        self.assertEqual(parse_size("8Kib"), 1024)

    def test_kib_kb_and_kb_bits_differ(self):
        self.assertEqual(
            (parse_size("1KiB"), parse_size("1KB"), parse_size("1kb")), (1024, 1000, 125))

    def test_fractions_are_exact(self):
        # float("2.01") * 1000 == 2009.9999999999998: must not floor to 2009
        self.assertEqual(parse_size("2.01KB"), 2010)
        self.assertEqual(parse_size("4.35MB"), 4350000)
        self.assertEqual(parse_size("1.5KiB"), 1536)
        self.assertEqual(parse_size("0.5MiB"), 512 * 1024)

    def test_bad_sizes(self):
        for value in ("", "abc", "KiB", "-1", "1.2.3", "12 XB", "1e3", "4 MiB x", "1iB"):
            e = self.assertRaises(ConfigError, parse_size, value, "server.payload_size_limit")
            self.assertEqual(e.key, "server.payload_size_limit")
            self.assertTrue(str(e).startswith("server.payload_size_limit: "))
            self.assertNotIn("\n", str(e))

    def test_bad_types(self):
        for value in (True, None, 1.5, [1], {"a": 1}, -1):
            self.assertRaises(ConfigError, parse_size, value, "k")

    @given(st.integers(min_value=0, max_value=10 ** 6), st.sampled_from(
        [("", 1), ("B", 1), ("KB", 1000), ("KiB", 1024), ("MB", 10 ** 6), ("MiB", 2 ** 20),
         ("GiB", 2 ** 30)]))
    def test_integers_with_any_unit(self, number, unit):
        suffix, factor = unit
        self.assertEqual(parse_size(f"{number}{suffix}"), number * factor)

    @given(st.integers(min_value=0, max_value=99999), st.integers(min_value=0, max_value=99))
    def test_decimals_are_exact(self, whole, hundredths):
        self.assertEqual(parse_size(f"{whole}.{hundredths:02d}MB"), whole * 10 ** 6 + hundredths * 10 ** 4)


class ParseDurationTests(unittest.TestCase):
    def test_simple(self):
        self.assertEqual(parse_duration("5s"), 5)
        self.assertEqual(parse_duration("1m"), 60)
        self.assertEqual(parse_duration("1h"), 3600)
        self.assertEqual(parse_duration("2d"), 172800)
        self.assertEqual(parse_duration("1w"), 604800)
        self.assertAlmostEqual(parse_duration("2ms"), 0.002)
        self.assertAlmostEqual(parse_duration("250us"), 0.00025)
        self.assertAlmostEqual(parse_duration("10ns"), 1e-8)

    def test_compound(self):
        self.assertEqual(parse_duration("1h 30m"), 5400)
        self.assertEqual(parse_duration("1h30m"), 5400)
        self.assertEqual(parse_duration("1h 30m 15s"), 5415)
        self.assertAlmostEqual(parse_duration("1s 500ms"), 1.5)
        self.assertEqual(parse_duration("  2 min  "), 120)

    def test_long_unit_names(self):
        self.assertEqual(parse_duration("2 minutes"), 120)
        self.assertEqual(parse_duration("1hour"), 3600)
        self.assertEqual(parse_duration("3 secs"), 3)
        self.assertEqual(parse_duration("1 day"), 86400)

    def test_month_and_minute(self):
        # humantime: a capital M is a month, a lowercase m a minute
        self.assertEqual(parse_duration("5m"), 300)
        self.assertEqual(parse_duration("1M"), 2630016)
        self.assertEqual(parse_duration("1 month"), 2630016)
        self.assertEqual(parse_duration("1y"), 31557600)

    def test_fractional(self):
        self.assertEqual(parse_duration("1.5s"), 1.5)

    def test_unit_required(self):
        for value in ("5", "30", "1h 30"):
            e = self.assertRaises(ConfigError, parse_duration, value, "server.read_timeout")
            self.assertEqual(e.key, "server.read_timeout")

    def test_bad_durations(self):
        for value in ("", "   ", "abc", "5 parsecs", "-5s", "5s abc", "abc 5s", "5s, 3m", "1x"):
            e = self.assertRaises(ConfigError, parse_duration, value, "k")
            self.assertTrue(str(e).startswith("k: "))
            self.assertNotIn("\n", str(e))

    def test_bad_types(self):
        for value in (5, 5.0, True, None, ["5s"]):
            e = self.assertRaises(ConfigError, parse_duration, value, "k")
            self.assertIn("duration", str(e))

    def test_message_names_the_value(self):
        e = self.assertRaises(ConfigError, parse_duration, "abc", "server.read_timeout")
        self.assertEqual(
            str(e), "server.read_timeout: cannot read 'abc' as a duration (e.g. 5s, 1m, 1h 30m)")


class ConfigErrorTests(unittest.TestCase):
    def test_str_and_attributes(self):
        e = ConfigError("server.port", "must be at most 65535")
        self.assertEqual(str(e), "server.port: must be at most 65535")
        self.assertEqual(e.key, "server.port")
        self.assertEqual(e.problem, "must be at most 65535")
