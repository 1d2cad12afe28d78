"""Loaders against the real files in ../shared/data, and every validation error path in both modes."""
import json, shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_nle.core import DataFileError, shared_data
from mllm_nle import data as D

DEMO = shared_data("mcle-demo")
MCM = shared_data("mcm-dpo-samples")
# Only the tests that read ../shared/data skip without it; the others (the world's files, JSON errors) always run.
needs_shared = pytest.mark.skipif(not DEMO.exists(), reason=f"shared real data not present ({DEMO.parent})")


@pytest.fixture
def demo(tmp_path):
    "A writable copy of mcle-demo (train.json, test.json and both images)."
    d = tmp_path/"demo"; shutil.copytree(DEMO, d)
    for p in d.rglob("*"): p.chmod(0o755 if p.is_dir() else 0o644)
    return d


def write(path, rows, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows), encoding="utf-8")
    return path


# ---- the real files load ---------------------------------------------------------------------

@needs_shared
def test_real_mcle_and_vqax():
    tr, rep = D.load_mcle_train(DEMO/"train.json", image_root=DEMO, check_images=True)
    assert rep.loaded == 3 and rep.n_skipped == 0
    assert [r["weight"] for r in tr] == [1.0, -1.0, -1.0] and all(Path(r["image"]).is_file() for r in tr)
    assert set(tr[0]) >= {"id", "image", "prompt", "response", "weight", "level", "group"}
    te, _ = D.load_vqax_test(DEMO/"test.json", image_root=DEMO, check_images=True)
    assert te[0]["answer"] == "lighthouse" and len(te[0]["references"]) == 3
    full, rep = D.load_vqax_test(shared_data("vqax-test.json"), require_images=False)
    assert rep.loaded == 1968 and len({r["id"] for r in full}) == 1968
    assert all(len(r["references"]) == 3 and r["prompt"] == r["question"] for r in full)


@needs_shared
@pytest.mark.parametrize("plat", ["twitter", "pinterest"])
def test_real_mcmdpo(plat):
    base = MCM/plat
    tr, rep = D.load_mcmdpo_train(base/f"{plat}_train.json", image_root=base/"image"/f"{plat}_train", check_images=True)
    te, rep2 = D.load_mcmdpo_test(base/f"{plat}_test.json", image_root=base/"image"/f"{plat}_test", check_images=True)
    assert (rep.loaded, rep2.loaded, rep.n_skipped, rep2.n_skipped) == (10, 10, 0, 0)
    assert all(r["context"] and r["context"] in r["question"] for r in tr + te)
    assert all(set(r) >= {"id", "image", "question", "context", "chosen", "rejected"} for r in tr)
    # bare file names do not resolve next to the json file: the error says where it looked
    with pytest.raises(DataFileError, match=r"record 0: field 'image': image file not found.*tried"):
        D.load_mcmdpo_train(base/f"{plat}_train.json")


@needs_shared
def test_real_amber():
    gen, rep = D.load_amber_queries(split="generative")
    assert rep.loaded == 1004 and all(isinstance(r["truth"], list) and r["type"] == "generative" for r in gen)
    disc, rep = D.load_amber_queries(split="discriminative")
    assert rep.loaded == 14216 and {r["truth"] for r in disc} == {"yes", "no"}
    assert "discriminative-hallucination" in {r["type"] for r in disc}
    with pytest.raises(DataFileError, match="image file not found"):  # the images are the user's
        D.load_amber_queries(split="generative", image_root=shared_data("amber"))
    recs, rep = D.load_amber_queries(split="generative", image_root=shared_data("amber"), on_error="skip")
    assert rep.loaded == 0 and rep.skipped["image: image file not found"] == 1004


# ---- error paths, each in both modes ---------------------------------------------------------

def test_missing_file(tmp_path):
    for fn in (D.load_mcle_train, D.load_preferences, D.load_pope):
        with pytest.raises(DataFileError, match="nope.json: file not found"):
            fn(tmp_path/"nope.json", on_error="skip")  # a missing file is never skippable


