"""Regulations as values: the request body, subject hashes, and the journal fold.

Pure: no reactor, no I/O. The journal (:mod:`.journal`) holds JSON records;
:class:`Ledger` folds them into regulations and the suppressed set, the same
way on every worker and every instance, whatever order the records come in.
"""

import hashlib
import hmac
import os

import attr

__all__ = ["REGULATION_TYPES", "SUBJECT_TYPES", "BadRegulation", "parse_request", "subject_key",
           "new_regulation_id", "SubjectHasher", "Ledger", "Regulation", "actions_of", "suppressed_keys",
           "RUNNING", "FINISHED", "FAILED", "MAX_SUBJECTS", "MAX_SUBJECT_LENGTH"]

SUPPRESS, UNSUPPRESS = "SUPPRESS", "UNSUPPRESS"
SUPPRESS_WITH_DELETE, DELETE_ONLY = "SUPPRESS_WITH_DELETE", "DELETE_ONLY"
REGULATION_TYPES = (SUPPRESS, UNSUPPRESS, SUPPRESS_WITH_DELETE, DELETE_ONLY)
DELETING = frozenset([SUPPRESS_WITH_DELETE, DELETE_ONLY])
SUBJECT_TYPES = ("USER_ID", "ANONYMOUS_ID")
RUNNING, FINISHED, FAILED = "RUNNING", "FINISHED", "FAILED"
MAX_SUBJECTS = 1000
MAX_SUBJECT_LENGTH = 1024

# what a regulation does to the suppressed set (also the rows of rudder_regulations)
ACTION_SUPPRESS, ACTION_UNSUPPRESS = "suppress", "unsuppress"
ACTION_HOLD, ACTION_RELEASE = "hold", "release"   # DELETE_ONLY: suppressed while it runs


class BadRegulation(ValueError):
    """A malformed regulation request (answered 400 with this reason)."""


def parse_request(document):
    """``(regulation_type, subject_type, subject_ids)`` from a decoded request body.

    Subject ids keep their first-seen order, duplicates removed."""
    if not isinstance(document, dict):
        raise BadRegulation("the body must be a JSON object")
    unknown = sorted(set(document) - {"regulationType", "subjectType", "subjectIds"})
    if unknown:
        raise BadRegulation(f"unknown key {unknown[0]!r}")
    rtype = document.get("regulationType")
    if rtype not in REGULATION_TYPES:
        raise BadRegulation(f"regulationType must be one of {', '.join(REGULATION_TYPES)}")
    stype = document.get("subjectType")
    if stype not in SUBJECT_TYPES:
        raise BadRegulation(f"subjectType must be one of {', '.join(SUBJECT_TYPES)}")
    ids = document.get("subjectIds")
    if not isinstance(ids, list) or not ids:
        raise BadRegulation("subjectIds must be a non-empty list of strings")
    if len(ids) > MAX_SUBJECTS:
        raise BadRegulation(f"subjectIds holds more than {MAX_SUBJECTS} ids; file several regulations")
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not value.strip():
            raise BadRegulation(f"subjectIds[{i}] must be a non-empty string")
        if len(value) > MAX_SUBJECT_LENGTH:
            raise BadRegulation(f"subjectIds[{i}] is longer than {MAX_SUBJECT_LENGTH} characters")
    return rtype, stype, tuple(dict.fromkeys(ids))


def subject_key(secret, subject_type, subject_id):
    """The keyed hash standing for a subject everywhere outside the running deletion."""
    message = subject_type.encode("ascii") + b"\0" + subject_id.encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]


class SubjectHasher:
    """:func:`subject_key` for the hot path: the keyed state is prepared once and recent ids are
    remembered (a user sends many events), in a dict cleared when it holds ``capacity`` ids."""

    def __init__(self, secret, capacity=100_000):
        self._base = hmac.new(secret, digestmod=hashlib.sha256)
        self._capacity = capacity
        self._known = {}

    def __call__(self, subject_type, subject_id):
        known = self._known.get((subject_type, subject_id))
        if known is None:
            h = self._base.copy()
            h.update(subject_type.encode("ascii") + b"\0" + subject_id.encode("utf-8", "surrogatepass"))
            known = h.hexdigest()[:40]
            if len(self._known) >= self._capacity:
                self._known.clear()
            self._known[(subject_type, subject_id)] = known
        return known


def new_regulation_id(now):
    """Sortable by filing time (milliseconds, hex), unique by its random tail."""
    return f"reg-{int(now * 1000):012x}-{os.urandom(5).hex()}"


def actions_of(kind, regulation_id):
    """The suppression actions a regulation of ``kind`` takes when filed and when it ends."""
    filed = {SUPPRESS: ACTION_SUPPRESS, SUPPRESS_WITH_DELETE: ACTION_SUPPRESS,
             UNSUPPRESS: ACTION_UNSUPPRESS, DELETE_ONLY: ACTION_HOLD}[kind]
    ended = ACTION_RELEASE if kind == DELETE_ONLY else None
    return filed, ended


