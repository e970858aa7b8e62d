"""stilgar.events.parse_json: bytes -> dict, or Rejected(400, 'invalid json')."""

import json
import random
import sys

from twisted.trial.unittest import TestCase

from stilgar.events import MAX_DEPTH, TOO_DEEP_MARK, Rejected, parse_json
from stilgar import jsoncodec
from stilgar.events import jsonparse


def nested(depth, leaf=b"1"):
    """A valid object with ``depth`` nested containers (objects and arrays)."""
    body = leaf
    for i in range(depth - 1):
        body = (b"[" + body + b"]") if i % 2 else (b'{"k":' + body + b"}")
    return b'{"a":' + body + b"}"


class ParseJsonTests(TestCase):
    def assertInvalid(self, body):
        with self.assertRaises(Rejected) as cm:
            parse_json(body)
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(cm.exception.reason, "invalid json")
        self.assertEqual(str(cm.exception), "invalid json")

    def test_object(self):
        self.assertEqual(parse_json(b'{"a": [1, 2.5, "x", null, true]}'),
                         {"a": [1, 2.5, "x", None, True]})

    def test_whitespace_and_unicode(self):
        self.assertEqual(parse_json(' {"é": "日本"} \n'.encode()), {"é": "日本"})

    def test_bytearray_and_memoryview(self):
        self.assertEqual(parse_json(bytearray(b'{"a":1}')), {"a": 1})
        self.assertEqual(parse_json(memoryview(b'{"a":1}')), {"a": 1})

    def test_not_bytes(self):
        self.assertInvalid(None)
        self.assertInvalid(12)
        self.assertInvalid(10**12)  # not bytes(n): no allocation of n bytes
        self.assertInvalid(["{}"])
        self.assertEqual(parse_json('{"a":"é"}'), {"a": "é"})
        self.assertInvalid('{"a":"\ud800"}')  # a str holding a raw lone surrogate

    def test_empty(self):
        self.assertInvalid(b"")
        self.assertInvalid(b"   ")

    def test_not_an_object(self):
        for body in (b"[]", b'[{"a":1}]', b"1", b'"x"', b"null", b"true", b"1.5"):
            self.assertInvalid(body)

    def test_not_json(self):
        for body in (b"{", b"{'a': 1}", b'{"a":1,}', b'{"a":1} x', b"{a:1}", b'{"a":01}',
                     b'{"a":"\x01"}', b'{"a":"\\x"}', b'{"a":"unterminated}'):
            self.assertInvalid(body)

    def test_nan_and_infinity(self):
        for word in (b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"):
            self.assertInvalid(b'{"a":' + word + b"}")
            self.assertInvalid(b'{"a":[1,{"b":' + word + b"}]}")

    def test_float_overflow(self):
        # Valid syntax, but no double holds it: it would be infinity.
        self.assertInvalid(b'{"a":1e400}')
        self.assertInvalid(b'{"a":-1e400}')
        self.assertEqual(parse_json(b'{"a":1e308}'), {"a": 1e308})

    def test_invalid_utf8(self):
        for body in (b'{"a":"\xff"}', b'{"a":"\xc3"}', b'{"\xe9":1}', b'{"a":"\xed\xa0\x80"}',
                     b'{"a":"\xc0\xaf"}'):
            self.assertInvalid(body)

    def test_lone_surrogates_become_replacement_char(self):
        self.assertEqual(parse_json(b'{"a":"\\ud800"}'), {"a": "\ufffd"})
        self.assertEqual(parse_json(b'{"a":"x\\udc00y"}'), {"a": "x\ufffdy"})
        self.assertEqual(parse_json(b'{"a":"\\udc00\\ud800"}'), {"a": "\ufffd\ufffd"})
        self.assertEqual(parse_json(b'{"\\uD83D":"\\uDE00"}'), {"\ufffd": "\ufffd"})
        # A pair is decoded; a high surrogate followed by a non-low one is not a pair.
        self.assertEqual(parse_json(b'{"a":"\\ud83d\\ude00"}'), {"a": "\U0001f600"})
        self.assertEqual(parse_json(b'{"a":"\\ud83d\\u0041"}'), {"a": "\ufffdA"})
        self.assertEqual(parse_json(b'{"a":"\\ud83d\\ud83d\\ude00"}'), {"a": "\ufffd\U0001f600"})

    def test_escaped_backslash_before_u_is_not_an_escape(self):
        self.assertEqual(parse_json(b'{"a":"\\\\ud800"}'), {"a": "\\ud800"})
        self.assertEqual(parse_json(b'{"a":"\\\\\\ud800"}'), {"a": "\\\ufffd"})

    def test_result_encodes(self):
        # Whatever is accepted can be written back as UTF-8 JSON.
        result = parse_json(b'{"a":"\\ud800","b":["\\udfff"]}')
        json.dumps(result, ensure_ascii=False).encode("utf-8")

    def test_bom_is_skipped(self):
        self.assertEqual(parse_json(b'\xef\xbb\xbf{"a":1}'), {"a": 1})
        self.assertInvalid(b"\xef\xbb\xbf")
        self.assertInvalid(b'\xef\xbb\xbf\xef\xbb\xbf{"a":1}')

    def test_utf16_is_invalid(self):
        self.assertInvalid('{"a":1}'.encode("utf-16"))

    def test_big_integers_stay_exact(self):
        big = 123456789012345678901234567890
        self.assertEqual(parse_json(b'{"a":%d}' % big), {"a": big})
        self.assertIs(type(parse_json(b'{"a":%d}' % big)["a"]), int)
        self.assertEqual(parse_json(b'{"a":[-%d]}' % big), {"a": [-big]})
        self.assertEqual(parse_json(b'{"a":18446744073709551616}'), {"a": 2**64})
        self.assertEqual(parse_json(b'{"a":-9223372036854775809}'), {"a": -(2**63) - 1})
        self.assertEqual(parse_json(b'{"a":18446744073709551615}'), {"a": 2**64 - 1})
        # With lone surrogates and big ints together (the stdlib path).
        self.assertEqual(parse_json(b'{"a":"\\ud800","b":%d}' % big), {"a": "\ufffd", "b": big})
        # Long digit runs in strings or fractions change nothing.
        self.assertEqual(parse_json(b'{"a":"123456789012345678901234"}'),
                         {"a": "123456789012345678901234"})
        self.assertEqual(parse_json(b'{"a":0.123456789012345678901234}'),
                         {"a": 0.123456789012345678901234})

    def test_stdlib_path_rejects_what_orjson_rejects(self):
        big = b"123456789012345678901234567890"
        for bad in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\xff"'):
            self.assertInvalid(b'{"b":' + big + b',"a":' + bad + b"}")

    def test_integer_too_long_for_python(self):
        # Python refuses to parse ints of more than 4300 digits.
        self.assertInvalid(b'{"a":' + b"1" * 5000 + b"}")

    def test_duplicate_keys_last_wins(self):
        self.assertEqual(parse_json(b'{"a":1,"a":2}'), {"a": 2})

    def test_depth_limit(self):
        self.assertEqual(MAX_DEPTH, 512)
        parse_json(nested(MAX_DEPTH))
        self.assertInvalid(nested(MAX_DEPTH + 1))
        # The limit counts real containers only, not brackets in strings.
        parse_json(nested(MAX_DEPTH, leaf=b'"' + b"[{" * 200 + b'"'))
        parse_json(nested(MAX_DEPTH, leaf=b'"' + b"]}" * 200 + b'"'))
        parse_json(nested(MAX_DEPTH, leaf=b'"\\"[[[[\\\\"'))

    def test_depth_of_exactly_limit_is_measured(self):
        depth = jsonparse._depth_ok
        self.assertTrue(depth(b"[" * 512 + b"]" * 512))
        self.assertFalse(depth(b"[" * 513 + b"]" * 513))
        self.assertTrue(depth(b"[" * 128 + b"]" * 128, 128))
        self.assertFalse(depth(b"[" * 129 + b"]" * 129, 128))
        # Many shallow siblings are fine.
        self.assertTrue(depth(b"[" + b"[[]]," * 10000 + b"1]"))
        # Depth reached slowly, with no long run of opening brackets.
        slow = b"[1," * 600 + b"1" + b"]" * 600
        self.assertFalse(depth(b"[" + b"[[],[]," * 513 + b"1" + b"]" * 513 + b"]"))
        self.assertFalse(depth(slow))

    def test_strings_cannot_hide_depth(self):
        # Closing brackets inside strings do not lower the measured depth.
        evil = b"[" * 300 + b'"' + b"]" * 299 + b'",' + b"[" * 300 + b"1" + b"]" * 300
        evil += b',"' + b"[" * 299 + b'"' + b"]" * 300
        self.assertInvalid(b'{"a":' + evil + b"}")
        # Escaped quotes do not end a string.
        evil2 = b'{"a":["\\"]]]]\\"",' + b"[" * 520 + b"]" * 520 + b"]}"
        self.assertInvalid(evil2)
        # ... and with cut_deep the too-deep part is cut where it really is
        payload, cuts = parse_json(evil2, cut_deep=True)
        self.assertEqual(cuts, 1)
        self.assertEqual(payload["a"][0], '"]]]]"')

    def test_deep_nesting_does_not_crash(self):
        for n in (1000, 100000):
            self.assertInvalid(b"[" * n + b"]" * n)
            self.assertInvalid(b'{"a":' * n + b"1" + b"}" * n)
            self.assertInvalid(b'{"a":' + b"[" * n)
            self.assertInvalid(b'{"a":' + b"[1," * n + b"1" + b"]" * n + b"}")
        limit = sys.getrecursionlimit()
        self.assertInvalid(b'{"a":' + b"[" * limit + b"]" * limit + b"}")

    def test_unbalanced(self):
        self.assertInvalid(b'{"a":' + b"[" * 200 + b"]" * 199 + b"}")
        self.assertInvalid(b'{"a":' + b"[" * 200 + b"]" * 201 + b"}")
        self.assertInvalid(b'{"a":' + b"[]" * 200 + b'"}')


class CutDeepTests(TestCase):
    """parse_json(cut_deep=True): depth is never a reason to refuse a body (doc/events.md)."""

    def batch(self, *elements):
        return b'{"sentAt":"x","batch":[' + b",".join(elements) + b"]}"

    def event(self, depth, leaf=b"1"):
        """A track event nesting ``depth`` levels itself (the event object is 1)."""
        inner = leaf
        for i in range(depth - 1):
            inner = (b"[" + inner + b"]") if i % 2 else (b'{"k":' + inner + b"}")
        return b'{"type":"track","anonymousId":"a","properties":' + inner + b"}"

    def test_within_the_limit_nothing_is_cut(self):
        body = self.batch(self.event(MAX_DEPTH - 2), self.event(3))
        payload, cuts = parse_json(body, cut_deep=True)
        self.assertEqual(cuts, 0)
        self.assertEqual(payload, json.loads(body))
        self.assertEqual(parse_json(body), payload)

    def test_one_level_too_deep_is_cut_at_the_limit(self):
        body = self.batch(self.event(3), self.event(MAX_DEPTH - 1), self.event(4))
        with self.assertRaises(Rejected):
            parse_json(body)                       # strict: invalid json as before
        payload, cuts = parse_json(body, cut_deep=True)
        self.assertEqual(cuts, 1)
        self.assertEqual(payload["batch"][0], json.loads(self.event(3)))
        self.assertEqual(payload["batch"][2], json.loads(self.event(4)))
        # the deepest container of element 1 became the mark, one level below the limit
        node, depth = payload["batch"][1]["properties"], 4
        while not isinstance(node, str) and node != 1:
            node = node["k"] if isinstance(node, dict) else node[0]
            depth += 1
        self.assertEqual((node, depth), (TOO_DEEP_MARK, MAX_DEPTH + 1))

    def test_several_cuts_and_strings_holding_brackets(self):
        deep = self.event(700, leaf=b'"]]]}}}\\"[[["')
        body = self.batch(deep, b'{"type":"track","userId":"u","name":"[[[[{{{{"}', deep, b"7")
        payload, cuts = parse_json(body, cut_deep=True)
        self.assertEqual(cuts, 2)
        self.assertEqual(payload["batch"][1]["name"], "[[[[{{{{")
        self.assertEqual(payload["batch"][3], 7)

    def test_hostile_depths_do_not_crash(self):
        for n in (1000, 100000, 2_000_000):
            payload, cuts = parse_json(b'{"batch":[' + b"[" * n + b"]" * n + b"]}", cut_deep=True)
            self.assertEqual(cuts, 1)
            payload, cuts = parse_json(b'{"a":' * n + b"1" + b"}" * n, cut_deep=True)
            self.assertEqual(cuts, 1)

    def test_many_cuts_are_bounded(self):
        def siblings(n):   # n + 1 empty arrays, each opening one level below the limit
            return b'{"batch":[' + b"[" * (MAX_DEPTH - 2) + b"[]," * n + b"[]" + b"]" * (MAX_DEPTH - 2) + b"]}"
        payload, cuts = parse_json(siblings(jsonparse.MAX_CUTS - 1), cut_deep=True)
        self.assertEqual(cuts, jsonparse.MAX_CUTS)
        with self.assertRaises(Rejected):
            parse_json(siblings(jsonparse.MAX_CUTS), cut_deep=True)

    def test_not_json_stays_invalid(self):
        for body in (b'{"a":' + b"[" * 600 + b"]" * 599 + b"}",
                     b'{"a":' + b"[" * 600 + b"]" * 601 + b"}",
                     b'{"a":' + b"[" * 600,
                     b'{"a":' + b"[" * 600 + b"]" * 600 + b"} x",
                     b"[" + b"[" * 600 + b"]" * 600 + b"]",
                     b'{"a":"' + b"[" * 600 + b"]" * 600 + b"}"):
            with self.assertRaises(Rejected) as cm:
                parse_json(body, cut_deep=True)
            self.assertEqual(cm.exception.reason, "invalid json")


class DecoderFallbackTests(TestCase):
    def test_deep_body_deep_in_the_stack(self):
        # msgspec's nesting limit is what is left of the Python stack: a body
        # within MAX_DEPTH parsed from deep inside a call stack still parses
        # (orjson's limit is fixed).
        body = b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"

        def at_depth(n, parse):
            return at_depth(n - 1, parse) if n else parse(body)

        depth = sys.getrecursionlimit() - 150
        if jsoncodec.FAST_LOADS == "msgspec":  # the case this test is about happens
            self.assertRaises(RecursionError, at_depth, depth, jsoncodec.fast_loads)
        payload = at_depth(depth, parse_json)
        self.assertEqual(payload, json.loads(body))

    def test_big_int_with_lone_surrogate_and_depth_cut(self):
        big = 2**70
        body = b'{"a":"\\udc00","b":%d,"c":' % big + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5) + b"}"
        payload, cuts = parse_json(body, cut_deep=True)
        self.assertEqual((payload["a"], payload["b"], cuts), ("\ufffd", big, 1))
        self.assertIs(type(payload["b"]), int)


