"""Reliability at scale, as tests a user can read: real `kill -9`s of training and of the
reference-log-prob writer, torn checkpoints, one process against two, and determinism of the
experiment notebooks.

The kills are real: a child process trains (or computes reference log-probs) and the test sends it
`SIGKILL`, the signal a pre-emption, the OOM killer or `kill -9` sends, which no handler can catch.
Children print a line at each point of interest (`STEP n`, `SAVING`, `BLOCKED`) and the test kills
on that line. Every child runs with one intra-op thread, so a resumed run can be compared bit for
bit with an uninterrupted one."""
import json, os, random, signal, socket, subprocess, sys, threading
from pathlib import Path

import pytest

from mllm_nle import train as T
from mllm_nle.core import save_json
from mllm_nle.recipes import dgpref
from notebook_runs import papermill_env, run_notebook

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
          "PYTHONUNBUFFERED": "1"}
ENV = {**os.environ, **PINNED}


def child(script: str, *args, kill_on: str | None = None, log=None, timeout: int = 240):
    """Run `python -c script args`; with `kill_on`, SIGKILL it as soon as it prints that line.
    Returns `(returncode, stdout lines)`; stderr goes to `log` (a file path) for the failure message."""
    err = open(log or os.devnull, "w")
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, stderr=err, text=True,
                         env=ENV, cwd=ROOT)
    watchdog = threading.Timer(timeout, p.kill); watchdog.start()
    lines = []
    try:
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if kill_on is not None and lines[-1] == kill_on:
                os.kill(p.pid, signal.SIGKILL)
                break
        p.wait()
    finally:
        watchdog.cancel(); err.close(); p.stdout.close()
    return p.returncode, lines


def tail(path, n=3000): return Path(path).read_text()[-n:] if Path(path).exists() else ""


