#!/usr/bin/env bash
# One-shot GPU check for a rented CUDA machine (< 8 minutes with SKIP_TESTS=1): install coevo, check CUDA,
# run the fast tests (with SKIP_TESTS=1: the CUDA ones only), the CUDA latency benchmark, the CUDA
# deploy benchmark (float16, CUDA graphs, torch.compile) and the paper-scale pipeline benchmark. From the repo root:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh            # results land in $OUT
#     SKIP_TESTS=1 bash benchmarks/gpu_check.sh                # benchmarks and the gpu-marked tests only
#     EVIDENCE_ONLY=1 bash benchmarks/gpu_check.sh             # the evidence protocol on CUDA alone (< 8 min)
#     EVIDENCE=1 bash benchmarks/gpu_check.sh                  # everything, then the evidence protocol
#
# The evidence stage (benchmarks/evidence.py --device cuda --jobs 8) converges the snow teacher, then runs
# the six arms x budgets 0.05, 0.02, 0.1 x 8 seeds (distill recipe, fine-tuning batch 4), 8 cells at once,
# and stops at EVIDENCE_S seconds (450): every finished cell is in $OUT/evidence_snow_cuda.json, and a
# later call with the same $OUT and EVIDENCE_WORK resumes the rest.
#
# Uses the system python when it already has a CUDA torch (no multi-GB download);
# otherwise makes a venv in .venv-gpu and pip-installs the repo into it.
set -uo pipefail

OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
echo "== coevo gpu_check $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(no nvidia-smi)"

PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # No CUDA torch here: a venv with the repo's dependencies (needs the package index).
    echo "== $PY has no CUDA torch: creating .venv-gpu"
    "$PY" -m venv .venv-gpu && PY=.venv-gpu/bin/python
    "$PY" -m pip install -q -e ".[test]" || { echo "pip install -e .[test] failed"; exit 1; }
else
    # Keep the machine's torch: install coevo without touching its dependencies. Offline
    # machines cannot build in isolation, so fall back to running from src/.
    echo "== using $("$PY" -c 'import sys; print(sys.executable)') (has a CUDA torch)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
        || { echo "(pip install -e . unavailable: using PYTHONPATH=src)"; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; }
    for dep in numpy PIL yaml tqdm matplotlib safetensors onnx onnxruntime onnxscript; do
        "$PY" -c "import $dep" 2>/dev/null || echo "(missing python package: $dep)"
    done
fi

if [ -n "${EVIDENCE_ONLY:-}" ]; then
    echo "== evidence protocol on CUDA only"
    EVIDENCE=1
else
echo "== CUDA sanity check"
"$PY" - <<'PYEOF' || { echo "CUDA sanity check failed"; exit 1; }
import torch
from coevo.models import GeneratorArch, ResnetGenerator
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
g = ResnetGenerator(GeneratorArch.full(ngf=8, n_blocks=2)).eval()
x = torch.rand(2, 3, 64, 64) * 2 - 1
with torch.inference_mode():
    diff = (g.cuda()(x.cuda()).cpu() - g.cpu()(x)).abs().max().item()
print(f"generator CPU vs CUDA max |diff| {diff:.2e}")
assert diff < 1e-3, diff
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
except ImportError:
    print("onnxruntime not installed")
PYEOF

if [ -z "${SKIP_TESTS:-}" ] && "$PY" -c "import pytest" 2>/dev/null; then
    echo "== fast tests (not slow)"
    timeout 200 "$PY" -m pytest -q -x -m "not slow" -p no:cacheprovider || echo "tests FAILED or timed out (continuing)"
elif "$PY" -c "import pytest" 2>/dev/null; then
    echo "== CUDA tests only (generator parity, CUDA-graph and compiled runners, the float16 export's parity)"
    timeout 60 "$PY" -m pytest -q -k cuda -p no:cacheprovider tests/test_models.py tests/test_deploy.py \
        || echo "CUDA tests FAILED or timed out (continuing)"
fi

echo "== CUDA benchmark: does cutting MACs cut latency (eager, TorchScript)"
timeout 90 "$PY" benchmarks/inference.py --device cuda --repeats 30 --warmup 5 --out "$OUT"
status=$?

echo "== CUDA deploy benchmark: float16 program, CUDA graphs and torch.compile vs the teacher in eager fp32"
timeout 150 "$PY" benchmarks/deploy.py --device cuda --repeats 30 --warmup 5 --out "$OUT" --work /tmp/coevo_deploy \
    || { echo "deploy benchmark FAILED or timed out (continuing)"; status=1; }

echo "== paper-scale pipeline on CUDA (ngf 64, 9 blocks, 256 px; stages cut short, full cost projected)"
timeout 110 "$PY" benchmarks/paper_scale.py --device cuda --out "$OUT" --work /tmp/coevo_paper_scale \
    || echo "paper_scale FAILED or timed out (continuing)"
fi  # EVIDENCE_ONLY
status=${status:-0}

if [ -n "${EVIDENCE:-}" ]; then
    echo "== evidence protocol on CUDA (snow, distill; stops at ${EVIDENCE_S:-450} s, resumable)"
    timeout "${EVIDENCE_S:-450}" "$PY" benchmarks/evidence.py --task snow --device cuda --jobs "${EVIDENCE_JOBS:-8}" \
        --recipe distill --seeds 8 --budgets 0.05,0.02,0.1 --cap 6000 --window 2000 --eval-every 500 --threads 1 \
        --set finetune.batch_size=4 --work "${EVIDENCE_WORK:-/tmp/coevo_evidence}" --out "$OUT" \
        || echo "evidence stopped before every cell finished (the finished ones are in $OUT; rerun to resume)"
fi
echo "== done (benchmark exit $status); files in $OUT:"
ls -l "$OUT"
exit $status
