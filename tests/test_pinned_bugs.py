"""Four behaviours that once let a realistic one-line bug pass every test.

Each test here was checked by putting its bug back into the library and watching the test fail:
1. the live DPO reference computed with the adapters left on;
2. HACL embeddings not L2-normalised before the similarity;
3. POPE precision and recall swapped;
4. VQA answer normalisation that keeps the articles.
"""
import pytest
import torch
import torch.nn.functional as F

from mllm_nle import metrics, models
from mllm_nle.core import seed_everything
from mllm_nle.losses import hacl_contrastive_loss
from mllm_nle.recipes.dgpref import PreferenceCollator, toy_records
from mllm_nle.train import policy_and_reference_logps, reference_logps

torch.set_num_threads(1)


# ---------------------------------------------------------------- 1. live reference = base model
@pytest.fixture(scope="module")
def lora_and_base(tmp_path_factory):
    "A tiny backbone with a LoRA whose B matrices are non-zero, so adapters on and off really differ."
    seed_everything(0)
    bb = models.tiny_backbone("qwen2_5_vl", "xs")
    recs = toy_records(3, tmp_path_factory.mktemp("pref"))
    batch = PreferenceCollator(bb.processor)(recs)
    base_logps = models.sequence_logps(bb.model, batch)          # no LoRA at all
    peft = models.add_lora(bb.model, r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n: p.copy_(0.5 * torch.randn(p.shape, generator=g))
    peft.eval()
    return peft, batch, base_logps


def test_live_reference_is_the_base_model_not_the_policy(lora_and_base):
    peft, batch, base = lora_and_base
    policy = models.sequence_logps(peft, batch)
    assert (policy.sum - base.sum).abs().max() > 1e-2, "the LoRA must change the log-probs for this test to mean anything"
    ref = reference_logps(peft, batch)
    torch.testing.assert_close(ref.sum, base.sum, atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.mean, base.mean, atol=1e-5, rtol=0)


def test_shared_vision_pass_reference_is_the_base_model(lora_and_base):
    peft, batch, base = lora_and_base
    pol, ref = policy_and_reference_logps(peft, batch)
    torch.testing.assert_close(ref.sum, base.sum, atol=1e-4, rtol=0)
    torch.testing.assert_close(pol.sum, models.sequence_logps(peft, batch).sum, atol=1e-4, rtol=0)
    assert (pol.sum - ref.sum).abs().max() > 1e-2


# ---------------------------------------------------------------- 2. HACL embeddings are L2-normalised
def _hacl_closed_form(v, t, h, tau):
    v, t, h = (F.normalize(x, dim=-1) for x in (v, t, h))
    i2t = F.cross_entropy(torch.cat([v @ t.T, v @ h.T], 1) / tau, torch.arange(len(v)))
    t2i = F.cross_entropy(t @ v.T / tau, torch.arange(len(v)))
    return (i2t + t2i) / 2


def test_hacl_loss_is_invariant_to_rescaling_each_input():
    g = torch.Generator().manual_seed(3)
    v, t, h = (torch.randn(n, 8, generator=g) for n in (4, 4, 5))
    a = hacl_contrastive_loss(v, t, 0.1, h)[0]
    b = hacl_contrastive_loss(3 * v, 0.5 * t, 0.1, 2 * h)[0]
    torch.testing.assert_close(a, b)


def test_hacl_loss_matches_closed_form_on_unnormalised_inputs():
    g = torch.Generator().manual_seed(4)
    v, t, h = (5 * torch.randn(n, 8, generator=g) for n in (4, 4, 6))
    torch.testing.assert_close(hacl_contrastive_loss(v, t, 0.07, h)[0], _hacl_closed_form(v, t, h, 0.07))


# ---------------------------------------------------------------- 3. POPE precision vs recall
def test_pope_precision_and_recall_are_not_swapped():
    # gold: 4 yes, 4 no. predictions: 3 true positives, 1 false negative, 2 false positives, 2 true negatives.
    labels = ["yes"] * 4 + ["no"] * 4
    outputs = ["Yes.", "yes", "Yes, there is.", "No.", "Yes.", "yes", "No.", "no"]
    s = metrics.pope_scores(outputs, labels)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (3, 1, 2, 2)
    assert s["precision"] == pytest.approx(3 / 5)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert s["yes_ratio"] == pytest.approx(5 / 8)


# ---------------------------------------------------------------- 4. VQA normalisation drops articles
def test_vqa_normalize_drops_articles():
    assert metrics.vqa_normalize("a dog") == metrics.vqa_normalize("dog") == "dog"
    assert metrics.vqa_normalize("The Red Circle.") == "red circle"
    assert metrics.answer_accuracy("an apple", "apple") == 1.0


def test_vqa_soft_accuracy_three_of_ten():
    gold = ["dog"] * 3 + ["cat"] * 7
    # leave-one-out over 10 annotators: 3 subsets hold 2 'dog's (2/3), 7 hold 3 (capped at 1)
    assert metrics.answer_accuracy("a dog", gold) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert metrics.answer_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
