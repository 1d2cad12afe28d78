"""Bad inputs, in one place: each test builds its bad file in a temp dir and asserts on the message,
which must name the file (and the record and field, when there is one).

- hostile images: too many pixels, a decompression bomb, too elongated, truncated, not an image, and
  the ones that are converted instead (1x1, CMYK, 16-bit, animated);
- checkpoints that do not fit the run (another backbone, LoRA rank, targets or alpha) or are torn;
- a corrupt reference-log-prob partial file.

Malformed data files (invalid JSON, non-UTF-8, missing fields, duplicate ids, over-long prompts) are
tested with their loaders in `tests/test_data.py`."""
import json, shutil, struct, subprocess, sys, warnings, zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_nle import batches as B, data as D
from mllm_nle import models
from mllm_nle import train as T
from mllm_nle.core import ConfigError, DataFileError, load_config, save_json
from mllm_nle.recipes import mcle

torch.set_num_threads(1)


# ---------------------------------------------------------------- building hostile files without decoding them
def write_png(path, width, height, bit_depth=1, colour_type=0, row=None, level=6) -> Path:
    """A PNG written chunk by chunk, its rows streamed through zlib: a 40000x40000 image costs a few MB of memory
    to build and ~200 kB on disk (every row the same, default all zeros)."""
    def chunk(kind, body): return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    channels = {0: 1, 2: 3}[colour_type]
    row = b"\x00" + (row if row is not None else bytes((width * channels * bit_depth + 7) // 8))   # filter byte + pixels
    z = zlib.compressobj(level)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


def refused(fn, *args, **kw) -> str:
    "The message of the `DataFileError` that `fn` raises (and no PIL warning on the way)."
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataFileError) as e: fn(*args, **kw)
    return str(e.value)


# ---------------------------------------------------------------- images refused, naming the file
def test_20000x20000_image_is_refused_before_decoding(tmp_path):
    "400 M pixels (1.2 GB as RGB): over the limit, and over twice PIL's own; the message names the file and the limit."
    big = write_png(tmp_path / "scan.png", 20000, 20000, level=1)
    msg = refused(D.open_image, big)
    assert f"{big}: image too large: 400,000,000 pixels, over max_image_pixels=40,000,000" in msg
    assert "RunConfig.max_image_pixels" in msg


def test_image_over_our_limit_but_under_pils(tmp_path):
    "48 M pixels: PIL would only warn (silenced here); our limit refuses it, with its size."
    p = write_png(tmp_path / "photo.png", 8000, 6000, level=1)
    assert f"{p}: image too large: 8000x6000 = 48,000,000 pixels, over max_image_pixels=40,000,000" in refused(D.open_image, p)
    assert D.open_image(p, max_pixels=50_000_000).size == (8000, 6000)   # the limit is a parameter
    with pytest.raises(DataFileError, match="PIL's process-wide Image.MAX_IMAGE_PIXELS"):   # PIL still refuses > 179 M
        D.open_image(write_png(tmp_path / "huge.png", 15000, 15000, level=1), max_pixels=10**9)


def test_decompression_bomb_is_refused_without_memory(tmp_path):
    """A 200 kB PNG declaring 40000x40000 pixels (4.8 GB as RGB). Refused by `open_image`, `check_image` and a loader,
    in a fresh process whose peak memory grows by less than 100 MB."""
    bomb = write_png(tmp_path / "bomb.png", 40000, 40000, level=9)
    assert bomb.stat().st_size < 300_000
    assert f"{bomb}: image too large: 1,600,000,000 pixels" in refused(D.open_image, bomb)
    probe = f"""
import resource
from mllm_nle import batches as B, data as D
from mllm_nle.core import DataFileError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for f in (D.open_image, D.check_image):
    try: f({str(bomb)!r}); print("NOT REFUSED")
    except (DataFileError, D._Bad): pass
print("GREW_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "NOT REFUSED" not in r.stdout, r.stderr[-2000:]
    assert int(r.stdout.split("GREW_KB")[1]) < 100_000, r.stdout


def test_bomb_through_a_loader_names_file_record_and_field(tmp_path):
    write_png(tmp_path / "bomb.png", 40000, 40000, level=9)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    rows = [dict(image=img, ques="What color is it?", response="Because it is red. So the answer is red.", ratio=1.0)
            for img in ("bomb.png", "ok.png")]
    save_json(tmp_path / "train.json", rows)
    with pytest.raises(DataFileError, match=r"train.json: record 0: field 'image': image too large: \S*bomb.png: 1,600,000,000 pixels"):
        D.load_mcle_train(tmp_path / "train.json", check_images=True)
    recs, rep = D.load_mcle_train(tmp_path / "train.json", check_images=True, on_error="skip")
    assert rep.loaded == 1 and rep.skipped["image: image too large"] == 1
    recs, rep = D.load_mcle_train(tmp_path / "train.json", check_images=True, max_image_pixels=None, on_error="skip")
    assert rep.skipped["image: image too large"] == 1   # no limit of ours: PIL's own still refuses 1.6 G pixels


def test_elongated_image_is_refused(tmp_path):
    "Qwen2.5-VL's processor refuses an aspect ratio over 200 mid-training, naming no file; we refuse it up front."
    Image.new("RGB", (4000, 10)).save(tmp_path / "banner.png")
    assert f"{tmp_path / 'banner.png'}: image too elongated: 4000x10" in refused(D.open_image, tmp_path / "banner.png")


@pytest.mark.parametrize("damage", ["truncated", "not an image", "missing"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    p = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(p)
    if damage == "truncated": p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])   # the header parses, the pixels end early
    elif damage == "not an image": p.write_text("<html>404 Not Found</html>")
    else: p.unlink()
    expect = {"truncated": "image not decodable", "not an image": "not a readable image", "missing": "image file not found"}[damage]
    assert f"{p}: {expect}" in refused(D.open_image, p)


def test_invalid_base64_names_the_record():
    assert "record 'q1': field 'image_b64': invalid base64" in refused(D.open_image, {"id": "q1", "image_b64": "%%%" * 300})


def test_collator_and_params_carry_the_limit(tmp_path):
    "The limit reaches the collator that opens images at training time, and is a strict param of every recipe."
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    bb = models.tiny_backbone("qwen2_5_vl", "xs")
    col = B.SFTCollator(bb.processor, max_image_pixels=5000)
    rec = dict(id="r0", image=str(tmp_path / "a.png"), prompt="What?", response="Nothing.")
    assert f"{tmp_path / 'a.png'}: image too large: 100x100 = 10,000 pixels, over max_image_pixels=5,000" in refused(col, [rec])
    (tmp_path / "mcle_x.yaml").write_text("run_name: x\nmax_image_pixels: 5000\n")
    assert load_config(mcle.MCLEConfig, tmp_path / "mcle_x.yaml").max_image_pixels == 5000
    with pytest.raises(ConfigError, match="max_image_pixels"): mcle.MCLEConfig(max_image_pixels=-1)


# ---------------------------------------------------------------- images converted, as documented in nbs/03_data.ipynb
def test_one_pixel_image_is_upsampled_by_the_processor(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    img = D.open_image(tmp_path / "dot.png")
    assert img.size == (1, 1) and img.mode == "RGB"
    for family in ("qwen2_5_vl", "llava"):
        bb = models.tiny_backbone(family, "xs")
        b = B.SFTCollator(bb.processor)([dict(id="d", image=str(tmp_path / "dot.png"), prompt="What color?", response="Red.")])
        with torch.no_grad(): assert torch.isfinite(models.sequence_logps(bb.model, b).sum).all(), family


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "print.jpg")   # pure red in print colours
    D.check_image(str(tmp_path / "print.jpg"))
    img = D.open_image(tmp_path / "print.jpg")
    assert img.mode == "RGB" and np.abs(np.array(img.getpixel((8, 8))) - (255, 0, 0)).max() <= 2


def test_16_bit_png_keeps_its_contrast(tmp_path):
    "PIL's convert would clip every 16-bit grey above 255 to white; we scale 0..65535 onto 0..255."
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    got = np.array(D.open_image(tmp_path / "depth.png"))
    assert got.shape == (64, 64, 3) and (got[..., 0] == got[..., 2]).all()
    assert np.abs(got[..., 0].astype(int) - np.round(ramp / 257)).max() == 0
    assert np.array(Image.open(tmp_path / "depth.png").convert("RGB")).mean() > 250   # what PIL alone gives: white
    rgb16 = write_png(tmp_path / "rgb16.png", 4, 4, bit_depth=16, colour_type=2, row=b"\xff\xff\x00\x00\x80\x00" * 4)
    assert D.open_image(rgb16).getpixel((0, 0)) == (255, 0, 128)    # PIL reads 16-bit RGB as 8-bit RGB


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "lime", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as im: im.seek(2)     # even a file left on another frame
    assert D.open_image(tmp_path / "anim.gif").getpixel((0, 0)) == (255, 0, 0)
    D.check_image(str(tmp_path / "anim.gif"))


# ---------------------------------------------------------------- checkpoints that do not fit, or are torn
def _args(out, **kw):
    return T.make_training_args(out, **(dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
                                             disable_tqdm=True, save_strategy="steps", save_steps=2) | kw))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    "A complete LoRA checkpoint (r=4, alpha=8, default targets) of the tiny Qwen2.5-VL."
    d = tmp_path_factory.mktemp("ckpt")
    recs = T.toy_records(4, d)
    T.train("sft", models.tiny_backbone("qwen2_5_vl", "xs"), recs, _args(d / "run"), lora=dict(r=4, alpha=8))
    return d / "run" / "checkpoint-2", recs


@pytest.mark.parametrize("family,lora,expect", [
    ("qwen2_5_vl", dict(r=8, alpha=8), "r: 4 in the checkpoint, 8 here"),
    ("qwen2_5_vl", dict(r=4, alpha=16), "lora_alpha: 8 in the checkpoint, 16 here"),
    ("qwen2_5_vl", dict(r=4, alpha=8, targets=["q_proj", "v_proj"]), "target_modules:"),
    ("llava", dict(r=4, alpha=8), "base_model_name_or_path: '"),
], ids=["rank", "alpha", "targets", "backbone"])
def test_checkpoint_of_another_setup_is_refused_before_training(checkpoint, tmp_path, family, lora, expect):
    ckpt, recs = checkpoint
    bb = models.tiny_backbone(family, "xs")
    tr = T.build_trainer(T.get_method("sft"), bb, recs, _args(tmp_path / "new", max_steps=4), lora=lora)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" in n}
    with pytest.raises(T.CheckpointError) as e: tr.train(resume_from_checkpoint=str(ckpt))
    assert f"{ckpt / 'adapter_config.json'}: written for another LoRA setup" in str(e.value) and expect in str(e.value), str(e.value)
    assert tr.state.global_step == 0 and all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters() if "lora_" in n)


def test_checkpoint_tensors_of_other_shapes_are_refused(checkpoint, tmp_path):
    "An adapter_config.json that claims r=8 over r=4 tensors (a hand-edited or mixed-up folder): the shapes are checked too."
    ckpt, recs = checkpoint
    bad = tmp_path / "checkpoint-2"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text()); cfg["r"] = 8
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    T.mark_checkpoint_complete(bad)
    tr = T.build_trainer(T.get_method("sft"), models.tiny_backbone("qwen2_5_vl", "xs"), recs, _args(tmp_path / "new", max_steps=4),
                         lora=dict(r=8, alpha=8))
    with pytest.raises(T.CheckpointError, match=r"adapter_model.safetensors: 56 tensor\(s\) do not fit this model.*\(4, 128\) in the checkpoint, \(8, 128\) here"):
        tr.train(resume_from_checkpoint=str(bad))


def test_torn_checkpoint_named_explicitly_is_refused(checkpoint, tmp_path):
    ckpt, recs = checkpoint
    torn = tmp_path / "checkpoint-2"
    shutil.copytree(ckpt, torn)
    (torn / "optimizer.pt").write_bytes((torn / "optimizer.pt").read_bytes()[:100])   # cut mid-write
    tr = T.build_trainer(T.get_method("sft"), models.tiny_backbone("qwen2_5_vl", "xs"), recs, _args(tmp_path / "new", max_steps=4),
                         lora=dict(r=4, alpha=8))
    with pytest.raises(T.CheckpointError, match=rf"{torn} is not a complete checkpoint: optimizer.pt has 100 bytes, \d+ when it was saved"):
        tr.train(resume_from_checkpoint=str(torn))
    with pytest.raises(T.CheckpointError, match="holds no complete checkpoint"):   # True, and nothing complete to resume
        tr.train(resume_from_checkpoint=True)


# ---------------------------------------------------------------- reference log-prob cache
def test_corrupt_reference_partial_file_names_file_and_line(tmp_path, caplog):
    bb = models.tiny_backbone("qwen2_5_vl", "xs")
    recs, col = T.toy_records(4, tmp_path), B.SFTCollator(bb.processor)
    out, part = tmp_path / "ref.json", tmp_path / "ref.json.partial.jsonl"
    whole = T.precompute_reference_logps(bb.model, recs, col, out, batch_size=2).read_bytes()
    # a partial file left by another run (other records, batch size or weights) is discarded, with a warning
    part.write_text(json.dumps({"header": {"ids": "another run", "n": 4, "batch_size": 2, "weights": "?"}}) + "\n")
    assert T.precompute_reference_logps(bb.model, recs, col, out, batch_size=2).read_bytes() == whole and not part.exists()
    assert f"{part}: left by a run on other records" in caplog.text
    # this run's partial file, damaged in the middle: an error naming the file and the line
    calls = []
    def dies(chunk):
        calls.append(chunk)
        if len(calls) == 2: raise RuntimeError("killed")
        return col(chunk)
    with pytest.raises(RuntimeError): T.precompute_reference_logps(bb.model, recs, dies, out, batch_size=2)
    good = part.read_text().splitlines()
    part.write_text("\n".join([good[0], "{not json", *good[1:]]) + "\n")
    with pytest.raises(DataFileError, match=rf"{part}: line 2: not a reference log-prob line"):
        T.precompute_reference_logps(bb.model, recs, col, out, batch_size=2)


# ---------------------------------------------------------------- settings out of range, refused where they are read
def test_beta_must_be_positive_in_every_home():
    "β ≤ 0 would flip or zero every DPO margin (IPO divides by 2β): the configs and the registered methods refuse it."
    from mllm_nle.recipes import dgpref, mcmdpo
    for make, where in ((lambda: T.get_method("dpo", beta=0.0), "dpo: beta"), (lambda: T.get_method("mcm_dpo", beta=-0.1), "mcm_dpo: beta"),
                        (lambda: dgpref.DGPrefConfig(beta=0.0), "DGPrefConfig: beta"), (lambda: mcmdpo.MCMDPOConfig(beta=-1.0), "MCMDPOConfig: beta")):
        with pytest.raises(ConfigError, match=where): make()
    assert T.get_method("dpo", beta=0.05).loss_kwargs["beta"] == 0.05


def test_mcle_method_defaults_to_the_config_default():
    "`get_method('mcle')` (what the CLI builds with no --method_kw) is MCLEConfig's default variant, not the released one."
    m = T.get_method("mcle")
    assert m.name == f"mcle-{mcle.MCLEConfig().variant}" == "mcle-multilevel" and m.loss_kwargs["variant"] == "multilevel"


def test_dgpref_refuses_a_seed_it_would_ignore():
    "A DGPref run trains each seed of `seeds`; `-p seed 3` used to be accepted and silently ignored."
    from mllm_nle.recipes import dgpref
    with pytest.raises(ConfigError, match="`seed` is not used"): dgpref.DGPrefConfig(seed=3)
    assert dgpref.DGPrefConfig(seeds=[3]).seeds == [3]
