"""One DGPref DPO training step with the reference log-probs cached against the live reference, in one run.

    python bench/dgpref_dpo_step.py                                  # this CPU: tiny LLaVA (xs), 1 thread
    python bench/dgpref_dpo_step.py --shape llava-1.5-7b             # a GPU machine: LLaVA-1.5-7B shape (random bf16 weights), peak memory
    python bench/dgpref_dpo_step.py --backbone /models/llava-1.5-7b-hf   # a GPU machine with the real checkpoint
    python bench/dgpref_dpo_step.py --shape llava-1.5-7b --smoke --device cpu   # the 7B code path at toy size (checks the script)

Both modes run the same engine step (`train.MethodTrainer.training_step`: forward, DGPref's DPO loss, backward, plus
the AdamW step) on the same batch of `--pairs` caption pairs (chosen: a faithful world caption, rejected: an
oracle-edited one; LoRA r 32 / alpha 32 on q/v, as released):

* cached: `train.precompute_reference_logps` ran the frozen base once over the pairs beforehand (its time is reported
  separately as `cache_pairs_per_s`); the step reads the two numbers per pair from the batch;
* live: the step also runs the base (adapters disabled, no grad), sharing the step's vision pass.

Reported per mode: pairs/s (median of `--steps` timed steps after one warm-up) and, on CUDA, peak memory. Prints one
JSON line (also written to --out)."""
from __future__ import annotations
import argparse, random, statistics, sys, tempfile, time
from pathlib import Path

import torch

from bench_io import emit

from mllm_nle import models, world, world_data
from mllm_nle.recipes.dgpref import PreferenceCollator
from mllm_nle.recipes.dgpref_pipeline import CAPTION_PROMPTS
from mllm_nle.train import attach_reference_logps, build_trainer, get_method, make_training_args, precompute_reference_logps


def caption_pairs(n: int, size: int) -> list[dict]:
    "`n` (faithful, oracle-edited) caption pairs on rendered world scenes."
    d = Path(tempfile.mkdtemp(prefix="dgpref-bench-")); rng = random.Random(0)
    scenes = world.make_scenes(n, 0, "bench", min_objects=3)
    imgs = world_data.write_images(d, scenes, size)
    out = []
    for i, (s, img) in enumerate(zip(scenes, imgs)):
        r = world_data.preference_record(s, str(d/img), rng)
        out.append(dict(id=f"pair-{i}", image=str(d/img), prompt=CAPTION_PROMPTS[i % 8], chosen=r["chosen"], rejected=r["rejected"]))
    return out


def run(bb: models.Backbone, n_pairs: int, size: int, steps: int, device: str, grad_ckpt: bool) -> dict:
    recs = caption_pairs(n_pairs, size)
    bb.model = models.add_lora(bb.model, r=32, alpha=32, dropout=0.0, targets=["q_proj", "v_proj"], on_vision=True,
                               vision_targets=["q_proj", "v_proj"])   # the release: q/v in the LLM and the CLIP tower
    col = PreferenceCollator(bb.processor)
    ref = Path(tempfile.mkdtemp())/"ref.json"
    if device.startswith("cuda"): torch.cuda.synchronize()
    t = time.perf_counter()
    precompute_reference_logps(bb.model, recs, col, ref, batch_size=n_pairs)
    if device.startswith("cuda"): torch.cuda.synchronize()
    cache_s = time.perf_counter() - t
    out = dict(cache_pairs_per_s=round(n_pairs / cache_s, 3))
    for mode in ("cached", "live"):
        method = get_method("dpo", beta=0.1, reference="batch" if mode == "cached" else "live")
        args = make_training_args(tempfile.mkdtemp(), max_steps=steps + 1, per_device_train_batch_size=n_pairs, report_to="none",
                                  save_strategy="no", logging_steps=10_000, learning_rate=1e-6, warmup_steps=0, disable_tqdm=True,
                                  gradient_checkpointing=grad_ckpt, use_cpu=not device.startswith("cuda"), bf16=device.startswith("cuda"),
                                  dataloader_num_workers=0)
        trainer = build_trainer(method, bb, attach_reference_logps(recs, ref) if mode == "cached" else recs, args)
        trainer.create_optimizer_and_scheduler(num_training_steps=steps + 1)
        model, opt = trainer.model, trainer.optimizer
        trainer.current_gradient_accumulation_steps = 1
        model.train()
        batch = col(attach_reference_logps(recs, ref) if mode == "cached" else recs)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if device.startswith("cuda"): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        times = []
        for s in range(steps + 1):
            if device.startswith("cuda"): torch.cuda.synchronize()
            t = time.perf_counter()
            trainer.training_step(model, batch)
            opt.step(); opt.zero_grad(set_to_none=True)
            if device.startswith("cuda"): torch.cuda.synchronize()
            if s: times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        out[mode] = dict(seconds_per_step=round(sec, 4), pairs_per_s=round(n_pairs / sec, 3), tokens_per_row=int(batch["input_ids"].shape[1]),
                         peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None)
    out["live_over_cached_time"] = round(out["live"]["seconds_per_step"] / out["cached"]["seconds_per_step"], 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=["tiny", "llava-1.5-7b"])
    ap.add_argument("--backbone", default=None, help="a local checkpoint folder (overrides --shape)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step; default 8 (tiny) / 4 (7B)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="7B shape at toy depth/width: checks the code path on a CPU")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    big = a.backbone is not None or a.shape == "llava-1.5-7b"
    if big and not device.startswith("cuda") and not a.smoke:
        raise SystemExit("a 7B backbone needs a GPU; use --smoke to check the script on a CPU")
    if a.backbone: bb, size, name = models.load_backbone(a.backbone, device=device), 336, a.backbone
    elif big:
        sys.path.insert(0, str(Path(__file__).parent))
        from mcmdpo_step import llava15_7b_backbone          # the LLaVA-1.5-7B architecture with random weights
        bb, size, name = llava15_7b_backbone(device, a.smoke), 336, "llava-1.5-7b shape" + (" (smoke)" if a.smoke else "")
    else: bb, size, name = models.tiny_backbone("llava", "xs", device=device), 112, "tiny:llava:xs"
    n = a.pairs or (4 if big else 8)
    res = dict(bench="dgpref_dpo_step", backbone=name, device=device, threads=a.threads, pairs=n, torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
               result=run(bb, n, size, a.steps, device, a.grad_ckpt or (big and not a.smoke)))
    return emit(res, a.out)


if __name__ == "__main__":
    main()
