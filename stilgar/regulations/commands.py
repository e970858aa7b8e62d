"""What a ``stilgar regulations ...`` command calls (blocking: for a CLI, never the reactor).

``file_regulation``/``show_regulation``/``list_regulations`` talk to a running
collector's admin API (by default on loopback, which the default admin
networks allow); ``journal_regulations`` reads the local journal directly,
for an operator on the machine while the collector is down. See doc/privacy.md.
"""

import base64
import json
import os
import urllib.error
import urllib.request

from .journal import DIRECTORY, JOURNAL_NAME
from .model import Ledger, parse_request
from .service import iso

__all__ = ["file_regulation", "show_regulation", "list_regulations", "journal_regulations", "AdminError"]


class AdminError(Exception):
    """The collector refused or could not be reached; ``status`` is None for the latter."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


def _call(base_url, method, path, body=None, user=None, password=None, timeout=30):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(base_url.rstrip("/") + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise AdminError(e.code, e.read().decode("utf-8", "replace").strip()) from None
    except (urllib.error.URLError, OSError) as e:
        raise AdminError(None, f"cannot reach {base_url}: {getattr(e, 'reason', e)}") from None


def file_regulation(base_url, regulation_type, subject_type, subject_ids, user=None, password=None):
    """POST /v1/regulations; ``{"id", "status"}``. The body is checked here first (BadRegulation)."""
    document = {"regulationType": regulation_type, "subjectType": subject_type, "subjectIds": list(subject_ids)}
    parse_request(document)
    return _call(base_url, "POST", "/v1/regulations", json.dumps(document).encode("utf-8"), user, password)


def show_regulation(base_url, regulation_id, user=None, password=None):
    """GET /v1/regulations/<id>: the regulation's document."""
    return _call(base_url, "GET", f"/v1/regulations/{regulation_id}", None, user, password)


def list_regulations(base_url, user=None, password=None):
    """GET /v1/regulations: every regulation, newest first."""
    return _call(base_url, "GET", "/v1/regulations", None, user, password)["regulations"]


def journal_regulations(spool_path):
    """The regulations of the local journal (``<spool.path>/regulations/journal.jsonl``), newest first."""
    ledger = Ledger()
    path = os.path.join(spool_path, DIRECTORY, JOURNAL_NAME)
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            if line.strip():
                try:
                    ledger.apply(json.loads(line.decode("utf-8")))
                except ValueError:
                    continue   # a line torn by a crash
    return [r.document(iso) for r in ledger.newest_first()]
