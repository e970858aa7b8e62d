"""stilgar.events.normalise_payload: validation, ids, timestamps, traits."""

import copy
import itertools
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from twisted.trial.unittest import TestCase

from stilgar.config import PrivacyConfig
from stilgar.events import MAX_DEPTH, TOO_DEEP_MARK, Rejected, is_discard, normalise_payload, parse_json

UTC = timezone.utc
RECEIVED = datetime(2024, 5, 1, 10, 0, 10, 500000, tzinfo=UTC)
RECEIVED_S = "2024-05-01T10:00:10.500000Z"
KEEP_NOTHING = SimpleNamespace(ip="drop", hash_secret=None, drop_fields=())


def ids():
    counter = itertools.count(1)
    return lambda: f"generated-{next(counter)}"


def normalise(payload, route_type=None, privacy=KEEP_NOTHING, max_events=5000,
              client_ip="203.0.113.9", received_at=RECEIVED, new_message_id=None, cut=False):
    return normalise_payload(
        payload, route_type=route_type, received_at=received_at, client_ip=client_ip,
        privacy=privacy, max_events=max_events, new_message_id=new_message_id or ids(), cut=cut)


def one(event, **kw):
    """Normalise a single event sent as a one-element batch."""
    result = normalise({"batch": [event]}, **kw)
    assert len(result) == 1
    return result[0]


def track(**fields):
    event = {"type": "track", "event": "Clicked", "anonymousId": "a1", "messageId": "m1"}
    event.update(fields)
    return event


