#!/usr/bin/env bash
# The test command (the README's and CI's): export-drift check, nbdev_test over the library
# notebooks, then pytest over tests/. Runs on a 2-core CPU with no GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
venv=$(bash scripts/env.sh | tail -1)
export PATH="$venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
echo "== export drift: nbdev_export must not change $(sed -n 's/^lib_path *= *//p' settings.ini)/"
before=$(git status --porcelain -- mllm_nle)
nbdev_export
after=$(git status --porcelain -- mllm_nle)
if [ "$before" != "$after" ] || [ -n "$after" ]; then
  echo "FAIL: mllm_nle/ disagrees with the notebooks (edit nbs/, run nbdev_export, commit both):"
  git status --porcelain -- mllm_nle; git --no-pager diff --stat -- mllm_nle; exit 1
fi
echo "== nbdev_test (library notebooks)"
nbdev_test --n_workers 2 --timing
echo "== pytest tests/"
python -m pytest tests/ -q "$@"
