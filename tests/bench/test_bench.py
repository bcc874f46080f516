"""bench/: every benchmark script starts (its imports resolve against this checkout's autoall,
its options parse) and opens with its evidence, and the shared tail that prints a figure and
writes it to RESULTS.md."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


def _load(name: str) -> ModuleType:
    """A module of bench/ (no package: its files import each other by name from bench/)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_starts_and_lists_its_options(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


@pytest.mark.parametrize("script", [*SCRIPTS, "gpu_check.py"])
def test_every_benchmark_opens_with_its_evidence_and_command(script: str) -> None:
    """What it measures, its current figures (or that it has none yet) and the command."""
    doc = ast.get_docstring(ast.parse((ROOT / "bench" / script).read_text())) or ""
    head = doc.split("\n\n")[1]
    assert head.startswith("Evidence"), f"bench/{script}: open with the evidence, not {head!r}"
    assert "bench/RESULTS.md" in head
    assert f"bench/{script}" in doc or "bench/gpu_check.sh" in doc  # the command


def test_make_bench_runs_every_bench_script() -> None:
    assert sorted(_load("run_all").BENCHMARKS) == SCRIPTS


def test_publish_prints_the_figure_and_writes_it_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = _load("_common")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- other -->\nkept\n<!-- /other -->\n")

    assert common.publish("bench_x", "## X\n1.5x", write=False, path=results) == 0
    assert "## X\n1.5x" in capsys.readouterr().out
    assert "bench_x" not in results.read_text()

    assert common.publish("bench_x", "## X\n2.0x", path=results) == 0
    assert "2.0x" in capsys.readouterr().out
    text = results.read_text()
    assert "<!-- bench_x -->\n## X\n2.0x\n<!-- /bench_x -->" in text
    assert "<!-- other -->\nkept\n<!-- /other -->" in text
