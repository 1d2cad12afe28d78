"""The objectives' scientific behaviour, pinned on hand-computed cases (issue: tests that catch the bugs that matter).

One behaviour per test; every expected number is worked out by hand in the test (or from the definition with plain
Python loops), never copied from the code under test. `make mutation` runs these against mutants of `mllm_nle.losses`
and `recipes.hacl.ita_loss`.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mllm_nle import losses
from mllm_nle.losses import (MCM_CONDITIONS, HACLHead, dpo_loss, hacl_contrastive_loss, hacl_loss, info_nce, mcle_bounded, mcle_loss,
                             mcle_multilevel, mcle_official, mcm_dpo_loss, paired_positive)
from mllm_nle.recipes.hacl import ita_loss

torch.set_num_threads(1)


def softplus(x: float) -> float: return math.log1p(math.exp(x))     # -log sigmoid(-x)


# ---------------------------------------------------------------- MCLE: the margin's sign
def test_mcle_margin_rewards_the_positive_above_its_negative():
    "Positive row -1.0, its semantic negative -3.0 (token-mean log-probs): gap +2, term -log σ(β·2) = softplus(-4)."
    ml = torch.tensor([-1.0, -3.0])
    loss, m = mcle_multilevel(ml, torch.tensor([1.0, -1.0]), ["positive", "semantic"], ["g", "g"],
                              lambdas=dict(image=0, instance=0), beta=2.0)
    assert m["loss/semantic"].item() == pytest.approx(softplus(-4.0), rel=1e-5)
    assert m["accuracy/semantic"].item() == 1.0 and m["rewards/accuracies"].item() == 1.0
    assert m["loss/sft"].item() == pytest.approx(1.0)                   # weight 1 × NLL 1 of the positive
    assert loss.item() == pytest.approx(1.0 + softplus(-4.0), rel=1e-5)


def test_mcle_margin_penalises_a_negative_above_its_positive():
    "The same rows swapped in value: gap -2, the term is softplus(+4) and the accuracy 0."
    _, m = mcle_multilevel(torch.tensor([-3.0, -1.0]), torch.tensor([1.0, -1.0]), ["positive", "image"], ["g", "g"],
                           lambdas=dict(semantic=0, instance=0), beta=2.0)
    assert m["loss/image"].item() == pytest.approx(softplus(4.0), rel=1e-5)
    assert m["accuracy/image"].item() == 0.0


def test_mcle_margin_gradient_raises_the_positive_and_lowers_the_negative():
    ml = torch.tensor([-2.0, -2.0], requires_grad=True)
    loss, _ = mcle_multilevel(ml, torch.tensor([1.0, -1.0]), ["positive", "semantic"], ["g", "g"],
                              lambdas=dict(image=0, instance=0), beta=1.0)
    loss.backward()
    assert ml.grad[0] < 0 < ml.grad[1]     # gradient descent raises the positive's log-prob, lowers the negative's


def test_mcle_margin_and_beta_per_level():
    "margin 1, β 0.5 on one level: -log σ(0.5·gap - 1) with gap = -1 - (-2) = 1 → softplus(0.5); negative weight 2 scales it."
    _, m = mcle_multilevel(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, -2.0]), ["positive", "instance"], ["g", "g"],
                           lambdas=dict(semantic=0, image=0), beta={"instance": 0.5}, margin=1.0)
    assert m["loss/instance"].item() == pytest.approx(2 * softplus(0.5), rel=1e-5)


def test_mcle_negatives_pair_with_their_own_groups_positive():
    "Two groups: each negative's gap is taken against its own group's positive, not the batch's."
    ml = torch.tensor([-1.0, -5.0, -2.0, -2.5])       # g1: pos -1, neg -2 (gap 1); g2: pos -5, neg -2.5 (gap -2.5)
    _, m = mcle_multilevel(ml, torch.tensor([1.0, 1.0, -1.0, -1.0]), ["positive", "positive", "semantic", "semantic"],
                           ["g1", "g2", "g1", "g2"], lambdas=dict(image=0, instance=0), beta=1.0)
    assert m["loss/semantic"].item() == pytest.approx((softplus(-1.0) + softplus(2.5)) / 2, rel=1e-5)
    assert m["accuracy/semantic"].item() == pytest.approx(0.5)
    assert m["loss/sft"].item() == pytest.approx((1.0 + 5.0) / 2)
    assert paired_positive(torch.tensor([0, 0, 1, 1]), ["g1", "g2", "g1", "g2"]).tolist() == [0, 1, 0, 1]


def test_mcle_unpaired_negative_is_counted_not_trained():
    _, m = mcle_multilevel(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1.0, -1.0, -1.0]), ["positive", "semantic", "semantic"],
                           ["a", "a", "b"], lambdas=dict(image=0, instance=0), beta=1.0)
    assert m["mcle/unpaired"].item() == 1.0
    assert m["loss/semantic"].item() == pytest.approx(softplus(-1.0), rel=1e-5)   # only the paired one


def test_mcle_official_is_signed_nll():
    "ratio × token-mean NLL, batch mean: (1·1 + (-1)·3) / 2 = -1."
    loss, m = mcle_official(torch.tensor([-1.0, -3.0]), torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx(-1.0)
    assert m["loss/sft"].item() == pytest.approx(1.0) and m["loss/negative"].item() == pytest.approx(-3.0)


def test_mcle_bounded_unlikelihood_on_negatives():
    "Negative tokens with p = 0.5 and 0.25: -log(1-p) = log 2 and log(4/3); token mean over the mask."
    tl = torch.log(torch.tensor([[0.9, 0.9, 0.0], [0.5, 0.25, 0.1]]).clamp_min(1e-30))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    mean = (tl * mask).sum(-1) / mask.sum(-1)
    loss, m = mcle_bounded(mean, tl, mask, torch.tensor([1.0, -2.0]))
    ul = (math.log(2) + math.log(4 / 3)) / 2
    assert m["loss/unlikelihood"].item() == pytest.approx(2 * ul, rel=1e-5)      # |weight| 2
    assert m["loss/sft"].item() == pytest.approx(-math.log(0.9), rel=1e-5)
    assert loss.item() == pytest.approx((-math.log(0.9) + 2 * ul) / 2, rel=1e-5)


def test_mcle_loss_dispatches_each_variant():
    ml = torch.tensor([-1.0, -3.0])
    lp = dict(mean=ml, token_logps=ml[:, None], mask=torch.ones(2, 1))
    w, lv, g = torch.tensor([1.0, -1.0]), ["positive", "semantic"], ["g", "g"]
    assert mcle_loss("official", lp, w)[0].item() == pytest.approx(mcle_official(ml, w)[0].item())
    assert mcle_loss("bounded", lp, w, lv)[0].item() == pytest.approx(mcle_bounded(ml, ml[:, None], torch.ones(2, 1), w, lv)[0].item())
    assert mcle_loss("multilevel", lp, w, lv, g, beta=2.0)[0].item() == pytest.approx(mcle_multilevel(ml, w, lv, g, beta=2.0)[0].item())
    with pytest.raises(ValueError, match="unknown variant 'bogus'"): mcle_loss("bogus", lp, w)
    with pytest.raises(ValueError, match="needs levels and groups"): mcle_loss("multilevel", lp, w)
    with pytest.raises(ValueError, match="token_logps"): mcle_loss("bounded", dict(mean=ml), w)
    with pytest.raises(ValueError, match="`mean` field"): mcle_loss("official", {}, w)


# ---------------------------------------------------------------- DPO / IPO: the sign and the scale
def test_dpo_prefers_the_chosen_by_its_reference_gain():
    "chosen -10 (ref -11), rejected -14 (ref -12): h = (1) - (-2) = 3; loss softplus(-β·3)."
    loss, m = dpo_loss(torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-11.0]), torch.tensor([-12.0]), beta=0.1)
    assert loss.item() == pytest.approx(softplus(-0.3), rel=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.1) and m["rewards/rejected"].item() == pytest.approx(-0.2)
    assert m["rewards/margins"].item() == pytest.approx(0.3) and m["rewards/accuracies"].item() == 1.0


def test_dpo_ipo_regresses_the_length_normalised_gap_to_half_over_beta():
    "IPO: ((1/2) - (-2/4) - 1/(2·0.5))² = (1 - 1)² = 0; with β = 0.25 the target is 2: (1 - 2)² = 1."
    args = (torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-11.0]), torch.tensor([-12.0]))
    kw = dict(loss_type="ipo", chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([4.0]))
    assert dpo_loss(*args, beta=0.5, **kw)[0].item() == pytest.approx(0.0, abs=1e-7)
    assert dpo_loss(*args, beta=0.25, **kw)[0].item() == pytest.approx(1.0, rel=1e-6)


def test_dpo_official_dgpref_divides_the_reference_by_length():
    "The release's mismatch: summed policy vs mean reference: h = (-10 - -11/2) - (-14 - -12/4) = -4.5 + 11 = 6.5."
    loss, _ = dpo_loss(torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-11.0]), torch.tensor([-12.0]), beta=0.1,
                       official_dgpref=True, chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([4.0]))
    assert loss.item() == pytest.approx(softplus(-0.65), rel=1e-6)


def test_dpo_sft_term_is_the_token_mean_nll_of_chosen():
    "sft_weight 2: loss = softplus(-β·h) + 2·(10/5); reference-free h = -10 - -14 = 4."
    loss, m = dpo_loss(torch.tensor([-10.0]), torch.tensor([-14.0]), beta=0.1, sft_weight=2.0,
                       chosen_lengths=torch.tensor([5.0]), rejected_lengths=torch.tensor([7.0]))
    assert m["loss/sft"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(softplus(-0.4) + 4.0, rel=1e-6)


def test_dpo_length_normalised_sigmoid():
    "h = 1/2 - (-2)/4 = 1: softplus(-β)."
    loss, _ = dpo_loss(torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-11.0]), torch.tensor([-12.0]), beta=0.1,
                       length_normalized=True, chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([4.0]))
    assert loss.item() == pytest.approx(softplus(-0.1), rel=1e-6)


def test_dpo_refuses_what_it_cannot_compute():
    c, r = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match=r"chosen \(2,\) and rejected \(1,\)"): dpo_loss(c, r[:1])
    with pytest.raises(ValueError, match="1-d"): dpo_loss(c[:, None], r[:, None])
    with pytest.raises(ValueError, match="both reference tensors or neither"): dpo_loss(c, r, c)
    with pytest.raises(ValueError, match="need chosen_lengths and rejected_lengths"): dpo_loss(c, r, loss_type="ipo")
    with pytest.raises(ValueError, match="need chosen_lengths"): dpo_loss(c, r, chosen_lengths=c.abs(), length_normalized=True)
    with pytest.raises(ValueError, match="official_dgpref needs reference"): dpo_loss(c, r, official_dgpref=True, chosen_lengths=c, rejected_lengths=r)
    with pytest.raises(ValueError, match="unknown loss_type 'hinge'"): dpo_loss(c, r, loss_type="hinge")


def test_dpo_logs_every_quantity_under_its_name():
    _, m = dpo_loss(torch.tensor([-10.0, -3.0]), torch.tensor([-14.0, -2.0]))
    assert set(m) == {"loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                      "logps/chosen", "logps/rejected"}
    assert m["logps/chosen"].item() == pytest.approx(-6.5) and m["logps/rejected"].item() == pytest.approx(-8.0)
    assert m["rewards/accuracies"].item() == pytest.approx(0.5)          # pair 2: chosen -3 < rejected -2
    _, m = dpo_loss(torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert m["rewards/accuracies"].item() == 0.0                          # a tie is not a win


# ---------------------------------------------------------------- MCM-DPO: one sigmoid over the weighted margins
MARGINS = {"response": 1.0, "image": 2.0, "context": 4.0, "context+response": 5.0, "image+response": 3.0,
           "context+image": 6.0, "context+image+response": 7.0}
WEIGHTS = {"response": 1.0, "image": 0.5, "context": 0.5, "context+response": 0.2, "image+response": 0.2,
           "context+image": 0.2, "context+image+response": 0.2}


def _mcm_logps():
    "Policy log-prob -k for the k-th condition of MCM_CONDITIONS: margins r(cw_mw_yw) - r(cond) as in MARGINS."
    return {c: torch.tensor([-float(k)]) for k, c in enumerate(MCM_CONDITIONS)}


def test_mcm_dpo_one_sigmoid_over_the_weighted_mean_margin():
    "Σ ρ m = 1 + 1 + 2 + 0.2·(5 + 3 + 6 + 7) = 8.2, N = 1 + .5 + .5 + 4·.2 = 2.8: loss softplus(-β·8.2/2.8)."
    loss, m = mcm_dpo_loss(_mcm_logps(), beta=0.1)
    assert loss.item() == pytest.approx(softplus(-0.1 * 8.2 / 2.8), rel=1e-6)
    for f, v in MARGINS.items(): assert m[f"margins/{f}"].item() == pytest.approx(0.1 * v), f


def test_mcm_dpo_per_facet_and_first_k_facets():
    loss, _ = mcm_dpo_loss(_mcm_logps(), beta=0.1, per_facet=True)
    assert loss.item() == pytest.approx(sum(WEIGHTS[f] / 2.8 * softplus(-0.1 * v) for f, v in MARGINS.items()), rel=1e-6)
    loss, m = mcm_dpo_loss(_mcm_logps(), beta=0.1, n_facets=3)          # response, image, context: (1 + 1 + 2) / 2
    assert loss.item() == pytest.approx(softplus(-0.1 * 4.0 / 2.0), rel=1e-6)
    assert set(k for k in m if k.startswith("margins/")) == {"margins/response", "margins/image", "margins/context"}
    loss, _ = mcm_dpo_loss(_mcm_logps(), beta=0.1, n_facets=1, norm=2.0)   # response alone, divided by N = 2
    assert loss.item() == pytest.approx(softplus(-0.1 * 0.5), rel=1e-6)


def test_mcm_dpo_subtracts_the_reference_and_accepts_every_layout():
    pol, ref = _mcm_logps(), {c: torch.tensor([1.0 + k]) for k, c in enumerate(MCM_CONDITIONS)}   # ref doubles every margin's gap
    loss, m = mcm_dpo_loss(pol, ref, beta=0.1, weights=[1, 0, 0, 0, 0, 0, 0])
    assert loss.item() == pytest.approx(softplus(-0.1 * 2.0), rel=1e-6)        # (0 - -1) - (-1 - 2) ... = 2 on response
    flat = torch.cat([pol[c] for c in MCM_CONDITIONS])
    assert mcm_dpo_loss(flat, beta=0.1)[0].item() == pytest.approx(mcm_dpo_loss(pol, beta=0.1)[0].item())
    assert mcm_dpo_loss(flat.view(8, 1), beta=0.1)[0].item() == pytest.approx(mcm_dpo_loss(pol, beta=0.1)[0].item())
    assert m["rewards/chosen"].item() == pytest.approx(0.1 * (0 - 1)) and m["rewards/rejected"].item() == pytest.approx(0.1 * (-1 - 2))
    assert m["rewards/margins"].item() == pytest.approx(0.2) and m["rewards/accuracies"].item() == 1.0
    assert m["logps/chosen"].item() == 0.0 and m["logps/rejected"].item() == -1.0


def test_mcm_dpo_refuses_bad_layouts():
    with pytest.raises(ValueError, match="n_facets=0"): mcm_dpo_loss(_mcm_logps(), n_facets=0)
    with pytest.raises(ValueError, match="n_facets=8"): mcm_dpo_loss(_mcm_logps(), n_facets=8)
    with pytest.raises(ValueError, match="3 weights given, need 7"): mcm_dpo_loss(_mcm_logps(), weights=[1, 1, 1])
    with pytest.raises(ValueError, match="not a multiple of the 8"): mcm_dpo_loss(torch.zeros(12))
    with pytest.raises(ValueError, match=r"shape \(4, 2\), expected \[8, n\]"): mcm_dpo_loss(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="ref_logps"): mcm_dpo_loss(torch.zeros(8), torch.zeros(9))


# ---------------------------------------------------------------- HACL: captions of one image are never negatives
def _unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm(dim=-1, keepdim=True)


def _ita_by_definition(v, t, cimg, tau, h=(), keys=None):
    """L_ita written out caption by caption: for caption c of image i, i2t's negatives are every caption of *another*
    image plus every hallucinated caption; t2i's negatives are every *other* image. Plain Python sums."""
    keys = list(range(len(v))) if keys is None else keys
    s = lambda a, b: float(a @ b) / tau
    i2t, t2i = [], []
    for c, i in enumerate(cimg):
        cols = [s(v[i], t[c2]) for c2, i2 in enumerate(cimg) if c2 == c or keys[i2] != keys[i]] + [s(v[i], x) for x in h]
        i2t.append(-s(v[i], t[c]) + math.log(sum(math.exp(x) for x in cols)))
        rows = [s(t[c], v[j]) for j in range(len(v)) if j == i or keys[j] != keys[i]]
        t2i.append(-s(t[c], v[i]) + math.log(sum(math.exp(x) for x in rows)))
    return (sum(i2t) / len(i2t) + sum(t2i) / len(t2i)) / 2