class RejectionTests(TestCase):
    def assertRejected(self, payload, status, reason, route_type=None, **kw):
        with self.assertRaises(Rejected) as cm:
            normalise(payload, route_type=route_type, **kw)
        self.assertEqual((cm.exception.status, cm.exception.reason), (status, reason))

    def test_not_a_dict_payload(self):
        for payload in ([], [track()], "x", 1, None, True):
            self.assertRejected(payload, 400, "invalid json")
            self.assertRejected(payload, 400, "invalid json", route_type="track")

    def test_batch_route_without_batch(self):
        self.assertRejected({}, 400, "empty batch payload")
        self.assertRejected(track(), 400, "empty batch payload")
        self.assertRejected({"batch": None}, 400, "empty batch payload")
        self.assertRejected({"batch": {"0": track()}}, 400, "empty batch payload")
        self.assertRejected({"batch": "x"}, 400, "empty batch payload")
        self.assertRejected({"batch": []}, 400, "empty batch payload")

    def test_empty_batch_on_single_route(self):
        # A batch list is a batch on every route, so an empty one is refused.
        self.assertRejected({"batch": []}, 400, "empty batch payload", route_type="track")

    def test_too_many_events(self):
        payload = {"batch": [track(messageId=str(i)) for i in range(11)]}
        self.assertRejected(payload, 413, "request size exceeds max limit", max_events=10)
        self.assertEqual(len(normalise(payload, max_events=11)), 11)
        # Counted before any event is looked at.
        self.assertRejected({"batch": [1, 2, 3]}, 413, "request size exceeds max limit",
                            max_events=2)

    def assertDiscarded(self, payload, label, message, index=-1, **kw):
        """The element at ``index`` of the batch is a discard record; the others are events."""
        result = normalise(payload, **kw)
        self.assertEqual(len(result), len(payload["batch"]))
        record = result[index]
        self.assertTrue(is_discard(record), record)
        self.assertEqual((record["reason"], record["message"]), (label, message))
        self.assertEqual(record["receivedAt"], RECEIVED_S)
        return record

    def test_element_not_an_object(self):
        for bad in (None, 1, "track", [track()], True):
            record = self.assertDiscarded({"batch": [track(), bad]}, "not_an_object",
                                          "event is not a valid rudder event")
            self.assertEqual(record["raw"], bad)
            self.assertIsNone(record["eventType"])

    def test_unknown_type(self):
        cases = [
            ("Track", "Track"), ("TRACK", "TRACK"), ("merge", "merge"), ("", ""),
            (None, ""), (5, "5"), (True, "true"), (["track"], '["track"]'),
            ({"a": 1}, '{"a":1}'), ("track ", "track "), ("a\nb", "a?b"),
            ("x" * 150, "x" * 100 + "..."), ("discard", "discard"),
        ]
        for value, shown in cases:
            event = track(type=value)
            record = self.assertDiscarded({"batch": [event]}, "unknown_type", f"unknown event type: {shown}")
            self.assertEqual(record["messageId"], "m1")
            self.assertEqual(record["raw"], event)
        event = track()
        del event["type"]
        self.assertDiscarded({"batch": [event]}, "unknown_type", "unknown event type: ")

    def test_no_identifier(self):
        reason = "request neither has anonymousId nor userId"
        blanks = [None, "", "   ", "\t\n", "\u200b", "\ufeff", " \u200b\u00a0\u3000 ",
                  "\u2060\u180e", "\u3164", "\x00"]
        for anon, user in itertools.product(blanks, blanks[:4]):
            event = {"type": "track", "anonymousId": anon, "userId": user}
            record = self.assertDiscarded({"batch": [event]}, "no_identifier", reason)
            self.assertEqual(record["eventType"], "track")
        self.assertDiscarded({"batch": [{"type": "identify"}]}, "no_identifier", reason)
        # a single-event route refuses its one event (the SDKs using it drop a 4xx)
        self.assertRejected({"type": "page"}, 400, reason, route_type="page")

    def test_identifier_found(self):
        for anon, user in [("a", None), (None, "u"), ("", "u"), (" a ", ""), (0, None),
                           (None, 0), (False, None), (None, 1.5), ({}, None), ([], None),
                           ("\u200bx", None), ("é", None)]:
            event = {"type": "track", "anonymousId": anon, "userId": user}
            result = normalise({"batch": [event]})
            self.assertEqual(len(result), 1, (anon, user))
            self.assertFalse(is_discard(result[0]))

    def test_each_faulty_element_is_its_own_discard(self):
        no_ids = {"type": "track"}
        bad_type = track(type="nope")
        result = normalise({"batch": [track(), no_ids, bad_type, 7, track(messageId="m2")]})
        self.assertEqual([r["type"] for r in result], ["track", "discard", "discard", "discard", "track"])
        self.assertEqual([r.get("reason") for r in result],
                         [None, "no_identifier", "unknown_type", "not_an_object", None])
        self.assertEqual(result[4]["messageId"], "m2")

    def test_checks_in_order_within_an_element(self):
        # Bad type and no ids: the type is reported.
        self.assertDiscarded({"batch": [{"type": "x"}]}, "unknown_type", "unknown event type: x")
        # Too deep wins over everything but not being an object.
        deep = {"type": "x", "properties": {"a": [TOO_DEEP_MARK]}}
        self.assertDiscarded({"batch": [deep]}, "too_deep", f"nested deeper than {MAX_DEPTH} levels", cut=True)
        # without the parser's flag, the mark is just a string
        self.assertDiscarded({"batch": [deep]}, "unknown_type", "unknown event type: x")

    def test_too_deep_on_a_single_route_is_invalid_json(self):
        self.assertRejected({"anonymousId": "a", "properties": {"a": TOO_DEEP_MARK}}, 400, "invalid json",
                            route_type="track", cut=True)

    def test_discard_goes_through_the_privacy_step(self):
        event = {"type": "track", "userId": " ", "messageId": " m9 ",
                 "context": {"ip": "1.2.3.4", "traits": {"email": "a@b.c", "plan": "pro"}}}
        privacy = PrivacyConfig(drop_fields=(("context", "traits", "email"),))
        record = self.assertDiscarded({"batch": [event]}, "no_identifier",
                                      "request neither has anonymousId nor userId", privacy=privacy)
        self.assertEqual(record["raw"]["context"], {"traits": {"plan": "pro"}})
        self.assertEqual(record["messageId"], "m9")
        self.assertEqual(event["context"]["ip"], "1.2.3.4")   # the input is not modified
        record = self.assertDiscarded({"batch": [[event, 5]]}, "not_an_object", "event is not a valid rudder event",
                                      privacy=privacy)
        self.assertEqual(record["raw"][0]["context"], {"traits": {"plan": "pro"}})
        self.assertEqual(record["raw"][1], 5)

    def test_valid_events_are_kept_around_a_discard(self):
        payload = {"batch": [track(), track(messageId="m2"), {"type": "track"}]}
        result = normalise(payload)
        self.assertEqual([is_discard(r) for r in result], [False, False, True])
        self.assertNotEqual(result[2]["messageId"], "")

    def test_input_not_modified(self):
        payload = {
            "batch": [
                {"type": "identify", "userId": 5, "messageId": " m ", "traits": {"a": 1},
                 "context": {"traits": {"b": 2}, "ip": "1.2.3.4", "x": {"y": 1}}},
            ],
            "sentAt": "2024-05-01T10:00:00Z",
        }
        before = copy.deepcopy(payload)
        privacy = SimpleNamespace(ip="truncate", hash_secret=b"k",
                                  drop_fields=(("context", "x", "y"), ("context", "traits", "b")))
        normalise(payload, privacy=privacy)
        self.assertEqual(payload, before)


