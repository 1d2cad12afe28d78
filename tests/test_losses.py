"""Property and reference tests for `mllm_nle.losses`.

Reference check: TRL could not be imported here (TRL 1.16.0 needs `datasets`, which the project's
environment does not have, and installing it would pull pandas/pyarrow). Its formulas are therefore
transcribed from the released source: trl 1.16.0 (PyPI wheel), `trl/trainer/dpo_trainer.py`,
`DPOTrainer._compute_loss`, loss_type branches "sigmoid" (l. 1387-1388), "ipo" (l. 1393-1404) and
"sigmoid_norm" (l. 1504-1509), rewards at l. 1581-1597 (repository huggingface/trl; the stored copy
of that file is at commit 9d58faa767ee18f52217b32b82d75807c8ce404a).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mllm_nle.losses import (MCLE_LEVELS, MCM_CONDITIONS, HACLHead, dpo_loss, hacl_contrastive_loss, hacl_loss, info_nce,
                             level_codes, log1mexp, mcle_loss, mcm_dpo_loss, paired_positive)


# ---------------------------------------------------------------- TRL's formulas, transcribed
def trl_dpo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_len, rejected_len, beta, loss_type):
    "TRL 1.16.0 DPOTrainer._compute_loss with f_divergence_type='reverse_kl', one loss type, no weighting."
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        per_sequence_loss = -F.logsigmoid(beta * delta_score)
    elif loss_type == "ipo":
        chosen_avg_score = chosen_scores / chosen_len.clamp(min=1.0)
        rejected_avg_score = rejected_scores / rejected_len.clamp(min=1.0)
        ipo_delta = chosen_avg_score - rejected_avg_score
        per_sequence_loss = (ipo_delta - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid_norm":
        chosen_avg_score = chosen_scores / chosen_len.clamp(min=1.0)
        rejected_avg_score = rejected_scores / rejected_len.clamp(min=1.0)
        per_sequence_loss = -F.logsigmoid(beta * (chosen_avg_score - rejected_avg_score))
    loss = per_sequence_loss.mean()
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    return loss, {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                  "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
                  "rewards/margins": (chosen_rewards - rejected_rewards).mean()}


def _random_pairs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lc, lr = torch.randint(1, 60, (n,), generator=g).float(), torch.randint(1, 60, (n,), generator=g).float()
    pc, pr = -lc * torch.rand(n, generator=g) * 3, -lr * torch.rand(n, generator=g) * 3
    rc, rr = pc + torch.randn(n, generator=g) * 5, pr + torch.randn(n, generator=g) * 5
    return pc, pr, rc, rr, lc, lr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("loss_type,normalized", [("sigmoid", False), ("ipo", False), ("sigmoid", True)])
def test_dpo_matches_trl(seed, beta, loss_type, normalized):
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=seed)
    ours, m = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, chosen_lengths=lc, rejected_lengths=lr,
                       length_normalized=normalized)
    ref, rm = trl_dpo(pc, pr, rc, rr, lc, lr, beta, "sigmoid_norm" if normalized else loss_type)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for k, v in rm.items(): torch.testing.assert_close(m[k], v, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- DPO properties
def test_dpo_ln2_at_zero_margin():
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=3)
    for beta in (0.1, 1.0):
        torch.testing.assert_close(dpo_loss(pc, pr, pc, pr, beta=beta)[0], torch.tensor(math.log(2)))
        # equal implicit rewards (not just equal inputs) also give ln 2
        torch.testing.assert_close(dpo_loss(pc, pc + 3, rc, rc + 3, beta=beta)[0], torch.tensor(math.log(2)))
    loss, m = dpo_loss(pc, pr, pc, pr)
    assert float(m["rewards/margins"]) == 0.0


def test_dpo_reference_free_and_sft():
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=4)
    torch.testing.assert_close(dpo_loss(pc, pr)[0], -F.logsigmoid(0.1 * (pc - pr)).mean())
    loss, m = dpo_loss(pc, pr, rc, rr, sft_weight=0.5, chosen_lengths=lc, rejected_lengths=lr)
    torch.testing.assert_close(loss, dpo_loss(pc, pr, rc, rr)[0] + 0.5 * (-(pc / lc)).mean())
    torch.testing.assert_close(m["loss/sft"], (-(pc / lc)).mean())


def test_dpo_official_dgpref_bug():
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=5)
    loss, _ = dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, official_dgpref=True)
    torch.testing.assert_close(loss, -F.logsigmoid(0.1 * ((pc - rc / lc) - (pr - rr / lr))).mean())
    # a policy equal to its reference no longer starts at ln 2 (DGPref's logged loss started at 0.95)
    start, _ = dpo_loss(pc, pr, pc, pr, chosen_lengths=lc, rejected_lengths=lr, official_dgpref=True)
    assert abs(float(start) - math.log(2)) > 0.05
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(pc, pr, chosen_lengths=lc, rejected_lengths=lr, official_dgpref=True)


@pytest.mark.parametrize("kw", [dict(), dict(loss_type="ipo"), dict(length_normalized=True), dict(sft_weight=1.0)])
def test_dpo_gradient_direction(kw):
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=6)
    pc, pr = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    loss, _ = dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()   # descent raises chosen, lowers rejected


# ---------------------------------------------------------------- numerics: gaps of ±1e4 and empty responses, fp32 / bf16
# Every loss is fed what the model can hand it at the extremes: log-probs 1e4 apart in either direction, and responses
# whose tokens are all masked (a zero-length response: `models.response_logps` gives sum 0, mean 0, length 0, an all-False
# mask, and pooled features that may be all zero). Inputs come in the dtype under test; the loss and every gradient must
# be finite, and no logged metric infinite (NaN is how a metric says "no such rows in this batch").
CASES = ("gap=+1e4", "gap=-1e4", "all-masked")


def _leaf(x, dtype): return x.to(dtype).detach().requires_grad_()


def _gap(case): return {"gap=+1e4": 1e4, "gap=-1e4": -1e4, "all-masked": 0.0}[case]


def _dpo_losses(case, dtype, n=4):
    empty = case == "all-masked"
    pc = _leaf(torch.full((n,), 0.0 if empty else -10.0), dtype)
    pr = _leaf(torch.full((n,), 0.0 if empty else -10.0 - _gap(case)), dtype)
    ln = torch.full((n,), 0.0 if empty else 20.0)
    ref = torch.full((n,), 0.0 if empty else -10.0, dtype=dtype)
    for kw in (dict(), dict(loss_type="ipo"), dict(length_normalized=True), dict(sft_weight=1.0), dict(official_dgpref=True)):
        yield f"dpo {kw}", (pc, pr), dpo_loss(pc, pr, ref, ref, chosen_lengths=ln, rejected_lengths=ln, **kw)
    yield "dpo reference-free", (pc, pr), dpo_loss(pc, pr)


def _mcm_losses(case, dtype, n=4):
    empty = case == "all-masked"
    pol = _leaf(torch.zeros(8 * n) if empty else torch.cat([torch.full((n,), -10.0), torch.full((7 * n,), -10.0 - _gap(case))]), dtype)
    for per_facet in (False, True):
        for k in (1, 7):
            yield f"mcm_dpo per_facet={per_facet} n_facets={k}", (pol,), mcm_dpo_loss(pol, torch.zeros(8 * n, dtype=dtype), n_facets=k, per_facet=per_facet)


def _mcle_losses(case, dtype):
    "A positive and two negatives of group 0 (1e4 below it, one with a single unmasked token) and a positive of group 1."
    g = abs(_gap(case))
    if case == "all-masked":
        ml, tl, mask = torch.zeros(4), torch.zeros(4, 2), torch.zeros(4, 2)
    else:
        ml = torch.tensor([-1.0, -1.0 - g, -1.0 - g, -1.0])
        tl = torch.tensor([[-0.5, -0.5], [-g, 0.0], [-g, -1e-9], [-1e-9, -1.0]])
        mask = torch.tensor([[1.0, 1], [1, 1], [1, 0], [1, 1]])
    if _gap(case) < 0: ml, tl = ml.flip(0), tl.flip(0)   # the positives are the far ones
    ml, tl = _leaf(ml, dtype), _leaf(tl, dtype)
    scale = 0.0 if case == "all-masked" else 1e4
    feats = dict(text_features=_leaf(torch.randn(4, 8) * scale, dtype), image_features=_leaf(torch.randn(2, 8) * scale, dtype),
                 image_index=torch.tensor([0, 0, 0, 1]), instance_features=_leaf(torch.randn(4, 8) * scale, dtype))
    w, lv, grp = torch.tensor([1.0, -1.0, -1.0, 1.0]), ["positive", "semantic", "instance", "positive"], [0, 0, 0, 1]
    logps = {"mean": ml, "token_logps": tl, "mask": mask}
    for variant in ("official", "bounded", "multilevel"):
        yield f"mcle {variant}", (ml, tl), mcle_loss(variant, logps, w, lv, grp)
    yield "mcle multilevel+features", (ml, *[v for v in feats.values() if v.is_floating_point()]), mcle_loss("multilevel", logps, w, lv, grp, **feats)


def _hacl_losses(case, dtype):
    "Image/caption/hallucinated features 1e4 large (or all zero: an empty caption's pooled state), at the minimum temperature."
    scale = 0.0 if case == "all-masked" else abs(_gap(case))
    v, t, h = (_leaf(torch.randn(3, 8) * scale, dtype) for _ in range(3))
    for t2i in (False, True):
        yield f"hacl t2i={t2i}", (v, t, h), hacl_contrastive_loss(v, t, 0.001, h, hallucinated_t2i=t2i)
    head = HACLHead(32, temp=0.001).to(dtype)
    img, txt, hal = (_leaf(torch.randn(3, 32) * scale, dtype) for _ in range(3))
    yield f"HACLHead {dtype}", (img, txt, *head.parameters()), head(img, txt, hal, hallucinated_t2i=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_finite_extreme_gaps(dtype, case):
    "Every loss and variant: finite loss, finite gradients (at least one), no infinite metric."
    checked = []
    for make in (_dpo_losses, _mcm_losses, _mcle_losses, _hacl_losses):
        for name, leaves, (loss, m) in make(case, dtype):
            for x in leaves: x.grad = None
            loss.backward()
            grads = [x.grad for x in leaves if x.grad is not None]
            assert torch.isfinite(loss), (name, float(loss))
            assert grads and all(torch.isfinite(gr).all() for gr in grads), name
            assert not any(torch.isinf(v) for v in m.values()), (name, {k: float(v) for k, v in m.items()})
            checked.append(name)
    assert len(checked) == 17, checked   # 6 DPO, 4 MCM-DPO, 4 MCLE, 3 HACL


def test_mcle_official_diverges_on_negatives_bounded_does_not():
    """The released MCLE loss (`official`) multiplies a negative's NLL by a negative ratio: its loss falls without bound as
    the negative's log-prob falls, with a constant gradient, so training never stops pushing (it diverged at lr 5e-4
    in the MCLE study). `bounded` (unlikelihood, -log(1-p)) stays >= 0 and its push fades; so does multilevel's margin."""
    pos, w, lv, grp = torch.tensor([True, False]), torch.tensor([1.0, -1.0]), ["positive", "semantic"], [0, 0]
    res = {}
    for variant in ("official", "bounded", "multilevel"):
        res[variant] = []
        for lp in (-1.0, -10.0, -1e2, -1e3, -1e4):
            ml = torch.tensor([-1.0, lp], requires_grad=True)
            tl = torch.tensor([[-1.0], [lp]], requires_grad=True)
            loss, _ = mcle_loss(variant, {"mean": ml, "token_logps": tl, "mask": torch.ones(2, 1)}, w, lv, grp)
            loss.backward()
            grad = sum(float(x.grad.reshape(-1)[-1]) for x in (ml, tl) if x.grad is not None)   # d loss / d (negative's log-prob)
            res[variant].append((float(loss.detach()), grad))
    official = [l for l, _ in res["official"]]
    assert all(a > b for a, b in zip(official, official[1:])) and official[-1] < -4e3      # falls, linearly: -> -inf
    assert all(g == pytest.approx(0.5) for _, g in res["official"])                        # the push never fades
    for variant in ("bounded", "multilevel"):
        losses, grads = zip(*res[variant])
        assert min(losses) >= 0.0 and losses[-1] <= losses[0], (variant, losses)          # bounded below by the SFT term
        assert abs(grads[-1]) < 1e-6 < abs(grads[0]), (variant, grads)                    # the push fades


