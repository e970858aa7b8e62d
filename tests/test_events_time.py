"""stilgar.events.parse_datetime / format_datetime."""

import random
from datetime import datetime, timedelta, timezone

from twisted.trial.unittest import TestCase

from stilgar.events import format_datetime, parse_datetime
from stilgar.events.timeparse import format_naive_utc, parse_formatted, parse_naive_utc

UTC = timezone.utc


def utc(*args):
    return datetime(*args, tzinfo=UTC)


class ParseDatetimeTests(TestCase):
    def check(self, text, expected):
        got = parse_datetime(text)
        self.assertEqual(got, expected, text)
        if expected is not None:
            self.assertIs(got.tzinfo, UTC, text)

    def test_zulu(self):
        self.check("2024-05-01T10:00:00.123Z", utc(2024, 5, 1, 10, 0, 0, 123000))
        self.check("2024-05-01T10:00:00Z", utc(2024, 5, 1, 10))
        self.check("2024-05-01T10:00:00.123z", utc(2024, 5, 1, 10, 0, 0, 123000))

    def test_offsets(self):
        self.check("2024-05-01T12:00:00.5+02:00", utc(2024, 5, 1, 10, 0, 0, 500000))
        self.check("2024-05-01T12:00:00+0200", utc(2024, 5, 1, 10))
        self.check("2024-05-01T12:00:00+02", utc(2024, 5, 1, 10))
        self.check("2024-05-01T04:30:00-05:30", utc(2024, 5, 1, 10))
        self.check("2024-05-01T10:00:00.123456+00:00", utc(2024, 5, 1, 10, 0, 0, 123456))
        self.check("2024-05-01T10:00:00-00:00", utc(2024, 5, 1, 10))
        self.check("2024-05-01T00:30:00+01:00", utc(2024, 4, 30, 23, 30))

    def test_no_zone_is_utc(self):
        self.check("2024-05-01T10:00:00", utc(2024, 5, 1, 10))
        self.check("2024-05-01T10:00:00.25", utc(2024, 5, 1, 10, 0, 0, 250000))

    def test_space_separator(self):
        self.check("2024-05-01 10:00:00", utc(2024, 5, 1, 10))
        self.check("2024-05-01 10:00:00.1Z", utc(2024, 5, 1, 10, 0, 0, 100000))
        self.check("2024-05-01 12:00:00 +02:00", utc(2024, 5, 1, 10))

    def test_fraction_digits(self):
        self.check("2024-05-01T10:00:00.1Z", utc(2024, 5, 1, 10, 0, 0, 100000))
        self.check("2024-05-01T10:00:00.123456789Z", utc(2024, 5, 1, 10, 0, 0, 123456))
        self.check("2024-05-01T10:00:00.1234567891234+01:00", utc(2024, 5, 1, 9, 0, 0, 123456))
        self.check("2024-05-01T10:00:00,5Z", utc(2024, 5, 1, 10, 0, 0, 500000))

    def test_date_only(self):
        self.check("2024-05-01", utc(2024, 5, 1))

    def test_minutes_only(self):
        self.check("2024-05-01T10:07", utc(2024, 5, 1, 10, 7))
        self.check("2024-05-01T10:07Z", utc(2024, 5, 1, 10, 7))

    def test_surrounding_whitespace(self):
        self.check("  2024-05-01T10:00:00Z\n", utc(2024, 5, 1, 10))

    def test_leap_second(self):
        self.check("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59, 999999))

    def test_rfc2822(self):
        self.check("Tue, 15 Nov 1994 08:12:31 GMT", utc(1994, 11, 15, 8, 12, 31))
        self.check("Tue, 15 Nov 1994 10:12:31 +0200", utc(1994, 11, 15, 8, 12, 31))
        self.check("15 Nov 1994 08:12:31 -0000", utc(1994, 11, 15, 8, 12, 31))

    def test_not_strings(self):
        for value in (None, 0, 1714557600, 1714557600000, 1.5, True, [], {}, ["2024-05-01"],
                      b"2024-05-01T10:00:00Z"):
            self.check(value, None)

    def test_garbage(self):
        for text in ("", " ", "Z", "now", "yesterday", "2024", "2024-5-1", "2024-13-01",
                     "2024-02-30", "2024-05-01T25:00:00Z", "2024-05-01T10:61:00Z",
                     "2024-05-01T10:00:00+24:00", "2024-05-01T10:00:00+01:00Z",
                     "2024-05-01T10:00:00 garbage", "x" * 10000, "1" * 10000,
                     "\x00", "\ud800", "2024-05-01T10:00:00\ud800", "Tue, 99 Foo 1994"):
            self.check(text, None)

    def test_out_of_range(self):
        for text in ("0000-01-01T00:00:00Z", "99999-01-01T00:00:00Z", "+12345-01-01",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "Tue, 15 Nov 99999 08:12:31 GMT"):
            self.check(text, None)
        self.check("0001-01-01T00:00:00Z", utc(1, 1, 1))
        self.check("9999-12-31T23:59:59.999999Z", utc(9999, 12, 31, 23, 59, 59, 999999))


class FormatDatetimeTests(TestCase):
    def test_utc(self):
        self.assertEqual(format_datetime(utc(2024, 5, 1, 10, 0, 0, 123000)),
                         "2024-05-01T10:00:00.123000Z")

    def test_zero_microseconds_still_written(self):
        self.assertEqual(format_datetime(utc(2024, 5, 1)), "2024-05-01T00:00:00.000000Z")

    def test_other_zone_is_converted(self):
        tz = timezone(timedelta(hours=-5, minutes=-30))
        self.assertEqual(format_datetime(datetime(2024, 5, 1, 4, 30, tzinfo=tz)),
                         "2024-05-01T10:00:00.000000Z")

    def test_naive_is_utc(self):
        self.assertEqual(format_datetime(datetime(2024, 5, 1, 10)), "2024-05-01T10:00:00.000000Z")

    def test_small_year_padded(self):
        self.assertEqual(format_datetime(utc(9, 1, 2)), "0009-01-02T00:00:00.000000Z")

    def test_matches_strptime(self):
        dt = utc(2024, 2, 29, 23, 59, 59, 999999)
        text = format_datetime(dt)
        self.assertEqual(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), dt)

    def test_round_trip(self):
        dt = utc(2031, 7, 8, 9, 10, 11, 121314)
        self.assertEqual(parse_datetime(format_datetime(dt)), dt)


