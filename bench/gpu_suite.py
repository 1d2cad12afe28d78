"""The prepared GPU check (run it through bench/gpu_suite.sh): real-size Qwen2.5-VL-3B-Instruct and LLaVA-1.5-7B built from
config (random bf16 weights, the real tokenizers and processor files of mllm_nle.realshape; nothing is downloaded), then

1. each recipe's training step at its real-size params file's shapes (batch, LoRA placement and rank, trained parts, image
   tokens, text lengths), ours beside the releases' style, with step time and peak GPU memory;
2. each configs/accelerate/ launch of the CLI for 10 steps on a real-shaped checkpoint and the MCLE demo files;

and one JSON with everything. `--dry-run` runs the same code on the CPU with the small real-shaped sizes, 2 rows per
batch and one step (tests/test_gpu_suite.py runs it, so the script cannot rot). The figures it measures are whatever it
measures: nothing here is a stored number.

Styles: `ours` is the engine's step (LM head on response positions only, one vision pass per distinct image, the
recipe's loss, stored reference log-probs); `release` is the releases' way of computing the same step: full-vocabulary
logits at every position through the model's own forward (and, for HACL, the extra LLM pass over the visual tokens alone;
for MCM-DPO, a frozen reference copy run every step)."""
from __future__ import annotations
import argparse, copy, json, os, platform, statistics, subprocess, sys, tempfile, time
from functools import partial
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"bench"))
from bench_io import emit  # noqa: E402

from mllm_nle import inputs, models, realshape, train  # noqa: E402
import mllm_nle.recipes.dgpref, mllm_nle.recipes.hacl, mllm_nle.recipes.mcle, mllm_nle.recipes.mcmdpo  # noqa: E402,F401  registers the methods

WORDS = ("the a man woman dog car red blue small large left right near on under top building street tree sky water "
         "person holding wearing sitting standing next two three white black green sign text window door").split()


def text(n_words: int, seed: int) -> str:
    "A deterministic sentence of `n_words` words (its token count is what matters)."
    return " ".join(WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(n_words)).capitalize() + "."


# recipe -> the real-size params file, the family, and the step's shapes (from those files and the releases' data)
RECIPES = {
    "mcle": dict(params="params/mcle_vqax.yaml", family="qwen2_5_vl", rows=3, image=(640, 480), response_words=18, prompt_words=8,
                 lora=dict(r=64, alpha=16), parts=dict(vision=False, projector=False, llm=True), note="one group (a positive and 2 negatives) per step"),
    "dgpref": dict(params="params/dgpref_llava15.yaml", family="llava", rows=4, image=(800, 600), response_words=110, prompt_words=12,
                   lora=dict(r=32, alpha=32, targets=["q_proj", "v_proj"], on_vision=True, vision_targets=["q_proj", "v_proj"]),
                   parts=dict(vision=True, projector=False, llm=True), ckpt=True, note="4 pairs (8 rows), captions ~116 words"),
    "hacl_llava": dict(params="params/hacl_llava15.yaml", family="llava", rows=16, image=(640, 480), response_words=14, prompt_words=5,
                       lora=dict(r=128, alpha=256), parts=dict(vision=False, projector=True, llm=True), ckpt=True, note="16 records, in-context image states"),
    "hacl_qwen": dict(params="params/hacl_qwen25vl.yaml", family="qwen2_5_vl", rows=16, image=(640, 480), response_words=14, prompt_words=5,
                      lora=dict(r=64, alpha=128), parts=dict(vision=False, projector=True, llm=True), ckpt=True, note="16 records"),
    "mcmdpo": dict(params="params/mcmdpo_twitter.yaml", family="llava", rows=1, image=(1200, 900), response_words=25, prompt_words=60,
                   lora=dict(r=16, alpha=32), parts=dict(vision=True, projector=True, llm=True), note="1 record = 8 rows, paradigm d"),
}