def test_log1mexp_accuracy():
    x = torch.tensor([-1e-6, -1e-3, -0.5, -0.7, -5.0, -50.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)))


# ---------------------------------------------------------------- InfoNCE / HACL
def test_info_nce_is_cross_entropy_over_similarity():
    g = torch.Generator().manual_seed(0)
    q, k, extra = torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g), torch.randn(3, 16, generator=g)
    targets = torch.tensor([0, 6, 2, 2, 4])
    sim = torch.cat([F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T, F.normalize(q, dim=-1) @ F.normalize(extra, dim=-1).T], 1)
    expected = F.cross_entropy(sim / 0.2, targets, reduction="none")
    torch.testing.assert_close(info_nce(q, k, 0.2, targets=targets, extra_keys=extra), expected)
    # hand computation of one row
    row = sim[1] / 0.2
    torch.testing.assert_close(info_nce(q, k, 0.2, targets=targets, extra_keys=extra)[1], -(row[6] - torch.logsumexp(row, 0)))


def test_hacl_matches_formula():
    g = torch.Generator().manual_seed(1)
    v, t, h = (F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (4, 4, 6))
    tau = 0.07
    i2t = F.cross_entropy(torch.cat([v @ t.T, v @ h.T], 1) / tau, torch.arange(4))
    t2i = F.cross_entropy(t @ v.T / tau, torch.arange(4))
    loss, m = hacl_contrastive_loss(v, t, tau, h)
    torch.testing.assert_close(loss, (i2t + t2i) / 2)
    t2i_h = F.cross_entropy(torch.cat([t @ v.T, v @ h.T], 1) / tau, torch.arange(4))
    torch.testing.assert_close(hacl_contrastive_loss(v, t, tau, h, hallucinated_t2i=True)[0], (i2t + t2i_h) / 2)
    # hallucinated negatives can only make the image->text problem harder
    assert hacl_contrastive_loss(v, t, tau, h)[1]["loss/i2t"] > hacl_contrastive_loss(v, t, tau)[1]["loss/i2t"]
    total, tm = hacl_loss(torch.tensor(3.0), loss, ita_weight=2.0)
    torch.testing.assert_close(total, 3.0 + 2 * loss)


