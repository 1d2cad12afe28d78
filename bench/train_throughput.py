"""Training throughput of one step: the seed code's setup vs ours, in one run, on one device.

    python bench/train_throughput.py                         # GPU: random-init Qwen2.5-VL-3B of real shape,
                                                             # both steps, both configs, then the largest batch
    python bench/train_throughput.py --compile --out outputs/bench/train_throughput.json
    python bench/train_throughput.py --tiny --device cpu     # end-to-end smoke run (< 1 min on a laptop CPU)

Two steps are measured, each in three configurations.

* MCLE signed-SFT step: `batch` samples, each a 448x448 image (256 merged visual tokens) + 80 text
  tokens (30 prompt, 50 response), loss = -mean_i(ratio_i * mean response log-prob_i).
* DPO step: `pairs` pairs, each 256 image + 30 prompt + 150 response tokens, chosen and rejected
  sharing one image; a live reference (the same model with adapters disabled, no grad); sigmoid
  DPO on summed log-probs, beta 0.1.

seed-style (MCLE / DGPref released code): LoRA on q,k,v,o,gate,up,down everywhere (the names also
match the vision tower's MLPs), gradient checkpointing on with input grads enabled, full-vocabulary
logits at every position, every row encodes its own copy of the image (DPO: four encodes per image:
policy and reference, chosen and rejected).

ours (mllm_nle.models / mllm_nle.train): LoRA on the language model only, vision frozen and run under
no_grad once per distinct image (DPO: once per step, shared by policy and reference), no gradient
checkpointing, LM head only on response positions (`models.sequence_logps`,
`train.policy_and_reference_logps`); optional `torch.compile` of the decoder layers. Timed with a
hand-written AdamW loop, so it is the raw step.

engine: the same model setup as `ours`, but the step a user actually gets: `train.MethodTrainer` (the
Hugging Face Trainer: accelerate's backward, gradient clipping, AdamW, scheduler, logging) running a
`train.Method` (MCLE: signed token-mean NLL on `logps`; DPO: a live reference through the method's
shared vision pass). The collator hands over the prepared batch, so data loading is not timed. The
difference between `engine` and `ours` is the engine's overhead.

Model FLOPs (for utilisation) count only the useful work, identically for both configurations:
6 * N_llm * tokens (+ attention 12 * L * H * T^2 per row) for trained passes, 2 * N_llm * tokens for the
reference pass, 2 * N_vit * patches for one encode per distinct image, and the LM head on response
tokens only. Recomputation, repeated image encodes and prompt-position logits are not counted.
"""
from __future__ import annotations
import argparse, contextlib, gc, json, math, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen/Qwen2.5-VL-3B-Instruct config.json (architecture only; weights are random here).
QWEN25_VL_3B = dict(
    text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
              rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", in_channels=3, tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, image_size=448)
# A tiny model of the same family and the same code paths, for --tiny (CPU smoke run).
TINY = dict(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, rms_norm_eps=1e-6,
              rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                hidden_act="silu", in_channels=3, tokens_per_second=2),
    image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
    bos_token_id=504, eos_token_id=505, pad_token_id=504, image_size=112)

SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16


