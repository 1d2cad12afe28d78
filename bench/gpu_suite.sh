#!/usr/bin/env bash
# The one prepared GPU check, for when a GPU is lent (under 8 minutes on one H100/H200):
#   bash bench/gpu_suite.sh                 # real-size Qwen2.5-VL-3B and LLaVA-1.5-7B (random weights, real tokenizers):
#                                           # each recipe's step (ours and the releases' style: time, peak memory), then
#                                           # each configs/accelerate/ launch for 10 steps; one JSON (--out, default
#                                           # outputs/bench/gpu_suite.json)
#   bash bench/gpu_suite.sh --dry-run       # the same code on the CPU, small real-shaped sizes (tests/test_gpu_suite.py)
# Needs ../shared/data/tokenizers (the real tokenizers) and, for the launches, ../shared/data/mcle-demo. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the real-shaped checkpoints the launches train (built once into the cache; seconds)
python -c "from mllm_nle import realshape; realshape.realshape_dir('qwen2_5_vl')" >/dev/null
exec timeout "${GPU_SUITE_TIMEOUT:-470}" python bench/gpu_suite.py "$@"