def _reference_depth(body):
    """The nesting depth of a valid JSON document, one byte at a time."""
    depth = deepest = 0
    in_string = escaped = False
    for b in body:
        if in_string:
            if escaped:
                escaped = False
            elif b == 92:
                escaped = True
            elif b == 34:
                in_string = False
        elif b == 34:
            in_string = True
        elif b in (91, 123):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (93, 125):
            depth -= 1
    return deepest


class DepthCheckPropertyTests(TestCase):
    LEAVES = [1, 2.5, None, True, "", "x", "[", "]]", "{\"}", "a\\", "\\\"[", "\u00e9]",
              "\\u005b", "\"\"", "\\\\\"]"]

    def random_value(self, rng, depth):
        """A value nested ``depth`` levels along one path, shallow siblings around it."""
        if depth <= 0:
            return rng.choice(self.LEAVES)
        children = [self.random_value(rng, rng.randrange(0, 3)) if depth > 2 else rng.choice(self.LEAVES)
                    for _ in range(rng.randrange(0, 3))]
        children.insert(rng.randrange(len(children) + 1), self.random_value(rng, depth - 1))
        if rng.random() < 0.5:
            return children
        return {rng.choice(["a", "[", "}", "\"", "\\"]) + str(i): v for i, v in enumerate(children)}

    def test_agrees_with_a_byte_by_byte_count(self):
        rng = random.Random(11)
        limit = 30
        seen = set()
        for _ in range(400):
            value = self.random_value(rng, rng.randrange(20, 40))
            for ensure_ascii in (True, False):
                body = json.dumps({"v": value}, ensure_ascii=ensure_ascii).encode()
                depth = _reference_depth(body)
                seen.add(depth > limit)
                self.assertEqual(jsonparse._depth_ok(body, limit), depth <= limit, body[:200])
        self.assertEqual(seen, {True, False})
