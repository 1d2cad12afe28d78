"""Wall time of the HACL demo: `papermill nbs/hacl_train.ipynb` with no parameters, from a cold cache.

    python bench/hacl_demo_time.py                          # fresh cache and outputs in a temp folder
    python bench/hacl_demo_time.py --params params/hacl_demo.yaml --out outputs/bench/hacl_demo_time.json

Cold means: the synthetic data, its hallucinated captions and the SFT baseline are built inside the
timed run (a second run reuses them from the cache and is faster; `--warm` times that too). The tiny
backbone build itself (`~/.cache/mllm_nle/tiny`) is shared with every other notebook and not rebuilt.
Reports the total and, from the executed notebook, the seconds of each cell.
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

from bench_io import emit

ROOT = Path(__file__).resolve().parents[1]


def run_once(tmp: Path, params: str | None, tag: str) -> dict:
    out_nb = tmp/f"{tag}.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(ROOT/"nbs"/"hacl_train.ipynb"), str(out_nb), "-k", "mllm-nle", "--cwd", str(ROOT/"nbs"),
           "-p", "run_name", f"bench_{tag}", "-p", "output_root", str(tmp/"outputs"), "-p", "cache_dir", str(tmp/"cache")]
    if params: cmd += ["-f", str(params)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"))
    wall = time.time() - t0
    if r.returncode: raise SystemExit(f"papermill failed:\n{r.stderr[-3000:]}")
    nb = json.loads(out_nb.read_text())
    cells = [dict(cell=i, seconds=c["metadata"]["papermill"].get("duration"), first_line=("".join(c["source"]).splitlines() or [""])[0][:70])
             for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    return dict(wall_seconds=wall, cells=cells)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None); ap.add_argument("--warm", action="store_true"); ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = {"cold": run_once(Path(d), a.params, "cold")}
        if a.warm: res["warm"] = run_once(Path(d), a.params, "warm")
    info = dict(params=a.params or "(none: HACLConfig defaults)", machine=platform.machine(), cpus=os.cpu_count(),
                omp_threads=os.environ.get("OMP_NUM_THREADS"), load_avg_at_end=os.getloadavg(), **res)
    return emit(info, a.out, indent=1)


if __name__ == "__main__":
    main()