def test_ita_two_captions_of_one_image_are_not_each_others_negatives():
    v = _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    t = _unit([0.9, 0.1, 0.0], [0.7, 0.0, 0.7], [0.1, 0.9, 0.2])          # captions 0 and 1 describe image 0
    cimg = torch.tensor([0, 0, 1])
    loss, m = ita_loss(v, t, cimg, 0.1)
    assert loss.item() == pytest.approx(_ita_by_definition(v, t, [0, 0, 1], 0.1), rel=1e-4)
    # the value without the mask (caption 1 a negative of caption 0's image) is different: the test can tell
    unmasked = (F.cross_entropy((v[cimg] @ t.T) / 0.1, torch.arange(3)) + F.cross_entropy((t @ v.T) / 0.1, cimg)) / 2
    assert abs(unmasked.item() - loss.item()) > 0.05


def test_ita_the_same_image_twice_is_not_its_own_negative():
    "Rows 0 and 2 of image_emb are one image (equal keys): in t2i, caption 0 must not push away row 2, nor caption 2 row 0."
    v = _unit([1.0, 0.0], [0.0, 1.0], [0.8, 0.6])
    t = _unit([0.9, 0.3], [0.2, 1.0], [0.6, 0.8])
    keys = torch.tensor([7, 8, 7])
    loss, _ = ita_loss(v, t, torch.tensor([0, 1, 2]), 0.2, image_keys=keys)
    assert loss.item() == pytest.approx(_ita_by_definition(v, t, [0, 1, 2], 0.2, keys=[7, 8, 7]), rel=1e-5)
    assert abs(loss.item() - ita_loss(v, t, torch.tensor([0, 1, 2]), 0.2)[0].item()) > 1e-3


