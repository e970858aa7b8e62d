"""Destination types, by the name the configuration's ``type:`` key gives.

Adding a destination type means adding a module that provides
:class:`~stilgar.destinations.base.IDestinationType` and one line here; the
forwarder and the web layer do not change.
"""

import importlib

from .base import IDestination, IDestinationType, TransientError

__all__ = ["IDestination", "IDestinationType", "TransientError", "DESTINATION_TYPES", "destination_type"]

# type name -> "module:attribute" (imported lazily, so a type's dependencies
# are only loaded when a configuration uses it)
DESTINATION_TYPES = {
    "blackhole": "stilgar.destinations.blackhole:BlackholeType",
    "clickhouse": "stilgar.destinations.clickhouse:ClickHouseType",
    "console": "stilgar.destinations.console:ConsoleType",
}


def destination_type(type_name):
    """Return the :class:`IDestinationType` provider for ``type_name`` (KeyError if unknown)."""
    module, _, attribute = DESTINATION_TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module), attribute)
