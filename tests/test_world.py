"""File-level tests of the synthetic world: determinism, exact truth of every generated text, that
every negative / hallucination is false in exactly the recorded way, and that the AMBER-format
benchmark scores with `mllm_nle.amber`. (The data loaders on these files: tests/test_data.py.)"""
import hashlib, json
from pathlib import Path

import pytest

from mllm_nle import amber
from mllm_nle import world as W
from mllm_nle import world_data as WD
from mllm_nle.grammar import parse_nle


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_all(d: Path, seed: int):
    WD.write_vqax(d / "vqax", n_train=60, n_test=20, seed=seed)
    WD.write_captions(d / "cap", n=40, seed=seed)
    WD.write_preferences(d / "pref", n=30, seed=seed)
    WD.write_alttext(d / "alt", n_train=30, n_test=10, seed=seed)
    WD.write_benchmarks(d / "bench", n=40, seed=seed)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    _write_all(d / "a", 0)
    return d / "a"


def test_same_seed_byte_identical(out, tmp_path):
    _write_all(tmp_path / "b", 0)
    a, b = _digest(out), _digest(tmp_path / "b")
    assert len(a) > 100 and a == b


def test_other_seed_differs(out, tmp_path):
    WD.write_vqax(tmp_path, n_train=60, n_test=20, seed=1)
    assert (tmp_path / "train.json").read_bytes() != (out / "vqax" / "train.json").read_bytes()


def _scenes(d):
    return WD.load_scenes(d / "scenes.json")


def test_vqax_positives_and_references_are_true(out):
    d = out / "vqax"; sc = _scenes(d)
    by_image = {WD.image_path(s): s for s in sc.values()}
    train = json.loads((d / "train.json").read_text())
    pos = [r for r in train if r["level"] == "positive"]
    assert len(pos) == 60 and all(r["ratio"] > 0 for r in pos) and all(r["ratio"] < 0 for r in train if r["level"] != "positive")
    for r in pos:
        s = by_image[r["image"]]
        assert W.check_explanation(s, r["ques"], r["response"]) == {"parsed": True, "explanation_true": True, "supports_answer": True}
        assert parse_nle(r["response"]).answer == W.answer_question(s, r["ques"])
    for t in json.loads((d / "test.json").read_text()):
        s = sc[t["scene_id"]]
        assert t["answer"] == W.answer_question(s, t["question"]) and len(t["response"]) == 3
        assert len(set(t["response"])) == 3 and not t["response"][0].endswith(".")
        for ref in t["response"]:
            assert W.check_explanation(s, t["question"], ref)["supports_answer"] and W.check_explanation(s, t["question"], ref)["explanation_true"]


def test_vqax_negatives_false_in_recorded_way(out):
    d = out / "vqax"; sc = _scenes(d)
    by_image = {WD.image_path(s): s for s in sc.values()}
    train = json.loads((d / "train.json").read_text())
    pos = {r["group"]: r for r in train if r["level"] == "positive"}
    levels = {}
    for r in train:
        if r["level"] == "positive": continue
        levels[r["level"]] = levels.get(r["level"], 0) + 1
        s, p = by_image[r["image"]], pos[r["group"]]
        a = parse_nle(r["response"]).answer
        truth = W.answer_question(s, r["ques"])
        assert a != truth, r  # every negative's answer is wrong for its question on its image
        c = W.check_explanation(s, r["ques"], r["response"])
        if r["level"] == "semantic":  # true explanation, unsupported answer
            assert r["ques"] == p["ques"] and c == {"parsed": True, "explanation_true": True, "supports_answer": False}
        elif r["level"] == "image":  # true of another image (and consistent there), false here
            o = sc[r["source_scene"]]
            assert o.id != s.id and r["ques"] == p["ques"] and c["explanation_true"] is False
            assert W.check_explanation(o, r["ques"], r["response"]) == {"parsed": True, "explanation_true": True, "supports_answer": True}
        else:  # instance: perturbed question, original response
            assert r["level"] == "instance" and r["response"] == p["response"] and r["ques"] != p["ques"]
            qa, qb = W.parse_question(p["ques"]), W.parse_question(r["ques"])
            assert sum(qa.get(k) != qb.get(k) for k in qa) <= 2  # one slot (or the a/b swap)
            assert W.check_explanation(s, p["ques"], r["response"])["supports_answer"] and truth is not None
    assert levels["semantic"] == 60 and levels["image"] >= 45 and levels["instance"] >= 30, levels


