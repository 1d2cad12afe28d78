"""One MCM-DPO training step through the engine, against a naive step that encodes every image once per sequence.

    python bench/mcmdpo_step.py                                   # this CPU: tiny LLaVA and tiny Qwen2.5-VL (xs), 1 thread
    python bench/mcmdpo_step.py --shape llava-1.5-7b              # a GPU machine: LLaVA-1.5-7B shape, bf16, peak memory
    python bench/mcmdpo_step.py --shape llava-1.5-7b --smoke --device cpu   # the 7B code path at toy depth/width (checks the script)

Both steps are the same engine step: `train.MethodTrainer.training_step` (forward, MCM-DPO loss, backward) plus the
AdamW step, on the same batch of `--records` alt-text records (8 sequences each: chosen/rejected alt-text x clean/
noised image x own/other context), built by `recipes.mcmdpo.MCMDPOCollator`. They differ only in the images:

* engine: `models.build_batch` keeps each distinct image once (the clean and the noised copy of each record: 2 per
  record), and `models.forward_features` encodes each once, scattering its visual tokens into the 8 rows;
* naive: `models.expand_images` gives every row its own copy (8 per record), as a trainer that runs the model once
  per sequence does.

The configuration is the release's paradigm (d): the vision tower and the projector train (all weights), LoRA
on the LLM, the stored reference (so no reference forward in the step). `--vision frozen` freezes the vision
tower and uses the live reference (adapters disabled, sharing the step's vision pass).

Reported: records/s and sequences/s (median of `--steps` timed steps after one warm-up; the two steps alternate,
so load drift on a shared machine hits both), images encoded per step, and peak accelerator memory on CUDA.
The LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + Llama-2-7B, random bf16 weights, nothing downloaded) uses the tiny
LLaVA tokenizer, whose ids fall inside the real vocabulary, and real 336x336 images (576 visual tokens each).
Prints one JSON line (also written to --out)."""
from __future__ import annotations
import argparse, statistics, tempfile, time
from pathlib import Path

import torch

from bench_io import emit

from mllm_nle import models, world_data
from mllm_nle.data import load_mcmdpo_train
from mllm_nle.recipes.mcmdpo import MCMDPOCollator, assign_negatives
from mllm_nle.train import build_trainer, get_method, make_training_args

# llava-hf/llava-1.5-7b-hf config.json: CLIP ViT-L/14-336 + Llama-2-7B (vicuna-7b-v1.5)
LLAVA15_7B = dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768),
                  text=dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5))
SMOKE_DIMS = dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
                  text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


def llava15_7b_backbone(device: str, smoke: bool = False) -> models.Backbone:
    "LLaVA-1.5-7B architecture with random weights (bf16 on CUDA), 336px CLIP processing, the tiny LLaVA tokenizer."
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    tok = models.tiny_backbone("llava", "xs", device="cpu").tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in models.LLAVA_SPECIAL_TOKENS}
    vis = dict(LLAVA15_7B["vision"], **(SMOKE_DIMS["vision"] if smoke else {}))
    txt = dict(LLAVA15_7B["text"], **(SMOKE_DIMS["text"] if smoke else {}))
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**vis),
                      text_config=LlamaConfig(**txt, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]),
                      image_token_index=ids["<image>"], image_seq_length=576, vision_feature_select_strategy="default",
                      vision_feature_layer=-2, projector_hidden_act="gelu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=models.LLAVA_CHAT_TEMPLATE)
    return models.Backbone(model, proc, "llava", None)


def alttext_records(n: int, size: int) -> list[dict]:
    "`n` synthetic-world alt-text records (MCM-DPO format) with their context negatives."
    d = Path(tempfile.mkdtemp(prefix="mcmdpo-bench-"))
    world_data.write_alttext(d, n_train=max(n, 2), n_test=1, seed=0, image_size=size)
    recs, _ = load_mcmdpo_train(d/"alttext_train.json", image_root=d)
    return assign_negatives(recs, seed=0)[:n]


