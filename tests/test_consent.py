"""Consent per destination (stilgar/events/consent.py): rudder-server's processor rules.

The cases follow rudder-server's processor/consent_test.go (generic consent management,
legacy OneTrust and Ketch, the custom provider), then the forwarder with two destinations.
"""

from twisted.internet import task
from twisted.trial import unittest

from stilgar import metrics
from stilgar.config import parse_config
from stilgar.events.consent import ConsentRule, consent_info, parse_consent, refusal
from stilgar.forwarder import Forwarder
from stilgar.regulations.suppression import DeliveryFilter
from stilgar.stats import Stats
from stilgar.units import ConfigError

from .test_forwarder import FakeDestination, FakeSpool


def consented(provider=None, denied=(), strategy=None, **extra):
    cm = {"deniedConsentIds": list(denied), **extra}
    if provider is not None:
        cm["provider"] = provider
    if strategy is not None:
        cm["resolutionStrategy"] = strategy
    return {"type": "track", "messageId": "m", "anonymousId": "a", "context": {"consentManagement": cm}}


def generic(provider, *categories, strategy=None):
    return ConsentRule(provider, categories, strategy)


def legacy(provider, *categories):
    return ConsentRule(provider, categories, None, True)


def delivered(destinations, event):
    return sorted(name for name, rules in destinations.items() if refusal(rules, event) is None)


class RuleTests(unittest.TestCase):
    def test_no_denied_ids_goes_everywhere(self):
        rules = (generic("oneTrust", "foo-1"),)
        self.assertIsNone(refusal(rules, {"type": "track"}))
        self.assertIsNone(refusal(rules, consented("oneTrust", [], allowedConsentIds=["x"])))
        self.assertIsNone(refusal(rules, consented("oneTrust", ["", ""])))   # empty ids are dropped
        self.assertIsNone(refusal((), consented("oneTrust", ["foo-1"])))

    def test_legacy_onetrust(self):
        # denied foo-1..3: a destination needing any of them is filtered out ("and")
        destinations = {"d1": (), "d2": (legacy("oneTrust", "foo-4"),),
                        "d3": (legacy("oneTrust", "foo-1", "foo-4"),)}
        for provider, strategy in ((None, None), ("oneTrust", "or")):   # the event's strategy is ignored
            event = consented(provider, ["foo-1", "foo-2", "foo-3"], strategy)
            self.assertEqual(delivered(destinations, event), ["d1", "d2"])

    def test_legacy_ketch(self):
        # filtered out only when every purpose is denied
        destinations = {"d1": (legacy("ketch", "foo-1"),), "d2": (legacy("ketch", "foo-1", "foo-4"),),
                        "d3": (legacy("ketch", "foo-1", "foo-2"),), "d4": ()}
        for provider, strategy in ((None, None), ("ketch", "and")):
            event = consented(provider, ["foo-1", "foo-2", "foo-3"], strategy)
            self.assertEqual(delivered(destinations, event), ["d2", "d4"])

    def test_generic_falls_back_to_legacy_of_the_same_provider_only(self):
        # rudder-server: "falls back to legacy consents (Ketch)"
        destinations = {
            "destID-1": (generic("ketch", "foo-1"), legacy("ketch", "foo-5")),
            "destID-2": (legacy("ketch", "foo-4"),),
            "destID-3": (legacy("oneTrust", "foo-1", "foo-2"),),
            "destID-4": (legacy("ketch", "foo-1"),),
            "destID-5": (generic("custom", "foo-1"), legacy("ketch", "foo-5")),
        }
        event = consented("ketch", ["foo-1", "foo-2", "foo-3"], "or")
        self.assertEqual(delivered(destinations, event), ["destID-2", "destID-3", "destID-5"])

    def test_generic_strategies(self):
        rules = (generic("oneTrust", "foo-1", "foo-4"),)
        self.assertIsNotNone(refusal(rules, consented("oneTrust", ["foo-1"], "and")))
        self.assertIsNotNone(refusal(rules, consented("oneTrust", ["foo-1"], "")))   # default: and
        self.assertIsNone(refusal(rules, consented("oneTrust", ["foo-1"], "or")))
        self.assertEqual(refusal(rules, consented("oneTrust", ["foo-1", "foo-4"], "or")), ("oneTrust", "all_denied"))
        # a generic rule applies to its own provider only: no fallback for an event without provider
        self.assertIsNone(refusal(rules, consented(None, ["foo-1"])))
        self.assertIsNone(refusal(rules, consented("ketch", ["foo-1"])))

    def test_custom_provider_uses_the_destination_strategy(self):
        rules_or = (generic("custom", "a", "b", strategy="or"),)
        rules_and = (generic("custom", "a", "b"),)
        event = consented("custom", ["a"], "or")
        self.assertIsNone(refusal(rules_or, event))
        self.assertEqual(refusal(rules_and, event), ("custom", "any_denied"))
        self.assertEqual(refusal(rules_or, consented("custom", ["a", "b"], "and")), ("custom", "all_denied"))

    def test_malformed_consent_is_lenient(self):
        self.assertEqual(consent_info({"context": {"consentManagement": "x"}}), ("", (), ""))
        self.assertEqual(consent_info({"context": "x"}), ("", (), ""))
        info = consent_info({"context": {"consentManagement": {"provider": 3, "deniedConsentIds": [1, "a", None]}}})
        self.assertEqual(info, ("", ("a",), ""))
        self.assertIsNone(refusal((legacy("oneTrust", "b"),), {"context": {"consentManagement": {
            "deniedConsentIds": "b"}}}))


