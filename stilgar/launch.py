"""What this process runs, for the twistd plugin and ``stilgar.tac``.

One collector (:func:`stilgar.service.make_service`), the parent of
``server.workers`` (:func:`stilgar.workers.make_parent_service`), or one of
those workers: the same collector, listening on the socket its parent bound.
"""

import functools
import getopt
import os
import sys

from twisted.application import service
from twisted.logger import Logger

from .config import format_problems, load_config
from .logs import ProcessLog
from .service import AnnouncingEndpoint, check_enrich_files, make_service
from .units import ConfigError
from .workers import AdoptedSocketEndpoint, ParentWatchService, make_parent_service

__all__ = ["EX_CONFIG", "load_or_exit", "make_process_service", "make_worker_service", "make_application",
           "twistd_logfile", "tac_logfile"]

log = Logger(namespace="stilgar.workers")

EX_CONFIG = 78   # sysexits.h: a configuration error (the unit file does not restart on it)


def load_or_exit(path=None, listen=None, warnings=True, stderr=None):
    """Load the configuration, or print every problem (one line each, with its
    file and line) and exit with :data:`EX_CONFIG`. Runs before twistd
    daemonises, so stderr still reaches the operator; ``warnings`` are printed
    there too (and logged again at start)."""
    stderr = stderr or sys.stderr
    try:
        config = load_config(path, listen=listen)
        check_enrich_files(config)
    except ConfigError as e:
        for line in format_problems(e).splitlines():
            stderr.write(f"stilgar: configuration error: {line}\n")
        raise SystemExit(EX_CONFIG)
    if warnings:
        for warning in config.warnings:
            stderr.write(f"stilgar: configuration warning: {warning}\n")
    return config


def make_process_service(config, reactor=None, logfile=None, stream=None, worker=0, worker_fd=None):
    """The service tree of this process.

    ``logfile``: the file twistd was told to log to (``-`` or None: stdout);
    ``stream``: the log file object ``twist`` opened; ``worker_fd``: set in a
    worker of ``server.workers`` (its inherited listening socket).
    """
    if reactor is None:
        from twisted.internet import reactor
    process_log = ProcessLog.from_config(config.logging, reactor, logfile, stream)
    if worker_fd is not None:
        return make_worker_service(config, worker, worker_fd, reactor, process_log)
    if config.server.workers > 1:
        return make_parent_service(config, config.path, reactor, process_log, logfile=logfile)
    return make_service(config, reactor, process_log=process_log)


def _serving(index, port):
    log.info("worker {index} (pid {pid}) serving", index=index, pid=os.getpid())


def make_worker_service(config, index, fd, reactor, process_log):
    """The collector of worker ``index``, listening on the inherited socket ``fd``;
    it stops when its parent is gone."""
    endpoint = AnnouncingEndpoint(AdoptedSocketEndpoint(reactor, fd), f"inherited socket {fd}", reactor,
                                  functools.partial(_serving, index))
    top = make_service(config, reactor, endpoint, worker=index, process_log=process_log)
    ParentWatchService(reactor).setServiceParent(top)
    return top


def twistd_logfile(options):
    """Where twistd logs, from its options (a mapping): ``--logfile``, else
    ``twistd.log`` when it daemonises, as twistd itself does; None (or ``-``):
    stdout. Our observer replaces twistd's, so it must write there itself."""
    logfile = options.get("logfile")
    if logfile is None and not options.get("nodaemon"):
        logfile = "twistd.log"
    return logfile


def tac_logfile(argv):
    """:func:`twistd_logfile` for ``twistd -y stilgar.tac``, whose options a .tac
    cannot see: read again from its command line (``argv`` without the program),
    with twistd's own option table, and none of its handlers run (``--reactor``
    would install a reactor). None when the command line is not ``twistd -y``."""
    from twisted.scripts.twistd import ServerOptions
    table = ServerOptions()
    try:
        pairs, _ = getopt.getopt(argv, table.shortOpt, table.longOpt)
    except getopt.GetoptError:
        return None
    takes_value = {name[:-1] for name in table.longOpt if name.endswith("=")}
    options = {}
    for flag, value in pairs:
        name = table.synonyms.get(flag.lstrip("-"))    # short and long names -> the long one
        if name is not None:
            options[name] = value if name in takes_value else True
    if not options.get("python"):
        return None
    return twistd_logfile(options)


def make_application(path=None, listen=None, argv=None):
    """An ``Application`` for ``twistd -y stilgar.tac``; ``argv``: twistd's command
    line without the program (default ``sys.argv[1:]``), read for its ``--logfile``."""
    config = load_or_exit(path, listen)
    try:
        top = make_process_service(config, logfile=tac_logfile(sys.argv[1:] if argv is None else argv))
    except Exception as e:
        sys.stderr.write(f"stilgar: cannot start: {e}\n")
        raise SystemExit(1)
    application = service.Application("stilgar")
    top.setServiceParent(application)
    return application
