"Heavier checks of `mllm_nle.models` on both tiny families: round trips, adapters, shared images, generation."
import pytest, torch
from PIL import Image, ImageDraw

from mllm_nle.models import (add_lora, build_batch, end_of_turn, expand_images, forward_features, generate,
                             image_features, load_adapter, load_backbone, module_part, pooled_text,
                             sequence_logps, set_trainable, tiny_backbone, trainable_parts)

FAMILIES = ["qwen2_5_vl", "llava"]
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def _img(colour, shape="ellipse"):
    im = Image.new("RGB", (112, 112), "white")
    getattr(ImageDraw.Draw(im), shape)([20, 30, 90, 80], fill=colour)
    return im


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny matrices gain nothing from threads, and a shared 2-core CPU makes spinning threads very slow."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory): return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module", params=FAMILIES)
def bb(request, cache): return tiny_backbone(request.param, "xs", cache_dir=cache)


@pytest.fixture(scope="module")
def examples():
    red, blue = _img("red"), _img("blue", "rectangle")
    return [dict(image=red, prompt="What colour is the shape?", response="It is red.", image_key="r"),
            dict(image=red, prompt="What colour is the shape?", response="Because it is blue. So the answer is blue.", image_key="r"),
            dict(image=blue, prompt="What shape is it?", response="a square", image_key="b"),
            dict(image=_img("red"), prompt="Is it red?", response="yes", image_key="r"),  # same key: one image
            dict(image=None, prompt="Describe a red circle.", response="A red circle.")]


def _fresh(bb): return load_backbone(bb.path)


def _logits(model, batch):
    return model(**{k: v for k, v in expand_images(batch).items() if k in MODEL_KEYS}).logits


def test_save_load_round_trip_identical_logits(bb, examples, tmp_path):
    b = build_batch(bb.processor, examples)
    bb.model.save_pretrained(tmp_path); bb.processor.save_pretrained(tmp_path)
    again = load_backbone(tmp_path)
    assert again.family == bb.family
    with torch.no_grad(): assert torch.equal(_logits(bb.model, b), _logits(again.model, b))
    b2 = build_batch(again.processor, examples)
    for k in b: assert torch.equal(b[k], b2[k]), k


def test_label_masking_exact(bb, examples):
    b = build_batch(bb.processor, examples)
    tok = bb.tokenizer
    assert b["image_index"].tolist() == [0, 0, 1, 0, -1]
    for i, ex in enumerate(examples):
        resp = (ex["response"] if bb.family != "llava" else " " + ex["response"]) + end_of_turn(bb.processor)
        r_ids = tok(resp, add_special_tokens=False)["input_ids"]
        n = int(b["attention_mask"][i].sum())
        ids, lab = b["input_ids"][i], b["labels"][i]
        assert lab[:n - len(r_ids)].eq(-100).all() and lab[n:].eq(-100).all()   # prompt, image, pad
        assert lab[n - len(r_ids):n].tolist() == r_ids == ids[n - len(r_ids):n].tolist()
    nolab = build_batch(bb.processor, [dict(examples[0], response=None)])
    assert nolab["labels"].eq(-100).all()


def test_sequence_logps_matches_full_logits(bb, examples):
    b = build_batch(bb.processor, examples)
    with torch.no_grad():
        lp = sequence_logps(bb.model, b)
        logp = _logits(bb.model, b).float().log_softmax(-1)
    lab = b["labels"]
    for i in range(len(examples)):
        ts = (lab[i] != -100).nonzero().flatten().tolist()
        hand = [logp[i, t - 1, lab[i, t]].item() for t in ts]
        assert lp.lengths[i] == len(ts)
        assert lp.sum[i].item() == pytest.approx(sum(hand), abs=1e-4)
        assert lp.mean[i].item() == pytest.approx(sum(hand) / len(ts), abs=1e-5)
        assert lp.token_logps[i, ts].tolist() == pytest.approx(hand, abs=1e-5)


def test_left_and_right_padding_agree(bb, examples):
    "Positions (incl. Qwen's mrope) follow the attention mask, so the padding side does not change log-probs."
    with torch.no_grad():
        r = sequence_logps(bb.model, build_batch(bb.processor, examples, padding_side="right"))
        l = sequence_logps(bb.model, build_batch(bb.processor, examples, padding_side="left"))
    torch.testing.assert_close(r.sum, l.sum, atol=1e-4, rtol=1e-5)


