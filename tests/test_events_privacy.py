"""The privacy step of stilgar.events.normalise_payload."""

import hashlib
import hmac
from datetime import datetime, timezone
from types import SimpleNamespace

from twisted.trial.unittest import TestCase

from stilgar.events import normalise_payload
from stilgar.events.privacy import canonical_ip, truncate_ip

RECEIVED = datetime(2024, 5, 1, 23, 59, 59, tzinfo=timezone.utc)
SECRET = b"s3cret"


def privacy(ip="drop", drop_fields=(), hash_secret=SECRET):
    return SimpleNamespace(ip=ip, hash_secret=hash_secret, drop_fields=drop_fields)


def one(event, policy, client_ip="198.51.100.7", received_at=RECEIVED):
    [result] = normalise_payload({"batch": [event]}, route_type=None, received_at=received_at,
                                 client_ip=client_ip, privacy=policy, max_events=10,
                                 new_message_id=lambda: "id")
    return result


def ev(**context):
    event = {"type": "track", "userId": "u", "event": "e"}
    if context:
        event["context"] = context
    return event


def expected_hash(day, ip, secret=SECRET):
    return hmac.new(secret, (day + ip).encode(), hashlib.sha256).hexdigest()


class IpPolicyTests(TestCase):
    def test_drop(self):
        self.assertNotIn("ip", one(ev(ip="1.2.3.4"), privacy("drop"))["context"])
        self.assertNotIn("ip", one(ev(), privacy("drop"))["context"])

    def test_unknown_policy_is_drop(self):
        self.assertNotIn("ip", one(ev(ip="1.2.3.4"), privacy("bogus"))["context"])
        self.assertNotIn("ip", one(ev(), SimpleNamespace())["context"])

    def test_keep_event_ip_first(self):
        self.assertEqual(one(ev(ip="1.2.3.4"), privacy("keep"))["context"]["ip"], "1.2.3.4")

    def test_keep_client_ip_otherwise(self):
        self.assertEqual(one(ev(), privacy("keep"))["context"]["ip"], "198.51.100.7")
        for bad in (None, "", "  ", 5, ["1.2.3.4"]):
            self.assertEqual(one(ev(ip=bad), privacy("keep"))["context"]["ip"], "198.51.100.7")

    def test_keep_without_any_ip(self):
        self.assertNotIn("ip", one(ev(), privacy("keep"), client_ip=None)["context"])
        self.assertNotIn("ip", one(ev(ip=None), privacy("keep"), client_ip="")["context"])

    def test_keep_keeps_text_as_sent(self):
        self.assertEqual(one(ev(ip="not an ip"), privacy("keep"))["context"]["ip"], "not an ip")

    def test_truncate_ipv4(self):
        self.assertEqual(one(ev(ip="1.2.3.4"), privacy("truncate"))["context"]["ip"], "1.2.3.0")
        self.assertEqual(one(ev(), privacy("truncate"))["context"]["ip"], "198.51.100.0")
        self.assertEqual(one(ev(ip=" 10.0.0.255 "), privacy("truncate"))["context"]["ip"],
                         "10.0.0.0")

    def test_truncate_ipv6(self):
        cases = {
            "2001:db8:1234:5678:9abc:def0:1234:5678": "2001:db8:1234::",
            "2001:0DB8:ffff:ffff:ffff:ffff:ffff:ffff": "2001:db8:ffff::",
            "::1": "::",
            "fe80::1%eth0": "fe80::",
            "[2001:db8:1:2::3]": "2001:db8:1::",
            "[2001:db8:1:2::3]:443": "2001:db8:1::",
        }
        for given, want in cases.items():
            self.assertEqual(one(ev(ip=given), privacy("truncate"))["context"]["ip"], want, given)

    def test_truncate_ipv4_mapped(self):
        self.assertEqual(one(ev(ip="::ffff:192.0.2.77"), privacy("truncate"))["context"]["ip"],
                         "192.0.2.0")

    def test_truncate_ipv4_with_port(self):
        self.assertEqual(one(ev(ip="192.0.2.77:8080"), privacy("truncate"))["context"]["ip"],
                         "192.0.2.0")

    def test_truncate_invalid_removed(self):
        for bad in ("not an ip", "1.2.3", "1.2.3.256", "01.2.3.4", "1.2.3.4.5", "::g",
                    "1" * 1000, "[::1", "\ud800"):
            self.assertNotIn("ip", one(ev(ip=bad), privacy("truncate"))["context"], bad)
        self.assertNotIn("ip", one(ev(), privacy("truncate"), client_ip="garbage")["context"])
        self.assertNotIn("ip", one(ev(), privacy("truncate"), client_ip=None)["context"])

    def test_hash(self):
        got = one(ev(ip="1.2.3.4"), privacy("hash"))["context"]["ip"]
        self.assertEqual(got, expected_hash("2024-05-01", "1.2.3.4"))
        self.assertEqual(len(got), 64)

    def test_hash_client_ip(self):
        self.assertEqual(one(ev(), privacy("hash"))["context"]["ip"],
                         expected_hash("2024-05-01", "198.51.100.7"))

    def test_hash_uses_utc_date_of_received_at(self):
        from datetime import timedelta
        local = RECEIVED.astimezone(timezone(timedelta(hours=2)))  # 2024-05-02 locally
        self.assertEqual(one(ev(ip="1.2.3.4"), privacy("hash"), received_at=local)["context"]["ip"],
                         expected_hash("2024-05-01", "1.2.3.4"))

    def test_hash_rotates_daily(self):
        next_day = datetime(2024, 5, 2, 0, 0, 1, tzinfo=timezone.utc)
        a = one(ev(ip="1.2.3.4"), privacy("hash"))["context"]["ip"]
        b = one(ev(ip="1.2.3.4"), privacy("hash"), received_at=next_day)["context"]["ip"]
        self.assertNotEqual(a, b)
        self.assertEqual(b, expected_hash("2024-05-02", "1.2.3.4"))

    def test_hash_depends_on_secret(self):
        a = one(ev(ip="1.2.3.4"), privacy("hash", hash_secret=b"one"))["context"]["ip"]
        b = one(ev(ip="1.2.3.4"), privacy("hash", hash_secret=b"two"))["context"]["ip"]
        self.assertNotEqual(a, b)
        self.assertEqual(one(ev(ip="1.2.3.4"), privacy("hash", hash_secret="one"))["context"]["ip"],
                         a)

    def test_hash_canonical_ipv6(self):
        a = one(ev(ip="2001:DB8:0:0::1"), privacy("hash"))["context"]["ip"]
        self.assertEqual(a, expected_hash("2024-05-01", "2001:db8::1"))

    def test_hash_invalid_removed(self):
        self.assertNotIn("ip", one(ev(ip="nope"), privacy("hash"))["context"])

    def test_helpers(self):
        self.assertIsNone(canonical_ip(None))
        self.assertIsNone(canonical_ip(123))
        self.assertEqual(truncate_ip("255.255.255.255"), "255.255.255.0")


