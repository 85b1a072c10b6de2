"""Running a benchmark step as its own process: wall time and that process's peak RSS.

No torch here: on Linux a child's peak RSS starts from its parent's, so the parent stays lean.
"""

from __future__ import annotations

import os
import subprocess
import time


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a command; return its wall time and the peak RSS of that one process (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3)}
