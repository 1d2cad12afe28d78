#!/usr/bin/env bash
# The test command (the README's and CI's): export-drift check, nbdev_test over the library
# notebooks, then pytest over tests/. Runs on a 2-core CPU with no GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
venv=$(bash scripts/env.sh | tail -1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PATH="$venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
echo "== offline NLP data for the AMBER metrics (idempotent)"
bash scripts/setup_nlp_data.sh
# The drift check must come first: nbdev_test runs the notebooks' own copies of the functions, and pytest
# imports mllm_nle/*.py. Only when the export leaves the library unchanged do both test the same code.
echo "== export drift: nbdev_export must not change the library"
bash scripts/check_drift.sh .
echo "== nbdev_test (library notebooks)"
nbdev_test --n_workers 2 --timing
echo "== pytest tests/"
python -m pytest tests/ -q "$@"
