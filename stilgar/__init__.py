"""Stilgar: a lightweight, RudderStack-compatible event collector on Twisted."""

__version__ = "0.1.0"