# ---------------------------------------------------------------- training killed with SIGKILL
TRAIN_CHILD = r"""
import json, os, sys, time
import torch
from transformers import TrainerCallback
from mllm_nle import models, train as T
from mllm_nle.core import load_json, seed_everything
torch.set_num_threads(1)
recs, out, resume, hang_at = load_json(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume", int(sys.argv[4])

class Report(TrainerCallback):
    "Tell the parent each finished step: the test kills on one of these lines."
    def on_step_end(self, args, state, control, **kw): print(f"STEP {state.global_step}", flush=True)

save_optimizer = T.MethodTrainer._save_optimizer_and_scheduler
def hang_mid_save(self, output_dir):
    "At step `hang_at`, stop inside the save: the adapter is written, the optimizer, RNG state and marker are not."
    if self.state.global_step == hang_at: print("SAVING", flush=True); time.sleep(600)
    return save_optimizer(self, output_dir)
T.MethodTrainer._save_optimizer_and_scheduler = hang_mid_save

seed_everything(0)
bb = models.tiny_backbone("qwen2_5_vl", "xs")
args = T.make_training_args(out, max_steps=10, per_device_train_batch_size=2, logging_steps=1, learning_rate=1e-3,
                            report_to="none", disable_tqdm=True, save_strategy="steps", save_steps=2, save_total_limit=2,
                            seed=3, data_seed=4)
tr = T.train("sft", bb, recs, args, lora=dict(r=4, alpha=8, dropout=0.1), callbacks=[Report()],
             resume_from_checkpoint=True if resume else None)
tr.save_model(os.path.join(out, "final"))
json.dump(tr.state.log_history, open(os.path.join(out, "final", "log_history.json"), "w"))
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def sft_records(tmp_path_factory):
    "9 SFT records, batch 2: epochs end mid-run, so the data order after a resume is tested too."
    d = tmp_path_factory.mktemp("records")
    return save_json(d / "sft.json", T.toy_records(9, d))


@pytest.fixture(scope="module")
def uninterrupted(sft_records, tmp_path_factory):
    "The reference: the same training, never killed."
    out = tmp_path_factory.mktemp("uninterrupted")
    rc, lines = child(TRAIN_CHILD, sft_records, out, "fresh", 0, log=out / "stderr.txt")
    assert rc == 0 and lines[-1] == "DONE", tail(out / "stderr.txt")
    return out / "final"


def losses(final: Path) -> dict:
    return {h["step"]: h["loss"] for h in json.loads((final / "log_history.json").read_text()) if "loss" in h}


def assert_same_adapter(resumed: Path, full: Path):
    "Bit-identical: the saved adapter files are equal byte for byte, and so are the losses of the steps after the resume."
    a, b = (resumed / "adapter_model.safetensors").read_bytes(), (full / "adapter_model.safetensors").read_bytes()
    assert a == b, "the resumed adapter differs from the uninterrupted one"
    after = losses(resumed)
    assert after and all(after[s] == losses(full)[s] for s in after), (after, losses(full))


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(sft_records, uninterrupted, tmp_path):
    "kill -9 after a random step (checkpoints every 2 steps), resume with True: the adapter is the uninterrupted one, bit for bit."
    step = int(os.environ.get("MLLM_NLE_KILL_STEP") or random.SystemRandom().randint(3, 8))   # set it to replay a failure
    out = tmp_path / "run"
    rc, lines = child(TRAIN_CHILD, sft_records, out, "fresh", 0, kill_on=f"STEP {step}", log=tmp_path / "killed.txt")
    assert rc == -signal.SIGKILL and "DONE" not in lines, f"step {step}: the child was not killed: {lines[-3:]}"
    assert not (out / "final").exists()
    rc, lines = child(TRAIN_CHILD, sft_records, out, "resume", 0, log=tmp_path / "resumed.txt")
    assert rc == 0 and lines[-1] == "DONE", f"killed at step {step}: " + tail(tmp_path / "resumed.txt")
    first = int(lines[0].split()[1])
    assert 3 <= first <= step + 1, f"killed at step {step}, resumed at step {first}"   # from a checkpoint, not from scratch
    assert_same_adapter(out / "final", uninterrupted)


def test_sigkill_while_writing_a_checkpoint_falls_back_to_the_previous_one(sft_records, uninterrupted, tmp_path):
    """kill -9 in the middle of checkpoint-6's save: that folder exists, with an adapter, and would be the Trainer's
    latest. The resume warns, sets it aside as torn, resumes from checkpoint-4, and ends bit-identical."""
    out = tmp_path / "run"
    rc, _ = child(TRAIN_CHILD, sft_records, out, "fresh", 6, kill_on="SAVING", log=tmp_path / "killed.txt")
    assert rc == -signal.SIGKILL, tail(tmp_path / "killed.txt")
    torn = out / "checkpoint-6"
    assert (torn / "adapter_model.safetensors").exists() and not (torn / "optimizer.pt").exists()
    assert T.checkpoint_problem(torn) is not None and T.checkpoint_problem(out / "checkpoint-4") is None
    rc, lines = child(TRAIN_CHILD, sft_records, out, "resume", 0, log=tmp_path / "resumed.txt")
    log = tail(tmp_path / "resumed.txt", 20000)
    assert rc == 0 and lines[-1] == "DONE", log[-3000:]
    assert "checkpoint-6 is torn" in log and "falling back" in log, log[-3000:]
    assert lines[0] == "STEP 5", lines[:2]                        # resumed from checkpoint-4
    assert (out / "torn-checkpoint-6").is_dir() and T.checkpoint_problem(out / "checkpoint-10") is None
    assert_same_adapter(out / "final", uninterrupted)


# ---------------------------------------------------------------- the reference-log-prob writer killed
REF_CHILD = r"""
import sys, time
import torch
from mllm_nle import models, train as T
from mllm_nle.core import load_json
from mllm_nle.recipes import dgpref
torch.set_num_threads(1)
recs, outs, block_at = load_json(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
bb = models.tiny_backbone("qwen2_5_vl", "xs")
col, calls = dgpref.PreferenceCollator(bb.processor), []
def collate(chunk):
    calls.append(chunk)
    if len(calls) == block_at: print("BLOCKED", flush=True); time.sleep(600)   # two batches are on disk
    return col(chunk)
for out in outs:
    calls.clear()
    T.precompute_reference_logps(bb.model, recs, collate, out, batch_size=2)
    print("BATCHES", out, len(calls), flush=True)
"""


def test_reference_cache_killed_midway_gives_the_same_file(tmp_path):
    """kill -9 the writer after 2 of its 4 batches (and cut its last line, as a kill inside a write would);
    the re-run computes only the rest, and its file equals an uninterrupted run's, byte for byte."""
    recs = save_json(tmp_path / "prefs.json", dgpref.toy_records(8, tmp_path))
    resumed, whole = tmp_path / "resumed.json", tmp_path / "whole.json"
    rc, _ = child(REF_CHILD, recs, resumed, 3, kill_on="BLOCKED", log=tmp_path / "killed.txt")
    assert rc == -signal.SIGKILL, tail(tmp_path / "killed.txt")
    part = tmp_path / "resumed.json.partial.jsonl"
    assert not resumed.exists() and len(part.read_text().splitlines()) == 1 + 4   # the header and 2 batches of 2
    with open(part, "a") as f: f.write('{"id": "preference-4", "sum": [-12.5')              # a line cut by the kill
    rc, lines = child(REF_CHILD, recs, f"{resumed},{whole}", 0, log=tmp_path / "rerun.txt")
    assert rc == 0, tail(tmp_path / "rerun.txt")
    # the re-run collates the 2 missing batches, and the first batch once more for the resume header (its fingerprint)
    assert lines == [f"BATCHES {resumed} 3", f"BATCHES {whole} 4"], lines
    assert resumed.read_bytes() == whole.read_bytes() and not part.exists()


# ---------------------------------------------------------------- one process against two
ACCEL_SCRIPT = r"""
import sys, torch
from mllm_nle import models, train as T
from mllm_nle.core import load_json, save_json, seed_everything
torch.set_num_threads(1)
recs, out, bs = load_json(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seed_everything(0)
bb = models.tiny_backbone("qwen2_5_vl", "xs")
args = T.make_training_args(out, max_steps=4, per_device_train_batch_size=bs, learning_rate=1e-2, report_to="none",
                            disable_tqdm=True, save_strategy="no", logging_steps=1, seed=1, data_seed=1)
tr = T.train("sft", bb, recs, args, lora=dict(r=4, alpha=8, dropout=0.0))   # no dropout: its draws differ per rank
if tr.is_world_process_zero():
    save_json(f"{out}/run.json", {"world_size": args.world_size, "log_history": tr.state.log_history})
"""


def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_accelerate_two_processes_match_one(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine (torchrun, gloo), batch 2 per process,
    gives the loss curve of one process at batch 4: same samples per step (rank r takes the r-th half of each global
    batch), batch-mean losses, all-reduced gradients. Only the order of float additions differs.
    (`accelerate launch --cpu --num_processes 2` would start ONE process: accelerate 1.15 runs CPU jobs with its
    simple launcher unless given an MPI hostfile; hence the world-size check.)"""
    recs = save_json(tmp_path / "sft.json", T.toy_records(16, tmp_path))
    (tmp_path / "run.py").write_text(ACCEL_SCRIPT)
    one = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(recs), str(tmp_path / "one"), "4"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(free_port()), str(tmp_path / "run.py"), str(recs), str(tmp_path / "two"), "2"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    curve = lambda r, k: [h[k] for h in r["log_history"] if "loss" in h]
    assert len(curve(r1, "loss")) == len(curve(r2, "loss")) == 4
    for k in ("loss", "grad_norm"):
        assert curve(r2, k) == pytest.approx(curve(r1, k), rel=1e-4), (k, curve(r1, k), curve(r2, k))


# ---------------------------------------------------------------- determinism of the experiment notebooks
def _mcle_smoke():
    from test_mcle import SMOKE   # the smoke params the MCLE notebook is tested with
    return SMOKE

def _hacl_smoke():
    from test_hacl import SMOKE
    return SMOKE

def _mcmdpo_smoke():
    from test_mcmdpo import SMOKE
    return SMOKE

def _gym_smoke():
    from test_gym import SMOKE   # one seed, a few steps, every row of all four recipes from one base
    return SMOKE

NOTEBOOKS = [  # (notebook, outputs/<experiment>, smoke params). The gym's smoke run also runs DGPref's data pipeline and
    ("mcle_train.ipynb", "mcle", _mcle_smoke),       # training from one process (dgpref_data/dgpref_train add only the
    ("hacl_train.ipynb", "hacl", _hacl_smoke),       # notebooks around them; test_dgpref kills and resumes the data one)
    ("mcmdpo_train.ipynb", "mcmdpo", _mcmdpo_smoke),
    ("gym_report.ipynb", "gym", _gym_smoke),
]
# What may differ between two runs with the same params and seed, and why. Nothing else does on a CPU: metrics,
# generations, loss curves, adapters, optimizer states, even the figures' PNG bytes are identical.
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "seconds", "train_seconds", "eval_seconds",
               "wall_seconds", "gym_seconds"}   # wall-clock durations
SET_KEYS = {"target_modules"}   # peft writes this set as a list in string-hash order, which PYTHONHASHSEED changes per process
SKIP = {"training_args.bin": "a pickle of TrainingArguments: it holds the run's own output folder (and we never unpickle)"}
TEXT = {".json", ".jsonl", ".md", ".yaml", ".txt"}   # compared as text, with each run's own folder written alike


def comparable(path: Path, run_root: Path):
    "The content of `path` as compared across runs: JSON without timing keys and with sets sorted, text, or bytes."
    if path.suffix not in TEXT: return path.read_bytes()
    text = path.read_text().replace(str(run_root), "<run folder>")   # paths to each run's own cache and outputs
    if path.suffix != ".json": return text
    def norm(o):
        if isinstance(o, dict): return {k: sorted(v) if k in SET_KEYS else norm(v) for k, v in o.items() if k not in TIMING_KEYS}
        return [norm(v) for v in o] if isinstance(o, list) else o
    try: return norm(json.loads(text))
    except json.JSONDecodeError: return [norm(json.loads(l)) for l in text.splitlines() if l.strip()]   # JSON Lines named .json (MCM-DPO's format)


def run_in(notebook: str, params: dict, d: Path) -> subprocess.CompletedProcess:
    "One run in `d`, its own cache and outputs there (no shared cache: both runs train everything)."
    return run_notebook(notebook, d, params, env=papermill_env(**PINNED))


@pytest.mark.parametrize("notebook,experiment,smoke", NOTEBOOKS, ids=[n[0] for n in NOTEBOOKS])
def test_experiment_notebook_is_deterministic(notebook, experiment, smoke, tmp_path):
    """Two runs, same params and seed, nothing cached: every file of the run folder and of the cache (the baseline) is
    the same (metrics.json, generations, loss curves, adapters, checkpoints, figures), apart from what `TIMING_KEYS`,
    `SET_KEYS` and `SKIP` name."""
    params = smoke()
    for k in ("a", "b"):
        (tmp_path / k).mkdir()
        r = run_in(notebook, params, tmp_path / k)
        assert r.returncode == 0, r.stderr[-3000:]
    def listing(k):
        roots = (tmp_path / k / "outputs" / experiment / params["run_name"], tmp_path / k / "cache")
        return sorted(p.relative_to(tmp_path / k) for r in roots for p in r.rglob("*") if p.is_file() and p.name not in SKIP)
    files = listing("a")
    assert "metrics.json" in {f.name for f in files} and any(f.suffix == ".safetensors" for f in files), files   # trained and scored
    assert files == listing("b"), files
    for f in files:
        assert comparable(tmp_path / "a" / f, tmp_path / "a") == comparable(tmp_path / "b" / f, tmp_path / "b"), f"{f} differs between two runs"


# ---------------------------------------------------------------- the shipped accelerate configs
def test_every_accelerate_config_loads_and_has_its_readme_command():
    "Each file in configs/accelerate/ loads with Accelerate's own loader, and the README gives its launch command."
    from accelerate.commands.config.config_args import load_config_from_file
    configs = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {c.name for c in configs} >= {"ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}
    readme = (ROOT / "README.md").read_text().split("## More than one machine")[1].split("\n## ")[0]
    for c in configs:
        assert load_config_from_file(str(c)).num_processes >= 1, c.name
        assert f"accelerate launch --config_file configs/accelerate/{c.name} --num_processes 1" in readme, c.name