def test_hacl_head_gradients_and_temperature():
    torch.manual_seed(0)
    head = HACLHead(32)
    assert head.vision_proj.out_features == head.text_proj.out_features == 8
    img = torch.randn(4, 32)
    txt = (img + 0.1 * torch.randn(4, 32)).requires_grad_()
    hal = torch.randn(4, 32)
    loss, _ = head(img, txt, hal)
    loss.backward()
    assert head.temp.grad is not None and head.vision_proj.weight.grad is not None
    with torch.no_grad(): head.temp.fill_(1e-6)
    head(img, txt)
    assert float(head.temp.detach()) == pytest.approx(0.001)


def test_hacl_gradient_direction():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 8, generator=g)
    t = torch.randn(4, 8, generator=g).requires_grad_()
    h = torch.randn(4, 8, generator=g).requires_grad_()
    loss, _ = hacl_contrastive_loss(v, t, 0.1, h)
    loss.backward()
    vn = F.normalize(v, dim=-1)
    # a small step along -grad raises each caption's similarity to its image and lowers the hallucinated ones'
    with torch.no_grad():
        t2, h2 = t - 1e-2 * t.grad, h - 1e-2 * h.grad
        before_t, after_t = (vn * F.normalize(t, dim=-1)).sum(-1), (vn * F.normalize(t2, dim=-1)).sum(-1)
        before_h = (vn @ F.normalize(h, dim=-1).T).sum()
        after_h = (vn @ F.normalize(h2, dim=-1).T).sum()
    assert (after_t > before_t).all() and after_h < before_h