class RouteTests(TestCase):
    def test_single_event_route_forces_type(self):
        for route in ("identify", "track", "page", "screen", "group", "alias"):
            [event] = normalise({"type": "track", "userId": "u"}, route_type=route)
            self.assertEqual(event["type"], route)
            [event] = normalise({"userId": "u"}, route_type=route)
            self.assertEqual(event["type"], route)
            [event] = normalise({"type": "bogus", "userId": "u"}, route_type=route)
            self.assertEqual(event["type"], route)

    def test_batch_on_single_event_route(self):
        events = normalise({"batch": [track(), {"type": "page", "userId": "u"}]},
                           route_type="identify")
        self.assertEqual([e["type"] for e in events], ["track", "page"])

    def test_single_route_with_non_list_batch_key(self):
        [event] = normalise({"userId": "u", "batch": {"x": 1}}, route_type="track")
        self.assertEqual(event["batch"], {"x": 1})

    def test_batch_keeps_order(self):
        events = normalise({"batch": [track(messageId=str(i)) for i in range(50)]})
        self.assertEqual([e["messageId"] for e in events], [str(i) for i in range(50)])

    def test_all_six_types(self):
        for etype in ("identify", "track", "page", "screen", "group", "alias"):
            event = one({"type": etype, "userId": "u"})
            self.assertEqual(event["type"], etype)

    def test_batch_level_keys_ignored(self):
        [event] = normalise({"batch": [track()], "context": {"ip": "9.9.9.9"}, "writeKey": "k"})
        self.assertNotIn("writeKey", event)
        self.assertEqual(event["context"], {})


