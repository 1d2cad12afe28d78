"""Real-size Qwen2.5-VL-3B architecture, random bf16 weights: a LoRA forward/backward and a 16-token generate
through `mllm_nle.models`, with wall time and peak GPU memory.

    python bench/real_size_backbone.py                 # on a GPU machine: the 3B architecture in bf16
    python bench/real_size_backbone.py --tiny          # anywhere: the same code path on the tiny xs build (CPU ok)

No weights are downloaded: the model is built from the config below (values of Qwen/Qwen2.5-VL-3B-Instruct's
config.json) with random weights. The tokenizer is the tiny build's (same special tokens and chat template; its
ids all fall inside the real vocabulary), so batches, label masking and mrope positions are the real ones.
Prints one JSON line of results (and writes it to --out when given)."""
from __future__ import annotations
import argparse, json, time

import torch
from PIL import Image, ImageDraw

from mllm_nle.models import (QWEN_CHAT_TEMPLATE, Backbone, add_lora, build_batch, generate, sequence_logps,
                             tiny_backbone, trainable_parts)

# Qwen/Qwen2.5-VL-3B-Instruct config.json (text + vision); token ids are replaced by the tiny tokenizer's.
QWEN25_VL_3B = dict(
    text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
              num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000,
              rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, sliding_window=32768,
              max_window_layers=70, tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                out_hidden_size=2048, patch_size=14, spatial_merge_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2),
)


def real_size_backbone(device: str, image_size: int) -> Backbone:
    "The 3B architecture with random bf16 weights on `device`, and a processor with the tiny build's tokenizer."
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    tok = tiny_backbone("qwen2_5_vl", "xs", device="cpu").tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                                                     "<|vision_start|>", "<|vision_end|>")}
    text = dict(QWEN25_VL_3B["text"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_3B["vision"], tie_word_embeddings=True,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    px = dict(min_pixels=56 * 56, max_pixels=image_size * image_size)
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**px), tokenizer=tok,
                               video_processor=Qwen2VLVideoProcessor(**px), chat_template=QWEN_CHAT_TEMPLATE)
    return Backbone(model, proc, "qwen2_5_vl", None)


def _image(i: int, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse([size // 5, size // 5, size // 2 + 10 * i, size // 2], fill=("red", "blue", "green")[i % 3])
    return im


def examples(batch: int, size: int) -> list[dict]:
    "`batch` rows over `batch // 2` distinct images: a chosen/rejected-like layout, so the dedup path is exercised."
    imgs = [_image(i, size) for i in range(max(1, batch // 2))]
    return [dict(image=imgs[i % len(imgs)], image_key=i % len(imgs), prompt="What colour is the circle? Explain.",
                 response=f"Because the circle is filled with colour number {i}. So the answer is red.")
            for i in range(batch)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="use the tiny xs build (CPU-friendly smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=None, help="default 448 (real) / 112 (tiny)")
    ap.add_argument("--steps", type=int, default=3, help="timed LoRA forward/backward steps (after one warm-up)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the language model")
    ap.add_argument("--out", default=None, help="also write the results JSON here")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = a.image_size or (112 if a.tiny else 448)
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    bb = tiny_backbone("qwen2_5_vl", "xs", device=device) if a.tiny else real_size_backbone(device, size)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in bb.model.parameters())
    model = add_lora(bb.model, r=a.lora_r, alpha=2 * a.lora_r)
    if a.grad_ckpt:
        model.base_model.model.model.language_model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = build_batch(bb.processor, examples(a.batch, size))
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(a.steps + 1):
        t = time.perf_counter()
        lp = sequence_logps(model, batch)
        loss = -lp.mean.mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if cuda: torch.cuda.synchronize()
        if step: times.append(time.perf_counter() - t)
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if cuda: torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    texts = generate(model, bb.processor, examples(a.batch, size), max_new_tokens=a.new_tokens,
                     min_new_tokens=a.new_tokens, batch_size=a.batch)
    if cuda: torch.cuda.synchronize()
    gen_s = time.perf_counter() - t
    res = dict(arch="tiny-xs" if a.tiny else "Qwen2.5-VL-3B (random bf16)", device=device,
               gpu=torch.cuda.get_device_name() if cuda else None, params=n_params,
               trainable=trainable_parts(model), batch=a.batch, seq_len=int(batch["input_ids"].shape[1]),
               distinct_images=int(batch["image_index"].max()) + 1, image_size=size, build_s=round(build_s, 2),
               train_step_s=round(sum(times) / len(times), 4), train_peak_gib=train_peak and round(train_peak, 2),
               generate_s=round(gen_s, 3), new_tokens=a.new_tokens,
               generate_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               loss=round(loss.item(), 4), sample=texts[0][:60])
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "w") as f: f.write(line + "\n")
    return res


if __name__ == "__main__":
    main()
