#!/usr/bin/env bash
# The GPU check of issue 7: is autoall's trial path close to the hardware?
#
#   bench/gpu_check.sh [--device cuda|cpu] [--quick]      (default: --device cuda, full)
#
# Prints five labelled sections (bench/gpu_check.py runs them; each experiment has its file,
# bench/gpu_precision.py, gpu_paths.py, gpu_trials.py, gpu_utilisation.py): 1. environment,
# 2. fp32 vs bf16 + channels_last through train() for cnn and resnet18 on CIFAR-10-shaped
# synthetic data, 3. autoall's trial path vs a hand-written loop vs the article's DataLoader
# loop (cnn), 4. trials per hour of the digits mlp with 1, 2 and 4 trials per GPU, 5. GPU
# utilisation; then a summary. Then section 6 (bench/gpu_cohort.py, issue 14): trials per hour
# of MNIST-sized mlp and cnn trials in cohorts of 1, 4, 16 and 64 (--skip 6 leaves it out).
# The first five are sized for issue 7's budget of 8 minutes on one H100 or H200 (section 4
# leaves out settings that would overrun 7.5 minutes), section 6 for 150 s more: give the
# command timeout_s 600. Neither has run on a GPU yet. `--device cpu --quick` is the smoke test
# CI runs (tests/bench/test_gpu_check.py).
#
# Runs from a copied tree without an install: it cds to the repository root and puts it on
# PYTHONPATH. PYTHON selects the interpreter (default: .venv/bin/python if present, else
# python3); AUTOALL_COMMIT names the commit where the tree has no .git. With $OUT set, the
# report goes to $OUT/gpu_check.txt (section 6: gpu_cohort.txt), the figures to
# $OUT/gpu_check.json (gpu_cohort.json) and the whole output to $OUT/gpu_check.log. Exit
# status: 0 when every section ran (missed targets are reported, not failures), 1 when a section
# failed, 2 on bad arguments or no CUDA device.
#
# Wheels for the GPU machine (torch, numpy, scikit-learn, scipy, pyyaml, click, tqdm, packaging,
# typing-extensions and MarkupSafe are already there; section 4 runs `autoall study run
# --no-tracking`, which never imports mlflow, so mlflow is not needed). Only section 4 needs
# them; without them it prints "skipped" and the rest runs. Download once here, into the
# ignored .whl/ at the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0
#
# (5.4 MB; optuna needs alembic, colorlog, sqlalchemy; alembic needs Mako; alembic and
# SQLAlchemy also need typing-extensions >= 4.12, which the machine's torch brings). When
# optuna is not importable and .whl/ holds wheels, this script installs them with
# pip --no-index --no-deps --target into a temporary folder. On the device machine: carry
# [".whl"], command `AUTOALL_COMMIT=<sha> bench/gpu_check.sh`, timeout_s 540; the figures come
# back in $OUT.
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

# Section 6 (bench/gpu_cohort.py, issue 14) takes --device and --quick too; --skip 6 leaves it out.
cohort_args=()
skip=""
expect=""
for arg in "$@"; do
  case "${expect}" in
    device) cohort_args+=(--device "${arg}"); expect=""; continue ;;
    skip) skip="${arg}"; expect=""; continue ;;
  esac
  case "${arg}" in
    --device) expect=device ;;
    --device=*) cohort_args+=(--device "${arg#--device=}") ;;
    --quick) cohort_args+=(--quick) ;;
    --skip) expect=skip ;;
    --skip=*) skip="${arg#--skip=}" ;;
  esac
done
run_cohorts=1
if [[ ",${skip// /}," == *",6,"* ]]; then
  run_cohorts=0
fi

status=0
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "${OUT}"
  echo "command: ${command_line} (in ${root})" | tee "${OUT}/gpu_check.log"
  "${PYTHON}" bench/gpu_check.py "$@" 2>&1 | tee -a "${OUT}/gpu_check.log" || status=$?
  if ((status != 2 && run_cohorts)); then
    "${PYTHON}" bench/gpu_cohort.py "${cohort_args[@]}" 2>&1 | tee -a "${OUT}/gpu_check.log" \
      || status=$((status > 0 ? status : $?))
  fi
else
  echo "command: ${command_line} (in ${root})"
  "${PYTHON}" bench/gpu_check.py "$@" || status=$?
  if ((status != 2 && run_cohorts)); then
    "${PYTHON}" bench/gpu_cohort.py "${cohort_args[@]}" || status=$((status > 0 ? status : $?))
  fi
fi
exit "${status}"
