"""The training engine on the tiny Qwen2.5-VL: every method trains, checkpoints resume exactly,
reference log-probs round-trip, and an out-of-memory error says what to lower."""
import math

import pytest
import torch
from transformers import TrainerCallback

from dataclasses import replace

from mllm_nle import models
from mllm_nle import train as T
from mllm_nle.core import seed_everything
from mllm_nle.recipes import dgpref, hacl, mcle, mcmdpo
from mllm_nle.train import (METHODS, BatchTooLargeError, attach_reference_logps, build_trainer, get_method, make_training_args,
                            precompute_reference_logps, train)

TOY = {"sft": T.toy_records, "mcle": mcle.toy_records, "preference": dgpref.toy_records, "mcm_dpo": mcmdpo.toy_records,
       "hacl": hacl.toy_records}

def toy_records(kind, n, out_dir): return TOY[kind](n, out_dir)

torch.set_num_threads(1)  # the CPU is shared; one intra-op thread avoids oversubscription stalls


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def fresh_backbone(seed=0):
    seed_everything(seed)
    return models.tiny_backbone("qwen2_5_vl", "xs")


def quick_args(out, **kw):
    d = dict(max_steps=3, per_device_train_batch_size=2, logging_steps=1, learning_rate=1e-3, report_to="none",
             disable_tqdm=True, save_strategy="no")
    return make_training_args(out, **(d | kw))


CASES = [  # (method name, method options, toy record kind, batch size, logged terms that must appear)
    ("sft", {}, "sft", 4, {"loss/sft"}),
    ("mcle", dict(variant="official"), "mcle", 6, {"loss/mcle", "loss/negative"}),
    ("mcle", dict(variant="bounded"), "mcle", 6, {"loss/mcle", "loss/unlikelihood"}),
    ("mcle", dict(variant="multilevel", features=True), "mcle", 6,
     {"loss/semantic", "loss/image", "loss/image_nce", "rewards/accuracies"}),
    ("dpo", dict(loss_type="sigmoid"), "preference", 2, {"loss/dpo", "rewards/margins", "rewards/accuracies"}),
    ("dpo", dict(loss_type="ipo", reference="none"), "preference", 2, {"loss/dpo", "rewards/margins"}),
    ("mcm_dpo", {}, "mcm_dpo", 2, {"loss/mcm_dpo", "margins/image", "rewards/margins"}),
    ("hacl", {}, "hacl", 3, {"loss/ita", "loss/lm", "itc/temperature"}),
]


def test_registry_covers_every_case():
    assert {c[0] for c in CASES} == set(METHODS)


@pytest.mark.parametrize("name,opts,kind,bs,terms", CASES, ids=[f"{c[0]}-{'-'.join(map(str, c[1].values()))}" for c in CASES])
def test_each_method_trains(tmp_path, name, opts, kind, bs, terms):
    bb = fresh_backbone()
    bb.model = models.add_lora(bb.model, r=8, alpha=16)
    before = lora_state(bb.model)
    method = get_method(name, **opts)
    if name == "mcle": bs //= 3   # MCLE batches count whole groups (a positive and two negatives)
    tr = build_trainer(method, bb, toy_records(kind, 6, tmp_path), quick_args(tmp_path / "run", per_device_train_batch_size=bs))
    extra_before = {n: p.detach().clone() for m in method.modules.values() for n, p in m.named_parameters()}
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert math.isfinite(h["loss"]), h
        assert terms <= set(h), f"missing {terms - set(h)} in {sorted(h)}"
    after = lora_state(bb.model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "adapter weights did not change"
    extra_after = {n: p.detach() for m in method.modules.values() for n, p in m.named_parameters()}
    for n in extra_before:  # HACL's projection heads and temperature train too
        assert not torch.equal(extra_before[n], extra_after[n]), f"{n} did not change"


def test_mcle_batches_hold_whole_groups(tmp_path):
    "A batch of 2 groups holds both groups whole: 6 rows, every negative with its positive, none unpaired."
    bb = fresh_backbone()
    recs = [r for r in toy_records("mcle", 9, tmp_path)]
    seen = []
    collator = mcle.MCLECollator(bb.processor)
    def spy(records):
        seen.append([r["group"] for r in records]); return collator(records)
    tr = build_trainer(get_method("mcle", variant="multilevel"), bb, recs,
                       quick_args(tmp_path / "g", per_device_train_batch_size=2, max_steps=4), collator=spy, lora=dict(r=4))
    tr.train()
    for b in seen: assert all(b.count(g) == 3 for g in b), seen
    assert {len(b) for b in seen} <= {3, 6}   # 3 groups: the epoch's last batch holds one
    assert all(h["mcle/unpaired"] == 0 for h in tr.state.log_history if "mcle/unpaired" in h)


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    "2 x 2 accumulated equals one batch of 4 (our losses are batch means; the Trainer divides by the steps)."
    recs = toy_records("sft", 4, tmp_path)
    finals = []
    for bs, ga in ((4, 1), (2, 2)):
        bb = fresh_backbone()
        bb.model = models.add_lora(bb.model, r=4, alpha=8, dropout=0.0)
        train("sft", bb, recs, quick_args(tmp_path / f"ga{ga}", max_steps=1, per_device_train_batch_size=bs,
                                          gradient_accumulation_steps=ga, train_sampling_strategy="sequential",
                                          optim="sgd", warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=0.0))
        finals.append(lora_state(bb.model))
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], atol=1e-5, rtol=1e-4)


