"""Run a command and record its peak resident memory: ``python bench/peak_rss.py RESULT.json -- CMD ...``.

Why a separate launcher: Linux's ``ru_maxrss`` for a child is the largest
resident size of any memory map the child *had*, and that includes the
parent's own, copied or shared at fork and dropped at ``exec``. A child
started from a bench process holding gigabytes (the ANN vectors, say) would
report gigabytes whatever it did. This script is started fresh (about 10 MiB),
starts the command from there, and reads the command's ``ru_maxrss`` with
``os.wait4``, so the number is the command's own peak plus at most the
launcher's ~10 MiB.

It imports nothing from graft or bench (it runs as a plain script) and
exits with the command's exit code. RESULT.json gets
``{"returncode", "peak_rss_kib", "wall_s"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python bench/peak_rss.py RESULT.json -- CMD [ARG ...]", file=sys.stderr)
        return 2
    result_path, cmd = argv[0], argv[2:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    result = {"returncode": proc.returncode, "peak_rss_kib": usage.ru_maxrss,  # Linux: KiB
              "wall_s": time.perf_counter() - t0}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
