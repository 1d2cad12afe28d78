"""MCM-DPO end to end: the experiment notebook through papermill (smoke params, and the released Twitter samples in
their own format), the stored reference agreeing with what training sees, one encoding per distinct image,
the paradigms' reference rule, and bad input."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from mllm_nle import data as D, models
from mllm_nle.core import ConfigError, DataFileError, shared_data
from mllm_nle.losses import MCM_CONDITIONS
from mllm_nle.recipes import mcmdpo, mcmdpo_experiment as mx
from mllm_nle.train import build_trainer, get_method, make_training_args
from notebook_runs import assert_figures_shown, run_notebook

ROOT = Path(__file__).resolve().parents[1]
MCM = shared_data("mcm-dpo-samples")
needs_samples = pytest.mark.skipif(not MCM.exists(), reason=f"released MCM-DPO samples not present ({MCM})")
torch.set_num_threads(1)

SMOKE = dict(run_name="smoke", n_train=16, n_test=4, sft_steps=4, sft_batch_size=4, epochs=1.0, batch_size=4, logging_steps=1,
             max_new_tokens=12, eval_batch_size=4, meteor=False)


def _papermill(tmp_path, params: dict, notebook: str = "mcmdpo_train.ipynb", extra=()):
    return run_notebook(notebook, tmp_path, params, extra)


def test_mcmdpo_notebook_smoke(tmp_path):
    "SFT stage, DPO and MCM-DPO at equal epochs, greedy and beam-3 evaluation with the exact world checks, figures."
    r = _papermill(tmp_path, SMOKE)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_figures_shown(tmp_path/"executed.ipynb")
    out = tmp_path/"outputs"/"mcmdpo"/"smoke"
    m = json.loads((out/"metrics.json").read_text())
    assert set(m["models"]) == {"baseline", "dpo", "mcm_dpo"} and m["n_test"] == 4 and m["paradigm"] == "d"
    for name, res in m["models"].items():
        for d in ("greedy", "beam3"):
            assert {f"{d}/{k}" for k in ("CIDEr", "ROUGE_L", "BLEU-4", "BLEU-4gram_only", "faithful", "object_hallucination",
                                         "object_recall")} <= set(res["summary"]), name
    logs = json.loads((out/"log_history.json").read_text())
    steps = {k: max(h.get("step", 0) for h in v) for k, v in logs.items()}
    assert steps["dpo"] == steps["mcm_dpo"] == 4                      # equal epochs: 16 records / 4 per step
    assert all(f"margins/{f[0]}" in logs["mcm_dpo"][0] for f in mcmdpo.MCM_FACETS)
    rows = [json.loads(l) for l in (out/"generations_mcm_dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"output_greedy", "output_beam3", "faithful_greedy", "context_ignored_beam3"} <= set(rows[0])
    for f in ["config.yaml", "figures/margins.png", "figures/metric_bars_greedy.png", "figures/gallery.png",
              "mcm_dpo/adapter/method_modules.safetensors"]:
        assert (out/f).exists(), f


def test_unknown_parameter_is_an_error_naming_it(tmp_path):
    r = _papermill(tmp_path, {"run_name": "typo"}, extra=["-p", "n_facet", "3"])
    assert r.returncode != 0 and "n_facet" in r.stderr and "unknown parameter" in r.stderr, r.stderr[-2000:]


@needs_samples
def test_twitter_params_run_on_the_released_samples(tmp_path):
    "The real-format params end to end on the 10 released Twitter samples with the tiny backbone (a format check only)."
    params = yaml.safe_load((ROOT/"params"/"mcmdpo_twitter.yaml").read_text())
    params.update(max_new_tokens=8, meteor=False, train_file=str(MCM/"twitter"/"twitter_train.json"),
                  image_root=str(MCM/"twitter"/"image"/"twitter_train"), test_file=str(MCM/"twitter"/"twitter_test.json"),
                  test_image_root=str(MCM/"twitter"/"image"/"twitter_test"))
    r = _papermill(tmp_path, params)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((tmp_path/"outputs"/"mcmdpo"/"twitter"/"metrics.json").read_text())
    assert (m["n_train"], m["n_test"]) == (10, 10) and set(m["models"]) == {"baseline", "dpo", "mcm_dpo"}
    assert "greedy/faithful" not in m["models"]["mcm_dpo"]["summary"]    # no scene graph for real images


# ---------------------------------------------------------------- the stored reference agrees with training
def _tiny_data(tmp_path, n_train=10, **kw):
    cfg = mcmdpo.MCMDPOConfig(n_train=n_train, n_test=2, cache_dir=str(tmp_path/"cache"), sft_steps=0, **kw)
    return cfg, mx.load_alttext_data(cfg)


def test_stored_reference_agrees_with_training_batches(tmp_path):
    """Reference log-probs stored in batches of 8 in file order equal the base model's log-probs on the batches the
    trainer actually builds (shuffled, 3 records each): every one of the 8 rows of every record. With the context
    negatives drawn from the batch instead (the old behaviour), rows 4 to 7 would disagree: checked too."""
    cfg, data = _tiny_data(tmp_path, backbone="tiny:qwen2_5_vl:xs")
    recs = mx.with_reference(cfg, Path(cfg.backbone), data)
    assert all(len(r["ref_logps"]) == 8 for r in recs)
    bb = models.resolve_backbone(cfg.backbone)
    method = mx.arm_method(cfg, "mcm_dpo")()
    seen = []
    collator = method.collator(bb.processor)
    def spy(records):
        b = collator(records); seen.append((records, b)); return b
    args = make_training_args(tmp_path/"run", max_steps=3, per_device_train_batch_size=3, report_to="none", save_strategy="no",
                              logging_steps=1, learning_rate=0.0, disable_tqdm=True)
    tr = build_trainer(method, bb, recs, args, collator=spy, lora=dict(r=4))
    tr.train()
    assert len(seen) >= 3                                  # (the dataloader may prefetch one more)
    # at lr 0 the policy is the base model: every implicit reward the trainer logged against the stored reference is 0
    logged = [v for h in tr.state.log_history for k, v in h.items() if k.startswith(("margins/", "rewards/chosen", "rewards/rejected"))]
    assert len(logged) == 3 * 9 and max(abs(v) for v in logged) < 1e-4, logged
    base = models.resolve_backbone(cfg.backbone).model.eval()
    for records, b in seen:
        with torch.no_grad(): live = models.sequence_logps(base, b).sum
        torch.testing.assert_close(b["ref_logps"], live, atol=1e-3, rtol=1e-4)
        if len(records) < 2: continue          # (drawn from a batch of one there is no negative at all: the old failure)
        # the defect this replaces: negatives from the batch change the context rows
        batch_drawn = mcmdpo.MCMDPOCollator(bb.processor, pool=records, seed=cfg.data_seed)(
            [{k: v for k, v in r.items() if k not in ("context_negative", "context_negative_id")} for r in records])
        with torch.no_grad(): other = models.sequence_logps(base, batch_drawn).sum.view(8, -1)
        assert (other[4:] - live.view(8, -1)[4:]).abs().max() > 1e-2
        torch.testing.assert_close(other[:4], live.view(8, -1)[:4], atol=1e-3, rtol=1e-4)


def test_each_distinct_image_is_encoded_once_per_step(tmp_path):
    "One MCM-DPO step on n records runs the vision tower on 2n images (clean + corrupted), not 8n."
    cfg, data = _tiny_data(tmp_path, n_train=6, backbone="tiny:llava:xs")
    bb = models.resolve_backbone(cfg.backbone)
    recs = mx.with_reference(cfg, Path(cfg.backbone), data)
    images = []
    vt = bb.model.model.vision_tower
    vt.register_forward_hook(lambda mod, inp, out: images.append(out.last_hidden_state.shape[0]))
    args = make_training_args(tmp_path/"run", max_steps=1, per_device_train_batch_size=3, report_to="none", save_strategy="no",
                              disable_tqdm=True)
    build_trainer(mx.arm_method(cfg, "mcm_dpo")(), bb, recs, args, lora=dict(r=4)).train()
    assert images == [6], images          # one vision pass: 3 clean + 3 noised images for 24 sequences


# ---------------------------------------------------------------- paradigms and the reference
def test_a_paradigm_that_trains_the_vit_refuses_the_live_reference(tmp_path):
    with pytest.raises(ConfigError, match="live reference"):
        mcmdpo.MCMDPOConfig(paradigm="b", reference="live")
    with pytest.raises(ConfigError, match="vision tower"):
        get_method("mcm_dpo", reference="live", train_vision=True)
    cfg = mcmdpo.MCMDPOConfig(paradigm="c", reference="live", train_projector=False)   # frozen in preference: allowed
    assert mx.arm_method(cfg, "mcm_dpo")().reference == "live"


def test_paradigm_d_trains_the_whole_vision_tower(tmp_path):
    cfg, data = _tiny_data(tmp_path, n_train=6, backbone="tiny:llava:xs")
    bb = models.resolve_backbone(cfg.backbone)
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters() if models.module_part(n) == "vision"}
    recs = mx.with_reference(cfg, Path(cfg.backbone), data)
    args = make_training_args(tmp_path/"run", max_steps=2, per_device_train_batch_size=3, report_to="none", save_strategy="no",
                              disable_tqdm=True, learning_rate=1e-3, warmup_steps=0)
    tr = build_trainer(mx.arm_method(cfg, "mcm_dpo", paradigm="d")(), bb, recs, args, lora=dict(r=4))
    tr.train()
    vision = {n.removeprefix("base_model.model."): p for n, p in tr.model.named_parameters() if models.module_part(n) == "vision"}
    assert set(vision) == set(before)                         # no adapter in the vision tower: its own weights train
    assert all(p.requires_grad for p in vision.values())
    changed = {n for n, p in vision.items() if not torch.equal(before[n], p)}
    # every weight the features depend on moves (the last layer and post-layernorm are unused: vision_feature_layer=-2)
    used = {n for n in before if ".layers.3." not in n and "post_layernorm" not in n}
    assert used <= changed, sorted(used - changed)


# ---------------------------------------------------------------- bad input
def _write(p: Path, rows, jsonl=False):
    p.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows)); return p


@needs_samples
@pytest.mark.parametrize("fmt", ["release", "swift"])
def test_bad_records_name_file_record_field_or_are_counted(tmp_path, fmt):
    rows = json.loads((MCM/"twitter"/"twitter_train.json").read_text())
    root = MCM/"twitter"/"image"/"twitter_train"
    if fmt == "release":
        bad = [dict(rows[1], text=rows[1]["text"][:-2]),                                            # not valid JSON
               dict(rows[2], text=json.dumps({k: v for k, v in json.loads(rows[2]["text"]).items() if k != "chosen"})),
               dict(rows[3], text=json.dumps({k: v for k, v in json.loads(rows[3]["text"]).items() if k != "rejected"})),
               dict(rows[4], image={"path": "missing.jpg"}, image_path="missing.jpg")]
        expect = ["field 'text': invalid JSON string", "field 'chosen': missing field", "field 'rejected': missing field",
                  "field 'image': image file not found"]
        load = D.load_mcmdpo_train
    else:
        def swift(r):
            t = json.loads(r["text"])
            return {"messages": [{"role": "user", "content": "<image>" + t["question"]}, {"role": "assistant", "content": t["chosen"]}],
                    "images": [r["image_path"]], "rejected_response": t["rejected"]}
        good = [swift(r) for r in rows]
        bad = [{**good[1], "messages": "not a list"},
               {**good[2], "messages": good[2]["messages"][:1]},                                    # no chosen
               {k: v for k, v in good[3].items() if k != "rejected_response"},
               {**good[4], "images": ["missing.jpg"]}]
        expect = ["field 'messages': wrong type", "field 'messages': unsupported turns", "field 'rejected_response': missing field",
                  r"field 'images\[0\]': image file not found"]
        rows, load = good, mcmdpo.load_swift_pairs
    for j, (b, e) in enumerate(zip(bad, expect)):
        p = _write(tmp_path/f"bad{j}.json", [rows[0], b, rows[5]])
        with pytest.raises(DataFileError, match=f"bad{j}.json: record 1: {e}"):
            load(p, image_root=root)
    p = _write(tmp_path/"all.json", [rows[0], *bad, rows[5]])
    recs, rep = load(p, image_root=root, on_error="skip")
    assert rep.loaded == 2 and rep.n_skipped == 4, str(rep)


def test_a_one_sample_dataset_has_no_context_negative(tmp_path):
    "A context negative equal to the original is refused, with the reason."
    rec = dict(id="only", question="Given an image and context, generate alt-text.\nContext:\nhi", chosen="a", rejected="b", image="x.png")
    with pytest.raises(ValueError, match="no other question.*context margin is zero"):
        mcmdpo.assign_negatives([rec])
    with pytest.raises(ValueError, match="no other question"):
        mcmdpo.assign_negatives([rec, dict(rec, id="twin")])   # two records, one question: same thing
