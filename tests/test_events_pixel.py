"""stilgar.events.pixel_payload: the pixel routes' event."""

from datetime import datetime, timezone
from types import SimpleNamespace

from twisted.trial.unittest import TestCase

from stilgar.events import Rejected, normalise_payload, pixel_payload
from stilgar.events.pixel import MAX_PATH_PARTS

NOW = datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=timezone.utc)
NOW_S = "2024-05-01T10:00:00.250000Z"


def q(**params):
    return {k.replace("__", "."): v if isinstance(v, list) else [v] for k, v in params.items()}


class PixelTests(TestCase):
    def test_base(self):
        event = pixel_payload({"anonymousId": ["a1"], "event": ["Opened"]}, "track", NOW)
        self.assertEqual(event, {
            "channel": "web", "integrations": {"All": True},
            "originalTimestamp": NOW_S, "sentAt": NOW_S,
            "anonymousId": "a1", "event": "Opened", "type": "track",
        })

    def test_write_key_not_copied(self):
        event = pixel_payload({"writeKey": ["secret"], "anonymousId": ["a"]}, "page", NOW)
        self.assertNotIn("writeKey", event)

    def test_dotted_paths_nest(self):
        event = pixel_payload({"properties.x": ["1"], "properties.y.z": ["2"],
                               "context.page.url": ["https://e.com/?a=b"]}, "track", NOW)
        self.assertEqual(event["properties"], {"x": "1", "y": {"z": "2"}})
        self.assertEqual(event["context"], {"page": {"url": "https://e.com/?a=b"}})

    def test_values_stay_strings(self):
        event = pixel_payload({"properties.n": ["1"], "properties.b": ["true"],
                               "userId": ["42"]}, "track", NOW)
        self.assertEqual(event["properties"], {"n": "1", "b": "true"})
        self.assertEqual(event["userId"], "42")

    def test_last_value_wins(self):
        event = pixel_payload({"properties.x": ["1", "2", "3"]}, "track", NOW)
        self.assertEqual(event["properties"], {"x": "3"})

    def test_empty_value_list_ignored(self):
        event = pixel_payload({"properties.x": []}, "track", NOW)
        self.assertNotIn("properties", event)

    def test_anonymous_id_unquoted(self):
        self.assertEqual(pixel_payload({"anonymousId": ['"abc"']}, "page", NOW)["anonymousId"], "abc")
        self.assertEqual(pixel_payload({"anonymousId": ['"a"b"']}, "page", NOW)["anonymousId"], 'a"b')
        self.assertEqual(pixel_payload({"anonymousId": ['"abc']}, "page", NOW)["anonymousId"], '"abc')
        self.assertEqual(pixel_payload({"anonymousId": ['"']}, "page", NOW)["anonymousId"], '"')
        self.assertEqual(pixel_payload({"anonymousId": ['""']}, "page", NOW)["anonymousId"], "")
        self.assertEqual(pixel_payload({"userId": ['"u"']}, "page", NOW)["userId"], '"u"')

    def test_type_is_the_route(self):
        self.assertEqual(pixel_payload({"type": ["identify"]}, "track", NOW)["type"], "track")

    def test_page_name(self):
        self.assertEqual(pixel_payload({}, "page", NOW)["name"], "Unknown Page")
        self.assertEqual(pixel_payload({"name": [""]}, "page", NOW)["name"], "Unknown Page")
        self.assertEqual(pixel_payload({"name": ["Home"]}, "page", NOW)["name"], "Home")
        self.assertNotIn("name", pixel_payload({}, "track", NOW))

    def test_track_empty_event_dropped(self):
        self.assertIsNone(pixel_payload({"event": [""], "anonymousId": ["a"]}, "track", NOW))
        self.assertIsNone(pixel_payload({"event": ["x", ""]}, "track", NOW))
        # Missing event is allowed.
        event = pixel_payload({"anonymousId": ["a"]}, "track", NOW)
        self.assertNotIn("event", event)
        # Page events are not dropped for an empty event param.
        self.assertIsNotNone(pixel_payload({"event": [""]}, "page", NOW))

    def test_conflicting_paths(self):
        event = pixel_payload({"a": ["1"], "a.b": ["2"]}, "track", NOW)
        self.assertEqual(event["a"], {"b": "2"})
        event = pixel_payload({"a.b": ["2"], "a": ["1"]}, "track", NOW)
        self.assertEqual(event["a"], "1")
        event = pixel_payload({"channel.x": ["1"], "integrations.All": ["no"]}, "track", NOW)
        self.assertEqual(event["channel"], {"x": "1"})
        self.assertEqual(event["integrations"], {"All": "no"})

    def test_odd_keys(self):
        event = pixel_payload({"": ["1"], "a..b": ["2"], ".": ["3"], "x.": ["4"]}, "track", NOW)
        self.assertEqual(event[""], {"": "3"})
        self.assertEqual(event["a"], {"": {"b": "2"}})
        self.assertEqual(event["x"], {"": "4"})

    def test_too_deep_key_ignored(self):
        deep = ".".join(["k"] * (MAX_PATH_PARTS + 1))
        ok = ".".join(["o"] * MAX_PATH_PARTS)
        event = pixel_payload({deep: ["1"], ok: ["2"]}, "track", NOW)
        self.assertNotIn("k", event)
        self.assertIn("o", event)

    def test_bytes_query(self):
        event = pixel_payload({b"writeKey": [b"k"], b"properties.x": [b"\xc3\xa9", b"\xff"],
                               b"anonymousId": [b'"a"']}, "track", NOW)
        self.assertEqual(event["properties"], {"x": "\ufffd"})
        self.assertEqual(event["anonymousId"], "a")
        self.assertNotIn("writeKey", event)

    def test_lone_surrogates_replaced(self):
        event = pixel_payload({"properties.x\ud800": ["a\udc00"]}, "track", NOW)
        self.assertEqual(event["properties"], {"x\ufffd": "a\ufffd"})

    def test_plain_string_values(self):
        event = pixel_payload({"properties.x": "abc"}, "track", NOW)
        self.assertEqual(event["properties"], {"x": "abc"})

    def test_through_normalise(self):
        payload = pixel_payload({"writeKey": ["k"], "anonymousId": ['"a1"'], "event": ["Open"],
                                 "properties.x": ["1"]}, "track", NOW)
        privacy = SimpleNamespace(ip="drop", hash_secret=None, drop_fields=())
        [event] = normalise_payload(payload, route_type="track", received_at=NOW,
                                    client_ip="1.2.3.4", privacy=privacy, max_events=1,
                                    new_message_id=lambda: "m")
        self.assertEqual(event["type"], "track")
        self.assertEqual(event["event"], "Open")
        self.assertEqual(event["anonymousId"], "a1")
        self.assertEqual(event["timestamp"], NOW_S)
        self.assertEqual(event["messageId"], "m")
        self.assertEqual(event["properties"], {"x": "1"})

    def test_without_ids_is_rejected_by_normalise(self):
        payload = pixel_payload({"name": ["Home"]}, "page", NOW)
        privacy = SimpleNamespace(ip="drop", hash_secret=None, drop_fields=())
        with self.assertRaises(Rejected):
            normalise_payload(payload, route_type="page", received_at=NOW, client_ip=None,
                              privacy=privacy, max_events=1)
