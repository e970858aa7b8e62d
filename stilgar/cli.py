"""The ``stilgar`` command: the operator's tool beside twistd (doc/operations.md).

``stilgar check [CONFIG] [--connect]``, ``stilgar version`` (or ``--version``),
``stilgar spool PATH``, ``stilgar regulations file|show|list|journal`` (doc/privacy.md). Exit statuses follow sysexits.h: 0 good, 64 usage,
66 no such spool, 69 a destination unreachable, 78 a configuration error.
"""

import argparse
import json
import os
import platform
import sys
import urllib.parse

import attr

from . import __version__

__all__ = ["main", "versions", "inspect_spool", "EX_OK", "EX_USAGE", "EX_NOINPUT", "EX_UNAVAILABLE",
           "EX_CONFIG"]

EX_OK, EX_USAGE, EX_NOINPUT, EX_UNAVAILABLE, EX_CONFIG = 0, 64, 66, 69, 78


def versions():
    """``Stilgar 0.1.0, Python 3.11.2 (cpython), Twisted 23.10.0``."""
    import twisted
    return (f"Stilgar {__version__}, Python {platform.python_version()} ({sys.implementation.name}),"
            f" Twisted {twisted.__version__}")


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------

def check(path, out, err, connect=False, environ=os.environ):
    """Read the configuration exactly as the server would; print every problem."""
    from .config import find_config_file, format_problems, load_config
    from .units import ConfigError

    try:
        path = find_config_file(path, environ)
        config = load_config(path, environ=environ)
    except ConfigError as e:
        for line in format_problems(e).splitlines():
            err.write(f"{line}\n")
        return EX_CONFIG
    for warning in config.warnings:
        err.write(f"{path}: warning: {warning}\n")
    names = ", ".join(d.name for d in config.destinations)
    out.write(f"{path}: OK ({len(config.destinations)} destination(s): {names})\n")
    if not connect:
        return EX_OK
    return _connect_all(config, out, err)


def _connect_all(config, out, err):
    """Probe each destination whose type can (``probe(settings, reactor)``)."""
    from twisted.internet import defer, task

    from .destinations import destination_type

    results = []

    @defer.inlineCallbacks
    def run(reactor):
        for dest in config.destinations:
            probe = getattr(destination_type(dest.type), "probe", None)
            if probe is None:
                out.write(f"{dest.name}: nothing to connect to ({dest.type})\n")
                continue
            try:
                text = yield probe(dest.settings, reactor)
            except Exception as e:
                err.write(f"{dest.name}: cannot connect: {e}\n")
                results.append(False)
            else:
                out.write(f"{dest.name}: connected: {text}\n")
                results.append(True)

    try:
        task.react(run, [])
    except SystemExit as e:
        if e.code:
            return EX_UNAVAILABLE
    return EX_OK if all(results) else EX_UNAVAILABLE


# --------------------------------------------------------------------------
# spool
# --------------------------------------------------------------------------

@attr.s(auto_attribs=True)
class SegmentInfo:
    number: int
    bytes: int
    records: int = 0
    events: int = 0
    problem: str = None   # the first bad record, or a bad header


@attr.s(auto_attribs=True)
class CursorInfo:
    name: str
    segment: int
    offset: int
    backlog_records: int = 0
    backlog_events: int = 0
    backlog_bytes: int = 0
    oldest_received_at: str = None


@attr.s(auto_attribs=True)
class SpoolInfo:
    path: str
    segments: list
    cursors: list
    problems: list        # texts: bad headers, bad records, unreadable cursors, set-aside files
    locked_by: str = None

    @property
    def bytes(self):
        return sum(s.bytes for s in self.segments)


def inspect_spool(path):
    """What a spool directory holds, read-only (no lock taken, nothing written).

    Safe while the server runs: a record the writer is appending at that moment
    may show as a torn tail of the newest segment, which is reported as such."""
    from .spool.survey import survey

    found = survey(path)
    problems = [f"{n}: set aside at start-up after a bad header (kept for inspection)" for n in found.set_aside]
    cursors = [CursorInfo(name, pos.segment, pos.offset) for name, pos in found.cursors]
    problems += [f"{urllib.parse.unquote(n)}: unreadable cursor ({e})" for n, e in found.cursor_errors]
    segments = []
    for number, size, records in found.segments():
        info = SegmentInfo(number, size)
        segments.append(info)
        if records is None:
            info.problem = "bad segment header"
            continue
        _count_records(info, records, number == found.numbers[-1], cursors, problems)
        if info.problem:
            problems.append(f"segment {number}: {info.problem}")
    return SpoolInfo(path, segments, cursors, problems, found.locked_by)