class DropFieldsTests(TestCase):
    def test_nested_path(self):
        event = one({"type": "identify", "userId": "u", "traits": {"email": "e", "n": 1},
                     "context": {"traits": {"email": "e2", "plan": "p"}}},
                    privacy(drop_fields=(("context", "traits", "email"),)))
        self.assertEqual(event["context"]["traits"], {"plan": "p", "n": 1})
        # Top-level traits are another path.
        self.assertEqual(event["traits"], {"email": "e", "n": 1})

    def test_several_paths_and_shared_prefix(self):
        fields = (("context", "traits", "email"), ("context", "traits", "phone"),
                  ("properties", "card"), ("context", "userAgent"))
        raw = {"type": "track", "userId": "u",
               "properties": {"card": "4111", "ok": 1},
               "context": {"traits": {"email": "e", "phone": "p", "x": 1}, "userAgent": "UA"}}
        event = one(raw, privacy(drop_fields=fields))
        self.assertEqual(event["context"], {"traits": {"x": 1}})
        self.assertEqual(event["properties"], {"ok": 1})
        # The input is untouched.
        self.assertEqual(raw["properties"], {"card": "4111", "ok": 1})
        self.assertEqual(raw["context"]["traits"], {"email": "e", "phone": "p", "x": 1})

    def test_missing_paths_ignored(self):
        fields = (("context", "traits", "email"), ("a", "b", "c"), ("properties", "x", "y"))
        raw = {"type": "track", "userId": "u", "properties": {"x": [1, {"y": 2}]},
               "context": {"traits": "not a dict"}}
        event = one(raw, privacy(drop_fields=fields))
        self.assertEqual(event["properties"], {"x": [1, {"y": 2}]})
        self.assertEqual(event["context"], {"traits": "not a dict"})

    def test_does_not_walk_lists(self):
        raw = {"type": "track", "userId": "u", "properties": {"list": [{"a": 1}]}}
        event = one(raw, privacy(drop_fields=(("properties", "list", "a"),)))
        self.assertEqual(event["properties"], {"list": [{"a": 1}]})

    def test_ip_path_removed_whatever_the_policy(self):
        event = one(ev(ip="1.2.3.4"), privacy("keep", drop_fields=(("context", "ip"),)))
        self.assertNotIn("ip", event["context"])

    def test_dotted_strings_accepted(self):
        event = one(ev(secret="x", keep=1), privacy(drop_fields=("context.secret",)))
        self.assertEqual(event["context"], {"keep": 1})

    def test_top_level_fields(self):
        raw = {"type": "track", "userId": "u", "anonymousId": "a", "custom": 1,
               "properties": {"a": 1}, "messageId": "m"}
        fields = (("custom",), ("properties",), ("anonymousId",), ("messageId",), ("type",),
                  ("context",), ("receivedAt",), ("timestamp",))
        event = one(raw, privacy(drop_fields=fields))
        self.assertNotIn("custom", event)
        self.assertNotIn("properties", event)
        # The normalised format keeps its keys.
        self.assertIsNone(event["anonymousId"])
        self.assertEqual(event["messageId"], "m")
        self.assertEqual(event["type"], "track")
        self.assertEqual(event["context"], {})
        self.assertIn("receivedAt", event)
        self.assertIn("timestamp", event)

    def test_bad_drop_fields_never_fail(self):
        for fields in (None, (), ((),), ((1, 2),), (("a", None),), 5, ("",), (("",),)):
            event = one(ev(a=1), privacy(drop_fields=fields))
            self.assertEqual(event["context"], {"a": 1}, fields)
