"""The real-shape tier: each real-size params file has a cut-down twin in params/realshape/ that changes only paths, sizes
and steps, and runs its papermill notebook end to end on real-shaped checkpoints (realshape:*) with the shared data and
small stand-ins in the real file formats (params/realshape/standins). The runs go two at a time (one per core).
Needs ../shared/data (its tokenizers and samples); skips, naming it, without it."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from mllm_nle import realshape
from mllm_nle.core import shared_data
import subprocess

from notebook_runs import ROOT, papermill_cmd, papermill_env

SHARED = shared_data()
pytestmark = pytest.mark.skipif(not ((realshape.tokenizers_dir()/"llama2"/"tokenizer.json").exists() and (SHARED/"mcm-dpo-samples").exists()),
                                reason=f"the real-shape tier needs the shared data (tokenizers, samples) in {SHARED}")

TWINS = {   # twin -> (the real-size params file, the notebooks it runs, in order)
    "mcle_vqax": ("mcle_vqax", ["mcle_train"]),
    "dgpref_llava15": ("dgpref_llava15", ["dgpref_data", "dgpref_train"]),
    "hacl_llava15": ("hacl_llava15", ["hacl_train"]),
    "hacl_qwen25vl": ("hacl_qwen25vl", ["hacl_train"]),
    "mcmdpo_twitter": ("mcmdpo_twitter", ["mcmdpo_train"]),
    "mcmdpo_pinterest": ("mcmdpo_pinterest", ["mcmdpo_train"]),
}
PATHS = {"run_name", "backbone", "train_file", "test_file", "image_root", "test_image_root", "probe_file", "bench_dir",
         "bench_image_root", "pool_images", "decomposer_model", "owlvit_model", "blip2_model", "cola_model", "easyocr_dir",
         "objhal_file", "objhal_gt_file", "pope_dir", "pope_image_root", "amber_dir", "amber_image_root"}
SIZES = {"n_images", "n_samples", "max_new_tokens", "caption_max_new_tokens", "decomposer_max_new_tokens", "sample_batch_size",
         "eval_batch_size", "batch_size", "sft_batch_size", "grad_accum", "max_test", "max_image_tokens", "probe_size", "first_step_pairs"}
STEPS = {"steps", "epochs", "sft_steps", "pretrain_steps", "logging_steps", "probe_every", "save_steps"}


def _params(name: str, twin: bool) -> dict:
    return yaml.safe_load((ROOT/"params"/("realshape/" if twin else "")/f"{name}.yaml").read_text())


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_twin_changes_only_paths_sizes_and_steps(twin):
    real, mine = _params(TWINS[twin][0], False), _params(twin, True)
    diff = {k for k in set(real) | set(mine) if real.get(k) != mine.get(k)}
    assert diff <= PATHS | SIZES | STEPS, sorted(diff - PATHS - SIZES - STEPS)


def _run(twin: str, root: Path) -> dict:
    "Run the twin's notebooks in order, sharing one cache and output folder (DGPref's train notebook reads the data run's pairs)."
    d = root/twin; d.mkdir(parents=True)
    params = _params(twin, True)
    pf = d/"params.yaml"; pf.write_text(yaml.safe_dump({**params, "cache_dir": str(d/"cache"), "output_root": str(d/"outputs")}))
    procs = []
    for nb in TWINS[twin][1]:
        p = subprocess.run(papermill_cmd(f"{nb}.ipynb", d/f"{nb}.ipynb", pf), env=papermill_env(), capture_output=True, text=True, timeout=900)
        procs.append((nb, p))
        if p.returncode: break
    return dict(dir=d, procs=procs, params=params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("realshape")
    with ThreadPoolExecutor(max_workers=2) as ex:   # two papermill kernels at a time: one per core
        futs = {t: ex.submit(_run, t, root) for t in sorted(TWINS, key=lambda t: t != "dgpref_llava15")}   # the longest first
        return {t: f.result() for t, f in futs.items()}


def _run_folder(r: dict, experiment: str) -> Path:
    "The run folder: <output_root>/<experiment>/<run_name>/."
    return Path(r["dir"])/"outputs"/experiment/r["params"]["run_name"]


def _executed_text(d: Path, nb: str) -> str:
    cells = json.loads((d/f"{nb}.ipynb").read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream")


EXPERIMENT = {"mcle_vqax": "mcle", "dgpref_llava15": "dgpref", "hacl_llava15": "hacl", "hacl_qwen25vl": "hacl",
              "mcmdpo_twitter": "mcmdpo", "mcmdpo_pinterest": "mcmdpo"}


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_twin_runs_end_to_end_quietly_and_reports_the_start_model(runs, twin):
    r = runs[twin]
    for nb, p in r["procs"]:
        assert p.returncode == 0, f"{twin} / {nb} failed:\n{p.stderr[-3000:]}"
        assert "Passed unknown parameter" not in p.stderr, f"{twin} / {nb}: papermill warned about valid keys"
        text = _executed_text(r["dir"], nb)
        assert "gradient_checkpointing` is deprecated" not in text and "is_gradient_checkpointing" not in text, f"{twin} / {nb}"
    assert [nb for nb, _ in r["procs"]] == TWINS[twin][1]
    out = _run_folder(r, EXPERIMENT[twin])
    m = json.loads((out/"metrics.json").read_text())
    rows = m["models"] if "models" in m and twin.startswith(("mcle", "mcmdpo")) else m.get("arms") or m.get("summary")
    assert "baseline" in rows, f"{twin}: no start-model row in {sorted(rows)}"
    assert m["start_model"]["row"] == "baseline" and m["start_model"]["sft_steps"] == r["params"]["sft_steps"]
    assert m["decoding"] and (out/"preflight.json").exists() or twin.startswith("dgpref")
    if twin == "mcle_vqax":
        assert m["notes"] and "no record has a `level` field" in m["notes"][0]
        logs = {a: json.loads((out/a/"train_log.json").read_text())["steps"] for a in ("sft_continued", "mcle_multilevel")}
        assert len(set(logs.values())) == 1 and m["arm_steps"]["sft_continued"] == m["arm_steps"]["mcle_multilevel"]
        assert m["decoding"]["repetition_penalty"] == 1.0 and m["decoding"]["do_sample"] is False
    if twin.startswith("hacl_qwen"):
        pre = json.loads((out/"preflight.json").read_text())
        assert pre["max"] <= 256 and pre["max_image_tokens"] == 256
    if twin.startswith("mcmdpo"):
        assert json.loads((out/"preflight.json").read_text())["min"] == 576   # LLaVA-1.5: 576 tokens per image
    if twin == "dgpref_llava15":
        rep = json.loads((out/"data_report.json").read_text())
        assert rep["decomposition"]["captions"] == r["params"]["n_images"] * r["params"]["n_samples"]
        assert rep["decoding"]["sample"]["temperature"] == 0.7 and rep["decoding"]["sample"]["top_k"] == 50
        assert set(m["arms"]) >= {"baseline"} and m["start_model"]["kind"] == "the backbone itself (sft_steps: 0)"