# ---------------------------------------------------------------- MCM-DPO
def _mcm_inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, n, generator=g) * 10 - 60, torch.randn(8, n, generator=g) * 10 - 60


def test_mcm_response_only_equals_dpo():
    pol, ref = _mcm_inputs()
    for per_facet in (False, True):
        ours, m = mcm_dpo_loss(pol, ref, n_facets=1, per_facet=per_facet)
        dpo, dm = dpo_loss(pol[0], pol[1], ref[0], ref[1])
        torch.testing.assert_close(ours, dpo)
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            torch.testing.assert_close(m[k], dm[k])
    # so does giving zero weight to every other facet
    torch.testing.assert_close(mcm_dpo_loss(pol, ref, weights=[1, 0, 0, 0, 0, 0, 0])[0], dpo_loss(pol[0], pol[1], ref[0], ref[1])[0])


def test_mcm_matches_released_formula():
    "Transcription of LVUGAI/MCM-DPO llava_trainer.py LLAVADPOTrainer.mcmdpo_loss (para_r1..7 and para_norm of mcmdpo.sh)."
    pol, ref = _mcm_inputs(seed=1)
    P, R = dict(zip(MCM_CONDITIONS, pol)), dict(zip(MCM_CONDITIONS, ref))
    r1 = r2 = 0.5; r3 = 1.0; r4 = r5 = r6 = r7 = 0.2; norm = 2.8; beta = 0.1
    logits = r3 / norm * (P["cw_mw_yw"] - P["cw_mw_yl"]) - r3 / norm * (R["cw_mw_yw"] - R["cw_mw_yl"])
    logits += r2 / norm * (P["cw_mw_yw"] - R["cw_mw_yw"]); logits -= r2 / norm * (P["cw_ml_yw"] - R["cw_ml_yw"])
    logits += r1 / norm * (P["cw_mw_yw"] - P["cl_mw_yw"]); logits -= r1 / norm * (R["cw_mw_yw"] - R["cl_mw_yw"])
    logits += r4 / norm * (P["cw_mw_yw"] - P["cl_mw_yl"]); logits -= r4 / norm * (R["cw_mw_yw"] - R["cl_mw_yl"])
    logits += r5 / norm * (P["cw_mw_yw"] - P["cw_ml_yl"]); logits -= r5 / norm * (R["cw_mw_yw"] - R["cw_ml_yl"])
    logits += r6 / norm * (P["cw_mw_yw"] - P["cl_ml_yw"]); logits -= r6 / norm * (R["cw_mw_yw"] - R["cl_ml_yw"])
    logits += r7 / norm * (P["cw_mw_yw"] - P["cl_ml_yl"]); logits -= r7 / norm * (R["cw_mw_yw"] - R["cl_ml_yl"])
    torch.testing.assert_close(mcm_dpo_loss(pol.flatten(), ref.flatten())[0], -F.logsigmoid(beta * logits).mean())
    # the release keeps para_norm=2.8 when --use_cl_reward_num drops facets (k=3: r3, r2, r1)
    l3 = (r3 * (P["cw_mw_yw"] - P["cw_mw_yl"] - R["cw_mw_yw"] + R["cw_mw_yl"])
          + r2 * (P["cw_mw_yw"] - R["cw_mw_yw"] - P["cw_ml_yw"] + R["cw_ml_yw"])
          + r1 * (P["cw_mw_yw"] - P["cl_mw_yw"] - R["cw_mw_yw"] + R["cl_mw_yw"])) / norm
    torch.testing.assert_close(mcm_dpo_loss(pol, ref, n_facets=3, norm=2.8)[0], -F.logsigmoid(beta * l3).mean())


