"""The paired statistics behind every "better / worse" claim: `experiment.paired_difference` and `gym_report.paired_metric`.

Each case has a known answer: a bootstrap of a 0/1 difference with p = 1/2 over N items has a 95% percentile interval of
width 2 · 1.96 · sqrt(p(1-p)/N); two seeds that disagree completely give [0, 1] when seeds are resampled; a
difference that is nearly constant item by item is narrow only when the bootstrap keeps the items paired.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mllm_nle.experiment import paired_difference, study_summary
from mllm_nle.gym_report import excludes_zero, item_values, paired_metric, verdict


def _write_study(out: Path, models: dict, seeds) -> dict:
    "models: {name: {seed: [row, ...]}} -> study.json + one generations file per (model, seed)."
    items = {}
    for name, by_seed in models.items():
        for s, rows in by_seed.items():
            rel = f"{name}/seed{s}.jsonl"
            (out/name).mkdir(parents=True, exist_ok=True)
            (out/rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
            items.setdefault(name, {})[str(s)] = rel
    study = dict(seeds=list(seeds), items=items)
    (out/"study.json").write_text(json.dumps(study))
    return study


def _flags(values, key="supports_answer"):
    return [{"id": f"q{i}", "suite": "vqa", key: bool(v), "correct": bool(v)} for i, v in enumerate(values)]


# ---------------------------------------------------------------- experiment.paired_difference
def test_interval_width_is_the_binomial_bootstraps(tmp_path):
    "d_i ∈ {0, 1}, exactly half ones, N = 400: delta 1/2, σ = sqrt(1/4 / 400) = 0.025, 95% interval ≈ 0.5 ± 1.96σ."
    _write_study(tmp_path, {"a": {0: _flags([0] * 400)}, "b": {0: _flags([1, 0] * 200)}}, [0])
    p = paired_difference(tmp_path, "a", "b", n_boot=4000)
    lo, hi = p["ci95"]
    assert p["delta"] == 0.5 and (p["n_items"], p["n_seeds"]) == (400, 1) and (p["model"], p["against"]) == ("b", "a")
    assert (hi - lo) == pytest.approx(2 * 1.96 * 0.025, rel=0.06)          # a 90% interval would be 16% narrower
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=0.004)


def test_seeds_are_resampled(tmp_path):
    "Seed 0 never differs, seed 1 always does: a draw of two seeds averages 0, 1/2 or 1 (p = 1/4, 1/2, 1/4): CI [0, 1]."
    _write_study(tmp_path, {"a": {0: _flags([0] * 30), 1: _flags([0] * 30)}, "b": {0: _flags([0] * 30), 1: _flags([1] * 30)}}, [0, 1])
    p = paired_difference(tmp_path, "a", "b")
    assert p["delta"] == 0.5 and p["ci95"] == [0.0, 1.0] and p["n_seeds"] == 2


def test_items_stay_paired(tmp_path):
    "a: 100 right, 100 wrong; b: the same plus 10 of a's wrong ones right. Paired: 10/200 ± 1.96·sqrt(.05·.95/200); unpaired ± ~0.1."
    a = [1] * 100 + [0] * 100
    b = [1] * 110 + [0] * 90
    _write_study(tmp_path, {"a": {0: _flags(a)}, "b": {0: _flags(b)}}, [0])
    p = paired_difference(tmp_path, "a", "b", n_boot=4000)
    lo, hi = p["ci95"]
    assert p["delta"] == pytest.approx(0.05)
    assert lo > 0 and (hi - lo) == pytest.approx(2 * 1.96 * math.sqrt(0.05 * 0.95 / 200), rel=0.15)


def test_interval_covers_the_true_difference_95_percent_of_the_time(tmp_path):
    "200 data sets of 120 items with P(d_i = 1) = 0.3: the 95% interval holds 0.3 about 95% of the time."
    rng, hits = np.random.default_rng(7), 0
    models = {"a": {0: _flags([0] * 120)}}
    for r in range(200): models[f"b{r}"] = {0: _flags((rng.random(120) < 0.3).astype(int))}
    _write_study(tmp_path, models, [0])
    for r in range(200):
        lo, hi = paired_difference(tmp_path, "a", f"b{r}", n_boot=1000, seed=r)["ci95"]
        hits += lo <= 0.3 <= hi
    assert 0.90 <= hits / 200 <= 0.985, hits


def test_a_model_evaluated_once_is_paired_with_every_seed(tmp_path):
    "The baseline's '-' run stands for every seed; per-seed deltas 0.5 and 1.0 average to 0.75."
    _write_study(tmp_path, {"base": {"-": _flags([0, 0, 0, 0])}, "b": {0: _flags([1, 1, 0, 0]), 1: _flags([1, 1, 1, 1])}}, [0, 1])
    p = paired_difference(tmp_path, "base", "b")
    assert p["delta"] == pytest.approx(0.75) and p["n_seeds"] == 2
    assert p["ci95"][0] >= 0.25 and p["ci95"][1] == 1.0


def test_paired_difference_refuses_mismatched_studies(tmp_path):
    _write_study(tmp_path, {"a": {0: _flags([0, 1])}, "b": {0: _flags([0, 1, 1])}, "c": {1: _flags([1, 1])}}, [0])
    with pytest.raises(ValueError, match="a has 2 items, b has 3"): paired_difference(tmp_path, "a", "b")
    with pytest.raises(KeyError, match="no model 'zz'"): paired_difference(tmp_path, "a", "zz")
    with pytest.raises(KeyError, match="'c' lacks seeds"): paired_difference(tmp_path, "a", "c")


def test_study_summary_is_mean_and_sample_std():
    s = study_summary({"m": {0: {"x": 1.0, "y": None}, 1: {"x": 2.0, "y": 5.0}, 2: {"x": 3.0}}})
    assert s["m"]["x"] == dict(mean=2.0, std=1.0, values=[1.0, 2.0, 3.0])
    assert s["m"]["y"] == dict(mean=5.0, std=0.0, values=[5.0])
    assert study_summary({"m": {0: {"z": 1.0}, 1: {"z": 3.0}}})["m"]["z"]["std"] == pytest.approx(2 ** 0.5)   # two seeds: ddof 1


# ---------------------------------------------------------------- gym_report.paired_metric
def _rows(suite, **cols):
    n = len(next(iter(cols.values())))
    return [{"id": f"{suite}{i}", "suite": suite, **{k: v[i] for k, v in cols.items()}} for i in range(n)]


def test_gym_interval_width_and_centre(tmp_path):
    study = _write_study(tmp_path, {"a": {0: _rows("vqa", correct=[0] * 400)}, "b": {0: _rows("vqa", correct=[1, 0] * 200)}}, [0])
    p = paired_metric(tmp_path, study, "a", "b", "accuracy", n_boot=4000)
    lo, hi = p["ci95"]
    assert p["delta"] == 0.5 and (p["n_items"], p["n_seeds"], p["key"]) == (400, 1, "accuracy")
    assert (hi - lo) == pytest.approx(2 * 1.96 * 0.025, rel=0.06) and (lo + hi) / 2 == pytest.approx(0.5, abs=0.004)


def test_gym_seeds_are_resampled(tmp_path):
    study = _write_study(tmp_path, {"a": {0: _rows("vqa", correct=[0] * 30), 1: _rows("vqa", correct=[0] * 30)},
                                    "b": {0: _rows("vqa", correct=[0] * 30), 1: _rows("vqa", correct=[1] * 30)}}, [0, 1])
    assert paired_metric(tmp_path, study, "a", "b", "accuracy")["ci95"] == [0.0, 1.0]


def test_gym_items_stay_paired(tmp_path):
    study = _write_study(tmp_path, {"a": {0: _rows("vqa", correct=[1] * 100 + [0] * 100)},
                                    "b": {0: _rows("vqa", correct=[1] * 110 + [0] * 90)}}, [0])
    p = paired_metric(tmp_path, study, "a", "b", "accuracy", n_boot=4000)
    lo, hi = p["ci95"]
    assert lo > 0 and (hi - lo) == pytest.approx(2 * 1.96 * math.sqrt(0.05 * 0.95 / 200), rel=0.15)


def test_gym_ratio_metrics_are_ratios_of_sums(tmp_path):
    "CHAIR_i = Σ hallucinated / Σ mentions: a 2/4, b 1/4 → -0.25 (the mean of per-caption ratios would give -1/6)."
    study = _write_study(tmp_path, {"a": {0: _rows("caption", n_hallucinated=[1, 0, 1], n_mentions=[2, 1, 1])},
                                    "b": {0: _rows("caption", n_hallucinated=[0, 0, 1], n_mentions=[2, 1, 1])}}, [0])
    assert paired_metric(tmp_path, study, "a", "b", "CHAIR_i")["delta"] == pytest.approx(-0.25)


def test_gym_grouped_metrics_average_the_groups(tmp_path):
    "POPE F1 per mode, then the mean: random .5 → .8, adversarial 0 → 1: delta (.3 + 1) / 2 = .65 (pooled would be .52)."
    a = _rows("pope", mode=["random", "random", "adversarial"], f1_num=[2, 0, 0], f1_den=[3, 1, 2])
    b = _rows("pope", mode=["random", "random", "adversarial"], f1_num=[2, 2, 2], f1_den=[2, 3, 2])
    study = _write_study(tmp_path, {"a": {0: a}, "b": {0: b}}, [0])
    p = paired_metric(tmp_path, study, "a", "b", "pope_f1")
    assert p["delta"] == pytest.approx(0.65)
    assert item_values(tmp_path, study, "a", "pope_f1")[2] == ["random", "random", "adversarial"]


def test_gym_delta_is_the_mean_over_seeds_and_ignores_other_suites(tmp_path):
    rows = lambda c: _rows("vqa", correct=c) + _rows("caption", n_hallucinated=[5], n_mentions=[5])
    study = _write_study(tmp_path, {"a": {0: rows([0, 0]), 1: rows([1, 0])}, "b": {0: rows([1, 1]), 1: rows([1, 1])}}, [0, 1])
    num, den, groups, ids = item_values(tmp_path, study, "a", "accuracy")
    assert num.tolist() == [[0, 0], [1, 0]] and den.tolist() == [[1, 1], [1, 1]] and ids == ["vqa0", "vqa1"] and groups == [None, None]
    assert paired_metric(tmp_path, study, "a", "b", "accuracy")["delta"] == pytest.approx((1.0 + 0.5) / 2)


def test_gym_unjudged_items_count_as_zero(tmp_path):
    study = _write_study(tmp_path, {"a": {0: _rows("vqa", supports_answer=[None, True, False, None])},
                                    "b": {0: _rows("vqa", supports_answer=[True, True, None, True])}}, [0])
    assert paired_metric(tmp_path, study, "a", "b", "consistency")["delta"] == pytest.approx(3 / 4 - 1 / 4)


def test_gym_refuses_mismatched_items(tmp_path):
    study = _write_study(tmp_path, {"a": {0: _rows("vqa", correct=[1, 0])}, "b": {0: _rows("vqa", correct=[1, 0, 1])},
                                    "c": {0: _rows("vqa", correct=[1, 0]), 1: _rows("vqa", correct=[1])}}, [0])
    with pytest.raises(ValueError, match="different vqa items"): paired_metric(tmp_path, study, "a", "b", "accuracy")
    with pytest.raises(KeyError, match="no model 'zz'"): paired_metric(tmp_path, study, "a", "zz", "accuracy")
    study["seeds"] = [0, 1]
    with pytest.raises(ValueError, match="other test items at another seed"): item_values(tmp_path, study, "c", "accuracy")
    with pytest.raises(KeyError, match="no run at seed 1"): item_values(tmp_path, study, "a", "accuracy")


def test_an_undefined_column_gives_an_undefined_interval(tmp_path):
    "No object mentioned anywhere: CHAIR_i is 0/0 for every draw, so the interval is NaN and excludes nothing."
    study = _write_study(tmp_path, {"a": {0: _rows("caption", n_hallucinated=[0, 0], n_mentions=[0, 0])},
                                    "b": {0: _rows("caption", n_hallucinated=[0, 0], n_mentions=[0, 0])}}, [0])
    p = paired_metric(tmp_path, study, "a", "b", "CHAIR_i", n_boot=50)
    assert all(math.isnan(x) for x in p["ci95"]) and not excludes_zero(p)


# ---------------------------------------------------------------- the verdict rule
def test_excludes_zero_is_strict():
    assert excludes_zero({"ci95": [0.01, 0.2]}) and excludes_zero({"ci95": [-0.2, -0.01]})
    assert not excludes_zero({"ci95": [-0.1, 0.1]}) and not excludes_zero({"ci95": [0.0, 0.2]}) and not excludes_zero({"ci95": [-0.2, 0.0]})
    assert not excludes_zero({"ci95": [float("nan"), 0.5]}) and not excludes_zero({"ci95": [0.1, float("inf")]})


def test_verdict_follows_each_columns_direction():
    p = lambda key, d, lo, hi: dict(key=key, delta=d, ci95=[lo, hi])
    assert verdict(p("CHAIR_i", -0.1, -0.2, -0.05)) == "better"        # lower is better
    assert verdict(p("CHAIR_i", 0.1, 0.05, 0.2)) == "worse"
    assert verdict(p("accuracy", 0.1, 0.05, 0.2)) == "better"          # higher is better
    assert verdict(p("accuracy", -0.1, -0.2, -0.05)) == "worse"
    assert verdict(p("claim_hallucination", -0.1, -0.2, 0.01)) == "no detectable difference"
    assert verdict(p("pope_f1", 0.0, 0.0, 0.0)) == "no detectable difference"
