"""The hallucination gym end to end: the report notebook through papermill at smoke size (one seed, a few steps,
every row), the CPU tier being the notebook's default, and strict parameters."""
import json
from pathlib import Path

import pytest

from mllm_nle import gym
from mllm_nle.core import ConfigError, load_config
from mllm_nle.experiment import notebook_config
from notebook_runs import run_notebook

ROOT = Path(__file__).resolve().parents[1]

SMOKE = dict(run_name="smoke", seeds=[0], sft_steps=2, sft_batch_size=4, budget=2500, budget_batches=2, logging_steps=1,
             eval_batch_size=16, n_boot=200,
             mcle=dict(n_train=6, n_test=4, max_new_tokens=12),
             dgpref=dict(n_sft=6, vqa_per_image=1, n_images=3, n_bench=3, n_samples=4, caption_max_new_tokens=24),
             hacl=dict(n_train=6, n_vqa=1, n_probe=4, n_bench=3, probe_every=1, probe_size=2, max_new_tokens=12, pope_modes=["random"]),
             mcmdpo=dict(n_train=8, n_test=4, max_new_tokens=12, batch_size=2))


def _papermill(tmp_path, params: dict, extra=()):
    return run_notebook("gym_report.ipynb", tmp_path, params, extra)


def test_gym_report_smoke(tmp_path):
    "Every row at one seed from one base, at one token budget, every model on the whole suite; the table, verdicts, figures."
    r = _papermill(tmp_path, SMOKE)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path/"outputs"/"gym"/"smoke"
    study = json.loads((out/"study.json").read_text())
    assert study["rows"] == list(gym.DEFAULT_ROWS) and study["seeds"] == [0]
    trained = set(study["runs"]) - {"base"}
    # DGPref trains only when the base's sampled captions give pairs: a 2-step base may give none, and then says so
    assert trained | set(study["skipped"]) == set(gym.DEFAULT_ROWS)
    assert all("no preference pairs" in why for why in study["skipped"].values()) and not set(study["skipped"]) - {"dgpref/dgpref", "dgpref/dgpref_released"}
    for name in trained:
        run, plan = study["runs"][name]["0"], study["plan"][name]
        assert run["steps"] == plan["steps"] >= 1 and run["tokens"] > 0, name
        ev = json.loads((out/name/"seed0"/"eval.json").read_text())
        assert set(gym.TABLE_METRICS) <= set(ev["summary"]), name      # None where undefined (no object mentioned: no CHAIR_i)
        if name not in gym.STEPS_OF: assert run["tokens"] < study["budget"] + 2 * plan["tokens_per_step"], name   # at most one step over
    # equal compute, not equal steps: eight sequences per MCM-DPO record, two per DPO record, one per SFT record
    steps = {n: study["plan"][n]["steps"] for n in ("mcmdpo/sft", "mcmdpo/dpo", "mcmdpo/mcm_dpo", "mcmdpo/dpo_released")}
    assert steps["mcmdpo/mcm_dpo"] <= steps["mcmdpo/dpo"] <= steps["mcmdpo/sft"] and steps["mcmdpo/dpo_released"] == max(1, round(steps["mcmdpo/mcm_dpo"] / 2))
    paired = json.loads((out/"paired.json").read_text())
    assert {(p["against"], p["model"]) for p in paired} >= {("hacl/sft", "hacl/hacl"), ("mcle/sft", "mcle/mcle"), ("mcmdpo/dpo", "mcmdpo/mcm_dpo")}
    rows = [json.loads(l) for l in (out/"mcmdpo/mcm_dpo/seed0/generations.jsonl").read_text().splitlines()]
    assert {r["suite"] for r in rows} == {"vqa", "caption", "pope", "alttext"}          # every model on every test
    nb = (tmp_path/"executed.ipynb").read_text()
    assert "| mcle/mcle_released |" in nb and "verdict" in nb and "steps set by" in nb
    for f in ("figures/metric_bars.png", "figures/loss_curves.png", "figures/tradeoff.png", "figures/hacl_retrieval.png",
              "figures/mcmdpo_margins.png", "metrics.json", "config.yaml", "plan.json", "dgpref/data_released/data_report.json"):
        assert (out/f).exists(), f


def test_the_cpu_tier_is_the_default():
    "`papermill nbs/gym_report.ipynb` with no parameters runs params/gym/cpu.yaml."
    assert load_config(gym.GymConfig, ROOT/"params"/"gym"/"cpu.yaml") == gym.GymConfig()


def test_parameters_are_strict():
    with pytest.raises(ConfigError, match="budgett"): notebook_config(gym.GymConfig, {"budgett": 3, "params_file": None})
    with pytest.raises(ConfigError, match="n_tset"): gym.GymConfig(mcle={"n_tset": 3})           # inside a recipe's dict too
    with pytest.raises(ConfigError, match="backbone"): gym.GymConfig(hacl={"backbone": "tiny:llava:s"})   # one backbone for all
    with pytest.raises(ConfigError, match="mcle/mlce"): gym.GymConfig(rows=["mcle/mlce"])
