#!/usr/bin/env bash
# Create or reuse the project's virtual env, install the library with its dev extras, and register
# the Jupyter kernel `mllm-nle` that the notebooks name. Safe to run again: it installs only what changed.
#   MLLM_NLE_VENV  where the env lives (default ~/.cache/mllm_nle/venv, shared by every clone)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${MLLM_NLE_VENV:-$HOME/.cache/mllm_nle/venv}
py=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || { echo "[env] creating $venv"; "$py" -m venv "$venv"; "$venv/bin/python" -m pip install -q --upgrade pip; }
stamp="$venv/.mllm_nle-$(cat "$root/settings.ini" "$root/setup.py" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] installing requirements (torch comes from local disk where pip's config points there)"
  "$venv/bin/python" -m pip install -q -e "$root[dev]" 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c "import mllm_nle, torch, transformers, peft, nbdev, papermill" || { echo "[env] install failed"; exit 1; }
  touch "$stamp"
fi
# The editable install points at one checkout; point it at this one when another clone used the env.
# -I: isolated mode, so the current directory cannot shadow the installed package.
if [ "$("$venv/bin/python" -I -c 'import mllm_nle,os;print(os.path.dirname(os.path.dirname(mllm_nle.__file__)))' 2>/dev/null)" != "$root" ]; then
  "$venv/bin/python" -m pip install -q --no-deps -e "$root" 2>&1 | grep -v '^WARNING: Location' || true
fi
"$venv/bin/python" -m ipykernel install --user --name mllm-nle --display-name "Python (mllm-nle)" >/dev/null
echo "$venv"