def run(bb: models.Backbone, n_records: int, image_size: int, steps: int, vision: str, grad_ckpt: bool, device: str) -> dict:
    trained = vision == "trained"
    recs = alttext_records(n_records, image_size)
    if trained: recs = [dict(r, ref_logps=[0.0] * 8) for r in recs]        # a stored reference (values do not affect timing)
    method = get_method("mcm_dpo", reference="batch" if trained else "live", train_vision=trained, train_projector=trained)
    args = make_training_args(tempfile.mkdtemp(), max_steps=steps + 1, per_device_train_batch_size=n_records, report_to="none",
                              save_strategy="no", logging_steps=10_000, learning_rate=1e-5, warmup_steps=0, disable_tqdm=True,
                              gradient_checkpointing=grad_ckpt, use_cpu=not device.startswith("cuda"),
                              bf16=device.startswith("cuda"), dataloader_num_workers=0)
    trainer = build_trainer(method, bb, recs, args, lora=dict(r=16, alpha=32, dropout=0.0))
    trainer.create_optimizer_and_scheduler(num_training_steps=steps + 1)
    model, opt = trainer.model, trainer.optimizer
    trainer.current_gradient_accumulation_steps = 1        # (set by Trainer.train's loop, which this bench steps by hand)
    model.train()
    engine = MCMDPOCollator(bb.processor, seed=0)(recs)
    batches = dict(engine=engine, naive=models.expand_images(engine))
    calls = []
    inner = models.hf_model(model).model
    tower = getattr(inner, "vision_tower", None) or getattr(inner, "visual")
    hook = tower.register_forward_hook(lambda *_: calls.append(1))
    n_images = lambda b: len(b["image_grid_thw"]) if "image_grid_thw" in b else len(b["pixel_values"])
    batches = {m: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for m, b in batches.items()}
    cuda = device.startswith("cuda")
    def step(b):
        calls.clear()
        if cuda: torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.training_step(model, b)
        opt.step(); opt.zero_grad(set_to_none=True)
        if cuda: torch.cuda.synchronize()
        return time.perf_counter() - t
    times = {m: [] for m in batches}
    for s in range(steps + 1):             # the two modes alternate step by step, so load drift on a shared machine hits both
        for mode, b in batches.items():
            sec = step(b)
            if s: times[mode].append(sec)
    out = {}
    for mode, b in batches.items():
        peak = None
        if cuda:                           # one more step each, alone, for its peak memory
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(); step(b)
            peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        else: step(b)
        sec = statistics.median(times[mode])
        out[mode] = dict(seconds_per_step=round(sec, 4), records_per_s=round(n_records / sec, 3), sequences_per_s=round(8 * n_records / sec, 2),
                         images_encoded_per_step=len(calls) * n_images(b), distinct_images=2 * n_records, peak_memory_gib=peak)
    hook.remove()
    out["speedup"] = round(out["naive"]["seconds_per_step"] / out["engine"]["seconds_per_step"], 3)
    out["trainable"] = models.trainable_parts(model)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=["tiny", "llava-1.5-7b"], help="tiny: the xs builds of both families")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--records", type=int, default=None, help="records per step (x8 sequences); default 4 (tiny) / 1 (7B)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--vision", default="trained", choices=["trained", "frozen"])
    ap.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing (default on for the 7B shape)")
    ap.add_argument("--smoke", action="store_true", help="7B shape at toy depth/width: checks the code path on a CPU")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    big = a.shape == "llava-1.5-7b"
    if big and not device.startswith("cuda") and not a.smoke:
        raise SystemExit("the LLaVA-1.5-7B shape needs a GPU; use --smoke to check the script on a CPU")
    res = dict(bench="mcmdpo_step", shape=a.shape + (" (smoke)" if a.smoke else ""), device=device, vision=a.vision, threads=a.threads,
               torch=torch.__version__, gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None, runs={})
    if big:
        n = a.records or 1
        res["runs"]["llava-1.5-7b"] = run(llava15_7b_backbone(device, a.smoke), n, 336, a.steps, a.vision, a.grad_ckpt or not a.smoke, device)
    else:
        for fam in ("llava", "qwen2_5_vl"):
            res["runs"][f"tiny:{fam}:xs"] = run(models.tiny_backbone(fam, "xs", device=device), a.records or 4, 112, a.steps, a.vision,
                                               a.grad_ckpt, device)
    res["records"] = a.records or (1 if big else 4)
    return emit(res, a.out)


if __name__ == "__main__":
    main()
