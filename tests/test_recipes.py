"""The recipes' collators on the real files in ../shared/data: MCLE, preference pairs (DGPref), MCM-DPO and HACL.
Each builds the batch its method's loss reads; these tests decode the rows and check what is trained."""
import math

import numpy as np
import pytest
import torch

from mllm_nle import batches as B, data as D, models
from mllm_nle.core import shared_data
from mllm_nle.losses import MCM_CONDITIONS
from mllm_nle.recipes import dgpref, hacl, mcle, mcmdpo

DEMO = shared_data("mcle-demo")
MCM = shared_data("mcm-dpo-samples")
needs_shared = pytest.mark.skipif(not DEMO.exists(), reason=f"shared real data not present ({DEMO.parent})")
torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "llava"])
def proc(request):
    return models.tiny_backbone(request.param).processor


def n_images(batch):
    "How many distinct images the batch's pixel_values hold."
    return len(batch["image_grid_thw"]) if "image_grid_thw" in batch else len(batch["pixel_values"])


def trained(proc, batch, row): return B.trained_text(proc, batch, row)


@needs_shared
def test_mcle_collator(proc):
    from mllm_nle.models import end_of_turn
    tr, _ = D.load_mcle_train(DEMO/"train.json", image_root=DEMO)
    assert mcle.MCLECollator(proc)(tr)["levels"].tolist() == [0, 4, 4]  # the real file names no levels: 'negative'
    tr = [dict(r, level=l) for r, l in zip(tr, ("positive", "semantic", "instance"))]
    other = dict(tr[0], id="x", image=str(DEMO/"val"/"demo_val.jpg"), group="g2", level="image", weight=-0.5)
    b = mcle.MCLECollator(proc)(tr + [other])
    assert b["weights"].tolist() == [1.0, -1.0, -1.0, -0.5]
    assert b["levels"].tolist() == [D.MCLE_LEVELS.index(l) for l in ("positive", "semantic", "instance", "image")]
    assert b["groups"].tolist() == [0, 0, 0, 1] and b["image_index"].tolist() == [0, 0, 0, 1] and n_images(b) == 2
    for i, r in enumerate(tr + [other]):
        assert trained(proc, b, i).strip() == r["response"] + end_of_turn(proc)
    # nothing before the response is trained, padding included
    for i in range(4):
        lab = b["labels"][i]; first = int((lab != -100).nonzero()[0])
        assert (lab[:first] == -100).all() and (lab[first:][b["attention_mask"][i][first:] == 0] == -100).all()


@needs_shared
def test_preference_collator(proc):
    img = str(DEMO/"train"/"demo_train.jpg")
    recs = [dict(id=str(k), image=img, prompt="Describe.", chosen=f"A lighthouse {k}.", rejected=f"A ship {k}.",
                 ref_chosen_logp=-1.0 - k, ref_rejected_logp=-2.0 - k) for k in range(3)]
    b = dgpref.PreferenceCollator(proc)(recs)
    assert b["n_pairs"] == 3 and len(b["input_ids"]) == 6 and n_images(b) == 1
    assert [trained(proc, b, i).split(".")[0].strip() for i in range(6)] == [f"A lighthouse {k}" for k in range(3)] + [f"A ship {k}" for k in range(3)]
    assert b["ref_chosen_logp"].tolist() == [-1.0, -2.0, -3.0] and b["ref_rejected_logp"].tolist() == [-2.0, -3.0, -4.0]


def _mcm():
    base = MCM/"twitter"
    return D.load_mcmdpo_train(base/"twitter_train.json", image_root=base/"image"/"twitter_train")[0]