def test_dedup_equals_every_copy_and_runs_vision_once(bb, examples):
    model = add_lora(_fresh(bb).model, r=4, on_vision=True, on_projector=True)
    for n, p in model.named_parameters():           # LoRA B starts at zero: make adapters matter
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.05)
    model.eval()                                     # no LoRA dropout: both passes see the same function
    b = build_batch(bb.processor, examples)
    calls = []
    vis = model.base_model.model.model
    tower = vis.visual if hasattr(vis, "visual") else vis.vision_tower
    h = tower.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    grads = []
    for batch in (b, expand_images(b)):
        model.zero_grad()
        lp = sequence_logps(model, batch)
        lp.sum.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if batch is b: sums = lp.sum.detach()
    h.remove()
    torch.testing.assert_close(sums, lp.sum.detach(), atol=1e-4, rtol=1e-5)
    assert len(calls) == 2                               # one tower call per forward
    per_image = calls[1] // 4                            # the expanded batch holds 4 image copies
    assert calls[0] == 2 * per_image                     # the deduplicated one holds 2 distinct images
    assert grads[0].keys() == grads[1].keys() and any(module_part(n) == "vision" for n in grads[0])
    for n in grads[0]: torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-3)


def test_frozen_vision_runs_without_grad(bb, examples):
    model = _fresh(bb).model
    b = build_batch(bb.processor, examples)
    set_trainable(model, vision=False, projector=False, llm=True)
    assert trainable_parts(model)["vision"] == 0
    feats = image_features(model, b)
    assert not any(f.requires_grad for f in feats)
    set_trainable(model, vision=False, projector=True, llm=True)
    feats = image_features(model, b)
    assert all(f.requires_grad for f in feats)         # the trainable projector is in the graph
    lp = sequence_logps(model, b)
    lp.mean.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if module_part(n) == "vision")


def test_adapter_save_and_reload_identical(bb, examples, tmp_path):
    model = add_lora(_fresh(bb).model, r=4)
    for n, p in model.named_parameters():
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.05)
    model.eval()
    b = build_batch(bb.processor, examples)
    with torch.no_grad(): before = sequence_logps(model, b).sum
    model.save_pretrained(tmp_path / "ckpt" / "adapter")
    import json
    targets = json.loads((tmp_path / "ckpt" / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(module_part(t) == "llm" for t in targets)
    loaded = load_adapter(_fresh(bb), tmp_path / "ckpt")
    with torch.no_grad():
        after = sequence_logps(loaded.model, b).sum
        base = sequence_logps(_fresh(bb).model, b).sum
    assert torch.equal(before, after)
    with torch.no_grad():                                # a LoRA folder also loads directly: base + adapter
        assert torch.equal(sequence_logps(load_backbone(tmp_path / "ckpt" / "adapter").model, b).sum, before)
    assert not torch.allclose(before, base)              # the adapter does change the model
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"): load_adapter(bb, tmp_path)


def test_text_only_batches_and_pooled_features(bb, examples):
    caps = [dict(image=None, prompt=ex["response"], response=None) for ex in examples]
    b = build_batch(bb.processor, caps)
    assert "pixel_values" not in b and b["image_index"].eq(-1).all()
    with torch.no_grad():
        t = pooled_text(bb.model, b)
        f = forward_features(bb.model, build_batch(bb.processor, examples), ("image", "image_llm", "text"))
    H = bb.model.config.text_config.hidden_size
    assert t.shape == (len(caps), H) and torch.isfinite(t).all()
    assert f["image"].shape == f["image_llm"].shape == (2, H) and f["text"].shape == (len(examples), H)
    # HACL's representation depends on the image, and the pooled text on the text
    assert not torch.allclose(f["image_llm"][0], f["image_llm"][1]) and not torch.allclose(t[0], t[1])


def test_generation_greedy_deterministic_with_adapter(bb, examples):
    model = add_lora(_fresh(bb).model, r=4)
    g1 = generate(model, bb.processor, examples, max_new_tokens=5, batch_size=3)
    g2 = generate(model, bb.processor, examples, max_new_tokens=5, batch_size=5)
    assert g1 == g2 and len(g1) == len(examples)
    s = generate(model, bb.processor, examples[:2], max_new_tokens=5, do_sample=True, top_k=0, temperature=1.0)
    assert len(s) == 2 and all(isinstance(x, str) for x in s)


def test_small_size_builds_and_runs(bb, examples, cache):
    small = tiny_backbone(bb.family, "s", cache_dir=cache)
    n_s, n_xs = (sum(p.numel() for p in m.parameters()) for m in (small.model, bb.model))
    assert n_s > 2 * n_xs
    with torch.no_grad(): lp = sequence_logps(small.model, build_batch(small.processor, examples))
    assert torch.isfinite(lp.sum).all() and (lp.sum < 0).all()
