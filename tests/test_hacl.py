"""HACL end to end: the experiment notebook through papermill with smoke parameters, the fixes of the
release's bugs (image index -1, two captions of one image, mixed batches, gathering across processes),
and bad input."""
import json, math, os, subprocess, sys
from pathlib import Path

import pytest
import torch
import yaml

from mllm_nle import models
from mllm_nle.core import DataFileError, save_json
from mllm_nle.losses import hacl_contrastive_loss
from mllm_nle.recipes import hacl, hacl_data
from mllm_nle.train import get_method
from notebook_runs import assert_figures_shown, run_notebook

ROOT = Path(__file__).resolve().parents[1]
SMOKE = dict(run_name="smoke", n_train=24, n_vqa=1, n_probe=6, n_bench=4, sft_steps=4, sft_batch_size=4, steps=3, batch_size=4,
             logging_steps=1, probe_every=2, probe_size=4, max_new_tokens=12, eval_batch_size=16, pope_modes=["random", "adversarial"],
             seeds=[0], stages=["pretrain", "sft"], pretrain_steps=2, queue_size=16, hallucinated_t2i=True)

torch.set_num_threads(1)


def _run_papermill(tmp_path, params: dict, extra=()):
    return run_notebook("hacl_train.ipynb", tmp_path, params, extra)


def test_hacl_notebook_smoke(tmp_path):
    r = _run_papermill(tmp_path, SMOKE)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_figures_shown(tmp_path/"executed.ipynb")
    out = tmp_path/"outputs"/"hacl"/"smoke"
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["models"]) == {"baseline", "sft", "hacl"} and m["negatives"]["n"] > 0
    bases = m["bases"]   # each arm starts from its own pretraining (projector: LM loss for sft, contrastive for hacl)
    assert len({bases["baseline"], bases["sft"], bases["hacl"]}) == 3 and "hacl-pretrain" in bases["hacl"] and "hacl-lm" in bases["sft"]
    for name, by_seed in m["models"].items():
        s = next(iter(by_seed.values()))["summary"]
        assert {"CHAIR_s", "pope_f1", "pope_yes_ratio", "amber_score", "r1_raw", "r1_lm"} <= set(s), name
        assert (s["r1_heads"] is None) == (name != "hacl"), (name, s["r1_heads"])
    study = json.loads((out/"study.json").read_text())
    assert study["seeds"] == [0] and set(study["summary"]["hacl"]) >= {"pope_f1", "r1_raw"}
    logs = json.loads((out/"log_history.json").read_text())
    h = [e for e in logs["hacl"]["0"] if "loss" in e]
    assert len(h) == 3 and all({"loss/lm", "loss/ita", "itc/temperature"} <= set(e) for e in h)
    assert [e["probe/step"] for e in logs["hacl"]["0"] if "probe/step" in e] == [0.0, 2.0]
    for f in ["config.yaml", "figures/training_curves.png", "figures/retrieval_over_steps.png", "figures/hallucination_bars.png",
              "figures/score_bars.png", "seed0/hacl/adapter/method_modules.safetensors", "seed0/sft/generations.jsonl"]:
        assert (out/f).exists(), f
    assert yaml.safe_load((out/"config.yaml").read_text())["steps"] == 3
    paired = json.loads((out/"paired.json").read_text())
    assert [p["key"] for p in paired] == ["any_false", "chair_hallucinated"] and all(p["n_items"] == 4 for p in paired)


def test_unknown_parameter_is_an_error_naming_it():
    "The notebook's first cell (`notebook_config`) refuses `-p ita_wieght 2`, naming it (the papermill path: tests/test_mcle.py)."
    from mllm_nle.core import ConfigError
    from mllm_nle.experiment import notebook_config
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['ita_wieght'\]"):
        notebook_config(hacl.HACLConfig, {"params_file": None, "run_name": "typo", "ita_wieght": 2.0}, None)
    with pytest.raises(ConfigError, match="hallucinator"):
        notebook_config(hacl.HACLConfig, {"hallucinator": "gpt"}, None)


# ---------------------------------------------------------------- the release's bugs, fixed
@pytest.fixture(scope="module")
def llava():
    return models.tiny_backbone("llava")


