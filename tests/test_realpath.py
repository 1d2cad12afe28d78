"""What a GPU run of a real checkpoint would get wrong, pinned on the tiny backbones (no shared data needed):
fp32 master weights on a bf16 base, one load path for the evaluated model, the schedules, image headers checked at
load, images opened lazily, equal steps for MCLE's arms, and the parameters cells papermill reads."""
import json, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from mllm_nle import experiment, models, train
from mllm_nle.core import DataFileError

ROOT = Path(__file__).resolve().parents[1]


def _vision_params(model) -> dict:
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if models.module_part(n) == "vision"}


def _trains_vision(method):
    "`method` that also trains the whole vision tower (as MCM-DPO's paradigms b and d do)."
    def setup(m, model): models.set_trainable(model, vision=True, projector=True, llm=True)
    return replace(method, setup=setup)


@pytest.mark.parametrize("master", [True, False])
def test_bf16_base_one_step_at_5e_7_moves_a_fully_trained_part(tmp_path, master):
    """With a bf16 base and bf16 autocast (CPU), one AdamW step at lr 5e-7 changes most of the vision tower's weights: the
    engine keeps fp32 master weights. The control (master=False: the part left in bf16, as before) changes almost none."""
    torch.manual_seed(0)
    bb = models.tiny_backbone("llava", "xs")
    bb = models.load_backbone(bb.path, dtype=torch.bfloat16, device="cpu")
    recs = train.toy_records(4, tmp_path)
    args = train.make_training_args(tmp_path/"run", max_steps=1, learning_rate=5e-7, per_device_train_batch_size=4, bf16=True,
                                    use_cpu=True, lr_scheduler_type="constant", warmup_steps=0, save_strategy="no", report_to="none")
    tr = train.build_trainer(_trains_vision(train.get_method("sft")), bb, recs, args)
    before = _vision_params(tr.model)
    if not master:   # undo the engine's upcast: the pure-bf16 update a plain Trainer would make
        for n, p in tr.model.named_parameters():
            if models.module_part(n) == "vision": p.data = p.data.to(torch.bfloat16)
        tr.create_optimizer()
    else: assert all(p.dtype == torch.float32 for n, p in tr.model.named_parameters() if p.requires_grad)
    tr.train()
    after = _vision_params(tr.model)
    changed = sum(int((after[n] != before[n]).sum()) for n in before) / sum(v.numel() for v in before.values())
    assert changed > 0.5 if master else changed < 0.2, changed
    frozen = [p.dtype for n, p in tr.model.named_parameters() if not p.requires_grad]
    assert frozen and all(d == torch.bfloat16 for d in frozen)   # frozen weights stay in bf16: only the trained parts cost fp32


def test_reloaded_run_gives_in_run_logps(tmp_path):
    """An arm that trains the vision tower whole (and a method module): `load_backbone(adapter folder)` restores exactly the
    evaluated model, so its log-probs equal the in-run ones; without `trained_parts.safetensors` they would not."""
    cfg = experiment.RunConfig(backbone="tiny:llava:xs", steps=3, batch_size=2, lr=5e-2, logging_steps=1, cache_dir=str(tmp_path/"c"))
    recs = train.toy_records(4, tmp_path)
    head = torch.nn.Linear(4, 2)
    def method():
        m = _trains_vision(train.get_method("sft")); m.modules = {"head": head}; return m
    r = experiment.train_arm(cfg, None, experiment.Arm("full", method, recs), tmp_path/"arm")
    batch = train.get_method("sft").collator(r["backbone"].processor)(recs)
    r["backbone"].model.eval()   # as every evaluation runs it (no LoRA dropout)
    with torch.no_grad(): in_run = models.sequence_logps(r["backbone"].model, batch).sum
    adapter = Path(r["adapter"])
    assert (adapter/models.TRAINED_PARTS).exists() and (adapter/models.METHOD_MODULES).exists()
    assert json.loads((adapter/models.INPUT_OPTIONS).read_text()) == experiment.input_options(cfg)
    again = models.load_backbone(adapter)
    with torch.no_grad(): reloaded = models.sequence_logps(again.model, batch).sum
    assert torch.allclose(in_run, reloaded, atol=1e-4), (in_run, reloaded)
    assert torch.equal(again.method_state["head.weight"], head.weight.detach())
    (adapter/models.TRAINED_PARTS).unlink()   # the control: the adapter alone is not the evaluated model
    with torch.no_grad(): adapter_only = models.sequence_logps(models.load_backbone(adapter).model, batch).sum
    assert not torch.allclose(in_run, adapter_only, atol=1e-3)


def test_schedules_default_to_each_release():
    from mllm_nle.recipes import dgpref, hacl, mcle, mcmdpo
    got = {c.__name__: c().lr_scheduler for c in (mcle.MCLEConfig, dgpref.DGPrefConfig, hacl.HACLConfig, mcmdpo.MCMDPOConfig)}
    assert got == {"MCLEConfig": "linear", "DGPrefConfig": "linear", "HACLConfig": "cosine", "MCMDPOConfig": "cosine"}
    cfg = mcle.MCLEConfig()
    assert experiment.training_args(cfg, "/tmp/x", 5, 1e-4, 2, 0).lr_scheduler_type.value == "linear"
    assert experiment.training_args(cfg, "/tmp/x", 5, 1e-4, 2, 0, scheduler=cfg.sft_lr_scheduler).lr_scheduler_type.value == "cosine"
    with pytest.raises(Exception, match="lr_scheduler must be one of"): mcle.MCLEConfig(lr_scheduler="cosine_annealing")
    for bad in (dict(max_image_tokens=0), dict(image_preprocess="stretch"), dict(prompt_format="vicuna"), dict(image_cache_mb=-1)):
        with pytest.raises(Exception): experiment.RunConfig(**bad)


