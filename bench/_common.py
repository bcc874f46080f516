"""Shared benchmark helpers: the machine header, median/spread, and RESULTS.md sections. It
measures nothing itself; each benchmark's figures and command open its own file.

Each benchmark owns one section of ``bench/RESULTS.md`` between ``<!-- name -->`` and
``<!-- /name -->``; :func:`write_section` replaces only that section (or appends it), so
benchmarks can be rerun independently without touching each other's figures.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_TITLE = (
    "# Benchmark results\n\n"
    "Every figure here comes from a script in `bench/` that anyone can rerun; each section\n"
    "states the machine, versions, number of runs and spread (median, min-max).\n"
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_header(*, threads: int | None = None) -> str:
    """Markdown lines: CPU model and cores, torch threads, Python/torch versions, date, load."""
    import torch

    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    try:
        import torchvision

        versions += f", torchvision {torchvision.__version__}"
    except ImportError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores"
        + (f", torch.set_num_threads({threads})" if threads is not None else "")
        + f"; GPU: {gpu}",
        f"- Versions: {versions}; {platform.system()} {platform.release()}",
        f"- Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average at start (1, 5, 15 min): {load}",
    ]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], *, unit: str = "s", digits: int = 3) -> str:
    """``"median unit (min-max)"``, e.g. ``"0.412 s (0.398-0.450)"``."""
    return f"{median(values):.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, *, path: Path = RESULTS) -> None:
    """Put ``body`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path``.

    An existing section of that name is replaced; otherwise the section is appended. The
    rest of the file is kept byte for byte. The file is created with a title if missing.
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _TITLE
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end) :]
    else:
        if i >= 0 or j >= 0:
            raise ValueError(f"{path}: unbalanced markers for section {name!r}; fix them by hand.")
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def publish(name: str, body: str, *, write: bool = True, path: Path = RESULTS) -> int:
    """Print ``body`` and, unless ``write`` is false, put it in section ``name`` of
    ``path`` (bench/RESULTS.md); return 0, a bench script's exit status."""
    print(body)
    if write:
        write_section(name, body, path=path)
    return 0
