"""The share of a fully trained part's weights (the vision tower) that one AdamW step changes, with a bf16 base under bf16
autocast (CPU): the engine's fp32 master weights against the part left in bf16 (a plain Trainer on a bf16 checkpoint).
The same setup as tests/test_realpath.py::test_bf16_base_one_step_at_5e_7_moves_a_fully_trained_part, on tiny:llava:xs.

    python bench/master_weights.py [--lrs 5e-7,2e-5] [--out FILE]"""
import argparse, sys, tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import emit  # noqa: E402
from mllm_nle import models, train  # noqa: E402


def changed_share(master: bool, lr: float) -> float:
    torch.manual_seed(0)
    bb = models.load_backbone(models.tiny_backbone("llava", "xs").path, dtype=torch.bfloat16, device="cpu")
    d = Path(tempfile.mkdtemp()); recs = train.toy_records(4, d)
    m = replace(train.get_method("sft"), setup=lambda mm, model: models.set_trainable(model, vision=True, projector=True, llm=True))
    args = train.make_training_args(d/"r", max_steps=1, learning_rate=lr, per_device_train_batch_size=4, bf16=True, use_cpu=True,
                                    lr_scheduler_type="constant", warmup_steps=0, save_strategy="no", report_to="none", disable_tqdm=True)
    tr = train.build_trainer(m, bb, recs, args)
    vis = lambda: {n: p.detach().float().clone() for n, p in tr.model.named_parameters() if models.module_part(n) == "vision"}
    if not master:   # the part back in bf16: the update a plain Trainer makes on a bf16 checkpoint
        for n, p in tr.model.named_parameters():
            if models.module_part(n) == "vision": p.data = p.data.to(torch.bfloat16)
        tr.create_optimizer()
    before = vis(); tr.train(); after = vis()
    return sum(int((after[n] != before[n]).sum()) for n in before) / sum(v.numel() for v in before.values())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", default="5e-7,2e-5"); ap.add_argument("--out", default=None)
    a = ap.parse_args()
    emit({f"lr {lr}": {"fp32 master (ours)": round(changed_share(True, float(lr)), 4), "bf16 (plain Trainer)": round(changed_share(False, float(lr)), 4)}
          for lr in a.lrs.split(",")}, a.out, indent=1)
