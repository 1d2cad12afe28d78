#!/usr/bin/env bash
# `make docs`: a static HTML site of the notebooks, without Quarto (nbdev_docs needs it; on a machine with Quarto,
# `nbdev_docs` and _quarto.yml still work). The library notebooks are executed here (their examples and asserts, as
# nbdev_test runs them), the committed executed result notebooks are rendered as they are, and _site/index.html lists both.
#   DOCS_EXECUTE=0   render the library notebooks without executing them (fast; no outputs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$root/scripts/env.sh" | tail -1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PATH="$venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
site="$root/_site"; rm -rf "$site"; mkdir -p "$site/lib" "$site/results"
cd "$root/nbs"
exec_flags=(--execute --ExecutePreprocessor.kernel_name=mllm-nle --ExecutePreprocessor.timeout=1200)
[ "${DOCS_EXECUTE:-1}" = 0 ] && exec_flags=()
for nb in index.ipynb [0-9]*.ipynb; do
  echo "[docs] $nb"
  jupyter nbconvert --to html "${exec_flags[@]}" --output-dir "$site/lib" "$nb" --log-level WARN
done
cd "$root"
git ls-files 'outputs/*/results/*/*.ipynb' | while read -r nb; do
  name=$(echo "$nb" | sed 's|^outputs/||; s|/results/|--|; s|/|--|g; s|\.ipynb$||')
  jupyter nbconvert --to html --output-dir "$site/results" --output "$name" "$nb" --log-level WARN
done
python3 - "$site" <<'EOF'
import html, sys
from pathlib import Path
site = Path(sys.argv[1])
link = lambda p: f'<li><a href="{p.relative_to(site)}">{html.escape(p.stem)}</a></li>'
lib = sorted((site/"lib").glob("*.html"), key=lambda p: (p.stem != "index", p.stem))
res = sorted((site/"results").glob("*.html"))
(site/"index.html").write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>mllm-nle</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}} li{{margin:.2em 0}}</style></head><body>
<h1>mllm-nle</h1><p>Faithful multimodal LLMs: MCLE, DGPref, HACL and MCM-DPO on one engine, with an exact synthetic world.</p>
<h2>The library, in reading order</h2><ul>{''.join(map(link, lib))}</ul>
<h2>Committed result runs (executed notebooks)</h2><ul>{''.join(map(link, res))}</ul></body></html>""")
print(f"[docs] {site/'index.html'}: {len(lib)} library notebooks, {len(res)} result notebooks")
EOF
