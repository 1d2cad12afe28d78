"""The hallucination gym end to end: the report notebook through papermill at smoke size (one seed, a few steps,
every row), the CPU tier being the notebook's default, and strict parameters."""
import json
from pathlib import Path

import pytest

from mllm_nle import gym
from mllm_nle.core import ConfigError, load_config
from mllm_nle.experiment import notebook_config
from notebook_runs import assert_figures_shown, run_notebook

ROOT = Path(__file__).resolve().parents[1]

SMOKE = dict(run_name="smoke", seeds=[0], bases=[0, 1], tune=False, workers=2, sft_steps=2, sft_batch_size=4, budget=2500, budget_batches=2,
             logging_steps=1, eval_batch_size=16, n_boot=200,
             mcle=dict(n_train=6, n_test=4, max_new_tokens=12),
             dgpref=dict(n_sft=6, vqa_per_image=1, n_images=3, n_bench=3, n_samples=4, caption_max_new_tokens=24),
             hacl=dict(n_train=6, n_vqa=1, n_probe=4, n_bench=3, probe_every=0, probe_size=2, max_new_tokens=12, pope_modes=["random"]),
             mcmdpo=dict(n_train=8, n_test=4, max_new_tokens=12, batch_size=2),
             val=dict(mcle=dict(n_test=4), hacl=dict(n_bench=3, pope_modes=["random"]), mcmdpo=dict(n_test=4)))


def _papermill(tmp_path, params: dict, extra=()):
    return run_notebook("gym_report.ipynb", tmp_path, params, extra)


def test_gym_report_smoke(tmp_path):
    "Every row and control at one seed on two bases, in two workers, every model on the whole suite; the table, controls, verdicts, figures."
    r = _papermill(tmp_path, SMOKE)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path/"outputs"/"gym"/"smoke"
    whole = json.loads((out/"study.json").read_text())
    assert whole["rows"] == list(gym.DEFAULT_ROWS) and whole["bases"] == [0, 1] and whole["environment"]["torch_threads"] >= 1
    for b in (0, 1):
        study = json.loads((out/f"base{b}"/"study.json").read_text())
        trained = set(study["runs"]) - {"base"}
        # on-policy pairs exist only when the base's sampled captions give some: a 2-step base may give none, and says so
        assert trained | set(study["skipped"]) == set(gym.DEFAULT_ROWS)
        assert all("pairs" in why for why in study["skipped"].values()), study["skipped"]
        for name in trained:
            run, plan = study["runs"][name]["0"], study["plan"][name]
            assert run["steps"] == plan["steps"] >= 1 and run["tokens"] > 0, name
            ev = json.loads((out/f"base{b}"/name/"seed0"/"eval.json").read_text())
            assert set(gym.TABLE_METRICS) <= set(ev["summary"]), name
            if name not in gym.STEPS_OF: assert run["tokens"] < study["budget"] + 2 * plan["tokens_per_step"], name   # at most one step over
        steps = {n: study["plan"][n]["steps"] for n in ("mcmdpo/sft", "mcmdpo/dpo", "mcmdpo/mcm_dpo", "mcmdpo/dpo_steps")}
        assert steps["mcmdpo/mcm_dpo"] <= steps["mcmdpo/dpo"] <= steps["mcmdpo/sft"] and steps["mcmdpo/dpo_steps"] == steps["mcmdpo/mcm_dpo"]
        assert "mcmdpo/dpo_released" not in study["runs"]          # a release row: not in the default rows (gym.RELEASE_ROWS)
    aa = json.loads((out/"base1"/"dgpref/sft_aa/seed0/done.json").read_text())
    assert (aa["seed"], aa["train_seed"]) == (0, gym.AA_SEED_OFFSET)
    paired = json.loads((out/"paired.json").read_text())
    assert {(p["against"], p["model"]) for p in paired} >= {("hacl/sft", "hacl/hacl"), ("mcle/sft", "mcle/consistency_dpo"), ("dgpref/sft", "dgpref/sft_aa"),
                                                            ("mcmdpo/dpo", "mcmdpo/mcm_dpo"), ("mcmdpo/dpo_steps", "mcmdpo/mcm_dpo")}
    assert all(p["n_bases"] == 2 for p in paired if p["model"] == "hacl/hacl")
    rows = [json.loads(l) for l in (out/"base0/mcmdpo/mcm_dpo/seed0/generations.jsonl").read_text().splitlines()]
    assert {r["suite"] for r in rows} == {"vqa", "caption", "pope", "alttext"}          # every model on every test
    nb = json.loads((tmp_path/"executed.ipynb").read_text())
    text = json.dumps(nb)
    assert "| mcle/mcle |" in text and "verdicts allowed" in text and "cannot tell" in text
    assert_figures_shown(tmp_path/"executed.ipynb", at_least=4)
    for f in ("figures/metric_bars.png", "figures/loss_curves.png", "figures/tradeoff.png", "figures/verdicts_by_base.png",
              "figures/mcmdpo_margins.png", "metrics.json", "config.yaml", "base0/plan.json", "base1/dgpref/data_released/data_report.json"):
        assert (out/f).exists(), f


def test_the_cpu_tier_is_the_default():
    "`papermill nbs/gym_report.ipynb` with no parameters runs params/gym/cpu.yaml."
    assert load_config(gym.GymConfig, ROOT/"params"/"gym"/"cpu.yaml") == gym.GymConfig()


def test_parameters_are_strict():
    with pytest.raises(ConfigError, match="budgett"): notebook_config(gym.GymConfig, {"budgett": 3, "params_file": None})
    with pytest.raises(ConfigError, match="n_tset"): gym.GymConfig(mcle={"n_tset": 3})           # inside a recipe's dict too
    with pytest.raises(ConfigError, match="backbone"): gym.GymConfig(hacl={"backbone": "tiny:llava:s"})   # one backbone for all
    with pytest.raises(ConfigError, match="mcle/mlce"): gym.GymConfig(rows=["mcle/mlce"])
