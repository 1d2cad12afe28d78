"""Running an experiment notebook from a test: papermill on `nbs/<notebook>` with a params file, the repo's kernel,
and the run's caches and outputs inside a temp folder. One copy for every test that executes a notebook."""
import os, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def papermill_env(**extra) -> dict:
    "This interpreter's env first on PATH (the kernel `mllm-nle` runs it), figures without a display, plus `extra`."
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", MPLBACKEND="Agg", **extra)


def papermill_cmd(notebook: str, out_nb: Path, params_file: Path, extra=()) -> list[str]:
    "The papermill command line that executes `nbs/<notebook>` into `out_nb` with `params_file`."
    return [sys.executable, "-m", "papermill", str(ROOT/"nbs"/notebook), str(out_nb), "-f", str(params_file),
            "--cwd", str(ROOT/"nbs"), "-k", "mllm-nle", *extra]


def run_notebook(notebook: str, d: Path, params: dict, extra=(), env: dict | None = None) -> subprocess.CompletedProcess:
    "Execute `nbs/<notebook>` into `d/executed.ipynb` with `params`, its cache and outputs under `d`."
    params = {**params, "cache_dir": str(d/"cache"), "output_root": str(d/"outputs")}
    pf = d/"params.yaml"; pf.write_text(yaml.safe_dump(params))
    return subprocess.run(papermill_cmd(notebook, d/"executed.ipynb", pf, extra), env=env or papermill_env(),
                          capture_output=True, text=True, timeout=900)


def assert_figures_shown(nb_path: Path, at_least: int = 1):
    "The executed notebook shows its figures as PNG outputs, not as `<Figure size ...>` text (an Agg backend with no inline)."
    import json
    outs = [o for c in json.loads(Path(nb_path).read_text())["cells"] for o in c.get("outputs", [])]
    pngs = sum("image/png" in o.get("data", {}) for o in outs)
    placeholders = [o for o in outs if "<Figure size" in "".join(o.get("data", {}).get("text/plain", "")) and "image/png" not in o.get("data", {})]
    assert pngs >= at_least and not placeholders, f"{nb_path}: {pngs} PNG output(s), {len(placeholders)} figure(s) shown as text"