class FieldTests(TestCase):
    def test_always_present_keys(self):
        event = one({"type": "screen", "userId": "u"})
        for key in ("type", "messageId", "anonymousId", "userId", "channel", "receivedAt",
                    "sentAt", "originalTimestamp", "timestamp", "context"):
            self.assertIn(key, event)
        self.assertIsNone(event["anonymousId"])
        self.assertIsNone(event["channel"])
        self.assertEqual(event["context"], {})
        self.assertNotIn("properties", event)
        self.assertNotIn("event", event)

    def test_type_specific_keys(self):
        self.assertIsNone(one({"type": "track", "userId": "u"})["event"])
        self.assertIsNone(one({"type": "group", "userId": "u"})["groupId"])
        self.assertIsNone(one({"type": "alias", "userId": "u"})["previousId"])
        self.assertNotIn("groupId", one({"type": "track", "userId": "u"}))
        self.assertNotIn("previousId", one({"type": "group", "userId": "u"}))

    def test_ids_stringified(self):
        event = one({"type": "alias", "anonymousId": 12, "userId": 3.0, "previousId": 1e20,
                     "messageId": 99, "channel": 7})
        self.assertEqual(event["anonymousId"], "12")
        self.assertEqual(event["userId"], "3")
        self.assertEqual(event["previousId"], "100000000000000000000")
        self.assertEqual(event["messageId"], "99")
        self.assertEqual(event["channel"], "7")
        event = one({"type": "group", "userId": 2.5, "groupId": 123456789012345678901234567890,
                     "anonymousId": True})
        self.assertEqual(event["userId"], "2.5")
        self.assertEqual(event["groupId"], "123456789012345678901234567890")
        self.assertEqual(event["anonymousId"], "true")
        event = one({"type": "track", "userId": -0.0, "anonymousId": False, "event": 5})
        self.assertEqual(event["userId"], "0")
        self.assertEqual(event["anonymousId"], "false")
        self.assertEqual(event["event"], "5")
        event = one({"type": "track", "userId": {"b": [1, "é"]}, "anonymousId": []})
        self.assertEqual(event["userId"], '{"b":[1,"é"]}')
        self.assertEqual(event["anonymousId"], "[]")

    def test_ids_from_parsed_json(self):
        payload = parse_json(b'{"batch":[{"type":"group","userId":42,"groupId":7.0,'
                             b'"anonymousId":18446744073709551616}]}')
        [event] = normalise(payload)
        self.assertEqual((event["userId"], event["groupId"], event["anonymousId"]),
                         ("42", "7", "18446744073709551616"))

    def test_ids_kept_as_sent(self):
        event = one({"type": "track", "anonymousId": "  a \u200b", "userId": ""})
        self.assertEqual(event["anonymousId"], "  a \u200b")
        self.assertEqual(event["userId"], "")
        event = one({"type": "track", "anonymousId": "   ", "userId": "u"})
        self.assertEqual(event["anonymousId"], "   ")

    def test_null_means_absent(self):
        event = one({"type": "alias", "userId": "u", "anonymousId": None, "previousId": None,
                     "messageId": None, "channel": None, "context": None, "sentAt": None,
                     "originalTimestamp": None, "timestamp": None},
                    new_message_id=lambda: "fresh")
        self.assertIsNone(event["anonymousId"])
        self.assertIsNone(event["previousId"])
        self.assertEqual(event["messageId"], "fresh")
        self.assertIsNone(event["channel"])
        self.assertEqual(event["context"], {})
        self.assertIsNone(event["sentAt"])
        self.assertIsNone(event["originalTimestamp"])
        self.assertEqual(event["timestamp"], RECEIVED_S)

    def test_python_alias_shape(self):
        # rudder-sdk-python: alias carries "anonymousId": null.
        event = one({"type": "alias", "anonymousId": None, "userId": "new", "previousId": "old",
                     "messageId": "m", "timestamp": "2024-05-01T10:00:00.000001+00:00"})
        self.assertEqual((event["userId"], event["previousId"]), ("new", "old"))

    def test_other_fields_verbatim(self):
        props = {"a": [1, {"b": None}], "c": "é"}
        raw = track(properties=props, integrations={"All": True}, _metadata={"v": 1},
                    custom=[1, 2], rudderId="r")
        event = one(raw)
        self.assertIs(event["properties"], props)
        self.assertEqual(event["integrations"], {"All": True})
        self.assertEqual(event["_metadata"], {"v": 1})
        self.assertEqual(event["custom"], [1, 2])
        self.assertEqual(event["rudderId"], "r")

    def test_odd_fields_accepted(self):
        event = one({"type": "page", "userId": "u", "properties": "str", "name": 5,
                     "category": None, "traits": [1]})
        self.assertEqual(event["properties"], "str")
        self.assertEqual(event["name"], 5)
        self.assertEqual(event["traits"], [1])
        event = one({"type": "track", "userId": "u", "event": None, "properties": [1]})
        self.assertIsNone(event["event"])

    def test_context_not_a_dict(self):
        for value in ("x", 1, [1], True):
            self.assertEqual(one(track(context=value))["context"], {})

    def test_context_copied(self):
        ctx = {"library": {"name": "x"}, "ip": "1.1.1.1"}
        event = one(track(context=ctx))
        self.assertIsNot(event["context"], ctx)
        self.assertEqual(event["context"], {"library": {"name": "x"}})
        self.assertIs(event["context"]["library"], ctx["library"])