@needs_shared
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image(demo, damage):
    img = demo/"train"/"demo_train.jpg"; raw = img.read_bytes()
    img.write_bytes(raw[: len(raw)//2] if damage == "truncate" else b"not a jpeg at all" * 10)
    if damage == "garbage":   # the header is read at load: an unreadable file stops the run before training
        with pytest.raises(DataFileError, match=r"train.json: record 0: field 'image': image not readable"):
            D.load_mcle_train(demo/"train.json", image_root=demo)
    else:                     # a truncated file's header is fine: only check_images decodes it
        recs, rep = D.load_mcle_train(demo/"train.json", image_root=demo)
        assert rep.loaded == 3
    with pytest.raises(DataFileError, match=r"train.json: record 0: field 'image': image not decodable"):
        D.load_mcle_train(demo/"train.json", image_root=demo, check_images=True)
    recs, rep = D.load_mcle_train(demo/"train.json", image_root=demo, check_images=True, on_error="skip")
    assert (rep.loaded, rep.skipped["image: image not decodable"]) == (0, 3)
    assert "image not decodable" in str(rep)


@needs_shared
def test_missing_image(demo):
    (demo/"val"/"demo_val.jpg").unlink()
    with pytest.raises(DataFileError, match=r"test.json: record 0: field 'image': image file not found: 'dataset/NLE/Demo/val/demo_val.jpg'; tried"):
        D.load_vqax_test(demo/"test.json", image_root=demo)
    recs, rep = D.load_vqax_test(demo/"test.json", image_root=demo, on_error="skip")
    assert rep.loaded == 0 and rep.n_skipped == 1


@needs_shared
def test_non_utf8(tmp_path):
    rows = json.loads((DEMO/"train.json").read_text())
    p = tmp_path/"latin.json"
    p.write_bytes(json.dumps(rows, indent=1, ensure_ascii=False).replace("lighthouse", "caf\u00e9").encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin.json: line \d+: not UTF-8"):
        D.load_mcle_train(p, image_root=DEMO)
    # JSON Lines: the bad line is the bad record, and skip mode drops only it
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    lines[1] = lines[1].replace(b"boat", "bo\u00e2t".encode("latin-1"))
    q = tmp_path/"latin.jsonl"; q.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFileError, match=r"latin.jsonl: line 2: not UTF-8"):
        D.load_mcle_train(q, image_root=DEMO)
    recs, rep = D.load_mcle_train(q, image_root=DEMO, on_error="skip")
    assert (rep.loaded, rep.skipped["not UTF-8"]) == (2, 1)
    # a lone surrogate escape decodes as JSON but is not text: record-level error
    rows[2]["response"] = "Because \ud800. So the answer is ship."
    s = write(tmp_path/"sur.json", rows)
    with pytest.raises(DataFileError, match=r"record 2: field 'response': not UTF-8 text"):
        D.load_mcle_train(s, image_root=DEMO)
    assert D.load_mcle_train(s, image_root=DEMO, on_error="skip")[1].loaded == 2


@needs_shared
def test_duplicate_ids(tmp_path):
    rows = json.loads(shared_data("vqax-test.json").read_text())[:4]
    rows[3]["image_id"] = rows[1]["image_id"]
    p = write(tmp_path/"dup.json", rows)
    with pytest.raises(DataFileError, match=rf"record 3: field 'image_id': duplicate id: '{rows[1]['image_id']}' already used by record 1"):
        D.load_vqax_test(p, require_images=False)
    recs, rep = D.load_vqax_test(p, require_images=False, on_error="skip")
    assert (rep.loaded, rep.skipped["image_id: duplicate id"]) == (3, 1)


def _word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted({w for t in texts for w in t.split()}))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")); tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@needs_shared
def test_prompt_too_long():
    base = MCM/"twitter"
    recs, _ = D.load_mcmdpo_test(base/"twitter_test.json", image_root=base/"image"/"twitter_test")
    tok = _word_tokenizer([r["prompt"] for r in recs])
    lens = [len(r["prompt"].split()) for r in recs]
    limit = sorted(lens)[5]
    with pytest.raises(DataFileError, match=rf"field 'prompt': prompt too long: \d+ tokens > max_prompt_tokens={limit}"):
        D.load_mcmdpo_test(base/"twitter_test.json", image_root=base/"image"/"twitter_test", tokenizer=tok, max_prompt_tokens=limit)
    kept, rep = D.load_mcmdpo_test(base/"twitter_test.json", image_root=base/"image"/"twitter_test",
                                   tokenizer=tok, max_prompt_tokens=limit, on_error="skip")
    assert rep.loaded == sum(n <= limit for n in lens) and rep.skipped["prompt: prompt too long"] == sum(n > limit for n in lens)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        D.load_mcmdpo_test(base/"twitter_test.json", max_prompt_tokens=3)


@needs_shared
@pytest.mark.parametrize("field,value,msg", [
    ("ratio", 0, "field 'ratio': is zero"), ("ratio", float("nan"), "field 'ratio': not finite"),
    ("ratio", "1", "field 'ratio': wrong type"), ("response", "  ", "field 'response': empty text"),
    ("ques", None, "field 'ques': missing field"), ("level", "bogus", "field 'level': unknown level")])
def test_mcle_field_errors(tmp_path, field, value, msg):
    rows = json.loads((DEMO/"train.json").read_text())
    if value is None: del rows[1][field]
    else: rows[1][field] = value
    p = write(tmp_path/"t.json", rows)
    with pytest.raises(DataFileError, match=rf"t.json: record 1: {msg}"):
        D.load_mcle_train(p, image_root=DEMO)
    recs, rep = D.load_mcle_train(p, image_root=DEMO, on_error="skip")
    assert (rep.loaded, rep.n_skipped) == (2, 1) and [r["weight"] for r in recs] == [1.0, -1.0]


@needs_shared
def test_mcmdpo_errors(tmp_path):
    rows = json.loads((MCM/"pinterest"/"pinterest_train.json").read_text())
    rows[2]["chosen"] = "something else"          # top-level copy disagrees with `text`
    rows[4]["text"] = rows[4]["text"][:-3]         # truncated JSON string
    p = write(tmp_path/"p.json", rows)
    root = MCM/"pinterest"/"image"/"pinterest_train"
    with pytest.raises(DataFileError, match="record 2: field 'chosen': disagrees with text"):
        D.load_mcmdpo_train(p, image_root=root)
    recs, rep = D.load_mcmdpo_train(p, image_root=root, on_error="skip")
    assert rep.loaded == 8 and rep.skipped["text: invalid JSON string"] == 1


@needs_shared
def test_preferences_json_and_jsonl(tmp_path):
    img = str(DEMO/"train"/"demo_train.jpg")
    rows = [dict(id="a", image=img, prompt="Describe.", chosen="A lighthouse.", rejected="A ship.", chosen_claims=["lighthouse"]),
            dict(id="b", image=img, prompt="Describe.", chosen="A tower.", rejected="A boat.", ref_chosen_logp=-3.5, ref_rejected_logp=-4.0)]
    for jsonl in (False, True):
        recs, rep = D.load_preferences(write(tmp_path/f"p{int(jsonl)}.json", rows, jsonl), check_images=True)
        assert rep.loaded == 2 and recs[0]["meta"] == {"chosen_claims": ["lighthouse"]} and recs[1]["ref_rejected_logp"] == -4.0
        assert "ref_chosen_logp" not in recs[0]
    bad = [dict(rows[1], ref_rejected_logp=None), dict(rows[0], id="c", rejected="A lighthouse.")]
    p = write(tmp_path/"bad.jsonl", bad, jsonl=True)
    with pytest.raises(DataFileError, match="record 0: field 'ref_rejected_logp': missing field: give both"):
        D.load_preferences(p)
    recs, rep = D.load_preferences(p, on_error="skip")
    assert rep.loaded == 0 and rep.skipped["rejected: same as chosen"] == 1


@needs_shared
def test_llava_and_hacl(tmp_path):
    img = "train/demo_train.jpg"
    conv = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A lighthouse."}]
    recs, _ = D.load_llava(write(tmp_path/"l.json", [dict(id="x", image=img, conversations=conv)]), image_root=DEMO)
    assert recs[0]["prompt"] == "What is this?" and recs[0]["response"] == "A lighthouse."
    bad = [dict(id="y", image=img, conversations=[conv[1], conv[0]])]
    with pytest.raises(DataFileError, match=r"record 0: field 'conversations\[0\].from': wrong speaker"):
        D.load_llava(write(tmp_path/"b.json", bad), image_root=DEMO)
    world = dict(id="h1", image=img, caption="A white lighthouse.", hallucinated=[{"caption": "A red lighthouse.", "edits": ["white->red"]}, "A ship."])
    readme = {"image": img, "text": "Two men walk.", "Hallucination caption": "Two women walk.", "conversations": conv}
    recs, rep = D.load_hacl(write(tmp_path/"h.json", [world, readme]), image_root=DEMO)
    assert recs[0]["hallucinated"] == ["A red lighthouse.", "A ship."] and recs[1]["hallucinated"] == ["Two women walk."]
    assert recs[0]["response"] == "A white lighthouse." and recs[0]["edits"] == [["white->red"], []] and recs[1]["id"] == "1"
    assert recs[1]["prompt"] == "What is this?" and recs[1]["response"] == "A lighthouse."   # the record's own conversation
    with pytest.raises(DataFileError, match=r"record 0: field 'hallucinated\[1\]': empty text"):
        D.load_hacl(write(tmp_path/"h2.json", [dict(world, hallucinated=["x", ""])]), image_root=DEMO)


# ---- collators, both tiny families -----------------------------------------------------------

# ---- the synthetic world's files load with the same loaders ----------------------------------

def test_world_files_load(tmp_path):
    from mllm_nle import world_data as W
    kw = dict(image_root=tmp_path, check_images=True)
    W.write_vqax(tmp_path, n_train=6, n_test=4, seed=0)
    tr, rep = D.load_mcle_train(tmp_path/"train.json", **kw)
    assert rep.n_skipped == 0 and rep.loaded >= 6 and {r["level"] for r in tr} >= {"positive"}
    assert all(r["weight"] < 0 for r in tr if r["level"] != "positive") and all(Path(r["image"]).is_file() for r in tr)
    te, rep = D.load_vqax_test(tmp_path/"test.json", **kw)
    assert rep.loaded == 4 and all(r["scene_id"] for r in te)
    W.write_captions(tmp_path, n=4, seed=0)
    assert D.load_llava(tmp_path/"llava.json", **kw)[1].loaded == 4
    hacl, rep = D.load_hacl(tmp_path/"hacl.json", **kw)
    assert rep.loaded == 4 and all(r["hallucinated"] and r["caption"] not in r["hallucinated"] for r in hacl)
    W.write_preferences(tmp_path, n=4, seed=0)
    prefs, rep = D.load_preferences(tmp_path/"preferences.json", on_error="skip", **kw)
    assert rep.loaded + rep.skipped["rejected: same as chosen"] == 4 and all("chosen_claims" in r["meta"] for r in prefs)
    W.write_alttext(tmp_path, n_train=4, n_test=3, seed=0)
    mtr, rep = D.load_mcmdpo_train(tmp_path/"alttext_train.json", **kw)
    mte, rep2 = D.load_mcmdpo_test(tmp_path/"alttext_test.json", **kw)
    assert (rep.loaded, rep2.loaded) == (4, 3) and all(r["context"] for r in mtr + mte)
    W.write_benchmarks(tmp_path/"bench", n=4, seed=0)
    b = tmp_path/"bench"; kw = dict(image_root=b, check_images=True)
    assert D.load_objhal(b/"objhal.jsonl", **kw)[1].loaded == 4
    pope, rep = D.load_pope(b/"pope"/"adversarial.jsonl", **kw)
    assert rep.loaded > 0 and {r["label"] for r in pope} <= {"yes", "no"}
    amb, rep = D.load_amber_queries(b/"amber", split="all", **kw)
    assert rep.n_skipped == 0 and sum(r["type"] == "generative" for r in amb) == 4
    assert D.load_vqax_test(b/"vqax_test.json", **kw)[1].loaded == 4


def test_invalid_json(tmp_path):
    p = tmp_path/"broken.json"; p.write_text('[{"image": "x.jpg", "ques": "q"},\n {"ques": }]')
    with pytest.raises(DataFileError, match=r"broken.json: invalid JSON at line 2"):
        D.load_mcle_train(p, on_error="skip")  # a broken JSON document cannot be partly read
    q = tmp_path/"broken.jsonl"
    q.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}\n{"question_id": 2, "image": \n')
    with pytest.raises(DataFileError, match=r"broken.jsonl: line 2: invalid JSON"):
        D.load_pope(q)
    recs, rep = D.load_pope(q, on_error="skip")
    assert (rep.loaded, rep.skipped["invalid JSON"]) == (1, 1)
    # a JSON object of records (e.g. keyed by id) reads as a list, keeping each key
    k = tmp_path/"keyed.json"; k.write_text(json.dumps({"p1": {"image": "a.jpg", "prompt": "Describe.", "chosen": "A.", "rejected": "B."}}))
    recs, _ = D.load_preferences(k, require_images=False)
    assert (recs[0]["id"], recs[0]["meta"], recs[0]["chosen"]) == ("p1", {}, "A.")
