"""`make bench`: run every CPU benchmark in turn; each writes its own section of RESULTS.md.

bench_core.py: the data path; bench_study.py: the platform's overhead per trial against a
hand-written Optuna loop; bench_report.py: the report's wall time. Each opens with what it
measures, its command and its current figures. The GPU check, trials per hour by cohort size,
is separate: `bench/gpu_check.sh` on a GPU machine.

    make bench    # or: .venv/bin/python bench/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_core.py", "bench_study.py", "bench_report.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        start = time.monotonic()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / name)], cwd=HERE.parent)
        print(f"== {name}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"figures: {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