def test_captions_faithful_and_hallucinations_exact(out):
    d = out / "cap"; sc = _scenes(d)
    hacl = json.loads((d / "hacl.json").read_text()); kinds = set()
    for r in hacl:
        s = sc[r["id"]]
        assert all(c["true"] for c in W.check_caption(s, r["caption"])), r["caption"]
        assert len(r["hallucinated"]) == 3
        for h in r["hallucinated"]:
            checks = W.check_caption(s, h["caption"])
            assert all(c["parsed"] for c in checks)
            assert [i for i, c in enumerate(checks) if not c["true"]] == [e["sentence"] for e in h["edits"]]
            for e in h["edits"]:
                kinds.add(e["type"]); assert checks[e["sentence"]]["sentence"] == e["after"]
                if e["before"] is not None: assert e["before"] in r["caption"] and e["after"] not in r["caption"]
    assert kinds == set(WD.EDIT_TYPES)


def test_preferences_claims_exact(out):
    d = out / "pref"; sc = _scenes(d)
    for r in json.loads((d / "preferences.json").read_text()):
        s = sc[r["id"]]
        assert r["chosen"] != r["rejected"] and r["chosen_score"] > r["rejected_score"]
        for c in r["candidates"]:
            checks = W.check_caption(s, c["text"])
            assert [x["claim"] for x in c["claims"]] == [x["sentence"] for x in checks]
            assert [x["label"] for x in c["claims"]] == [x["true"] for x in checks]
            assert c["score"] == -sum(not x["label"] for x in c["claims"]) / len(c["claims"])
        assert r["chosen_score"] == max(c["score"] for c in r["candidates"]) and r["rejected_score"] == min(c["score"] for c in r["candidates"])


def test_alttext(out):
    d = out / "alt"; sc = _scenes(d)
    for r in json.loads((d / "alttext_train.json").read_text()):
        s, t = sc[r["scene_id"]], json.loads(r["text"])
        assert W.verify_claim(s, t["chosen"]) is True and t["question"].startswith(WD.ALT_QUESTION)
        ok = W.verify_claim(s, t["rejected"])
        assert ok is (r["rejected_kind"] == "omission") and t["rejected"] != t["chosen"]
    for line in (d / "alttext_test.json").read_text().splitlines():
        r = json.loads(line); assert W.verify_claim(sc[r["scene_id"]], r["chosen"]) is True


def test_benchmarks_exact(out):
    d = out / "bench"; sc = _scenes(d)
    by_image = {WD.image_path(s): s for s in sc.values()}
    for m in ("random", "popular", "adversarial"):
        rows = [json.loads(l) for l in (d / "pope" / f"{m}.jsonl").read_text().splitlines()]
        for r in rows:
            cat = r["text"].split()[3]
            assert r["label"] == ("yes" if by_image[r["image"]].count(cat) else "no")
        assert sum(r["label"] == "yes" for r in rows) == sum(r["label"] == "no" for r in rows)
    ann = {a["id"]: a for a in json.loads((d / "amber" / "annotations.json").read_text())}
    for q in json.loads((d / "amber" / "query" / "query_all.json").read_text()):
        s, a = by_image[q["image"]], ann[q["id"]]
        if a["type"] == "generative":
            assert sorted(a["truth"]) == sorted({o.category for o in s.objects}) and not set(a["hallu"]) & set(a["truth"])
            continue
        text = q["query"].removesuffix(" in this image?")
        if a["type"] == "discriminative-relation":
            assert W.answer_question(s, text + "?") == a["truth"]
        elif a["type"] == "discriminative-hallucination":
            assert W.answer_question(s, "How many " + W.plural(text.split()[-1]) + " are there?") != "zero" or a["truth"] == "no"
            assert (a["truth"] == "yes") == (s.count(text.split()[-1]) > 0)
        elif a["type"] == "discriminative-attribute-number":
            _, _, n, cats = text.split(); assert (a["truth"] == "yes") == (W.NUMBERS[s.count(W._NOUN[cats])] == n)
        else:
            _, _, cat, val = text.split()
            assert (a["truth"] == "yes") == W.verify_claim(s, f"the {cat} is {val}")
    gt = json.loads((d / "objhal_gt.json").read_text())
    for r in (json.loads(l) for l in (d / "objhal.jsonl").read_text().splitlines()):
        assert gt[str(r["image_id"])] == sorted({o.category for o in sc[r["scene_id"]].objects}) == r["gt_objects"]
    for t in json.loads((d / "vqax_test.json").read_text()):
        assert all(W.check_explanation(sc[t["scene_id"]], t["question"], e, t["answer"])["supports_answer"] for e in t["response"])


