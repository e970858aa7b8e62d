"""Instructions a command executes, counted by callgrind (apt-get install valgrind).

The benches' steady measure: unlike CPU time it does not move with the machine's
load. String hashes are fixed (``PYTHONHASHSEED=0``): random ones move dict probes
by about 2 %.
"""

import os
import re
import subprocess
import sys
import tempfile

__all__ = ["instructions"]


def instructions(script, *args):
    """Instructions executed by ``python script args...`` (every thread), as callgrind counts them."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable,
             os.path.abspath(script), *map(str, args)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"valgrind failed:\n{proc.stderr[-2000:]}")
    return int(m.group(1))
