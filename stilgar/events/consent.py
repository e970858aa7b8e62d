"""Consent per destination: RudderStack's processor rules, as pure functions (doc/privacy.md).

An event carries ``context.consentManagement``: ``provider``,
``allowedConsentIds``, ``deniedConsentIds``, ``resolutionStrategy``. A
destination's ``consent`` block lists, per provider, the categories it needs:
generic rules (RudderStack's ``consentManagement`` destination setting) and
``legacy: true`` rules for oneTrust and ketch (its ``oneTrustCookieCategories``
and ``ketchConsentPurposes``). The decision follows rudder-server's
``getConsentFilteredDestinations`` (processor/consent.go):

* no denied ids in the event: delivered (``allowedConsentIds`` is not used,
  as in RudderStack);
* a generic rule for the event's provider: strategy ``or`` (the rule's own
  for the ``custom`` provider, else the event's) refuses when *every*
  category is denied; anything else (``and``) refuses when *any* is denied;
* otherwise, for an event without provider or from ``oneTrust``: a legacy
  ``oneTrust`` rule refuses when any category is denied; without provider or
  from ``ketch``: a legacy ``ketch`` rule refuses when every purpose is denied;
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
    legacy = attr.ib(default=False)           # oneTrustCookieCategories / ketchConsentPurposes


def _rule(block, key):
    if not isinstance(block, dict):
        raise ConfigError(key, f"expected a mapping with provider and categories, got {block!r}")
    unknown = sorted(set(block) - {"provider", "categories", "resolution_strategy", "legacy"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", "unknown key (expected provider, categories,"
                          " resolution_strategy, legacy)")
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
    legacy = block.get("legacy", False)
    if not isinstance(legacy, bool):
        raise ConfigError(f"{key}.legacy", f"expected true or false, got {legacy!r}")
    if legacy and provider.strip() not in ("oneTrust", "ketch"):
        raise ConfigError(f"{key}.legacy", "only the oneTrust and ketch providers have legacy rules")
    return ConsentRule(provider.strip(), tuple(dict.fromkeys(categories)), strategy, legacy)


def parse_consent(value, key):
    """A destination's ``consent`` value (one mapping or a list of them): a tuple of rules."""
    blocks = value if isinstance(value, list) else [value]
    rules = tuple(_rule(b, f"{key}[{i}]" if isinstance(value, list) else key) for i, b in enumerate(blocks))
    seen = [(r.provider, r.legacy) for r in rules]
    for p in seen:
        if seen.count(p) > 1:
            raise ConfigError(key, f"provider {p[0]!r} is listed twice")
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
    generic = {r.provider: r for r in rules if not r.legacy}
    legacy = {r.provider: r for r in rules if r.legacy}
    rule = generic.get(provider)
    if rule is not None:
        if provider == "custom":
            strategy = rule.resolution_strategy or ""
        if strategy == "or":
            return (rule.provider, "all_denied") if denied.issuperset(rule.categories) else None
        return (rule.provider, "any_denied") if denied.intersection(rule.categories) else None
    if provider in ("", "oneTrust"):
        rule = legacy.get("oneTrust")
        if rule is not None:
            return (rule.provider, "any_denied") if denied.intersection(rule.categories) else None
    if provider in ("", "ketch"):
        rule = legacy.get("ketch")
        if rule is not None:
            return (rule.provider, "all_denied") if denied.issuperset(rule.categories) else None
    return None