_nlp_why = amber.nlp_unavailable_reason()


@pytest.mark.skipif(_nlp_why is not None, reason=f"NLP data not installed: {_nlp_why}")
def test_amber_folder_loads_and_scores_a_faithful_caption(out):
    "amber.load_amber reads the world's AMBER folder; world.describe scores CHAIR 0, Cover 100; a named absent object is caught."
    d = out / "bench"; by_image = {WD.image_path(s): s for s in _scenes(d).values()}
    ad = amber.load_amber(d / "amber")
    assert ad.safe_words == [] and ad.vocabulary == set(W.CATEGORIES)
    gen = json.loads((d / "amber" / "query" / "query_generative.json").read_text())[:8]
    good = [{"id": q["id"], "response": " ".join(W.describe(by_image[q["image"]]))} for q in gen]
    nlp = amber.nlp_components()
    r = amber.amber_generative(good, ad, nlp, progress=False)
    assert (r["n"], r["CHAIR"], r["Hal"], r["Cover"]) == (8, 0.0, 0.0, 100.0) and r["n_nouns"] >= 8
    bad = [{"id": g["id"], "response": g["response"] + f" There is a red {ad.annotations[g['id'] - 1]['hallu'][0]}."} for g in good]
    r = amber.amber_generative(bad, ad, nlp, progress=False)
    assert r["CHAIR"] > 0 and r["Hal"] == 100.0 and r["Cog"] > 0


def test_amber_discriminative_on_world_bench(out):
    "Answering every world AMBER question with its truth scores 100 in every dimension (no NLP data needed)."
    ad = amber.load_amber(out / "bench" / "amber")
    resp = [{"id": a["id"], "response": a["truth"].capitalize() + "."} for a in ad.annotations if a["type"] != "generative"]
    m = amber.amber_discriminative(resp, ad)
    assert set(m) == {"existence", "attribute", "relation", "overall"}
    assert all(m[d]["accuracy"] == 100.0 and m[d]["n_unparsed"] == 0 for d in m)


def test_unparsable_and_unanswerable():
    s = W.make_scenes(1, seed=0)[0]
    assert W.check_explanation(s, "What color is the star?", "Because it has a lighthouse on top. So the answer is ship.") == \
        {"parsed": False, "explanation_true": None, "supports_answer": None}
    assert W.answer_question(s, "What kind of building is this?") is None


def test_deterministic_across_processes(tmp_path):
    import os, subprocess, sys
    code = "import sys; from mllm_nle import world_data as WD; WD.write_vqax(sys.argv[1], n_train=30, n_test=10, seed=3); WD.write_benchmarks(sys.argv[1], n=20, seed=3)"
    for h in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / h)], check=True, env={**os.environ, "PYTHONHASHSEED": h, "TQDM_DISABLE": "1"})
    assert _digest(tmp_path / "1") == _digest(tmp_path / "2")
