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
from mllm_nle.losses import (MCM_CONDITIONS, dpo_loss, hacl_contrastive_loss, hacl_loss, info_nce, mcle_bounded, mcle_loss,
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