def build_model(spec, device, dtype, attn="sdpa", seed=0):
    "A random-init Qwen2.5-VL of `spec`'s shape, built directly on `device` in `dtype`."
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    keys = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
            "bos_token_id", "eos_token_id", "pad_token_id")
    ids = {k: spec[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = Qwen2_5_VLConfig(text_config=dict(spec["text"], **ids), vision_config=dict(spec["vision"]),
                           tie_word_embeddings=spec["text"]["tie_word_embeddings"], **{k: spec[k] for k in keys})
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation=attn)
    return model.to(device).train()


def image_shape(spec):
    "(patches per image, merged visual tokens per image, grid_thw, patch dim)."
    vc, side = spec["vision"], spec["image_size"]
    g = side // vc["patch_size"]
    return g * g, g * g // vc["spatial_merge_size"] ** 2, [1, g, g], 3 * vc["temporal_patch_size"] * vc["patch_size"] ** 2


def make_batch(spec, rows, n_images, prompt_len, response_len, device, dtype, gen):
    """A batch in `models.build_batch` format: `[vision_start, image_pad x n, vision_end, prompt, response]`
    per row, unique images in `pixel_values`, `image_index` mapping rows to images, labels on the response."""
    patches, n_vis, grid, pdim = image_shape(spec)
    V = spec["text"]["vocab_size"]
    text = torch.randint(0, min(V, spec["image_token_id"]) - 1, (rows, prompt_len + response_len), generator=gen)
    vis = torch.tensor([spec["vision_start_token_id"]] + [spec["image_token_id"]] * n_vis + [spec["vision_end_token_id"]])
    ids = torch.cat([vis.expand(rows, -1), text], 1)
    labels = ids.clone(); labels[:, : ids.shape[1] - response_len] = -100
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), labels=labels.to(device),
                pixel_values=torch.randn(n_images * patches, pdim, generator=gen).to(device, dtype),
                image_grid_thw=torch.tensor([grid] * n_images).to(device),
                image_index=(torch.arange(rows) % n_images).to(device))


def per_row_batch(batch, spec):
    "The seed's layout: every row carries its own copy of its image."
    patches = image_shape(spec)[0]
    pv = batch["pixel_values"].view(-1, patches, batch["pixel_values"].shape[-1])[batch["image_index"]]
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                pixel_values=pv.reshape(-1, pv.shape[-1]), image_grid_thw=batch["image_grid_thw"][batch["image_index"]])


# ---------------------------------------------------------------- configurations
def setup_seed_style(model):
    "LoRA on every q,k,v,o,gate,up,down (vision MLPs included), gradient checkpointing, input grads."
    from peft import LoraConfig, get_peft_model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=SEED_TARGETS))


def setup_ours(model, compile_layers=False):
    "LoRA on the language model only, vision frozen, no checkpointing."
    from mllm_nle import models
    model = models.add_lora(model, r=16, alpha=32, dropout=0.05, on_vision=False)
    if compile_layers:
        for layer in models.hf_model(model).model.language_model.layers: layer.compile()
    return model


def seed_row_logps(model, batch, reduce):
    "Full-vocabulary logits at every position, then the response log-probs (sum or mean) per row."
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return lp.sum(-1) / (mask.sum(-1) if reduce == "mean" else 1)


def mcle_step(kind, model, batch, ratios, spec):
    if kind == "seed": lp = seed_row_logps(model, per_row_batch(batch, spec), "mean")
    else:
        from mllm_nle import models
        lp = models.sequence_logps(model, batch).mean
    return -(ratios * lp).mean()


def dpo_step(kind, model, batch, spec, beta=0.1):
    n = batch["input_ids"].shape[0] // 2
    if kind == "seed":
        b = per_row_batch(batch, spec)
        pol = seed_row_logps(model, b, "sum")
        with torch.no_grad(), model.disable_adapter(): ref = seed_row_logps(model, b, "sum")
    else:
        from mllm_nle.train import policy_and_reference_logps   # one vision pass shared by policy and reference
        pol, ref = (lp.sum for lp in policy_and_reference_logps(model, batch))
    logits = beta * ((pol[:n] - pol[n:]) - (ref[:n] - ref[n:]))
    return -F.logsigmoid(logits).mean()


# ---------------------------------------------------------------- measurement
def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def time_steps(step, params, device, warmup, iters):
    "Seconds per optimiser step (forward, backward, AdamW), after `warmup` steps."
    opt = torch.optim.AdamW(params, lr=1e-5)
    for i in range(warmup + iters):
        if i == warmup: sync(device); t0 = time.perf_counter()
        loss = step(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss): raise RuntimeError(f"non-finite loss {loss.item()}")
    sync(device)
    return (time.perf_counter() - t0) / iters


