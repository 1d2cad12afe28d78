#!/usr/bin/env bash
# `make mutation`: mutmut 3 over the pure scientific core, each group against its fast tests (scripts/mutation.py);
# prints the kill rate per group. Not part of `make test` or CI. About 20-30 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
venv=$(bash scripts/env.sh | tail -1)
export OMP_NUM_THREADS=1 PATH="$venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
rm -rf mutants          # a fresh run: results cached from other code would be stale
python scripts/mutation.py "$@"
