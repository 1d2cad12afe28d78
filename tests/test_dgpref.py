"""DGPref end to end: the data notebook killed mid-run and resumed without redoing finished ids, the train notebook
on its pairs (papermill, smoke params), and the bad inputs the issue names."""
import json, os, signal, subprocess, time
from pathlib import Path

import pytest, yaml

from mllm_nle.core import ConfigError, DataFileError, load_config, load_json
from mllm_nle.recipes import dgpref, dgpref_decompose as D, dgpref_pipeline as P
from notebook_runs import assert_figures_shown, papermill_cmd, papermill_env

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 10
SMOKE = dict(run_name="smoke", n_sft=24, sft_steps=100, sft_batch_size=8, sft_lr=3e-3, vqa_per_image=2, n_images=N_IMAGES, n_samples=4,
             sample_batch_size=4, caption_max_new_tokens=40, n_bench=4, noise_levels=[0.3], steps=2, batch_size=2, logging_steps=1,
             eval_batch_size=16, seeds=[0], replay_published=False)


def _cmd(tmp_path, params: dict, notebook: str, out_nb: str):
    pf = tmp_path/f"{out_nb}.yaml"; pf.write_text(yaml.safe_dump(params))
    return papermill_cmd(notebook, tmp_path/f"{out_nb}.ipynb", pf)

def _env(): return papermill_env(OMP_NUM_THREADS="1")

