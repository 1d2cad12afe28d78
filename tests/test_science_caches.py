"""Every cache, and the resume header of every resumable file, changes when an input that changes its content
changes: the model's weights, the data, the processor or collator, the noise step; and only then. Also: a dataset of
several groups keeps every group through the whole-group sampler."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from mllm_nle import experiment, models, train
from mllm_nle.core import shared_data
from mllm_nle.experiment import RunConfig, config_key, model_id
from mllm_nle.recipes import dgpref, mcle, mcmdpo
from mllm_nle.recipes import mcmdpo_experiment as mx

torch.set_num_threads(1)
SPEC = "tiny:qwen2_5_vl:xs"


# ---------------------------------------------------------------- config_key and model_id
def test_config_key_is_stable_and_sensitive():
    k = config_key(a=1, b=[1, 2], c="x")
    assert k == config_key(c="x", b=[1, 2], a=1) and len(k) == 10 and int(k, 16) >= 0
    assert len({k, config_key(a=2, b=[1, 2], c="x"), config_key(a=1, b=[2, 1], c="x"), config_key(a=1, b=[1, 2], c="y"),
                config_key(a=1, b=[1, 2]), config_key(a=1, b=[1, 2], c="x", d=None)}) == 6
    assert config_key(p=Path("/a/b")) == config_key(p="/a/b")                   # non-JSON values by their str


def test_model_id_of_a_cached_baseline_is_its_folder_name(tmp_path):
    for where in ("one", "two"):
        d = tmp_path/where/"sft-0123456789"; d.mkdir(parents=True); (d/"done.json").write_text("{}")
        assert model_id(d) == "sft-0123456789" == model_id(str(d))
    assert model_id(SPEC) == SPEC


def test_model_id_of_a_model_folder_changes_with_its_files(tmp_path):
    "A local checkpoint overwritten in place (new weights, same path) is another model."
    d = tmp_path/"my-model"; d.mkdir()
    (d/"config.json").write_text("{}"); (d/"model.safetensors").write_bytes(b"x" * 10)
    first = model_id(d)
    assert first == model_id(d) and "my-model" in first
    (d/"model.safetensors").write_bytes(b"y" * 11)
    assert model_id(d) != first


# ---------------------------------------------------------------- the cached SFT baseline's key
@pytest.fixture
def baseline_dir(monkeypatch):
    "The folder train_baseline would build (its key), without training."
    monkeypatch.setattr(experiment, "cached_dir", lambda d, build: d)
    recs = [dict(id="a", prompt="p", response="r")] * 3
    return lambda cfg=None, records=recs, key="data v1", **kw: experiment.train_baseline(cfg or RunConfig(sft_steps=5, cache_dir="/c"), records, key, **kw)


def test_baseline_key_changes_with_everything_that_changes_the_model(baseline_dir):
    base = baseline_dir()
    changed = {"backbone": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", backbone="tiny:llava:xs")),
               "data": baseline_dir(key="data v2"), "n": baseline_dir(records=[dict(id="a")] * 4),
               "steps": baseline_dir(RunConfig(sft_steps=6, cache_dir="/c")), "lr": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", sft_lr=1e-4)),
               "batch": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", sft_batch_size=4)),
               "seed": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", data_seed=1)),
               "frozen vision": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", sft_freeze_vision=True)),
               "trainable": baseline_dir(trainable=dict(vision=False, projector=False, llm=True)),
               "method": baseline_dir(method=train.get_method("sft", weighted=True).__class__(
                   "sft-w", train.get_method("sft").loss_fn, train.get_method("sft").loss_inputs)),
               "grad_accum": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", grad_accum=2)),
               "warmup": baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", warmup_ratio=0.2))}
    same = [baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", steps=7, lr=1e-2, batch_size=2, logging_steps=3, eval_batch_size=5)),
            baseline_dir(RunConfig(sft_steps=5, cache_dir="/c", sft_freeze_vision=False))]
    assert base.parent == Path("/c")/"baseline" and base.name.startswith("sft-")
    for what, d in changed.items(): assert d != base, what
    assert len(set(changed.values())) == len(changed)
    assert all(d == base for d in same)
    assert baseline_dir(RunConfig(sft_steps=0, backbone="tiny:llava:xs")) == Path("tiny:llava:xs")     # no SFT: the backbone


def _mcle_files(tmp_path, response):
    d = tmp_path/"mcle"; shutil.copytree(shared_data("mcle-demo"), d)
    recs = json.loads((d/"train.json").read_text())
    recs[0]["response"] = response
    (d/"train.json").write_text(json.dumps(recs))
    return d


@pytest.mark.skipif(not (shared_data("mcle-demo")/"train.json").exists(), reason=f"needs {shared_data('mcle-demo')}")
def test_an_edited_data_file_is_new_data(tmp_path):
    "The same MCLE train file edited in place keys another baseline; an unchanged copy elsewhere keys the same one."
    keys = []
    for k, resp in enumerate(["Because it has a big lamp. So the answer is lighthouse.", "Because it is tall. So the answer is tower.",
                              "Because it is tall. So the answer is tower."]):
        d = _mcle_files(tmp_path/str(k), resp)
        cfg = mcle.MCLEConfig(train_file=str(d/"train.json"), test_file=str(d/"test.json"), image_root=str(d), cache_dir=str(tmp_path/"c"))
        keys.append(mcle.load_mcle_data(cfg).train_key)
    assert keys[0] != keys[1] and keys[1] == keys[2]


# ---------------------------------------------------------------- the reference log-prob file and its resume header
@pytest.fixture(scope="module")
def qwen():
    return models.resolve_backbone(SPEC)


def _prefs(tmp_path, n=4, suffix=""):
    recs = dgpref.toy_records(n, tmp_path)
    return [{**r, "chosen": r["chosen"] + suffix} for r in recs]


class _Stop(Exception): pass


def _interrupted(model, records, collator, path, batch_size=2, batches=1):
    "Write the partial file of a run killed after its first `batches` batches."
    calls = []
    def col(chunk):
        calls.append(1)
        if len(calls) > batches: raise _Stop
        return collator(chunk)
    with pytest.raises(_Stop): train.precompute_reference_logps(model, records, col, path, batch_size=batch_size)
    assert Path(str(path) + ".partial.jsonl").exists()


def _fresh(model, records, collator, batch_size=2) -> dict:
    out = {}
    for s in range(0, len(records), batch_size):
        chunk = records[s:s + batch_size]
        with torch.no_grad(): lp = models.sequence_logps(model, collator(chunk))
        for j, r in enumerate(chunk): out[r["id"]] = [lp.sum[j].item(), lp.sum[len(chunk) + j].item()]
    return out


def _stored(path) -> dict:
    return {k: v["sum"] for k, v in json.loads(Path(path).read_text())["logps"].items()}


def _close(a: dict, b: dict, tol=1e-4) -> bool:
    return a.keys() == b.keys() and all(abs(x - y) < tol for k in a for x, y in zip(a[k], b[k]))


def _passes(model):
    "Count the language model's forward passes."
    n = [0]
    h = models.hf_model(model).model.language_model.register_forward_pre_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    return n, h


def test_an_identical_rerun_resumes(qwen, tmp_path):
    recs, col, path = _prefs(tmp_path), dgpref.PreferenceCollator(qwen.processor), tmp_path/"ref.json"
    _interrupted(qwen.model, recs, col, path)
    n, h = _passes(qwen.model)
    try: train.precompute_reference_logps(qwen.model, recs, col, path, batch_size=2)
    finally: h.remove()
    assert n[0] == 1                                                     # only the second batch was computed
    assert _close(_stored(path), _fresh(qwen.model, recs, col)) and not Path(str(path) + ".partial.jsonl").exists()


def test_another_model_does_not_resume_this_ones_file(tmp_path):
    a, b = models.resolve_backbone(SPEC), models.resolve_backbone(SPEC)
    with torch.no_grad(): b.model.lm_head.weight.mul_(1.5)
    recs, col, path = _prefs(tmp_path), dgpref.PreferenceCollator(a.processor), tmp_path/"ref.json"
    _interrupted(a.model, recs, col, path)
    train.precompute_reference_logps(b.model, recs, col, path, batch_size=2)
    assert _close(_stored(path), _fresh(b.model, recs, col))
    assert not _close(_stored(path), _fresh(a.model, recs, col))


def test_other_records_with_the_same_ids_do_not_resume(qwen, tmp_path):
    "Records 2 and 3 (the second batch, already on disk) get other texts under the same ids: nothing may be resumed."
    old = _prefs(tmp_path, n=6)
    new = old[:2] + [{**r, "chosen": r["chosen"] + " It is very clear."} for r in old[2:4]] + old[4:]
    col, path = dgpref.PreferenceCollator(qwen.processor), tmp_path/"ref.json"
    _interrupted(qwen.model, old, col, path, batches=2)
    assert len(Path(str(path) + ".partial.jsonl").read_text().splitlines()) == 1 + 4
    train.precompute_reference_logps(qwen.model, new, col, path, batch_size=2)
    assert _close(_stored(path), _fresh(qwen.model, new, col))


def test_another_collator_does_not_resume(qwen, tmp_path):
    "The same records through a collator that truncates (another processor setting): the file must hold the new batches."
    recs, path = _prefs(tmp_path), tmp_path/"ref.json"
    full = dgpref.PreferenceCollator(qwen.processor)
    shortest = int(full(recs)["attention_mask"].sum(1).min())
    cut = dgpref.PreferenceCollator(qwen.processor, max_length=shortest - 3)
    _interrupted(qwen.model, recs, full, path)
    train.precompute_reference_logps(qwen.model, recs, cut, path, batch_size=2)
    assert _close(_stored(path), _fresh(qwen.model, recs, cut)) and not _close(_fresh(qwen.model, recs, cut), _fresh(qwen.model, recs, full))


def test_another_batch_size_starts_over(qwen, tmp_path):
    recs, col, path = _prefs(tmp_path), dgpref.PreferenceCollator(qwen.processor), tmp_path/"ref.json"
    _interrupted(qwen.model, recs, col, path)
    n, h = _passes(qwen.model)
    try: train.precompute_reference_logps(qwen.model, recs, col, path, batch_size=4)
    finally: h.remove()
    assert n[0] == 1 and _close(_stored(path), _fresh(qwen.model, recs, col, 4))


def test_weights_fingerprint_ignores_adapters_but_not_weights(tmp_path):
    a = models.resolve_backbone(SPEC).model
    fa = train._weights_fingerprint(a)
    assert fa == train._weights_fingerprint(models.resolve_backbone(SPEC).model) and len(fa) == 16
    peft = models.add_lora(models.resolve_backbone(SPEC).model, r=4)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n: p.add_(1.0)
    assert train._weights_fingerprint(peft) == fa                     # the base under the adapters is the same model
    for name, p in a.named_parameters():
        with torch.no_grad(): p.reshape(-1)[0] += 1.0
        assert train._weights_fingerprint(a) != fa, name
        with torch.no_grad(): p.reshape(-1)[0] -= 1.0
        break


def test_a_partial_file_with_a_bad_line_names_it(tmp_path):
    part = tmp_path/"x.partial.jsonl"
    part.write_text(json.dumps({"header": {"h": 1}}) + "\n" + '{"id": "a", "sum": [1]}\n')
    with pytest.raises(Exception, match="line 2: not a reference log-prob line"): train._read_partial(part, {"h": 1})
    part.write_text(json.dumps({"header": {"h": 1}}) + "\n" + '{"id": "a", "sum": [1], "mean": [2]}\n{"id": "b", "su')
    assert train._read_partial(part, {"h": 1}) == {"a": {"sum": [1], "mean": [2]}}
    assert part.read_text().endswith('"mean": [2]}\n')                   # the cut line is gone before anything is appended
    assert train._read_partial(part, {"h": 2}) == {} and not part.exists()
    assert train._read_partial(part, {"h": 2}) == {}


# ---------------------------------------------------------------- MCM-DPO's stored reference
def test_mcmdpo_reference_follows_the_noise_step(tmp_path):
    "The stored reference at noise step 700, then at 300: the second holds the 300-step image negatives' log-probs."
    got = {}
    for step in (700, 300, 700):
        cfg = mcmdpo.MCMDPOConfig(n_train=3, n_test=2, cache_dir=str(tmp_path/"cache"), sft_steps=0, backbone=SPEC, noise_step=step)
        data = mx.load_alttext_data(cfg)
        recs = mx.with_reference(cfg, Path(cfg.backbone), data, batch_size=3)
        bb = models.resolve_backbone(SPEC)
        with torch.no_grad(): live = models.sequence_logps(bb.model, mx.reference_collator(cfg, bb.processor)(data.train)).sum.view(8, -1)
        got[step] = torch.tensor([r["ref_logps"] for r in recs]).T
        torch.testing.assert_close(got[step], live, atol=1e-3, rtol=1e-4)
    assert (got[700][2] - got[300][2]).abs().max() > 1e-3            # row 2 (cw_ml_yw) sees the noised image
    assert len(list((tmp_path/"cache"/"reference").glob("ref-*.json"))) == 2


# ---------------------------------------------------------------- the whole-group sampler keeps every group
def test_group_records_keeps_every_group_in_first_seen_order():
    recs = [dict(id=1, g="a"), dict(id=2, g="b"), dict(id=3, g="a"), dict(id=4), dict(id=5, g="c"), dict(id=6)]
    groups = train.group_records(recs, "g")
    assert [[r["id"] for r in g] for g in groups] == [[1, 3], [2], [4], [5], [6]]
    assert train.group_records([], "g") == []
    col = train.GroupCollator(lambda rs: [r["id"] for r in rs])
    assert col(groups[:3]) == [1, 3, 2, 4]
    inner = dgpref.PreferenceCollator(processor=None)
    assert train.GroupCollator(inner).processor is None and train.GroupCollator(inner).row_names == inner.row_names   # the rest is the collator's


def test_a_file_of_several_groups_trains_on_all_of_them(qwen, tmp_path):
    "An MCLE file of 4 groups (positive + 2 negatives each), batches of 3 groups: one epoch sees every record once."
    recs = mcle.toy_records(12, tmp_path)
    f = tmp_path/"train.json"
    f.write_text(json.dumps([dict(image=r["image"], ques=r["prompt"], response=r["response"], ratio=r["weight"], level=r["level"],
                                  group=r["group"], id=r["id"]) for r in recs]))
    loaded, _ = __import__("mllm_nle.data", fromlist=["load_mcle_train"]).load_mcle_train(f)
    assert len({r["group"] for r in loaded}) == 4
    args = train.make_training_args(tmp_path/"run", per_device_train_batch_size=3, report_to="none", save_strategy="no", disable_tqdm=True)
    seen = []
    tr = train.build_trainer(train.get_method("mcle", variant="multilevel"), qwen, loaded, args, lora=dict(r=4),
                             collator=lambda rs: seen.append([r["id"] for r in rs]) or rs)
    assert len(tr.train_dataset) == 4
    for _ in tr.get_train_dataloader(): pass
    assert sorted(i for b in seen for i in b) == sorted(r["id"] for r in recs)
    assert [len(b) for b in seen] == [9, 3]                             # 3 groups of 3, then the last group
    groups = {r["id"]: r["group"] for r in loaded}
    assert all(len({groups[i] for i in b}) == len(b) // 3 for b in seen)   # a batch holds whole groups


# ---------------------------------------------------------------- the reference log-prob file: layout, inputs, errors
def test_stored_file_holds_sums_and_means_in_default_batches_of_8(qwen, tmp_path):
    "9 records by default: 2 passes (8 + 1); the file (in a folder made for it) has both reductions and the slot count."
    recs, col = _prefs(tmp_path, n=9), dgpref.PreferenceCollator(qwen.processor)
    path = tmp_path/"new"/"deeper"/"ref.json"
    n, h = _passes(qwen.model)
    try: train.precompute_reference_logps(qwen.model, recs, col, path)
    finally: h.remove()
    assert n[0] == 2
    stored = json.loads(path.read_text())
    assert stored["slots"] == 2 and set(stored["logps"]) == {r["id"] for r in recs}
    for s in (0, 8):
        chunk = recs[s:s + 8]
        with torch.no_grad(): lp = models.sequence_logps(qwen.model, col(chunk))
        for j, r in enumerate(chunk):
            for key, t in (("sum", lp.sum), ("mean", lp.mean)):
                assert stored["logps"][r["id"]][key] == pytest.approx([t[j].item(), t[len(chunk) + j].item()], abs=1e-5), (r["id"], key)


def test_no_records_store_an_empty_file(qwen, tmp_path):
    "No records: the collator is never called and the file says so (no slots)."
    def col(chunk): raise AssertionError("collator called")
    path = train.precompute_reference_logps(qwen.model, [], col, tmp_path/"ref.json")
    assert json.loads(Path(path).read_text()) == {"slots": None, "logps": {}}


def test_a_peft_policy_is_scored_as_its_base(tmp_path):
    "A LoRA model whose adapters change its outputs: the stored reference is the base model's, adapters off."
    bb = models.resolve_backbone(SPEC)
    recs, col = _prefs(tmp_path), dgpref.PreferenceCollator(bb.processor)
    base = _fresh(bb.model, recs, col)
    peft = models.add_lora(bb.model, r=4)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n: p.add_(0.5)
    assert not _close(_fresh(peft, recs, col), base, tol=1e-3)          # the adapters matter
    train.precompute_reference_logps(peft, recs, col, tmp_path/"ref.json", batch_size=2)
    assert _close(_stored(tmp_path/"ref.json"), base)


def test_a_collator_with_an_lm_part_is_scored_on_it(qwen, tmp_path):
    "A collator that returns `{'lm': batch, ...}` (a method's extra inputs beside it): the log-probs are of the 'lm' batch."
    recs, inner = _prefs(tmp_path), dgpref.PreferenceCollator(qwen.processor)
    col = lambda chunk: {"lm": inner(chunk), "extra": torch.zeros(len(chunk), 3)}
    train.precompute_reference_logps(qwen.model, recs, col, tmp_path/"ref.json", batch_size=2)
    assert _close(_stored(tmp_path/"ref.json"), _fresh(qwen.model, recs, inner))


def test_bad_records_and_collators_are_named(qwen, tmp_path):
    recs, col = _prefs(tmp_path), dgpref.PreferenceCollator(qwen.processor)
    with pytest.raises(train.DataFileError, match=r"record 1 has no 'id' field"):
        train.precompute_reference_logps(qwen.model, [recs[0], {k: v for k, v in recs[1].items() if k != "id"}], col, tmp_path/"a.json")
    with pytest.raises(train.DataFileError, match="duplicate record ids"):
        train.precompute_reference_logps(qwen.model, [recs[0], recs[0]], col, tmp_path/"b.json")
    short = lambda chunk: col(chunk[:3])                                       # 6 rows for 4 records
    with pytest.raises(ValueError, match="gave 6 rows for 4 records; expected a multiple"):
        train.precompute_reference_logps(qwen.model, recs, short, tmp_path/"c.json", batch_size=4)


def test_attach_reference_logps_by_reduction_and_slots(tmp_path):
    path = tmp_path/"ref.json"
    path.write_text(json.dumps({"slots": None, "logps": {"a": {"sum": [-1.0, -2.0], "mean": [-0.5, -0.25]},
                                                          "7": {"sum": [-1.0, -2.0, -3.0], "mean": [-0.1, -0.2, -0.3]}}}))
    recs = [dict(id="a", x=1), dict(id=7)]
    assert train.attach_reference_logps(recs, path) == [dict(id="a", x=1, ref_chosen_logp=-1.0, ref_rejected_logp=-2.0),
                                                        dict(id=7, ref_logps=[-1.0, -2.0, -3.0])]
    assert train.attach_reference_logps(recs, path, reduce="mean") == [dict(id="a", x=1, ref_chosen_logp=-0.5, ref_rejected_logp=-0.25),
                                                                       dict(id=7, ref_logps=[-0.1, -0.2, -0.3])]
    assert recs == [dict(id="a", x=1), dict(id=7)]                                  # copies
    with pytest.raises(train.DataFileError, match=r"no reference log-probs for record 1 \(id 'b'\)"):
        train.attach_reference_logps([dict(id="a"), dict(id="b")], path)
    with pytest.raises(train.ConfigError, match="reduce must be 'sum' or 'mean', got 'max'"):
        train.attach_reference_logps(recs, path, reduce="max")


# ---------------------------------------------------------------- the hashes behind the headers and keys
class _Thing:
    pass


def test_content_hash_of_mixed_keys_and_opaque_objects():
    h = lambda x: train._content_hash(x).hexdigest()
    assert h({1: "a", "b": 2}) == h({"b": 2, 1: "a"})                         # keys of mixed types, in any order
    assert h({1: "a", "b": 2}) != h({1: "a", "b": 3})
    assert h([_Thing()]) == h([_Thing()])                                    # other objects by type: not their address
    assert h([_Thing()]) != h([object()])
    assert h([[1], [2]]) != h([[1, 2]]) and h(torch.tensor([1, 2])) != h(torch.tensor([[1, 2]]))


def test_a_header_that_is_not_json_starts_over(tmp_path):
    part = tmp_path/"x.partial.jsonl"
    part.write_text('{"header": \n' + '{"id": "a", "sum": [1], "mean": [2]}\n')
    assert train._read_partial(part, {"h": 1}) == {} and not part.exists()


def test_weights_fingerprint_sees_small_changes_in_big_tensors_and_skips_method_modules():
    "A change of 0.01 in one of 2^20 ones is lost in a float32 sum, not in the float64 one; method heads are not the base."
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2 ** 20))
            self.method_modules = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2)})
    m = M()
    f = train._weights_fingerprint(m)
    with torch.no_grad(): m.method_modules["head"].weight.add_(1.0)
    assert train._weights_fingerprint(m) == f
    with torch.no_grad(): m.w[2 ** 19] += 0.01
    assert float(m.w.detach().sum()) == float(2 ** 20)                                   # float32 does not see it
    assert train._weights_fingerprint(m) != f


def test_file_id_is_the_name_and_12_hex_digits_of_sha1(tmp_path):
    (tmp_path/"data.json").write_bytes(b"abc")                                # sha1("abc") = a9993e36 4706816a ba3e2571 ...
    assert experiment.file_id(tmp_path/"data.json") == "data.json sha1=a9993e364706"


# ---------------------------------------------------------------- MCM-DPO's stored reference: its key and where it is computed
@pytest.fixture
def reference_calls(monkeypatch):
    "with_reference with the model and the log-prob pass stubbed: each computation is recorded and stores its own number."
    calls = []
    def precompute(model, records, collator, path, batch_size=8):
        calls.append(dict(src=model, path=Path(path), batch_size=batch_size))
        k = sum("src" in c for c in calls)
        Path(path).write_text(json.dumps({"slots": 8, "logps": {str(r["id"]): {"sum": [float(k)] * 8, "mean": [0.0] * 8} for r in records}}))
        return Path(path)
    monkeypatch.setattr(train, "precompute_reference_logps", precompute)
    monkeypatch.setattr(models, "resolve_backbone", lambda src, device=None, **inputs: calls.append(dict(device=device, **inputs)) or
                        __import__("types").SimpleNamespace(model=src, processor=None))
    monkeypatch.setattr(mx, "reference_collator", lambda cfg, processor: None)
    return calls


def _alt(ids=("a", "b"), key="k1"):
    return mx.AltTextData(train=[dict(id=i) for i in ids], test=[], scenes=None, source="synthetic", reports={}, train_key=key)


def test_with_reference_computes_once_per_key(reference_calls, tmp_path):
    cfg = mcmdpo.MCMDPOConfig(cache_dir=str(tmp_path/"fresh"/"cache"), sft_steps=0, backbone=SPEC, device="cpu")
    computed = lambda: [c for c in reference_calls if "src" in c]
    run = lambda c=cfg, base="/models/sft-a", data=None: mx.with_reference(c, Path(base), data or _alt())
    first = run()
    assert first == [dict(id="a", ref_logps=[1.0] * 8), dict(id="b", ref_logps=[1.0] * 8)]
    assert computed()[0]["src"] == SPEC and computed()[0]["batch_size"] == 8 and reference_calls[0] == dict(device="cpu", max_image_tokens=None, image_preprocess="pad", prompt_format="chat")
    key = config_key(base=model_id(SPEC), data="k1", n=2, neg=(cfg.image_negative, cfg.noise_step, cfg.noise_space), seed=cfg.data_seed, v=1)
    assert computed()[0]["path"] == tmp_path/"fresh"/"cache"/"reference"/f"ref-{key}.json"   # bump v (and this) when the file changes
    assert run() == first and len(computed()) == 1                                         # the same key: read back
    sft = mcmdpo.MCMDPOConfig(cache_dir=cfg.cache_dir, sft_steps=1, backbone=SPEC, device="cpu")
    changed = {"sft base": lambda: run(sft), "another sft base": lambda: run(sft, "/models/sft-b"), "data": lambda: run(data=_alt(key="k2")),
               "fewer records": lambda: run(data=_alt(ids=("a",))),
               "noise": lambda: run(mcmdpo.MCMDPOConfig(cache_dir=cfg.cache_dir, sft_steps=0, backbone=SPEC, noise_step=cfg.noise_step + 100)),
               "seed": lambda: run(mcmdpo.MCMDPOConfig(cache_dir=cfg.cache_dir, sft_steps=0, backbone=SPEC, data_seed=cfg.data_seed + 1)),
               "image tokens": lambda: run(mcmdpo.MCMDPOConfig(cache_dir=cfg.cache_dir, sft_steps=0, backbone=SPEC, max_image_tokens=256)),
               "prompt format": lambda: run(mcmdpo.MCMDPOConfig(cache_dir=cfg.cache_dir, sft_steps=0, backbone=SPEC, prompt_format="llava_v1"))}
    for k, (what, f) in enumerate(changed.items(), 2):
        assert f()[0]["ref_logps"] == [float(k)] * 8 and len(computed()) == k, what
    assert [c["src"] for c in computed()[1:3]] == ["/models/sft-a", "/models/sft-b"]        # after SFT, the reference is the SFT model
    other = mcmdpo.MCMDPOConfig(cache_dir=str(tmp_path/"other"), sft_steps=0, backbone=SPEC)
    mx.with_reference(other, Path("/models/sft-a"), _alt(), batch_size=3)
    assert computed()[-1]["batch_size"] == 3


def test_another_batch_size_starts_over_with_a_mapping_collator(qwen, tmp_path):
    "A collator returning a `BatchFeature` (a mapping, not a dict: its content is not hashed): the batch size alone decides."
    from transformers import BatchFeature
    recs, inner, path = _prefs(tmp_path, n=6), dgpref.PreferenceCollator(qwen.processor), tmp_path/"ref.json"
    col = lambda chunk: BatchFeature(inner(chunk))
    _interrupted(qwen.model, recs, col, path, batches=2)                  # records 0-3 done in batches of 2
    n, h = _passes(qwen.model)
    try: train.precompute_reference_logps(qwen.model, recs, col, path, batch_size=3)
    finally: h.remove()
    assert n[0] == 2 and _close(_stored(path), _fresh(qwen.model, recs, inner, 3))