class ConfigTests(unittest.TestCase):
    def test_parse(self):
        rules = parse_consent([{"provider": "oneTrust", "categories": ["C0002", "C0002", "C0004"]},
                               {"provider": "ketch", "categories": ["analytics"], "legacy": True},
                               {"provider": "custom", "categories": ["x"], "resolution_strategy": "or"}], "c")
        self.assertEqual(rules, (ConsentRule("oneTrust", ("C0002", "C0004")),
                                 ConsentRule("ketch", ("analytics",), None, True),
                                 ConsentRule("custom", ("x",), "or")))
        self.assertEqual(parse_consent({"provider": "ketch", "categories": ["a"]}, "c"),
                         (ConsentRule("ketch", ("a",)),))

    def test_errors_name_the_key(self):
        cases = [
            ({"categories": ["a"]}, "c.provider"),
            ({"provider": "x"}, "c.categories"),
            ({"provider": "x", "categories": []}, "c.categories"),
            ({"provider": "x", "categories": [1]}, "c.categories[0]"),
            ({"provider": "x", "categories": ["a"], "resolution_strategy": "xor"}, "c.resolution_strategy"),
            ({"provider": "x", "categories": ["a"], "legacy": True}, "c.legacy"),
            ({"provider": "x", "categories": ["a"], "color": 1}, "c.color"),
            ("oneTrust", "c"),
        ]
        for value, key in cases:
            with self.assertRaises(ConfigError) as caught:
                parse_consent(value, "c")
            self.assertEqual(caught.exception.key, key, value)
        with self.assertRaises(ConfigError):
            parse_consent([{"provider": "x", "categories": ["a"]}, {"provider": "x", "categories": ["b"]}], "c")

    def test_destination_keys(self):
        config = parse_config({"destinations": [
            {"type": "blackhole", "name": "a", "write_keys": ["k"],
             "consent": {"provider": "oneTrust", "categories": ["C0004"]}, "retention": "400d"}]})
        [dest] = config.destinations
        self.assertEqual(dest.consent, (ConsentRule("oneTrust", ("C0004",)),))
        self.assertEqual(dest.retention, 400 * 86400)
        self.assertEqual(config.warnings, ())
        with self.assertRaises(ConfigError) as caught:
            parse_config({"destinations": [{"type": "blackhole", "write_keys": ["k"], "retention": "1h"}]})
        self.assertEqual(caught.exception.key, "destinations[0].retention")


class TwoDestinationsTests(unittest.TestCase):
    def test_consent_per_destination(self):
        marketing = FakeDestination("marketing", ["k"])
        warehouse = FakeDestination("warehouse", ["k"])
        rules = {"marketing": (generic("oneTrust", "C0004"),)}
        clock = task.Clock()
        forwarder = Forwarder([marketing, warehouse], spool=FakeSpool(), stats=Stats(up_since=0), reactor=clock,
                              delivery_filter=DeliveryFilter(lambda: frozenset(), None, rules))
        forwarder.startService()
        counter = metrics.EVENTS_CONSENT_REFUSED.labels(destination="marketing", provider="oneTrust",
                                                        reason="any_denied")
        before = counter._value.get()
        events = [dict(consented("oneTrust", ["C0004"], "and"), messageId="denied"),
                  dict(consented("oneTrust", ["C0003"], "and"), messageId="other-category"),
                  {"type": "track", "messageId": "no-consent", "anonymousId": "a"}]
        self.successResultOf(forwarder.accept("k", "r1", events))
        self.successResultOf(forwarder.accept("k", "r2", events[:1]))
        clock.advance(0.01)
        self.assertEqual([e["messageId"] for e in marketing.received], ["other-category", "no-consent"])
        self.assertEqual([e["messageId"] for e in warehouse.received], ["denied", "other-category", "no-consent",
                                                                        "denied"])
        self.assertEqual(counter._value.get() - before, 2)
        # the refused request still moves the marketing cursor
        forwarder.save_cursors()
        self.assertEqual(forwarder.spool.cursors["marketing"], forwarder.spool.head)