def test_ita_hallucinated_captions_are_extra_image_to_text_negatives():
    v = _unit([1.0, 0.0], [0.0, 1.0])
    t = _unit([0.9, 0.2], [0.1, 0.9])
    h = _unit([0.8, 0.5], [0.3, 0.7], [1.0, 0.1])
    loss, m = ita_loss(v, t, torch.tensor([0, 1]), 0.1, h, torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(_ita_by_definition(v, t, [0, 1], 0.1, h=list(h)), rel=1e-5)
    # one caption per image, no duplicate: the same number as losses.hacl_contrastive_loss
    assert loss.item() == pytest.approx(hacl_contrastive_loss(v, t, 0.1, h)[0].item(), rel=1e-5)
    own = [float(v[0] @ h[0]), float(v[1] @ h[1]), float(v[1] @ h[2])]
    assert m["sim/hallucinated"].item() == pytest.approx(sum(own) / 3, rel=1e-5)
    pos = [float(v[0] @ t[0]), float(v[1] @ t[1])]
    beaten = [own[0] >= pos[0], own[1] >= pos[1] or own[2] >= pos[1]]
    assert m["itc/twin_r1"].item() == pytest.approx(sum(not b for b in beaten) / 2)


def test_ita_hallucinated_t2i_adds_them_as_columns():
    "hallucinated_t2i: caption c's t2i row gets s(v_i, h_m) for every hallucinated m (the released formula)."
    v = _unit([1.0, 0.0], [0.0, 1.0])
    t = _unit([0.9, 0.2], [0.1, 0.9])
    h = _unit([0.8, 0.5])
    tau = 0.1
    loss, _ = ita_loss(v, t, torch.tensor([0, 1]), tau, h, torch.tensor([0]), hallucinated_t2i=True)
    s = lambda a, b: float(a @ b) / tau
    i2t = [-s(v[i], t[i]) + math.log(sum(math.exp(s(v[i], x)) for x in [t[0], t[1], h[0]])) for i in range(2)]
    t2i = [-s(t[i], v[i]) + math.log(math.exp(s(t[i], v[0])) + math.exp(s(t[i], v[1])) + math.exp(s(v[i], h[0]))) for i in range(2)]
    assert loss.item() == pytest.approx((sum(i2t) / 2 + sum(t2i) / 2) / 2, rel=1e-5)
    assert loss.item() == pytest.approx(hacl_contrastive_loss(v, t, tau, h, hallucinated_t2i=True)[0].item(), rel=1e-5)


def test_ita_queue_entries_of_the_same_image_are_not_negatives():
    "A queued caption of caption 0's image is masked; a queued caption of another image is a negative."
    v = _unit([1.0, 0.0], [0.0, 1.0])
    t = _unit([0.9, 0.2], [0.1, 0.9])
    qt = _unit([0.95, 0.1], [0.5, 0.5])
    queue = dict(text=qt, text_key=torch.tensor([0, 5]), image=v[:0], image_key=torch.zeros(0, dtype=torch.long))
    loss, _ = ita_loss(v, t, torch.tensor([0, 1]), 0.1, queue=queue)
    s = lambda a, b: float(a @ b) / 0.1
    cols = {0: [t[0], t[1], qt[1]], 1: [t[0], t[1], qt[0], qt[1]]}   # caption 0 (image 0) loses the queued caption of image 0
    i2t = [-s(v[i], t[i]) + math.log(sum(math.exp(s(v[i], x)) for x in cols[i])) for i in range(2)]
    t2i = [-s(t[i], v[i]) + math.log(sum(math.exp(s(t[i], x)) for x in v)) for i in range(2)]
    assert loss.item() == pytest.approx((sum(i2t) / 2 + sum(t2i) / 2) / 2, rel=1e-5)


def test_ita_without_captions_is_a_zero_in_the_graph():
    v = torch.randn(2, 4, requires_grad=True)
    loss, m = ita_loss(v, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad and m["loss/ita"].item() == 0.0
    with pytest.raises(ValueError, match="out of range 0..1"): ita_loss(v, torch.randn(1, 4), torch.tensor([2]), 0.1)


def test_ita_temperature_divides_every_similarity():
    "Halving τ doubles every logit: with orthonormal images and captions equal to them, the loss is softplus-like in 1/τ."
    v = torch.eye(2)
    loss, m = ita_loss(v, v.clone(), torch.tensor([0, 1]), 0.5)
    # each row: logits [1/τ, 0]: -log(e^{2} / (e^{2} + 1)) = softplus(-2)
    assert loss.item() == pytest.approx(softplus(-2.0), rel=1e-6)
    assert m["itc/temperature"].item() == pytest.approx(0.5) and m["sim/positive"].item() == pytest.approx(1.0)
    assert m["sim/in_batch"].item() == pytest.approx(0.0, abs=1e-7)


def test_hacl_contrastive_loss_on_orthonormal_embeddings():
    "Same case through losses.hacl_contrastive_loss, and its hallucinated accuracy: pos 1 vs hallucinated 0.6 → accuracy 1."
    v = torch.eye(2)
    loss, m = hacl_contrastive_loss(v, v.clone(), 0.5)
    assert loss.item() == pytest.approx(softplus(-2.0), rel=1e-6)
    _, m = hacl_contrastive_loss(v, v.clone(), 0.5, _unit([0.6, 0.8]))
    assert m["rewards/accuracies"].item() == 1.0                          # both positives (1) beat the hallucinated (0.6, 0.8)
    assert m["sim/hallucinated"].item() == pytest.approx(0.7)


def test_info_nce_targets_and_extra_keys():
    q, k = torch.eye(2), torch.eye(2)
    per = info_nce(q, k, 0.5, targets=torch.tensor([1, 0]))                 # each query's positive is the other key
    assert per.tolist() == pytest.approx([softplus(2.0)] * 2, rel=1e-6)
    per = info_nce(q, k, 0.5, extra_keys=torch.tensor([[1.0, 0.0]]))         # a copy of key 0 as an extra negative
    assert per[0].item() == pytest.approx(-2.0 + math.log(2 * math.exp(2.0) + 1.0), rel=1e-6)
    assert per[1].item() == pytest.approx(-2.0 + math.log(math.exp(2.0) + 2.0), rel=1e-6)
    with pytest.raises(ValueError, match="3 queries but only 2 keys"): info_nce(torch.randn(3, 2), k)
    assert info_nce(3 * q, k, 0.5, normalize=False)[0].item() == pytest.approx(softplus(-6.0), rel=1e-4)


def test_hacl_loss_adds_the_weighted_contrastive_term():
    loss, m = hacl_loss(torch.tensor(2.0), torch.tensor(3.0), ita_weight=0.5)
    assert loss.item() == pytest.approx(3.5) and m["loss/total"].item() == pytest.approx(3.5)
    assert m["loss/lm"].item() == 2.0 and m["loss/ita"].item() == 3.0
    loss, m = hacl_loss(None, torch.tensor(3.0), ita_weight=2.0)
    assert loss.item() == pytest.approx(6.0) and math.isnan(m["loss/lm"].item())


# ---------------------------------------------------------------- every logged quantity under its name
def test_losses_log_each_quantity_under_its_name():
    v, t, h = torch.eye(3)[:2], torch.eye(3)[:2], torch.eye(3)[2:]
    assert set(hacl_contrastive_loss(v, t, 0.5)[1]) == {"loss/ita", "loss/i2t", "loss/t2i", "sim/positive", "itc/temperature"}
    assert set(hacl_contrastive_loss(v, t, 0.5, h)[1]) == {"loss/ita", "loss/i2t", "loss/t2i", "sim/positive", "itc/temperature",
                                                         "sim/hallucinated", "rewards/accuracies"}
    assert set(ita_loss(v, t, torch.tensor([0, 1]), 0.5, h, torch.tensor([0]))[1]) == {
        "itc/temperature", "itc/captions", "loss/ita", "loss/i2t", "loss/t2i", "sim/positive", "itc/masked", "sim/in_batch",
        "sim/hallucinated", "itc/twin_r1"}
    assert set(mcm_dpo_loss(_mcm_logps(), n_facets=2)[1]) == {"loss/mcm_dpo", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                                            "rewards/accuracies", "logps/chosen", "logps/rejected", "margins/response",
                                                            "margins/image"}
    ml, w = torch.tensor([-1.0, -3.0]), torch.tensor([1.0, -1.0])
    assert set(mcle_official(ml, w)[1]) == {"loss/mcle", "loss/sft", "loss/negative", "logps/positive", "logps/negative"}
    assert set(mcle_bounded(ml, ml[:, None], torch.ones(2, 1), w)[1]) == {"loss/mcle", "loss/sft", "loss/unlikelihood",
                                                                          "logps/positive", "logps/negative"}
    assert set(mcle_multilevel(ml, w, ["positive", "semantic"], ["g", "g"])[1]) == {
        "loss/sft", "logps/positive", "logps/negative", "mcle/unpaired", "loss/semantic", "accuracy/semantic", "loss/image",
        "accuracy/image", "loss/instance", "accuracy/instance", "loss/negative", "accuracy/negative", "rewards/accuracies", "loss/mcle"}
    _, m = mcle_official(ml, w)
    assert (m["logps/positive"].item(), m["logps/negative"].item()) == (-1.0, -3.0)
    _, m = mcle_multilevel(ml, w, ["positive", "semantic"], ["g", "g"])
    assert (m["logps/positive"].item(), m["logps/negative"].item()) == (-1.0, -3.0)
    assert math.isnan(m["loss/image"].item()) is False and m["loss/image"].item() == 0.0 and math.isnan(m["accuracy/image"].item())


def test_metric_helpers_of_empty_quantities():
    assert math.isnan(losses._metric(torch.zeros(0)).item()) and losses._metric([1.0, 3.0]).item() == 2.0
    z = losses._zero(torch.tensor([2.0], requires_grad=True))
    assert z.item() == 0.0 and z.requires_grad and z.dtype == torch.float32
    assert losses._f32(None) is None and losses._f32([1, 2]).dtype == torch.float32


def test_hacl_head_projects_with_its_own_heads_and_clamps_the_temperature():
    torch.manual_seed(0)
    head = HACLHead(8)
    assert (head.vision_proj.in_features, head.vision_proj.out_features, head.text_proj.out_features) == (8, 2, 2)
    assert HACLHead(2).vision_proj.out_features == 1 and HACLHead(8, proj_size=5).text_proj.out_features == 5
    assert head.temp.item() == pytest.approx(0.07) and (head.min_temp, head.max_temp) == (0.001, 0.5)
    x, y, h = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    loss, _ = head(x, y, h, hallucinated_t2i=True)           # float64 inputs are cast to the heads' dtype
    with torch.no_grad():
        v, t, hh = head.vision_proj(x.float()), head.text_proj(y.float()), head.text_proj(h.float())
    assert loss.item() == pytest.approx(hacl_contrastive_loss(v, t, head.temp, hh, True)[0].item(), rel=1e-5)
    assert head(x, y)[0].item() == pytest.approx(hacl_contrastive_loss(v, t, head.temp)[0].item(), rel=1e-5)
    with torch.no_grad(): head.temp.fill_(9.0)
    head(x, y)
    assert head.temp.item() == pytest.approx(0.5)
    low = HACLHead(8, temp=0.2, min_temp=0.3); low(x, y)
    assert low.temp.item() == pytest.approx(0.3)                           # clamped up to min_temp


def test_levels_groups_and_positives_are_checked():
    from mllm_nle.losses import level_codes
    assert level_codes(["positive", "image", 3]).tolist() == [0, 2, 3] and level_codes(torch.tensor([1, 4])).tolist() == [1, 4]
    with pytest.raises(ValueError, match=r"row 1 has level 'bogus'"): level_codes(["positive", "bogus"])
    with pytest.raises(ValueError, match=r"codes must be in 0..4"): level_codes(torch.tensor([5]))
    with pytest.raises(ValueError, match=r"codes must be in 0..4"): level_codes(torch.tensor([-1]))
    with pytest.raises(ValueError, match="2 levels for 3 rows"): level_codes(["positive", "image"], 3)
    assert level_codes([]).tolist() == []
    with pytest.raises(ValueError, match="3 groups for 2 rows"): paired_positive(torch.tensor([0, 1]), ["a", "a", "b"])
    with pytest.raises(ValueError, match=r"group 0 \(row 0\) has 2 positives"): paired_positive(torch.tensor([0, 0, 1]), ["a", "a", "a"])
    assert paired_positive(torch.tensor([1, 0, 2]), torch.tensor([5, 5, 6])).tolist() == [1, 1, -1]
    with pytest.raises(ValueError, match=r"unknown lambdas \['semantics'\]"):
        mcle_multilevel(torch.zeros(1), torch.ones(1), ["positive"], ["a"], lambdas={"semantics": 1})
    with pytest.raises(ValueError, match="image features need image_index"):
        mcle_multilevel(torch.zeros(1), torch.ones(1), ["positive"], ["a"], text_features=torch.ones(1, 2), image_features=torch.ones(1, 2))


def test_hacl_contrastive_loss_refuses_unmatched_rows():
    with pytest.raises(ValueError, match=r"image \(2, 4\) vs text \(3, 4\)"): hacl_contrastive_loss(torch.ones(2, 4), torch.ones(3, 4))
    # an empty hallucinated set is no hallucinated set
    v = torch.eye(2)
    assert set(hacl_contrastive_loss(v, v, 0.5, torch.zeros(0, 2))[1]) == {"loss/ita", "loss/i2t", "loss/t2i", "sim/positive", "itc/temperature"}


# ---------------------------------------------------------------- defaults, errors and metrics pinned by hand (mutation testing)
def _cos(a, b): return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _lse(xs): return max(xs) + math.log(sum(math.exp(x - max(xs)) for x in xs))


def _nce(queries, keys, targets, tau, extra=()):
    "Mean InfoNCE from the definition: -log softmax of cosine/τ at each query's target key."
    out = []
    for q, tg in zip(queries, targets):
        s = [_cos(q, k) / tau for k in list(keys) + list(extra)]
        out.append(_lse(s) - s[tg])
    return sum(out) / len(out)


def test_mcle_multilevel_total_is_sft_plus_every_level_and_both_nce_terms():
    "One group with a negative of every level, a second positive; default λ = 1 for all six terms; τ = 0.5, β = 2."
    ml = torch.tensor([-1.0, -2.0, -1.5, -3.0, -0.5, -2.0])
    w = torch.tensor([1.0, -1.0, -0.5, -1.0, -2.0, 0.5])
    levels, groups = ["positive", "semantic", "image", "instance", "negative", "positive"], ["a"] * 5 + ["b"]
    tf = [[1.0, 0.0], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1], [0.1, 0.2], [0.2, 1.0]]
    imf = [[1.0, 0.2], [0.0, 1.0], [0.6, 0.6]]
    inst = [[0.8, 0.3], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1], [0.4, 0.4], [0.3, 0.9]]
    image_index = torch.tensor([0, 0, 1, 0, 0, 2])
    T = lambda x: torch.tensor(x)
    kw = dict(text_features=T(tf), image_features=T(imf), image_index=image_index, instance_features=T(inst), temperature=0.5, beta=2.0)
    loss, m = mcle_multilevel(ml, w, levels, groups, **kw)
    sft = (1 * 1.0 + 0.5 * 2.0) / 2
    levels_terms = {"semantic": softplus(-2 * 1.0), "image": 0.5 * softplus(-2 * 0.5), "instance": softplus(-2 * 2.0), "negative": 2 * softplus(2 * 0.5)}
    image_nce = _nce([tf[0], tf[5]], imf, [0, 2], 0.5)
    instance_nce = _nce([tf[0], tf[5]], [inst[0], inst[5]], [0, 1], 0.5, extra=[inst[3]])   # row 3: the instance negative of row 0
    for k, v in levels_terms.items(): assert m[f"loss/{k}"].item() == pytest.approx(v, rel=1e-5), k
    assert m["loss/image_nce"].item() == pytest.approx(image_nce, rel=1e-5)
    assert m["loss/instance_nce"].item() == pytest.approx(instance_nce, rel=1e-5)
    total = sft + sum(levels_terms.values()) + image_nce + instance_nce
    assert loss.item() == pytest.approx(total, rel=1e-5) and m["loss/mcle"].item() == pytest.approx(total, rel=1e-5)
    explicit = mcle_multilevel(ml, w, levels, groups, lambdas={k: 1.0 for k in ("semantic", "image", "instance", "negative", "image_nce", "instance_nce")}, **kw)[0]
    assert explicit.item() == pytest.approx(loss.item(), rel=1e-6)
    # λ_instance_nce = 0: no instance term even though instance features are given
    off, m0 = mcle_multilevel(ml, w, levels, groups, lambdas=dict(instance_nce=0), **kw)
    assert "loss/instance_nce" not in m0 and off.item() == pytest.approx(total - instance_nce, rel=1e-5)
    # β per level: a level left out of the dict keeps β = 2
    _, mb = mcle_multilevel(ml, w, levels, groups, beta={"semantic": 1.0}, lambdas=dict(image_nce=0, instance_nce=0))
    assert mb["loss/semantic"].item() == pytest.approx(softplus(-1.0), rel=1e-5)
    assert mb["loss/instance"].item() == pytest.approx(softplus(-4.0), rel=1e-5)


