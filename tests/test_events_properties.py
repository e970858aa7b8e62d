"""Property tests (hypothesis) for stilgar.events: no input makes it raise
anything but Rejected, and what it accepts is in the normalised format."""

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from stilgar.events import (
    MAX_DEPTH,
    Rejected,
    format_datetime,
    normalise_payload,
    parse_datetime,
    parse_json,
    pixel_payload,
)
from stilgar.events.ids import clean
from stilgar.events.jsonparse import _depth_ok

UTC = timezone.utc
RECEIVED = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
FMT = "%Y-%m-%dT%H:%M:%S.%fZ"
TYPES = ["identify", "track", "page", "screen", "group", "alias"]
REASONS = {
    (400, "invalid json"), (400, "empty batch payload"), (400, "event is not a valid rudder event"),
    (400, "request neither has anonymousId nor userId"), (413, "request size exceeds max limit"),
}

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
any_text = st.text(max_size=20)  # lone surrogates included
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20)

dates = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                timezone(timedelta(hours=-8))]))
date_texts = st.one_of(
    dates.map(lambda d: d.isoformat()),
    dates.map(format_datetime),
    dates.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S%z")),
    dates.map(lambda d: d.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")),
    any_text,
)
ids = st.one_of(st.none(), text, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                st.booleans(), st.just(""), st.just(" \u200b "))
maybe = lambda strategy: st.one_of(st.just(None), strategy)  # noqa: E731

events = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(TYPES), json_values),
        "anonymousId": ids, "userId": ids, "messageId": ids, "groupId": ids, "previousId": ids,
        "channel": ids, "event": ids,
        "sentAt": maybe(date_texts), "originalTimestamp": maybe(date_texts),
        "timestamp": maybe(date_texts),
        "context": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "ip": st.one_of(st.ip_addresses().map(str), text, st.integers()),
            "traits": json_values, "library": json_values})),
        "traits": json_values, "properties": json_values, "integrations": json_values,
    })
payloads = st.one_of(
    json_values,
    events,
    st.fixed_dictionaries({"batch": st.one_of(st.lists(st.one_of(events, json_values), max_size=5),
                                              json_values)},
                          optional={"sentAt": maybe(date_texts)}),
)
privacies = st.builds(
    SimpleNamespace,
    ip=st.sampled_from(["drop", "keep", "truncate", "hash", "other"]),
    hash_secret=st.one_of(st.none(), st.binary(max_size=8)),
    drop_fields=st.lists(st.lists(st.sampled_from(["context", "traits", "ip", "properties", "a",
                                                   "type", "messageId", "userId"]),
                                  max_size=3).map(tuple), max_size=3).map(tuple),
)


