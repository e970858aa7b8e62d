"""Handlers of the routes without events: /sourceConfig, /ping, /, /health, /version, /status, /metrics."""

import datetime
import hashlib
import json
import platform
import sys

import twisted
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from .answers import JSON, Answer, text
from .auth import parse_basic, query_value

__all__ = ["InfoPages", "source_id"]


def source_id(key):
    """The stable source id served for a write key."""
    return hashlib.sha256(b"stilgar-source:" + key.encode("utf-8")).hexdigest()[:27]


def _json(status, document):
    return Answer(status, json.dumps(document).encode(), [(b"Content-Type", JSON)])


class InfoPages:
    """``write(request, answer)`` is the app's answer writer; ``keys`` the known write keys."""

    def __init__(self, config, keys, intake, stats, write, clock):
        self.config = config
        self.keys = keys
        self.intake = intake
        self.stats = stats
        self.write = write
        self._source_documents = {}   # write key -> the /sourceConfig body
        self._started = datetime.datetime.fromtimestamp(clock.seconds(), datetime.timezone.utc)

    def handlers(self):
        return {"source_config": self.source_config, "ping": self.ping, "root": self.root,
                "health": self.health, "version": self.version, "status": self.status,
                "metrics": self.metrics}

    def source_config(self, request, ctx):
        # the Basic header first: Kotlin and Swift also put the key, unencoded, in the
        # query, where a '&' cuts it; the query is read without turning '+' into a space
        creds = parse_basic(request.requestHeaders.getRawHeaders(b"authorization", [None])[0])
        key = creds[0] if creds else query_value(request.uri, b"writeKey")
        if not key or key not in self.keys:
            body = json.dumps({"source": {"enabled": False}}).encode()
            return self.write(request, Answer(403, body, [(b"Content-Type", JSON), *ctx.cors],
                                              reason="sourceConfig with an unknown write key"))
        body = self._source_documents.get(key)
        if body is None:
            body = self._source_documents[key] = self._source_document(key)
        return self.write(request, Answer(200, body, [(b"Content-Type", JSON), *ctx.cors]))

    def _source_document(self, key):
        """The /sourceConfig body for a known key (doc/sdks.md): every field the SDKs'
        models require, and the operator's ``source_config`` entry verbatim."""
        served = self.config.source_config.get(key)
        sid = source_id(key)
        updated = self._started.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self._started.microsecond // 1000:03d}Z"
        source = {
            "id": sid,
            "name": f"stilgar-{sid[:8]}",
            "writeKey": key,
            "workspaceId": hashlib.sha256(b"stilgar-workspace").hexdigest()[:27],
            "enabled": True,
            "config": {"statsCollection": {"errors": {"enabled": False},
                                           "metrics": {"enabled": False}}},
            "destinations": list(served.destinations) if served is not None else [],
            "updatedAt": updated,
        }
        if served is not None and served.dataplanes is not None:
            source["dataplanes"] = served.dataplanes   # never unless configured: it redirects traffic
        consent = served.consent_management if served is not None else None
        document = {
            "source": source,
            "updatedAt": updated,
            "consentManagementMetadata": consent if consent is not None else {"providers": []},
        }
        return json.dumps(document).encode()

    def ping(self, request, ctx):
        return self.write(request, text(200, "pong"))

    def root(self, request, ctx):
        return self.write(request, text(200, ":-)"))

    def health(self, request, ctx):
        document = self.intake.health()
        return self.write(request, _json(200 if document["acceptingEvents"] else 503, document))

    def version(self, request, ctx):
        document = {"version": __version__, "python": platform.python_version(),
                    "implementation": sys.implementation.name, "twisted": twisted.__version__}
        return self.write(request, _json(200, document))

    def status(self, request, ctx):
        value = (ctx.query.get("with_destinations") or ["false"])[-1]
        if value not in ("true", "false"):
            return self.write(request, text(400, "with_destinations must be true or false"))
        document = {"events": self.stats.events_json(self.intake.queue_capacity())}
        document.update(self.intake.status(value == "true"))
        return self.write(request, _json(200, document))

    def metrics(self, request, ctx):
        from ..metrics import render
        return self.write(request, Answer(200, render(), [(b"Content-Type", CONTENT_TYPE_LATEST.encode())]))