def image(size, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


def records(spec: dict, n: int, tmp: Path) -> list[dict]:
    "`n` records of the recipe's shapes, images saved in `tmp` (distinct per record)."
    out = []
    for i in range(n):
        p = tmp/f"img{i}.png"
        if not p.exists(): image(spec["image"], i).save(p)
        out.append(dict(id=str(i), image=str(p), prompt=text(spec["prompt_words"], i), question=text(spec["prompt_words"], i),
                        context=text(spec["prompt_words"] // 2, i), response=text(spec["response_words"], i),
                        chosen=text(spec["response_words"], i), rejected=text(spec["response_words"], i + 100),
                        caption=text(spec["response_words"], i), hallucinated=[text(spec["response_words"], i + 200)],
                        weight=1.0 if i % 3 == 0 else -1.0, level=("positive", "semantic", "image")[i % 3], group=str(i // 3)))
    return out


def method_and_batch(name: str, spec: dict, processor, recs: list[dict]):
    "The recipe's `train.Method` (ours) and one collated batch."
    from mllm_nle.recipes.mcmdpo import MCMDPOCollator, assign_negatives
    if name == "mcle":
        m = train.get_method("mcle", variant="multilevel")
    elif name == "dgpref":
        m = train.get_method("dpo", reference="batch")
        recs = [dict(r, ref_chosen_logp=-50.0, ref_rejected_logp=-55.0) for r in recs]
    elif name.startswith("hacl"):
        m = train.get_method("hacl", image_repr="in_context")
    else:
        m = train.get_method("mcm_dpo", reference="batch", train_vision=True, train_projector=True)
        recs = [dict(r, ref_logps=[-40.0] * 8) for r in assign_negatives(recs + [dict(recs[0], id="other", question="Another post.")])[:len(recs)]]
        return m, MCMDPOCollator(processor, pool=None)(recs)
    return m, m.collator(processor)(recs)


def full_logit_logps(model, batch: dict) -> torch.Tensor:
    "The releases' way: the model's own forward, full-vocabulary logits at every position, log-softmax in fp32, gathered."
    b = models.expand_images(batch)
    hf = models.hf_model(model)
    kw = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids") if k in b}
    if "pixel_values" in kw: kw["pixel_values"] = kw["pixel_values"].to(hf.dtype)
    with models.autocast_for(model): logits = model(**kw).logits
    lab = b["labels"][:, 1:].to(logits.device)
    lp = logits[:, :-1].float().log_softmax(-1).gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * (lab != -100)).sum(-1)


def timed(fn, steps: int, cuda: bool, warmup: int = 1) -> dict:
    "Median seconds of `steps` calls after `warmup` ones, and the peak memory of those calls."
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter(); fn()
        if cuda: torch.cuda.synchronize()
        if i >= warmup: times.append(time.perf_counter() - t)
    return dict(step_s=round(statistics.median(times), 4), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)


def run_recipe(name: str, spec: dict, bb, dry: bool, steps: int, cuda: bool, tmp: Path) -> dict:
    "One recipe's step in both styles on `bb` (LoRA and trained parts as its params file; fp32 master weights)."
    rows = min(spec["rows"], 2) if dry else spec["rows"]
    base = bb.model
    model = models.add_lora(base, **spec["lora"])
    models.set_trainable(model, **spec["parts"])
    train.fp32_master_weights(model)
    if spec.get("ckpt") and not dry:   # the params file's gradient_checkpointing: true
        hf = models.hf_model(model)
        enable = getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable
        enable(gradient_checkpointing_kwargs={"use_reentrant": False}); model.enable_input_require_grads()
    method, batch = method_and_batch(name, spec, bb.processor, records(spec, rows, tmp))
    if method.setup is not None: method.setup(method, model)
    if method.modules: model.method_modules = torch.nn.ModuleDict(method.modules).to(next(model.parameters()).device)
    dev = next(model.parameters()).device
    batch = models.to_device(batch, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    def ours():
        with models.autocast_for(model): loss, _ = method(model, batch)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    ref = copy.deepcopy(base).eval().requires_grad_(False) if name == "mcmdpo" else None
    lm = batch["lm"] if name.startswith("hacl") else batch
    def release():
        lp = full_logit_logps(model, lm)
        if name.startswith("hacl"):   # the release's extra LLM pass over each image's visual tokens alone
            with models.autocast_for(model): lp = lp + models.image_llm_repr(model, lm).float().mean() * 0
        if ref is not None:
            with torch.no_grad(): full_logit_logps(ref, lm)
        (-lp.mean()).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    res = dict(params_file=spec["params"], family=spec["family"], rows=int(len(lm["input_ids"])), tokens_per_row=int(lm["input_ids"].shape[1]),
               image_tokens=inputs.image_tokens(bb.processor, *spec["image"]), trainable=models.trainable_parts(model), note=spec["note"])
    for style, fn in (("ours", ours), ("release", release)):
        try: res[style] = timed(fn, steps, cuda, warmup=0 if dry else 1)   # the dry run checks that it runs, not how fast
        except torch.cuda.OutOfMemoryError as e:
            res[style] = dict(oom=True, error=str(e).splitlines()[0]); opt.zero_grad(set_to_none=True)
        if cuda: torch.cuda.empty_cache()
    del ref, opt
    bb.model = model.unload()                      # the base again for the next recipe: adapters off, parts back in bf16
    for p in bb.model.parameters():
        p.requires_grad_(False); p.grad = None
        if not dry: p.data = p.data.to(torch.bfloat16)
    if hasattr(bb.model, "method_modules"): del bb.model.method_modules
    if cuda: torch.cuda.empty_cache()
    return res


def build(family: str, dry: bool, device: str, tmp: Path):
    "The architecture (real size, or the small real-shaped one in a dry run) with random weights and the real processor files."
    from transformers import AutoProcessor
    t0 = time.perf_counter()
    dims = realshape.SMALL_SIZES[family] if dry else realshape.REAL_SIZES[family]
    model = realshape.build_model(family, dims, dtype=torch.float32 if dry else torch.bfloat16, device=device).eval()
    proc_dir = realshape.write_processor_files(family, tmp/f"{family}-processor")
    bb = models.with_input_options(models.Backbone(model, AutoProcessor.from_pretrained(str(proc_dir)), family, None),
                                   max_image_tokens=64 if dry and family == "qwen2_5_vl" else None)
    return bb, dict(params=sum(p.numel() for p in model.parameters()), build_s=round(time.perf_counter() - t0, 2), dims=dims)


LAUNCHES = ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")


def launch(config: str, dry: bool, tmp: Path, steps: int) -> dict:
    "`accelerate launch --config_file configs/accelerate/<config>.yaml -m mllm_nle.cli mcle ...` for `steps` steps."
    demo = ROOT.parent/"shared"/"data"/"mcle-demo"
    if config.startswith("deepspeed"):
        try: import deepspeed  # noqa: F401
        except ImportError: return dict(skipped="deepspeed is not installed (pip install deepspeed)")
    if dry and config != "ddp": return dict(skipped="needs a GPU (the dry run launches ddp on the CPU only)")
    if not demo.exists(): return dict(skipped=f"no MCLE demo files at {demo}")
    n = max(1, torch.cuda.device_count()) if not dry else 1
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT/"configs"/"accelerate"/f"{config}.yaml"),
           "--num_processes", str(n), *(["--cpu"] if dry else []), "-m", "mllm_nle.cli", "mcle", str(demo/"train.json"),
           str(tmp/f"launch-{config}"), "--kind", "mcle_train", "--image_root", str(demo), "--backbone", "realshape:qwen2_5_vl",
           "--method_kw", '{"variant": "bounded"}', "--batch_size", "1", "--max_steps", str(steps), "--save_steps", str(max(1, steps // 2)),
           "--logging_steps", "1", "--max_image_tokens", "256"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    ok = p.returncode == 0 and (tmp/f"launch-{config}"/"adapter"/"adapter_config.json").exists()
    return dict(rc=p.returncode, ok=ok, seconds=round(time.perf_counter() - t0, 1), processes=n,
                tail=(p.stdout + p.stderr).strip().splitlines()[-3:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, the small real-shaped sizes, 2 rows, 1 step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per style (default 3; dry run 1)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
    ap.add_argument("--launches", default=",".join(LAUNCHES), help="comma-separated subset of " + ",".join(LAUNCHES) + " ('' for none)")
    ap.add_argument("--out", default=str(ROOT/"outputs"/"bench"/"gpu_suite.json"))
    a = ap.parse_args(argv)
    dry, cuda = a.dry_run, torch.cuda.is_available() and not a.dry_run
    if not dry and not cuda: ap.error("no GPU visible: run with --dry-run, or on a GPU machine")
    steps, device = a.steps or (1 if dry else 3), "cuda" if cuda else "cpu"
    t_all = time.perf_counter()
    res = dict(mode="dry-run (CPU, small real-shaped sizes)" if dry else "gpu", device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
               torch=torch.__version__, transformers=__import__("transformers").__version__, builds={}, recipes={}, launches={})
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        want = [r for r in a.recipes.split(",") if r]
        for family in ("qwen2_5_vl", "llava"):
            names = [r for r in want if RECIPES[r]["family"] == family]
            if not names: continue
            bb, res["builds"][family] = build(family, dry, device, tmp)
            for r in names:
                print(f"[gpu_suite] {r} ...", file=sys.stderr, flush=True)
                res["recipes"][r] = run_recipe(r, RECIPES[r], bb, dry, steps, cuda, tmp)
            del bb
            if cuda: torch.cuda.empty_cache()
        for c in [c for c in a.launches.split(",") if c]:
            print(f"[gpu_suite] launch {c} ...", file=sys.stderr, flush=True)
            res["launches"][c] = launch(c, dry, tmp, 2 if dry else 10)
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    return emit(res, a.out, indent=1)


if __name__ == "__main__":
    main()
