"""The real path pinned on real-shaped checkpoints (`mllm_nle.realshape`: the real Qwen2.5 and Llama-2 tokenizers,
processor configs, chat templates and generation configs; 2 small layers, random weights, written with
save_pretrained). Every test here needs ../shared/data/tokenizers and skips, naming it, without it."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mllm_nle import inputs, models, realshape
from mllm_nle.batches import SFTCollator, trained_text
from mllm_nle.core import shared_data

TOK = realshape.tokenizers_dir()
needs_tokenizers = pytest.mark.skipif(not ((TOK/"qwen2_5"/"tokenizer.json").exists() and (TOK/"llama2"/"tokenizer.json").exists()),
                                      reason=f"the real tokenizers are not in {TOK}")
TWITTER = shared_data("mcm-dpo-samples", "twitter")
needs_samples = pytest.mark.skipif(not TWITTER.exists(), reason=f"shared MCM-DPO samples not found at {TWITTER}")
pytestmark = needs_tokenizers

RESPONSES = ["Because it contains a large light at the top. So the answer is lighthouse.",
             "Because it has a large ship on the water. So the answer is boat.",
             "A dog, 3 cats and \"OPEN\" written on a sign; 你好."]


def _banner(tmp_path, w=1170, h=202) -> str:
    p = tmp_path/f"img_{w}x{h}.png"
    if not p.exists():
        im = Image.new("RGB", (w, h), (200, 30, 30)); im.paste((30, 200, 30), (0, 0, w // 3, h)); im.save(p)
    return str(p)


@pytest.fixture(scope="module")
def qwen(): return models.resolve_backbone("realshape:qwen2_5_vl")


@pytest.fixture(scope="module")
def llava(): return models.resolve_backbone("realshape:llava")


def _llava_variant(bb, legacy):
    "The real-shaped LLaVA with its tokenizer as loaded (None: the folder's tokenizer.json, as transformers 5 loads it) or as a "
    "LlamaTokenizer with `legacy` True / False (how other transformers versions build it from the same files)."
    from transformers import LlamaTokenizer
    if legacy is None: return bb
    proc = models.load_backbone(bb.path).processor
    proc.tokenizer = LlamaTokenizer.from_pretrained(bb.path, legacy=legacy)
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == 32000
    return models.Backbone(bb.model, proc, bb.family, bb.path)


def _variants(qwen, llava):
    return [("qwen", qwen)] + [(f"llava legacy={l}", _llava_variant(llava, l)) for l in (None, True, False)]


def _expect_ids(bb, response):
    "The response's own tokens, then the end-of-turn token: what the loss must train, nothing more."
    tok = bb.tokenizer
    return tok(response, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(models.end_of_turn(bb.processor))]


def _check_rows(bb, batch, responses, tag):
    eot = models.end_of_turn(bb.processor)
    for i, r in enumerate(responses):
        ids = batch["input_ids"][i][batch["labels"][i] != -100].tolist()
        assert ids == _expect_ids(bb, r), f"{tag} row {i}: trained {bb.tokenizer.convert_ids_to_tokens(ids)}"
        assert trained_text(bb.processor, batch, i).lstrip() == r + eot, tag


def test_checkpoint_is_real_shaped(qwen, llava):
    "The files and fields of the real downloads: tokenizers reproduce the published encodings, ids and configs are the real ones."
    assert qwen.tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert llava.tokenizer("Hello world")["input_ids"] == [1, 15043, 3186]
    assert [llava.tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<pad>")] == [32000, 32001]
    qc, lc = qwen.model.config, llava.model.config
    assert (qc.text_config.vocab_size, qc.image_token_id, qc.vision_start_token_id, qc.vision_end_token_id) == (151936, 151655, 151652, 151653)
    assert lc.text_config.vocab_size == 32064 and lc.image_token_index == 32000 and lc.vision_feature_layer == -2
    g = json.loads((Path(qwen.path)/"generation_config.json").read_text())
    assert (g["do_sample"], g["top_k"], g["top_p"], g["temperature"], g["repetition_penalty"]) == (True, 1, 0.001, 0.1, 1.05)
    for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.json", "generation_config.json", "config.json"):
        assert (Path(qwen.path)/f).exists() and (Path(llava.path)/f).exists(), f
    assert json.loads((Path(llava.path)/"tokenizer_config.json").read_text())["legacy"] is False


@pytest.mark.parametrize("with_image", [True, False])
def test_sft_rows_train_exactly_the_response(qwen, llava, tmp_path, with_image):
    "SFT: the trained tokens of each row are exactly the response's tokens plus the end-of-turn token, SentencePiece both ways."
    img = _banner(tmp_path) if with_image else None
    recs = [dict(id=str(i), image=img, prompt="What kind of building is this?", response=r) for i, r in enumerate(RESPONSES)]
    for tag, bb in _variants(qwen, llava):
        _check_rows(bb, SFTCollator(bb.processor)(recs), RESPONSES, tag)


def test_prompt_formats_keep_the_boundary(llava, tmp_path):
    "LLaVA's v1 system prompt and DGPref's `<image>\\nUSER:` order: the prompts render as released, and the boundary holds."
    for fmt, expect in (("llava_v1", f"{inputs.LLAVA_V1_SYSTEM} USER: <image>\nDescribe it. ASSISTANT:"),
                        ("dgpref", "<image>\nUSER: Describe it.\nASSISTANT:")):
        for legacy in (None, True, False):
            bb = _llava_variant(llava, legacy)
            proc = models.load_backbone(llava.path, prompt_format=fmt).processor
            proc.tokenizer = bb.tokenizer
            assert models.chat_prompt(proc, "Describe it.") == expect
            b = SFTCollator(proc)([dict(id="0", image=_banner(tmp_path), prompt="Describe it.", response=RESPONSES[0])])
            _check_rows(models.Backbone(llava.model, proc, "llava", llava.path), b, RESPONSES[:1], f"{fmt} legacy={legacy}")
    with pytest.raises(Exception, match="LLaVA release's format"):
        models.load_backbone(realshape.spec_path("realshape:qwen2_5_vl"), prompt_format="dgpref")


def test_every_recipe_layout_trains_response_plus_end_of_turn(qwen, llava, tmp_path):
    "MCLE, DPO (chosen and rejected), HACL (LM rows and captions) and MCM-DPO's eight rows, on both families."
    from mllm_nle.recipes.dgpref import PreferenceCollator
    from mllm_nle.recipes.hacl import HACLCollator
    from mllm_nle.recipes.mcle import MCLECollator
    from mllm_nle.recipes.mcmdpo import MCMDPOCollator
    from mllm_nle.losses import MCM_CONDITIONS
    img, img2 = _banner(tmp_path), _banner(tmp_path, 300, 500)
    mcle = [dict(id=f"m{i}", image=img, prompt="What kind of building is this?", response=r, weight=w, level=lv, group="g")
            for i, (r, w, lv) in enumerate(zip(RESPONSES, (1.0, -1.0, -1.0), ("positive", "semantic", "image")))]
    pref = [dict(id="p0", image=img, prompt="Describe the image.", chosen=RESPONSES[0], rejected=RESPONSES[1]),
            dict(id="p1", image=img2, prompt="Describe the image.", chosen=RESPONSES[2], rejected=RESPONSES[0])]
    hacl = [dict(id="h0", image=img, prompt="Describe the image briefly.", response=RESPONSES[0], caption=RESPONSES[0],
                 hallucinated=[RESPONSES[1]]), dict(id="h1", image=img2, prompt="What is it?", response=RESPONSES[2])]
    mcm = [dict(id=f"c{i}", image=im, question=f"Write alt-text.\nContext:\npost {i}", prompt="x", context=f"post {i}",
                chosen=c, rejected=r) for i, (im, c, r) in enumerate(((img, RESPONSES[0], RESPONSES[1]), (img2, RESPONSES[2], RESPONSES[0])))]
    for tag, bb in _variants(qwen, llava):
        p = bb.processor
        _check_rows(bb, MCLECollator(p)(mcle), RESPONSES, f"{tag} mcle")
        _check_rows(bb, PreferenceCollator(p)(pref), [RESPONSES[0], RESPONSES[2], RESPONSES[1], RESPONSES[0]], f"{tag} dpo")
        hb = HACLCollator(p)(hacl)
        _check_rows(bb, hb["lm"], [RESPONSES[0], RESPONSES[2]], f"{tag} hacl lm")
        for k, texts in (("captions", [RESPONSES[0]]), ("hallucinated", [RESPONSES[1]])):   # read alone: text + eos
            for i, t in enumerate(texts):
                ids = hb[k]["input_ids"][i][hb[k]["labels"][i] != -100].tolist()
                assert ids == bb.tokenizer(t, add_special_tokens=False)["input_ids"] + [bb.tokenizer.eos_token_id], f"{tag} hacl {k}"
        mb = MCMDPOCollator(p, pool=mcm)(mcm)
        want = [(r["rejected"] if c.endswith("yl") else r["chosen"]) for c in MCM_CONDITIONS for r in mcm]
        assert len(mb["input_ids"]) == 8 * len(mcm)
        _check_rows(bb, mb, want, f"{tag} mcm-dpo")


@needs_samples
def test_image_tokens_equal_image_features(qwen, llava):
    "On the shared Twitter images (a 1170x202 banner among them): as many image tokens in input_ids as image features, per image."
    imgs = sorted((TWITTER/"image"/"twitter_test").iterdir())[:4]
    for bb, cap in ((models.resolve_backbone("realshape:qwen2_5_vl", max_image_tokens=256), 256), (llava, None)):
        recs = [dict(id=str(i), image=str(p), prompt="Describe the image.", response="A photo.") for i, p in enumerate(imgs)]
        b = SFTCollator(bb.processor)(recs)
        img_id = bb.tokenizer.convert_tokens_to_ids(bb.processor.image_token)
        feats = models.image_features(bb.model, b)
        per_row = (b["input_ids"] == img_id).sum(-1).tolist()
        assert per_row == [f.shape[0] for f in feats]
        w_h = [Image.open(p).size for p in imgs]
        assert per_row == [inputs.image_tokens(bb.processor, w, h) for w, h in w_h]   # the pre-flight count is the batch's
        if cap: assert max(per_row) <= cap
        else: assert per_row == [576] * len(imgs)
        lp = models.sequence_logps(bb.model, b)
        assert torch.isfinite(lp.sum).all()


def test_max_image_tokens_caps_a_large_image(tmp_path):
    "max_image_tokens=256 keeps a 4000x3000 image at <= 256 tokens (the checkpoint's own limit would give about 15,000)."
    p = tmp_path/"big.png"; Image.new("RGB", (4000, 3000), (10, 120, 200)).save(p)
    default = models.resolve_backbone("realshape:qwen2_5_vl")
    assert inputs.image_tokens(default.processor, 4000, 3000) > 15000
    bb = models.resolve_backbone("realshape:qwen2_5_vl", max_image_tokens=256)
    b = SFTCollator(bb.processor)([dict(id="0", image=str(p), prompt="Describe.", response="Blue.")])
    n = int((b["input_ids"] == bb.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert 200 <= n <= 256 and n == inputs.image_tokens(bb.processor, 4000, 3000)
    with pytest.raises(Exception, match="576 tokens for every image"):
        models.resolve_backbone("realshape:llava", max_image_tokens=256)


def test_llava_pads_to_square_by_default(llava, tmp_path):
    "image_preprocess pad (default, as the releases): the banner's whole width survives; crop keeps its centre only."
    p = _banner(tmp_path)   # left third green, rest red
    pad = SFTCollator(llava.processor)([dict(id="0", image=p, prompt="x", response="y")])["pixel_values"][0]
    crop_bb = models.load_backbone(llava.path, image_preprocess="crop")
    crop = SFTCollator(crop_bb.processor)([dict(id="0", image=p, prompt="x", response="y")])["pixel_values"][0]
    mean = torch.tensor(realshape.CLIP_MEAN)[:, None]; std = torch.tensor(realshape.CLIP_STD)[:, None]
    rgb = lambda x, row: (x[:, row, :] * std + mean)   # [3, 336] one row, back to [0, 1]
    assert rgb(pad, 0).sub(torch.tensor([122, 116, 104])[:, None] / 255).abs().max() < 0.02   # the top row is padding
    assert rgb(pad, 168)[1, 5] > 0.6 and rgb(pad, 168)[0, -5] > 0.6          # the middle row: green at the left, red at the right
    assert rgb(crop, 0)[1, 5] < 0.4                                           # the crop has lost the green left third


def _train_to_say(bb, response, steps=60):
    "Overfit `bb` on one text-only example (the end-of-turn token included), so its greedy output is known."
    m = bb.model; m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    b = models.build_batch(bb.processor, [dict(image=None, prompt="What is in the picture?", response=response)])
    for _ in range(steps):
        loss = -models.sequence_logps(m, b).mean.mean(); loss.backward(); opt.step(); opt.zero_grad()
    m.eval()


def test_generation_stops_at_end_of_turn_and_parses():
    "A model trained to say one explanation says exactly it and stops at the end of turn (Qwen <|im_end|>, LLaVA </s>)."
    from mllm_nle.metrics import parse_nle
    say = "Because it has a lamp on top. So the answer is lighthouse."
    for spec in ("realshape:qwen2_5_vl", "realshape:llava"):
        torch.manual_seed(0)
        bb = models.resolve_backbone(spec)
        _train_to_say(bb, say)
        out = models.generate(bb.model, bb.processor, [dict(image=None, prompt="What is in the picture?")], max_new_tokens=40)
        assert out == [say], (spec, out)
        p = parse_nle(out[0])
        assert (p.explanation, p.answer, p.parsed) == ("it has a lamp on top", "lighthouse", True), p


def test_sampling_ignores_the_checkpoints_generation_config(qwen):
    "8 samples at temperature 0.7 from a checkpoint with Qwen's generation config (top_k 1, top_p 0.001) are not all the same."
    ex = [dict(image=None, prompt="Describe a sunny day.")] * 8
    torch.manual_seed(0)
    ours = models.generate(qwen.model, qwen.processor, ex, max_new_tokens=12, do_sample=True, temperature=0.7, batch_size=8)
    assert len(set(ours)) > 1
    # the positive control: transformers' own generate with only do_sample and temperature keeps top_k 1 from the checkpoint
    enc = qwen.tokenizer([models.chat_prompt(qwen.processor, "Describe a sunny day.", has_image=False)] * 8, return_tensors="pt")
    torch.manual_seed(0)
    raw = qwen.model.generate(**enc, max_new_tokens=12, do_sample=True, temperature=0.7, pad_token_id=151643)
    assert len({tuple(r) for r in raw[:, enc["input_ids"].shape[1]:].tolist()}) == 1
    s = inputs.decoding_settings(max_new_tokens=12, do_sample=True, temperature=0.7)
    assert (s["top_k"], s["top_p"], s["repetition_penalty"]) == (0, 1.0, 1.0)


def test_greedy_has_no_repetition_penalty(qwen):
    "Greedy evaluation with the checkpoint's repetition_penalty 1.05 left out: ours equals a raw greedy decode at penalty 1.0."
    ex = [dict(image=None, prompt="Count: one one one one")]
    ours = models.generate(qwen.model, qwen.processor, ex, max_new_tokens=16)
    enc = qwen.tokenizer([models.chat_prompt(qwen.processor, ex[0]["prompt"], has_image=False)], return_tensors="pt")
    ids = qwen.model.generate(**enc, max_new_tokens=16, do_sample=False, repetition_penalty=1.0, pad_token_id=151643,
                              eos_token_id=[151645, 151643])
    assert ours == [qwen.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()]


@needs_samples
def test_dgpref_dpo_arm_trains_on_real_shaped_llava(tmp_path):
    """DGPref's DPO arm (the release's LoRA on the LLM's and CLIP's q/v, the stored reference) on a real-shaped LLaVA with pairs in
    the pipeline's format: the start model and the arm are both in the study, and the first loss is ln 2 (reference = policy)."""
    import math
    from mllm_nle import data, experiment, train
    from mllm_nle.recipes import dgpref, dgpref_pipeline as pipe, dgpref_study as study
    imgs = sorted((TWITTER/"image"/"twitter_test").iterdir())[:2]
    pairs = [dict(id=f"{p.stem}:0>1", image=str(p), prompt=pipe.CAPTION_PROMPTS[0], chosen=RESPONSES[0], rejected=RESPONSES[1],
                  expert="vqa", chosen_score=0.0, rejected_score=-0.5) for p in imgs]
    (tmp_path/"prefs.json").write_text(json.dumps(pairs))
    cfg = dgpref.DGPrefConfig(backbone="realshape:llava", sft_steps=0, pool_images=str(TWITTER/"image"/"twitter_test"), arms=["dgpref_vqa"],
                              official_expert="vqa", steps=2, batch_size=2, lr=1e-3, logging_steps=1, seeds=[0], cache_dir=str(tmp_path/"c"))
    recs, _ = data.load_preferences(tmp_path/"prefs.json")
    ref = pipe.reference_stage(cfg, experiment.load_model(cfg), recs, tmp_path/"ref.json")
    recs = train.attach_reference_logps(recs, ref)
    ev = lambda bb: dict(summary={"n": 1.0}, rows=[{}])
    st = experiment.run_study(cfg, tmp_path/"run", Path(cfg.backbone), [experiment.Arm("dgpref_vqa", study.dpo_maker(cfg), recs)], ev, seeds=[0])
    assert set(st["summary"]) == {"baseline", "dgpref_vqa"}
    log = json.loads((tmp_path/"run"/"seed0"/"dgpref_vqa"/"train_log.json").read_text())
    losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    assert log["steps"] == 2 and abs(losses[0] - math.log(2)) < 1e-3, losses
    assert st["meta"]["preflight"]["min"] == 576