class MessageIdTests(TestCase):
    def test_kept(self):
        self.assertEqual(one(track(messageId="abc-123"))["messageId"], "abc-123")

    def test_trimmed_and_invisible_removed(self):
        self.assertEqual(one(track(messageId="  ab\u200bc \n"))["messageId"], "abc")
        self.assertEqual(one(track(messageId="\ufeffid\u2060"))["messageId"], "id")
        self.assertEqual(one(track(messageId="a b"))["messageId"], "a b")
        self.assertEqual(one(track(messageId="é\u00a0ü"))["messageId"], "éü")

    def test_generated_when_missing_or_blank(self):
        for value in (None, "", "   ", "\u200b\u200c", "\t"):
            event = one(track(messageId=value), new_message_id=lambda: "NEW")
            self.assertEqual(event["messageId"], "NEW", repr(value))
        raw = track()
        del raw["messageId"]
        self.assertEqual(one(raw, new_message_id=lambda: "NEW")["messageId"], "NEW")

    def test_generated_ids_are_distinct(self):
        events = normalise({"batch": [track(messageId=None)] * 3})
        self.assertEqual([e["messageId"] for e in events],
                         ["generated-1", "generated-2", "generated-3"])

    def test_default_generator_is_uuid4(self):
        [event] = normalise_payload({"batch": [track(messageId="")]}, route_type=None,
                                    received_at=RECEIVED, client_ip=None, privacy=KEEP_NOTHING,
                                    max_events=10)
        self.assertEqual(uuid.UUID(event["messageId"]).version, 4)

    def test_number(self):
        self.assertEqual(one(track(messageId=0))["messageId"], "0")


