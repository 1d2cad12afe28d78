"""Throughput of each step of the DGPref data pipeline on the demo settings, in one run.

    python bench/dgpref_pipeline_speed.py                              # params/dgpref_demo.yaml, 48 pool images
    python bench/dgpref_pipeline_speed.py --n-images 96 --out outputs/bench/dgpref_pipeline.json

Runs `recipes.dgpref_pipeline.run_data` into a fresh folder (so every step runs), from the cached SFT baseline of
those params (trained first if absent; not timed), and reports per step: sampling captions/s (the policy, 8 captions
per image at temperature 0.7), decomposition claims/s (rule-based), verification checks/s per expert (oracle, noisy
oracles, MLLM-as-VQA), scoring + pairing pairs/s, and reference log-probs pairs/s (the engine's cache). Prints one
JSON line (also written to --out)."""
from __future__ import annotations
import argparse, os, platform, tempfile, time
from dataclasses import replace

import torch

from bench_io import emit

from mllm_nle.core import load_config, repo_root
from mllm_nle.recipes.dgpref import DGPrefConfig
from mllm_nle.recipes.dgpref_pipeline import baseline, run_data, throughput, world_sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(repo_root()/"params"/"dgpref_demo.yaml"))
    ap.add_argument("--n-images", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(DGPrefConfig, a.params)
    cfg = replace(cfg, n_images=a.n_images)
    baseline(cfg, world_sets(cfg))                          # trained once and cached; not part of the timing
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        rep = run_data(cfg, d, progress=False)
        total = time.time() - t
    res = dict(bench="dgpref_pipeline_speed", params=a.params, backbone=cfg.backbone, n_images=cfg.n_images, n_samples=cfg.n_samples,
               captions=rep["decomposition"]["captions"], claims=rep["decomposition"]["claims"], pairs=rep["pairs"],
               seconds_total=round(total, 1), throughput={k: round(v, 2) if v else v for k, v in throughput({**rep, "n_samples": cfg.n_samples}).items()},
               seconds={k: round(v["seconds"], 2) for k, v in rep["steps"].items()},
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), threads=a.threads, torch=torch.__version__,
                            device=cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                            load_average=os.getloadavg() if hasattr(os, "getloadavg") else None))
    return emit(res, a.out)


if __name__ == "__main__":
    main()