class StopAt(TrainerCallback):
    "Stop after `step` (the checkpoint of that step is written first): a kill between steps."
    def __init__(self, step): self.step = step
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step: control.should_save = True; control.should_training_stop = True


@pytest.mark.parametrize("group_by", [None, "group"])
def test_kill_and_resume_gives_identical_adapter(tmp_path, group_by):
    recs = toy_records("mcle", 9, tmp_path)   # 9 records, batch 2: epochs end mid-run, so data order is tested
    def run(out, callbacks=None, resume=None):
        bb = fresh_backbone()
        bb.model = models.add_lora(bb.model, r=4, alpha=8, dropout=0.1)   # dropout: the RNG state must be restored
        args = quick_args(out, max_steps=7, save_strategy="steps", save_steps=3, save_total_limit=2, seed=3, data_seed=4)
        tr = build_trainer(replace(get_method("mcle", variant="bounded"), group_by=group_by), bb, recs, args, callbacks=callbacks)
        tr.train(resume_from_checkpoint=resume)
        return tr, lora_state(bb.model)
    _, full = run(tmp_path / "full")
    tr, _ = run(tmp_path / "killed", callbacks=[StopAt(3)])
    assert tr.state.global_step == 3 and (tmp_path / "killed" / "checkpoint-3" / "adapter_model.safetensors").exists()
    tr, resumed = run(tmp_path / "killed", resume=str(tmp_path / "killed" / "checkpoint-3"))
    assert tr.state.global_step == 7
    for k in full: torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-7"]


def test_reference_logps_roundtrip_and_batch_reference(tmp_path):
    bb = fresh_backbone()
    bb.model = models.add_lora(bb.model, r=4, alpha=8)
    recs = toy_records("preference", 4, tmp_path)
    col = dgpref.PreferenceCollator(bb.processor)
    path = precompute_reference_logps(bb.model, recs, col, tmp_path / "ref.json", batch_size=3)
    with_ref = attach_reference_logps(recs, path)
    b = col(recs)
    lp = models.sequence_logps(bb.model, b)
    torch.testing.assert_close(torch.tensor([r["ref_chosen_logp"] for r in with_ref]), lp.sum[:4], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([r["ref_rejected_logp"] for r in with_ref]), lp.sum[4:], atol=1e-4, rtol=0)
    tr = train("dpo", bb, with_ref, quick_args(tmp_path / "dpo", max_steps=1), method_kw=dict(reference="batch"))
    assert abs(tr.state.log_history[0]["loss"] - math.log(2)) < 1e-3   # fresh LoRA: policy == stored reference
    with pytest.raises(Exception, match="no reference log-probs for record 0"):
        attach_reference_logps([{"id": "nope"}], path)


def test_cuda_oom_becomes_a_clear_error(tmp_path):
    bb = fresh_backbone()
    def oom(**kw): raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    m = get_method("sft"); m.loss_fn = oom
    tr = build_trainer(m, bb, toy_records("sft", 4, tmp_path), quick_args(tmp_path / "oom"), lora=dict(r=4))
    with pytest.raises(BatchTooLargeError, match="per_device_train_batch_size=2.*gradient checkpointing.*LoRA rank"):
        tr.train()


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from mllm_nle import models, train as T
from mllm_nle.core import load_json
from mllm_nle.recipes import dgpref
recs = load_json(sys.argv[1])
bb = models.tiny_backbone("qwen2_5_vl", "xs")
args = T.make_training_args(sys.argv[2], max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                            report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1)
tr = T.train("dpo", bb, recs, args, lora=dict(r=4))
s = torch.stack([p.detach().double().sum() for n, p in tr.model.named_parameters() if "lora_B" in n]).sum().reshape(1)
g = [torch.zeros_like(s) for _ in range(dist.get_world_size())]; dist.all_gather(g, s)
if dist.get_rank() == 0: print("CHECKSUMS", *[x.item() for x in g], "LOGGED", "rewards/margins" in tr.state.log_history[0])
"""


def test_two_process_ddp_keeps_ranks_in_sync(tmp_path):
    "torchrun with 2 CPU processes: different data per rank, yet identical adapters (gradients all-reduced)."
    import os, subprocess, sys
    from mllm_nle.core import save_json
    save_json(tmp_path / "prefs.json", toy_records("preference", 8, tmp_path))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "ddp.py"),
                        str(tmp_path / "prefs.json"), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    line = next((l for l in r.stdout.splitlines() if l.startswith("CHECKSUMS")), None)
    assert line is not None, r.stderr[-3000:]
    _, a, b, _, logged = line.split()
    assert float(a) == float(b) and float(a) != 0.0 and logged == "True", line