def _count_records(info, records, newest, cursors, problems):
    """Count a segment's records and events into ``info`` and the backlog of every cursor."""
    from .forwarder import Record
    from .spool import REC_OVERHEAD, Position

    for offset, payload, bad in records:
        if bad is not None:
            info.problem = str(bad) + (
                "; the newest segment: normal while the server is writing" if newest else "")
            break
        info.records += 1
        try:
            events = Record.decode(payload, None, None).events
        except (ValueError, KeyError, TypeError):
            events = []
            problems.append(f"segment {info.number} offset {offset}: record is not a request")
        info.events += len(events)
        here = Position(info.number, offset)
        for cursor in cursors:
            if here >= Position(cursor.segment, cursor.offset):
                cursor.backlog_records += 1
                cursor.backlog_events += len(events)
                cursor.backlog_bytes += len(payload) + REC_OVERHEAD
                if cursor.oldest_received_at is None and events:
                    cursor.oldest_received_at = events[0].get("receivedAt")


def _spool_directories(path):
    """The spool directories under ``path``: itself, or its ``worker-<i>`` children."""
    if any(n.endswith(".seg") or n.endswith(".cursor") for n in os.listdir(path)):
        return [path]
    workers = sorted((n for n in os.listdir(path) if n.startswith("worker-")
                      and os.path.isdir(os.path.join(path, n))),
                     key=lambda n: (len(n), n))
    return [os.path.join(path, n) for n in workers] or [path]


def spool(path, out, err, as_json=False):
    if not os.path.isdir(path):
        err.write(f"{path}: not a directory\n")
        return EX_NOINPUT
    infos = [inspect_spool(d) for d in _spool_directories(path)]
    if as_json:
        out.write(json.dumps([attr.asdict(i) for i in infos], indent=2) + "\n")
        return EX_OK
    for info in infos:
        out.write(f"{info.path}: {len(info.segments)} segment(s), {info.bytes} bytes, "
                  f"{sum(s.records for s in info.segments)} record(s), "
                  f"{sum(s.events for s in info.segments)} event(s)"
                  + (f"; lock holds pid {info.locked_by}" if info.locked_by else "") + "\n")
        for s in info.segments:
            out.write(f"  segment {s.number}: {s.bytes} bytes, {s.records} record(s), {s.events} event(s)"
                      + (f"; {s.problem}" if s.problem else "") + "\n")
        for c in info.cursors:
            out.write(f"  destination {c.name}: cursor {c.segment}:{c.offset}, backlog {c.backlog_events}"
                      f" event(s) in {c.backlog_records} record(s), {c.backlog_bytes} bytes"
                      + (f", oldest received {c.oldest_received_at}" if c.oldest_received_at else "") + "\n")
        if not info.cursors:
            out.write("  no destination cursor yet (everything is backlog)\n")
        for problem in info.problems:
            out.write(f"  problem: {problem}\n")
    return EX_OK


# --------------------------------------------------------------------------
# regulations
# --------------------------------------------------------------------------

def _admin_target(args, environ):
    """(base URL, user, password) of the running collector's admin API: given
    on the command line, else read from its configuration (loopback, port,
    server.admin)."""
    from .config import find_config_file, load_config
    user, password = args.user, environ.get(args.password_env) if args.password_env else None
    url = args.url
    if url is None or user is None:
        config = load_config(find_config_file(args.config, environ), environ=environ)
        server = config.server
        if url is None:
            host = server.ip if server.ip not in ("0.0.0.0", "::", "") else "127.0.0.1"
            url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}{server.path_prefix or ''}"
        if user is None and server.admin.username is not None:
            user, password = server.admin.username, password if password is not None else server.admin.password
    return url, user, password