def test_mcle_multilevel_edge_cases():
    "A tie is not a win; a batch without a positive has a zero SFT term; levels of the wrong length are refused."
    _, m = mcle_multilevel(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, -1.0]), ["positive", "semantic"], ["g", "g"])
    assert m["accuracy/semantic"].item() == 0.0
    loss, m = mcle_multilevel(torch.tensor([-1.0], requires_grad=True), torch.tensor([-1.0]), ["semantic"], ["g"])
    assert loss.item() == 0.0 and m["loss/sft"].item() == 0.0 and m["mcle/unpaired"].item() == 1.0
    with pytest.raises(ValueError, match="2 levels for 3 rows"):
        mcle_multilevel(torch.zeros(3), torch.ones(3), ["positive", "semantic"], ["a", "a", "b"])


def test_mcle_bounded_by_level_token_mean_and_metrics():
    "Row 1 is a negative by its level although its weight is +0.5; its one kept token -1.0 gives -log(1 - e^-1)."
    ml, w = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 0.5])
    tl, mk = torch.tensor([[-0.5, -1.5], [-1.0, -2.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ul = -math.log(1 - math.exp(-1.0))
    loss, m = mcle_bounded(ml, tl, mk, w, ["positive", "semantic"])
    assert loss.item() == pytest.approx((1.0 + 0.5 * ul) / 2, rel=1e-5)
    assert m["logps/negative"].item() == -2.0 and m["logps/positive"].item() == -1.0
    via = mcle_loss("bounded", dict(mean=ml, token_logps=tl, mask=mk), w, ["positive", "semantic"])[0]
    assert via.item() == pytest.approx(loss.item(), rel=1e-6)
    # eps reaches the clamp through mcle_loss: a token at -0.1 counts as -0.5
    tl2 = torch.tensor([[-0.5, -1.5], [-0.1, -2.0]])
    got = mcle_loss("bounded", dict(mean=ml, token_logps=tl2, mask=mk), w, ["positive", "semantic"], eps=0.5)[0]
    assert got.item() == pytest.approx((1.0 + 0.5 * -math.log(1 - math.exp(-0.5))) / 2, rel=1e-5)
    # no levels: a zero weight is not a positive
    _, m = mcle_bounded(torch.tensor([-1.0, -2.0, -3.0]), torch.full((3, 1), -1.0), torch.ones(3, 1), torch.tensor([1.0, 0.0, -1.0]))
    assert m["logps/negative"].item() == pytest.approx(-2.5) and m["logps/positive"].item() == -1.0
    with pytest.raises(ValueError, match="1 levels for 2 rows"): mcle_bounded(ml, tl, mk, w, ["positive"])


def test_mcle_official_splits_rows_by_the_sign_of_their_weight():
    loss, m = mcle_official(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1.0, 0.5, 0.0, -0.5]))
    assert loss.item() == pytest.approx((1 + 1 + 0 - 2) / 4, abs=1e-7)
    assert m["loss/sft"].item() == 1.0 and m["loss/negative"].item() == -2.0
    assert m["logps/positive"].item() == -1.5 and m["logps/negative"].item() == -4.0


def test_mcle_loss_names_missing_fields():
    from types import SimpleNamespace as NS
    mean, x = torch.zeros(2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'bounded' needs logps.token_logps and logps.mask"): mcle_loss("bounded", NS(mean=mean), torch.ones(2))
    with pytest.raises(ValueError, match="'bounded' needs"): mcle_loss("bounded", NS(mean=mean, token_logps=x), torch.ones(2))
    with pytest.raises(ValueError, match="'multilevel' needs levels and groups"):
        mcle_loss("multilevel", NS(mean=mean), torch.ones(2), levels=["positive", "semantic"])


def test_log1mexp_is_accurate_near_zero():
    "log(1 - e^x) at x = -1e-10 is log(1e-10) (the naive log1p(-exp(x)) gives -inf in float32); at x = -5, log1p(-e^-5)."
    got = losses.log1mexp(torch.tensor([-1e-10, -5.0]))
    assert got[0].item() == pytest.approx(math.log(1e-10), rel=1e-5) and got[1].item() == pytest.approx(math.log1p(-math.exp(-5)), rel=1e-6)


def test_hacl_defaults_weight_1_and_image_to_text_hard_negatives_only():
    total, m = hacl_loss(torch.tensor(2.0), torch.tensor(3.0))
    assert total.item() == 5.0 and m["loss/total"].item() == 5.0
    torch.manual_seed(0)
    head, x = HACLHead(8, 4), torch.randn(5, 8)
    v, t, h = x[:2], x[2:4], x[4:]
    assert head(v, t, h)[0].item() == head(v, t, h, hallucinated_t2i=False)[0].item() != head(v, t, h, hallucinated_t2i=True)[0].item()


def test_hacl_contrastive_loss_metrics_and_default_temperature():
    "Images e1, e2 with their own captions; one hallucinated caption equal to caption 1: a tie is not a win."
    v = t = torch.eye(2)
    h = torch.tensor([[1.0, 0.0]])
    loss, m = hacl_contrastive_loss(v, t, hallucinated_emb=h)
    assert loss.item() == hacl_contrastive_loss(v, t, 0.07, h)[0].item()
    assert m["sim/positive"].item() == 1.0 and m["rewards/accuracies"].item() == 0.5
    assert info_nce(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))[0].item() == pytest.approx(_lse([10.0, 10 / math.sqrt(2)]) - 10.0, rel=1e-4)   # τ = 0.1
    with pytest.raises(ValueError, match="3 queries but only 2 keys"): info_nce(torch.randn(3, 5), torch.randn(2, 5))


def test_dpo_loss_needs_lengths_for_the_dgpref_bug_and_sft():
    c, r = torch.tensor([-1.0]), torch.tensor([-2.0])
    with pytest.raises(ValueError, match="dpo_loss: loss_type='sigmoid'"): dpo_loss(c, r, c, r, official_dgpref=True)
    with pytest.raises(ValueError, match="dpo_loss: loss_type='sigmoid'"): dpo_loss(c, r, c, r, sft_weight=0.5)


def test_mcm_dpo_loss_names_bad_inputs_and_a_tie_is_no_win():
    with pytest.raises(ValueError, match="policy_logps has 7 rows"): mcm_dpo_loss(torch.zeros(7))
    with pytest.raises(ValueError, match="ref_logps has 9 rows"): mcm_dpo_loss(torch.zeros(8), torch.zeros(9))
    assert mcm_dpo_loss(torch.zeros(8))[1]["rewards/accuracies"].item() == 0.0


# ---------------------------------------------------------------- HACL's L_ita over distinct images: queue, gathering, metrics
def _ita_reference(v, t, cimg, keys, qt, qtk, qi, qik, tau):
    "L_ita from the definition: a caption's same-image columns (other than its own) are left out, in both directions."
    n = lambda x: [a / math.sqrt(sum(b * b for b in x)) for a in x]
    v, t = [n(x) for x in v], [n(x) for x in t]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    li, lt = [], []
    for c, img in enumerate(cimg):
        k = keys[img]
        cols = [(dot(v[img], t[j]) / tau, j == c) for j in range(len(t)) if j == c or keys[cimg[j]] != k]
        cols += [(dot(v[img], q) / tau, False) for q, qk in zip(qt, qtk) if qk != k]
        li.append(_lse([s for s, _ in cols]) - next(s for s, own in cols if own))
        cols = [(dot(t[c], v[j]) / tau, j == img) for j in range(len(v)) if j == img or keys[j] != k]
        cols += [(dot(t[c], q) / tau, False) for q, qk in zip(qi, qik) if qk != k]
        lt.append(_lse([s for s, _ in cols]) - next(s for s, own in cols if own))
    return (sum(li) / len(li) + sum(lt) / len(lt)) / 2


def _unit_rows(x): return F.normalize(torch.tensor(x), dim=-1)


def test_ita_loss_with_a_queue_masks_same_image_entries():
    "Queue texts of keys (0, 5) and images of keys (1, 7): caption 0 must not see queue text 0, caption 1 not queue image 0."
    v, t = torch.tensor([[1.0, 0.2, 0.1], [0.1, 1.0, 0.3]]), torch.tensor([[0.9, 0.1, 0.4], [0.2, 0.8, 0.1]])
    qt, qi = _unit_rows([[0.7, 0.3, 0.0], [0.1, 0.1, 1.0]]), _unit_rows([[0.0, 1.0, 0.2], [0.5, 0.5, 0.5]])
    queue = dict(text=qt, text_key=torch.tensor([0, 5]), image=qi, image_key=torch.tensor([1, 7]))
    loss, m = ita_loss(v, t, torch.tensor([0, 1]), 0.5, queue=queue)
    ref = _ita_reference(v.tolist(), t.tolist(), [0, 1], [0, 1], qt.tolist(), [0, 5], qi.tolist(), [1, 7], 0.5)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert m["itc/masked"].item() == 2.0                                    # one queue text, one queue image
    assert m["sim/positive"].item() == pytest.approx((_cos(v[0].tolist(), t[0].tolist()) + _cos(v[1].tolist(), t[1].tolist())) / 2, rel=1e-5)


def test_ita_loss_defaults_and_a_tied_twin():
    v, t = torch.tensor([[1.0, 0.2], [0.1, 1.0]]), torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    cimg = torch.tensor([0, 1])
    assert ita_loss(v, t, cimg)[0].item() == ita_loss(v, t, cimg, 0.07)[0].item()
    _, m = ita_loss(v, t, cimg, hallucinated_emb=t[:1].clone(), hallucinated_index=torch.tensor([0]))
    assert m["itc/twin_r1"].item() == 0.0                                   # the twin ties its caption: not ranked first


def test_ita_loss_gathers_only_when_asked(monkeypatch):
    "Without a process group gathering changes nothing; in a (faked) 2-process group only gather=True adds the other rank's rows."
    v, t = torch.tensor([[1.0, 0.2], [0.1, 1.0]]), torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    cimg = torch.tensor([0, 1])
    local = ita_loss(v, t, cimg, 0.5)[0].item()
    assert ita_loss(v, t, cimg, 0.5, gather=True)[0].item() == pytest.approx(local, rel=1e-6)
    import torch.distributed as dist
    def all_gather(out, x):
        out[0].copy_(x)
        out[1].copy_(x + 10 if not x.is_floating_point() or x.dim() < 2 else x.flip(-1))   # the other rank: other keys, other rows
    for name, f in dict(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2, get_rank=lambda: 0,
                        all_gather=all_gather).items():
        monkeypatch.setattr(dist, name, f)
    assert ita_loss(v, t, cimg, 0.5)[0].item() == pytest.approx(local, rel=1e-6)
    assert abs(ita_loss(v, t, cimg, 0.5, gather=True)[0].item() - local) > 1e-3