def model_flops(spec, model, rows, text_len, n_images, response_len, trained_passes=1, reference_passes=0):
    "Useful FLOPs of one step (see the module docstring)."
    from mllm_nle import models
    hf = models.hf_model(model)
    tc = spec["text"]
    n_llm = sum(p.numel() for n, p in hf.model.language_model.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    n_vit = sum(p.numel() for n, p in hf.model.visual.named_parameters() if "lora_" not in n)
    patches, n_vis, _, _ = image_shape(spec)
    T = n_vis + 2 + text_len
    L, H = tc["num_hidden_layers"], tc["hidden_size"]
    per_fwd = rows * (2 * n_llm * T + 4 * L * H * T * T) + 2 * H * tc["vocab_size"] * rows * response_len
    return 3 * per_fwd * trained_passes + per_fwd * reference_passes + 2 * n_vit * patches * n_images


def peak_tflops(device, override):
    if override: return override
    if device.type != "cuda": return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class _StepClock:
    "A TrainerCallback timing the steps after `warmup`."
    def __init__(self, warmup, device): self.warmup, self.device, self.n, self.t0 = warmup, device, 0, None
    def __getattr__(self, name): return lambda *a, **k: None   # every other callback event: nothing
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup: sync(self.device); self.t0 = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        if self.t0 is not None: self.n += 1
    def on_train_end(self, args, state, control, **kw): sync(self.device); self.t1 = time.perf_counter()


def engine_seconds(which, model, batch, ratios, device, a, out_dir):
    "Seconds per step of `train.MethodTrainer` running a `train.Method` on `batch`, after `a.warmup` steps."
    from mllm_nle import train
    if which == "mcle":
        method = train.Method("bench-mcle", lambda mean_logps, ratios: (-(ratios * mean_logps).mean(), {}),
                              lambda b, f: dict(mean_logps=f["logps"].mean, ratios=ratios))
    else:
        def dpo(pol, ref, beta=0.1):
            n = pol.shape[0] // 2
            return -F.logsigmoid(beta * ((pol[:n] - pol[n:]) - (ref[:n] - ref[n:]))).mean(), {}
        method = train.Method("bench-dpo", dpo, lambda b, f: dict(pol=f["logps"].sum, ref=f["ref_logps"].sum), reference="live")
    steps = a.warmup + a.iters
    args = train.make_training_args(out_dir, max_steps=steps, per_device_train_batch_size=1, learning_rate=1e-5,
                                    lr_scheduler_type="constant", warmup_steps=0, report_to="none", save_strategy="no",
                                    logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
                                    bf16=device.type == "cuda", use_cpu=device.type != "cuda")
    clock = _StepClock(a.warmup, device)
    tr = train.MethodTrainer(model=model, args=args, method=method, data_collator=lambda items: batch,
                             train_dataset=[0] * steps, callbacks=[clock])
    tr.train()
    return (clock.t1 - clock.t0) / max(1, clock.n)


def measure(kind, which, spec, device, dtype, a, rows):
    "Build a fresh model in configuration `kind`, time `which` step at `rows` rows; return a result dict."
    gen = torch.Generator().manual_seed(0)
    model = build_model(spec, device, dtype, a.attn)
    model = setup_seed_style(model) if kind == "seed" else setup_ours(model, a.compile)   # engine: ours
    params = [p for p in model.parameters() if p.requires_grad]
    if which == "mcle":
        n_img = rows if kind == "seed" or a.images_per_batch is None else a.images_per_batch
        batch = make_batch(spec, rows, n_img, 30, 50, device, dtype, gen)
        ratios = torch.where(torch.arange(rows) % 3 == 0, 1.0, -1.0).to(device)
        step = lambda: mcle_step(kind, model, batch, ratios, spec)
        flops = model_flops(spec, model, rows, 80, n_img, 50)
    else:
        batch = make_batch(spec, 2 * rows, rows, 30, 150, device, dtype, gen)
        step = lambda: dpo_step(kind, model, batch, spec)
        flops = model_flops(spec, model, 2 * rows, 180, rows, 150, reference_passes=1)
    if device.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
    try:
        if kind == "engine":
            import tempfile
            with tempfile.TemporaryDirectory() as d:
                s = engine_seconds(which, model, batch, ratios if which == "mcle" else None, device, a, d)
        else:
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                s = time_steps(step, params, device, a.warmup, a.iters)
    finally:
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        del model, params, batch; gc.collect()
        if device.type == "cuda": torch.cuda.empty_cache()
    pk = peak_tflops(device, a.peak_tflops)
    return dict(step=which, config=kind, rows=rows, s_per_step=s, per_s=rows / s, peak_gib=peak,
                tflops=flops / s / 1e12, mfu=(flops / s / 1e12 / pk) if pk else None)


def largest_batch(which, spec, device, dtype, a, start):
    "Largest `rows` (doubling, then bisection) at which our step runs without CUDA OOM."
    def fits(n):
        try: measure("ours", which, spec, device, dtype, argparse.Namespace(**{**vars(a), "warmup": 0, "iters": 1}), n); return True
        except torch.cuda.OutOfMemoryError: gc.collect(); torch.cuda.empty_cache(); return False
    lo, hi = 0, start
    while hi <= a.max_batch_cap and fits(hi): lo, hi = hi, hi * 2
    if lo >= a.max_batch_cap: return lo
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same family (CPU smoke run)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, default=16, help="MCLE samples per step")
    p.add_argument("--pairs", type=int, default=8, help="DPO pairs per step")
    p.add_argument("--images-per-batch", type=int, default=None,
                   help="distinct images in our MCLE batch (default: one per sample; MCLE negatives share images)")
    p.add_argument("--warmup", type=int, default=2); p.add_argument("--iters", type=int, default=5)
    p.add_argument("--attn", default="sdpa"); p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", default="mcle,dpo"); p.add_argument("--configs", default="seed,ours,engine")
    p.add_argument("--skip-max-batch", action="store_true", help="skip the search for the largest MCLE batch of ours that fits (GPU)")
    p.add_argument("--max-batch-cap", type=int, default=1024)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for utilisation (default: by GPU name)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = TINY if a.tiny else QWEN25_VL_3B
    if a.tiny: a.batch, a.pairs = min(a.batch, 8), min(a.pairs, 4)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name} | {'tiny' if a.tiny else 'Qwen2.5-VL-3B shape'} | dtype {dtype} | attn {a.attn} | compile {a.compile}")
    results = []
    for which in a.steps.split(","):
        rows = a.batch if which == "mcle" else a.pairs
        for kind in a.configs.split(","):
            r = measure(kind, which, spec, device, dtype, a, rows); results.append(r)
            unit = "samples/s" if which == "mcle" else "pairs/s"
            peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(f"{which:4s} {kind:5s} rows {rows:3d}  {r['per_s']:8.2f} {unit:9s} {r['s_per_step']*1e3:9.1f} ms/step  "
                  f"peak {peak}  {r['tflops']:.3f} TFLOP/s  MFU {mfu}", flush=True)
        by = {r["config"]: r for r in results if r["step"] == which}
        if {"seed", "ours"} <= set(by): print(f"{which}: ours / seed-style = {by['ours']['per_s'] / by['seed']['per_s']:.2f}x")
        if {"seed", "engine"} <= set(by): print(f"{which}: engine / seed-style = {by['engine']['per_s'] / by['seed']['per_s']:.2f}x")
    summary = dict(device=name, tiny=a.tiny, results=results)
    if not a.skip_max_batch:
        if device.type != "cuda": print("largest batch: n/a (needs a GPU)")
        else:
            summary["largest_mcle_batch"] = largest_batch("mcle", spec, device, dtype, a, a.batch)
            print(f"largest MCLE batch of ours that fits: {summary['largest_mcle_batch']}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