def suppressed_keys(actions):
    """The subject keys suppressed after ``actions``: ``(at_ms, regulation_id, action, key)``.

    The latest suppress / unsuppress of a key wins (ties broken by regulation
    id, which sorts by filing time); a key held by a DELETE_ONLY regulation
    not yet released is suppressed whatever the order the rows arrived in."""
    state = {}
    holds = {}
    released = set()
    for at_ms, rid, action, key in sorted(set(actions)):
        if action == ACTION_SUPPRESS:
            state[key] = True
        elif action == ACTION_UNSUPPRESS:
            state[key] = False
        elif action == ACTION_HOLD:
            holds.setdefault(key, set()).add(rid)
        elif action == ACTION_RELEASE:
            released.add((rid, key))
    keys = {k for k, on in state.items() if on}
    keys.update(k for k, rids in holds.items() if any((r, k) not in released for r in rids))
    return frozenset(keys)


@attr.s(slots=True)
class TableProgress:
    destination = attr.ib()
    table = attr.ib()
    rows_before = attr.ib(default=None)
    rows_after = attr.ib(default=None)
    mutation_done = attr.ib(default=False)

    def document(self):
        return {"destination": self.destination, "table": self.table, "rowsBefore": self.rows_before,
                "rowsAfter": self.rows_after, "mutationDone": self.mutation_done}


@attr.s(slots=True)
class Regulation:
    """One regulation as the journal tells it (subject ids only as keys)."""

    id = attr.ib()
    kind = attr.ib()
    subject_type = attr.ib()
    keys = attr.ib()              # tuple of subject_key values
    created_at = attr.ib()        # unix seconds
    admin = attr.ib(default=None)
    owner = attr.ib(default=None)  # "instance/worker" that executes it
    status = attr.ib(default=RUNNING)
    reason = attr.ib(default=None)
    finished_at = attr.ib(default=None)
    last_error = attr.ib(default=None)
    tables = attr.ib(factory=dict)   # (destination, table) -> TableProgress
    published = attr.ib(factory=set)  # destinations holding its rudder_regulations rows
    released = attr.ib(factory=set)   # destinations holding its release rows

    def document(self, iso):
        doc = {"id": self.id, "regulationType": self.kind, "subjectType": self.subject_type,
               "subjectCount": len(self.keys), "status": self.status, "createdAt": iso(self.created_at),
               "admin": self.admin}
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.finished_at is not None:
            doc["finishedAt"] = iso(self.finished_at)
        if self.last_error is not None and self.status == RUNNING:
            doc["lastError"] = self.last_error
        if self.kind in DELETING:
            doc["tables"] = [self.tables[k].document() for k in sorted(self.tables)]
        return doc

    def actions(self):
        """``(at_ms, regulation_id, action, key)`` rows this regulation contributes."""
        filed, ended = actions_of(self.kind, self.id)
        at = int(self.created_at * 1000)
        rows = [(at, self.id, filed, k) for k in self.keys]
        if ended is not None and self.status != RUNNING:
            end = int((self.finished_at or self.created_at) * 1000)
            rows += [(end, self.id, ended, k) for k in self.keys]
        return rows


class Ledger:
    """The fold of journal records: regulations by id and the suppressed keys.

    Applying a record twice leaves the same state, so a worker may re-read
    records it wrote itself."""

    def __init__(self):
        self.regulations = {}
        self.remote_actions = set()    # rows read from rudder_regulations tables
        self._suppressed = frozenset()
        self._dirty = False

    def apply(self, record):
        """Fold one journal record (unknown or malformed ones are ignored, False)."""
        try:
            kind = record["k"]
            rid = record["id"]
            if kind == "filed":
                if rid not in self.regulations:
                    self.regulations[rid] = Regulation(
                        id=rid, kind=record["type"], subject_type=record["subject_type"],
                        keys=tuple(record["keys"]), created_at=record["at"], admin=record.get("admin"),
                        owner=record.get("owner"))
                    self._dirty = True
                return True
            reg = self.regulations.get(rid)
            if reg is None:
                return False
            if kind == "table":
                progress = reg.tables.setdefault((record["dest"], record["table"]),
                                                 TableProgress(record["dest"], record["table"]))
                if "rows_before" in record and progress.rows_before is None:
                    progress.rows_before = record["rows_before"]
                if "rows_after" in record:
                    progress.rows_after = record["rows_after"]
                if record.get("done"):
                    progress.mutation_done = True
            elif kind == "state":
                if reg.status == RUNNING:
                    reg.status = record["status"]
                    reg.reason = record.get("reason")
                    reg.finished_at = record.get("at")
                    self._dirty = True
            elif kind == "published":
                (reg.released if record.get("release") else reg.published).add(record["dest"])
            elif kind == "error":
                reg.last_error = record.get("error")
            else:
                return False
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def add_remote(self, actions):
        before = len(self.remote_actions)
        self.remote_actions.update(actions)
        if len(self.remote_actions) != before:
            self._dirty = True

    def suppressed(self):
        if self._dirty:
            local = [a for reg in self.regulations.values() for a in reg.actions()]
            self._suppressed = suppressed_keys(local + list(self.remote_actions))
            self._dirty = False
        return self._suppressed

    def newest_first(self):
        return sorted(self.regulations.values(), key=lambda r: (r.created_at, r.id), reverse=True)
