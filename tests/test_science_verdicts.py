"""The gym's verdict rule (`gym_verdicts`): the bootstrap p-value, Benjamini–Hochberg, the hierarchical bootstrap over bases,
and the gate that lets a column give a verdict only where a positive control works and the A/A row does not move.

Each case has an answer worked out by hand in its docstring.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mllm_nle.gym_verdicts import bh_adjust, bootstrap_p, column_status, improves, paired_bases, verdict


# ---------------------------------------------------------------- bootstrap_p
def test_bootstrap_p_is_twice_the_smaller_tail():
    "Draws -1, 1, 2, 3: 1/4 at or below 0, 3/4 at or above: p = 2 · 1/4."
    assert bootstrap_p(np.array([-1.0, 1, 2, 3])) == pytest.approx(0.5)
    assert bootstrap_p(np.array([-3.0, -2, -1, 1])) == pytest.approx(0.5)


def test_bootstrap_p_counts_zero_on_both_sides_and_is_capped_at_one():
    "0, 1, 1, 1: the 0 is in both tails (1/4 and 1): 2 · 1/4; half the draws each side: 2 · 1/2 = 1; all zero: 2 · 1, capped at 1."
    assert bootstrap_p(np.array([0.0, 1, 1, 1])) == pytest.approx(0.5)
    assert bootstrap_p(np.array([-1.0, -1, 1, 1])) == 1.0
    assert bootstrap_p(np.zeros(5)) == 1.0


def test_bootstrap_p_floor_is_one_over_the_draws_and_nan_draws_drop_out():
    "Every draw above 0: p would be 0, reported as 1/n (n finite draws). NaN draws do not count; no finite draw: NaN."
    assert bootstrap_p(np.ones(8)) == pytest.approx(1 / 8)
    assert bootstrap_p(np.array([np.nan, np.nan, 1, 1, 1, 1])) == pytest.approx(1 / 4)
    assert bootstrap_p(np.array([np.nan, -1, 1, 2, 3])) == pytest.approx(0.5)
    assert math.isnan(bootstrap_p(np.array([np.nan, np.nan])))


# ---------------------------------------------------------------- bh_adjust
def test_bh_adjust_matches_the_hand_computation():
    "Sorted .01 .03 .04 .2, m = 4: p·m/rank = .04 .06 .0533 .2; the running minimum from the top gives .04 .0533 .0533 .2."
    q = bh_adjust([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_bh_adjust_leaves_nan_out_of_m():
    "NaN, .01, .04: m = 2, so .02 and .04 (with m = 3 they would be .03 and .06); the NaN stays NaN."
    q = bh_adjust([np.nan, 0.01, 0.04])
    assert math.isnan(q[0]) and q[1:] == pytest.approx([0.02, 0.04])
    assert np.isnan(bh_adjust([np.nan, np.nan])).all() and bh_adjust([]).shape == (0,)


def test_bh_adjust_never_lowers_a_p_value_and_keeps_the_order():
    ps = np.random.default_rng(3).random(40) ** 3
    q = bh_adjust(ps)
    assert (q >= ps - 1e-12).all() and (q <= 1).all()
    o = np.argsort(ps)
    assert (np.diff(q[o]) >= -1e-12).all()
    assert bh_adjust([0.5]) == pytest.approx([0.5]) and bh_adjust([0.03, 0.03]) == pytest.approx([0.03, 0.03])


# ---------------------------------------------------------------- paired_bases: base → seed → item
def _gym(tmp: Path, per_base: dict) -> dict:
    "per_base: {base: {row: {seed: [correct, ...]}}} -> a gym dict as `load_gym` gives it."
    g = dict(out=tmp, per_base={})
    for b, rows in per_base.items():
        items, seeds = {}, sorted({s for by in rows.values() for s in by})
        for row, by_seed in rows.items():
            for s, flags in by_seed.items():
                rel = f"{row}/seed{s}/generations.jsonl"
                f = tmp/f"base{b}"/rel
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("".join(json.dumps(dict(suite="vqa", id=f"q{i}", correct=bool(v))) + "\n" for i, v in enumerate(flags)))
                items.setdefault(row, {})[str(s)] = rel
        g["per_base"][b] = dict(items=items, seeds=seeds)
    return g


def test_paired_bases_resamples_bases(tmp_path):
    "Base 0: no difference; base 1: +1 on every item. Δ = 1/2; a draw of two bases averages 0, 1/2 or 1, so the CI is [0, 1]."
    g = _gym(tmp_path, {0: {"a": {0: [0] * 20}, "b": {0: [0] * 20}}, 1: {"a": {0: [0] * 20}, "b": {0: [1] * 20}}})
    p = paired_bases(g, "a", "b", "accuracy", n_boot=2000)
    assert p["delta"] == pytest.approx(0.5) and p["ci95"] == [0.0, 1.0] and p["per_base"] == {0: 0.0, 1: 1.0}
    assert (p["model"], p["against"], p["key"], p["n_bases"], p["n_seeds"], p["n_items"]) == ("b", "a", "accuracy", 2, 1, 20)
    assert p["p"] > 0.05


def test_paired_bases_one_base_is_that_bases_paired_interval(tmp_path):
    "One base, a 0/1 difference with p = 1/2 over 400 items: Δ = 1/2, CI ≈ 1/2 ± 1.96 · sqrt(1/4 / 400), p at its floor."
    g = _gym(tmp_path, {0: {"a": {0: [0] * 400}, "b": {0: [1, 0] * 200}}})
    p = paired_bases(g, "a", "b", "accuracy", n_boot=4000)
    lo, hi = p["ci95"]
    assert p["delta"] == pytest.approx(0.5) and (hi - lo) == pytest.approx(2 * 1.96 * 0.025, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=0.005) and p["p"] == pytest.approx(1 / 4000)


def test_paired_bases_uses_only_bases_with_both_rows(tmp_path):
    "Row b ran on base 0 only: base 1 (where b is missing) is left out, not counted as zero."
    g = _gym(tmp_path, {0: {"a": {0: [0] * 10}, "b": {0: [1] * 10}}, 1: {"a": {0: [0] * 10}}})
    p = paired_bases(g, "a", "b", "accuracy", n_boot=200)
    assert p["n_bases"] == 1 and p["delta"] == 1.0 and p["per_base"] == {0: 1.0}
    with pytest.raises(KeyError, match="no base has both"): paired_bases(g, "a", "zz", "accuracy")


def test_paired_bases_delta_is_the_mean_of_the_bases(tmp_path):
    "Base 0: +0.3 (3 of 10 items), base 1: +0.1 over 2 seeds (+0.2 at seed 0, 0 at seed 1): Δ = (0.3 + 0.1) / 2."
    g = _gym(tmp_path, {0: {"a": {0: [0] * 10, 1: [0] * 10}, "b": {0: [1] * 3 + [0] * 7, 1: [1] * 3 + [0] * 7}},
                        1: {"a": {0: [0] * 10, 1: [0] * 10}, "b": {0: [1] * 2 + [0] * 8, 1: [0] * 10}}})
    p = paired_bases(g, "a", "b", "accuracy", n_boot=500)
    assert p["delta"] == pytest.approx(0.2) and p["per_base"] == pytest.approx({0: 0.3, 1: 0.1}) and p["n_seeds"] == 2
    lo, hi = p["ci95"]
    assert 0 <= lo < 0.2 < hi


# ---------------------------------------------------------------- the gate
def _p(model, against, key, delta, lo, hi, q=0.01):
    return dict(model=model, against=against, key=key, delta=delta, ci95=[lo, hi], q=q)


def test_improves_follows_each_columns_direction():
    assert improves(_p("m", "s", "CHAIR_i", -0.1, -0.2, -0.05)) and not improves(_p("m", "s", "CHAIR_i", 0.1, 0.05, 0.2))
    assert improves(_p("m", "s", "CIDEr", 0.3, 0.1, 0.5)) and not improves(_p("m", "s", "CIDEr", -0.3, -0.5, -0.1))
    assert not improves(_p("m", "s", "CIDEr", 0.3, -0.1, 0.5)) and not improves(_p("m", "s", "CHAIR_i", -0.1, -0.2, 0.0))


def test_column_status_each_reason():
    "CHAIR_i: control works, A/A flat → usable. CIDEr: control does not work. consistency: none run. false_claims: A/A moves."
    pairs = [_p("dgpref/oracle_edit_balanced", "dgpref/sft", "CHAIR_i", -0.1, -0.15, -0.05),
             _p("dgpref/sft_gold", "dgpref/sft", "CHAIR_i", 0.02, -0.01, 0.05),
             _p("dgpref/sft_aa", "dgpref/sft", "CHAIR_i", 0.0, -0.03, 0.03),
             _p("mcmdpo/gold_vs_own", "mcmdpo/sft", "CIDEr", -0.2, -0.5, 0.1),
             _p("dgpref/exact_balanced", "dgpref/sft", "false_claims", -0.5, -0.8, -0.2),
             _p("dgpref/sft_aa", "dgpref/sft", "false_claims", 0.3, 0.1, 0.5),
             _p("dgpref/sft_gold", "dgpref/sft", "pope_f1", 0.1, 0.05, 0.15)]
    st = column_status(pairs)
    assert st["CHAIR_i"] == dict(usable=True, controls={"dgpref/oracle_edit_balanced": -0.1, "dgpref/sft_gold": 0.02},
                                 working=["dgpref/oracle_edit_balanced"], aa=0.0, why="")
    assert not st["CIDEr"]["usable"] and st["CIDEr"]["why"] == "no positive control beats its SFT row" and st["CIDEr"]["aa"] is None
    assert not st["consistency"]["usable"] and st["consistency"]["why"] == "no positive control was run"
    assert not st["false_claims"]["usable"] and st["false_claims"]["why"] == "the A/A row differs from its SFT row"
    assert st["false_claims"]["aa"] == 0.3
    assert not st["pope_f1"]["usable"] and st["pope_f1"]["why"] == "no A/A row was run"
    assert st["accuracy"]["why"] == "no positive control was run"


def test_a_control_against_another_row_does_not_open_a_column():
    "The control compared with something other than its SFT row (a fix-vs-release pair, say) is not its control result."
    pairs = [_p("dgpref/oracle_edit_balanced", "dgpref/dgpref", "CHAIR_i", -0.1, -0.15, -0.05),
             _p("dgpref/sft_aa", "dgpref/sft", "CHAIR_i", 0.0, -0.03, 0.03)]
    assert column_status(pairs)["CHAIR_i"]["why"] == "no positive control was run"


def test_verdict_is_gated_and_needs_q():
    pairs = [_p("dgpref/oracle_edit_balanced", "dgpref/sft", "CHAIR_i", -0.1, -0.15, -0.05),
             _p("dgpref/sft_aa", "dgpref/sft", "CHAIR_i", 0.0, -0.03, 0.03)]
    st = column_status(pairs)
    assert verdict(_p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", 0.05, 0.01, 0.09), st) == "worse"
    assert verdict(_p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", -0.05, -0.09, -0.01), st) == "better"
    assert verdict(_p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", -0.05, -0.09, -0.01, q=0.2), st) == "no detectable difference"
    assert verdict(_p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", -0.05, -0.09, -0.01, q=0.05), st) == "no detectable difference"
    assert verdict(_p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", -0.05, -0.09, 0.01), st) == "no detectable difference"
    assert verdict(_p("mcmdpo/dpo", "mcmdpo/sft", "CIDEr", 2.0, 1.0, 3.0), st) == "cannot tell (no positive control was run)"
    assert verdict(_p("x/y", "x/sft", "no_such_column", 2.0, 1.0, 3.0), st) == "cannot tell (no positive control for this column)"
    no_q = {k: v for k, v in _p("dgpref/dgpref", "dgpref/sft", "CHAIR_i", 0.05, 0.01, 0.09).items() if k != "q"}
    assert verdict(no_q, st) == "worse"                    # a side comparison (no q): judged on its CI
