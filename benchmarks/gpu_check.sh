#!/usr/bin/env bash
# The GPU check: every stage on one CUDA GPU in bf16, offline, in under 5 minutes (see gpu_check.py).
#   benchmarks/gpu_check.sh                 # on a machine with a GPU, from the repository root
#   benchmarks/gpu_check.sh --steps 200     # longer stages (options: python benchmarks/gpu_check.py -h)
# Exits 1 when a training or evaluation call ran off the GPU, or when no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # nothing may come from the network
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 600 "$PY" benchmarks/gpu_check.py "$@"