@needs_shared
def test_mcmdpo_collator(proc):
    recs = _mcm()
    coll = mcmdpo.MCMDPOCollator(proc, pool=recs, seed=3)
    b = coll(recs[:2])
    assert b["n_pairs"] == 2 and len(b["input_ids"]) == 16 and n_images(b) == 4  # 2 clean + 2 noised
    assert b["image_index"].tolist() == [0, 1, 0, 1, 2, 3, 2, 3] * 2
    for k, cond in enumerate(MCM_CONDITIONS):
        c, m, y = (p.endswith("l") for p in cond.split("_"))
        for j in range(2):
            t = trained(proc, b, 2 * k + j)
            assert (recs[j]["rejected"] if y else recs[j]["chosen"]) in t
            own_context = recs[j]["context"][:30] in proc.tokenizer.decode(b["input_ids"][2 * k + j])
            assert own_context == (not c), (cond, j)
    # deterministic: same seed -> same negatives (another instance, another call); other seed -> other noise
    b2 = mcmdpo.MCMDPOCollator(proc, pool=recs, seed=3)(recs[:2])
    assert torch.equal(b["pixel_values"], b2["pixel_values"]) and torch.equal(b["input_ids"], b2["input_ids"])
    b3 = mcmdpo.MCMDPOCollator(proc, pool=recs, seed=4)(recs[:2])
    assert not torch.equal(b["pixel_values"], b3["pixel_values"])
    # precomputed reference log-probs (one per condition) come out in row order
    withref = [dict(r, ref_logps=[10.0 * j + k for k in range(8)]) for j, r in enumerate(recs[:2])]
    assert coll(withref)["ref_logps"].tolist() == [10.0 * j + k for k in range(8) for j in range(2)]
    assert "ref_logps" not in b
    # context negatives are drawn from a pool (the whole dataset), never from the batch: with a pool of two records,
    # each gets the other's question; with no pool and no assigned negative, the collator refuses
    q = mcmdpo.MCMDPOCollator(proc).negatives(recs[0], recs[:2])[0]
    assert q == recs[1]["question"]
    with pytest.raises(ValueError, match="no context negative and the collator has no pool"):
        mcmdpo.MCMDPOCollator(proc)(recs[:1])


@needs_shared
@pytest.mark.parametrize("kind", ["black", "crop", "rotate", "random"])
def test_mcmdpo_image_negatives(kind):
    recs = _mcm()
    proc = models.tiny_backbone("llava").processor
    coll = mcmdpo.MCMDPOCollator(proc, pool=recs, image_negative=kind)
    q, m_l = coll.negatives(recs[0], recs)
    clean = coll.image(recs[0])
    assert m_l.size == clean.size or kind == "random"
    assert not np.array_equal(np.asarray(m_l), np.asarray(clean))
    if kind == "black": assert np.asarray(m_l).max() == 0
    assert len(coll(recs[:2])["input_ids"]) == 16


@needs_shared
def test_hacl_collator(proc):
    img = str(DEMO/"train"/"demo_train.jpg")
    recs = [dict(id="a", image=img, prompt="Describe.", response="A lighthouse.", caption="A lighthouse.", hallucinated=["A ship."]),
            dict(id="b", image=img, prompt="Describe.", response="A tall tower.", caption="A tall tower.", hallucinated=["A short tower.", "A red tower."])]
    h = hacl.HACLCollator(proc)(recs)
    assert n_images(h["lm"]) == 1 and h["lm"]["image_index"].tolist() == [0, 0]
    assert h["n_hallucinated"].tolist() == [1, 2] and h["hallucinated_index"].tolist() == [0, 1, 1]
    assert len(h["captions"]["input_ids"]) == 2 and len(h["hallucinated"]["input_ids"]) == 3
    for k, s in enumerate(["A ship.", "A short tower.", "A red tower."]):
        assert trained(proc, h["hallucinated"], k) == s + proc.tokenizer.eos_token


@needs_shared
def test_corrupt_image_is_seeded_and_keeps_the_image():
    from PIL import Image
    im = Image.open(DEMO/"train"/"demo_train.jpg").convert("RGB").resize((64, 48))
    a, b = mcmdpo.corrupt_image(im, seed=1), mcmdpo.corrupt_image(im, seed=1)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(mcmdpo.corrupt_image(im, seed=2)))
    assert abs(math.sqrt(mcmdpo.vcd_alpha_bar(700)) - 0.593) < 1e-3
    c = np.corrcoef(np.asarray(im, float).ravel(), np.asarray(a, float).ravel())[0, 1]
    assert 0.2 < c < 0.9, c


@needs_shared
def test_multilevel_runs_on_the_official_demo_files(tmp_path):
    "The real MCLE files name no levels ('negative'): multilevel trains on them, every negative paired."
    from mllm_nle.train import build_trainer, get_method, make_training_args
    recs, _ = D.load_mcle_train(DEMO/"train.json", image_root=DEMO)
    bb = models.tiny_backbone("qwen2_5_vl", "xs")
    args = make_training_args(tmp_path, max_steps=2, per_device_train_batch_size=1, logging_steps=1, report_to="none",
                              disable_tqdm=True, save_strategy="no")
    tr = build_trainer(get_method("mcle", variant="multilevel"), bb, recs, args, lora=dict(r=4))
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) and h["mcle/unpaired"] == 0 and "loss/negative" in h for h in logs)
