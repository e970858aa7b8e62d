"""Parsing of the configuration's size and duration syntax, and the config error.

Pure functions, shared by the core configuration and by every destination type
(each destination validates its own settings block).
"""

import re
from fractions import Fraction

__all__ = ["ConfigError", "ConfigProblems", "parse_size", "parse_duration"]


class ConfigError(Exception):
    """A configuration value is wrong; ``str()`` is one line naming the key."""

    def __init__(self, key, problem):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.line = None  # the YAML line the key is on, when known (set by stilgar.config)
        self.path = None  # the file, when known (set by stilgar.config)

    @property
    def problems(self):
        return [self]

    def located(self, path=None):
        """``path:line: key: problem`` (as compilers write), parts unknown left out."""
        where = ":".join(str(p) for p in (path, self.line) if p is not None)
        return f"{where}: {self}" if where else str(self)


class ConfigProblems(ConfigError):
    """Several configuration problems found at once; ``problems`` lists them in file order.

    ``str()`` is one line per problem; ``key`` and ``problem`` are the first one's."""

    def __init__(self, problems):
        flat = [p for error in problems for p in error.problems]
        super().__init__(flat[0].key, flat[0].problem)
        self.line = flat[0].line
        self._problems = flat
        self.args = ("\n".join(str(p) for p in flat),)

    def __str__(self):
        return "\n".join(str(p) for p in self._problems)

    @property
    def problems(self):
        return list(self._problems)

    def located(self, path=None):
        return "\n".join(p.located(path) for p in self._problems)


# As the original (Rust `byte_unit`, case-sensitive 'b'): KiB/MiB (or Ki/Mi) are
# powers of 1024, KB/MB and a bare K/M powers of 1000; a lowercase final 'b'
# means bits (64kb = 8000 bytes). A fractional result is floored to whole bytes.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "PB": 1000**5,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4, "PIB": 1024**5,
    "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4, "PI": 1024**5,
    "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5,
}


def parse_size(value, key="size"):
    """Return a byte count from an int or a text such as ``64KiB``, ``1MB``, ``512``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size such as 4MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, "a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a size such as 4MiB, got {value!r}")
    m = _SIZE_RE.match(value)
    if not m:
        raise ConfigError(key, f"cannot read {value!r} as a size (e.g. 64KiB, 1MB, 512)")
    number, unit = m.groups()
    bits = unit.endswith("b")
    norm = unit[:-1] + "B" if bits else unit
    factor = _SIZE_UNITS.get(norm.upper())
    if factor is None:
        raise ConfigError(key, f"unknown size unit {unit!r} in {value!r}")
    # exact arithmetic: float("2.01") * 1000 is 2009.999..., which int() floors to 2009
    size = Fraction(number) * factor
    if bits:
        size /= 8
    return int(size)


# humantime's units (case-sensitive there; here case-insensitive, except that
# a capital ``M`` is a month as in humantime, while ``m`` is a minute)
_MONTH = 2_630_016  # 30.44 days, as humantime
_YEAR = 31_557_600  # 365.25 days, as humantime
_DURATION_UNITS = {
    "ns": 1e-9, "nsec": 1e-9, "nanos": 1e-9,
    "us": 1e-6, "usec": 1e-6, "micros": 1e-6,
    "ms": 1e-3, "msec": 1e-3, "millis": 1e-3,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "month": _MONTH, "months": _MONTH,
    "y": _YEAR, "year": _YEAR, "years": _YEAR,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)")


def parse_duration(value, key="duration"):
    """Return seconds from a humantime text (``5s``, ``1m``, ``1h 30m``; a unit is required)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ConfigError(key, f"expected a duration such as 5s or 1h 30m, got {value!r}")
    text = value.strip()
    if not text:
        raise ConfigError(key, "empty duration")
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(text):
        if text[pos:m.start()].strip():
            break
        unit = m.group(2)
        factor = _MONTH if unit == "M" else _DURATION_UNITS.get(unit.lower())
        if factor is None:
            raise ConfigError(key, f"unknown duration unit {unit!r} in {value!r}")
        total += float(m.group(1)) * factor
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ConfigError(key, f"cannot read {value!r} as a duration (e.g. 5s, 1m, 1h 30m)")
    return total