class TimestampTests(TestCase):
    def test_received_at_always_overwritten(self):
        event = one(track(receivedAt="2000-01-01T00:00:00Z"))
        self.assertEqual(event["receivedAt"], RECEIVED_S)

    def test_received_at_other_zone(self):
        received = RECEIVED.astimezone(timezone(timedelta(hours=5)))
        self.assertEqual(one(track(), received_at=received)["receivedAt"], RECEIVED_S)

    def test_python_sdk_shape(self):
        # Only `timestamp` per event; sentAt on the batch only.
        payload = {"batch": [track(timestamp="2024-05-01T09:59:00.123456+00:00")],
                   "sentAt": "2024-05-01T10:00:00.000001+00:00"}
        [event] = normalise(payload)
        self.assertEqual(event["timestamp"], "2024-05-01T09:59:00.123456Z")
        self.assertEqual(event["originalTimestamp"], "2024-05-01T09:59:00.123456Z")
        self.assertEqual(event["sentAt"], "2024-05-01T10:00:00.000001Z")
        self.assertEqual(event["receivedAt"], RECEIVED_S)

    def test_browser_shape_skew_correction(self):
        # Client clock 1h fast: originalTimestamp and sentAt both in its time.
        event = one(track(originalTimestamp="2024-05-01T11:00:05.123Z",
                          sentAt="2024-05-01T11:00:08.456Z"))
        self.assertEqual(event["originalTimestamp"], "2024-05-01T11:00:05.123000Z")
        self.assertEqual(event["sentAt"], "2024-05-01T11:00:08.456000Z")
        # received - (sent - original) = 10:00:10.5 - 3.333 s
        self.assertEqual(event["timestamp"], "2024-05-01T10:00:07.167000Z")

    def test_skew_correction_full_precision(self):
        event = one(track(originalTimestamp="2024-05-01T10:00:00.000001Z",
                          sentAt="2024-05-01T10:00:00.000003Z"))
        self.assertEqual(event["timestamp"], "2024-05-01T10:00:10.499998Z")

    def test_skew_with_batch_sent_at(self):
        payload = {"batch": [track(originalTimestamp="2024-05-01T10:00:00Z")],
                   "sentAt": "2024-05-01T10:00:01Z"}
        [event] = normalise(payload)
        self.assertEqual(event["sentAt"], "2024-05-01T10:00:01.000000Z")
        self.assertEqual(event["timestamp"], "2024-05-01T10:00:09.500000Z")

    def test_event_sent_at_wins_over_batch(self):
        payload = {"batch": [track(sentAt="2024-05-01T10:00:02Z")],
                   "sentAt": "2024-05-01T10:00:01Z"}
        self.assertEqual(normalise(payload)[0]["sentAt"], "2024-05-01T10:00:02.000000Z")

    def test_unparseable_event_sent_at_falls_back_to_batch(self):
        payload = {"batch": [track(sentAt="garbage")], "sentAt": "2024-05-01T10:00:01Z"}
        self.assertEqual(normalise(payload)[0]["sentAt"], "2024-05-01T10:00:01.000000Z")

    def test_client_timestamp_wins_no_correction(self):
        event = one(track(timestamp="2024-05-01T08:00:00+02:00",
                          originalTimestamp="2024-05-01T05:00:00Z",
                          sentAt="2024-05-01T05:00:03Z"))
        self.assertEqual(event["timestamp"], "2024-05-01T06:00:00.000000Z")
        self.assertEqual(event["originalTimestamp"], "2024-05-01T05:00:00.000000Z")

    def test_original_without_sent_at(self):
        event = one(track(originalTimestamp="2024-05-01T09:00:00Z"))
        self.assertIsNone(event["sentAt"])
        self.assertEqual(event["timestamp"], "2024-05-01T09:00:00.000000Z")

    def test_sent_at_without_original(self):
        event = one(track(sentAt="2024-05-01T09:00:00Z"))
        self.assertIsNone(event["originalTimestamp"])
        self.assertEqual(event["timestamp"], RECEIVED_S)

    def test_nothing_at_all(self):
        event = one(track())
        self.assertIsNone(event["sentAt"])
        self.assertIsNone(event["originalTimestamp"])
        self.assertEqual(event["timestamp"], RECEIVED_S)

    def test_unparseable_values(self):
        event = one(track(timestamp="soon", originalTimestamp=1714557600000, sentAt={"a": 1}))
        self.assertIsNone(event["sentAt"])
        self.assertIsNone(event["originalTimestamp"])
        self.assertEqual(event["timestamp"], RECEIVED_S)

    def test_unparseable_timestamp_uses_correction(self):
        event = one(track(timestamp="bad", originalTimestamp="2024-05-01T10:00:00Z",
                          sentAt="2024-05-01T10:00:01Z"))
        self.assertEqual(event["timestamp"], "2024-05-01T10:00:09.500000Z")

    def test_unparseable_original_falls_back_to_timestamp(self):
        event = one(track(timestamp="2024-05-01T09:00:00Z", originalTimestamp="bad"))
        self.assertEqual(event["originalTimestamp"], "2024-05-01T09:00:00.000000Z")

    def test_out_of_range(self):
        event = one(track(originalTimestamp="0000-01-01T00:00:00Z", sentAt="99999-01-01"))
        self.assertIsNone(event["originalTimestamp"])
        self.assertIsNone(event["sentAt"])
        self.assertEqual(event["timestamp"], RECEIVED_S)

    def test_correction_out_of_range_uses_original(self):
        event = one(track(originalTimestamp="0001-01-01T00:00:00Z",
                          sentAt="9999-12-31T00:00:00Z"))
        self.assertEqual(event["timestamp"], "0001-01-01T00:00:00.000000Z")

    def test_all_written_in_one_format(self):
        event = one(track(originalTimestamp="2024-05-01 12:00:00+0200",
                          sentAt="Wed, 01 May 2024 10:00:01 GMT"))
        self.assertEqual(event["originalTimestamp"], "2024-05-01T10:00:00.000000Z")
        self.assertEqual(event["sentAt"], "2024-05-01T10:00:01.000000Z")
        for key in ("receivedAt", "sentAt", "originalTimestamp", "timestamp"):
            datetime.strptime(event[key], "%Y-%m-%dT%H:%M:%S.%fZ")

    def test_single_route_has_no_batch_sent_at(self):
        [event] = normalise({"userId": "u", "sentAt": "2024-05-01T10:00:01Z",
                             "originalTimestamp": "2024-05-01T10:00:00Z"}, route_type="track")
        self.assertEqual(event["sentAt"], "2024-05-01T10:00:01.000000Z")
        self.assertEqual(event["timestamp"], "2024-05-01T10:00:09.500000Z")

    def test_same_values_across_events(self):
        payload = {"batch": [track(originalTimestamp=f"2024-05-01T10:00:0{i}Z") for i in range(3)],
                   "sentAt": "2024-05-01T10:00:05Z"}
        self.assertEqual([e["timestamp"] for e in normalise(payload)],
                         ["2024-05-01T10:00:05.500000Z", "2024-05-01T10:00:06.500000Z",
                          "2024-05-01T10:00:07.500000Z"])