class ParseFormattedTests(TestCase):
    """timeparse.parse_formatted: the sliced fast path agrees with parse + format."""

    def expected(self, value):
        dt = parse_naive_utc(value)
        return (None, None) if dt is None else (dt, format_naive_utc(dt))

    def test_sdk_shapes(self):
        self.assertEqual(parse_formatted("2024-05-01T10:00:00.123Z"),
                         (datetime(2024, 5, 1, 10, 0, 0, 123000), "2024-05-01T10:00:00.123000Z"))
        self.assertEqual(parse_formatted("2024-05-01T10:00:00.123456+00:00"),
                         (datetime(2024, 5, 1, 10, 0, 0, 123456), "2024-05-01T10:00:00.123456Z"))
        self.assertEqual(parse_formatted("2024-05-01T10:00:00.123456Z"),
                         (datetime(2024, 5, 1, 10, 0, 0, 123456), "2024-05-01T10:00:00.123456Z"))

    def test_lookalikes_take_the_general_path(self):
        # Same length and separators as a fast shape, but not its digits: a week
        # date, a zone inside, spaces, non-ASCII digits, impossible dates.
        for value in ("2024-W01-1T10:00:00.123Z", "2024-W01-1T10:00:00.123456Z",
                      "2024-01-01T10:00:00.1+1Z", "2024-01-01T10:00:00.12 Z",
                      "2024-01-01T10:00:00.12\u0661Z", "2024-02-30T10:00:00.123Z",
                      "2024-01-01T24:00:00.000Z", "2024-01-01T10:00:00.123456+01:00",
                      "2024-01-01T10:00:00,123Z", "0000-01-01T10:00:00.123Z"):
            self.assertEqual(parse_formatted(value), self.expected(value), value)
        self.assertEqual(parse_formatted("2024-W01-1T10:00:00.123Z")[1], "2024-01-01T10:00:00.123000Z")

    def test_random_mutations_agree(self):
        rng = random.Random(5)
        alphabet = "0123456789-:.TZ+ ,tzW\u0660\t"
        bases = ("2026-12-01T11:09:50.217Z", "2026-12-01T11:09:50.217123Z",
                 "2026-12-01T11:09:50.217123+00:00", "2024-W01-1T10:00:00.123Z")
        for _ in range(20000):
            chars = list(rng.choice(bases))
            for _ in range(rng.randrange(1, 3)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            value = "".join(chars)
            self.assertEqual(parse_formatted(value), self.expected(value), value)

    def test_not_strings(self):
        for value in (None, 1700000000, 1.5, ["2024-05-01"], {}):
            self.assertEqual(parse_formatted(value), (None, None))