def test_bad_image_header_is_caught_when_records_load(tmp_path):
    "An unreadable image and one over the pixel limit stop the load (naming file, record, field); under skip they are counted."
    from mllm_nle import data
    Image.new("RGB", (20, 20)).save(tmp_path/"good.png")
    (tmp_path/"bad.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (300, 300)).save(tmp_path/"big.png")
    rows = [dict(image=f, ques="q?", response="Because x. So the answer is y.", ratio=1) for f in ("good.png", "bad.jpg", "big.png")]
    (tmp_path/"train.json").write_text(json.dumps(rows))
    with pytest.raises(DataFileError, match=r"train.json: record 1: field 'image': image not readable"):
        data.load_mcle_train(tmp_path/"train.json")
    recs, rep = data.load_mcle_train(tmp_path/"train.json", on_error="skip", max_image_pixels=50_000)
    assert rep.loaded == 1 and rep.skipped == {"image: image not readable": 1, "image: image too large": 1}


def test_generate_opens_images_lazily(tmp_path):
    "Evaluation examples may carry a callable: each image is opened once, when its batch is built."
    bb = models.tiny_backbone("qwen2_5_vl", "xs")
    opened = []
    def opener(k):
        def f(): opened.append(k); return Image.new("RGB", (56, 56), (k * 40, 0, 0))
        return f
    ex = [dict(image=opener(k), image_key=k, prompt="What is it?") for k in range(4)]
    out = models.generate(bb.model, bb.processor, ex, max_new_tokens=2, batch_size=2)
    assert len(out) == 4 and opened == [0, 1, 2, 3]


def test_mcle_arms_take_equal_steps_in_epochs_mode_and_a_levelless_file_is_noted(tmp_path, caplog):
    from mllm_nle.recipes import mcle
    recs = []
    for g in range(6):   # groups of 3: SFT-continued walks 6 positives, an MCLE arm 6 groups of 3 rows
        recs += [dict(id=f"{g}-{k}", image=None, prompt="q", response="r", weight=w, level="negative" if w < 0 else "positive",
                      group=str(g)) for k, w in enumerate((1.0, -1.0, -1.0))]
    cfg = mcle.MCLEConfig(steps=0, epochs=3, batch_size=3, grad_accum=1, train_file="t.json", test_file="s.json")
    data = mcle.MCLEData(recs, [], None, "t.json", {})
    arms = mcle.mcle_arms(cfg, data)
    assert [a.steps for a in arms] == [18, 18]          # 6 groups, one per step, 3 epochs; SFT-continued alone would take 6
    assert mcle.epoch_steps(10, 3, 2, 3.0) == 6
    notes = mcle.level_notes(cfg, recs, "vqax/train.json")
    assert notes and "no record has a `level` field" in notes[0] and "semantic, image and instance terms are 0" in notes[0]
    assert "!!!!!!!!" in caplog.text
    assert mcle.level_notes(replace(cfg, variant="official"), recs, "x") == []


def test_parameters_cells_name_every_config_field():
    "Each experiment notebook's parameters cell names every field of its config (no 'Passed unknown parameter' warnings)."
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"params_cells.py"), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dgpref_real_data_helpers_say_when_there_are_no_pairs(tmp_path, capsys):
    from mllm_nle.recipes import dgpref, dgpref_study
    assert dgpref_study.pair_quality_bars({"quality": [{"expert": "vqa", "n_pairs": 0}]}) is None
    assert "nothing to draw" in capsys.readouterr().out
    cfg = dgpref.DGPrefConfig(pool_images=str(tmp_path), sft_steps=0, arms=["dgpref_vqa"], official_expert="vqa")
    (tmp_path/"pipeline").mkdir(); (tmp_path/"pipeline"/"preferences_vqa.json").write_text("[]")
    assert "skipped" in dgpref_study.first_step_losses(cfg, tmp_path)


def test_baseline_keeps_method_modules_beside_its_weights(tmp_path, capfd):
    """A baseline trained with a method module (HACL's pretrain heads) saves it as method_modules.safetensors beside the weights,
    not inside model.safetensors, so loading the folder reports no unexpected keys; HACL's head loader still finds it."""
    from safetensors import safe_open
    from mllm_nle.recipes import hacl
    cfg = experiment.RunConfig(backbone="tiny:llava:xs", sft_steps=2, sft_batch_size=2, sft_lr=1e-3, logging_steps=1,
                               cache_dir=str(tmp_path/"c"))
    head = torch.nn.Linear(4, 2)
    method = replace(train.get_method("sft"), modules={"hacl_head": head})
    d = experiment.train_baseline(cfg, train.toy_records(4, tmp_path), "toy", method=method)
    with safe_open(str(d/"model.safetensors"), "pt") as f: keys = list(f.keys())
    assert keys and not [k for k in keys if "method_modules" in k or "hacl_head" in k]
    assert set(hacl.load_head_state(d)) == {"weight", "bias"}
    assert torch.equal(hacl.load_head_state(d)["weight"], head.weight.detach())
    capfd.readouterr()
    models.load_backbone(d)
    err = capfd.readouterr().err
    assert "UNEXPECTED" not in err and "LOAD REPORT" not in err, err