def test_mcm_per_facet_and_gradients():
    pol, ref = _mcm_inputs(seed=2)
    pol = pol.requires_grad_()
    loss, m = mcm_dpo_loss(pol, ref, per_facet=True)
    w = torch.tensor([1.0, .5, .5, .2, .2, .2, .2]) / 2.8
    idx = [1, 2, 4, 5, 3, 6, 7]   # response, image, context, c+y, m+y, c+m, c+m+y
    r = pol - ref
    expected = sum(w[i] * -F.logsigmoid(0.1 * (r[0] - r[j])) for i, j in enumerate(idx)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (pol.grad[0] < 0).all() and (pol.grad[1:] > 0).all()   # chosen up, every corrupted condition down
    with pytest.raises(ValueError, match="n_facets"):
        mcm_dpo_loss(pol, ref, n_facets=0)


# ---------------------------------------------------------------- MCLE
def _mcle_batch(seed=0):
    "Three groups: (pos, semantic, image), (pos, instance), (pos, semantic, instance), interleaved."
    g = torch.Generator().manual_seed(seed)
    levels = ["positive", "semantic", "positive", "image", "instance", "positive", "semantic", "instance"]
    groups = [0, 0, 1, 0, 1, 2, 2, 2]
    weights = torch.tensor([1.0 if l == "positive" else -1.0 for l in levels]) * (0.5 + torch.rand(8, generator=g))
    weights[0] = 1.0
    T = 6
    mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (8,), generator=g)[:, None]).float()
    token_logps = -torch.rand(8, T, generator=g) * 3 * mask
    mean = token_logps.sum(-1) / mask.sum(-1)
    text = torch.randn(8, 16, generator=g)
    image_index = torch.tensor([0, 0, 1, 2, 1, 2, 2, 2])
    images = torch.randn(3, 16, generator=g)
    inst = torch.randn(8, 16, generator=g)
    return dict(mean=mean, token_logps=token_logps, mask=mask, weights=weights, levels=levels, groups=groups,
                text_features=text, image_features=images, image_index=image_index, instance_features=inst)