def _recs(tmp_path):
    from mllm_nle.train import toy_images
    (s0, p0), (s1, p1) = toy_images(2, tmp_path)
    return [dict(id="q", image=None, prompt="What is 2 + 2?", response="Four."),                        # no image: image_index -1
            dict(id="a", image=p0, prompt="Describe.", response="A red circle.", caption="A red circle.", hallucinated=["A blue circle."]),
            dict(id="b", image=p0, prompt="Describe.", response="A round shape.", caption="A round shape.", hallucinated=["A square shape."]),
            dict(id="c", image=p1, prompt="Describe.", response="A star.", caption="A star.", hallucinated=["A ring."])]


def test_rows_without_image_and_shared_images(tmp_path, llava):
    "A row without an image stays out of L_ita (the release gave it the last image); two captions of one image are not negatives."
    recs = _recs(tmp_path)
    b = hacl.HACLCollator(llava.processor)(recs)
    assert b["lm"]["image_index"].tolist() == [-1, 0, 0, 1] and b["contrastive_rows"].tolist() == [1, 2, 3]
    m = get_method("hacl"); m.setup(m, llava.model)
    loss, met = m(llava.model, b)
    assert torch.isfinite(loss) and met["itc/captions"] == 3 and met["itc/masked"] == 2, met
    # the release's indexing of the same batch: row 0 (index -1) silently takes the last image
    idx = b["lm"]["image_index"]
    assert idx[0] == -1 and torch.equal(torch.arange(2)[idx][0], torch.tensor(1))


def test_mixed_batch_first_record_sft(tmp_path, llava):
    "The release looked at instances[0] only; a batch whose first record is plain SFT keeps its contrastive term."
    recs = _recs(tmp_path)
    b = hacl.HACLCollator(llava.processor)([recs[0], recs[3]])
    m = get_method("hacl"); m.setup(m, llava.model)
    _, met = m(llava.model, b)
    assert met["itc/captions"] == 1 and "sim/hallucinated" in met
    _, met = m(llava.model, hacl.HACLCollator(llava.processor)([recs[0]]))   # SFT only: the term is 0, no error
    assert met["itc/captions"] == 0 and met["loss/ita"] == 0


def test_hallucinated_negatives_reach_the_loss():
    "The i2t gradient flows into each hallucinated caption, and sim/hallucinated is its similarity to its own image."
    torch.manual_seed(0)
    v, t = torch.randn(3, 8), torch.randn(3, 8)
    h = torch.randn(2, 8, requires_grad=True)
    loss, met = hacl.ita_loss(v, t, torch.arange(3), 0.1, h, torch.tensor([0, 2]))
    loss.backward()
    assert h.grad.abs().sum(-1).min() > 0
    own = torch.nn.functional.cosine_similarity(v[[0, 2]], h.detach(), -1).mean()
    torch.testing.assert_close(met["sim/hallucinated"], own)


def test_clean_batch_equals_the_release_loss():
    torch.manual_seed(1)
    v, t, h = torch.randn(5, 6), torch.randn(5, 6), torch.randn(4, 6)
    for t2i in (False, True):
        torch.testing.assert_close(hacl.ita_loss(v, t, torch.arange(5), 0.07, h, torch.tensor([0, 1, 3, 3]), hallucinated_t2i=t2i)[0],
                                   hacl_contrastive_loss(v, t, 0.07, h, t2i)[0])


