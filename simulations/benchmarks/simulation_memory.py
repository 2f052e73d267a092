"""Peak resident memory of a whole simulation process tree (CLI, Ray, every worker).

Runs ``fedrec simulate`` in a child process and samples the summed RSS of it and all
its descendants every half second (psutil: ``pip install -e '.[bench]'``).

    python -m simulations.benchmarks.simulation_memory -- \
        --config simulations/configs/amazon-beauty/sasrec-local-adam.toml --data-dir ../shared/datasets --rounds 2

Everything after ``--`` goes to ``fedrec simulate``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def main() -> int:
    arguments = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "server.cli", "simulate", *arguments])
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.5)
    result = {"exit_code": child.returncode, "peak_rss_gib": peak / 2**30,
              "wall_seconds": time.perf_counter() - started, "arguments": arguments}
    print(json.dumps(result, indent=2))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