def _run_mcle(variant, b, **kw):
    logps = {"mean": b["mean"], "token_logps": b["token_logps"], "mask": b["mask"]}
    if variant == "multilevel":
        kw = dict(text_features=b["text_features"], image_features=b["image_features"], image_index=b["image_index"],
                  instance_features=b["instance_features"]) | kw
    return mcle_loss(variant, logps, b["weights"], b["levels"], b["groups"], **kw)


def test_mcle_official_formula():
    b = _mcle_batch()
    loss, _ = _run_mcle("official", b)
    torch.testing.assert_close(loss, (b["weights"] * -b["mean"]).mean())


def test_mcle_bounded_formula_and_bound():
    b = _mcle_batch()
    loss, m = _run_mcle("bounded", b)
    pos = torch.tensor([l == "positive" for l in b["levels"]])
    p = b["token_logps"].exp()
    ul = (-torch.log1p(-p.clamp(max=1 - 1e-6)) * b["mask"]).sum(-1) / b["mask"].sum(-1)
    expected = torch.where(pos, b["weights"] * -b["mean"], b["weights"].abs() * ul).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # the negative term cannot go below 0 however unlikely the negatives become, while official's goes to -inf
    far = dict(b, token_logps=torch.where(pos[:, None], b["token_logps"], torch.full_like(b["token_logps"], -1e4)))
    far["mean"] = torch.where(pos, b["mean"], torch.full_like(b["mean"], -1e4))
    assert float(_run_mcle("bounded", far)[1]["loss/unlikelihood"]) >= 0
    assert float(_run_mcle("official", far)[0]) < -1e3


def test_mcle_multilevel_formula():
    b = _mcle_batch()
    lv, ml, w = level_codes(b["levels"]), b["mean"], b["weights"]
    pidx = paired_positive(lv, b["groups"])
    assert pidx.tolist() == [0, 0, 2, 0, 2, 5, 5, 5]
    loss, m = _run_mcle("multilevel", b, lambdas={"semantic": 0.3, "image": 0.0, "instance": 2.0, "image_nce": 0.0, "instance_nce": 0.0})
    def term(code):
        rows = (lv == code).nonzero().flatten()
        return (w[rows].abs() * -F.logsigmoid(2.0 * (ml[pidx[rows]] - ml[rows]))).mean()
    pos = lv == 0
    expected = (w[pos] * -ml[pos]).mean() + 0.3 * term(1) + 2.0 * term(3)
    torch.testing.assert_close(loss, expected)
    assert "loss/image" not in m and "loss/image_nce" not in m
    # the feature terms are the InfoNCE formulas of the notebook
    _, m = _run_mcle("multilevel", b)
    prow = pos.nonzero().flatten()
    torch.testing.assert_close(m["loss/image_nce"], info_nce(b["text_features"][prow], b["image_features"], 0.1,
                                                             targets=b["image_index"][prow]).mean())
    hard = (lv == 3).nonzero().flatten()
    torch.testing.assert_close(m["loss/instance_nce"], info_nce(b["text_features"][prow], b["instance_features"][prow], 0.1,
                                                                extra_keys=b["instance_features"][hard]).mean())


@pytest.mark.parametrize("variant", ["official", "bounded", "multilevel"])
def test_mcle_gradient_direction(variant):
    b = _mcle_batch(seed=3)
    mean = b["mean"].clone().requires_grad_()
    tl = b["token_logps"].clone().requires_grad_()
    loss, _ = mcle_loss(variant, {"mean": mean, "token_logps": tl, "mask": b["mask"]}, b["weights"], b["levels"], b["groups"])
    loss.backward()
    pos = torch.tensor([l == "positive" for l in b["levels"]])
    assert (mean.grad[pos] < 0).all()                    # positives pushed up
    if variant == "bounded":
        assert (tl.grad[~pos][b["mask"][~pos].bool()] > 0).all()   # every negative token pushed down
    else:
        assert (mean.grad[~pos] > 0).all()               # negatives pushed down


