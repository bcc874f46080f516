#!/usr/bin/env bash
# GPU trials per hour by cohort size (bench/gpu_check.py says what it measures and its targets).
#
#   bench/gpu_check.sh [--device cuda|cpu] [--quick] [--skip 2,3]   (default: --device cuda, full)
#
# Evidence: none yet; it has not run on a GPU (bench/RESULTS.md holds no GPU figure). Prints
# 1. the environment, 2. trials per hour of a digits mlp study with 1, 2 and 4 trials per GPU,
# 3. trials per hour of MNIST-sized mlp and cnn trials in cohorts of 1, 4, 16 and 64, then a
# summary; about 8 minutes on one H100 or H200 (budgets: 300 s and 150 s). `--device cpu --quick`
# is the smoke run CI keeps working (tests/bench/test_gpu_check.py).
#
# Runs from a copied tree without an install: it cds to the repository root and puts it on
# PYTHONPATH. PYTHON selects the interpreter (default: .venv/bin/python if present, else
# python3); AUTOALL_COMMIT names the commit where the tree has no .git. With $OUT set, the report
# goes to $OUT/gpu_check.txt, the figures to $OUT/gpu_check.json and the whole output to
# $OUT/gpu_check.log. Exit status: 0 when every section ran (missed targets are reported, not
# failures), 1 when a section failed, 2 on bad arguments or no CUDA device.
#
# Wheels for the GPU machine (torch, numpy, scikit-learn, scipy, pyyaml, click, tqdm, packaging,
# typing-extensions and MarkupSafe are already there; section 2 runs `autoall study run
# --no-tracking`, which never imports mlflow). Only section 2 needs them; without them it prints
# "skipped" and the rest runs. Download once here, into the ignored .whl/ at the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0
#
# (5.4 MB; optuna needs alembic, colorlog, sqlalchemy; alembic needs Mako). When optuna is not
# importable and .whl/ holds wheels, this script installs them with pip --no-index --no-deps
# --target into a temporary folder. On the device machine: carry [".whl"], command
# `AUTOALL_COMMIT=<sha> bench/gpu_check.sh`, timeout_s 600; the figures come back in $OUT.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
  else
    PYTHON=python3
  fi
fi
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1

shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ((${#wheels[@]} > 0)) && ! "${PYTHON}" -c 'import optuna' 2>/dev/null; then
  site="${TMPDIR:-/tmp}/autoall-gpu-check-site"
  echo "installing ${#wheels[@]} carried wheels from .whl/ into ${site}"
  "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "${site}" "${wheels[@]}"
  export PYTHONPATH="${PYTHONPATH}:${site}"
fi

command_line="PYTHON=${PYTHON} bench/gpu_check.sh"
for arg in "$@"; do
  command_line+=" $(printf '%q' "${arg}")"
done
export GPU_CHECK_COMMAND="${command_line}"

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "${OUT}"
  echo "command: ${command_line} (in ${root})" | tee "${OUT}/gpu_check.log"
  "${PYTHON}" bench/gpu_check.py "$@" 2>&1 | tee -a "${OUT}/gpu_check.log"
else
  echo "command: ${command_line} (in ${root})"
  exec "${PYTHON}" bench/gpu_check.py "$@"
fi