def _descendants(pid: int) -> list[int]:
    "Every process below `pid` (from /proc), deepest first: papermill's kernel runs in a session of its own."
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try: ppid = int((p/"stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError): continue
            if ppid == pid: kids.append(int(p.name))
    return [d for k in kids for d in _descendants(k)] + kids

def _lines(path: Path) -> list[dict]:
    "The complete JSON lines of a file a killed writer may have left torn."
    out = []
    for l in path.read_bytes().split(b"\n"):
        try: out.append(json.loads(l))
        except json.JSONDecodeError: pass
    return out


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    "The data notebook, SIGKILLed (with its kernel) once two images are captioned, then re-run to the end."
    tmp = tmp_path_factory.mktemp("dgpref")
    params = {**SMOKE, "cache_dir": str(tmp/"cache"), "output_root": str(tmp/"outputs")}
    out = tmp/"outputs"/"dgpref"/"smoke"
    caps = out/"pipeline"/"captions.jsonl"
    proc = subprocess.Popen(_cmd(tmp, params, "dgpref_data.ipynb", "killed"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (caps.exists() and len(_lines(caps)) >= 2): time.sleep(0.05)
    assert proc.poll() is None, "the data notebook ended before it could be killed: " + proc.stderr.read().decode()[-3000:]
    for pid in [*_descendants(proc.pid), proc.pid]:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    proc.wait(timeout=60)
    killed = {r["id"]: r["captions"] for r in _lines(caps)}
    r = subprocess.run(_cmd(tmp, params, "dgpref_data.ipynb", "resumed"), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return dict(tmp=tmp, out=out, params=params, killed=killed)


def test_killed_data_notebook_resumes_without_redoing_ids(data_run):
    out, killed = data_run["out"], data_run["killed"]
    assert 0 < len(killed) < N_IMAGES, f"killed after {len(killed)} of {N_IMAGES} images"
    rep = load_json(out/"data_report.json")
    final = P.JsonlStore(out/"pipeline"/"captions.jsonl")
    assert len(final) == N_IMAGES and len((out/"pipeline"/"captions.jsonl").read_text().splitlines()) == N_IMAGES
    s = rep["steps"]["sample"]
    assert s["done_before"] == len(killed) and set(s["ids"]) == set(final.records) - set(killed)   # only the missing ids ran
    assert all(final[i]["captions"] == c for i, c in killed.items())                                 # finished ids untouched
    for name in ("claims", "verdicts_oracle", "verdicts_noisy0.3", "verdicts_vqa", "pairs_oracle"):
        assert len(P.JsonlStore(out/"pipeline"/f"{name}.jsonl")) == N_IMAGES, name
    ref = load_json(out/"pipeline"/"reference_logps.json")["logps"]
    for name in ("oracle", "noisy0.3", "vqa", "oracle_edit"):
        recs = load_json(out/"pipeline"/f"preferences_{name}.json")
        assert {r["id"] for r in recs} <= set(ref), name
    assert {q["expert"] for q in rep["quality"]} >= {"oracle", "noisy0.3", "vqa", "exact (sentence-level)"}
    assert set(rep["decomposition"]) >= {"failed_answers", "dropped_tuples", "unparsed_sentences", "no_claim_captions"}


def test_train_notebook_smoke(data_run):
    tmp, out = data_run["tmp"], data_run["out"]
    r = subprocess.run(_cmd(tmp, data_run["params"], "dgpref_train.ipynb", "train"), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_figures_shown(tmp/"train.ipynb")
    m = load_json(out/"metrics.json")
    fs = m["first_step"]
    assert abs(fs["cached"] - fs["live"]) < 1e-4 and abs(fs["cached_perturbed"] - fs["live_perturbed"]) < 1e-4
    assert abs(fs["official"] - fs["official_predicted"]) < 1e-3
    trained = set(m["arms"]) - {"baseline"}
    assert {"sft_continued", "oracle_edit"} <= trained and trained | set(m["skipped"]) >= {"dgpref_oracle", "dgpref_official", "oracle_edit"}
    for name, s in m["arms"].items():
        for k in ("CHAIR_i", "pope_f1", "claim_hallucination", "amber_disc_f1"):
            assert k in s or k == "claim_hallucination", (name, k)   # no parsed sentence: claim_hallucination is None
    study = load_json(out/"study.json")
    assert study["seeds"] == [0] and all("0" in v for k, v in study["items"].items() if k != "baseline")
    for f in ("figures/training_curves.png", "figures/pair_quality.png", "figures/arm_bars.png", "config.yaml", "paired.json"):
        assert (out/f).exists(), f


# ---- bad inputs ----------------------------------------------------------------------------------

def test_params_are_strict(tmp_path):
    p = tmp_path/"dgpref_typo.yaml"; p.write_text(yaml.safe_dump({"run_name": "x", "n_imagez": 3}))
    with pytest.raises(ConfigError, match="n_imagez"): load_config(dgpref.DGPrefConfig, p)
    from mllm_nle.experiment import notebook_config
    with pytest.raises(ConfigError, match="stepz"): notebook_config(dgpref.DGPrefConfig, {"stepz": 3, "params_file": None})


def test_caption_without_claims_is_counted_and_scores_zero(tmp_path):
    ds = D.decompose_captions(["Zorp blip.", ""], D.WorldDecomposer())
    assert [D.n_claims(d) for d in ds] == [0, 0] and ds[0]["unparsed"] == 1
    prog = D.gen_program(ds[0])
    assert not any(prog.values()) and dgpref.caption_score({a: [] for a in prog}) == 0.0
    claims = P.JsonlStore(tmp_path/"claims.jsonl"); claims.append([dict(id="a", decompositions=ds)])
    assert P.decomposition_counts(claims)["no_claim_captions"] == 2


class _GarbageDecomposer:
    "A decomposer whose answers are not in the release's format (what a small LLM produces)."
    name = "garbage"
    def raw(self, captions):
        return [dict(entity="Sure: the picture is nice", count="[COUNT]: (two)", attribute="[ATTR]: (red, red)", relation="zzz")
                for _ in captions]

def test_unparseable_decomposer_output_is_counted_not_fatal():
    d = D.decompose_caption('A sign reads "OPEN".', _GarbageDecomposer())
    assert d["failed"] == ["entity", "relation"] and d["dropped"] == 2   # no bracket: failed; a 1-ary count, attr == obj: dropped
    assert d["claims"]["text"] == ["OPEN"] and all(not d["claims"][a] for a in D.DECOMPOSED)


def test_pairs_file_with_an_id_missing_from_the_image_folder(tmp_path):
    (tmp_path/"images").mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path/"images"/"img-1.png")
    caps = P.JsonlStore(tmp_path/"captions.jsonl")
    caps.append([dict(id=i, prompts=["p", "p"], captions=["a.", "b."]) for i in ("img-1", "img-2")])
    pairs = P.JsonlStore(tmp_path/"pairs.jsonl")
    pairs.append([dict(id="img-1", scores=[0, -1], pairs=[[0, 1]]), dict(id="img-2", scores=[0, -1], pairs=[[0, 1]])])
    with pytest.raises(DataFileError, match=r"pairs.jsonl: record 1: field 'id': no image for id 'img-2'"):
        P.preference_records(pairs, caps, tmp_path, "oracle")
    ok = P.JsonlStore(tmp_path/"ok_pairs.jsonl"); ok.append([dict(id="img-1", scores=[0, -1], pairs=[[0, 1]])])
    [rec] = P.preference_records(ok, caps, tmp_path, "oracle")
    assert (rec["id"], rec["chosen"], rec["rejected"]) == ("img-1:0>1", "a.", "b.") and rec["image"].endswith("img-1.png")


def test_a_corrupt_line_in_a_step_file_names_the_file_and_line(tmp_path):
    f = tmp_path/"claims.jsonl"; f.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(DataFileError, match=r"claims.jsonl: line 2"): P.JsonlStore(f)
    f.write_text('{"id": "a"}\n{"no_id": 1}\n')
    with pytest.raises(DataFileError, match=r"line 2: field 'id'"): P.JsonlStore(f)


def test_preferences_file_with_a_bad_record_names_file_record_field(tmp_path):
    from mllm_nle import data
    f = tmp_path/"preferences_oracle.json"; f.write_text(json.dumps([{"id": "x", "prompt": "p", "chosen": "a", "image": None}]))
    with pytest.raises(DataFileError, match=r"preferences_oracle.json: record 0: field 'rejected'"): data.load_preferences(f)


def test_missing_model_folders_say_what_to_download(tmp_path):
    from mllm_nle.recipes import dgpref_experts as E
    with pytest.raises(FileNotFoundError, match="Meta-Llama-3-8B-Instruct"): D.LLMDecomposer(tmp_path/"llama")
    with pytest.raises(FileNotFoundError, match="owlvit-large-patch14"): E.OWLViTExpert(tmp_path/"owl")
    with pytest.raises((RuntimeError, FileNotFoundError), match="easyocr|craft_mlt_25k"): E.EasyOCRExpert(tmp_path/"ocr")
    with pytest.raises(ConfigError, match="decomposer_model"): dgpref.DGPrefConfig(decomposer="llm")


def test_real_data_path_on_tiny_builds(tmp_path):
    """The code path of params/dgpref_llava15.yaml on tiny random builds saved with save_pretrained: a folder of images as
    the pool (no scene graphs), OWL-ViT + BLIP-2 + CoLA and the VQA expert, DPO on the real experts' pairs, and evaluation
    from benchmark files (ObjHal JSON Lines + ground-truth objects, POPE, an AMBER folder). The untrained policy writes
    noise, so its captions are written beforehand into captions.jsonl (the sampling step then skips those ids), as world
    captions the rule-based decomposer reads; the in-context LLM decomposer is tested in nbs/09a_dgpref_decompose.ipynb."""
    import shutil
    from mllm_nle import world_data
    from mllm_nle.recipes import dgpref_experts as E, dgpref_study as S
    world_data.write_benchmarks(tmp_path/"bench", n=3, seed=0, image_size=112)
    pool = tmp_path/"vg"; pool.mkdir()
    for p in sorted((tmp_path/"bench"/"images").glob("*.png")): shutil.copy(p, pool/(p.stem.replace("bench0-", "") + ".jpg"))
    objhal = [json.loads(l) for l in (tmp_path/"bench"/"objhal.jsonl").read_text().splitlines()]
    (tmp_path/"objhal.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("gt_objects", "scene_id")} |
                                                            {"image": str(tmp_path/"bench"/r["image"])}) + "\n" for r in objhal))
    (tmp_path/"gt.json").write_text(json.dumps({str(r["image_id"]): r["gt_objects"] for r in objhal}))
    from mllm_nle import world
    scenes = world_data.load_scenes(tmp_path/"bench"/"scenes.json")
    P.JsonlStore(tmp_path/"run"/"pipeline"/"captions.jsonl").append(
        [dict(id=sid.replace("bench0-", ""), image=str(pool/(sid.replace("bench0-", "") + ".jpg")), scene_id=None, prompts=["Describe."] * 2,
              captions=["Nothing to see.", " ".join(world.describe(sc)[:2]) + " There is a red star. There are seven stars."])
         for sid, sc in scenes.items()])
    cfg = dgpref.DGPrefConfig(backbone="tiny:llava:xs", sft_steps=0, pool_images=str(pool), n_images=3, n_samples=2, sample_batch_size=4,
                              caption_max_new_tokens=16, decomposer="world",
                              owlvit_model=str(E.tiny_owlvit(tmp_path/"owl")), owlvit_threshold=0.0, blip2_model=str(E.tiny_blip2(tmp_path/"blip2")),
                              cola_model=str(E.tiny_cola(tmp_path/"cola")), cola_threshold=0.0, official_expert="real",
                              arms=["dgpref_real", "dgpref_official"], steps=1, batch_size=2, seeds=[0], cache_dir=str(tmp_path/"cache"),
                              objhal_file=str(tmp_path/"objhal.jsonl"), objhal_gt_file=str(tmp_path/"gt.json"),
                              pope_dir=str(tmp_path/"bench"/"pope"), pope_image_root=str(tmp_path/"bench"),
                              amber_dir=str(tmp_path/"bench"/"amber"), amber_image_root=str(tmp_path/"bench"), amber=False, eval_batch_size=16)
    assert cfg.expert_names == ["vqa", "real"]
    rep = P.run_data(cfg, tmp_path/"run", progress=False)
    assert rep["images"] == 3 and set(rep["pairs"]) == {"vqa", "real"} and "decomposition_recall" not in rep
    assert rep["steps"]["sample"]["sampled"] == 0 and rep["decomposition"]["claims"] > 0
    v = rep["verdicts"]["real"]
    assert sum(v["object"].values()) > 0 and all(v["text"][k] == 0 for k in ("1", "-1", "-2")) if "text" in v else True  # no OCR: dropped
    assert sum(v["attribute"][k] for k in ("1", "-1")) > 0                                     # BLIP-2 answered (CoLA threshold 0)
    assert rep["pairs"]["real"] > 0 and rep["decomposition"]["no_claim_captions"] == 3     # "Nothing to see.": S = 0, counted
    res = S.run_dgpref(cfg, tmp_path/"run")
    assert set(res["study"]["summary"]) == {"baseline", "dgpref_real", "dgpref_official"}   # the start model is always evaluated
    bench = S.load_bench(cfg)
    assert len(bench.objhal) == 3 and set(bench.pope) == set(S.POPE_SPLITS) and not bench.scenes
    ev = S.evaluate(cfg, bench, P.load_base(cfg, P.baseline(cfg)))
    assert ev["summary"]["claim_hallucination"] is None and ev["summary"]["pope_f1"] is not None and len(ev["rows"]) == 3
