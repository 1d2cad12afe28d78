#!/usr/bin/env bash
# The main job: the MCLE notebook through papermill on the embedded default (tiny Qwen2.5-VL,
# synthetic world, CPU). Extra arguments go to papermill, e.g. `-p seed 1`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
venv=$(bash scripts/env.sh | tail -1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PATH="$venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 MPLBACKEND=Agg
mkdir -p outputs/mcle/demo
papermill nbs/mcle_train.ipynb outputs/mcle/demo/mcle_train.ipynb -k mllm-nle -f params/mcle_demo.yaml --cwd nbs "$@"
echo "executed notebook and results: outputs/mcle/demo/"