def test_mcle_levels_and_groups_validation():
    b = _mcle_batch()
    with pytest.raises(ValueError, match="level"):
        mcle_loss("multilevel", {"mean": b["mean"]}, b["weights"], ["positive"] * 7 + ["nonsense"], b["groups"])
    with pytest.raises(ValueError, match="positives"):
        mcle_loss("multilevel", {"mean": b["mean"]}, b["weights"], ["positive"] * 8, [0] * 8)
    with pytest.raises(ValueError, match="unknown variant"):
        mcle_loss("ascent", {"mean": b["mean"]}, b["weights"])
    # a negative whose positive is outside the batch is skipped and counted
    _, m = mcle_loss("multilevel", {"mean": b["mean"][1:]}, b["weights"][1:], b["levels"][1:], b["groups"][1:])
    assert float(m["mcle/unpaired"]) == 2
    assert MCLE_LEVELS[0] == "positive"
    torch.testing.assert_close(level_codes(b["levels"]), level_codes(level_codes(b["levels"])))


# ---------------------------------------------------------------- batch-order invariance
def _perm(n, seed=11): return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def test_batch_order_invariance():
    # DPO family
    pc, pr, rc, rr, lc, lr = _random_pairs(seed=7)
    p = _perm(len(pc))
    for kw in (dict(), dict(loss_type="ipo"), dict(length_normalized=True), dict(sft_weight=0.3), dict(official_dgpref=True)):
        a = dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
        c = dpo_loss(pc[p], pr[p], rc[p], rr[p], chosen_lengths=lc[p], rejected_lengths=lr[p], **kw)
        torch.testing.assert_close(a[0], c[0])
        for k in a[1]: torch.testing.assert_close(a[1][k], c[1][k])
    # MCM-DPO: permute the pairs, consistently across the 8 conditions
    pol, ref = _mcm_inputs(seed=8)
    p = _perm(pol.shape[1])
    for per_facet in (False, True):
        for k in (1, 3, 7):
            torch.testing.assert_close(mcm_dpo_loss(pol, ref, n_facets=k, per_facet=per_facet)[0],
                                       mcm_dpo_loss(pol[:, p], ref[:, p], n_facets=k, per_facet=per_facet)[0])
    # HACL: permute image/caption pairs and (separately) the hallucinated captions
    g = torch.Generator().manual_seed(9)
    v, t, h = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)
    p, q = _perm(5), _perm(7, seed=3)
    for t2i in (False, True):
        torch.testing.assert_close(hacl_contrastive_loss(v, t, 0.07, h, t2i)[0], hacl_contrastive_loss(v[p], t[p], 0.07, h[q], t2i)[0])
    # MCLE: permute rows with their weights, levels and groups; images permuted with image_index remapped
    b = _mcle_batch(seed=10)
    p = _perm(8)
    ip = _perm(3, seed=5)                       # new image order: image ip[k] is now at position k
    inv = torch.argsort(ip)
    pb = dict(mean=b["mean"][p], token_logps=b["token_logps"][p], mask=b["mask"][p], weights=b["weights"][p],
              levels=[b["levels"][i] for i in p], groups=[b["groups"][i] for i in p],
              text_features=b["text_features"][p], image_features=b["image_features"][ip],
              image_index=inv[b["image_index"][p]], instance_features=b["instance_features"][p])
    for variant in ("official", "bounded", "multilevel"):
        a, c = _run_mcle(variant, b), _run_mcle(variant, pb)
        torch.testing.assert_close(a[0], c[0])
        for k in a[1]: torch.testing.assert_close(a[1][k], c[1][k], equal_nan=True)


def test_metrics_are_detached_scalars():
    pc, pr, rc, rr, lc, lr = _random_pairs()
    pc = pc.requires_grad_()
    b = _mcle_batch()
    outs = [dpo_loss(pc, pr, rc, rr), mcm_dpo_loss(*_mcm_inputs()), hacl_contrastive_loss(torch.randn(3, 4), torch.randn(3, 4)),
            *(_run_mcle(v, b) for v in ("official", "bounded", "multilevel"))]
    for loss, m in outs:
        assert loss.dim() == 0 and loss.dtype == torch.float32
        for k, v in m.items():
            assert "/" in k and isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k
