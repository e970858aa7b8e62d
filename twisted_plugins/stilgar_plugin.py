"""twistd plugin: ``twistd stilgar --config stilgar.yml [--listen tcp:8080]``."""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--config PATH] [--listen ENDPOINT]"
    longdesc = ("Run the Stilgar event collector. Without --config the file is "
                "$STILGAR_CONFIG, else the first of /etc/stilgar/stilgar.y(a)ml, /etc/withings/stilgar.y(a)ml, "
                "$XDG_CONFIG_HOME/stilgar/stilgar.y(a)ml, ./stilgar.y(a)ml.")
    optParameters = [
        ["config", "c", None, "Path of the YAML configuration file."],
        ["listen", "l", None, "Twisted endpoint to listen on (overrides server.ip/port), "
                              "e.g. tcp:8080:interface=127.0.0.1"],
        ["worker", None, None, "(internal, server.workers) index of this worker process."],
        ["worker-fd", None, None, "(internal, server.workers) inherited listening socket."],
    ]
    _internal = ("worker", "worker-fd")   # set by the parent process, not for operators

    def getUsage(self, width=None):
        shown, self.longOpt = self.longOpt, [o for o in self.longOpt
                                             if o.rstrip("=") not in self._internal]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = shown

    def opt_version(self):
        """Display Stilgar's, Python's and Twisted's versions and exit."""
        from stilgar.cli import versions
        print(versions())
        raise SystemExit(0)


@implementer(IServiceMaker, IPlugin)
class StilgarServiceMaker:
    tapname = "stilgar"
    description = "RudderStack-compatible event collector writing to ClickHouse."
    options = Options

    def makeService(self, options):
        # imported here so that twistd's plugin scan stays cheap
        from stilgar.launch import load_or_exit, make_process_service, twistd_logfile

        parent = getattr(options, "parent", None)
        if parent is not None and parent.get("syslog"):
            # our observer replaces twistd's, so its --syslog would be silently ignored
            sys.stderr.write("stilgar: twistd --syslog is not supported: set logging.syslog in the"
                             " configuration (udp or tcp, e.g. host: 127.0.0.1), or log to stdout"
                             " under systemd (the journal keeps it)\n")
            raise SystemExit(64)
        worker_fd = options["worker-fd"]
        # a worker's parent has already printed the warnings
        config = load_or_exit(options["config"], options["listen"], warnings=worker_fd is None)
        twist = _is_twist(parent)
        top = make_process_service(
            config, logfile=None if twist or parent is None else twistd_logfile(parent),
            stream=parent["logFile"] if twist else None,
            worker=int(options["worker"] or 0), worker_fd=None if worker_fd is None else int(worker_fd))
        if twist:
            _use_our_observer_under_twist(parent, top.observer)
        return top


def _is_twist(parent):
    """True under ``twist`` (its options hold the log file object), False under twistd."""
    return parent is not None and hasattr(parent, "selectDefaultLogObserver")


def _use_our_observer_under_twist(parent, observer):
    """``twist`` ignores the application's ILogObserver: have its runner start ours,
    which filters by logging.level itself (twist's --log-file chooses the stream)."""
    from twisted.logger import LogLevel

    parent["fileLogObserverFactory"] = lambda log_file: observer
    parent["logLevel"] = LogLevel.debug


serviceMaker = StilgarServiceMaker()
