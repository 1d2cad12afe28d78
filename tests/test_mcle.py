"MCLE end to end: the experiment notebook through papermill with smoke parameters."
import json, subprocess, sys
from pathlib import Path
import pytest, yaml
from notebook_runs import assert_figures_shown, papermill_env, run_notebook

ROOT = Path(__file__).resolve().parents[1]
SMOKE = dict(run_name="smoke", n_train=24, n_test=6, sft_steps=6, sft_batch_size=4, steps=3, batch_size=4,
             logging_steps=1, max_new_tokens=12, eval_batch_size=6, nle_metrics=["bleu", "rouge", "cider"],
             compare_variants=["official"], gallery_size=2)

def _run_papermill(tmp_path, params: dict, notebook: str, extra=()):
    return run_notebook(notebook, tmp_path, params, extra)

def _papermill(tmp_path, params: dict, notebook: str = "mcle_train.ipynb"):
    r = _run_papermill(tmp_path, params, notebook)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_figures_shown(tmp_path/"executed.ipynb")
    return tmp_path/"outputs"/"mcle"/params["run_name"]

def test_unknown_parameter_is_an_error_naming_it(tmp_path):
    "papermill -p stepz 3: the first cell fails with an error naming `stepz` (nothing trains)."
    r = _run_papermill(tmp_path, {"run_name": "typo"}, "mcle_train.ipynb", extra=["-p", "stepz", "3"])
    assert r.returncode != 0 and "stepz" in r.stderr and "unknown parameter" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/"outputs"/"mcle"/"typo"/"metrics.json").exists()

def test_console_script_trains_mcle_and_rejects_a_typo(tmp_path):
    "`mllm-nle train mcle -f params --steps 3` executes the notebook into its run folder; `--stepz` stops before anything runs."
    cli = Path(sys.executable).parent/"mllm-nle"
    assert cli.exists(), f"{cli}: the console script is not installed (settings.ini console_scripts; bash scripts/env.sh)"
    pf = tmp_path/"params.yaml"
    pf.write_text(yaml.safe_dump({**SMOKE, "steps": 1, "cache_dir": str(tmp_path/"cache"), "output_root": str(tmp_path/"outputs")}))
    bad = subprocess.run([str(cli), "train", "mcle", "-f", str(pf), "--stepz", "3"], env=papermill_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "no setting '--stepz'" in bad.stderr and not (tmp_path/"outputs").exists(), bad.stderr[-2000:]
    r = subprocess.run([str(cli), "train", "mcle", "-f", str(pf), "--steps", "3"], env=papermill_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path/"outputs"/"mcle"/SMOKE["run_name"]
    assert_figures_shown(out/"mcle_train.ipynb")
    _check_smoke_run(out)

def _check_smoke_run(out):
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["models"]) == {"baseline", "sft_continued", "mcle_multilevel", "mcle_official"}
    for name, r in m["models"].items():
        assert {"summary", "unfiltered", "filtered", "consistency_matrix", "consistency_judge", "n_unparseable"} <= set(r), name
        assert {"accuracy", "consistency", "explanation_truth", "BLEU-4", "CIDEr"} <= set(r["summary"]), name
        assert r["n"] == 6 and r["consistency_judge"].startswith("exact")
        assert r["unfiltered"]["unavailable"].get("METEOR") == "not requested"
        assert sum(t["n"] for t in r["accuracy_by_type"].values()) == 6
    assert set(m["train_levels"]) >= {"positive", "semantic", "image", "instance"}
    for f in ["config.yaml", "figures/loss_curves.png", "figures/metric_bars.png", "figures/gallery.png",
              "figures/consistency_mcle_multilevel.png", "figures/accuracy_by_type.png", "generations_mcle_multilevel.jsonl", "mcle_multilevel/adapter"]:
        assert (out/f).exists(), f
    rows = [json.loads(l) for l in (out/"generations_baseline.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"question", "output", "correct", "supports_answer"} <= set(rows[0])
    assert yaml.safe_load((out/"config.yaml").read_text())["steps"] == 3

def test_mcle_official_demo_files(tmp_path):
    "The official MCLE demo files (one real image) through the same notebook."
    demo = ROOT.parent/"shared"/"data"/"mcle-demo"
    if not demo.exists(): pytest.skip(f"{demo} not present")
    params = yaml.safe_load((ROOT/"params"/"mcle_official_demo.yaml").read_text())
    params.update(steps=2, max_new_tokens=8, nle_metrics=["bleu"], train_file=str(demo/"train.json"),
                  test_file=str(demo/"test.json"), image_root=str(demo))
    out = _papermill(tmp_path, params)
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["models"]) == {"baseline", "sft_continued", "mcle_official"}   # the start model (sft_steps 0: the backbone itself)
    assert m["models"]["mcle_official"]["consistency_judge"].endswith("(proxy)")
    assert m["n_train"] == 3

def test_mcle_study_smoke(tmp_path):
    "The variants x seeds study notebook: one shared baseline, every (model, seed) summarised."
    params = {**SMOKE, "run_name": "study_smoke", "seeds": [0, 1], "variant": "multilevel", "compare_variants": ["multilevel+features"]}
    out = _papermill(tmp_path, params, "mcle_study.ipynb")
    s = json.loads((out/"study.json").read_text())["summary"]
    assert set(s) == {"baseline", "sft_continued", "mcle_multilevel", "mcle_multilevel_features"}
    for name in ("sft_continued", "mcle_multilevel", "mcle_multilevel_features"):
        acc = s[name]["accuracy"]
        assert len(acc["values"]) == 2 and abs(acc["mean"] - sum(acc["values"]) / 2) < 1e-9
        assert any(k.startswith("accuracy[") for k in s[name])
    assert len(s["baseline"]["accuracy"]["values"]) == 1
    paired = json.loads((out/"paired.json").read_text())
    assert {p["key"] for p in paired} == {"supports_answer", "correct", "explanation_true"}
    assert {p["model"] for p in paired} == {"mcle_multilevel", "mcle_multilevel_features"}
    assert json.loads((out/"unpaired.json").read_text()) == {"mcle_multilevel": 0, "mcle_multilevel_features": 0}
    assert all(p["n_items"] == 6 and p["n_seeds"] == 2 and p["ci95"][0] <= p["delta"] <= p["ci95"][1] for p in paired)
    assert (out/"figures"/"study_bars.png").exists() and (out/"seed1"/"mcle_multilevel"/"generations.jsonl").exists()