def dumps(value):
    """Strict JSON: no NaN, no lone surrogates, nesting the stdlib can write."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_discard(case, event):
    case.assertEqual(sorted(event), ["eventType", "message", "messageId", "raw", "reason", "receivedAt", "type"])
    case.assertIn(event["reason"], ("not_an_object", "unknown_type", "no_identifier", "too_deep"))
    case.assertTrue(event["messageId"])
    case.assertEqual(event["receivedAt"], "2024-05-01T10:00:00.000000Z")
    case.assertTrue(event["eventType"] is None or event["eventType"] in TYPES)


def check_normalised(case, event):
    case.assertIsInstance(event, dict)
    if event["type"] == "discard":
        return check_discard(case, event)
    case.assertIn(event["type"], TYPES)
    case.assertIsInstance(event["messageId"], str)
    case.assertTrue(event["messageId"])
    case.assertEqual(event["messageId"], event["messageId"].strip())
    for key in ("anonymousId", "userId", "channel"):
        case.assertTrue(event[key] is None or isinstance(event[key], str), key)
    for key in ("receivedAt", "timestamp"):
        datetime.strptime(event[key], FMT)
    for key in ("sentAt", "originalTimestamp"):
        if event[key] is not None:
            datetime.strptime(event[key], FMT)
    case.assertEqual(event["receivedAt"], "2024-05-01T10:00:00.000000Z")
    case.assertIsInstance(event["context"], dict)
    if event["type"] == "group":
        case.assertTrue(event["groupId"] is None or isinstance(event["groupId"], str))
    if event["type"] == "alias":
        case.assertTrue(event["previousId"] is None or isinstance(event["previousId"], str))
    if event["type"] == "track":
        case.assertTrue(event["event"] is None or isinstance(event["event"], str))
    ip = event["context"].get("ip")
    case.assertTrue(ip is None or isinstance(ip, str))


class NormaliseProperties(TestCase):
    @SETTINGS
    @given(payload=payloads, route=st.sampled_from([None] + TYPES), privacy=privacies,
           max_events=st.integers(1, 6))
    def test_only_rejected_or_normalised(self, payload, route, privacy, max_events):
        try:
            result = normalise_payload(payload, route_type=route, received_at=RECEIVED,
                                       client_ip="192.0.2.1", privacy=privacy,
                                       max_events=max_events)
        except Rejected as e:
            if e.reason.startswith("unknown event type: "):
                self.assertEqual(e.status, 400)
                self.assertNotIn("\n", e.reason)
            else:
                self.assertIn((e.status, e.reason), REASONS)
            return
        self.assertIsInstance(result, list)
        self.assertTrue(1 <= len(result) <= max_events)
        for event in result:
            check_normalised(self, event)
        if privacy.ip == "drop" or privacy.ip == "other":
            for event in result:
                context = event["raw"].get("context") if event["type"] == "discard" and \
                    isinstance(event["raw"], dict) else event.get("context")
                if isinstance(context, dict):
                    self.assertNotIn("ip", context)
        # The spool can write it (as strict UTF-8 JSON; the stdlib encoder,
        # since orjson refuses integers beyond 64 bits, which are kept).
        dumps({"k": "key", "r": "req", "e": result})

    @SETTINGS
    @given(payload=payloads, privacy=privacies)
    def test_deterministic_and_pure(self, payload, privacy):
        before = repr(payload)
        kw = dict(route_type=None, received_at=RECEIVED, client_ip="2001:db8::1",
                  privacy=privacy, max_events=10, new_message_id=lambda: "fixed")
        try:
            first = normalise_payload(payload, **kw)
        except Rejected as e:
            with self.assertRaises(Rejected) as cm:
                normalise_payload(payload, **kw)
            self.assertEqual(cm.exception, e)
            return
        self.assertEqual(normalise_payload(payload, **kw), first)
        self.assertEqual(repr(payload), before)

    @SETTINGS
    @given(st.lists(events.filter(lambda e: True), min_size=1, max_size=5))
    def test_accepted_batches_keep_order_and_types(self, batch):
        for event in batch:
            event["type"] = "track"
            event["userId"] = "u"
        result = normalise_payload({"batch": batch}, route_type=None, received_at=RECEIVED,
                                   client_ip=None, privacy=SimpleNamespace(ip="keep"),
                                   max_events=5)
        self.assertEqual(len(result), len(batch))
        for raw, event in zip(batch, result):
            self.assertEqual(event["userId"], "u")
            if isinstance(raw.get("messageId"), str) and clean(raw["messageId"]):
                self.assertEqual(event["messageId"], clean(raw["messageId"]))


class JsonProperties(TestCase):
    @SETTINGS
    @given(st.binary(max_size=200))
    def test_any_bytes(self, body):
        try:
            result = parse_json(body)
        except Rejected as e:
            self.assertEqual((e.status, e.reason), (400, "invalid json"))
        else:
            self.assertIsInstance(result, dict)

    @SETTINGS
    @given(st.dictionaries(text, json_values, max_size=5))
    def test_round_trip(self, value):
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.assertEqual(parse_json(body), value)
        body = json.dumps(value, ensure_ascii=True).encode("ascii")
        self.assertEqual(parse_json(body), value)

    @SETTINGS
    @given(st.dictionaries(any_text, st.lists(any_text, max_size=3), max_size=4))
    def test_surrogates_become_replacement(self, value):
        body = json.dumps(value, ensure_ascii=True).encode("ascii")
        result = parse_json(body)
        fix = lambda s: "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c  # noqa: E731
                                for c in s.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass"))
        self.assertEqual(result, {fix(k): [fix(s) for s in v] for k, v in value.items()})
        dumps(result)

    @SETTINGS
    @given(st.recursive(
        st.sampled_from(['"[["', '"]]}"', '"\\\\"', '"\\"]"', "1", "[]", "{}", '"{\\"["']),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(inner, min_size=1, max_size=3).map(
                lambda xs: "{" + ",".join(f'"k{i}":{x}' for i, x in enumerate(xs)) + "}"),
            inner.map(lambda x: "[" * 40 + x + "]" * 40),
        ), max_leaves=12))
    def test_depth_check_matches_real_depth(self, doc):
        body = doc.encode()
        value = json.loads(body)

        def depth(v):
            if isinstance(v, list):
                return 1 + max((depth(x) for x in v), default=0)
            if isinstance(v, dict):
                return 1 + max((depth(x) for x in v.values()), default=0)
            return 0

        self.assertEqual(_depth_ok(body), depth(value) <= MAX_DEPTH)
        wrapped = b'{"a":' + body + b"}"
        if depth(value) + 1 <= MAX_DEPTH:
            self.assertEqual(parse_json(wrapped), {"a": value})
        else:
            with self.assertRaises(Rejected):
                parse_json(wrapped)


class DatetimeProperties(TestCase):
    @SETTINGS
    @given(st.one_of(any_text, json_values, date_texts))
    def test_never_raises(self, value):
        result = parse_datetime(value)
        if result is not None:
            self.assertIs(result.tzinfo, UTC)
            datetime.strptime(format_datetime(result), FMT)

    @SETTINGS
    @given(dates)
    def test_iso_round_trip(self, dt):
        assume(datetime(1, 1, 2, tzinfo=UTC) <= dt <= datetime(9999, 12, 30, tzinfo=UTC))
        self.assertEqual(parse_datetime(dt.isoformat()), dt)
        self.assertEqual(parse_datetime(format_datetime(dt)), dt)
        self.assertEqual(format_datetime(parse_datetime(format_datetime(dt))), format_datetime(dt))


class PixelProperties(TestCase):
    @SETTINGS
    @given(st.dictionaries(st.one_of(any_text, st.binary(max_size=10)),
                           st.lists(st.one_of(any_text, st.binary(max_size=10)), max_size=3),
                           max_size=6),
           st.sampled_from(["track", "page"]))
    def test_pixel_never_fails(self, query, route):
        payload = pixel_payload(query, route, RECEIVED)
        if payload is None:
            self.assertEqual(route, "track")
            return
        self.assertEqual(payload["type"], route)
        dumps(payload)
        try:
            [event] = normalise_payload(payload, route_type=route, received_at=RECEIVED,
                                        client_ip=None, privacy=SimpleNamespace(ip="drop"),
                                        max_events=1)
        except Rejected as e:
            self.assertEqual(e.reason, "request neither has anonymousId nor userId")
        else:
            check_normalised(self, event)
            dumps(event)