def regulations(args, out, err, environ=os.environ):
    from .regulations.commands import (AdminError, file_regulation, journal_regulations, list_regulations,
                                       show_regulation)
    from .regulations.model import BadRegulation
    from .units import ConfigError
    try:
        if args.action == "journal":
            from .config import find_config_file, load_config
            # the journal is shared by the workers: <spool.path>/regulations/journal.jsonl
            path = args.spool or load_config(find_config_file(args.config, environ), environ=environ).spool.path
            out.write(json.dumps(journal_regulations(path), indent=2) + "\n")
            return EX_OK
        url, user, password = _admin_target(args, environ)
        if args.action == "file":
            result = file_regulation(url, args.type, args.subject_type, args.ids, user, password)
        elif args.action == "show":
            result = show_regulation(url, args.id, user, password)
        else:
            result = list_regulations(url, user, password)
    except (ConfigError, BadRegulation, AdminError, OSError) as e:
        err.write(f"stilgar: {e}\n")
        exits = ((ConfigError, EX_CONFIG), (BadRegulation, EX_USAGE), (AdminError, EX_UNAVAILABLE),
                 (OSError, EX_NOINPUT))
        return next(code for kind, code in exits if isinstance(e, kind))
    out.write(json.dumps(result, indent=2) + "\n")
    return EX_OK


def _regulations_parser(commands):
    p = commands.add_parser("regulations", help="file, follow and list privacy regulations (doc/privacy.md)",
                            description="Talk to a running collector's admin API (/v1/regulations); its URL"
                                        " and admin credentials are read from its configuration unless given.")
    p.add_argument("--config", help="the collector's configuration (default: as the server finds it)")
    p.add_argument("--url", help="the collector's base URL (default: loopback, the configured port)")
    p.add_argument("--user", help="admin user (default: server.admin.username)")
    p.add_argument("--password-env", metavar="VAR", help="the environment variable holding the admin password")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = actions.add_parser("file", help="file a regulation; prints its id and status")
    f.add_argument("type", choices=["SUPPRESS", "UNSUPPRESS", "SUPPRESS_WITH_DELETE", "DELETE_ONLY"])
    f.add_argument("subject_type", choices=["USER_ID", "ANONYMOUS_ID"])
    f.add_argument("ids", nargs="+", metavar="ID")
    s = actions.add_parser("show", help="one regulation: status, rows found per table, mutations done")
    s.add_argument("id")
    actions.add_parser("list", help="every regulation, newest first")
    j = actions.add_parser("journal", help="read the local regulation journal (works while the collector is down)")
    j.add_argument("--spool", help="spool.path (default: from the configuration)")


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(
        prog="stilgar", description="Stilgar, the RudderStack-compatible event collector: operator's tool. "
                                    "Run the server with: twistd -n stilgar --config PATH")
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = commands.add_parser("check", help="check a configuration file (exit 0 valid, 78 invalid)",
                            description="Read the configuration exactly as the server would (without"
                                        " CONFIG: $STILGAR_CONFIG, then the search path) and print every"
                                        " problem with its line.")
    p.add_argument("config", nargs="?", help="the file (default: as the server finds it)")
    p.add_argument("--connect", action="store_true",
                   help="also connect to each destination (ClickHouse: SELECT version()); exit 69 if one fails")
    commands.add_parser("version", help="print Stilgar's, Python's and Twisted's versions")
    p = commands.add_parser("spool", help="what a spool directory holds (read-only, safe while running)")
    p.add_argument("path", help="spool.path, or one worker-<i> directory of it")
    p.add_argument("--json", action="store_true", help="print JSON")
    _regulations_parser(commands)
    return parser


def main(argv=None, out=None, err=None, environ=None):
    out, err = out or sys.stdout, err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else EX_OK
    if args.version or args.command == "version":
        out.write(versions() + "\n")
        return EX_OK
    if args.command == "check":
        return check(args.config, out, err, connect=args.connect,
                     environ=os.environ if environ is None else environ)
    if args.command == "spool":
        return spool(args.path, out, err, as_json=args.json)
    if args.command == "regulations":
        return regulations(args, out, err, environ=os.environ if environ is None else environ)
    parser.print_usage(err)
    return EX_USAGE


def run():
    """The console script's entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
