#!/usr/bin/env bash
# Device check on one NVIDIA H100/H200, in at most about 8 minutes (DEVICE_CHECK_BUDGET_S=450):
#   1. nvidia-smi, Python/JAX/cuDNN/Flax versions;
#   2. train-step throughput of gpt2_small at vocab 50,257, batch 64 x 1024, bf16, 10 timed steps,
#      one process per variant (so each peak-memory figure is its own):
#      attention auto (cuDNN) | attention xla | auto with XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
#      | auto with model.remat=full (last, if time is left);
#   3. the test suite: pytest -x -q -n 4 (without -n when pytest-xdist is missing), time-limited.
# Every piece runs under `timeout`, capped by the time left; skipped pieces and non-zero exits are
# listed at the end (the script's exit status is 1 when any piece failed). Output is tee'd into
# $OUT/device_check.log when $OUT is set.
#
#   bash benchmarks/device_check.sh              # on the device machine, from the repository root
#   bash benchmarks/device_check.sh --download   # here: fetch the wheels the device image lacks into .whl/
#
# The device image has Python 3.12, jax 0.11 (CUDA 13), flax, optax, orbax-checkpoint, tokenizers,
# absl-py, etils, numpy, scipy, matplotlib, tqdm, threadpoolctl, protobuf, psutil, pyyaml, pytest,
# pytest-xdist and pytest-timeout. Of pyproject.toml's dependencies it lacks grain (which needs
# array-record and portpicker), ml-collections and tensorboardX: they travel as wheels in .whl/
# (ignored through .git/info/exclude: /.whl/; about 4.5 MiB), fetched by --download, i.e.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5
# and installed below with pip install --no-index --target /tmp/site. tensorflow-datasets is not
# carried (its tests skip), nor the notebook tests' nbformat/nbclient/ipykernel (tests/test_notebooks.py
# is left out when they are missing). Device run: command "bash benchmarks/device_check.sh",
# carry [".whl"], timeout_s 540.
#
# Environment: PYTHON (default python3), DEVICE_CHECK_BUDGET_S (450), BENCH_ARGS (the throughput
# arguments, default "--configs gpt2_small --vocab 50257 --batch 64 --seq_len 1024 --steps 10"),
# PYTEST_ARGS (pytest arguments instead of the default selection: every test, the attention,
# loss, precision, network, objective, FLOP and loop tests first), PYTEST_WORKERS (4), TESTS_S
# (170: the tests' cap), XLA_FLAGS (passed on; the A/B appends to it).

set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5)

if [[ "${1:-}" == "--download" ]]; then
  set -e
  mkdir -p .whl
  exclude="$(git rev-parse --git-path info/exclude)"
  grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

PY="${PYTHON:-python3}"
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-450}"
DEADLINE=$((SECONDS + BUDGET_S))
FAILED=()
export PYTHONUNBUFFERED=1

# piece NAME CAP_S CMD...: CMD under `timeout` (signal SIG, default TERM, to CMD alone), at most CAP_S s and
# never past the deadline; skipped when fewer than MIN_S (default 30) seconds are left.
piece() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS)) min=${MIN_S:-30}
  if ((left < min)); then
    echo "=== $name: skipped (${left}s left)"
    FAILED+=("$name: skipped")
    return 0
  fi
  ((cap > left)) && cap=$left
  echo
  echo "=== $name (timeout ${cap}s): $*"
  local t0=$SECONDS rc
  timeout --foreground -s "${SIG:-TERM}" -k 15 "$cap" "$@"
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s ($((DEADLINE - SECONDS))s of the budget left)"
  ((rc == 0)) || FAILED+=("$name: exit $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)')")
  return 0
}

checks() {
  echo "=== device check $(date -u +%FT%TZ), budget ${BUDGET_S}s, $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"
  if ! "$PY" -c "import grain, ml_collections, tensorboardX" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
      { echo "wheel install failed"; return 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

  piece "nvidia-smi" 30 nvidia-smi
  piece "versions" 60 "$PY" - <<'EOF'
import importlib.metadata as md
import sys

import jax

print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections", "tensorboardX", "tokenizers", "numpy", "pytest"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
try:
    from jax._src.lib import cuda_versions  # private: the cuDNN JAX runs with

    print("cudnn", cuda_versions.cudnn_get_version() if cuda_versions else "?")
except Exception as e:  # noqa: BLE001
    print("cudnn ?", type(e).__name__)
print("backend", jax.default_backend(), jax.devices())
import grain, ml_collections, mdm  # noqa: E401,F401  the carried wheels and the package import
print("imports ok")
EOF

  # shellcheck disable=SC2206  # BENCH_ARGS / PYTEST_ARGS are word-split on purpose
  BENCH=("$PY" benchmarks/train_throughput.py ${BENCH_ARGS:---configs gpt2_small --vocab 50257 --batch 64 --seq_len 1024 --steps 10})
  piece "throughput: attention auto" 110 "${BENCH[@]}" --attention auto
  piece "throughput: attention xla" 110 "${BENCH[@]}" --attention xla
  piece "throughput: attention auto, XLA_FLAGS+=--xla_gpu_enable_triton_gemm=false" 100 \
    env XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_triton_gemm=false" "${BENCH[@]}" --attention auto

  # The GPU-relevant tests first (pytest skips the files' second mention), then the rest.
  local tests=() f
  for f in attention chunked_loss precision networks objectives flops loop; do
    [[ -f tests/test_$f.py ]] && tests+=("tests/test_$f.py")
  done
  # shellcheck disable=SC2206
  PYTEST=("$PY" -m pytest -x -q -p no:cacheprovider --durations=10 ${PYTEST_ARGS:-"${tests[@]}" tests})
  if "$PY" -c "import xdist" 2>/dev/null; then PYTEST+=(-n "${PYTEST_WORKERS:-4}"); fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then PYTEST+=(--timeout 150); fi
  if ! "$PY" -c "import nbformat, nbclient, ipykernel" 2>/dev/null; then PYTEST+=(--ignore tests/test_notebooks.py); fi
  # Several test processes share the GPU: no process may grab 75 % of its memory up front.
  # SIGINT at the cap, so pytest still prints what passed and failed.
  SIG=INT XLA_PYTHON_CLIENT_PREALLOCATE=false piece "tests" "${TESTS_S:-170}" "${PYTEST[@]}"

  MIN_S=60 piece "throughput: attention auto, remat full" 100 "${BENCH[@]}" --attention auto --remat full

  echo
  if ((${#FAILED[@]})); then
    printf '=== not clean (%s), %ss in all:\n' "${#FAILED[@]}" "$SECONDS"
    printf '  %s\n' "${FAILED[@]}"
    return 1
  fi
  echo "=== all pieces passed in ${SECONDS}s"
}

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  checks 2>&1 | tee -a "$OUT/device_check.log"
  exit "${PIPESTATUS[0]}"
fi
checks
