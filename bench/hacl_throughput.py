"""HACL's training step against the plain SFT step: tokens/s and peak memory, at LLaVA-1.5-7B shape.

    python bench/hacl_throughput.py                          # GPU: random-init LLaVA-1.5-7B of real shape, batch 16
    python bench/hacl_throughput.py --out outputs/bench/hacl_throughput.json
    python bench/hacl_throughput.py --tiny --device cpu      # end-to-end smoke run of the same code (CPU, ~1 min)

Three steps, each the engine's own `train.Method` (`mllm_nle.recipes.hacl.hacl_method`) on the same
batch, LoRA (r=128) on the language model, vision tower frozen, gradient checkpointing on, bf16,
timed as forward + backward + AdamW step:

* `sft`: `hacl` with `ita_weight=0`: the LM loss on the chat batch (one vision pass, one LLM pass).
* `hacl_separate`: the release's representations: + the LLM on the visual tokens alone (576 tokens a
  row for LLaVA-1.5) + one text-only pass over the true and hallucinated captions.
* `hacl_in_context`: the image representation read from the LM pass itself (the state at the last
  visual token), + the text-only pass. The vision tower still runs once per distinct image.

Batch: `--batch` (16) caption records, each a 336x336 image (576 visual tokens) + a ~35-token prompt
+ a ~60-token caption, each with one hallucinated caption. Reported per step: seconds, LM-batch tokens/s
(visual + text tokens of the chat batch: the same numerator for every step, so the ratio is the cost),
peak GPU memory, and the overhead over `sft`. The issue's target: the extra passes cost under 40% of
the SFT step. The separate image pass runs the whole LLM over 576 tokens a row, about as many tokens
as the chat batch itself, so it cannot meet that target; `in_context` is how we keep the extra cost
small (the text-only pass is ~100 tokens a row).
"""
from __future__ import annotations
import argparse, gc, sys, time
from pathlib import Path

import torch

from bench_io import emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# llava-hf/llava-1.5-7b-hf config.json (architecture only; weights are random here).
LLAVA15_7B = dict(
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
                patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
              vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    image_size=336, patch_size=14, lora_r=128)
TINY = dict(
    vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=112, patch_size=14,
                projection_dim=64),
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=1024, max_position_embeddings=4096, tie_word_embeddings=True),
    image_size=112, patch_size=14, lora_r=8)


def build(shape: dict, device: str):
    "A random-init LLaVA of `shape` (bf16 on cuda) and a processor for it (the tiny tokenizer: token ids are all that matter)."
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from mllm_nle import models
    tok = models.tiny_backbone("llava").processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in models.LLAVA_SPECIAL_TOKENS}
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**shape["vision"]),
                      text_config=LlamaConfig(**shape["text"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]),
                      image_token_index=ids["<image>"], image_seq_length=(shape["image_size"] // shape["patch_size"]) ** 2,
                      vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device): model = LlavaForConditionalGeneration(cfg).to(dtype)
    s = shape["image_size"]
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}),
                          tokenizer=tok, patch_size=shape["patch_size"], vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=models.LLAVA_CHAT_TEMPLATE)
    return models.Backbone(model, proc, "llava", None)


def records(n: int, size: int, tmp: Path) -> list[dict]:
    "`n` caption records on synthetic-world images with one rule-made hallucinated caption each."
    from mllm_nle import world, world_data
    from mllm_nle.recipes.hacl_data import RuleHallucinator, world_vocabulary
    import random
    rng, gen, out = random.Random(0), RuleHallucinator(world_vocabulary()), []
    for sc in world.make_scenes(n, seed=0, prefix="bench", min_objects=3, max_objects=5):
        p = tmp/f"{sc.id}.png"; world.render(sc, size).save(p)
        cap = world_data.caption_text(world.caption_sentences(sc, rng))
        hal = gen([cap], 1)[0]
        out.append(dict(id=sc.id, image=str(p), prompt=world_data.PROMPTS[0] + " Mention every shape, its colour, size and position.",
                        response=cap, caption=cap, hallucinated=[h["caption"] for h in hal]))
    return out


def step_stats(method, model, batch, params, steps: int, warmup: int, device: str) -> dict:
    opt = torch.optim.AdamW(params, lr=1e-5)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda": torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        sync(); t0 = time.perf_counter()
        loss, _ = method(model, batch)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync(); times.append(time.perf_counter() - t0)
    lm = batch["lm"]
    tokens = int(lm["attention_mask"].sum())
    sec = sorted(times[warmup:])[len(times[warmup:]) // 2]
    return dict(seconds=sec, tokens=tokens, tokens_per_s=tokens / sec,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true"); ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=16); ap.add_argument("--steps", type=int, default=5); ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from mllm_nle import models
    from mllm_nle.recipes.hacl import HACLCollator
    from mllm_nle.train import get_method
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = TINY if a.tiny else LLAVA15_7B
    torch.manual_seed(0)
    bb = build(shape, device)
    bb.model = models.add_lora(bb.model, r=shape["lora_r"], alpha=2 * shape["lora_r"], dropout=0.0)
    hf = models.hf_model(bb.model)
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bb.model.train()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        batch = HACLCollator(bb.processor)(records(a.batch, shape["image_size"], Path(d)))
    batch = {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}
    res = {}
    for name, kw in (("sft", dict(ita_weight=0)), ("hacl_separate", dict(image_repr="separate")), ("hacl_in_context", dict(image_repr="in_context"))):
        m = get_method("hacl", **kw); m.setup(m, bb.model)
        for mod in m.modules.values(): mod.to(device)
        params = [p for p in bb.model.parameters() if p.requires_grad] + [p for mod in m.modules.values() for p in mod.parameters()]
        res[name] = step_stats(m, bb.model, batch, params, a.steps, a.warmup, device)
        gc.collect(); torch.cuda.empty_cache() if device == "cuda" else None
    for name in ("hacl_separate", "hacl_in_context"): res[name]["overhead_vs_sft"] = res[name]["seconds"] / res["sft"]["seconds"] - 1
    info = dict(shape="tiny" if a.tiny else "llava-1.5-7b", device=device,
                device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu", batch=a.batch,
                lm_tokens_per_row=res["sft"]["tokens"] / a.batch, steps=a.steps, torch=torch.__version__, results=res)
    return emit(info, a.out, indent=1)


if __name__ == "__main__":
    main()