class IdentifyTraitsTests(TestCase):
    def test_top_level_traits_merged_into_context(self):
        event = one({"type": "identify", "userId": "u", "traits": {"email": "a@b.c", "n": 1},
                     "context": {"traits": {"plan": "pro", "n": 0}}})
        self.assertEqual(event["context"]["traits"], {"plan": "pro", "n": 1, "email": "a@b.c"})
        self.assertEqual(event["traits"], {"email": "a@b.c", "n": 1})

    def test_no_context_traits(self):
        event = one({"type": "identify", "userId": "u", "traits": {"a": 1}})
        self.assertEqual(event["context"], {"traits": {"a": 1}})

    def test_context_traits_not_a_dict_replaced(self):
        event = one({"type": "identify", "userId": "u", "traits": {"a": 1},
                     "context": {"traits": "junk"}})
        self.assertEqual(event["context"]["traits"], {"a": 1})

    def test_context_only(self):
        # rudder-sdk-python and the browser SDKs: traits only in context.traits.
        traits = {"a": 1}
        event = one({"type": "identify", "userId": "u", "context": {"traits": traits}})
        self.assertEqual(event["context"]["traits"], {"a": 1})
        self.assertNotIn("traits", event)

    def test_top_level_traits_not_a_dict(self):
        for value in ("x", [1], 5, None, {}):
            event = one({"type": "identify", "userId": "u", "traits": value,
                         "context": {"traits": {"a": 1}}})
            self.assertEqual(event["context"]["traits"], {"a": 1})
            self.assertEqual(event["traits"], value)

    def test_only_identify(self):
        event = one({"type": "group", "userId": "u", "groupId": "g", "traits": {"a": 1}})
        self.assertEqual(event["context"], {})
        self.assertEqual(event["traits"], {"a": 1})

    def test_merge_does_not_touch_input(self):
        ctx_traits = {"a": 1}
        one({"type": "identify", "userId": "u", "traits": {"b": 2},
             "context": {"traits": ctx_traits}})
        self.assertEqual(ctx_traits, {"a": 1})


class PrivacyPlanTests(TestCase):
    """The per-request privacy plan comes from a cache keyed by the settings' values."""

    def event(self, privacy, received_at=RECEIVED):
        return one(track(context={"ip": "198.51.100.7", "secret": 1}), privacy=privacy,
                   received_at=received_at)

    def test_changed_settings_take_effect(self):
        privacy = SimpleNamespace(ip="keep", hash_secret=None, drop_fields=())
        self.assertEqual(self.event(privacy)["context"], {"ip": "198.51.100.7", "secret": 1})
        privacy.ip = "truncate"
        privacy.drop_fields = (("context", "secret"),)
        self.assertEqual(self.event(privacy)["context"], {"ip": "198.51.100.0"})
        privacy.drop_fields = ["context.secret"]  # unhashable: compiled for the request
        privacy.ip = "drop"
        self.assertEqual(self.event(privacy)["context"], {})

    def test_hash_uses_each_requests_day(self):
        privacy = PrivacyConfig(ip="hash", hash_secret=b"k")
        day1 = self.event(privacy)["context"]["ip"]
        self.assertEqual(self.event(privacy)["context"]["ip"], day1)
        day2 = self.event(privacy, received_at=RECEIVED + timedelta(days=1))["context"]["ip"]
        self.assertNotEqual(day2, day1)
        # Near midnight, an aware received_at counts by its UTC day.
        late = datetime(2024, 5, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
        self.assertEqual(self.event(privacy, received_at=late)["context"]["ip"], day2)


class LayerTests(TestCase):
    def test_event_types_are_defined_once_in_order(self):
        from stilgar.events import EVENT_TYPES as exported
        from stilgar.events.normalise import EVENT_TYPES
        self.assertIs(exported, EVENT_TYPES)
        self.assertEqual(EVENT_TYPES, ("identify", "track", "page", "screen", "group", "alias"))

    def test_discard_marker_belongs_to_the_events_layer(self):
        from stilgar.destinations import base
        from stilgar.events import DISCARD, discard
        self.assertIs(base.DISCARD, discard.DISCARD)
        self.assertEqual(DISCARD, "discard")

    def test_events_import_no_destination(self):
        # Layers flow one way (doc/design.md): destinations import events, never the reverse.
        import ast
        import os
        import stilgar.events
        folder = os.path.dirname(stilgar.events.__file__)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    self.assertNotIn("destinations", node.module or "", name)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        self.assertNotIn("destinations", alias.name, name)
