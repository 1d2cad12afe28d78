"""What makes the tiny backbones see: the same NLE SFT (the MCLE recipe's cached SFT baseline) from each arm's base,
evaluated by the recipe on held-out synthetic-world scenes; one JSON per arm under outputs/seeing/results/ablation/.

    python bench/seeing_ablation.py                   # every arm, one after the other (cached: a re-run only evaluates)
    python bench/seeing_ablation.py --arms d_seeing   # some arms
    python bench/seeing_ablation.py --arms d_seeing --data-seed 1   # a replicate: other SFT data, test scenes and
                                                                    # SFT seed (the recipe's data_seed); writes d_seeing_seed1.json

Arms (Qwen2.5-VL family unless named; all but (a) at 84 px):
  a_blind_xs          the plain `tiny:qwen2_5_vl:xs` at 112 px (random weights; the old default)
  b_vision_only       stage V only (vision tower + projector on dense cell labels), LM untrained
  c_no_word           stage V + stage I without the word-alignment loss
  d_seeing            stage V + stage I + word loss: `tiny:qwen2_5_vl:seeing`, the committed base
  e_seeing_frozen_vt  (d) with the vision tower frozen during the NLE SFT
  llava_seeing        `tiny:llava:seeing`, the committed LLaVA base
The NLE SFT is `MCLEConfig(image_size, n_train=1500, n_test=480, sft_steps=600, sft_lr=1e-3, sft_batch_size=16)`
through `experiment.train_baseline` (the HF Trainer), from each arm's base; evaluation is `mcle.evaluator`
(greedy generation, exact accuracy and answer-explanation consistency on the scene graphs).
Build seconds are the bases' own (`base_build.json`: single-threaded CPU unless it says otherwise).
"""
from __future__ import annotations
import argparse, dataclasses, json, os, platform, time
from pathlib import Path

import torch

from mllm_nle import models, seeing
from mllm_nle.core import save_json
from mllm_nle.experiment import train_baseline
from mllm_nle.recipes import mcle

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "seeing" / "results" / "ablation"
CACHE = ROOT / "outputs" / "seeing" / "cache"
Q = seeing.SEEING["qwen2_5_vl"]
SFT = dict(n_train=1500, n_test=480, sft_steps=600, sft_lr=1e-3, sft_batch_size=16, nle_metrics=["bleu"], eval_batch_size=64)
ARMS = {
    "a_blind_xs": dict(backbone="tiny:qwen2_5_vl:xs", image_size=112, what="tiny:qwen2_5_vl:xs (random weights), 112 px"),
    "b_vision_only": dict(base=dataclasses.replace(Q, instruct_steps=0), what="stage V only (LM untrained), 84 px"),
    "c_no_word": dict(base=dataclasses.replace(Q, word_weight=0.0), what="stage V + stage I, no word loss, 84 px"),
    "d_seeing": dict(family="qwen2_5_vl", what="stage V + stage I + word loss = tiny:qwen2_5_vl:seeing, 84 px"),
    "e_seeing_frozen_vt": dict(family="qwen2_5_vl", trainable=dict(vision=False, projector=True, llm=True),
                               what="(d), vision tower frozen during the NLE SFT"),
    "llava_seeing": dict(family="llava", what="tiny:llava:seeing (xsv: wider vision tower), 84 px"),
}


def arm_base(arm: dict) -> tuple[str, dict | None]:
    "(backbone for the SFT, the base's base_build.json or None): the committed base, or one built into the cache."
    if "backbone" in arm: return arm["backbone"], None
    if "family" in arm:
        d = seeing.committed_base(arm["family"]) or seeing.build_seeing(seeing.SEEING[arm["family"]], models.tiny_cache_dir())
    else:
        d = seeing.build_seeing(arm["base"], models.tiny_cache_dir())   # shares stage V with the committed base
    return str(d), json.loads((Path(d) / "base_build.json").read_text())


def run_arm(name: str, data_seed: int = 0) -> dict:
    arm = ARMS[name]
    backbone, build = arm_base(arm)
    cfg = mcle.MCLEConfig(backbone=backbone, image_size=arm.get("image_size", 84), cache_dir=str(CACHE), data_seed=data_seed,
                          sft_freeze_vision=False, **SFT)   # every part trained unless the arm says `trainable`
    data = mcle.load_mcle_data(cfg)
    positives = [r for r in data.train if r["weight"] > 0]
    # the SFT cache is keyed on the base's weights too (a rebuilt base at the same path is a different base)
    key = data.train_key + (f"; base sha256 {build['model_sha256']}" if build else "")
    sft_dir = train_baseline(cfg, positives, key, trainable=arm.get("trainable"))
    done = json.loads((sft_dir / "done.json").read_text())
    t0 = time.time()
    bb = models.load_backbone(sft_dir)
    ev = mcle.evaluator(cfg, data)(bb)
    s = ev["summary"]
    tag = name if data_seed == 0 else f"{name}_seed{data_seed}"
    res = dict(arm=tag, what=arm["what"] + ("" if data_seed == 0 else f" [data seed {data_seed}]"), data_seed=data_seed, backbone=backbone, image_size=cfg.image_size,
               base_config=build["config"] if build else None, base_sha256=build["model_sha256"] if build else None,
               build_seconds=build["seconds"]["total"] if build else 0.0, build_seconds_by_stage=build["seconds"] if build else None,
               base_probes=dict(vision=build.get("vision_probe"), instruct=build.get("instruct_probe")) if build else None,
               sft=dict(steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size, n_train=len(positives),
                        trainable=arm.get("trainable") or dict(vision=True, projector=True, llm=True)),
               sft_seconds=round(done["seconds"], 1), eval_seconds=round(time.time() - t0, 1), n_test=ev["n"],
               accuracy=s["accuracy"], consistency=s["consistency"], explanation_truth=s["explanation_truth"],
               unparseable=s["unparseable"],
               accuracy_by_type={t: v["accuracy"] for t, v in ev["accuracy_by_type"].items()},
               n_by_type={t: v["n"] for t, v in ev["accuracy_by_type"].items()},
               examples=[dict(question=r["question"], answer=r["answer"], output=r["output"]) for r in ev["rows"][:6]],
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                            cuda=torch.cuda.is_available()))
    save_json(OUT / f"{tag}.json", res)
    print(f"{tag}: accuracy {res['accuracy']:.3f} consistency {res['consistency']:.3f} "
          f"by type {json.dumps({t: round(v, 3) for t, v in res['accuracy_by_type'].items()})}", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--data-seed", type=int, default=0, help="the SFT data, test scenes and SFT seed (MCLEConfig.data_seed)")
    a = ap.parse_args(argv)
    for name in a.arms: run_arm(name, a.data_seed)


if __name__ == "__main__":
    main()