GATHER_SCRIPT = """
import sys, torch, torch.distributed as dist
from mllm_nle.recipes.hacl import ita_loss
dist.init_process_group("gloo"); rank, world = dist.get_rank(), dist.get_world_size()
def shard(r):   # rank r's batch: 3 distinct images (image 12 is on both ranks), 4 captions (two of image 0), 2 hallucinated
    g = torch.Generator().manual_seed(100 + r)
    keys = torch.tensor([[10, 11, 12], [12, 13, 14]][r])
    return (torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g), torch.tensor([0, 0, 1, 2]), torch.randn(2, 8, generator=g),
            torch.tensor([1, 3]), keys)
v, t, ci, h, hi, k = shard(rank)
loss, m = ita_loss(v, t, ci, 0.1, h, hi, k, gather=True)
# the release: gathered keys, but targets 0..B-1 on every rank (rows = captions, each with its image in its slot)
V, T = [torch.zeros(4, 8) for _ in range(world)], [torch.zeros_like(t) for _ in range(world)]
dist.all_gather(V, v[ci].contiguous()); dist.all_gather(T, t)
logits = torch.nn.functional.normalize(v[ci], dim=-1) @ torch.nn.functional.normalize(torch.cat(T), dim=-1).t() / 0.1
release = torch.nn.functional.cross_entropy(logits, torch.arange(4)).reshape(1)
out = [torch.zeros(2) for _ in range(world)]; dist.all_gather(out, torch.stack([loss.detach(), release[0]]))
if rank == 0:
    parts = [shard(r) for r in range(world)]
    full = ita_loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] + 3 * r for r, p in enumerate(parts)]),
                    0.1, torch.cat([p[3] for p in parts]), torch.cat([p[4] + 4 * r for r, p in enumerate(parts)]), torch.cat([p[5] for p in parts]))[0]
    print("RESULT", *[float(o[0]) for o in out], float(full), *[float(o[1]) for o in out], float(m["itc/masked"]))
# the same through the engine: DDP, gathered negatives and a queue; every rank must end with the same adapter, heads and queue
from mllm_nle import models, train as T
from mllm_nle.recipes import hacl
recs = hacl.toy_records(8, sys.argv[1])
args = T.make_training_args(sys.argv[2], max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, report_to="none",
                            disable_tqdm=True, save_strategy="no", logging_steps=1)
tr = T.train("hacl", models.tiny_backbone("qwen2_5_vl", "xs"), recs, args, lora=dict(r=4), method_kw=dict(gather=True, queue_size=8))
head = tr.method.modules["hacl_head"]
s = torch.stack([p.detach().double().sum() for n, p in tr.model.named_parameters() if "lora_B" in n or "method_modules" in n]).sum()
s = torch.stack([s, head.queue_text.double().sum(), head.queue_fill.double().sum()])
g = [torch.zeros_like(s) for _ in range(world)]; dist.all_gather(g, s)
if rank == 0: print("TRAINED", *[x.tolist() for x in g][0], *[x.tolist() for x in g][1], "captions" if "itc/captions" in tr.state.log_history[0] else "none")
"""


def test_gather_across_two_processes(tmp_path):
    """torchrun, 2 CPU processes: the mean of the gathered per-rank losses is the loss of the whole batch in one process
    (the release's targets are wrong on rank 1); then 2 DDP steps with gathering and a queue keep every rank identical."""
    (tmp_path/"g.py").write_text(GATHER_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path/"g.py"), str(tmp_path), str(tmp_path/"out")],
                       capture_output=True, text=True, env=env, timeout=300)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line is not None, r.stderr[-3000:]
    l0, l1, full, rel0, rel1, masked = map(float, line.split()[1:])
    assert math.isclose((l0 + l1) / 2, full, rel_tol=1e-5), line
    assert masked >= 2            # two captions of image 0 on rank 0, and image 12 shared with the other rank
    # the release's targets: right on rank 0's slot layout only; on rank 1 every 'positive' is rank 0's caption
    assert rel1 > l1 + 1.0, line
    trained = next((l for l in r.stdout.splitlines() if l.startswith("TRAINED")), None)
    assert trained is not None, r.stderr[-3000:]
    *v, logged = trained.split()[1:]
    a, b = [float(x) for x in v[:3]], [float(x) for x in v[3:]]
    assert a == b and a[0] != 0.0 and a[2] == 8 * 2 and logged == "captions", trained   # queue: 8 texts + 8 images, full, same everywhere


# ---------------------------------------------------------------- bad input
def test_bad_records(tmp_path):
    from mllm_nle.data import load_hacl
    from mllm_nle.train import toy_images
    (_, p0), = toy_images(1, tmp_path)
    f = tmp_path/"h.json"
    save_json(f, [{"id": "a", "image": p0, "caption": "A red circle.", "hallucinated": ["A red circle.", "A blue circle."]},
                  {"id": "b", "image": p0, "caption": "A red circle."}])
    recs, rep = load_hacl(f)
    assert [r.get("hallucinated") for r in recs] == [["A blue circle."], None]
    assert rep.dropped == {"hallucinated caption: same text as the caption": 1}
    save_json(f, [{"id": "a", "image": p0, "caption": "", "hallucinated": ["x"]}])
    with pytest.raises(DataFileError, match=r"h\.json: record 0: field 'caption': empty text"):
        load_hacl(f)


def test_rules_drop_and_count_same_text():
    "A swap that leaves the text unchanged (here a size whose 'opposite' is itself) is dropped and counted, never kept."
    g = hacl_data.RuleHallucinator(hacl_data.Vocabulary("t", {}, sizes={"tall": "tall"}), kinds=["attribute"])
    assert g(["A tall tower."], n=1) == [[]] and g.report["same text"] > 0
