"""The value checks every configuration section uses, the core's and each destination's.

Pure: no reactor, no I/O except reading a ``*_file`` secret. A check takes the
value read from YAML and the dotted key naming it, and returns the value in
its final type or raises :class:`~stilgar.units.ConfigError`. :class:`Block`
reads one section (a mapping) with them and *collects* every problem, unknown
keys included, so that an operator sees all of them at once (doc/configuration.md).
"""

import difflib
import ipaddress
import re

from .units import ConfigError, ConfigProblems, parse_duration, parse_size

__all__ = [
    "Block", "show", "join", "mapping", "sequence", "string", "integer", "positive_int", "port",
    "boolean", "duration", "size", "choice", "ip_address", "network", "networks", "unknown_key",
    "interpolate", "read_text", "read_secret_file",
]


def show(value):
    """``repr(value)``, cut to one short line for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def join(where, key):
    return f"{where}.{key}" if where else str(key)


def mapping(value, key):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping of keys, got {show(value)}")
    return value


def sequence(value, key):
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, got {show(value)}")
    return value


def string(value, key, allow_empty=False):
    """A text. A YAML number is taken as written (``0123`` stays ``"0123"``, not
    YAML 1.1's octal 83); a boolean or a null is refused (quote it)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(key, f"expected a string (quote it in YAML), got {show(value)}")
    if isinstance(value, (int, float)):
        value = getattr(value, "yaml_text", None) or str(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {show(value)}")
    if not allow_empty and not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def integer(value, key, minimum=None, maximum=None):
    """An integer, also given as a decimal string (``"8080"``, ``${PORT}``)."""
    if isinstance(value, str) and _INT_RE.match(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {show(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum}, got {value}")
    return int(value)


def positive_int(value, key):
    return integer(value, key, minimum=1)


def port(value, key):
    return integer(value, key, minimum=1, maximum=65535)


# The one rule for booleans: YAML's true/false, or one of these words (any case).
# Numbers (1, 0, "1") are refused: they read as counts more than as switches.
_BOOL_TEXTS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def boolean(value, key):
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXTS:
        return _BOOL_TEXTS[value.strip().lower()]
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {show(value)}")
    return value


def duration(value, key, allow_zero=False):
    """Seconds from a humantime text (``5s``, ``1h 30m``); more than 0 unless ``allow_zero``."""
    seconds = parse_duration(value, key)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'at least' if allow_zero else 'more than'} 0s, got {value!r}")
    return seconds


def size(value, key, allow_zero=False):
    """Bytes from ``64KiB``, ``1MB``, ``512``; more than 0 unless ``allow_zero``."""
    count = parse_size(value, key)
    if count == 0 and not allow_zero:
        raise ConfigError(key, f"must be more than 0 bytes, got {value!r}")
    return count


def choice(value, key, choices, aliases=None):
    """One of ``choices`` (case-insensitive), after ``aliases`` (``{alias: choice}``)."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {show(value)}")
    text = value.strip().lower()
    text = (aliases or {}).get(text, text)
    if text not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {show(value)}")
    return text


def ip_address(value, key):
    text = string(value, key).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP address (e.g. 0.0.0.0 or ::)") from None


def network(value, key):
    """A CIDR network or a bare IP (a /32 or /128); host bits are allowed."""
    text = string(value, key).strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not an IP network (e.g. 10.0.0.0/8 or 192.0.2.1)") from None


def networks(value, key):
    items = [network(v, f"{key}[{i}]") for i, v in enumerate(sequence(value, key))]
    return tuple(dict.fromkeys(items))


def unknown_key(where, key, known):
    """The problem for a key no section knows, naming the nearest known one."""
    problem = "unknown key"
    if isinstance(key, str):
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        if near:
            problem += f"; did you mean {near[0]!r}?"
    return ConfigError(join(where, key), problem)


# ${VAR} and ${VAR:-default}; $$ is a literal $
_REFERENCE_RE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def interpolate(text, key, environ):
    """``text`` with ``${VAR}`` / ``${VAR:-default}`` replaced from ``environ``.

    ``$$`` stands for ``$``; any other ``$`` is kept as is. An unset variable
    without a default is a problem naming it; ``:-`` also applies to an empty one (as sh)."""
    if "$" not in text:
        return text

    def replace(m):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            raise ConfigError(key, f"environment variable {name} is not set"
                                   f" (give a default with ${{{name}:-default}})")
        return value
    return _REFERENCE_RE.sub(replace, text)


def read_text(path, key, what, encoding="utf-8"):
    """The text of file ``path``; a failure is a ConfigError on ``key`` naming ``what``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {what}: {e.strerror or e}") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ConfigError(key, f"{what} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_secret_file(value, key):
    """The content of the file named by a ``*_file`` key, without one final newline."""
    path = string(value, key).strip()
    text = read_text(path, key, path)
    return text[:-1] if text.endswith("\n") else text


class Block(dict):
    """One section's mapping, read key by key, every problem collected.

    ``known``: every key the section accepts (unknown ones are problems, with
    the nearest known key suggested). For a key listed in ``secrets``, the
    section also accepts ``<key>_file``: the name of a file holding the value
    (Docker/Kubernetes secrets, systemd credentials). :meth:`done` raises the
    problems found, all at once."""

    def __init__(self, data, where, known, secrets=()):
        super().__init__(mapping(data, where))
        self.where = where
        self.secrets = frozenset(secrets)
        self.problems = []
        accepted = set(known) | {f"{s}_file" for s in self.secrets}
        for key in self:
            if key not in accepted or not isinstance(key, str):
                self.problems.append(unknown_key(where, key, accepted))

    def key(self, key):
        return join(self.where, key)

    def given(self, key):
        return self.get(key) is not None or (key in self.secrets and self.get(f"{key}_file") is not None)

    def take(self, key, check, default=None, required=False):
        """``check(value, dotted key)`` of ``key``'s value; ``default`` when absent or null
        (a problem when ``required``) or when the value is wrong (the problem is kept)."""
        try:
            value = self.get(key)
            if key in self.secrets and self.get(f"{key}_file") is not None:
                if value is not None:
                    raise ConfigError(self.key(key), f"give either {key} or {key}_file, not both")
                file_key = f"{key}_file"
                value = read_secret_file(self[file_key], self.key(file_key))
                return check(value, self.key(file_key))
            if value is None:
                if required:
                    raise ConfigError(self.key(key), "required")
                return default
            return check(value, self.key(key))
        except ConfigError as e:
            self.problems.extend(getattr(e, "problems", [e]))
            return default

    def problem(self, key, text):
        self.problems.append(ConfigError(self.key(key), text))

    def done(self):
        """Raise every problem found (one :class:`ConfigProblems`), if any."""
        if self.problems:
            raise ConfigProblems(self.problems)
