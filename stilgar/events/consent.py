"""Consent per destination: RudderStack's processor rules, as pure functions (doc/privacy.md).

An event carries ``context.consentManagement``: ``provider``,
``allowedConsentIds``, ``deniedConsentIds``, ``resolutionStrategy``. A
destination's ``consent`` block lists, per provider, the categories it needs.
The decision follows rudder-server's ``getConsentFilteredDestinations``
(processor/consent.go):

* no denied ids in the event: delivered (``allowedConsentIds`` is not used,
  as in RudderStack);
* a rule for the event's provider: strategy ``or`` (the rule's own for the
  ``custom`` provider, else the event's) refuses when *every* category is
  denied; ``and`` (the default) refuses when *any* is denied;
* otherwise, for an event without provider or from ``oneTrust``: a
  ``oneTrust`` rule refuses when any category is denied; without provider
  or from ``ketch``: a ``ketch`` rule refuses when every purpose is denied;
* no applicable rule: delivered.
"""

import attr

from ..units import ConfigError

__all__ = ["ConsentRule", "parse_consent", "consent_info", "refusal", "STRATEGIES"]

STRATEGIES = ("and", "or")


@attr.s(frozen=True, slots=True)
class ConsentRule:
    provider = attr.ib()                      # e.g. oneTrust, ketch, custom, iubenda
    categories = attr.ib()                    # tuple of consent ids the destination needs
    resolution_strategy = attr.ib(default=None)   # and | or (used for the custom provider)


def _rule(block, key):
    if not isinstance(block, dict):
        raise ConfigError(key, f"expected a mapping with provider and categories, got {block!r}")
    unknown = sorted(set(block) - {"provider", "categories", "resolution_strategy"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", "unknown key (expected provider, categories,"
                          " resolution_strategy)")
    provider = block.get("provider")
    if not isinstance(provider, str) or not provider.strip():
        raise ConfigError(f"{key}.provider", "required: the consent manager's name (oneTrust, ketch,"
                          " custom or a generic provider's name)")
    categories = block.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ConfigError(f"{key}.categories", "required: a non-empty list of consent ids")
    for i, c in enumerate(categories):
        if not isinstance(c, str) or not c:
            raise ConfigError(f"{key}.categories[{i}]", f"expected a non-empty string, got {c!r}")
    strategy = block.get("resolution_strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"{key}.resolution_strategy", f"expected and or or, got {strategy!r}")
    return ConsentRule(provider.strip(), tuple(dict.fromkeys(categories)), strategy)


def parse_consent(value, key):
    """A destination's ``consent`` value (one mapping or a list of them): a tuple of rules."""
    blocks = value if isinstance(value, list) else [value]
    rules = tuple(_rule(b, f"{key}[{i}]" if isinstance(value, list) else key) for i, b in enumerate(blocks))
    providers = [r.provider for r in rules]
    for p in providers:
        if providers.count(p) > 1:
            raise ConfigError(key, f"provider {p!r} is listed twice")
    return rules


def consent_info(event):
    """``(provider, denied ids, strategy)`` of an event; lenient like RudderStack's decoder."""
    context = event.get("context")
    cm = context.get("consentManagement") if isinstance(context, dict) else None
    if not isinstance(cm, dict):
        return "", (), ""
    provider = cm.get("provider")
    strategy = cm.get("resolutionStrategy")
    denied = cm.get("deniedConsentIds")
    denied = tuple(d for d in denied if isinstance(d, str) and d) if isinstance(denied, list) else ()
    return (provider if isinstance(provider, str) else "", denied,
            strategy if isinstance(strategy, str) else "")


def refusal(rules, event):
    """None when ``event`` may go to a destination with ``rules``; else ``(provider, reason)``."""
    if not rules:
        return None
    provider, denied, strategy = consent_info(event)
    if not denied:
        return None
    denied = frozenset(denied)
    by_provider = {r.provider: r for r in rules}
    rule = by_provider.get(provider)
    if rule is not None:
        if provider == "custom":
            strategy = rule.resolution_strategy or ""
        if strategy == "or":
            return (rule.provider, "all_denied") if denied.issuperset(rule.categories) else None
        return (rule.provider, "any_denied") if denied.intersection(rule.categories) else None
    if provider in ("", "oneTrust"):
        rule = by_provider.get("oneTrust")
        if rule is not None:
            return (rule.provider, "any_denied") if denied.intersection(rule.categories) else None
    if provider in ("", "ketch"):
        rule = by_provider.get("ketch")
        if rule is not None:
            return (rule.provider, "all_denied") if denied.issuperset(rule.categories) else None
    return None
